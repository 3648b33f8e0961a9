"""The fused inference form of 3-D models (spatial_dims=3): BatchNorm3d folding, and the
folded + fused network against the eval-mode eager model run in fp64, on odd anisotropic
volumes with non-power-of-two widths; NaN / Inf kept; what cannot fold refused."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers.numerics import assert_same_nonfinite, randomize_bn, requires_cuda
from raunet_fast import AttentionUNet, RAUNet, ResUNet, UNet
from raunet_fast.fold import fold_conv_bn
from raunet_fast.inference import build_inference_model

ALL = [UNet, AttentionUNet, ResUNet, RAUNet]
CL3 = torch.channels_last_3d


def model3d(cls, base=6, depth=3, **kw):
    return randomize_bn(cls(3, 2, base_channels=base, depth=depth, spatial_dims=3, **kw))


def rel_l2(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def fp64_reference(model, x):
    import copy

    with torch.no_grad():
        return copy.deepcopy(model).double()(x.double())


def test_conv3d_bn3d_fold_equals_the_eval_module_in_fp64():
    conv = torch.nn.Conv3d(5, 7, 3, padding=1, bias=True).double()
    bn = torch.nn.BatchNorm3d(7).double()
    with torch.no_grad():
        bn.running_mean.normal_(0, 1)
        bn.running_var.uniform_(0.2, 3.0)
        bn.weight.normal_(1, 0.3)
        bn.bias.normal_(0, 0.3)
    bn.eval()
    w, b = fold_conv_bn(conv, bn)
    assert w.dtype == b.dtype == torch.float64 and w.shape == conv.weight.shape
    x = torch.randn(2, 5, 3, 6, 5, dtype=torch.float64)
    with torch.no_grad():
        want = bn(conv(x))
    torch.testing.assert_close(F.conv3d(x, w, b, padding=1), want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="only BatchNorm3d folds into a Conv3d"):
        fold_conv_bn(conv, torch.nn.BatchNorm2d(7).eval())


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("cls", ALL)
def test_fused_3d_model_matches_fp64_eager(cls, backend):
    model = model3d(cls)
    x = torch.randn(1, 3, 9, 14, 11)
    ref = fp64_reference(model, x)
    for dtype, tol in ((torch.float32, 2e-6), (torch.bfloat16, 3e-2)):
        fast = build_inference_model(model, dtype=dtype, backend=backend)
        with torch.no_grad():
            out = fast(x)
        assert out.shape == (1, 2, 9, 14, 11) and out.dtype == dtype
        err = rel_l2(out, ref)
        assert err < tol, f"{cls.__name__} {backend} {dtype}: rel. L2 error {err:.3g}"


def test_fused_3d_depth_4_and_triton_gates_in_interpreter():
    """depth 4 (three poolings of a 9 x 6 x 17 volume: every axis padded), and the gates
    in Triton (the interpreter without a GPU); the convs run 'auto' (no Triton 3-D conv)."""
    model = model3d(RAUNet, base=4, depth=4)
    x = torch.randn(1, 3, 9, 6, 17)
    ref = fp64_reference(model, x)
    backends = ["cpp"] if torch.cuda.is_available() else ["cpp", "triton"]
    for backend in backends:
        fast = build_inference_model(model, dtype=torch.float32, backend=backend)
        with torch.no_grad():
            assert rel_l2(fast(x), ref) < 2e-6, backend


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("cls", [RAUNet, AttentionUNet])
def test_fused_3d_model_keeps_nan_and_inf(cls):
    model = model3d(cls, base=4)
    fast = build_inference_model(model, dtype=torch.float32)
    for value in (float("nan"), float("inf"), float("-inf")):
        x = torch.randn(1, 3, 45, 6, 7)  # long in D: the receptive field ends inside
        x[0, 1, 2, 3, 4] = value
        with torch.no_grad():
            ref, out = model(x), fast(x)
        assert ref.isnan().any() and torch.isfinite(ref).any(), f"{value}: a weak case"
        assert_same_nonfinite(out, ref, torch.float32, k=27 * 32, what=f"{cls.__name__} {value}")
    with torch.no_grad():
        assert fast(torch.full((1, 3, 5, 4, 3), float("nan"))).isnan().all()


def test_fused_3d_model_layout_and_refusals():
    fast = build_inference_model(model3d(ResUNet, base=4), dtype=torch.float32)
    assert fast.encoder[0].conv1.weight.is_contiguous(memory_format=CL3)
    assert fast.ups[0].weight.dim() == 5 and fast.head.weight.dim() == 5
    for norm in ("instance", "group"):
        with pytest.raises(ValueError, match="only norm='batch' folds"):
            build_inference_model(RAUNet(3, 2, base_channels=4, depth=3, norm=norm,
                                         spatial_dims=3).eval())
    with pytest.raises(ValueError, match="5-D input"):
        fast(torch.randn(1, 3, 8, 8))


def test_fused_3d_model_compiles_in_one_graph():
    """The 3-D ops (gate on 5-D, conv3d_fused) trace as opaque custom ops: no graph break."""
    model = model3d(RAUNet, base=4)
    fast = build_inference_model(model, dtype=torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(fast, fullgraph=True)
    x = torch.randn(1, 3, 9, 6, 7)
    with torch.no_grad():
        assert rel_l2(compiled(x), fp64_reference(model, x)) < 2e-6


@requires_cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("backend", ["cuda", "triton", "auto"])
@pytest.mark.parametrize("cls", [UNet, RAUNet])
def test_gpu_fused_3d_model_matches_fp64_eager(no_tf32, cls, backend, dtype, tol):
    model = model3d(cls, base=8).cuda()
    x = torch.randn(2, 3, 9, 14, 11, device="cuda")
    ref = fp64_reference(model, x)
    fast = build_inference_model(model, dtype=dtype, backend=backend)
    with torch.no_grad():
        out = fast(x)
    assert out.shape == ref.shape and rel_l2(out, ref) < tol
