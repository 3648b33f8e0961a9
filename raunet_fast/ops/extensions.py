"""Build every ``csrc/`` extension ahead of use (``raunet-fast build-extensions``), so that
the first fused call of a fresh install does not wait for a compiler."""
from __future__ import annotations

import time

from ._backend import BackendUnavailable, load_extension
from .attention_gate.dispatch import EXTENSIONS as GATE_EXTENSIONS
from .conv3x3.backends import CPU_EXT, CUDA_EXT

__all__ = ["SPECS", "build_extensions"]

#: (module name, sources, cuda) of every extension
SPECS = (CPU_EXT, GATE_EXTENSIONS["cpp"], CUDA_EXT, GATE_EXTENSIONS["cuda"])


def build_extensions(cuda: bool = False, report=print) -> list[tuple[str, str, float]]:
    """Build (or find built) the CPU extensions, and the CUDA ones with ``cuda``. Returns
    ``(name, "ok" | the error, seconds)`` per extension; ``report`` gets a line each."""
    results = []
    for name, sources, is_cuda in SPECS:
        if is_cuda and not cuda:
            continue
        t0 = time.perf_counter()
        try:
            load_extension(name, sources, cuda=is_cuda)
            status = "ok"
        except BackendUnavailable as e:
            status = " ".join(str(e).split())[:300]
        results.append((name, status, time.perf_counter() - t0))
        report(f"{name}: {status} ({results[-1][2]:.1f} s)")
    return results
