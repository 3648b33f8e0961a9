"""Sliding-window inference on a huge image: does the blending keep up with the model?

An ``S x S`` RGB uint8 image (default 8192 as a script), RAUNet base 16 (default depth,
eval mode, fp32, the CPU), window 512, overlap 0.25, ``--batch`` windows per call. Each size
runs in a fresh child process, so its peak RSS (VmHWM) is its own. Reported per size:

* windows, and the forward time of one batch of random windows (median of ``--reps``,
  measured in the same process just before and just after the run; the mean of the two),
  divided by the batch: ms / window;
* total: the wall time of :func:`raunet_fast.sliding_window.sliding_window_inference`;
* ratio: total / (windows x ms / window), the target being <= 1.3;
* in-run: total / the model calls' own time during the run (the blending machinery's
  overhead, insensitive to the machine's load changing between the two measurements);
* peak RSS of the child from just before the image is made (the model, its activations,
  the image, the result).

    python bench/bench_sliding_window.py [--sizes 2048 8192] [--batch 4] [--reps 3]
    pytest bench/bench_sliding_window.py --benchmark-only    # 2048 (RAUNET_BENCH_SW_SIZE=8192)

The glibc allocator is tuned as the CLI tunes it (:func:`raunet_fast.runtime.
tune_cpu_allocator`; ``--default-allocator`` keeps glibc's defaults).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch

WINDOW, OVERLAP, BASE = 512, 0.25, 16


def peak_rss_bytes() -> int:
    """The process's peak resident size since the last :func:`reset_peak_rss`."""
    try:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024
    except (OSError, AttributeError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: resets VmHWM to the current RSS
    except OSError:
        pass


def build():
    from raunet_fast.benchmark import demo_model

    torch.manual_seed(0)
    model = demo_model("raunet", base_channels=BASE)
    timed = {"calls": 0, "s": 0.0}

    def forward(xb):
        t0 = time.perf_counter()
        out = model(xb)
        timed["calls"], timed["s"] = timed["calls"] + 1, timed["s"] + time.perf_counter() - t0
        return out
    return model, forward, timed


def forward_ms(model, batch: int, reps: int) -> float:
    """Median time of one forward of ``batch`` random windows, per window."""
    x = torch.rand(batch, 3, WINDOW, WINDOW)
    times = []
    with torch.no_grad():
        model(x)  # warm-up: first-call allocations
        for _ in range(reps):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] / batch * 1e3


def measure(size: int, batch: int = 4, reps: int = 3, progress: bool = False,
            once=lambda fn: fn()) -> dict:
    """One run at ``size`` (called through ``once``: pytest-benchmark's timer); the numbers
    of the module docstring, peak RSS from just before the image is made."""
    import numpy as np

    from raunet_fast.sliding_window import sliding_window_inference, window_starts

    model, forward, timed = build()
    before = forward_ms(model, batch, reps)
    image = torch.from_numpy(np.random.default_rng(0).integers(
        0, 256, (1, 3, size, size), dtype=np.uint8))
    windows = len(window_starts(size, WINDOW, OVERLAP)) ** 2
    reset_peak_rss()
    res = {}

    def run():
        t0 = time.perf_counter()
        res["out"] = sliding_window_inference(forward, image, WINDOW, overlap=OVERLAP,
                                              batch_size=batch, progress=progress)
        res["s"] = time.perf_counter() - t0
    once(run)
    out, total = res["out"], res["s"]
    after = forward_ms(model, batch, reps)
    per_window = (before + after) / 2
    assert out.shape == (1, 1, size, size) and bool(torch.isfinite(out[..., ::97, ::97]).all())
    return {"size": size, "batch": batch, "windows": windows, "calls": timed["calls"],
            "ms_per_window": per_window, "ms_per_window_before": before,
            "ms_per_window_after": after, "total_s": total,
            "ratio": total / (windows * per_window / 1e3),
            "in_run_ratio": total / timed["s"], "mp_per_s": size * size / 1e6 / total,
            "threads": torch.get_num_threads(), "peak_rss_gb": peak_rss_bytes() / 2 ** 30}


def child(size: int, batch: int, reps: int, tuned: bool) -> dict:
    """A fresh process: its peak RSS covers this size only."""
    cmd = [sys.executable, __file__, "--child", str(size), "--batch", str(batch),
           "--reps", str(reps)] + ([] if tuned else ["--default-allocator"])
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"size {size}: child failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


HEADER = (f"{'size':>6} {'windows':>7} {'batch':>5} {'ms/window':>9} {'(before/after)':>15} "
          f"{'total s':>8} {'ratio':>6} {'in-run':>6} {'MP/s':>6} {'peak RSS GB':>11}")


def table_row(r: dict) -> str:
    spread = f"{r['ms_per_window_before']:.0f}/{r['ms_per_window_after']:.0f}"
    return (f"{r['size']:>6} {r['windows']:>7} {r['batch']:>5} {r['ms_per_window']:>9.1f} "
            f"{spread:>15} {r['total_s']:>8.1f} {r['ratio']:>6.2f} {r['in_run_ratio']:>6.2f} "
            f"{r['mp_per_s']:>6.2f} {r['peak_rss_gb']:>11.2f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--default-allocator", action="store_true")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        if not args.default_allocator:
            from raunet_fast.runtime import tune_cpu_allocator

            tune_cpu_allocator()
        print(json.dumps(measure(args.child, args.batch, args.reps, progress=True)), flush=True)
        return 0
    print(f"# RAUNet base {BASE}, fp32, window {WINDOW}, overlap {OVERLAP}, uint8 RGB, torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}, allocator "
          f"{'glibc default' if args.default_allocator else 'tuned'}")
    print(HEADER)
    for size in args.sizes:
        print(table_row(child(size, args.batch, args.reps, not args.default_allocator)),
              flush=True)
    return 0


@pytest.mark.bench_device("cpu")
def test_sliding_window_huge_image(benchmark, bench_record):
    """One run at RAUNET_BENCH_SW_SIZE (default 2048: 25 windows; 8192: 441, minutes), in
    this process with its allocator as it is (the script tunes it, as the CLI does)."""
    size = int(os.environ.get("RAUNET_BENCH_SW_SIZE", "2048"))
    result = measure(size, once=lambda fn: benchmark.pedantic(fn, rounds=1, iterations=1))
    benchmark.extra_info.update({k: result[k] for k in ("windows", "ms_per_window", "ratio",
                                                        "in_run_ratio", "peak_rss_gb")})
    bench_record(benchmark, device="cpu", suite="sliding_window", case=f"raunet base {BASE}",
                 shape=f"1x3x{size}x{size} window {WINDOW}", dtype="fp32",
                 variant="uint8 batch 4", extra=result)


if __name__ == "__main__":
    sys.exit(main())
