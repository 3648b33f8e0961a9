"""``raunet-fast stream``: parse -> :class:`~raunet_fast.config.StreamConfig` -> StreamRun."""
from __future__ import annotations

import sys

from ..config import StreamConfig
from ..io.lock import folder_lock
from .common import add_parser, resolve


def _ms(stats: dict) -> str:
    if stats["p50"] is None:
        return "none"
    return f"p50 {stats['p50']:.1f} / p99 {stats['p99']:.1f} / max {stats['max']:.1f} ms"


def report(s: dict) -> str:
    """The summary of a run in one line."""
    rss, cuda = s.get("peak_rss_mb"), s.get("peak_cuda_mb")
    memory = "peak memory " + ("unknown" if rss is None else f"{rss:.0f} MiB")
    if cuda is not None:
        memory += f" (CUDA {cuda:.0f} MiB)"
    wrote = ", ".join(str(p) for p in (s["video"], s["masks"]) if p) or "no outputs"
    stopped = " (stopped by Ctrl-C)" if s.get("interrupted") else ""
    return (f"stream: {s['frames']} frames{stopped} in {s['seconds']:.2f}s: "
            f"{s['fps']:.2f} frames/s, {s['dropped']} dropped, latency {_ms(s['latency_ms'])}, "
            f"inference {_ms(s['inference_ms'])}, {memory}; {s['model']} model on "
            f"{s['device']} -> {wrote}")


def run(args) -> int:
    cfg = resolve(args)
    if cfg is None:
        return 0
    from ..stream import StreamRun

    with folder_lock(cfg.out, "stream"):
        summary = StreamRun(cfg).run()
    print(report(summary))
    sys.stdout.flush()
    return 0


def add_cli(sub) -> None:
    p = add_parser(sub, "stream", StreamConfig,
                   help="segment a video, a folder of frames or a camera in real time",
                   description="Segment a video file (mp4, avi, webm, ...; needs the video "
                               "extra: pip install \"raunet-fast[video]\"), a folder of frames "
                               "or a camera (camera:N) frame by frame at full resolution "
                               "(windows of the training size) with decoding, inference and "
                               "encoding overlapped, into OUT/<input>_overlay.mp4 and / or "
                               "OUT/masks/<frame>_mask.png. Reports frames/s, latency "
                               "percentiles, dropped frames (--realtime) and peak memory, also "
                               "written to OUT/stream_stats.json. Ctrl-C stops the input and "
                               "finishes the frames in flight; a second Ctrl-C aborts.")
    p.set_defaults(func=run)
