"""Frame rate, latency percentiles and peak memory of a ``stream`` run.

Latency of a frame: from the moment it was available (decoding started, or in real-time
mode the moment the frame was due at the input's frame rate) to the moment its outputs
were written. Inference time: the model call alone (with the copy of the masks back to the
host, which waits for the device)."""
from __future__ import annotations

import sys
import time

import numpy as np
import torch

#: the percentiles reported (linear interpolation between the closest ranks)
PERCENTILES = (50, 99)


def latency_summary(seconds: list[float]) -> dict[str, float | None]:
    """``p50``, ``p99`` and ``max`` of ``seconds`` in milliseconds (None when empty)."""
    if not seconds:
        return {"p50": None, "p99": None, "max": None}
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    out = {f"p{q}": float(v) for q, v in zip(PERCENTILES, np.percentile(ms, PERCENTILES))}
    out["max"] = float(ms.max())
    return out


def peak_rss_mb() -> float | None:
    """The process's peak resident memory in MiB (``ru_maxrss``: KiB on Linux, bytes on
    macOS; None where there is no ``resource`` module, on Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)


class StreamStats:
    """Per-frame latency and inference times, and the wall time between :meth:`start` and
    :meth:`stop`. ``device``: a CUDA device also reports its peak allocated memory."""

    def __init__(self, device: torch.device):
        self.device = device
        self.latency: list[float] = []
        self.inference: list[float] = []
        self.t0 = self.t1 = None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.t0 = time.perf_counter()

    def stop(self) -> None:
        self.t1 = time.perf_counter()

    def record(self, latency_s: float, inference_s: float) -> None:
        self.latency.append(latency_s)
        self.inference.append(inference_s)

    def summary(self, dropped: int = 0) -> dict:
        """frames, dropped, seconds, fps, latency_ms / inference_ms (p50, p99, max),
        peak_rss_mb and peak_cuda_mb (None on the CPU)."""
        seconds = (self.t1 or time.perf_counter()) - (self.t0 or 0.0)
        cuda = (torch.cuda.max_memory_allocated(self.device) / 2 ** 20
                if self.device.type == "cuda" else None)
        return {"frames": len(self.latency), "dropped": dropped, "seconds": seconds,
                "fps": len(self.latency) / max(seconds, 1e-9),
                "latency_ms": latency_summary(self.latency),
                "inference_ms": latency_summary(self.inference),
                "peak_rss_mb": peak_rss_mb(), "peak_cuda_mb": cuda}
