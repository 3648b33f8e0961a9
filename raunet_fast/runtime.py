"""Process-level settings that matter for fast CPU inference.

:func:`tune_cpu_allocator`: glibc's malloc serves every allocation above 32 MiB (its largest
mmap threshold) with fresh pages from the kernel and hands them back on free, so each large
activation of a high-resolution forward pays page faults again on every call (measured on
2 cores: a fresh 64 MiB buffer filled in 14.6 ms vs 5.0 ms reused). Keeping such memory in
the heap removes that: RAUNet base 32 at 1 x 3 x 512², fp32, 2 cores
(bench/results/cpu-20261126/realtime.txt): eager 548 -> 451 ms, fused 524 -> 397 ms. The price: memory freed by the process is kept for reuse, not returned to
the system (the resident size stays at its peak), which suits an inference or training
process. The CLI calls it for CPU work; library users opt in (or set the environment
variables ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>`` before starting Python).
"""
from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["tune_cpu_allocator"]

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
