"""3-D sliding windows on a BraTS-sized volume: blending overhead and memory.

A 4 x D x H x W float32 volume (default 155 x 240 x 240, a BraTS case), windows of
``--window`` (default 128) with ``--overlap`` (default 0.5), ``--batch`` windows per call, on
the CPU. Two models, each case in a fresh child process so that its peak RSS is its own:

* ``pointwise``: a 1 x 1 x 1 conv (4 -> 3 channels): the model costs almost nothing, so the
  wall time is the blending machinery's (cutting windows, weighting, accumulating,
  normalising);
* ``raunet``: a tiny 3-D RAUNet (base 4, depth 3, eval mode): in-run = total / the model
  calls' own time, i.e. the blending overhead next to a real network.

Each runs with ``accumulate_dtype`` float32 and float16. Reported: windows, total seconds,
in-run ratio, megavoxels / s, the result's bytes and the peak RSS above the RSS just before
the call (the input volume excluded: it exists before).

    python bench/sliding_window_3d.py [--size 155x240x240] [--window 128] [--overlap 0.5]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sliding_window import peak_rss_bytes, reset_peak_rss  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def model_of(name: str):
    if name == "pointwise":
        return torch.nn.Conv3d(4, 3, 1).eval()
    from raunet_fast.models import build_model

    return build_model("raunet", in_channels=4, out_channels=3, base_channels=4, depth=3,
                       spatial_dims=3).eval()


def current_rss() -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def measure(name: str, dtype: str, size, window: int, overlap: float, batch: int) -> dict:
    from raunet_fast.sliding_window import sliding_window_inference, window_starts

    torch.manual_seed(0)
    model, timed = model_of(name), {"s": 0.0}

    def forward(xb):
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model(xb)
        timed["s"] += time.perf_counter() - t0
        return out

    volume = torch.randn(1, 4, *size)
    windows = 1
    for s in size:
        windows *= len(window_starts(s, window, overlap))
    base = current_rss()
    reset_peak_rss()
    t0 = time.perf_counter()
    out = sliding_window_inference(forward, volume, window, overlap=overlap, batch_size=batch,
                                   accumulate_dtype=DTYPES[dtype])
    total = time.perf_counter() - t0
    voxels = size[0] * size[1] * size[2]
    return {"model": name, "accumulate": dtype, "windows": windows, "total_s": total,
            "in_run": total / max(timed["s"], 1e-9), "mvox_per_s": voxels / 1e6 / total,
            "result_mb": out.numel() * out.element_size() / 2 ** 20,
            "peak_above_mb": (peak_rss_bytes() - base) / 2 ** 20,
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="155x240x240")
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "DTYPE"))
    args = ap.parse_args()
    size = tuple(int(s) for s in args.size.split("x"))
    if args.child:
        print(json.dumps(measure(*args.child, size, args.window, args.overlap, args.batch)))
        return
    print(f"volume 4 x {args.size}, window {args.window}, overlap {args.overlap}, "
          f"batch {args.batch}, CPU")
    print(f"{'model':>9} {'acc':>4} {'windows':>7} {'total s':>8} {'in-run':>6} {'MV/s':>6} "
          f"{'result MB':>9} {'peak above MB':>13}")
    for name in ("pointwise", "raunet"):
        for dtype in DTYPES:
            cmd = [sys.executable, __file__, "--child", name, dtype, "--size", args.size,
                   "--window", str(args.window), "--overlap", str(args.overlap),
                   "--batch", str(args.batch)]
            r = json.loads(subprocess.run(cmd, capture_output=True, text=True,
                                          check=True).stdout.strip().splitlines()[-1])
            print(f"{r['model']:>9} {r['accumulate']:>4} {r['windows']:>7} "
                  f"{r['total_s']:>8.2f} {r['in_run']:>6.2f} {r['mvox_per_s']:>6.2f} "
                  f"{r['result_mb']:>9.1f} {r['peak_above_mb']:>13.1f}")


if __name__ == "__main__":
    main()
