"""The inference builder: folded + fused whole network == the eval-mode reference model."""
from __future__ import annotations

import pytest
import torch

from helpers.numerics import assert_same_nonfinite, requires_cuda
from raunet_fast import AttentionUNet, RAUNet, ResUNet, UNet
from raunet_fast.inference import build_inference_model

ALL = [UNet, AttentionUNet, ResUNet, RAUNet]


def trained_like(cls, device="cpu", **kw):
    """A small model whose BatchNorms hold non-trivial running statistics."""
    model = cls(**{**dict(in_channels=3, out_channels=2, base_channels=6, depth=3), **kw})
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, model.in_channels, 16, 16) * 2 + 0.5)
        for m in model.modules():  # also move the affine parameters off (1, 0)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval().to(device)


def rel_l2(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("cls", ALL)
def test_torch_backend_matches_reference(cls):
    model = trained_like(cls)
    fast = build_inference_model(model, dtype=torch.float32, backend="torch")
    x = torch.randn(2, 3, 29, 37)
    with torch.no_grad():
        ref, out = model(x), fast(x)
    assert out.shape == ref.shape == (2, 2, 29, 37)
    assert rel_l2(out, ref) < 1e-5


def test_carry_input_model_matches_reference():
    model = trained_like(RAUNet, base_channels=32)  # first block 3 -> 32: a carry candidate
    fast = build_inference_model(model, dtype=torch.float32, backend="cpp", carry_input=True)
    assert fast.encoder[0].carry_input and not fast.encoder[1].carry_input
    x = torch.randn(1, 3, 21, 18)
    with torch.no_grad():
        assert rel_l2(fast(x), model(x)) < 1e-5


def test_cpp_backend_matches_reference():
    model = trained_like(RAUNet)
    fast = build_inference_model(model, dtype=torch.float32, backend="cpp")
    x = torch.randn(1, 3, 21, 18)
    with torch.no_grad():
        assert rel_l2(fast(x), model(x)) < 1e-5


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter test; on a GPU the compiled kernels are tested")
def test_triton_backend_in_interpreter_matches_reference():
    model = trained_like(RAUNet, base_channels=4)
    fast = build_inference_model(model, dtype=torch.float32, backend="triton")
    x = torch.randn(1, 3, 9, 12)
    with torch.no_grad():
        assert rel_l2(fast(x), model(x)) < 1e-4


def nonfinite_inputs(h, w):
    """All-NaN images, and one NaN / +Inf / -Inf pixel near a corner of an image large enough
    that part of the output stays finite."""
    out = {"all-nan": torch.full((1, 3, h, w), float("nan"))}
    for name, value in (("nan", float("nan")), ("+inf", float("inf")), ("-inf", float("-inf"))):
        x = torch.randn(1, 3, h, w)
        x[0, 1, 2, 3] = value
        out[f"{name} pixel"] = x
    return out


@pytest.mark.filterwarnings("ignore:invalid value encountered")   # numpy (interpreter) on NaN
@pytest.mark.parametrize("backend", [
    "torch", "cpp", "auto",
    pytest.param("triton", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="interpreter test; the GPU tests run the kernels"))])
@pytest.mark.parametrize("cls", [RAUNet, AttentionUNet])
def test_fused_model_keeps_nan_and_inf_where_the_reference_has_them(cls, backend):
    """NaN / Inf in the input: the fused model's logits are NaN / +-Inf exactly where the
    eval-mode reference model's are, the finite rest unchanged (IEEE semantics through
    every fused conv, gate and concatenation)."""
    model = trained_like(cls, base_channels=4 if backend == "triton" else 6)
    fast = build_inference_model(model, dtype=torch.float32, backend=backend)
    h, w = (32, 36) if backend == "triton" else (48, 40)
    for name, x in nonfinite_inputs(h, w).items():
        with torch.no_grad():
            ref, out = model(x), fast(x)
        if name != "all-nan":
            assert ref.isnan().any() and torch.isfinite(ref).any(), f"{name}: a weak case"
        assert_same_nonfinite(out, ref, torch.float32, k=9 * 64, what=f"{cls.__name__} "
                              f"{backend} {name}")


def test_fused_model_rejects_bad_inputs_like_the_reference():
    model = trained_like(RAUNet)
    fast = build_inference_model(model, dtype=torch.float32, backend="torch")
    bad = {"3-D": torch.randn(3, 16, 16), "channels": torch.randn(1, 4, 16, 16),
           "integer": torch.randint(0, 255, (1, 3, 16, 16), dtype=torch.uint8),
           "empty": torch.randn(0, 3, 16, 16)}
    for name, x in bad.items():
        with pytest.raises((ValueError, TypeError)) as ref_err:
            model(x)
        with pytest.raises(type(ref_err.value)) as err:
            fast(x)
        assert str(err.value).split(" ", 1)[1] == str(ref_err.value).split(" ", 1)[1], name
    with pytest.raises(ValueError, match="float32, torch.float16 or torch.bfloat16"):
        build_inference_model(model, dtype=torch.float64)


def test_builder_rejects_what_cannot_fold():
    with pytest.raises(ValueError, match="norm='batch'"):
        build_inference_model(RAUNet(base_channels=4, depth=3, norm="group").eval())
    with pytest.raises(ValueError, match="eval"):
        build_inference_model(RAUNet(base_channels=4, depth=3).train())


@requires_cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 1e-2), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("backend", ["triton", "cuda", "auto"])
@pytest.mark.parametrize("cls", [UNet, RAUNet])
def test_gpu_fused_model_matches_reference(no_tf32, cls, backend, dtype, tol):
    model = trained_like(cls, device="cuda", base_channels=16, depth=4)
    fast = build_inference_model(model, dtype=dtype, backend=backend)
    x = torch.randn(2, 3, 67, 90, device="cuda")
    with torch.no_grad():
        ref, out = model(x), fast(x)
    assert out.dtype == dtype
    assert rel_l2(out, ref) < tol


@requires_cuda
def test_gpu_fused_model_compiles_fullgraph():
    model = trained_like(RAUNet, device="cuda", base_channels=16, depth=4)
    fast = build_inference_model(model, dtype=torch.bfloat16, backend="triton")
    compiled = torch.compile(fast, fullgraph=True)
    x = torch.randn(1, 3, 64, 80, device="cuda")
    with torch.no_grad():
        assert rel_l2(compiled(x), fast(x)) < 1e-2


@requires_cuda
def test_gpu_cuda_graphs_replay_matches_eager_fused():
    model = trained_like(RAUNet, device="cuda", base_channels=16, depth=4)
    fast = build_inference_model(model, dtype=torch.bfloat16)
    graphed = build_inference_model(model, dtype=torch.bfloat16, cuda_graphs=True)
    with torch.no_grad():
        for _ in range(4):  # warm-up calls, capture, then replays on fresh inputs
            x = torch.randn(1, 3, 64, 80, device="cuda")
            torch.testing.assert_close(graphed(x), fast(x), rtol=0, atol=0)
    assert len(graphed._graphs) == 1


@requires_cuda
def test_gpu_cuda_graphs_keep_at_most_max_graphs():
    from raunet_fast.inference import CUDAGraphRunner, InferenceUNet

    model = trained_like(RAUNet, device="cuda", base_channels=8, depth=3)
    fast = InferenceUNet(model, dtype=torch.bfloat16).eval()
    graphed = CUDAGraphRunner(fast, warmup=1, max_graphs=2)
    sizes = [(32, 32), (48, 32), (32, 48), (32, 32)]  # three shapes, the first again last
    with torch.no_grad():
        for h, w in sizes:
            for _ in range(3):  # warm-up, capture, replay
                x = torch.randn(1, 3, h, w, device="cuda")
                torch.testing.assert_close(graphed(x), fast(x), rtol=0, atol=0)
    assert len(graphed._graphs) == 2
    assert [k[0] for k in graphed._graphs] == [(1, 3, 32, 48), (1, 3, 32, 32)]
    with pytest.raises(ValueError, match="max_graphs"):
        CUDAGraphRunner(fast, max_graphs=0)


def test_cuda_graphs_option_runs_cpu_inputs_directly():
    model = trained_like(UNet)
    graphed = build_inference_model(model, dtype=torch.float32, backend="torch", cuda_graphs=True)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert rel_l2(graphed(x), model(x)) < 1e-5
    from raunet_fast.inference import CUDAGraphRunner

    with pytest.raises(ValueError, match="max_graphs"):
        CUDAGraphRunner(graphed.module, max_graphs=0)


def test_default_dtype_is_device_aware_and_names_are_accepted():
    model = RAUNet(base_channels=4, depth=3).eval()
    assert build_inference_model(model).dtype == torch.float32  # CPU: exact, not fp16
    assert build_inference_model(model, dtype="bf16").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be"):
        build_inference_model(model, dtype="int8")
