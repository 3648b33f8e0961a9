"""Host (Python) cost of the fused ops' wrappers, per call, on this machine's CPU.

Eager inference without CUDA graphs is host-bound at batch 1 on a GPU (the network makes
22 op calls per forward): every microsecond a wrapper spends before its kernel launch is
paid 22 times. This times, on tiny CPU tensors (so the kernels themselves cost little), the
public module call against the bare implementation it ends in, and the layers between:

  module       a FusedConv3x3 call (the inference modules' path)
  op           ``conv3x3_fused(x, w, b, ...)`` (the public functional op)
  impl         ``_conv3x3_fused_impl(...)`` called directly (what both end in)
  eager_direct the plain-eager-inference test each call makes
  check        the argument checks of the public op (a module runs them only when its fast
               check fails)
  network      a whole fused RAUNet forward (base 8, 1 x 3 x 32 x 32: 18 conv + 4 gate calls,
               host-bound)

Wrapper overhead = module - impl. Best of 7 rounds of ``--calls`` calls, one thread.

    python bench/op_overhead.py [--out FILE]      # FILE: harness CSV rows
"""
from __future__ import annotations

import argparse
import time

import torch

from raunet_fast.bench_harness import Stats, environment, script_rows_written, set_ratios
from raunet_fast.blocks import ResidualBlock
from raunet_fast.inference import build_inference_model
from raunet_fast.models import RAUNet
from raunet_fast.ops import conv3x3 as op
from raunet_fast.ops._backend import eager_direct
from raunet_fast.ops.fused_blocks import FusedResidualBlock


def round_times_ms(fn, calls: int, rounds: int = 7) -> list[float]:
    """Per-call ms of each of ``rounds`` rounds of ``calls`` calls."""
    for _ in range(calls // 10):
        fn()
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - t) / calls * 1e3)
    return out


def per_call_us(fn, calls: int, rounds: int = 7) -> float:
    """Best per-call microseconds over ``rounds`` rounds."""
    return min(round_times_ms(fn, calls, rounds)) * 1e3


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--backend", default="torch", help="conv backend (torch: the cheapest impl)")
    p.add_argument("--out", default=None,
                   help="append harness CSV rows (suite op_overhead; min_ms = the best round)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    block = ResidualBlock(32, 64).eval()
    fused = FusedResidualBlock.from_block(block, dtype=torch.float32, backend=args.backend)
    conv2 = fused.conv2
    x = torch.randn(1, 32, 2, 2).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        h = fused.conv1(x)
        w, b, sw = conv2.weight, conv2.bias, conv2.shortcut_weight
        rows = {
            "module": lambda: conv2(h, shortcut_input=x),
            "op": lambda: op.conv3x3_fused(h, w, b, shortcut_input=x, shortcut_weight=sw,
                                           backend=args.backend),
            "impl": lambda: op.conv3x3_fused_impl(h, w, b, None, x, sw, None, True,
                                                   args.backend),
            "eager_direct": lambda: eager_direct(h, w, b, None, x, sw, None),
            "check": lambda: op.check_args(h, w, b, None, x, sw),
        }
        torch.manual_seed(0)
        net = build_inference_model(RAUNet(3, 1, base_channels=8).eval(), dtype=torch.float32,
                                    backend=args.backend)
        img = torch.randn(1, 3, 32, 32)
        times = {name: round_times_ms(fn, args.calls) for name, fn in rows.items()}
        times["network"] = round_times_ms(lambda: net(img), max(1, args.calls // 20))
    us = {name: min(t) * 1e3 for name, t in times.items()}
    print(f"# torch {torch.__version__}, backend {args.backend}, 1 thread, "
          f"64 <- 32 conv + 1x1 projection on 1 x 32 x 2 x 2 (CPU)")
    for name, v in us.items():
        print(f"  {name:13} {v:7.2f} us")
    print(f"  {'overhead':13} {us['module'] - us['impl']:7.2f} us per module call "
          f"(module - impl)")
    if args.out:
        write_rows(args.out, args.backend, times)


def write_rows(path: str, backend: str, times: dict) -> None:
    """Harness rows (suite op_overhead): per-call ms of each round; ratio against impl."""
    env = environment("cpu")
    out = [env.row(suite="op_overhead", case=f"backend {backend}",
                   shape="1x3x32x32" if name == "network" else "1x32x2x2", dtype="fp32",
                   variant=name, stats=Stats.of(t)) for name, t in times.items()]
    set_ratios(out, "impl")
    script_rows_written(path, out)


if __name__ == "__main__":
    main()
