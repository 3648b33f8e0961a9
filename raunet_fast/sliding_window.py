"""Sliding-window inference: segment images and volumes larger than the patches a model was
trained on.

:func:`sliding_window_inference` cuts each image (``N x C x H x W``) or volume
(``N x C x D x H x W``) into overlapping windows of a fixed size, runs the model on batches
of windows and blends the overlapping predictions with a weight map (Gaussian by default: a
window's centre counts more than its border, where the network saw less context). One code
path serves both: window starts per axis, an N-D weight map, windows in batches.

Memory: on the device the model runs on, ``batch_size`` windows whatever the image size
(the blended result is accumulated on the image's device, e.g. in CPU memory for a large
volume while the model runs on the GPU). On the image's device there is the input (a uint8
image stays uint8: windows are scaled to float one batch at a time), the result, which
doubles as the accumulator (the output channels only, in ``accumulate_dtype``: float32, or
float16 / bfloat16 for half the memory), and one float32 band of the weight normaliser
(window-depth x the other axes, shared by every channel); no other image-sized tensor.
Every model call takes ``batch_size`` windows (the last batch is padded with repeats)
unless the whole image needs fewer, which suits the fused model with CUDA graphs
(:func:`raunet_fast.inference.build_inference_model` with ``cuda_graphs=True``: one graph
per call shape).

Works with any callable mapping ``B x C x <window>`` to ``B x K x <window>`` (the reference
models, the fused inference model, a user's own module).
"""
from __future__ import annotations

import itertools
import math
import numbers
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["sliding_window_inference", "window_starts", "blend_weights", "ACCUMULATE_DTYPES"]

#: dtypes the blended result may accumulate in (unit roundoff: fp32 2**-24, fp16 2**-11,
#: bf16 2**-8; see :func:`sliding_window_inference` for the error bound)
ACCUMULATE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _sizes(v, name: str, dims: int) -> tuple[int, ...]:
    """``v``: one int for every axis or ``dims`` ints, each >= 1."""
    def is_int(t):
        return isinstance(t, numbers.Integral) and not isinstance(t, bool)

    if is_int(v):
        v = (v,) * dims
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or len(v) != dims or \
            not all(is_int(t) for t in v):
        what = {2: "a pair of ints (h, w)", 3: "three ints (d, h, w)"}.get(dims, f"{dims} ints")
        raise TypeError(f"{name} must be an int or {what} for {dims}-D input, got {v!r}")
    sizes = tuple(int(t) for t in v)
    if min(sizes) < 1:
        raise ValueError(f"{name} must be >= 1, got {v!r}")
    return sizes


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start offsets of windows of ``window`` pixels covering ``size`` pixels, neighbours
    overlapping by at least ``overlap`` of a window; the last window ends at ``size``.
    One window at 0 when ``size <= window`` (the image is padded up to the window)."""
    if size <= window:
        return [0]
    step = max(1, int(window * (1.0 - overlap)))
    n = math.ceil((size - window) / step) + 1
    # spread the windows evenly over the span (the same step count, no sliver at the end)
    return [round(i * (size - window) / (n - 1)) for i in range(n)]


def blend_weights(window: Sequence[int], mode: str = "gaussian", sigma_scale: float = 0.125,
                  device=None) -> torch.Tensor:
    """Float32 weight map of one window (``h x w`` or ``d x h x w``: one axis per size):
    ``"constant"`` (all ones: plain averaging) or ``"gaussian"`` (the product over axes of
    ``exp(-d^2 / 2 sigma^2)``, ``d`` the distance from the axis centre, ``sigma =
    sigma_scale * size``; scaled to peak 1, then floored at 1e-3 so that every pixel keeps a
    weight)."""
    window = tuple(int(s) for s in window)
    if mode == "constant":
        return torch.ones(window, device=device)
    if mode != "gaussian":
        raise ValueError(f"blend must be 'gaussian' or 'constant', got {mode!r}")
    if not sigma_scale > 0:
        raise ValueError(f"sigma_scale must be > 0, got {sigma_scale}")

    def axis(n: int) -> torch.Tensor:  # float64 on the CPU (not every device has it)
        d = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        return torch.exp(-0.5 * (d / (sigma_scale * n)) ** 2)

    wmap = torch.ones((), dtype=torch.float64)
    for k, n in enumerate(window):  # outer product, axis k along dimension k
        wmap = wmap[..., None] * axis(n).view(*([1] * k), n)
    return (wmap / wmap.max()).clamp_min(1e-3).float().to(device)


@torch.no_grad()
def sliding_window_inference(model: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                             window: int | Sequence[int], *, overlap: float = 0.25,
                             batch_size: int = 4, blend: str = "gaussian",
                             sigma_scale: float = 0.125, pad_value: float = 0.0,
                             device: torch.device | str | None = None,
                             progress: bool = False,
                             accumulate_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Predict ``image`` (``N x C x H x W``, or a volume ``N x C x D x H x W``) window by
    window and blend the windows.

    ``image``: floating point (passed to the model as it is) or uint8 (0..255: each batch of
    windows is converted to float32 and scaled by 1/255, as decoded images are in training,
    so a large image never exists as a float copy); any strides (e.g. an ``H x W x C`` array
    permuted to ``C x H x W``). ``window``: window size (an int for every axis, or one per
    spatial axis: ``(h, w)`` / ``(d, h, w)``), typically the patch size the model was
    trained on; along an axis where the image is smaller than the window, windows are
    padded with ``pad_value`` (in model-input units, i.e. after the uint8 scaling) up to it
    and the padding dropped from the result. ``overlap``: fraction of a window that
    neighbouring windows share, in ``[0, 1)``. ``batch_size``: windows per model call (the
    memory bound). ``blend``: ``"gaussian"`` or ``"constant"`` weights
    (:func:`blend_weights`). ``device``: where the model runs (default: the image's device);
    windows are moved there one batch at a time and predictions back, so a large image and
    its result can stay in CPU memory while the model runs on the GPU. The last batch is
    padded to ``batch_size`` with repeats of its last window (their predictions dropped)
    when there were full batches before it, so that calls keep one shape. ``progress``: a
    tqdm bar counting windows, with the throughput in megapixels (volumes: megavoxels) per
    second.

    ``accumulate_dtype``: dtype of the result, which is also the accumulator (one of
    :data:`ACCUMULATE_DTYPES`). float16 / bfloat16 halve its memory; each voxel's sum of
    ``m`` weighted window predictions is then rounded ``m`` times and divided once, so the
    result differs from the exact weighted mean by at most ``(m + 1) * u * max|p|`` (``u``:
    the unit roundoff, 2**-11 for float16, 2**-8 for bfloat16; ``p``: the covering windows'
    predictions at that voxel). float16 overflows beyond 65504 (logits that large do not
    occur in practice); bfloat16 has float32's range.

    Returns ``N x K x <image size>`` in ``accumulate_dtype`` on the image's device: the
    weighted mean, at every pixel, of the predictions of the windows covering it (``K``:
    the model's output channels; logits stay logits). Besides the result, memory holds one
    batch of windows and predictions and a float32 ``window-depth x <other axes>`` band of
    the normaliser.
    """
    _check_inputs(image, overlap, batch_size, accumulate_dtype)
    dims = image.dim() - 2
    win = _sizes(window, "window", dims)
    run_dev = torch.device(device) if device is not None else image.device
    weights = blend_weights(win, blend, sigma_scale, device=image.device)
    n, sizes = image.shape[0], tuple(image.shape[2:])
    starts = [window_starts(s, w, overlap) for s, w in zip(sizes, win)]
    tiles = list(itertools.product(range(n), *starts))
    out = None
    with _WindowBar(len(tiles), n * math.prod(sizes), dims, progress) as bar:
        for i in range(0, len(tiles), batch_size):
            chunk = tiles[i:i + batch_size]
            # one call shape: pad a short last batch with repeats (when full ones came first)
            call = chunk + [chunk[-1]] * (batch_size - len(chunk)) if i else chunk
            xb = _take_windows(image, call, win, pad_value, run_dev)
            pred = _checked_prediction(model(xb), len(call), win)[:len(chunk)]
            pred = pred.to(image.device, torch.float32)
            if out is None:  # the result doubles as the accumulator of weighted predictions
                out = torch.zeros(n, pred.shape[1], *sizes, device=image.device,
                                  dtype=accumulate_dtype)
            _accumulate(out, pred, chunk, weights)
            bar.update(len(chunk))
    return _normalise(out, weights, starts)


def _region(start: Sequence[int], win: Sequence[int], sizes: Sequence[int]):
    """Slices of the image covered by a window at ``start`` and the matching slices of the
    window (cropped where the window was padded past the image)."""
    ext = [min(w, s - a) for a, w, s in zip(start, win, sizes)]
    return (tuple(slice(a, a + e) for a, e in zip(start, ext)),
            tuple(slice(0, e) for e in ext))


def _take_windows(image: torch.Tensor, call, win: tuple[int, ...], pad_value: float,
                  device: torch.device) -> torch.Tensor:
    """The windows ``(b, *start)`` of ``call`` as one contiguous ``B x C x <win>`` batch on
    ``device``: uint8 moved as uint8, then scaled to float32 in [0, 1]; padded with
    ``pad_value`` at the far end of each axis where the image is smaller than a window."""
    sizes = image.shape[2:]
    xb = torch.stack([image[(b, slice(None), *_region(s, win, sizes)[0])] for b, *s in call])
    xb = xb.to(device).contiguous()  # contiguous: the model sees the layout of a plain batch
    if xb.dtype == torch.uint8:
        xb = xb.float().div_(255.0)  # as raunet_fast.data.common.resize_pair scales images
    pads = [w - got for w, got in zip(win, xb.shape[2:])]
    if not any(pads):
        return xb
    return F.pad(xb, [p for pad in reversed(pads) for p in (0, pad)], value=pad_value)


def _accumulate(out: torch.Tensor, pred: torch.Tensor, chunk, weights: torch.Tensor) -> None:
    """Add each window's prediction times the weight map into ``out`` in place (cropped
    where a window was padded past the image; the sum is formed in float32 and rounded to
    ``out``'s dtype once per window)."""
    sizes, win = out.shape[2:], weights.shape
    for j, (b, *start) in enumerate(chunk):
        dst, src = _region(start, win, sizes)
        out[(b, slice(None), *dst)].addcmul_(pred[(j, slice(None), *src)], weights[src])


def _normalise(out: torch.Tensor, weights: torch.Tensor, starts) -> torch.Tensor:
    """Divide ``out`` in place by the sum of the weights of the windows covering each pixel
    (the same for every image and channel), built band by band along the first spatial axis
    from the window starts, so that only one float32 ``window-depth x <other axes>`` band of
    it exists at a time."""
    win, sizes = weights.shape, out.shape[2:]
    for r0 in range(0, sizes[0], win[0]):
        r1 = min(r0 + win[0], sizes[0])
        norm = torch.zeros(r1 - r0, *sizes[1:], device=out.device)
        for s0 in starts[0]:
            a, b = max(s0, r0), min(s0 + win[0], r1)
            for rest in itertools.product(*starts[1:]) if a < b else ():
                dst, src = _region(rest, win[1:], sizes[1:])
                norm[(slice(a - r0, b - r0), *dst)].add_(weights[(slice(a - s0, b - s0), *src)])
        if out.dtype == norm.dtype:
            out[:, :, r0:r1].div_(norm)
        else:  # mixed dtypes divide through a float32 copy: one slice at a time
            for r in range(r0, r1):
                out[:, :, r].div_(norm[r - r0])
    return out


class _WindowBar:
    """tqdm bar over windows whose postfix is the throughput in image megapixels (volumes:
    megavoxels) per second (the windows done times the image pixels per window, overlap
    counted once)."""

    def __init__(self, windows: int, pixels: int, dims: int, enabled: bool):
        from tqdm import tqdm

        self.mp_per_window = pixels / 1e6 / windows
        self.unit = "MP/s" if dims == 2 else "MV/s"
        # leave=None: kept when standalone, cleared when nested under another bar
        self.bar = tqdm(total=windows, desc="windows", unit="window", leave=None,
                        disable=not enabled)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def update(self, k: int) -> None:
        if not self.bar.disable:
            elapsed = max(self.bar.format_dict["elapsed"], 1e-9)
            rate = (self.bar.n + k) * self.mp_per_window / elapsed
            self.bar.set_postfix_str(f"{rate:.2f} {self.unit}", refresh=False)
        self.bar.update(k)


def _check_inputs(image, overlap: float, batch_size, accumulate_dtype) -> None:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() not in (4, 5):
        hint = " (add a batch dimension: image[None])" if image.dim() == 3 else ""
        raise ValueError(f"image must be N x C x H x W (or a volume N x C x D x H x W), got "
                         f"shape {tuple(image.shape)}{hint}")
    if image.numel() == 0:
        raise ValueError(f"image is empty: shape {tuple(image.shape)}")
    if not (image.is_floating_point() or image.dtype == torch.uint8):
        raise TypeError(f"image must be floating point or uint8 (0..255, scaled by 1/255), "
                        f"got {image.dtype}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if accumulate_dtype not in ACCUMULATE_DTYPES:
        raise ValueError(f"accumulate_dtype must be one of "
                         f"{', '.join(map(str, ACCUMULATE_DTYPES))}, got {accumulate_dtype!r}")


def _checked_prediction(pred, batch: int, window: tuple[int, ...]) -> torch.Tensor:
    """A model's output for ``batch`` windows, or an error saying what it must return."""
    size = " x ".join(map(str, window))
    if not isinstance(pred, torch.Tensor) or pred.dim() != 2 + len(window) or \
            pred.shape[0] != batch or tuple(pred.shape[2:]) != tuple(window):
        got = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
        raise ValueError(f"the model must map B x C x {size} windows to B x K x {size} "
                         f"predictions of the same size; it returned {got} for a batch "
                         f"of {batch}")
    return pred
