"""Benchmark: one residual block of RA-U-Net at each of the five encoder shapes (512x512 input).

For every (batch, level) it times, on one device:

  eager        the reference ResidualBlock (eval, BatchNorm unfolded) in the bench dtype
  compile      torch.compile of that block (--compile default | max-autotune | none)
  cudnn-floor  the block's two 3x3 convolutions alone (F.conv2d, no bias / BN / add / ReLU):
               the floor a fused epilogue is measured against
  cudnn-fused  (GPU) cuDNN's own fusion: torch.cudnn_convolution_relu, then
               torch.cudnn_convolution_add_relu with the (1x1-projected) shortcut
  fused-<be>   FusedResidualBlock (folded, packed once) for each available backend:
               triton / cuda on a GPU, cpp / torch on the CPU (torch = folded reference math);
               fused-cuda-epilogue: the cuda backend with cuDNN's runtime fusion off (cuDNN
               conv + the csrc epilogue kernel, which computes the projection from x);
               at level 1 (narrow input, fused_blocks.carry_candidate) also fused-<be>-carry:
               the input carried through conv1, no separate 1x1 projection conv;
               fused-triton-no-tma (sm_90): the pointer-based Triton kernel where the TMA
               kernel would run;
               fused-auto (GPU): the default backend (cuDNN fusion; narrow convs on cuDNN,
               cuDNN on zero-padded channels or the Triton flat-K kernel, whichever a one-time
               timing picks)
  conv1-*      (GPU, narrow input) the first conv alone: floor (bare cuDNN conv), cudnn (+ bias
               + ReLU fused), cudnn-pad (the same on the input zero-padded to 8 channels, the
               copy included), triton (flat-K kernel, + bias + ReLU), write (a fill of its
               output: its memory-traffic floor); their "x floor" is against the block's floor

and reports ms, TFLOP/s (2 * multiply-adds of the two 3x3 convs and the 1x1 projection),
speedup over eager, ratio to the cuDNN floor and the max relative error against eager.

Script mode (a table on stdout, CSV rows appended with GPU name, versions and timestamp):

    python bench/bench_conv.py --out bench/results/conv.csv                 # GPU: bf16, 512, batch 1 8
    python bench/bench_conv.py --compile max-autotune --out bench/results/conv.csv
    python bench/bench_conv.py --size 64 --batch 1 --dtype fp32             # CPU-sized

pytest-benchmark mode (CUDA timings synchronised):

    pytest bench/bench_conv.py --benchmark-only
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch

from raunet_fast.bench_harness import (DTYPE_NAMES, DTYPES, BenchRow, Stats, append_rows,
                                       check_csv, environment, set_ratios)
from raunet_fast.blocks import ResidualBlock
from raunet_fast.fold import fold_residual_block
from raunet_fast.ops import conv3x3_fused
from raunet_fast.ops.conv3x3 import pad_channels
from raunet_fast.ops.settings import settings
from raunet_fast.ops.fused_blocks import FusedResidualBlock, carry_candidate

# (Cin, Cout, size / 512) of the encoder's residual blocks at base width 64
LEVELS = [(3, 64, 1), (64, 128, 2), (128, 256, 4), (256, 512, 8), (512, 1024, 16)]


def encoder_shapes(size: int) -> list[tuple[int, int, int]]:
    """(Cin, Cout, H=W) of each encoder block (the block input is already pooled)."""
    return [(cin, cout, max(1, size // div)) for cin, cout, div in LEVELS]


def block_flops(n: int, cin: int, cout: int, hw: int) -> float:
    m = n * hw * hw
    macs = 9 * cin * cout + 9 * cout * cout + (cin * cout if cin != cout else 0)
    return 2.0 * m * macs


def make_block(cin: int, cout: int, device: torch.device, seed: int = 0) -> ResidualBlock:
    g = torch.Generator().manual_seed(seed)
    block = ResidualBlock(cin, cout)
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g) * 0.2 + 1)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return block.eval().to(device)


def narrow_input(cin: int) -> bool:
    """Whether the block's first conv takes the flat-K path (ops.conv3x3.triton.configs.uses_small_k)."""
    try:
        from raunet_fast.ops.conv3x3.triton.configs import uses_small_k
    except ImportError:  # no triton
        return False
    return uses_small_k(cin, 0)


def available_backends(device: torch.device) -> list[str]:
    if device.type == "cuda":
        out = []
        try:
            import triton  # noqa: F401
            out.append("triton")
        except ImportError:
            pass
        return out + ["cuda", "torch"]
    out = ["cpp", "torch"]
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        out.append("triton")  # interpreter: correctness only, never fast
    return out


#: GPU spin before each timed call (cycles; 0: none): the host enqueues the call's kernels
#: while the GPU spins, so the time is the device's, not the Python launch latency of the
#: first kernel (which differs between variants: two F.conv2d calls vs the op layer). The
#: same head start as bench_attention_gate.Timer (which also flushes L2 before each call;
#: this bench does not); ``--no-head-start`` restores the previous method.
HEAD_START_CYCLES = {"cycles": 1_000_000}


def time_once(fn, device: torch.device) -> float:
    """Milliseconds of one call (CUDA events around it, synchronised, the host given a head
    start; perf_counter on CPU)."""
    if device.type == "cuda":
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if HEAD_START_CYCLES["cycles"]:
            torch.cuda._sleep(HEAD_START_CYCLES["cycles"])
        s.record()
        fn()
        e.record()
        e.synchronize()
        return s.elapsed_time(e)
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def time_variants(fns: dict, device: torch.device, warmup: int, iters: int) -> dict:
    """:class:`Stats` (ms per call) of every variant over ``iters`` rounds. The variants
    take turns (round robin), so a load change on a shared machine hits them alike."""
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times = {name: [] for name in fns}
        for _ in range(iters):
            for name, fn in fns.items():
                times[name].append(time_once(fn, device))
    return {name: Stats.of(t) for name, t in times.items()}


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.double(), ref.double()
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def variants(block: ResidualBlock, x: torch.Tensor, dtype: torch.dtype, compile_mode: str,
             backends: list[str]) -> dict:
    """name -> zero-argument callable running that variant on ``x``."""
    out = {}
    eager = copy.deepcopy(block).to(dtype).to(memory_format=torch.channels_last)
    out["eager"] = lambda: eager(x)
    if compile_mode != "none":
        compiled = torch.compile(eager, mode=None if compile_mode == "default" else compile_mode)
        out[f"compile-{compile_mode}"] = lambda: compiled(x)
    w1, b1, w2, b2, ws = fold_residual_block(block)
    w1 = w1.to(x.device, dtype).contiguous(memory_format=torch.channels_last)
    w2 = w2.to(x.device, dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        h = torch.nn.functional.conv2d(x, w1, padding=1)
    conv = torch.nn.functional.conv2d
    out["cudnn-floor" if x.is_cuda else "conv-floor"] = \
        lambda: (conv(x, w1, padding=1), conv(h, w2, padding=1))
    if x.is_cuda:
        out["cudnn-fused"] = cudnn_fused_variant(x, w1, b1, w2, b2, ws, dtype)
    if x.is_cuda and narrow_input(x.shape[1]):
        out.update(conv1_variants(x, w1, b1, h, dtype))
    for be in backends:
        out.update(fused_variants(block, x, dtype, be, ws))
    return out


def cudnn_fused_variant(x, w1, b1, w2, b2, ws, dtype):
    """Reference point: cuDNN's own conv + bias (+ add) + ReLU fusion (cuDNN graph API)."""
    conv = torch.nn.functional.conv2d
    cb1, cb2 = b1.to(x.device, dtype), b2.to(x.device, dtype)
    wsc = None if ws is None else \
        ws.to(x.device, dtype).reshape(*ws.shape, 1, 1).contiguous(memory_format=torch.channels_last)
    one = (1, 1)

    def cudnn_fused():
        h1 = torch.cudnn_convolution_relu(x, w1, cb1, one, one, one, 1)
        z = x if wsc is None else conv(x, wsc)
        return torch.cudnn_convolution_add_relu(h1, w2, z, 1.0, cb2, one, one, one, 1)
    return cudnn_fused


def conv1_variants(x, w1, b1, h, dtype) -> dict:
    """The narrow first conv alone (+ bias + ReLU): cuDNN vs the Triton flat-K kernel, the
    choice "auto" times on first use; conv1-floor is the bare cuDNN conv, conv1-write the
    output's memory traffic (a fill of its size)."""
    conv = torch.nn.functional.conv2d
    c1b = b1.to(x.device, dtype)
    one = (1, 1)

    def conv1_pad():   # what "auto"'s "cudnn-pad" candidate runs, the input's copy included
        xp, w1p = pad_channels(x, w1, torch.channels_last)
        return torch.cudnn_convolution_relu(xp, w1p, c1b, one, one, one, 1)
    h_buf = torch.empty_like(h)
    return {"conv1-floor": lambda: conv(x, w1, padding=1),
            "conv1-cudnn": lambda: torch.cudnn_convolution_relu(x, w1, c1b, one, one, one, 1),
            "conv1-triton": lambda: conv3x3_fused(x, w1, c1b, backend="triton"),
            "conv1-cudnn-pad": conv1_pad, "conv1-write": lambda: h_buf.zero_()}


def fused_variants(block, x, dtype, be: str, ws) -> dict:
    """fused-<be> and its relatives (no-tma, auto, epilogue, carry) for one backend."""
    out = {}
    fused = FusedResidualBlock.from_block(block, dtype=dtype, backend=be)
    out[f"fused-{be}"] = lambda: fused(x)
    if be == "triton" and x.is_cuda and torch.cuda.get_device_capability(x.device)[0] == 9:
        # the pointer-based kernel where the TMA kernel would run: what TMA brings
        out["fused-triton-no-tma"] = lambda: _without_tma(fused, x)
    if be == "cuda" and x.is_cuda:
        # "auto": cuDNN's fusion, narrow convs by a one-time timing against Triton
        auto = FusedResidualBlock.from_block(block, dtype=dtype, backend="auto")
        out["fused-auto"] = lambda: auto(x)
    if be == "cuda":
        # cuDNN conv + the csrc epilogue kernel (projection computed in the epilogue from x)
        out["fused-cuda-epilogue"] = lambda: _without_cudnn_fusion(fused, x)
    if ws is not None and be != "triton" and carry_candidate(block.conv1.conv.in_channels,
                                                             block.conv1.conv.out_channels):
        carry = FusedResidualBlock.from_block(block, dtype=dtype, backend=be, carry_input=True)
        out[f"fused-{be}-carry"] = lambda: carry(x)
    return out


def _without_tma(fn, x):
    old = settings.conv_tma
    settings.conv_tma = "off"
    try:
        return fn(x)
    finally:
        settings.conv_tma = old


def _without_cudnn_fusion(fn, x):
    old = settings.conv_cudnn_fusion
    settings.conv_cudnn_fusion = False
    try:
        return fn(x)
    finally:
        settings.conv_cudnn_fusion = old


SUITE = "conv_block"


def run(args) -> list[BenchRow]:
    """Time every variant at every (batch, level) and print the tables; returns the harness
    rows (suite ``conv_block``; extra: level, stat, ms_stat (the ``--stat`` statistic the
    table shows), x_floor)."""
    # every Triton config's time as the autotuner tries it (tuning data for the conv kernels)
    os.environ.setdefault("RAUNET_FAST_AUTOTUNE_VERBOSE", "1")
    device = torch.device(args.device)
    env = environment(device)
    print(f"# {env.describe()}")
    rows = []
    for n in args.batch:
        for level, (cin, cout, hw) in enumerate(encoder_shapes(args.size), start=1):
            if args.levels and level not in args.levels:
                continue
            level_rows = time_level(args, env, device, n, level, (cin, cout, hw))
            print_level(level_rows, n, level, cin, cout, hw)
            rows += level_rows
    return rows


def time_level(args, env, device, n: int, level: int, shape: tuple) -> list[BenchRow]:
    cin, cout, hw = shape
    torch.manual_seed(0)
    dtype = DTYPES[args.dtype]
    block = make_block(cin, cout, device)
    x = torch.randn(n, cin, hw, hw, device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    fns = variants(block, x, dtype, args.compile, args.backends or available_backends(device))
    ok, errs = run_once(fns)
    times = time_variants(ok, device, args.warmup, args.iters)
    rows = [env.row(suite=SUITE, case=f"level{level}", shape=f"{n}x{cin}x{hw}x{hw}",
                    dtype=args.dtype, variant=name, stats=st, flops=block_flops(n, cin, cout, hw),
                    err=errs[name], err_kind="max rel vs eager",
                    extra=dict(level=level, cin=cin, cout=cout, stat=args.stat,
                               ms_stat=st.min_ms if args.stat == "min" else st.median_ms))
            for name, st in times.items()]
    set_ratios(rows, "eager")
    floor = times.get("cudnn-floor", times.get("conv-floor"))
    for r in rows:
        r.extra["x_floor"] = round(r.extra["ms_stat"] / pick(floor, args.stat), 3) if floor else None
    return rows


def pick(stats: Stats, stat: str) -> float:
    return stats.min_ms if stat == "min" else stats.median_ms


def run_once(fns: dict) -> tuple[dict, dict]:
    """The variants that run (a failing one is reported, left out) and their errors."""
    with torch.no_grad():
        ref = fns["eager"]()
    ok, errs = {}, {}
    for name, fn in fns.items():
        try:
            with torch.no_grad():
                y = fn()
        except Exception as e:  # report and go on: one backend failing is a result
            print(f"  {name}: failed: {type(e).__name__}: {str(e)[:300]}", file=sys.stderr)
            continue
        ok[name] = fn
        errs[name] = rel_err(y, ref) if isinstance(y, torch.Tensor) else float("nan")
    return ok, errs


def print_level(rows, n, level, cin, cout, hw):
    """The table conv_targets.py reads: ms and TFLOP/s of the ``--stat`` statistic."""
    print(f"\nbatch {n}  level {level}: {cin}->{cout} @ {hw}x{hw}")
    print(f"  {'variant':24} {'ms':>9} {'TFLOP/s':>8} {'vs eager':>9} {'x floor':>8} {'rel err':>9}")
    for r in rows:
        ms = r.extra["ms_stat"]
        eager = next((e.extra["ms_stat"] for e in rows if e.variant == "eager"), None)
        vs_eager = round(eager / ms, 3) if eager else ""
        x_floor = r.extra["x_floor"] if r.extra["x_floor"] is not None else ""
        print(f"  {r.variant:24} {ms:9.3f} {r.flops / ms / 1e9:8.2f} "
              f"{vs_eager!s:>9} {x_floor!s:>8} {r.err:>9.2e}")


def main(argv=None):
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--dtype", default="bf16" if cuda else "fp32", choices=DTYPES)
    p.add_argument("--size", type=int, default=512 if cuda else 64,
                   help="network input size; level i runs at size / 2**i")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8] if cuda else [1])
    p.add_argument("--levels", type=int, nargs="*", help="subset of levels 1..5")
    p.add_argument("--backends", nargs="*", help="fused backends (default: all available)")
    p.add_argument("--compile", default="default", choices=["none", "default", "max-autotune"],
                   help="torch.compile mode for the eager block (max-autotune: slow to build)")
    p.add_argument("--warmup", type=int, default=10 if cuda else 3)
    p.add_argument("--iters", type=int, default=50 if cuda else 10)
    p.add_argument("--stat", default="median" if cuda else "min", choices=["median", "min"],
                   help="per-variant statistic (min on CPU: shared CPUs are noisy)")
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--out", help="append harness CSV rows here (docs/benchmarks.md)")
    p.add_argument("--no-head-start", action="store_true",
                   help="CUDA: time each call from an idle GPU (launch latency included)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_head_start:
        HEAD_START_CYCLES["cycles"] = 0
    torch.backends.cudnn.benchmark = True
    if args.out:
        check_csv(args.out)  # before minutes of timing, not after
    rows = run(args)
    if args.out and rows:
        append_rows(args.out, rows)
        print(f"\nappended {len(rows)} rows to {args.out}")


# ------------------------------------------------------------------ pytest-benchmark
#: (device, dtype, network input size, batches): CPU-sized and full (GPU) cases
PYTEST_SETS = [("cpu", torch.float32, 64, [1]), ("cuda", torch.bfloat16, 512, [1, 8])]


def _pytest_cases():
    for dev, dtype, size, batches in PYTEST_SETS:
        names = ["eager", "floor"] + available_backends(torch.device(dev))
        for n in batches:
            for level, (cin, cout, hw) in enumerate(encoder_shapes(size), start=1):
                for v in names:
                    yield pytest.param(dev, dtype, n, level, (cin, cout, hw), v,
                                       marks=pytest.mark.bench_device(dev),
                                       id=f"{dev}-{v}-{DTYPE_NAMES[dtype]}-level{level}-"
                                          f"{n}x{cin}x{hw}x{hw}-to{cout}")


try:
    import pytest
except ImportError:  # script mode needs no pytest
    pytest = None

if pytest is not None:
    @pytest.mark.parametrize("dev,dtype,n,level,shape,variant", list(_pytest_cases()))
    def test_bench_conv_block(benchmark, bench_record, dev, dtype, n, level, shape, variant):
        cin, cout, hw = shape
        device = torch.device(dev)
        block = make_block(cin, cout, device)
        x = torch.randn(n, cin, hw, hw, device=device, dtype=dtype).contiguous(
            memory_format=torch.channels_last)
        fns = variants(block, x, dtype, "none", [] if variant in ("eager", "floor") else [variant])
        fn = fns["eager"] if variant == "eager" else \
            fns["cudnn-floor" if device.type == "cuda" else "conv-floor"] if variant == "floor" \
            else fns[f"fused-{variant}"]

        def call():
            with torch.no_grad():
                out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out

        for _ in range(3):
            call()
        out = call()
        with torch.no_grad():
            err = rel_err(out, fns["eager"]()) if isinstance(out, torch.Tensor) else None
        benchmark.pedantic(call, rounds=30 if device.type == "cuda" else 10, iterations=1,
                           warmup_rounds=1)
        bench_record(benchmark, device=device, suite=SUITE, case=f"level{level}",
                     shape=f"{n}x{cin}x{hw}x{hw}", dtype=DTYPE_NAMES[dtype], variant=variant,
                     flops=block_flops(n, cin, cout, hw), err=err, err_kind="max rel vs eager",
                     baseline="eager", extra=dict(level=level, cin=cin, cout=cout))


if __name__ == "__main__":
    main()
