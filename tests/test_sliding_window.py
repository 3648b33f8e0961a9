"""Sliding-window inference (raunet_fast.sliding_window) against whole-image predictions."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from raunet_fast.sliding_window import blend_weights, sliding_window_inference, window_starts


def _pointwise(cin: int, k: int) -> nn.Module:
    """A per-pixel model: the tiled prediction must equal the whole-image one exactly
    (up to float rounding of the blend), whatever the windows."""
    m = nn.Sequential(nn.Conv2d(cin, 7, 1), nn.Tanh(), nn.Conv2d(7, k, 1)).double()
    return m.eval()


@pytest.mark.parametrize("size,window,overlap", [
    ((45, 70), 16, 0.25), ((45, 70), (13, 24), 0.5), ((9, 11), 16, 0.25),   # smaller: padded
    ((33, 16), 16, 0.0), ((64, 40), (64, 7), 0.9)])
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_pointwise_model_tiles_equal_whole_image(size, window, overlap, blend):
    model = _pointwise(3, 2)  # fresh weights and inputs each run (conftest seeds torch)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
    out = sliding_window_inference(model, x, window, overlap=overlap, batch_size=3, blend=blend)
    assert out.shape == ref.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_weights_normalise_a_constant_model():
    """A model that predicts ones everywhere gives exactly one everywhere after blending."""
    ones = lambda xb: torch.ones(xb.shape[0], 3, *xb.shape[-2:])  # noqa: E731
    x = torch.zeros(1, 1, 50, 37)
    out = sliding_window_inference(ones, x, 16, overlap=0.4, batch_size=5)
    torch.testing.assert_close(out, torch.ones(1, 3, 50, 37))


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_blend_is_the_documented_weighted_mean(blend):
    """A model that answers each window with its own start column: every output pixel must
    be the mean of the covering windows' starts, weighted by the documented window profile
    (constant: 1; gaussian: exp(-d^2 / 2 sigma^2), sigma = size / 8, d from the centre),
    computed here from the formula, independently of the implementation."""
    import math

    def start_column(xb):  # channel 0 of the input holds each pixel's column index
        return xb[:, :1, :, :1].expand(-1, 1, -1, xb.shape[-1]).clone()

    width, win = 40, 16
    cols = torch.arange(float(width)).expand(1, 1, 8, width).clone()
    out = sliding_window_inference(start_column, cols, (8, win), overlap=0.5, blend=blend)
    starts = window_starts(width, win, 0.5)

    def gauss(offset):  # the profile along x; row 3 of 8 sits at the y profile's peak
        return math.exp(-0.5 * ((offset - (win - 1) / 2) / (win / 8)) ** 2)
    peak = max(gauss(o) for o in range(win))  # the map is scaled to peak 1, then floored
    for c in range(width):
        covering = [s0 for s0 in starts if s0 <= c < s0 + win]
        wts = [1.0 if blend == "constant" else max(gauss(c - s0) / peak, 1e-3)
               for s0 in covering]
        expect = sum(w * s0 for w, s0 in zip(wts, covering)) / sum(wts)
        assert abs(out[0, 0, 3, c].item() - expect) < 1e-4, (c, covering, out[0, 0, 3, c])


@pytest.mark.parametrize("size,window,overlap", [(100, 16, 0.25), (17, 16, 0.5), (16, 16, 0.3),
                                                 (5, 16, 0.1), (1000, 96, 0.0), (97, 10, 0.9)])
def test_window_starts_cover_with_overlap(size, window, overlap):
    s = window_starts(size, window, overlap)
    assert s[0] == 0 and s == sorted(set(s))
    if size <= window:
        assert s == [0]
        return
    assert s[-1] == size - window
    covered = torch.zeros(size, dtype=torch.bool)
    for a in s:
        covered[a:a + window] = True
    assert bool(covered.all())
    steps = [b - a for a, b in zip(s, s[1:])]
    assert max(steps) <= max(1, int(window * (1 - overlap)))  # the overlap is kept
    assert max(steps) - min(steps) <= 1  # evenly spread (no sliver window at the end)


def test_gaussian_weights_shape():
    w = blend_weights((9, 14))
    assert w.shape == (9, 14) and w.dtype == torch.float32
    assert w.max() == 1 and w.min() >= 1e-3
    torch.testing.assert_close(w, w.flip(0))
    torch.testing.assert_close(w, w.flip(1))
    assert w[4, 6] > w[0, 0]
    assert bool((blend_weights((4, 4), "constant") == 1).all())


def test_raunet_and_fused_model_on_a_large_odd_image():
    import raunet_fast
    from raunet_fast.inference import build_inference_model

    model = raunet_fast.build_model("raunet", in_channels=3, out_channels=2, base_channels=4,
                                    depth=2).eval()
    fused = build_inference_model(model, dtype=torch.float32)
    x = torch.randn(1, 3, 45, 70)
    a = sliding_window_inference(model, x, 32, overlap=0.25, batch_size=2)
    b = sliding_window_inference(fused, x, 32, overlap=0.25, batch_size=2)
    assert a.shape == (1, 2, 45, 70)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # a window as large as the image is the plain forward
    with torch.no_grad():
        torch.testing.assert_close(sliding_window_inference(model, x, (45, 70)), model(x))


def test_bad_arguments_are_named():
    model = _pointwise(3, 1).float()
    x = torch.randn(1, 3, 20, 20)
    with pytest.raises(ValueError, match="N x C x H x W"):
        sliding_window_inference(model, x[0], 8)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_inference(model, x, 8, overlap=1.0)
    with pytest.raises(ValueError, match="window"):
        sliding_window_inference(model, x, 0)
    with pytest.raises(ValueError, match="batch_size"):
        sliding_window_inference(model, x, 8, batch_size=0)
    with pytest.raises(TypeError, match="floating"):
        sliding_window_inference(model, x.to(torch.uint8), 8)
    with pytest.raises(ValueError, match="blend"):
        sliding_window_inference(model, x, 8, blend="median")
    down = nn.Conv2d(3, 1, 2, stride=2)
    with pytest.raises(ValueError, match="same size"):
        sliding_window_inference(down, x, 8)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_blend_in_both_axes(blend):
    """Windows overlapping in y and x: each pixel is the weighted mean of the covering
    windows' ids, the weight the product of the two axis profiles scaled to peak 1 and
    floored at 1e-3 (the documented map), computed here from the formula."""
    import math

    def window_id(xb):  # channels 0, 1 of the input hold each pixel's row and column
        return (xb[:, :1, :1, :1] * 1000 + xb[:, 1:2, :1, :1]).expand(-1, 1, *xb.shape[-2:])

    H, W, wh, ww = 30, 40, 12, 16
    rows = torch.arange(float(H))[:, None].expand(H, W)
    cols = torch.arange(float(W))[None, :].expand(H, W)
    image = torch.stack([rows, cols])[None].clone()
    out = sliding_window_inference(window_id, image, (wh, ww), overlap=0.5, blend=blend,
                                   batch_size=3)

    def gauss(offset, n):
        return math.exp(-0.5 * ((offset - (n - 1) / 2) / (n / 8)) ** 2)
    peak = max(gauss(o, wh) for o in range(wh)) * max(gauss(o, ww) for o in range(ww))
    ys, xs = window_starts(H, wh, 0.5), window_starts(W, ww, 0.5)
    for r in range(0, H, 3):
        for c in range(0, W, 3):
            num = den = 0.0
            for sy in ys:
                for sx in xs:
                    if sy <= r < sy + wh and sx <= c < sx + ww:
                        wt = 1.0 if blend == "constant" else \
                            max(gauss(r - sy, wh) * gauss(c - sx, ww) / peak, 1e-3)
                        num, den = num + wt * (sy * 1000 + sx), den + wt
            assert abs(out[0, 0, r, c].item() - num / den) < 1e-2, (r, c)


def test_calls_keep_one_shape():
    """The last batch is padded to batch_size when full batches came before it (one call
    shape, e.g. one CUDA graph); a small image that needs fewer windows is not padded."""
    seen = []

    def model(xb):
        seen.append(xb.shape[0])
        return xb[:, :1] * 2

    x = torch.randn(1, 1, 40, 40)
    out = sliding_window_inference(model, x, 16, overlap=0.0, batch_size=4)  # 9 windows
    assert seen == [4, 4, 4]
    torch.testing.assert_close(out, x * 2)
    seen.clear()
    sliding_window_inference(model, x[..., :16, :30], 16, overlap=0.0, batch_size=4)
    assert seen == [2]


def test_window_argument_types():
    import numpy as np

    model = lambda xb: xb  # noqa: E731
    x = torch.randn(1, 1, 8, 8)
    torch.testing.assert_close(sliding_window_inference(model, x, np.int64(4)), x)
    for bad in ("64", (4,), (4, 4, 4), 2.5, True):
        with pytest.raises(TypeError, match="window"):
            sliding_window_inference(model, x, bad)
