"""Ahead-of-time builds of the attention gate kernels for GPUs that are not here.

* every shipped Triton config (``CONFIGS``, per dtype) compiles for sm_80 and sm_90 with
  zero register spills, at RAUNet's smallest and largest decoder level (C = 64: x in one
  chunk; C = 512: the longest K and F loops; registers do not grow with C beyond that)
  and at an awkward shape (masked tails; NCHW layout with alpha written);
* ``csrc/attention_gate.cu`` compiles with nvcc for sm_80 and sm_90 (torch's half/bf16
  flags), with zero spills in every kernel instantiation.

Select with ``pytest -k "gate and aot"``. The register / spill table is printed (``-s``).
"""
from __future__ import annotations

import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from helpers.aot import aot_reports, nvcc_compile, ptxas_spills

ARCHS = (80, 90)
_TL = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_PTRS = ("x_ptr", "g_ptr", "wx_ptr", "wg_ptr", "b_ptr", "psi_ptr", "bpsi_ptr", "out_ptr",
         "alpha_ptr")


def _job(i, cfg, shape, dtype, arch, x_cl=True, write_alpha=False, concat=False):
    from raunet_fast.ops.attention_gate.triton.configs import (
        cache_hints,
        channel_blocks,
    )

    cx, cg, f = shape
    sig = {p: f"*{_TL[dtype]}" for p in _PTRS}
    sig.update({"HW": "i32", "KX_STEPS": "i32", "KG_STEPS": "i32", "F_STEPS": "i32"})
    consts = dict(CX=cx, CG=cg, F=f, X_CL=x_cl, G_CL=x_cl, OUT_C=cx + cg if concat else cx,
                  COPY_G=concat, BLOCK_P=cfg["BLOCK_P"],
                  WRITE_ALPHA=write_alpha, DOT_PRECISION="ieee",
                  **channel_blocks(cfg, cx, cg, f, dtype), **cache_hints(cfg))
    sig.update({k: "constexpr" for k in consts})
    return {"module": "raunet_fast.ops.attention_gate.triton.kernel", "kernel": "attention_gate_kernel",
            "signature": sig, "constexprs": consts, "arch": arch,
            "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"],
            # as a real launch specialises: torch allocations are 16-byte aligned; H*W of
            # the model's levels is a multiple of 16, the awkward shape's is not
            "divisible_by_16": [*_PTRS, *(["HW"] if shape != (48, 80, 24) else [])],
            "tag": f"cfg{i} {'x'.join(map(str, shape))} {_TL[dtype]} sm_{arch}"
                   f"{'' if x_cl else ' nchw'}{' alpha' if write_alpha else ''}"
                   f"{' concat' if concat else ''}"}


def test_gate_aot_triton_configs_build_without_spills():
    pytest.importorskip("triton")
    from raunet_fast.ops.attention_gate.triton.configs import CONFIGS, configs_for

    # Registers depend on the path (x in one chunk or a K loop), dtype, layout and config,
    # not on the channel count once the loops run: C=64 (one chunk), C=512 (the largest
    # loop) cover the model; the awkward shape covers masked tails.
    small, large, awkward = (64, 64, 32), (512, 512, 256), (48, 80, 24)
    # each config at the shapes it is used for (``max_channels`` configs: small only)
    from raunet_fast.ops.attention_gate.triton.configs import applies

    bf16, fp32 = configs_for(torch.bfloat16), configs_for(torch.float32)
    jobs = [_job(CONFIGS.index(cfg), cfg, s, torch.bfloat16, a)
            for cfg in bf16 for s in (small, large) for a in ARCHS
            if applies(cfg, torch.bfloat16, s[0], s[1])]
    jobs += [_job(CONFIGS.index(cfg), cfg, large if applies(cfg, torch.float32, 512, 512)
                  else small, torch.float32, a)
             for cfg in fp32 for a in ARCHS]
    jobs += [_job(0, CONFIGS[0], awkward, torch.bfloat16, a) for a in ARCHS]
    # the concatenating variant (g copied into channels Cx..: one-chunk and looped g) of
    # every config it autotunes over, at the shapes each is used for
    jobs += [_job(i, cfg, s, torch.bfloat16, a, concat=True)
             for i, cfg in enumerate(CONFIGS) for s in (small, large)
             if applies(cfg, torch.bfloat16, s[0], s[1], concat=True) for a in ARCHS]
    # and in fp32 (the fused fp32 model on CUDA concatenates too): the largest shape each
    # fp32 concat config is used at
    jobs += [_job(i, cfg, large if applies(cfg, torch.float32, 512, 512, concat=True) else small,
                  torch.float32, a, concat=True)
             for i, cfg in enumerate(CONFIGS) if applies(cfg, torch.float32, concat=True)
             for a in ARCHS]
    jobs += [_job(0, CONFIGS[0], awkward, torch.float16, a, x_cl=False, write_alpha=True)
             for a in ARCHS]
    # two compiler processes (the CI machine has two cores)
    halves = [jobs[0::2], jobs[1::2]]
    with ThreadPoolExecutor(2) as pool:
        reports = [r for part in pool.map(aot_reports, halves) for r in part]
    print("\nconfig shape dtype arch: registers spill_stores shared_bytes ptx_ops")
    for r in sorted(reports, key=lambda r: r["tag"]):
        print(f"  {r['tag']}: {r['registers']} {r['spill_stores']} {r['shared']} {r['ptx_ops']}")
    broken = [r["tag"] + "\n" + r["ptxas_log"] for r in reports if not r["ptxas_ok"]]
    assert not broken, "ptxas failed:\n" + "\n".join(broken)
    spilling = [f"{r['tag']}: {r['spill_stores']} bytes" for r in reports
                if r["spill_stores"] is None or r["spill_stores"] > 0]
    assert not spilling, "configs that spill registers:\n" + "\n".join(spilling)


def _nvcc() -> str | None:
    return shutil.which("nvcc") or next(
        (p for p in ("/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc") if Path(p).exists()), None)


@pytest.mark.parametrize("arch", ARCHS)
def test_gate_aot_cuda_source_builds_without_spills(arch, monkeypatch):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found: the .cu source is compiled where a CUDA toolkit is installed")
    from raunet_fast.ops._backend import csrc_dir

    src = csrc_dir() / "attention_gate.cu"
    # the flags torch's extension build passes to nvcc (half / bf16 operators off)
    flags = ["--use_fast_math", "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
             "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]
    monkeypatch.setenv("PATH", str(Path(nvcc).parent) + os.pathsep + os.environ.get("PATH", ""))
    r = nvcc_compile(str(src), arch, [str(csrc_dir())], flags)
    log = r.stdout + r.stderr
    assert r.returncode == 0, f"nvcc failed for sm_{arch}:\n{log[-4000:]}"
    spills = ptxas_spills(log)
    # CUDA-core kernel: 3 dtypes x 2 F tiles x vector/scalar; WMMA kernel: 2 dtypes x 2 x 2
    assert len(spills) == 20, f"expected 20 kernel instantiations, ptxas reported " \
                              f"{len(spills)}:\n{log[-3000:]}"
    assert not any(spills), f"register spills on sm_{arch}: {spills}\n{log[-3000:]}"
    print(f"\nsm_{arch} registers per kernel:",
          sorted(int(x) for x in re.findall(r"Used (\d+) registers", log)))
