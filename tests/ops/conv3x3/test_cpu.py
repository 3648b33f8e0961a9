"""conv3x3_fused's CPU backends (``torch``, ``cpp``: oneDNN and the csrc epilogue) against fp64 references."""
from __future__ import annotations

import os
import subprocess

import pytest
import torch
from helpers.conv_cases import AWKWARD, EPILOGUES, check, make_case, reference
from helpers.numerics import (
    assert_close_report,
    tolerance,
)

from raunet_fast.ops import conv3x3_fused
from raunet_fast.ops._backend import csrc_dir


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("shape", AWKWARD, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("epilogue", EPILOGUES)
def test_conv_cpu_backends_fp32(backend, shape, epilogue):
    for i, relu in enumerate((True, False)):
        cl = bool(i)  # both layouts, each epilogue
        args, kw, k = make_case(*shape, epilogue, channels_last=cl)
        check(backend, args, kw, k, relu, torch.float32,
              f"{backend} {shape} {epilogue} relu={relu} channels_last={cl}")


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_conv_cpp_fp32_uses_onednn_prepacking():
    from raunet_fast.ops.conv3x3 import backends as op_be

    args, kw, k = make_case(2, 16, 32, 6, 7, "shortcut", channels_last=True)
    ext = op_be.extension(op_be.CPU_EXT)
    y = op_be.cpp_onednn(ext, *args, None, kw["shortcut_input"], kw["shortcut_weight"], True)
    assert y is not None and op_be.ONEDNN["enabled"], "prepacked oneDNN path not taken"
    assert_close_report(y, reference(*args, **kw), *tolerance(torch.float32, k), "oneDNN path")
    (x, w, b), _, k = make_case(2, 16, 32, 6, 7, "residual", channels_last=False)
    r = torch.randn(2, 32, 6, 7).contiguous(memory_format=torch.channels_last)  # other layout
    y = op_be.cpp_onednn(ext, x, w, b, r, None, None, True)
    assert y is not None, "prepacked oneDNN path not taken"
    assert conv3x3_fused(x, w, b, residual=r, backend="cpp").is_contiguous()  # x's layout
    assert_close_report(y, reference(x, w, b, residual=r), *tolerance(torch.float32, k),
                        "oneDNN path, residual in the other layout")


@pytest.mark.parametrize("epilogue", EPILOGUES)
def test_conv_cpp_fp32_without_onednn_prepacking(monkeypatch, epilogue):
    """fp32 "cpp" normally convolves with oneDNN-prepacked weights; the plain at::conv2d path
    (taken where this torch build lacks those ops) must agree too."""
    from raunet_fast.ops.conv3x3 import backends as op_be

    monkeypatch.setitem(op_be.ONEDNN, "enabled", False)
    for cl in (False, True):
        args, kw, k = make_case(3, 24, 40, 7, 13, epilogue, channels_last=cl)
        check("cpp", args, kw, k, True, torch.float32, f"cpp at::conv2d {epilogue} cl={cl}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("epilogue", EPILOGUES)
def test_conv_cpp_low_precision(dtype, epilogue):
    args, kw, k = make_case(3, 24, 40, 7, 13, epilogue, dtype=dtype, channels_last=True)
    check("cpp", args, kw, k, True, dtype, f"cpp {dtype} {epilogue}")


def test_conv_cpp_aliasing_and_noncontiguous():
    """A residual that is a strided view, and x in neither layout (a slice)."""
    (x, w, b), _, k = make_case(2, 16, 16, 9, 11, "none")
    big = torch.randn(2, 16, 9, 22)
    residual = big[..., ::2]  # non-contiguous view
    xs = torch.randn(2, 32, 9, 11)[:, 8:24]
    for backend in ("torch", "cpp"):
        y = conv3x3_fused(xs, w, b, residual=residual, backend=backend)
        assert_close_report(y, reference(xs, w, b, residual=residual), *tolerance(torch.float32, k),
                            f"{backend} non-contiguous")


# ------------------------------------------------------------------ CUDA epilogue on the CPU
def test_conv_cuda_epilogue_emulated_on_cpu(tmp_path):
    """The CUDA epilogue kernels (csrc/conv_epilogue.cuh) compiled by the host compiler against
    a small CUDA shim and run thread by thread: vector and scalar paths, grid-stride loops,
    alignment fallbacks, float / double / bfloat16 (epilogue_cuda_emu.cpp beside this file)."""
    import shutil

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to build the CUDA kernel emulation")
    here = os.path.dirname(os.path.abspath(__file__))
    exe = str(tmp_path / "conv_epilogue_emu")
    subprocess.run([cxx, "-O1", "-std=c++17", "-w",
                    f"-I{csrc_dir()}",
                    os.path.join(here, "epilogue_cuda_emu.cpp"), "-o", exe], check=True)
    seed = str(torch.randint(0, 2 ** 31, ()).item())  # fresh inputs, replayable
    r = subprocess.run([exe, seed], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "vec=8" in r.stdout and "vec=4" in r.stdout and "vec=1" in r.stdout
