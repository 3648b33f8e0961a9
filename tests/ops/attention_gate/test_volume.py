"""attention_gate on volumes (N x C x D x H x W): every CPU-runnable backend against an fp64
reference computed here by its own route (einsum over the voxels), odd D / H / W,
non-power-of-two channels, both dense layouts and a strided input, the concatenating
variant, NaN / Inf propagation and the registered op (opcheck)."""
from __future__ import annotations

import pytest
import torch
from helpers.gate_cases import _cpu_backends
from helpers.numerics import assert_parity, assert_same_nonfinite, requires_cuda

import raunet_fast.ops as ops
from raunet_fast.ops.attention_gate.op import attention_gate_op

CL3 = torch.channels_last_3d
SHAPE = (2, 3, 5, 7)  # N, D, H, W: odd, nothing a power of two


def volume_inputs(cx, cg, f, dtype, layout="cl3d", n=2, d=3, h=5, w=7, device="cpu"):
    x = torch.randn(n, cx, d, h, w, device=device).to(dtype)
    g = torch.randn(n, cg, d, h, w, device=device).to(dtype)
    if layout == "cl3d":
        x, g = x.contiguous(memory_format=CL3), g.contiguous(memory_format=CL3)
    elif layout == "strided":  # every other W voxel of a wider volume: neither dense layout
        x = torch.randn(n, cx, d, h, 2 * w, device=device).to(dtype)[..., ::2]
        g = torch.randn(n, cg, d, h, 2 * w, device=device).to(dtype).contiguous(
            memory_format=CL3)[..., 1::2]
    p = {"w_x": torch.randn(f, cx) / cx ** 0.5, "w_g": torch.randn(f, cg) / cg ** 0.5,
         "bias": 0.5 * torch.randn(f), "w_psi": torch.randn(f) / f ** 0.5,
         "b_psi": 0.5 * torch.randn(1)}
    return x, g, {k: v.to(device, dtype) for k, v in p.items()}


def reference_volume(x, g, p):
    """fp64 gate voxel by voxel: (out, alpha)."""
    d = torch.float64
    a = (torch.einsum("ncdhw,fc->nfdhw", x.to(d), p["w_x"].to(d))
         + torch.einsum("ncdhw,fc->nfdhw", g.to(d), p["w_g"].to(d))
         + p["bias"].to(d)[None, :, None, None, None])
    s = torch.einsum("nfdhw,f->ndhw", torch.relu(a), p["w_psi"].to(d)) + p["b_psi"].to(d)
    alpha = torch.sigmoid(s)[:, None]
    return x.to(d) * alpha, alpha


BACKENDS = ["auto", *_cpu_backends()]


def _skip_triton_bf16(backend, dtype):
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter computes bf16 tl.dot wrongly (docs/design.md)")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["cl3d", "ncdhw", "strided"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gate_on_volumes_matches_fp64(backend, layout, dtype):
    _skip_triton_bf16(backend, dtype)
    cx, cg, f = (48, 80, 24) if backend != "triton" else (12, 20, 6)
    x, g, p = volume_inputs(cx, cg, f, dtype, layout)
    out, alpha = ops.attention_gate(x, g, **p, return_alpha=True, backend=backend)
    want, want_alpha = reference_volume(x, g, p)
    assert out.shape == x.shape and alpha.shape == (2, 1, *SHAPE[1:])
    assert out.dtype == alpha.dtype == dtype
    if layout != "strided":  # the output keeps x's memory format
        fmt = CL3 if layout == "cl3d" else torch.contiguous_format
        assert out.is_contiguous(memory_format=fmt)
    what = f"{backend} {layout} {dtype}"
    assert_parity(out, want, dtype, k=cx + cg, roundings=2, what=what + " out")
    assert_parity(alpha, want_alpha, dtype, k=cx + cg, roundings=2, what=what + " alpha")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gate_concat_on_volumes(backend):
    cx, cg, f = (6, 10, 3) if backend == "triton" else (5, 7, 3)
    x, g, p = volume_inputs(cx, cg, f, torch.float32, n=1, d=5, h=3, w=7)
    y = ops.attention_gate_concat(x, g, **p, backend=backend)
    assert y.shape == (1, cx + cg, 5, 3, 7) and y.is_contiguous(memory_format=CL3)
    assert_parity(y[:, :cx], reference_volume(x, g, p)[0], torch.float32, k=cx + cg,
                  what=f"concat {backend}")
    assert torch.equal(y[:, cx:], g), "g must be copied unchanged"


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # numpy (interpreter) on NaN
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gate_on_volumes_keeps_nan_and_inf(backend, value):
    x, g, p = volume_inputs(12, 20, 6, torch.float32, "cl3d")
    x[1, 2, 2, 4, 6] = value      # the last voxel of a row: a partial tile
    g[0, 5, 0, 0, 0] = value
    out, alpha = ops.attention_gate(x, g, **p, return_alpha=True, backend=backend)
    want, want_alpha = reference_volume(x, g, p)
    if value != value:
        assert want.isnan().any()
    what = f"{backend} {value}"
    assert_same_nonfinite(out, want, torch.float32, k=32, what=what + " out")
    assert_same_nonfinite(alpha, want_alpha, torch.float32, k=32, what=what + " alpha")


def test_gate_rejects_mixed_ranks():
    x, g, p = volume_inputs(4, 4, 2, torch.float32)
    with pytest.raises(ValueError, match="N x C x D x H x W"):
        ops.attention_gate(x, g[:, :, 0], **p)
    with pytest.raises(ValueError, match="spatial size 2 x \\* x 3 x 5 x 7"):
        ops.attention_gate(x, g[:, :, :2], **p)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_gate_op_on_volumes_passes_opcheck(backend):
    x, g, p = volume_inputs(6, 10, 3, torch.float32, n=1, d=3, h=5, w=3)
    torch.library.opcheck(attention_gate_op, (x, g, *p.values(), True, backend))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["cl3d", "ncdhw", "strided"])
@pytest.mark.parametrize("backend", ["triton", "cuda", "auto"])
def test_gpu_gate_on_volumes_matches_fp64(backend, layout, dtype):
    x, g, p = volume_inputs(48, 80, 24, dtype, layout, device="cuda")
    out, alpha = ops.attention_gate(x, g, **p, return_alpha=True, backend=backend)
    want, want_alpha = reference_volume(x, g, p)
    what = f"gpu {backend} {layout} {dtype}"
    assert_parity(out, want, dtype, k=128, roundings=2, what=what + " out")
    assert_parity(alpha, want_alpha, dtype, k=128, roundings=2, what=what + " alpha")
    y = ops.attention_gate_concat(x, g, **p, backend=backend)
    assert y.is_contiguous(memory_format=CL3) and torch.equal(y[:, 48:], g)
    assert_parity(y[:, :48], want, dtype, k=128, roundings=2, what=what + " concat")
