"""Process-level settings that matter for fast CPU inference.

:func:`tune_cpu_allocator`: glibc's malloc serves every allocation above 32 MiB (its largest
mmap threshold) with fresh pages from the kernel and hands them back on free, so each large
activation of a high-resolution forward pays page faults again on every call (measured on
2 cores: a fresh 64 MiB buffer filled in 14.6 ms vs 5.0 ms reused). Keeping such memory in
the heap removes that: RAUNet base 32 at 1 x 3 x 512², fp32, 2 cores
(bench/results/cpu-20261126/realtime.txt): eager 548 -> 451 ms, fused 524 -> 397 ms. The price: memory freed by the process is kept for reuse, not returned to
the system (the resident size stays at its peak), which suits an inference or training
process. The CLI and :func:`raunet_fast.inference.build_inference_model` (for a CPU model)
call it unless ``RAUNET_CPU_ALLOCATOR=default``; other library users opt in (or set the
environment variables ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>`` before starting
Python).

:func:`cpu_features` / :func:`cpu_isa`: the CPU's matrix and vector extensions (AMX, AVX-512
with BF16, AVX2), read from ``/proc/cpuinfo``; they decide ``dtype="auto"`` on the CPU and
head the CPU benchmark.
"""
from __future__ import annotations

import ctypes
import ctypes.util

import functools
import os

__all__ = ["tune_cpu_allocator", "tune_cpu_allocator_unless_disabled", "cpu_features",
           "cpu_isa", "cpu_has_fast_bf16", "compile_frozen"]

#: the CPU flags that matter here (Linux ``/proc/cpuinfo`` names)
FEATURES = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx512f", "avx2")

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_applied: bool | None = None


def tune_cpu_allocator() -> bool:
    """Keep large CPU allocations in the heap for reuse (glibc ``mallopt``: no mmap-served
    chunks, no trimming). Returns True when applied (glibc found), False otherwise (other
    C libraries: nothing changes). Idempotent; affects the whole process."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok = (mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1) and ok
    _applied = ok
    return ok


def tune_cpu_allocator_unless_disabled() -> bool:
    """:func:`tune_cpu_allocator`, unless ``RAUNET_CPU_ALLOCATOR=default`` asks for glibc's
    own behaviour."""
    if os.environ.get("RAUNET_CPU_ALLOCATOR", "tuned") == "default":
        return False
    return tune_cpu_allocator()


@functools.lru_cache(maxsize=1)
def cpu_features() -> frozenset[str]:
    """The flags of :data:`FEATURES` this CPU has (empty where ``/proc/cpuinfo`` is absent)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(FEATURES) & frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_isa(features: frozenset[str] | None = None) -> str:
    """A short name of the best matrix / vector unit: ``"AMX"``, ``"AVX-512"``, ``"AVX2"``
    or ``"other"``."""
    f = cpu_features() if features is None else features
    if "amx_bf16" in f or "amx_int8" in f:
        return "AMX"
    if "avx512f" in f:
        return "AVX-512"
    return "AVX2" if "avx2" in f else "other"


def cpu_has_fast_bf16(features: frozenset[str] | None = None) -> bool:
    """Whether bf16 matrix math runs in hardware here (AMX-BF16 or AVX512-BF16)."""
    f = cpu_features() if features is None else features
    return bool({"amx_bf16", "avx512_bf16"} & f)


def compile_frozen(module, **kwargs):
    """``torch.compile(module)`` with inductor's freezing (weights become graph constants:
    the CPU convolutions, int8 ones included, are prepacked for oneDNN once). Freezing is
    read from inductor's config while a shape compiles, on the first call with it, so the
    returned callable sets it around every call (``options={"freezing": True}`` is not
    enough for quantized graphs)."""
    import torch
    import torch._inductor.config as inductor_config

    compiled = torch.compile(module, **kwargs)

    def run(*args):
        with inductor_config.patch(freezing=True), torch.no_grad():
            return compiled(*args)

    return run
