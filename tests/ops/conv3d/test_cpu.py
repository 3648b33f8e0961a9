"""conv3d_fused on the CPU: oneDNN's fused conv + bias + add ("cpp"), its plain fallback and
the "torch" path against an fp64 reference, odd volumes, non-power-of-two channels, NaN
propagation through the ReLU, argument errors, and the registered op (opcheck)."""
from __future__ import annotations

import pytest
import torch
from helpers.conv3d_cases import CL3, make_case, reference
from helpers.numerics import assert_parity, assert_same_nonfinite

from raunet_fast.ops import BackendUnavailable, conv3d_fused
from raunet_fast.ops.conv3d import dispatch
from raunet_fast.ops.conv3d.op import conv3d_fused_op


@pytest.fixture(params=["cpp", "cpp-plain", "torch", "auto"])
def backend(request, monkeypatch):
    """Each CPU route; "cpp-plain" is "cpp" with the oneDNN fusion off (its fallback)."""
    if request.param == "cpp-plain":
        monkeypatch.setitem(dispatch.ONEDNN, "enabled", False)
        return "cpp"
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("k,residual,relu", [(3, True, True), (3, False, True),
                                              (3, True, False), (1, False, False)])
def test_conv3d_fused_matches_fp64(backend, dtype, k, residual, relu):
    x, w, b, r = make_case(2, 5, 6, 3, 5, 7, k, residual, dtype)
    y = conv3d_fused(x, w, b, r, relu=relu, backend=backend)
    want, mag = reference(x, w, b, r, relu)
    assert y.shape == (2, 6, 3, 5, 7) and y.dtype == dtype
    assert y.is_contiguous(memory_format=CL3)
    assert_parity(y, want, dtype, k=5 * k ** 3, scale=mag, roundings=3,
                  what=f"{backend} k={k} residual={residual} relu={relu}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_conv3d_fused_projection_shortcut(backend, dtype):
    """The 1x1x1 projection added before the ReLU (cpp: conv2 accumulated into it)."""
    x, w, b, _ = make_case(1, 6, 10, 3, 5, 7, dtype=dtype)
    s = torch.randn(1, 5, 3, 5, 7).to(dtype)   # NCDHW: converted inside
    sw = (torch.randn(10, 5) / 5 ** 0.5).to(dtype)
    y = conv3d_fused(x, w, b, shortcut_input=s, shortcut_weight=sw, backend=backend)
    proj = torch.einsum("ncdhw,oc->nodhw", s.double(), sw.double())
    want, mag = reference(x, w, b, proj)
    assert y.is_contiguous(memory_format=CL3)
    assert_parity(y, want, dtype, k=6 * 27 + 5, scale=mag, roundings=4, what=backend)


def test_conv3d_fused_takes_ncdhw_and_no_bias(backend):
    x, w, _, r = make_case(1, 3, 10, 5, 2, 9)
    y = conv3d_fused(x.contiguous(), w, None, r.contiguous(), backend=backend)
    want, _ = reference(x, w, torch.zeros(10), r)
    assert_parity(y, want, torch.float32, k=81, what=backend)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_conv3d_fused_keeps_nan_through_relu(backend, value):
    """oneDNN's ReLU post-op turns NaN into 0: the fused path must not use it."""
    x, w, b, r = make_case(1, 4, 6, 5, 6, 7)
    x[0, 1, 2, 3, 4] = value
    r[0, 2, 0, 0, 0] = float("nan")
    y = conv3d_fused(x, w, b, r, backend=backend)
    want, _ = reference(x, w, b, r)
    assert want.isnan().any()
    assert_same_nonfinite(y, want, torch.float32, k=108, what=f"{backend} {value}")


def test_conv3d_fused_errors():
    x, w, b, r = make_case(1, 4, 6, 3, 3, 3)
    with pytest.raises(ValueError, match="N x C x D x H x W"):
        conv3d_fused(x[:, :, 0], w, b)
    with pytest.raises(ValueError, match="odd k"):
        conv3d_fused(x, w[..., :2, :2, :2], b)
    with pytest.raises(ValueError, match="residual must have"):
        conv3d_fused(x, w, b, r[:, :3])
    with pytest.raises(ValueError, match="bias must have"):
        conv3d_fused(x, w, b[:2])
    s, sw = torch.randn(1, 2, 3, 3, 3), torch.randn(6, 2)
    with pytest.raises(ValueError, match="not both"):
        conv3d_fused(x, w, b, r, shortcut_input=s, shortcut_weight=sw)
    with pytest.raises(ValueError, match="together"):
        conv3d_fused(x, w, b, shortcut_input=s)
    with pytest.raises(ValueError, match="shortcut_weight must be"):
        conv3d_fused(x, w, b, shortcut_input=s, shortcut_weight=sw[:, :1])
    with pytest.raises(BackendUnavailable, match="no Triton 3-D"):
        conv3d_fused(x, w, b, backend="triton")
    with pytest.raises(BackendUnavailable, match="CUDA tensors"):
        conv3d_fused(x, w, b, backend="cuda")


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_conv3d_fused_opcheck(backend):
    x, w, b, r = make_case(1, 3, 5, 3, 4, 5)
    s, sw = torch.randn(1, 2, 3, 4, 5).contiguous(memory_format=CL3), torch.randn(5, 2)
    torch.library.opcheck(conv3d_fused_op, (x, w, b, r, None, None, True, backend))
    torch.library.opcheck(conv3d_fused_op, (x, w, None, None, None, None, False, backend))
    torch.library.opcheck(conv3d_fused_op, (x, w, b, None, s, sw, True, backend))


def test_conv3d_fused_under_compile():
    torch._dynamo.reset()
    x, w, b, r = make_case(1, 3, 5, 3, 4, 5)
    fn = torch.compile(lambda x, r: conv3d_fused(x, w, b, r) * 2.0, fullgraph=True)
    with torch.no_grad():
        assert_parity(fn(x, r), 2.0 * reference(x, w, b, r)[0], torch.float32, k=81,
                      what="compiled")
