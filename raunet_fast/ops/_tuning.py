"""Every timing / caching decision of the ops: one cache type and one "fastest of" rule.

* :class:`TuningCache` - key -> the choice made for it (a dict), with the timings behind
  each choice in ``.times``. One per decision: the conv's Triton configs, the conv's
  ``auto`` backend pick, the gate's Triton configs.
* :func:`fastest` - the fastest of some named candidates by a timer, remembered under a
  key; never timed while a CUDA graph is being captured.
* :func:`bench_ms` (plain calls) and :func:`graph_bench_ms` (calls replayed in a CUDA
  graph, so host launch cost does not decide) - the timers, device milliseconds.
* :func:`describe` - one line per timed key, for reports.

Nothing here imports triton before a timer runs.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable, Mapping, Optional

import torch

__all__ = ["TuningCache", "fastest", "bench_ms", "graph_bench_ms", "capturing", "describe"]


class TuningCache(dict):
    """``key -> choice`` for one decision; ``times``: ``key -> {candidate: ms}``."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.times: dict[Hashable, dict[Any, float]] = {}

    def clear(self) -> None:
        super().clear()
        self.times.clear()


def capturing() -> bool:
    """Whether the current CUDA stream is capturing a graph (nothing may be timed then)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _log(cache: Any, key: tuple, cand: Any, what: str) -> None:
    name = getattr(cache, "name", "tuning")
    print(f"# autotune {name} {key[:4]} {cand}: {what}", flush=True)


def fastest(cache: dict, key: Hashable, candidates: Mapping[Any, Callable[[], Any]],
            timer: Callable[[Callable[[], Any]], float], default: Any, *,
            warm: bool = False, remember_default: bool = False,
            verbose: bool = False, times: Optional[dict] = None) -> Any:
    """The candidate (a key of ``candidates``: name -> zero-argument callable) with the
    smallest ``timer(fn)``, remembered in ``cache`` under ``key`` (its timings in
    ``times``, by default ``cache.times`` when the cache has them). A candidate that
    raises is out of the running. ``default`` while a CUDA graph is captured (not remembered), or when no
    candidate ran (remembered only with ``remember_default``). ``warm``: call each
    candidate once before timing it (first-use work: builds, plans, Triton compiles).
    ``verbose``: print each timing."""
    hit = cache.get(key)
    if hit is not None:
        return hit
    if capturing():
        return default
    if times is None:
        times = cache.times if isinstance(cache, TuningCache) else {}
    took = {}
    for cand, fn in candidates.items():
        try:
            if warm:
                fn()
            took[cand] = timer(fn)
        except Exception as e:  # noqa: BLE001 - e.g. out of shared memory, unsupported input
            if verbose:
                _log(cache, key, cand, f"failed: {type(e).__name__}")
            continue
        if verbose:
            _log(cache, key, cand, f"{took[cand]:.4f} ms")
    if not took:
        if remember_default:
            cache[key] = default
        return default
    pick = min(took, key=took.get)
    cache[key] = pick
    times[key] = took
    return pick


def bench_ms(fn: Callable[[], Any], warmup: int = 3, rep: int = 15) -> float:
    """Device milliseconds per call of ``fn`` (``triton.testing.do_bench``: L2 flushed
    between calls; ``warmup`` / ``rep`` in milliseconds)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup, rep=rep)


def graph_bench_ms(fn: Callable[[], Any], reps: int = 10) -> float:
    """Device milliseconds per call of ``fn``: ``reps`` calls captured in a CUDA graph and
    the replay timed, so the host's launch cost - which differs between a Triton launch and
    a cuDNN call, and which CUDA graphs remove in deployment - does not decide. Times plain
    calls if the capture fails."""
    from triton.testing import do_bench

    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()   # warm on the capture stream (workspaces, plans)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                fn()
        ms = do_bench(graph.replay, warmup=5, rep=20) / reps
        del graph
        return ms
    except Exception:  # noqa: BLE001 - not capturable here: time plain calls
        torch.cuda.synchronize()
        return do_bench(fn, warmup=5, rep=20)


def describe(times: Mapping[Hashable, Mapping[Any, float]], choices: Mapping[Hashable, Any],
             label: Callable[[Hashable], str]) -> list[str]:
    """One line per timed key (``times``: key -> {candidate: ms}, e.g. a cache's
    ``.times``; ``choices``: key -> choice): ``label(key)``, each candidate's milliseconds
    and the choice."""
    lines = []
    for key, took in times.items():
        t = ", ".join(f"{cand} {ms:.4f}" for cand, ms in sorted(took.items(),
                                                               key=lambda kv: str(kv[0])))
        lines.append(f"{label(key)}: {t} ms -> {choices.get(key, '?')}")
    return lines
