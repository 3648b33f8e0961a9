"""attention_gate on non-finite values: NaN and +-Inf in x, g or any parameter come out of
``out`` and ``alpha`` exactly where the fp64 reference and the ``torch`` backend put them
(relu keeps NaN, relu(-inf) = 0, sigmoid(+-inf) = 1 / 0, inf * 0 = NaN), on the backends that
run on the CPU: ``cpp`` (each micro kernel), ``auto``, Triton under the interpreter, and the
concatenating variant. F = 24 and Cx = 48 leave padded / masked channel tails in every
kernel: an Inf input meets zero weights there, which must not turn into a NaN the reference
does not have."""
from __future__ import annotations

import pytest
import torch
from helpers.gate_cases import (
    AWKWARD,
    GPU_BACKENDS,
    _gpu_backend,
    make_inputs,
    no_cuda_interpreter,
    reference64,
)
from helpers.numerics import assert_same_nonfinite, requires_cuda

import raunet_fast.ops as ops
from raunet_fast.ops.attention_gate import dispatch as gate_dispatch
from raunet_fast.ops.settings import settings

# "x-off" / "g-off": +-Inf in one channel whose weights all have the other sign, so ReLU
# switches it off: the reference is finite but for the Inf itself, which must not meet a
# padded / masked zero weight (0 * inf = NaN) on its way
SITES = ("x", "g", "w_x", "w_g", "bias", "w_psi", "b_psi", "x-off", "g-off")
VALUES = (float("nan"), float("inf"), float("-inf"))


def poisoned(site, value, dtype, x_cl=True, g_cl=True, device="cpu", **shape):
    x, g, p = make_inputs(*AWKWARD, dtype, device, x_cl=x_cl, g_cl=g_cl, **shape)
    parts = {"x": x, "g": g, **p}
    if site.endswith("-off"):
        site = site[0]
        w = p[f"w_{site}"].clone()
        sign = 1.0 if value != value else -float(torch.tensor(value).sign())
        w[:, 0] = sign * (w[:, 0].abs() + 0.1)   # NaN: any sign, still NaN
        p[f"w_{site}"] = w
        t = parts[site].clone()
        t[torch.randperm(t.shape[0])[:1], 0, 1:3, 2] = value
        parts[site] = t
        return parts.pop("x"), parts.pop("g"), p
    t = parts[site].clone()
    count = 3 if site in ("x", "g") else 1
    flat = torch.randperm(t.numel())[:count]
    t[torch.unravel_index(flat, t.shape)] = value
    parts[site] = t
    return parts.pop("x"), parts.pop("g"), parts


def run_site(backend, site, dtype=torch.float32, concat=False, layouts=((True, True),),
             device="cpu", **shape):
    """Each value at ``site``: out and alpha (or the concatenated output) against the fp64
    reference and the torch backend."""
    k = sum(AWKWARD[:2])
    for i, value in enumerate(VALUES):
        x_cl, g_cl = layouts[i % len(layouts)]
        x, g, p = poisoned(site, value, dtype, x_cl, g_cl, device, **shape)
        want_out, want_alpha = reference64(x, g, p)
        what = f"{backend} {dtype} {site}={value} x_cl={x_cl} g_cl={g_cl}"
        if value != value:
            assert want_out.isnan().any(), f"{what}: the case makes no NaN"
        elif site.endswith("-off"):   # switched off: alpha finite everywhere
            assert torch.isfinite(want_alpha).all(), f"{what}: the Inf is not switched off"
        for be in ("torch", backend):
            if concat:
                y = ops.attention_gate_concat(x, g, **p, backend=be)
                assert_same_nonfinite(y[:, :x.shape[1]], want_out, dtype, k=k,
                                      what=f"{what}: {be} concat")
                assert torch.equal(y[:, x.shape[1]:].isnan(), g.isnan()), f"{what}: g copied"
                continue
            out, alpha = ops.attention_gate(x, g, **p, return_alpha=True, backend=be)
            assert_same_nonfinite(out, want_out, dtype, k=k, what=f"{what}: {be} out")
            assert_same_nonfinite(alpha, want_alpha, dtype, k=k, what=f"{what}: {be} alpha")


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("backend", ["cpp", "auto"])
def test_gate_nonfinite_cpu(backend, site):
    run_site(backend, site, layouts=((True, True), (False, True)))


@pytest.mark.parametrize("site", ["x", "w_x", "w_psi", "x-off"])
@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_gate_nonfinite_cpp_every_micro_kernel(isa, site, monkeypatch):
    monkeypatch.setattr(settings, "gate_cpu_isa", isa)
    if gate_dispatch.extension("cpp").cpu_isa() != isa:
        pytest.skip(f"this CPU has no {isa}")
    run_site("cpp", site)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("site", ["x", "g", "bias", "x-off"])
def test_gate_nonfinite_cpp_low_precision(dtype, site):
    run_site("cpp", site, dtype)


@pytest.mark.parametrize("site", ["x", "g", "w_g", "x-off"])
def test_gate_nonfinite_cpp_concat(site):
    run_site("cpp", site, concat=True)


# numpy (the interpreter) warns about each NaN it makes; those NaN are the point here
interpreter_nan_warnings = pytest.mark.filterwarnings("ignore:invalid value encountered")


@no_cuda_interpreter
@interpreter_nan_warnings
@pytest.mark.parametrize("site", SITES)
def test_gate_nonfinite_triton_interpreter(site):
    pytest.importorskip("triton")
    run_site("triton", site, layouts=((True, True), (False, False), (True, False)), n=1)


@no_cuda_interpreter
@interpreter_nan_warnings
@pytest.mark.parametrize("site", ["x", "g", "x-off"])
def test_gate_nonfinite_triton_interpreter_concat_fp16(site):
    pytest.importorskip("triton")
    run_site("triton", site, torch.float16, concat=True, n=1)


@requires_cuda
@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gate_nonfinite_gpu(monkeypatch, backend, site):
    backend = _gpu_backend(backend, monkeypatch)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        run_site(backend, site, dtype, layouts=((True, True), (False, True)), device="cuda")
    run_site(backend, site, torch.float16, concat=True, device="cuda")
