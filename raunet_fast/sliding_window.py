"""Sliding-window inference: segment images larger than the patches a model was trained on.

:func:`sliding_window_inference` cuts each image into overlapping windows of a fixed size,
runs the model on batches of windows and blends the overlapping predictions with a weight
map (Gaussian by default: a window's centre counts more than its border, where the network
saw less context). On the device the model runs on, memory is bounded by ``batch_size``
windows whatever the image size (the blended result is accumulated on the image's device,
e.g. in CPU memory for a large image while the model runs on the GPU). On the image's
device there is the input (a uint8 image stays uint8: windows are scaled to float one
batch at a time), the float32 result, which doubles as the accumulator, and one band of
the weight normaliser; no other image-sized tensor. Every model call
takes ``batch_size`` windows (the last batch is padded with repeats) unless the whole image
needs fewer, which suits the fused model with CUDA graphs
(:func:`raunet_fast.inference.build_inference_model` with ``cuda_graphs=True``: one graph
per call shape).

Works with any callable mapping ``B x C x h x w`` to ``B x K x h x w`` (the reference models,
the fused inference model, a user's own module).
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["sliding_window_inference", "window_starts", "blend_weights"]


def _pair(v, name: str) -> tuple[int, int]:
    def is_int(t):
        return isinstance(t, numbers.Integral) and not isinstance(t, bool)

    if is_int(v):
        v = (v, v)
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or len(v) != 2 or \
            not all(is_int(t) for t in v):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    a, b = int(v[0]), int(v[1])
    if a < 1 or b < 1:
        raise ValueError(f"{name} must be >= 1, got {v!r}")
    return a, b


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


def blend_weights(window: tuple[int, int], mode: str = "gaussian", sigma_scale: float = 0.125,
                  device=None) -> torch.Tensor:
    """``h x w`` float32 weight map of one window: ``"constant"`` (all ones: plain averaging)
    or ``"gaussian"`` (``exp(-d^2 / 2 sigma^2)`` per axis, ``sigma = sigma_scale * size``,
    peak 1, floored at 1e-3 so that every pixel keeps a weight)."""
    h, w = window
    if mode == "constant":
        return torch.ones(h, w, device=device)
    if mode != "gaussian":
        raise ValueError(f"blend must be 'gaussian' or 'constant', got {mode!r}")
    if not sigma_scale > 0:
        raise ValueError(f"sigma_scale must be > 0, got {sigma_scale}")

    def axis(n: int) -> torch.Tensor:  # float64 on the CPU (not every device has it)
        d = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        return torch.exp(-0.5 * (d / (sigma_scale * n)) ** 2)

    wmap = axis(h)[:, None] * axis(w)[None, :]
    return (wmap / wmap.max()).clamp_min(1e-3).float().to(device)


@torch.no_grad()
def sliding_window_inference(model: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                             window: int | Sequence[int], *, overlap: float = 0.25,
                             batch_size: int = 4, blend: str = "gaussian",
                             sigma_scale: float = 0.125, pad_value: float = 0.0,
                             device: torch.device | str | None = None,
                             progress: bool = False) -> torch.Tensor:
    """Predict ``image`` (``N x C x H x W``) window by window and blend the windows.

    ``image``: floating point (passed to the model as it is) or uint8 (0..255: each batch of
    windows is converted to float32 and scaled by 1/255, as decoded images are in training,
    so a large image never exists as a float copy); any strides (e.g. an ``H x W x C`` array
    permuted to ``C x H x W``). ``window``: window size (int or ``(h, w)``), typically the
    patch size the model was trained on; along an axis where the image is smaller than the
    window, windows are padded with ``pad_value`` (in model-input units, i.e. after the
    uint8 scaling) up to it and the padding dropped from the result. ``overlap``: fraction
    of a window that neighbouring windows share, in ``[0, 1)``. ``batch_size``: windows per
    model call (the memory bound). ``blend``: ``"gaussian"`` or ``"constant"`` weights
    (:func:`blend_weights`). ``device``: where the model runs (default: the image's device);
    windows are moved there one batch at a time and predictions back, so a large image and
    its result can stay in CPU memory while the model runs on the GPU. The last batch is
    padded to ``batch_size`` with repeats of its last window (their predictions dropped)
    when there were full batches before it, so that calls keep one shape. ``progress``: a
    tqdm bar counting windows, with the throughput in image megapixels per second.

    Returns float32 ``N x K x H x W`` on the image's device: the weighted mean, at every pixel,
    of the predictions of the windows covering it (``K``: the model's output channels; logits
    stay logits). Besides the result, memory holds one batch of windows and predictions and
    a ``window-height x W`` normaliser band.
    """
    _check_inputs(image, overlap, batch_size)
    win = _pair(window, "window")
    run_dev = torch.device(device) if device is not None else image.device
    weights = blend_weights(win, blend, sigma_scale, device=image.device)
    n, _, h, w = image.shape
    ys, xs = window_starts(h, win[0], overlap), window_starts(w, win[1], overlap)
    tiles = [(b, y, x) for b in range(n) for y in ys for x in xs]
    out = None
    with _WindowBar(len(tiles), n * h * w, progress) as bar:
        for i in range(0, len(tiles), batch_size):
            chunk = tiles[i:i + batch_size]
            # one call shape: pad a short last batch with repeats (when full ones came first)
            call = chunk + [chunk[-1]] * (batch_size - len(chunk)) if i else chunk
            xb = _take_windows(image, call, win, pad_value, run_dev)
            pred = _checked_prediction(model(xb), len(call), win)[:len(chunk)]
            pred = pred.to(image.device, torch.float32)
            if out is None:  # the result doubles as the accumulator of weighted logits
                out = torch.zeros(n, pred.shape[1], h, w, device=image.device)
            _accumulate(out, pred, chunk, weights)
            bar.update(len(chunk))
    return _normalise(out, weights, ys, xs)


def _take_windows(image: torch.Tensor, call, win: tuple[int, int], pad_value: float,
                  device: torch.device) -> torch.Tensor:
    """The windows ``(b, y, x)`` of ``call`` as one contiguous ``B x C x wh x ww`` batch on
    ``device``: uint8 moved as uint8, then scaled to float32 in [0, 1]; padded with
    ``pad_value`` at the bottom / right where the image is smaller than a window."""
    wh, ww = win
    xb = torch.stack([image[b, :, y:y + wh, x:x + ww] for b, y, x in call])
    xb = xb.to(device).contiguous()  # contiguous: the model sees the layout of a plain batch
    if xb.dtype == torch.uint8:
        xb = xb.float().div_(255.0)  # as raunet_fast.data.common.resize_pair scales images
    ph, pw = wh - xb.shape[-2], ww - xb.shape[-1]
    return F.pad(xb, (0, pw, 0, ph), value=pad_value) if ph or pw else xb


def _accumulate(out: torch.Tensor, pred: torch.Tensor, chunk, weights: torch.Tensor) -> None:
    """Add each window's prediction times the weight map into ``out`` in place (cropped
    where a window was padded past the image)."""
    h, w = out.shape[-2:]
    for j, (b, y, x) in enumerate(chunk):
        dh, dw = min(weights.shape[0], h - y), min(weights.shape[1], w - x)
        out[b, :, y:y + dh, x:x + dw].addcmul_(pred[j, :, :dh, :dw], weights[:dh, :dw])


def _normalise(out: torch.Tensor, weights: torch.Tensor, ys, xs) -> torch.Tensor:
    """Divide ``out`` in place by the sum of the weights of the windows covering each pixel
    (the same for every image and channel), built band by band from the window starts so
    that only one ``window-height x W`` band of it exists at a time."""
    (wh, ww), (h, w) = weights.shape, out.shape[-2:]
    for r0 in range(0, h, wh):
        r1 = min(r0 + wh, h)
        norm = torch.zeros(r1 - r0, w, device=out.device)
        for y in ys:
            a, b = max(y, r0), min(y + wh, r1)
            for x in xs if a < b else ():
                dw = min(ww, w - x)
                norm[a - r0:b - r0, x:x + dw].add_(weights[a - y:b - y, :dw])
        out[..., r0:r1, :].div_(norm)
    return out


class _WindowBar:
    """tqdm bar over windows whose postfix is the throughput in image megapixels / s (the
    windows done times the image pixels per window, overlap counted once)."""

    def __init__(self, windows: int, pixels: int, enabled: bool):
        from tqdm import tqdm

        self.mp_per_window = pixels / 1e6 / windows
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
            mp_s = (self.bar.n + k) * self.mp_per_window / elapsed
            self.bar.set_postfix_str(f"{mp_s:.2f} MP/s", refresh=False)
        self.bar.update(k)


def _check_inputs(image, overlap: float, batch_size) -> None:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() != 4:
        hint = " (add a batch dimension: image[None])" if image.dim() == 3 else ""
        raise ValueError(f"image must be N x C x H x W, got shape {tuple(image.shape)}{hint}")
    if image.numel() == 0:
        raise ValueError(f"image is empty: shape {tuple(image.shape)}")
    if not (image.is_floating_point() or image.dtype == torch.uint8):
        raise TypeError(f"image must be floating point or uint8 (0..255, scaled by 1/255), "
                        f"got {image.dtype}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")


def _checked_prediction(pred, batch: int, window: tuple[int, int]) -> torch.Tensor:
    """A model's output for ``batch`` windows, or an error saying what it must return."""
    wh, ww = window
    if not isinstance(pred, torch.Tensor) or pred.dim() != 4 or pred.shape[0] != batch or \
            tuple(pred.shape[-2:]) != (wh, ww):
        got = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
        raise ValueError(f"the model must map B x C x {wh} x {ww} windows to B x K x {wh} x "
                         f"{ww} predictions of the same size; it returned {got} for a batch "
                         f"of {batch}")
    return pred
