"""conv3x3_fused's backend choice: the ``auto`` pick and its timing cache, cuDNN channel padding."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.conv_cases import EPILOGUES, make_case, reference

from raunet_fast.ops.conv3x3 import weights as op_weights


def test_auto_pick_faster(monkeypatch):
    """The one-time backend choice on CUDA where Triton contends ("auto"): the faster
    candidate by the timer, remembered per key; a failing candidate is out; none left ->
    default."""
    from raunet_fast.ops.conv3x3 import dispatch as op

    monkeypatch.setattr(op, "_PICKED", {})
    monkeypatch.setattr(op, "PICK_TIMES", {})
    calls = []
    cands = {"triton": lambda: calls.append("triton"), "cudnn": lambda: calls.append("cudnn")}
    ms = {"triton": 0.5, "cudnn": 0.9}

    def timer(fn):
        fn()
        return ms[calls[-1]]

    assert op.pick_faster(("a",), cands, timer, "cudnn") == "triton"
    n = len(calls)
    assert op.pick_faster(("a",), cands, timer, "cudnn") == "triton" and len(calls) == n
    ms.update(triton=2.0)
    assert op.pick_faster(("b",), cands, timer, "cudnn") == "cudnn"

    def boom():
        raise RuntimeError("no kernel image")
    assert op.pick_faster(("c",), {"triton": boom, "cudnn": cands["cudnn"]}, timer,
                          "triton") == "cudnn"
    assert op.pick_faster(("d",), {"triton": boom}, timer, "cudnn") == "cudnn"   # none ran
    assert op._PICKED == {("a",): "triton", ("b",): "cudnn", ("c",): "cudnn"}  # d: retried
    assert op.PICK_TIMES[("a",)] == {"triton": 0.5, "cudnn": 0.9}
    assert op.PICK_TIMES[("c",)] == {"cudnn": 0.9}
    # the report benchmark prints, for a key shaped like _auto_pick's
    key = (64, 128, 64, False, True, torch.bfloat16, torch.channels_last, True, 20, 0, True,
           True, True)
    monkeypatch.setattr(op, "PICK_TIMES", {key: {"triton": 0.21, "cudnn": 0.25}})
    op._PICKED[key] = "triton"
    (line,) = op.describe_picks()
    assert "64 -> 128" in line and "1x1 64" in line and "bfloat16" in line
    assert "cudnn 0.2500, triton 0.2100 ms -> triton" in line and str(2 ** 20) in line


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("cin", [1, 3, 4, 13, 16])
def test_pad_channels(channels_last, cin):
    """Zero channels up to a multiple of 8 ("cudnn-pad"): the same convolution (fp64, against
    the unpadded one), in the requested layout; the padded weight is made once per weight
    tensor and made again after an in-place update."""

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, cin, 7, 13, dtype=torch.float64).contiguous(memory_format=fmt)
    w = torch.randn(5, cin, 3, 3, dtype=torch.float64)
    xp, wp = op_weights.pad_channels(x, w, fmt)
    cp = -(-cin // 8) * 8
    assert xp.shape == (2, cp, 7, 13) and wp.shape == (5, cp, 3, 3)
    if cp == cin:
        assert xp is x and wp is w
        return
    assert xp.is_contiguous(memory_format=fmt) and wp.is_contiguous(memory_format=fmt)
    assert not xp[:, cin:].any() and not wp[:, cin:].any()
    torch.testing.assert_close(F.conv2d(xp, wp, padding=1), F.conv2d(x, w, padding=1),
                               rtol=1e-12, atol=1e-12)
    assert op_weights.pad_channels(x, w, fmt)[1] is wp        # cached per weight tensor
    with torch.no_grad():
        w.mul_(2)
    wp2 = op_weights.pad_channels(x, w, fmt)[1]
    assert wp2 is not wp and torch.equal(wp2[:, :cin], w)


def test_auto_candidates_pad():
    """"cudnn-pad" is a candidate exactly where the conv's or the projection's input is not
    a multiple of 8 channels (on a CPU tensor Triton never contends)."""
    from raunet_fast.ops.conv3x3 import dispatch as op

    def cands(cin, cs=None):
        x = torch.randn(1, cin, 4, 4)
        s = None if cs is None else torch.randn(1, cs, 4, 4)
        return op.auto_candidates(x, torch.randn(8, cin, 3, 3), None, s)
    assert cands(3) == ["cudnn-pad"] and cands(4) == ["cudnn-pad"] and cands(1) == ["cudnn-pad"]
    assert cands(64) == [] and cands(64, 64) == [] and cands(24, 16) == []
    assert cands(64, 3) == ["cudnn-pad"]      # level 1's conv2: the 3-channel projection


@pytest.mark.parametrize("epilogue", EPILOGUES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_cudnn_fused_pad_plumbing(monkeypatch, epilogue, channels_last):
    """The "cudnn-pad" path on the CPU, with cuDNN's two fused ops replaced by plain
    ``F.conv2d`` stand-ins (which check that the channels reaching them were padded): the
    padding of the input, of the 3-channel projection and of their weights, and the output
    layout, against the fp64 reference."""
    from raunet_fast.ops.conv3x3 import backends as op_be

    seen = []

    def conv_relu(x, w, b, stride, padding, dilation, groups):
        seen.append(x.shape[1])
        return torch.relu(F.conv2d(x, w, b, stride, padding, dilation, groups))

    def conv_add_relu(x, w, z, alpha, b, stride, padding, dilation, groups):
        seen.append(x.shape[1])
        return torch.relu(F.conv2d(x, w, b, stride, padding, dilation, groups) + alpha * z)

    class ProjectionSpy:   # the module's F: the 1x1 projection's input width
        @staticmethod
        def conv2d(x, w, *a, **kw):
            seen.append(("1x1", x.shape[1]))
            return F.conv2d(x, w, *a, **kw)

    monkeypatch.setattr(torch, "cudnn_convolution_relu", conv_relu)
    monkeypatch.setattr(torch, "cudnn_convolution_add_relu", conv_add_relu)
    monkeypatch.setattr(op_be, "F", ProjectionSpy)
    cin = 3 if epilogue != "shortcut" else 16
    args, kw, k = make_case(2, cin, 12, 7, 13, epilogue, dtype=torch.float64,
                            channels_last=channels_last, cs=3)
    got = op_be.cudnn_fused(*args, kw.get("residual"), kw.get("shortcut_input"),
                          kw.get("shortcut_weight"), pad=True)
    assert seen == ([("1x1", 8)] if epilogue == "shortcut" else []) + [8 if cin == 3 else 16]
    want = reference(*args, **kw)
    assert got.dtype == torch.float64 and got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last
                             else torch.contiguous_format)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
