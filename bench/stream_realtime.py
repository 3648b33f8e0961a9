"""Real-time video segmentation end to end: ``raunet-fast stream`` on a generated clip.

Writes a synthetic clip (moving lesion-like blobs, H.264 by default at 1080p and 30 frames/s),
saves a model with BatchNorm statistics as a checkpoint trained on ``--window`` patches, and
runs ``stream`` on it twice, with the options of the command line:

  throughput   every frame, as fast as the pipeline goes (decode, inference, overlay and
               encoding overlapped in threads)
  realtime     the clip played at its frame rate (--realtime): frames that arrive while the
               model is busy are dropped

and prints, per run, frames/s, dropped frames, p50 / p99 / max latency per frame, the
inference time per frame and peak memory (process RSS: the maximum so far, so the second
run's includes the first; on CUDA also the peak allocated GPU memory) as a Markdown table.
The model is warmed up on a black frame before each timed run (fused: CUDA graph capture).

    python bench/stream_realtime.py --frames 36 --base-channels 8 --depth 4 --window 512
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_clip(path: Path, frames: int, height: int, width: int, fps: int, codec: str) -> None:
    """Blobs drifting over a textured background: masks change from frame to frame."""
    import av

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    background = rng.normal(90, 12, (height, width, 1)).astype(np.float32)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.height, s.width, s.pix_fmt = height, width, "yuv420p"
        for i in range(frames):
            img = np.repeat(background, 3, axis=2)
            for k, (cy, cx, r) in enumerate([(0.4, 0.3, 0.12), (0.6, 0.7, 0.08)]):
                y, x = (cy + 0.004 * i * (k + 1)) * height, (cx - 0.005 * i) * width
                blob = np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * (r * height) ** 2))
                img += blob[..., None] * np.array([120.0, 60.0, 30.0], dtype=np.float32)
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), "rgb24")
            c.mux(s.encode(frame))
        c.mux(s.encode(None))


def make_checkpoint(path: Path, base_channels: int, depth: int, window: int) -> None:
    """An eval-mode model whose BatchNorms hold running statistics, saved with the
    preprocessing of a model trained on ``window`` patches."""
    import raunet_fast

    torch.manual_seed(0)
    model = raunet_fast.build_model("raunet", in_channels=3, out_channels=1,
                                    base_channels=base_channels, depth=depth)
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 3, 64, 64))
    model.eval().save_pretrained(path)
    (path / "preprocessing.json").write_text(json.dumps(
        {"dataset": "folder", "patch": [window, window], "threshold": 0.5}))


def row(mode: str, s: dict) -> str:
    lat, inf = s["latency_ms"], s["inference_ms"]
    cuda = "-" if s["peak_cuda_mb"] is None else f"{s['peak_cuda_mb']:.0f}"
    return (f"| {mode} | {s['frames']} | {s['dropped']} | {s['fps']:.2f} | {lat['p50']:.0f} | "
            f"{lat['p99']:.0f} | {lat['max']:.0f} | {inf['p50']:.0f} | "
            f"{s['peak_rss_mb']:.0f} | {cuda} |")


HEADER = ("| run | frames | dropped | frames/s | latency p50 ms | p99 ms | max ms | "
          "inference p50 ms | peak RSS MiB | peak CUDA MiB |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=36)
    p.add_argument("--size", default="1080x1920", help="clip size HxW (default: 1080p)")
    p.add_argument("--fps", type=int, default=30, help="clip frame rate")
    p.add_argument("--codec", default="libx264")
    p.add_argument("--base-channels", type=int, default=8)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--window", type=int, default=512, help="training patch = window size")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--no-fused", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--masks", action="store_true", help="also write every mask as PNG")
    p.add_argument("--json", default=None, help="write both summaries to this JSON file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from raunet_fast.stream import stream

    args = parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    results = {}
    with tempfile.TemporaryDirectory(prefix="raunet-stream-bench-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        make_clip(tmp / "clip.mp4", args.frames, h, w, args.fps, args.codec)
        print(f"clip: {args.frames} frames {w}x{h} {args.codec} at {args.fps} frames/s "
              f"({time.perf_counter() - t:.1f}s to write)", file=sys.stderr)
        make_checkpoint(tmp / "ck", args.base_channels, args.depth, args.window)
        options = dict(device=args.device, dtype=args.dtype, fused=not args.no_fused,
                       threads=args.threads, masks=args.masks, batch_size=args.batch_size,
                       progress=False)
        for mode in ("throughput", "realtime"):
            results[mode] = stream(tmp / "ck", tmp / "clip.mp4", tmp / mode,
                                   realtime=mode == "realtime", **options)
    first = results["throughput"]
    print(f"raunet base {args.base_channels} depth {args.depth}, {first['model']} model on "
          f"{first['device']}, windows {args.window}x{args.window} (batch {args.batch_size}), "
          f"torch threads {torch.get_num_threads()}\n")
    print(HEADER)
    for mode, s in results.items():
        print(row(mode, s))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
