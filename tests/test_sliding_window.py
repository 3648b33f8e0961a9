"""Sliding-window inference (raunet_fast.sliding_window) against whole-image predictions."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from helpers.memory import LargeStorages
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
    for dtype in (torch.int16, torch.int64, torch.bool):
        with pytest.raises(TypeError, match="floating point or uint8"):
            sliding_window_inference(model, x.to(dtype), 8)
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


def _context_model(cin: int, k: int) -> nn.Module:
    """3 x 3 convolutions: a window's prediction depends on its neighbourhood, so the
    blend of overlapping windows differs from the whole-image prediction."""
    return nn.Sequential(nn.Conv2d(cin, 4, 3, padding=1), nn.Tanh(),
                         nn.Conv2d(4, k, 3, padding=1)).eval()


def _naive_blend(model, image, window, overlap, pad_value=0.0):
    """The documented algorithm written out plainly: pad the float image at the bottom /
    right up to the window, predict every window on its own, average with the Gaussian map
    (exp(-d^2 / 2 sigma^2) per axis, sigma = size / 8, scaled to peak 1, floored at 1e-3),
    crop the padding."""
    import math

    n, _, h, w = image.shape
    wh, ww = window
    padded = torch.nn.functional.pad(image, (0, max(ww - w, 0), 0, max(wh - h, 0)),
                                     value=pad_value)
    H, W = padded.shape[-2:]

    def axis(size):
        return torch.tensor([math.exp(-0.5 * ((i - (size - 1) / 2) / (size / 8)) ** 2)
                             for i in range(size)], dtype=torch.float64)
    wmap = axis(wh)[:, None] * axis(ww)[None, :]
    wmap = (wmap / wmap.max()).clamp_min(1e-3)
    num = den = 0
    for y in window_starts(H, wh, overlap):
        for x in window_starts(W, ww, overlap):
            with torch.no_grad():
                pred = model(padded[:, :, y:y + wh, x:x + ww]).double()
            num = num + torch.nn.functional.pad(pred * wmap, (x, W - x - ww, y, H - y - wh))
            den = den + torch.nn.functional.pad(wmap, (x, W - x - ww, y, H - y - wh))
    return (num / den)[:, :, :h, :w]


@pytest.mark.parametrize("size,window,overlap,batch", [
    ((45, 70), (16, 16), 0.25, 5),     # odd sizes; 48 windows: the last batch is padded
    ((9, 11), (16, 16), 0.25, 4),      # smaller than the window in both axes
    ((9, 70), (16, 24), 0.5, 3),       # smaller in one axis only
    ((33, 17), (16, 16), 0.0, 4)])
def test_uint8_image_equals_float_path_and_naive_blend(size, window, overlap, batch):
    """A uint8 image gives exactly what its float / 255 version gives (the windows are
    scaled as resize_pair scales images), and both match the naive blend of the
    documented algorithm; an H x W x C array permuted to C x H x W gives the same."""
    model = _context_model(3, 2)
    u8 = torch.randint(0, 256, (2, 3, *size), dtype=torch.uint8)
    as_float = u8.float() / 255
    a = sliding_window_inference(model, u8, window, overlap=overlap, batch_size=batch)
    b = sliding_window_inference(model, as_float, window, overlap=overlap, batch_size=batch)
    assert a.shape == (2, 2, *size) and a.dtype == torch.float32
    assert torch.equal(a, b)
    hwc = u8.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # strides of a decoded image
    assert torch.equal(sliding_window_inference(model, hwc, window, overlap=overlap,
                                                batch_size=batch), a)
    ref = _naive_blend(model, as_float, window, overlap)
    torch.testing.assert_close(a.double(), ref, rtol=1e-5, atol=1e-5)


def test_pad_value_is_in_model_input_units():
    """An image smaller than the window: a uint8 image is scaled before the window is padded,
    so pad_value means the same for uint8 and float images."""
    model = _context_model(1, 1)
    u8 = torch.randint(0, 256, (1, 1, 7, 30), dtype=torch.uint8)
    a = sliding_window_inference(model, u8, 16, pad_value=0.5)
    torch.testing.assert_close(a.double(), _naive_blend(model, u8 / 255, (16, 16), 0.25, 0.5),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_memory_stays_bounded(dtype):
    """Without timing: the model only ever sees float32 batches of at most batch_size
    windows, and the only image-sized storage created is the result (no float copy of a
    uint8 input, no padded image, no N x K x H x W or H x W temporaries beside it)."""
    h, w, win, batch = 300, 260, 64, 3
    conv = _context_model(3, 2)
    shapes = []

    def model(xb):
        assert xb.dtype == torch.float32 and xb.is_contiguous()
        assert xb.shape[0] <= batch and tuple(xb.shape[1:]) == (3, win, win), xb.shape
        shapes.append(xb.shape[0])
        return conv(xb)

    image = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8)
    image = image if dtype == torch.uint8 else image / 255
    with LargeStorages(limit=h * w * 4) as mode:  # one float32 H x W plane
        out = sliding_window_inference(model, image, win, overlap=0.25, batch_size=batch)
    big = {p: op for p, op in mode.seen.items() if p != image.untyped_storage().data_ptr()}
    assert list(big) == [out.untyped_storage().data_ptr()], big
    assert out.shape == (1, 2, h, w)
    assert set(shapes) == {batch} and len(shapes) == -(-36 // batch)  # 6 x 6 windows


def test_progress_bar_counts_windows_and_megapixels(capsys):
    model = lambda xb: xb[:, :1]  # noqa: E731
    sliding_window_inference(model, torch.zeros(1, 1, 40, 40, dtype=torch.uint8), 16,
                             overlap=0.0, batch_size=4, progress=True)
    err = capsys.readouterr().err
    assert "9/9" in err and "MP/s" in err, err
