"""``raunet-fast benchmark``: whole-network inference speed on this machine, in one run.

Times, on one device and in one process, the variants a user can choose between:

  eager-fp32          the reference model, fp32, NCHW (what a user gets by default)
  eager-<dt>          the reference model cast to <dt>, channels_last (16-bit dtypes only)
  compile-<dt>        ``torch.compile`` of that (the baseline to beat; for fp32 of eager-fp32)
  fused-<dt>          :func:`raunet_fast.inference.build_inference_model` (folded BN, fused
                      gate + conv kernels)
  fused+graphs-<dt>   the same, one CUDA graph per input shape (CUDA only)
  fused+graphs+carry  with ``carry_input=True`` (CUDA only, ``carry=True``)
  fused+compile-<dt>  ``torch.compile`` around the fused model

and reports ms per batch (median, end to end: the host's launch time counts), images/s,
speed-up over eager-<dt> and over compile-<dt>, and the relative L2 error of each output
against eager fp32. A checkpoint's own model is timed when given, else a fresh model with
non-trivial BatchNorm statistics. ``bench/realtime_inference.py`` is the script form.

:class:`Timer` is the one timing method of the package's benchmarks (the ``bench/``
scripts import it).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: the CSV columns of :func:`run`
FIELDS = ["timestamp", "device", "torch", "triton", "model", "height", "width", "batch", "dtype",
          "variant", "ms", "images_per_s", "speedup_vs_eager", "speedup_vs_compile",
          "rel_l2_err_vs_fp32"]


class Timer:
    """Median milliseconds of ``fn()`` on ``device`` (CUDA: events, L2 flushed before each
    call; CPU: perf_counter). ``last_min``: the fastest call of the last measurement.

    ``head_start`` (CUDA): after the flush the GPU also spins ~0.5 ms
    (``torch.cuda._sleep``) before the start event, so the host has enqueued the call's
    kernels before the GPU reaches them and the time is the device's, not the Python
    launch latency of the first kernel (tens of microseconds through an op's dispatch and
    Triton's launcher, the same order as one kernel call at 512 x 512). Host time *between*
    a variant's kernels still counts wherever the GPU catches up with the host. Kernel
    benchmarks use it; end-to-end latency (this module's table) does not: without it the
    GPU is idle when the start event is recorded (synchronised after the flush)."""

    SPIN_CYCLES = 1_000_000

    def __init__(self, device: torch.device, warmup: int = 5, iters: int = 20,
                 head_start: bool = True):
        self.device, self.warmup, self.iters = torch.device(device), warmup, iters
        self.head_start = head_start
        self.last_min = float("nan")
        self._flush = (torch.empty(256 * 2 ** 20, dtype=torch.uint8, device=self.device)
                       if self.device.type == "cuda" else None)

    def __call__(self, fn: Callable[[], Any]) -> float:
        with torch.no_grad():
            for _ in range(self.warmup):
                fn()
            times = []
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                for _ in range(self.iters):
                    s = torch.cuda.Event(enable_timing=True)
                    e = torch.cuda.Event(enable_timing=True)
                    self._flush.zero_()
                    if self.head_start:
                        torch.cuda._sleep(self.SPIN_CYCLES)
                    else:  # from an idle GPU: the host's launch time counts in full
                        torch.cuda.synchronize(self.device)
                    s.record()
                    fn()
                    e.record()
                    e.synchronize()
                    times.append(s.elapsed_time(e))
            else:
                for _ in range(self.iters):
                    t = time.perf_counter()
                    fn()
                    times.append((time.perf_counter() - t) * 1e3)
        self.last_min = min(times)
        return statistics.median(times)


def rel_l2(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.double(), ref.double()
    return ((a - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def device_name(device: torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def demo_model(name: str = "raunet", in_channels: int = 3, out_channels: int = 1,
               base_channels: int = 64) -> torch.nn.Module:
    """A fresh eval-mode model whose BatchNorms hold non-trivial running statistics (so the
    fused model's folding is exercised as with trained weights)."""
    import raunet_fast

    model = raunet_fast.build_model(name, in_channels=in_channels, out_channels=out_channels,
                                    base_channels=base_channels)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, in_channels, 64, 64))
    return model.eval()


class Variants(dict):
    """name -> callable(x) for every variant of the module docstring; ``graph_runners``:
    the CUDA-graph runners among them (their captured graphs are dropped between shapes)."""

    graph_runners: list


def variants(model: torch.nn.Module, device: torch.device, dtype: torch.dtype,
             backend: str = "auto", compile: bool = True, carry: bool = False) -> Variants:
    """The variants of the module docstring, built from a copy of ``model`` (the caller's
    module is not moved or changed). ``torch.compile`` variants compile static graphs
    (``dynamic=False``); :func:`run` resets dynamo between shapes so each shape is compiled
    for itself. fp32 runs have no separate channels_last eager variant: ``compile-fp32``
    compiles the fp32 reference model as the user runs it (NCHW)."""
    import copy

    from .inference import CUDAGraphRunner, build_inference_model

    name = {v: k for k, v in DTYPES.items()}[dtype]
    model = copy.deepcopy(model).eval().to(device)
    out = Variants({"eager-fp32": lambda x: model(x.float())})
    out.graph_runners = []
    low = None
    if dtype != torch.float32:
        low = copy.deepcopy(model).eval().to(device, dtype).to(memory_format=torch.channels_last)
        out[f"eager-{name}"] = lambda x: low(x.to(dtype).contiguous(memory_format=torch.channels_last))
    if compile:
        base = low if low is not None else model
        cbase = torch.compile(base, dynamic=False)
        cl = low is not None
        out[f"compile-{name}"] = (lambda x: cbase(x.to(dtype).contiguous(
            memory_format=torch.channels_last))) if cl else (lambda x: cbase(x))
    fused = build_inference_model(model, dtype=dtype, backend=backend)
    out[f"fused-{name}"] = lambda x: fused(x)
    if device.type == "cuda":
        graphed = CUDAGraphRunner(fused).eval()
        out[f"fused+graphs-{name}"] = lambda x: graphed(x)
        out.graph_runners.append(graphed)
        if carry:
            carried = build_inference_model(model, dtype=dtype, backend=backend,
                                            cuda_graphs=True, carry_input=True)
            out[f"fused+graphs+carry-{name}"] = lambda x: carried(x)
            out.graph_runners.append(carried)
    if compile:
        cfused = torch.compile(fused, dynamic=False)
        out[f"fused+compile-{name}"] = lambda x: cfused(x)
    return out


def _check_csv_header(path: Path, fields: list[str]) -> None:
    with open(path, newline="") as f:
        header = next(csv.reader(f), None)
    if header is not None and header != fields:
        raise ValueError(f"{path} holds rows with other columns ({', '.join(header[:6])}, ...); "
                         f"write to a new file")


def run(model: torch.nn.Module, sizes, batches, dtype: torch.dtype, device: torch.device,
        backend: str = "auto", compile: bool = True, carry: bool = False, warmup: int = 5,
        iters: int = 20, out_csv: str | Path | None = None, label: str = "",
        print_fn: Callable[[str], None] = print) -> list[dict]:
    """Time every variant at every (size, batch); print the table; append CSV rows to
    ``out_csv``. ``sizes``: ints or (H, W) pairs. Returns the rows.

    Each variant is called 3 times before its timing (a CUDA-graph runner's eager warm-up
    calls and its capture stay out of it) and its error is taken after it (a graph replay
    for the graph variants). The error reference is the fp32 model with TF32 off; the timed
    fp32 variants run with the process's TF32 setting (PyTorch's default: TF32 convolutions
    on CUDA), which the header states. Captured graphs are dropped and dynamo is reset
    between shapes."""
    device = torch.device(device)
    name = {v: k for k, v in DTYPES.items()}[dtype]
    if out_csv and Path(out_csv).exists():  # before minutes of timing, not after
        _check_csv_header(Path(out_csv), FIELDS)
    old_bench = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        fns = variants(model, device, dtype, backend, compile, carry)
        ref_model = copy_to(model, device)
        in_ch = getattr(model, "in_channels", 3)
        try:
            import triton

            triton_v = triton.__version__
        except ImportError:
            triton_v = "none"
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        timer = Timer(device, warmup, iters, head_start=False)  # end-to-end latency
        tf32 = ""
        if device.type == "cuda":
            tf32 = ("  fp32 convs: TF32" if torch.backends.cudnn.allow_tf32 else
                    "  fp32 convs: exact")
        print_fn(f"# {device_name(device)}  torch {torch.__version__}  triton {triton_v}  "
                 f"{label}  {name}  {stamp}{tf32}")
        print_fn(f"{'size':>9} {'batch':>5} {'variant':<26} {'ms':>9} {'img/s':>8} "
                 f"{'vs eager':>9} {'vs compile':>10} {'rel L2 err':>11}")
        rows: list[dict] = []
        for size in sizes:
            h, w = (size, size) if isinstance(size, int) else size
            for batch in batches:
                if compile:
                    torch._dynamo.reset()  # a static graph per shape, no cache limit
                for runner in fns.graph_runners:
                    runner._graphs.clear()  # one shape's graph memory at a time
                x = torch.randn(batch, in_ch, h, w, device=device)
                with torch.no_grad(), _exact_fp32():
                    ref = ref_model(x).float()
                results = {}
                for vname, fn in fns.items():
                    try:
                        with torch.no_grad():
                            for _ in range(3):
                                fn(x)
                        ms = timer(lambda fn=fn: fn(x))
                        with torch.no_grad():
                            err = rel_l2(fn(x).float(), ref)
                    except Exception as e:  # noqa: BLE001 - report, keep going with the others
                        print_fn(f"{f'{h}x{w}':>9} {batch:>5} {vname:<26} FAILED: "
                                 f"{type(e).__name__}: {str(e)[:200]}")
                        continue
                    results[vname] = (ms, err)
                base = results.get(f"eager-{name}", (float("nan"),))[0]
                comp = results.get(f"compile-{name}", (float("nan"),))[0]
                for vname, (ms, err) in results.items():
                    rows.append(dict(timestamp=stamp, device=device_name(device),
                                     torch=torch.__version__, triton=triton_v, model=label,
                                     height=h, width=w, batch=batch, dtype=name, variant=vname,
                                     ms=round(ms, 4), images_per_s=round(batch * 1e3 / ms, 2),
                                     speedup_vs_eager=round(base / ms, 3),
                                     speedup_vs_compile=round(comp / ms, 3),
                                     rel_l2_err_vs_fp32=f"{err:.3e}"))
                    print_fn(f"{f'{h}x{w}':>9} {batch:>5} {vname:<26} {ms:>9.3f} "
                             f"{batch * 1e3 / ms:>8.1f} {base / ms:>9.2f} {comp / ms:>10.2f} "
                             f"{err:>11.2e}")
                if results:
                    best = min(results, key=lambda k: results[k][0])
                    print_fn(f"{'':>9} {'':>5} fastest: {best} ({results[best][0]:.3f} ms)")
        for runner in fns.graph_runners:
            runner._graphs.clear()
        if device.type == "cuda":
            from .ops import conv3x3 as conv_op

            picks = conv_op.describe_picks()
            if picks:   # which layers "auto" gave to Triton, and the timings that decided
                print_fn("# auto's conv backend per layer shape (device ms per call, timed "
                         "once on first use):")
                for line in picks:
                    print_fn("#   " + line)
    finally:
        torch.backends.cudnn.benchmark = old_bench
    if out_csv and rows:
        out_csv = Path(out_csv)
        assert list(rows[0]) == FIELDS
        new = not out_csv.exists()
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        with open(out_csv, "a", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                wr.writeheader()
            wr.writerows(rows)
    return rows


def copy_to(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).eval().to(device)


class _exact_fp32:
    """TF32 off for cuDNN and matmuls inside the block (the error reference)."""

    def __enter__(self):
        self.old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.old


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from .train import resolve_device

    device = resolve_device(args.device)
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    if dtype_name == "fp16" and device.type != "cuda":
        raise ValueError("--dtype fp16 needs a CUDA device; on CPU use fp32 or bf16")
    for v, what in ((args.batch, "--batch"), (args.iters, "--iters")):
        if min(v if isinstance(v, list) else [v]) < 1:
            raise ValueError(f"{what} must be >= 1")
    if args.warmup < 0:
        raise ValueError("--warmup must be >= 0")
    if args.checkpoint is not None:
        from .evaluate import check_checkpoint_folder
        from .hub import from_pretrained

        check_checkpoint_folder(args.checkpoint)
        model = from_pretrained(args.checkpoint, map_location="cpu").eval()
        label = f"{args.checkpoint}"
    else:
        if args.base_channels < 1:
            raise ValueError("--base-channels must be >= 1")
        model = demo_model(args.model, args.in_channels, args.out_channels, args.base_channels)
        label = f"{args.model} base {args.base_channels}"
    run(model, args.size, args.batch, DTYPES[dtype_name], device, backend=args.backend,
        compile=not args.no_compile, carry=args.carry, warmup=args.warmup, iters=args.iters,
        out_csv=args.out, label=label)
    return 0


def add_cli(sub) -> None:
    from .cli import parse_size

    p = sub.add_parser("benchmark", help="time reference, torch.compile and fused inference "
                                         "of a model on this machine",
                       description="Whole-network inference speed on this machine: the reference "
                                   "model (eager), torch.compile of it, the fused model, with CUDA "
                                   "graphs on a GPU, and torch.compile around the fused model; ms "
                                   "per batch, images/s, speed-ups and output error. Times a "
                                   "checkpoint's model, or a fresh one of the given architecture.")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="a trained model folder (e.g. RUN_DIR/best); default: a fresh model")
    p.add_argument("--model", default="raunet", choices=["raunet", "attention-unet", "unet",
                                                         "resunet"])
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--out-channels", type=int, default=1)
    p.add_argument("--base-channels", type=int, default=64)
    p.add_argument("--size", type=parse_size, nargs="+", default=[(512, 512)], metavar="S|HxW")
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--dtype", default=None, choices=list(DTYPES),
                   help="fused / low-precision dtype (default bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--backend", default="auto",
                   help="fused backend: auto, triton, cuda, cpp, torch")
    p.add_argument("--no-compile", action="store_true",
                   help="skip the torch.compile variants (they compile for minutes on a CPU)")
    p.add_argument("--carry", action="store_true",
                   help="CUDA: also time fused+graphs with carry_input=True")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", type=Path, default=None, help="CSV file to append rows to")
    p.set_defaults(func=_cmd_benchmark)
