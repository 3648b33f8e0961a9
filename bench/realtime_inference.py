"""Real-time, high-resolution inference: the whole network, end to end.

Compares, in one run and on one device:
  eager-fp32      reference model, fp32, NCHW (what a user gets by default)
  eager-<dt>      reference model cast to <dt>, channels_last
  compile-<dt>    torch.compile of that (plain torch.compile: the baseline to beat)
  fused-<dt>      build_inference_model (folded BN, fused gate + conv kernels)
  fused+graphs    the fused model captured as one CUDA graph per shape (GPU only)
  fused+graphs+carry   the same with carry_input=True (first block's projection carried
                  through conv1; GPU only)
  fused+compile   torch.compile around the fused model

and reports ms per batch, images/s, speedup vs eager-<dt> and vs compile-<dt>, and the
relative L2 error of each output against the fp32 eager output. Appends harness CSV rows (suite
``network``, docs/benchmarks.md) to --out. The script form of ``raunet-fast benchmark``
(raunet_fast/benchmark.py, which holds the code).

    python bench/realtime_inference.py --size 512 --batch 1 8 --dtype bf16 --out bench/results/realtime.csv
"""
from __future__ import annotations

import argparse
import sys

import torch

from raunet_fast.benchmark import DTYPES, demo_model, run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="raunet")
    p.add_argument("--size", type=int, nargs="+", default=[512])
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--base-channels", type=int, default=64)
    p.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backend", default="auto")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", default=None, help="CSV file to append rows to")
    p.add_argument("--tune-cpu-allocator", action="store_true",
                   help="raunet_fast.runtime.tune_cpu_allocator() first (every variant in this "
                        "process gets it, the baselines too)")
    args = p.parse_args(argv)
    if args.tune_cpu_allocator:
        from raunet_fast.runtime import tune_cpu_allocator

        tune_cpu_allocator()
    model = demo_model(args.model, base_channels=args.base_channels)
    label = f"{args.model} base {args.base_channels}" + \
        ("  tuned CPU allocator" if args.tune_cpu_allocator else "")
    # carry_input stays timed here (off by default in the package until a GPU run says so)
    run(model, args.size, args.batch, DTYPES[args.dtype], torch.device(args.device),
        backend=args.backend, compile=not args.no_compile, carry=True, warmup=args.warmup,
        iters=args.iters, out_csv=args.out, label=label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
