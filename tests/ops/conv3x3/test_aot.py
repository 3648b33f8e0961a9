"""Ahead-of-time builds of the conv3x3_fused kernels for sm_80 and sm_90, no GPU needed.

* every shipped Triton config (``raunet_fast/ops/conv3x3/triton/configs.py: shipped_configs()``, the flat-K
  kernel's ``shipped_small_k_configs()``; the TMA kernel's ``shipped_tma_configs()`` for
  sm_90 only, which must compile to TMA copies feeding wgmma) compiles for both
  architectures, with zero register spills and shared memory within the GPU's limit;
  table columns: align = XA/SA/YA (16: aligned channels-last x / shortcut / output; "cf":
  channels-first NCHW build), epi = shortcut K loop + residual tile (both on: an upper
  bound of either launch);
  registers / spills / shared memory are printed as a table (``pytest -s``) and attached
  to the test report;
* the CUDA epilogue kernels (``csrc/conv_epilogue.cuh``) compile standalone with nvcc for
  both, without spills; the full torch-extension source ``csrc/conv_epilogue.cu`` compiles
  too (sm_90, host side syntax-checked).

Select with ``pytest -k "conv and aot"``.
"""
from __future__ import annotations

import shutil
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from itertools import zip_longest
from pathlib import Path

import pytest
import torch
from helpers.aot import aot_reports, nvcc_compile, ptxas_spills, write_table

ROOT = Path(__file__).resolve().parents[3]
CSRC = ROOT / "csrc"
ARCHS = (80, 90)
# usable shared memory per block (opt-in maximum): A100 163 KiB, H100 227 KiB
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def assert_clean_build(r: dict, what: str) -> None:
    """An AOT report ``r`` built: ptxas succeeded, registers known, no spills, shared memory
    within the architecture's limit."""
    assert r["ptxas_ok"], f"{what}: ptxas failed:\n{r['ptxas_log']}"
    assert r["registers"] is not None, f"{what}: no register count in\n{r['ptxas_log']}"
    assert r["spill_stores"] == 0 and r["spill_loads"] == 0, \
        f"{what}: spills {r['spill_stores']} B stores / {r['spill_loads']} B loads"
    assert r["shared"] <= SHARED_LIMIT[r["arch"]], f"{what}: {r['shared']} B shared memory"


def _conv_jobs():
    pytest.importorskip("triton")
    from raunet_fast.ops.conv3x3.triton import configs as k
    from raunet_fast.ops.conv3x3.triton import implicit_gemm

    names = implicit_gemm.conv3x3_fused_kernel.arg_names
    jobs = []
    for v in k.shipped_configs():
        bm, bn, bk, warps, stages = v["config"].tile
        xa, sa, ya = v["aligns"]
        t = TRITON_TYPES[v["dtype"]]
        for has_res, has_sc in ((True, True),):  # both: bounds either launch variant
            # fully unaligned: built for NCHW (strided channels: the most address math);
            # anything with an aligned tensor is channels-last
            consts = dict(HAS_RES=has_res, HAS_SC=has_sc, RELU=True,
                          CHANNELS_LAST=(xa, sa, ya) != (1, 1, 1),
                          IEEE=v["ieee"], XA=xa, SA=sa, YA=ya, BLOCK_M=bm, BLOCK_N=bn,
                          BLOCK_K=bk, K_ITERS=0, SC_ITERS=0)
            sig = {n: ("constexpr" if n in consts else
                       ("*fp32" if n == "b_ptr" else f"*{t}") if n.endswith("_ptr") else "i32")
                   for n in names}
            for arch in ARCHS:
                # pointers from torch allocations are 16-byte aligned (Triton specialises that
                # at launch); integers are never specialised (do_not_specialize)
                jobs.append({"module": "raunet_fast.ops.conv3x3.triton.implicit_gemm",
                             "kernel": "conv3x3_fused_kernel", "signature": sig,
                             "constexprs": consts, "arch": arch, "num_warps": warps,
                             "num_stages": stages,
                             "divisible_by_16": [n for n in names if n.endswith("_ptr")]})
    return jobs


def _small_k_jobs():
    pytest.importorskip("triton")
    from raunet_fast.ops.conv3x3.triton import configs as k
    from raunet_fast.ops.conv3x3.triton import small_k

    names = small_k.conv3x3_small_k_kernel.arg_names
    jobs = []
    for v in k.shipped_small_k_configs():
        bm, bn, bk, warps = v["config"].tile[:4]
        t = TRITON_TYPES[v["dtype"]]
        consts = dict(HAS_RES=True, HAS_SC=True, RELU=True, IEEE=v["ieee"], Y_CL=v["y_cl"],
                      YA=v["ya"], BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, K_STEPS=0)
        sig = {n: ("constexpr" if n in consts else
                   ("*fp32" if n == "b_ptr" else f"*{t}") if n.endswith("_ptr") else "i32")
               for n in names}
        for arch in ARCHS:
            jobs.append({"module": "raunet_fast.ops.conv3x3.triton.small_k",
                         "kernel": "conv3x3_small_k_kernel", "signature": sig,
                         "constexprs": consts, "arch": arch, "num_warps": warps,
                         "num_stages": 1,
                         "divisible_by_16": [n for n in names if n.endswith("_ptr")]})
    return jobs


def test_conv_aot_triton_small_k_configs(record_property):
    """The flat-K kernel for narrow inputs: every shipped config x output alignment (its K
    loop counted at run time, as launched), sm_80 and sm_90, shortcut and residual both on:
    zero spills."""
    jobs = _small_k_jobs()
    with ThreadPoolExecutor(2) as pool:
        parts = list(pool.map(aot_reports, [jobs[0::2], jobs[1::2]]))
    reports = [r for pair in zip_longest(*parts) for r in pair if r is not None]
    table = ["dtype prec out    sm  BM  BN  BK warps regs spills shared  mma"]
    for r in reports:
        c = r["constexprs"]
        mma = ("wgmma" if r["ptx_ops"]["wgmma"] else
               "mma.sync" if r["ptx_ops"]["mma.sync"] else "fma")
        out = f"{'cl' if c['Y_CL'] else 'cf'}/{c['YA']}"
        table.append(f"{r['signature']['x_ptr'][1:]:5} {'ieee' if c['IEEE'] else 'tc':4} "
                     f"{out:6} {r['arch']}  {c['BLOCK_M']:3} {c['BLOCK_N']:3} {c['BLOCK_K']:3} "
                     f"{r['num_warps']:5} {r['registers']!s:4} {r['spill_stores']!s:6} "
                     f"{r['shared']:<7} {mma}")
    record_property("aot_table_small_k", "\n".join(table))
    write_table("conv3x3-aot-small-k", "conv3x3_fused flat-K (narrow input) Triton AOT builds:", table)
    for r in reports:
        what = f"flat-K {r['signature']['x_ptr']} sm_{r['arch']} {r['constexprs']} w{r['num_warps']}"
        assert_clean_build(r, what)


def _tma_jobs():
    pytest.importorskip("triton")
    from raunet_fast.ops.conv3x3.triton import configs as k

    jobs = []
    for v in k.shipped_tma_configs():
        bm, bn, bk, warps, stages = v["config"].tile
        t = TRITON_TYPES[v["dtype"]]
        consts = dict(HAS_RES=True, HAS_SC=True, SC_DESC=v["sc_desc"], RELU=True, BLOCK_M=bm,
                      BLOCK_N=bn, BLOCK_K=bk, SC_K=16, K_ITERS=0, SC_ITERS=0)
        box_k, box_n = f"tensordesc<{t}[1, 1, {bm}, {bk}]>", f"tensordesc<{t}[1, 1, {bm}, {bn}]>"
        sig = {"x_desc": box_k, "w_desc": f"tensordesc<{t}[{bk}, {bn}]>", "s_desc": box_k,
               "r_desc": box_n, "y_desc": box_n, "b_ptr": "*fp32", "s_ptr": f"*{t}", "w_ptr": f"*{t}",
               **{n: "i32" for n in ("H", "W", "CIN", "CS", "COUT", "ss_n", "ss_c", "ss_h",
                                     "ss_w")},
               **{n: "constexpr" for n in consts}}
        jobs.append({"module": "raunet_fast.ops.conv3x3.triton.tma", "kernel": "conv3x3_tma_kernel",
                     "signature": sig, "constexprs": consts, "arch": 90, "num_warps": warps,
                     "num_stages": stages, "divisible_by_16": ["b_ptr", "s_ptr", "w_ptr"]})
    return jobs


def test_conv_aot_triton_tma_configs(record_property):
    """The Hopper TMA kernel, every shipped config for sm_90 (shortcut and residual on):
    zero spills, shared memory within the H100's limit, and the K loop it was written for -
    TMA copies (cp.async.bulk.tensor) feeding wgmma from shared memory, no operand copied
    through registers in the loop - not a fallback."""
    reports = aot_reports(_tma_jobs())
    table = ["dtype sc     sm  BM  BN  BK warps stages regs spills shared  wgmma tma"]
    for r in reports:
        c = r["constexprs"]
        table.append(f"{r['signature']['y_desc'][11:15]:5} {'tma' if c['SC_DESC'] else 'gather':6} "
                     f"{r['arch']}  {c['BLOCK_M']:3} "
                     f"{c['BLOCK_N']:3} {c['BLOCK_K']:3} {r['num_warps']:5} {r['num_stages']:6} "
                     f"{r['registers']!s:4} {r['spill_stores']!s:6} {r['shared']:<7} "
                     f"{r['ptx_ops']['wgmma']:5} {r['ptx_ops']['tma']}")
    record_property("aot_table_tma", "\n".join(table))
    write_table("conv3x3-aot-tma", "conv3x3_fused TMA (sm_90) Triton AOT builds:", table)
    for r in reports:
        what = f"TMA {r['signature']['y_desc']} {r['constexprs']} w{r['num_warps']}s{r['num_stages']}"
        assert_clean_build(r, what)   # (arch 90: the H100's shared-memory limit)
        assert r["ptx_ops"]["wgmma"] > 0 and r["ptx_ops"]["tma"] > 0, \
            f"{what}: no TMA-fed wgmma loop: {r['ptx_ops']}"
        # the tap loop (and a TMA shortcut loop) multiply straight from shared memory: no
        # operand copied into registers inside them (the gathered shortcut's loop does)
        loops = r["loop_local_loads"]
        n_clean = 2 if r["constexprs"]["SC_DESC"] else 1
        assert len(loops) >= n_clean and not any(loops[:n_clean]), \
            f"{what}: shared-to-register copies in the K loop(s): {loops}"


def test_conv_aot_triton_configs(record_property):
    jobs = _conv_jobs()
    # two compiler processes (the machines running this have >= 2 cores)
    with ThreadPoolExecutor(2) as pool:
        parts = list(pool.map(aot_reports, [jobs[0::2], jobs[1::2]]))
    reports = [r for pair in zip_longest(*parts) for r in pair if r is not None]
    rows = []
    for r in reports:
        c = r["constexprs"]
        epi = "+".join(e for e, on in (("sc", c["HAS_SC"]), ("res", c["HAS_RES"])) if on)
        rows.append((r["signature"]["x_ptr"][1:], "ieee" if c["IEEE"] else "tc",
                     f"{c['XA']}/{c['SA']}/{c['YA']}{'' if c['CHANNELS_LAST'] else ' cf'}",
                     epi, r["arch"],
                     c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"], r["num_warps"], r["num_stages"],
                     r["registers"], r["spill_stores"], r["shared"],
                     "wgmma" if r["ptx_ops"]["wgmma"] else
                     "mma.sync" if r["ptx_ops"]["mma.sync"] else "fma",
                     r["ptx_ops"]["cp.async"]))
    table = ["dtype prec align    epi    sm  BM  BN  BK warps stages regs spills shared"
             "  mma      cp.async"] + [
        f"{d:5} {p:4} {al:8} {e:6} {a}  {bm:3} {bn:3} {bk:3} {w:5} {s:6} {reg!s:4} {sp!s:6} "
        f"{sh:<7} {mma:8} {cpa}"
        for d, p, al, e, a, bm, bn, bk, w, s, reg, sp, sh, mma, cpa in rows]
    record_property("aot_table", "\n".join(table))
    write_table("conv3x3-aot", "conv3x3_fused Triton AOT builds:", table)
    for r in reports:
        what = f"{r['signature']['x_ptr']} sm_{r['arch']} {r['constexprs']} w{r['num_warps']}s{r['num_stages']}"
        assert_clean_build(r, what)


def _nvcc_or_skip():
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not found (CUDA toolkit needed to build the .cu sources)")


def test_conv_aot_nvcc_epilogue_kernels(tmp_path):
    """The raw kernels, instantiated for float / __half / __nv_bfloat16, compile standalone."""
    _nvcc_or_skip()
    src = tmp_path / "epilogue_inst.cu"
    src.write_text(
        '#include <cuda_fp16.h>\n#include <cuda_bf16.h>\n#include "conv_epilogue.cuh"\n'
        "namespace rce = raunet_fast::conv_epilogue;\n"
        "template void rce::launch_epilogue<float>(float*, const float*, const float*, int64_t,"
        " int64_t, int64_t, bool, cudaStream_t);\n"
        "template void rce::launch_epilogue<__half>(__half*, const __half*, const float*,"
        " int64_t, int64_t, int64_t, bool, cudaStream_t);\n"
        "template void rce::launch_epilogue<__nv_bfloat16>(__nv_bfloat16*, const __nv_bfloat16*,"
        " const float*, int64_t, int64_t, int64_t, bool, cudaStream_t);\n")
    for arch in ARCHS:
        r = nvcc_compile(str(src), arch, [str(CSRC)])
        log = r.stdout + r.stderr
        assert r.returncode == 0, f"nvcc sm_{arch} failed:\n{log[-4000:]}"
        spills = ptxas_spills(log)
        assert spills and not any(spills), f"sm_{arch}: spills {spills}\n{log[-2000:]}"


def test_conv_aot_nvcc_full_extension_source(tmp_path):
    """csrc/conv_epilogue.cu as the extension build compiles it (ATen headers, torch's flags).

    The CPU torch wheel ships the c10/ATen CUDA headers but not the one CMake-generated
    ``c10/cuda/impl/cuda_cmake_macros.h``; an empty stand-in is supplied for this check only.
    """
    _nvcc_or_skip()
    from torch.utils.cpp_extension import include_paths

    stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    inc = include_paths() + [sysconfig.get_paths()["include"], str(CSRC)]
    # the real torch headers come first; the stand-in only fills the missing file
    inc.append(str(tmp_path / "stub"))
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    # torch's own nvcc flags (no implicit half conversions, ...) as in the real build. The
    # host side (ATen glue) is only syntax-checked, and only sm_90 is built here: the kernels
    # themselves are built for sm_80 and sm_90 by test_conv_aot_nvcc_epilogue_kernels.
    r = nvcc_compile(str(CSRC / "conv_epilogue.cu"), 90, inc,
                     [*COMMON_NVCC_FLAGS, "--use_fast_math", "-Xcompiler=-fsyntax-only", "-w"])
    log = r.stdout + r.stderr
    assert r.returncode == 0, f"nvcc failed:\n{log[-4000:]}"
    spills = ptxas_spills(log)
    assert spills and not any(spills), f"spills {spills}"
