"""Training throughput of ``torchrun --nproc_per_node N -m raunet_fast.cli train`` for
several N: samples per second and the scaling efficiency against one process.

    python bench/ddp_scaling.py [--procs 1 2] [--batch-size 8] [--size 64] [--steps 8]
                                [--epochs 3] [--device cpu] [--threads 1] [--out F]

Makes a synthetic ISIC-layout data set in a temporary folder, trains the same model with the
same global batch (strong scaling: each of N ranks gets batch / N) for ``--epochs`` epochs
of ``--steps`` steps, and reads the epoch times the run logs; the first epoch (start-up,
allocator warm-up) is left out. Samples/s = steps x batch / epoch time (the epoch time
includes the sharded validation of the small validation split). Efficiency =
(samples/s with N) / (N x samples/s with 1). On the CPU (gloo) this proves the path; the
numbers that matter come from GPUs (``--device cuda``, NCCL), one process per GPU.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(data: Path, run: Path, procs: int, a) -> list[float]:
    """Epoch times (s) of one run on ``procs`` processes."""
    from raunet_fast.io.tables import read_csv

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
           "--master_port", str(free_port()), "-m", "raunet_fast.cli", "train",
           "--dataset", "isic2018", "--data-root", str(data), "--out", str(run),
           "--epochs", str(a.epochs), "--max-steps-per-epoch", str(a.steps),
           "--batch-size", str(a.batch_size), "--image-size", str(a.size),
           "--base-channels", str(a.base_channels), "--depth", str(a.depth),
           "--num-workers", "0", "--no-progress", "--device", a.device, "--norm", "group",
           "--cache-images"]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return [float(r["epoch_time_s"]) for r in read_csv(run / "log.csv")]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch-size", type=int, default=8, help="the global batch")
    p.add_argument("--size", type=int, default=64, help="image size (square)")
    p.add_argument("--steps", type=int, default=8, help="steps per epoch")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--base-channels", type=int, default=8)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1, help="OMP threads per process")
    p.add_argument("--out", default=None, help="also write the table here (markdown)")
    a = p.parse_args(argv)
    from raunet_fast.data import make_isic2018

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp, "data")
        make_isic2018(data, a.batch_size * a.steps + 8, (a.size + 8, a.size + 16), seed=0)
        for n in a.procs:
            times = train(data, Path(tmp, f"run{n}"), n, a)[1:]
            sps = a.steps * a.batch_size / statistics.median(times)
            rows.append((n, statistics.median(times), sps))
    base = next((sps for n, _, sps in rows if n == 1), None)
    lines = ["| processes | epoch s (median) | samples/s | efficiency |", "|---|---|---|---|"]
    for n, t, sps in rows:
        eff = "-" if base is None else f"{sps / (n * base):.2f}"
        lines.append(f"| {n} | {t:.3f} | {sps:.1f} | {eff} |")
    print(f"device {a.device}, global batch {a.batch_size}, {a.size}x{a.size}, "
          f"{a.threads} thread(s) per process, CPU cores {os.cpu_count()}")
    print("\n".join(lines))
    if a.out:
        Path(a.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
