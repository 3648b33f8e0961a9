"""attention_gate on a CUDA device: every backend and Triton config against fp64 references (``pytest -m gpu``)."""
from __future__ import annotations

import pytest
import torch
from helpers.gate_cases import (
    AWKWARD,
    CL,
    GPU_BACKENDS,
    GPU_SHAPES,
    _compile_check,
    _gpu_backend,
    _misaligned_channels_last,
    _require_cuda_extension,
    _triton_config_cases,
    check,
    check_concat,
    make_inputs,
    random_eval_gate,
    reference64,
)
from helpers.numerics import (
    assert_close_report,
    assert_parity,
    requires_cuda,
)

import raunet_fast.ops as ops
from raunet_fast.ops.attention_gate import cast_gate_params, fold_attention_gate

pytestmark = pytest.mark.gpu

@requires_cuda
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gate_gpu(backend, dtype, shape, no_tf32, monkeypatch):
    backend = _gpu_backend(backend, monkeypatch)
    check(backend, *shape, dtype, "cuda", n=2, h=17, w=33)


@requires_cuda
@pytest.mark.parametrize("index,dtype", _triton_config_cases())
def test_gate_gpu_triton_every_config(index, dtype, no_tf32, monkeypatch):
    backend = _gpu_backend("triton", monkeypatch, triton_config=index)
    check(backend, *AWKWARD, dtype, "cuda", n=2, h=17, w=33)             # masked tails
    check(backend, 64, 64, 32, dtype, "cuda", n=2, h=16, w=16)          # x in one chunk
    check(backend, 512, 512, 256, dtype, "cuda", n=1, h=9, w=11)        # long K, F loops
    for shape in (AWKWARD, (64, 64, 32)):  # the concatenating variant, g copied
        check_concat(backend, *shape, dtype, "cuda", n=2, h=17, w=33)


@requires_cuda
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gate_gpu_layouts_and_odd_sizes(backend, no_tf32, monkeypatch):
    backend = _gpu_backend(backend, monkeypatch)
    check(backend, *AWKWARD, torch.float16, "cuda", x_cl=False, g_cl=False)
    check(backend, *AWKWARD, torch.bfloat16, "cuda", x_cl=True, g_cl=False)
    check(backend, 64, 64, 32, torch.bfloat16, "cuda", n=1, h=1, w=1)
    check(backend, 64, 64, 32, torch.float16, "cuda", n=3, h=129, w=67)


@requires_cuda
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gate_gpu_misaligned_pointers(backend, monkeypatch):
    backend = _gpu_backend(backend, monkeypatch)
    x, g, p = make_inputs(64, 64, 32, torch.float16, "cuda", n=2, h=9, w=11)
    xm, gm = _misaligned_channels_last(x), _misaligned_channels_last(g)
    out, alpha = ops.attention_gate(xm, gm, **p, return_alpha=True, backend=backend)
    ref_out, ref_alpha = reference64(x, g, p)
    assert_parity(out, ref_out, torch.float16, k=128, what=f"{backend} misaligned out")
    assert_parity(alpha, ref_alpha, torch.float16, k=128, what=f"{backend} misaligned alpha")


@requires_cuda
def test_gate_gpu_auto_matches_torch(no_tf32):
    x, g, p = make_inputs(64, 64, 32, torch.bfloat16, "cuda", n=2, h=32, w=32)
    a = ops.attention_gate(x, g, **p, backend="auto")
    b = ops.attention_gate(x, g, **p, backend="torch")
    # both rounded to bf16 (each <= 2 roundings from the exact value)
    assert_parity(a, b.double(), torch.bfloat16, k=128, roundings=4, what="auto vs torch (cuda)")
    assert a.is_contiguous(memory_format=CL)


@requires_cuda
def test_gate_gpu_folded_module_bf16():
    gate = random_eval_gate(64, 64, 32, torch.float32).cuda()
    x = torch.randn(2, 64, 40, 40, device="cuda").contiguous(memory_format=CL)
    g = torch.randn(2, 64, 40, 40, device="cuda").contiguous(memory_format=CL)
    with torch.no_grad():
        want, _ = gate.double()(x.double(), g.double())
    p = cast_gate_params(fold_attention_gate(gate), torch.bfloat16)
    _require_cuda_extension()
    for backend in ("triton", "cuda"):
        out = ops.attention_gate(x.bfloat16(), g.bfloat16(), **p, backend=backend)
        # inputs and weights rounded to bf16: a looser bound than the rounded-input tests
        assert_close_report(out, want, 5e-2, 5e-2, f"{backend} bf16 vs fp64 module")


@requires_cuda
def test_gate_compile_fullgraph_cuda():
    _compile_check("cuda")
