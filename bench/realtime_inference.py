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
relative L2 error of each output against the fp32 eager output. Appends CSV rows with the
device name, versions and a timestamp to --out.

    python bench/realtime_inference.py --size 512 --batch 1 8 --dtype bf16 --out bench/results/realtime.csv
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import sys

import torch

import raunet_fast
from bench_attention_gate import Timer  # one timing method for every bench script
from raunet_fast.inference import build_inference_model

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def rel_l2(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.double(), ref.double()
    return ((a - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


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

    device = torch.device(args.device)
    dt = DTYPES[args.dtype]
    torch.backends.cudnn.benchmark = True
    model = raunet_fast.build_model(args.model, in_channels=3, out_channels=1,
                                    base_channels=args.base_channels)
    # give BN non-trivial statistics so folding is exercised for real
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    model = model.eval().to(device)
    low = raunet_fast.build_model(args.model, in_channels=3, out_channels=1,
                                  base_channels=args.base_channels)
    low.load_state_dict(model.state_dict())
    low = low.eval().to(device, dt).to(memory_format=torch.channels_last)
    fused = build_inference_model(model, dtype=dt, backend=args.backend)

    variants: dict[str, object] = {"eager-fp32": lambda x: model(x.float()),
                                   f"eager-{args.dtype}": lambda x: low(x.to(dt).contiguous(memory_format=torch.channels_last))}
    if not args.no_compile:
        clow = torch.compile(low)
        variants[f"compile-{args.dtype}"] = lambda x: clow(x.to(dt).contiguous(memory_format=torch.channels_last))
    variants[f"fused-{args.dtype}"] = lambda x: fused(x)
    if device.type == "cuda":
        graphed = build_inference_model(model, dtype=dt, backend=args.backend, cuda_graphs=True)
        variants[f"fused+graphs-{args.dtype}"] = lambda x: graphed(x)
        # the first block's projection carried through conv1 (off by default until measured)
        carried = build_inference_model(model, dtype=dt, backend=args.backend, cuda_graphs=True,
                                        carry_input=True)
        variants[f"fused+graphs+carry-{args.dtype}"] = lambda x: carried(x)
    if not args.no_compile:
        cfused = torch.compile(fused)
        variants[f"fused+compile-{args.dtype}"] = lambda x: cfused(x)

    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    triton_v = "none"
    try:
        import triton
        triton_v = triton.__version__
    except ImportError:
        pass
    rows = []
    # end-to-end latency: the host's launch time counts (no head start)
    timer = Timer(device, args.warmup, args.iters, head_start=False)
    print(f"# {device_name(device)}  torch {torch.__version__}  triton {triton_v}  "
          f"{args.model} base {args.base_channels}  {args.dtype}  {stamp}"
          f"{'  tuned CPU allocator' if args.tune_cpu_allocator else ''}")
    print(f"{'size':>6} {'batch':>5} {'variant':<24} {'ms':>9} {'img/s':>8} "
          f"{'vs eager':>9} {'vs compile':>10} {'rel L2 err':>11}")
    for size in args.size:
        for batch in args.batch:
            x = torch.randn(batch, 3, size, size, device=device)
            with torch.no_grad():
                ref = model(x).float()
            results = {}
            for name, fn in variants.items():
                try:
                    with torch.no_grad():
                        err = rel_l2(fn(x).float(), ref)
                    ms = timer(lambda: fn(x))
                except Exception as e:  # report, keep going with the other variants
                    print(f"{size:>6} {batch:>5} {name:<24} FAILED: {type(e).__name__}: {str(e)[:200]}")
                    continue
                results[name] = (ms, err)
            base = results.get(f"eager-{args.dtype}", (float("nan"),))[0]
            comp = results.get(f"compile-{args.dtype}", (float("nan"),))[0]
            for name, (ms, err) in results.items():
                row = dict(timestamp=stamp, device=device_name(device), torch=torch.__version__,
                           triton=triton_v, model=args.model, base_channels=args.base_channels,
                           size=size, batch=batch, dtype=args.dtype, variant=name, ms=round(ms, 4),
                           images_per_s=round(batch * 1e3 / ms, 2),
                           speedup_vs_eager=round(base / ms, 3), speedup_vs_compile=round(comp / ms, 3),
                           rel_l2_err_vs_fp32=f"{err:.3e}")
                rows.append(row)
                print(f"{size:>6} {batch:>5} {name:<24} {ms:>9.3f} {batch * 1e3 / ms:>8.1f} "
                      f"{base / ms:>9.2f} {comp / ms:>10.2f} {err:>11.2e}")
    if args.out and rows:
        new = not os.path.exists(args.out)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
