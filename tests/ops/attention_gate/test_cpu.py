"""attention_gate's CPU backends (``torch``, ``cpp`` and its micro kernels; the CUDA kernels emulated on the CPU)."""
from __future__ import annotations

import subprocess

import pytest
import torch
from helpers.gate_cases import AWKWARD, CL, H, W, _cpu_backends, check, make_inputs

import raunet_fast.ops as ops
from raunet_fast.ops.attention_gate import dispatch as gate_dispatch
from raunet_fast.ops.settings import settings


# ------------------------------------------------------------------------------- torch
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("x_cl,g_cl", [(True, True), (False, False)])
def test_gate_torch_backend(dtype, x_cl, g_cl):
    check("torch", *AWKWARD, dtype, x_cl=x_cl, g_cl=g_cl)


# --------------------------------------------------------------------------------- cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cx,cg,f,x_cl,g_cl", [
    (*AWKWARD, True, True),
    (*AWKWARD, False, True),
    (3, 5, 1, True, False),      # tiny channels, F below one micro-kernel chunk
    (64, 64, 32, True, True),    # a model level (C = 64)
])
def test_gate_cpp_backend(dtype, cx, cg, f, x_cl, g_cl):
    check("cpp", cx, cg, f, dtype, x_cl=x_cl, g_cl=g_cl)


@pytest.mark.parametrize("tensor_cores", [True, False])
def test_gate_cuda_binding_gets_the_tensor_core_switch(monkeypatch, tensor_cores):
    """The plumbing of the "cuda" path, checked on the CPU with a stand-in extension:
    NHWC inputs, parameters in x's dtype, and the gate_cuda_tensor_cores setting."""
    seen = {}

    class FakeExt:
        @staticmethod
        def attention_gate_forward(x, g, w_x, w_g, bias, psi, bpsi, out, alpha, write_alpha,
                                   *rest):
            seen.update(x_cl=x.is_contiguous(memory_format=CL), rest=rest,
                        dtypes={t.dtype for t in (w_x, w_g, bias, psi, bpsi)})

    monkeypatch.setattr(gate_dispatch, "extension", lambda kind: FakeExt)
    monkeypatch.setattr(settings, "gate_cuda_tensor_cores", tensor_cores)
    x, g, p = make_inputs(8, 8, 4, torch.float16, x_cl=False)
    p = {k: v.float() for k, v in p.items()}
    gate_dispatch.csrc_impl("cuda", x, g, *p.values(), False)
    assert seen == {"x_cl": True, "rest": (tensor_cores,), "dtypes": {torch.float16}}
    gate_dispatch.csrc_impl("cpp", x, g, *p.values(), False)
    assert seen["rest"] == (False,)  # the cpp binding's concat flag, off
    gate_dispatch.csrc_impl("cpp", x, g, *p.values(), False, True)
    assert seen["rest"] == (True,)


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_gate_cpp_every_micro_kernel(isa, monkeypatch):
    """The CPU build compiles its micro kernel per ISA and picks one at run time; run each
    one this CPU has (settings.gate_cpu_isa, RAUNET_GATE_CPU_ISA, forces it)."""
    monkeypatch.setattr(settings, "gate_cpu_isa", isa)
    if gate_dispatch.extension("cpp").cpu_isa() != isa:
        pytest.skip(f"this CPU has no {isa}")
    check("cpp", *AWKWARD, torch.float32)
    check("cpp", 64, 64, 32, torch.bfloat16, n=1, h=9, w=11)


def test_gate_cpp_odd_sizes():
    check("cpp", 5, 7, 3, torch.float32, n=1, h=1, w=1)        # one pixel: a partial tile
    check("cpp", 16, 16, 40, torch.float32, n=3, h=11, w=5)     # several F chunks


@pytest.mark.parametrize("backend", _cpu_backends())
def test_gate_empty_inputs(backend):
    x, g, p = make_inputs(8, 8, 4, torch.float32, n=0)
    out, alpha = ops.attention_gate(x, g, **p, return_alpha=True, backend=backend)
    assert out.shape == x.shape and alpha.shape == (0, 1, H, W)


# ---------------------------------------------------------- CUDA kernels, CPU emulation
def test_gate_cuda_kernels_emulated_on_cpu(tmp_path):
    """csrc/attention_gate_kernels.cuh compiled by g++ against a CUDA shim and run with one
    OpenMP thread per CUDA thread: indexing, shared-memory staging, barriers, shuffles,
    16-byte vector paths (and their alignment), the scalar fallback and the WMMA tiling
    of both kernels, for fp32 / fp16 / bf16 against an fp64 reference (no GPU needed)."""
    import os
    import shutil

    from raunet_fast.ops._backend import csrc_dir

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to build the CUDA kernel emulation")
    src = os.path.join(os.path.dirname(__file__), "cuda_emu.cpp")
    exe = str(tmp_path / "gate_emu")
    build = subprocess.run([cxx, "-O2", "-std=c++17", "-fopenmp", f"-I{csrc_dir()}", src,
                            "-o", exe], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    env = dict(os.environ, OMP_WAIT_POLICY="passive")  # 256 threads on a few cores
    seed = str(torch.randint(0, 2 ** 31, ()).item())  # fresh inputs, replayable
    run = subprocess.run([exe, seed], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0 and "all cases ok" in run.stdout, \
        (run.stdout + run.stderr)[-6000:]
