"""Shared cases and references of the attention_gate tests (inputs, fp64
references, marks)."""
from __future__ import annotations

import pytest
import torch

import raunet_fast.ops as ops
from helpers.numerics import (
    assert_close_report,
    assert_parity,
)
from raunet_fast.blocks import AttentionGate
from raunet_fast.ops import BackendUnavailable
from raunet_fast.ops.attention_gate import dispatch as gate_dispatch
from raunet_fast.ops.settings import settings

CL = torch.channels_last


AWKWARD = (48, 80, 24)  # Cx, Cg, F


N, H, W = 2, 7, 13


no_cuda_interpreter = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="interpreter tests run only without a GPU (with one, the GPU tests run the kernel)")


# ------------------------------------------------------------------------------ helpers
def make_inputs(cx, cg, f, dtype, device="cpu", n=N, h=H, w=W, x_cl=True, g_cl=True):
    x = torch.randn(n, cx, h, w, device=device).to(dtype)
    g = torch.randn(n, cg, h, w, device=device).to(dtype)
    if x_cl:
        x = x.contiguous(memory_format=CL)
    if g_cl:
        g = g.contiguous(memory_format=CL)
    p = {"w_x": torch.randn(f, cx, device=device) / cx ** 0.5,
         "w_g": torch.randn(f, cg, device=device) / cg ** 0.5,
         "bias": 0.5 * torch.randn(f, device=device),
         "w_psi": torch.randn(f, device=device) / f ** 0.5,
         "b_psi": 0.5 * torch.randn(1, device=device)}
    return x, g, {k: v.to(dtype) for k, v in p.items()}


def reference64(x, g, p):
    """Independent fp64 gate on the (already rounded) inputs: (out, alpha)."""
    d = torch.float64
    xd, gd = x.to(d), g.to(d)
    acc = (torch.einsum("nchw,fc->nfhw", xd, p["w_x"].to(d))
           + torch.einsum("nchw,fc->nfhw", gd, p["w_g"].to(d))
           + p["bias"].to(d)[None, :, None, None])
    s = torch.einsum("nfhw,f->nhw", acc.clamp_min(0), p["w_psi"].to(d)) + p["b_psi"].to(d)
    alpha = torch.sigmoid(s)[:, None]
    return xd * alpha, alpha


def check(backend, cx, cg, f, dtype, device="cpu", x_cl=True, g_cl=True, **shape):
    x, g, p = make_inputs(cx, cg, f, dtype, device, x_cl=x_cl, g_cl=g_cl, **shape)
    out, alpha = ops.attention_gate(x, g, **p, return_alpha=True, backend=backend)
    ref_out, ref_alpha = reference64(x, g, p)
    assert out.dtype == dtype and alpha.dtype == dtype
    assert out.shape == x.shape and alpha.shape == (x.shape[0], 1, *x.shape[2:])
    assert (out.is_contiguous(memory_format=CL), out.is_contiguous()) == \
        (x.is_contiguous(memory_format=CL), x.is_contiguous()), "output keeps x's memory format"
    what = f"{backend} {dtype} Cx={cx} Cg={cg} F={f} x_cl={x_cl} g_cl={g_cl}"
    # fp32 accumulation inside: only alpha's rounding and out's (x * alpha) remain in 16 bits
    k = cx + cg
    assert_parity(out, ref_out, dtype, k=k, roundings=2, what=what + " out")
    assert_parity(alpha, ref_alpha, dtype, k=k, roundings=2, what=what + " alpha")
    plain = ops.attention_gate(x, g, **p, backend=backend)  # return_alpha=False path
    assert_parity(plain, ref_out, dtype, k=k, roundings=2, what=what + " out (no alpha)")


def check_concat(backend, cx, cg, f, dtype, device="cpu", **shape):
    """attention_gate_concat: the gated part against the fp64 reference, g copied exactly."""
    x, g, p = make_inputs(cx, cg, f, dtype, device, **shape)
    y = ops.attention_gate_concat(x, g, **p, backend=backend)
    assert y.shape == (x.shape[0], cx + cg, *x.shape[2:]) and y.dtype == dtype
    ref_out, _ = reference64(x, g, p)
    assert_parity(y[:, :cx], ref_out, dtype, k=cx + cg, roundings=2,
                  what=f"concat {backend} {dtype} Cx={cx} Cg={cg} F={f}")
    assert torch.equal(y[:, cx:], g), "g must be copied unchanged"


def _cpu_backends():
    out = ["torch", "cpp"]
    if not torch.cuda.is_available():
        try:
            import triton  # noqa: F401
            out.append("triton")
        except ImportError:
            pass
    return out


# ------------------------------------------------------------------------------ folding
def random_eval_gate(cx, cg, f, dtype=torch.float64):
    gate = AttentionGate(cx, cg, f)
    with torch.no_grad():
        for cna in (gate.w_x, gate.w_g, gate.psi):
            bn = cna.norm
            bn.running_mean.normal_(0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_(1, 0.2)
            bn.bias.normal_(0, 0.2)
    return gate.eval().to(dtype)


# -------------------------------------------------------------------- library / compile
def _opcheck_backends():
    out = ["torch", "cpp"]
    if torch.cuda.is_available():
        out += ["triton", "cuda"]
    return out


class _GateModule(torch.nn.Module):
    def __init__(self, params, backend):
        super().__init__()
        self.backend = backend
        for k, v in params.items():
            self.register_buffer(k, v)

    def forward(self, x, g):
        out, alpha = ops.attention_gate(x, g, self.w_x, self.w_g, self.bias, self.w_psi,
                                        self.b_psi, return_alpha=True, backend=self.backend)
        return out + 1.0, alpha * 2.0  # ops around it, fused into the same graph


def _compile_check(device):
    torch._dynamo.reset()
    x, g, p = make_inputs(*AWKWARD, torch.float32, device)
    mod = _GateModule(p, "auto").to(device)
    compiled = torch.compile(mod, fullgraph=True)  # raises on any graph break
    with torch.no_grad():
        got = compiled(x, g)
        want = mod(x, g)
    for a, b, what in zip(got, want, ("out", "alpha")):
        assert_close_report(a, b, 1e-5, 1e-5, f"compiled {what} ({device})")


# ------------------------------------------------------------------------------ GPU
GPU_SHAPES = [AWKWARD, (64, 64, 32), (128, 128, 64), (512, 512, 256), (3, 5, 1)]


# "cuda" runs half / bf16 on tensor cores (WMMA) by default; "cuda-fma" is the CUDA-core
# kernel (what fp32 always uses), selected with the module flag.
GPU_BACKENDS = ["triton", "cuda", "cuda-fma"]


def _require_cuda_extension() -> None:
    """Skip (with the reason) where no CUDA toolkit can build csrc/; a compile error fails."""
    try:
        gate_dispatch.extension("cuda")
    except BackendUnavailable as e:
        if "no CUDA toolkit" in str(e):
            pytest.skip(str(e))
        raise


def _gpu_backend(name: str, monkeypatch, triton_config: int = 0) -> str:
    """Select a GPU backend variant. Triton is pinned to one config (no autotuning: each
    autotune compiles every config; test_gate_gpu_triton_every_config covers them all)."""
    monkeypatch.setattr(settings, "gate_cuda_tensor_cores", name != "cuda-fma")
    if name.startswith("cuda"):
        _require_cuda_extension()
        return "cuda"
    if name == "triton":
        from raunet_fast.ops.attention_gate.triton import configs as gcfg
        from raunet_fast.ops.attention_gate.triton import launch as kmod

        monkeypatch.setattr(kmod, "FORCE_CONFIG", gcfg.CONFIGS[triton_config])
    return name


def _triton_config_cases():
    try:
        from raunet_fast.ops.attention_gate.triton.configs import CONFIGS, configs_for
    except ImportError:  # no triton: the GPU tests skip anyway
        return [pytest.param(0, torch.float32, marks=pytest.mark.skip(reason="no triton"))]
    return [pytest.param(i, dt, id=f"cfg{i}-{str(dt)[6:]}")
            for dt in (torch.float32, torch.float16, torch.bfloat16)
            for i, cfg in enumerate(CONFIGS) if cfg in configs_for(dt)]


def _misaligned_channels_last(t: torch.Tensor) -> torch.Tensor:
    """A dense channels_last copy of t whose data pointer is NOT 16-byte aligned."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    n, c, h, w = t.shape
    v = buf[1:].as_strided((n, c, h, w), (h * w * c, 1, w * c, c))
    v.copy_(t)
    assert v.data_ptr() % 16 != 0 and v.is_contiguous(memory_format=CL)
    return v


# ------------------------------------------------------------------- gate + concatenation
_CONCAT_BACKENDS = ["torch", "cpp"] + (["triton", "cuda"] if torch.cuda.is_available()
                                       else ["triton"])  # triton: interpreter without CUDA
