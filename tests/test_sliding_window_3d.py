"""3-D sliding windows (raunet_fast.sliding_window on N x C x D x H x W volumes) and 3-D
flip TTA, against whole-volume predictions, the weight formula written out, a naive blend,
and fp64 references."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from helpers.memory import LargeStorages
from raunet_fast.sliding_window import blend_weights, sliding_window_inference, window_starts
from raunet_fast.tta import FlipTTA


def _pointwise3d(cin: int, k: int) -> nn.Module:
    """A per-voxel model: every window predicts each voxel exactly as the whole volume
    does, so the blend is a weighted mean of equal values."""
    return nn.Sequential(nn.Conv3d(cin, 5, 1), nn.Tanh(), nn.Conv3d(5, k, 1)).double().eval()


def _context3d(cin: int, k: int) -> nn.Module:
    """3 x 3 x 3 convolutions: the blend of overlapping windows differs from the whole."""
    return nn.Sequential(nn.Conv3d(cin, 3, 3, padding=1), nn.Tanh(),
                         nn.Conv3d(3, k, 3, padding=1)).eval()


@pytest.mark.parametrize("size,window,overlap", [
    ((20, 18, 12), (8, 8, 8), 0.5), ((13, 20, 9), (8, 6, 16), 0.25),   # padded along W
    ((5, 7, 6), 8, 0.25), ((12, 9, 10), (12, 4, 5), 0.0)])
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_pointwise_model_windows_equal_whole_volume(size, window, overlap, blend):
    model = _pointwise3d(3, 2)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
    out = sliding_window_inference(model, x, window, overlap=overlap, batch_size=3, blend=blend)
    assert out.shape == ref.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_raunet_window_covering_the_volume_is_the_plain_forward():
    """A tiny 3-D RAUNet: one window as large as the volume (or as the volume padded to the
    network's size multiple, as the model pads it itself) is model(volume)."""
    from raunet_fast.models import build_model

    model = build_model("raunet", in_channels=2, out_channels=3, base_channels=4, depth=3,
                        spatial_dims=3).eval()
    x = torch.randn(1, 2, 20, 18, 12)
    with torch.no_grad():
        ref = model(x)
    assert model.size_multiple == 4
    for window in ((20, 18, 12), (20, 20, 12)):
        out = sliding_window_inference(model, x, window, batch_size=2)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # smaller windows see less context: the blend is not the plain forward any more
    out = sliding_window_inference(model, x, 8, overlap=0.5, batch_size=4)
    assert out.shape == ref.shape and (out - ref).abs().max() > 1e-4


@pytest.mark.parametrize("window,sigma_scale", [((5, 8, 7), 0.125), ((4, 1, 9), 0.3),
                                                ((6, 6), 0.125)])
def test_gaussian_weights_match_the_formula(window, sigma_scale):
    """The N-D map: the product over axes of exp(-d^2 / 2 sigma^2) (d from the axis centre,
    sigma = sigma_scale * size), scaled to peak 1, floored at 1e-3 - computed here voxel by
    voxel in Python floats."""
    got = blend_weights(window, sigma_scale=sigma_scale)
    assert got.shape == window and got.dtype == torch.float32
    want = np.zeros(window)
    for idx in itertools.product(*(range(n) for n in window)):
        want[idx] = math.prod(math.exp(-0.5 * ((i - (n - 1) / 2) / (sigma_scale * n)) ** 2)
                              for i, n in zip(idx, window))
    want = np.maximum(want / want.max(), 1e-3)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-7)
    assert bool((blend_weights(window, "constant") == 1).all())


def _naive_blend3d(model, image, window, overlap):
    """The documented algorithm written out: zero-pad the volume at the far end of each
    axis up to the window, predict each window alone, average with the formula's weights
    (fp64), crop the padding."""
    sizes = image.shape[2:]
    pads = [p for s, w in reversed(list(zip(sizes, window))) for p in (0, max(w - s, 0))]
    padded = torch.nn.functional.pad(image.double(), pads)
    full = padded.shape[2:]
    axes = [torch.tensor([math.exp(-0.5 * ((i - (n - 1) / 2) / (n / 8)) ** 2) for i in range(n)],
                         dtype=torch.float64) for n in window]
    wmap = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    wmap = (wmap / wmap.max()).clamp_min(1e-3)
    num = den = 0
    for start in itertools.product(*(window_starts(s, w, overlap) for s, w in zip(full, window))):
        sl = tuple(slice(a, a + w) for a, w in zip(start, window))
        with torch.no_grad():
            pred = model(padded[(slice(None), slice(None), *sl)].float()).double()
        pad = [p for a, w, s in reversed(list(zip(start, window, full))) for p in (a, s - a - w)]
        num = num + torch.nn.functional.pad(pred * wmap, pad)
        den = den + torch.nn.functional.pad(wmap, pad)
    return (num / den)[(slice(None), slice(None), *(slice(0, s) for s in sizes))]


@pytest.mark.parametrize("size,window,overlap,batch", [
    ((17, 14, 11), (8, 8, 6), 0.25, 5),    # odd sizes, last batch padded with repeats
    ((6, 20, 9), (8, 8, 8), 0.5, 4)])      # smaller than the window along D
def test_context_model_equals_naive_blend(size, window, overlap, batch):
    model = _context3d(2, 2)
    x = torch.randn(2, 2, *size)
    out = sliding_window_inference(model, x, window, overlap=overlap, batch_size=batch)
    ref = _naive_blend3d(model, x, window, overlap)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def _coverage(size, window, overlap) -> int:
    """The most windows covering one voxel, counted from the starts."""
    counts = [max(sum(a <= i < a + w for a in window_starts(s, w, overlap)) for i in range(s))
              for s, w in zip(size, window)]
    return math.prod(counts)


def _largest_prediction(model, x, window, overlap) -> float:
    """max |p| over every window's prediction (windows inside the volume here)."""
    starts = [window_starts(s, w, overlap) for s, w in zip(x.shape[2:], window)]
    with torch.no_grad():
        return max(model(x[(slice(None), slice(None),
                            *(slice(a, a + w) for a, w in zip(st, window)))]).abs().max().item()
                   for st in itertools.product(*starts))


@pytest.mark.parametrize("dtype,unit", [(torch.float16, 2.0 ** -11), (torch.bfloat16, 2.0 ** -8)])
def test_reduced_accumulator_keeps_the_documented_error(dtype, unit):
    """float16 / bfloat16 accumulation: the result is in that dtype and within
    (m + 1) * u * max|p| of the fp64 weighted mean (m: windows covering a voxel)."""
    model = _context3d(1, 3)
    x = torch.randn(1, 1, 19, 13, 15) * 4
    size, window, overlap = x.shape[2:], (8, 8, 8), 0.5
    ref = _naive_blend3d(model, x, window, overlap)
    out = sliding_window_inference(model, x, window, overlap=overlap, accumulate_dtype=dtype)
    assert out.dtype == dtype and out.shape == ref.shape
    m = _coverage(size, window, overlap)
    bound = (m + 1) * unit * _largest_prediction(model, x, window, overlap)
    err = (out.double() - ref).abs().max().item()
    assert err <= bound, (err, bound, m)
    assert err > 0  # the reduced dtype did round (the check is not between equal tensors)
    fp32 = sliding_window_inference(model, x, window, overlap=overlap)
    assert (fp32.double() - ref).abs().max() < err


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_volume_memory_stays_bounded(dtype):
    """The only volume-sized storage created is the result (output channels only, in the
    accumulate dtype); the model sees batch_size windows at most; no all-windows tensor."""
    d, h, w, win, batch = 40, 36, 30, 12, 3
    conv = _context3d(2, 2)
    seen = []

    def model(xb):
        assert tuple(xb.shape[1:]) == (2, win, win, win) and xb.shape[0] <= batch
        seen.append(xb.shape[0])
        return conv(xb)

    image = torch.randn(1, 2, d, h, w)
    with LargeStorages(limit=d * h * w * 2) as mode:  # one float16 D x H x W volume
        out = sliding_window_inference(model, image, win, overlap=0.25, batch_size=batch,
                                       accumulate_dtype=dtype)
    big = {p: op for p, op in mode.seen.items() if p != image.untyped_storage().data_ptr()}
    assert list(big) == [out.untyped_storage().data_ptr()], big
    assert out.shape == (1, 2, d, h, w) and out.dtype == dtype
    n = math.prod(len(window_starts(s, win, 0.25)) for s in (d, h, w))
    assert len(seen) == -(-n // batch) and set(seen) == {batch}


def test_progress_counts_windows_and_megavoxels(capsys):
    sliding_window_inference(lambda xb: xb[:, :1], torch.zeros(1, 1, 16, 16, 16), 8,
                             overlap=0.0, batch_size=4, progress=True)
    err = capsys.readouterr().err
    assert "8/8" in err and "MV/s" in err, err


def test_volume_argument_errors():
    x = torch.randn(1, 1, 8, 8, 8)
    ident = lambda xb: xb  # noqa: E731
    for bad in ((4, 4), (4, 4, 4, 4), "8"):
        with pytest.raises(TypeError, match="three ints"):
            sliding_window_inference(ident, x, bad)
    with pytest.raises(ValueError, match="N x C x D x H x W"):
        sliding_window_inference(ident, x[None], 4)
    with pytest.raises(ValueError, match="accumulate_dtype"):
        sliding_window_inference(ident, x, 4, accumulate_dtype=torch.int32)
    with pytest.raises(ValueError, match="same size"):
        sliding_window_inference(lambda xb: xb[..., :2], x, 4)


def test_flip_tta_on_volumes_is_the_mean_of_eight_flips():
    model = _context3d(2, 2).double()
    x = torch.randn(1, 2, 7, 6, 9, dtype=torch.float64)
    flips = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    with torch.no_grad():
        expect = sum(model(x.flip(f) if f else x).flip(f) if f else model(x)
                     for f in flips) / 8
        got = FlipTTA(model)(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expect, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="-3"):
        FlipTTA(nn.Identity(), flips=[(-3,)])(torch.zeros(1, 1, 4, 4))
