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
  *-ro-<dt>           the two compiled variants with mode="reduce-overhead" (CUDA only)
  compile+freezing-fp32, onnxruntime-fp32, fused-bf16
                      CPU, fp32 runs: what a CPU user would pick instead (ONNX Runtime: the
                      onnx extra), and the fused model in bf16 where the CPU has AMX /
                      AVX512-BF16
  int8-fp32in         CPU, fp32 runs, with the cpu-int8 extra: torchao int8 (PT2E,
                      calibrated on the benchmark's noise input); 2-D models only

3-D models (``spatial_dims=3``, a checkpoint's or ``--spatial-dims 3``) are timed on
``N x C x D x H x W`` volumes (low-precision layouts channels_last_3d) with the same
variants, int8 left out (torchao's X86InductorQuantizer quantizes 2-D convolutions only;
the header says so).

and reports ms per batch (median, end to end: the host's launch time counts), images/s,
speed-up over eager-<dt> and over compile-<dt>, and the relative L2 error of each output
against eager fp32. A checkpoint's own model is timed when given, else a fresh model with
non-trivial BatchNorm statistics. ``bench/realtime_inference.py`` is the script form.

Rows are :class:`raunet_fast.bench_harness.BenchRow` (suite ``network``), appended to
``--out`` in the harness CSV schema (docs/benchmarks.md); :class:`Timer` (the harness's) is
the one timing method of the package's benchmarks.
"""
from __future__ import annotations

import argparse
import json
import copy
import gc
import importlib.util
from pathlib import Path
from typing import Callable

import torch

from .bench_harness import (CSV_FIELDS, DTYPE_NAMES, DTYPES, BenchRow, Env, Stats, Timer,
                            append_rows, check_csv, device_name, environment, rel_l2,
                            set_ratios, shape_str)
from .config import expand_extent

__all__ = ["DTYPES", "FIELDS", "Timer", "rel_l2", "device_name", "demo_model", "variants",
           "run", "copy_to", "network_flops", "BenchRow"]

#: the CSV columns of :func:`run` (the harness schema)
FIELDS = CSV_FIELDS
#: the error column's reference
ERR_KIND = "rel_l2 vs eager fp32 (TF32 off)"


def demo_model(name: str = "raunet", in_channels: int = 3, out_channels: int = 1,
               base_channels: int = 64, spatial_dims: int = 2) -> torch.nn.Module:
    """A fresh eval-mode model whose BatchNorms hold non-trivial running statistics (so the
    fused model's folding is exercised as with trained weights); ``spatial_dims=3``: a
    volume model."""
    import raunet_fast

    model = raunet_fast.build_model(name, in_channels=in_channels, out_channels=out_channels,
                                    base_channels=base_channels, spatial_dims=spatial_dims)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, in_channels, *(64 if spatial_dims == 2 else 16,) * spatial_dims))
    return model.eval()


def memory_format(model) -> torch.memory_format:
    """The channels-last layout of the model's activations (volumes: channels_last_3d)."""
    return torch.channels_last_3d if spatial_dims(model) == 3 else torch.channels_last


def spatial_dims(model) -> int:
    return int(getattr(model, "spatial_dims", 2))


class Variants(dict):
    """name -> callable(x) for every variant of the module docstring; ``graph_runners``:
    the CUDA-graph runners among them (their captured graphs are dropped between shapes)."""

    graph_runners: list


def variants(model: torch.nn.Module, device: torch.device, dtype: torch.dtype,
             backend: str = "auto", compile: bool = True, carry: bool = False,
             shape: tuple[int, ...] | None = None) -> Variants:
    """The variants of the module docstring, built from a copy of ``model`` (the caller's
    module is not moved or changed). ``torch.compile`` variants compile static graphs
    (``dynamic=False``); :func:`run` resets dynamo between shapes so each shape is compiled
    for itself. fp32 runs have no separate channels_last eager variant: ``compile-fp32``
    compiles the fp32 reference model as the user runs it (NCHW). On the CPU in fp32 also
    ``compile+freezing-fp32``, ``onnxruntime-fp32`` (a static export of ``shape``) and, where
    bf16 runs in hardware, ``fused-bf16``."""
    from .inference import build_inference_model

    name, fmt = DTYPE_NAMES[dtype], memory_format(model)
    model = copy.deepcopy(model).eval().to(device)
    out = Variants({"eager-fp32": lambda x: model(x.float())})
    out.graph_runners = []
    low = None
    if dtype != torch.float32:
        low = copy.deepcopy(model).eval().to(device, dtype).to(memory_format=fmt)
        out[f"eager-{name}"] = lambda x: low(x.to(dtype).contiguous(memory_format=fmt))
    if compile:
        _add_compiled(out, "compile", low if low is not None else model, name, device,
                      cast=dtype if low is not None else None, fmt=fmt)
    fused = build_inference_model(model, dtype=dtype, backend=backend)
    out[f"fused-{name}"] = lambda x: fused(x)
    if device.type == "cuda":
        _add_graphed(out, fused, model, name, dtype, backend, carry)
    if compile:
        _add_compiled(out, "fused+compile", fused, name, device)
    if device.type == "cpu" and dtype == torch.float32:
        _add_cpu(out, model, backend, compile, shape)
    return out


def _add_cpu(out: Variants, model, backend: str, compile: bool, shape) -> None:
    """The CPU user's other choices: ``torch.compile`` with freezing (weights folded into
    the graph as constants), ONNX Runtime on a static-shape export of ``shape`` (when the
    onnx extra is installed), on a CPU with bf16 matrix units the fused model in bf16 and,
    for 2-D models with the cpu-int8 extra, the int8 model."""
    from .inference import build_inference_model
    from .runtime import compile_frozen, cpu_has_fast_bf16

    if compile:
        frozen = compile_frozen(model, dynamic=False)
        out["compile+freezing-fp32"] = lambda x: frozen(x)
    if shape is not None:
        runner = _onnx_runner(model, shape)
        if runner is not None:
            out["onnxruntime-fp32"] = lambda x: runner(x)
    if cpu_has_fast_bf16():
        fused16 = build_inference_model(model, dtype=torch.bfloat16, backend=backend)
        out["fused-bf16"] = lambda x: fused16(x)
    if compile and shape is not None and int8_available(model):
        int8 = _int8_runner(model, shape)
        out["int8-fp32in"] = lambda x: int8(x)


def int8_available(model) -> bool:
    """Whether the int8 variant exists for ``model``: torchao installed and a 2-D model
    (X86InductorQuantizer annotates 2-D convolutions only)."""
    return spatial_dims(model) == 2 and importlib.util.find_spec("torchao") is not None


def _int8_runner(model, shape):
    """The int8 model (torchao PT2E, lowered by torch.compile with freezing), calibrated on
    4 batches of the benchmark's own input distribution (Gaussian noise): a speed
    measurement; ``raunet-fast quantize`` calibrates on real images and reports the Dice
    change."""
    from .quantize import pad_to_multiple, quantize_model
    from .runtime import compile_frozen

    gen = torch.Generator().manual_seed(0)
    calib = [torch.randn(*shape, generator=gen) for _ in range(4)]
    example = pad_to_multiple(calib[0], int(model.size_multiple))
    q = quantize_model(copy.deepcopy(model), calib, example.repeat(2, 1, 1, 1)[:2])
    return compile_frozen(q)


def _onnx_runner(model, shape):
    """ONNX Runtime on a static export of ``model`` for ``shape`` (N, C, H, W or N, C, D,
    H, W); None when the onnx extra is missing (the row is then left out, and the header
    says so)."""
    import tempfile

    from .errors import MissingExtra

    try:
        from .onnx_export import OnnxModel, export_onnx

        folder = tempfile.mkdtemp(prefix="raunet-bench-onnx-")
        path = export_onnx(model, Path(folder) / "model.onnx", size=tuple(shape[2:]),
                           batch=shape[0], dynamic=False)
        return OnnxModel(path)
    except MissingExtra as e:
        print(f"# onnxruntime-fp32 left out: {e}")
        return None


def _add_compiled(out: Variants, prefix: str, module, name: str, device: torch.device,
                  cast=None, fmt: torch.memory_format = torch.channels_last) -> None:
    """``<prefix>-<dt>``: ``torch.compile(module)``; on CUDA also ``<prefix>-ro-<dt>`` with
    ``mode="reduce-overhead"`` (inductor's CUDA graphs). ``cast``: the input's dtype, in
    layout ``fmt`` (channels_last, volumes channels_last_3d), when the module runs in a low
    precision."""
    def prep(x):
        return x if cast is None else x.to(cast).contiguous(memory_format=fmt)

    modes = {prefix: "default"}
    if device.type == "cuda":
        modes[f"{prefix}-ro"] = "reduce-overhead"
    for label, mode in modes.items():
        compiled = torch.compile(module, dynamic=False, mode=mode)
        out[f"{label}-{name}"] = lambda x, c=compiled: c(prep(x))


def _add_graphed(out: Variants, fused, model, name, dtype, backend, carry) -> None:
    """The fused model captured as CUDA graphs (and, with ``carry``, with the carried input)."""
    from .inference import CUDAGraphRunner, build_inference_model

    graphed = CUDAGraphRunner(fused).eval()
    out[f"fused+graphs-{name}"] = lambda x: graphed(x)
    out.graph_runners.append(graphed)
    if carry:
        carried = build_inference_model(model, dtype=dtype, backend=backend,
                                        cuda_graphs=True, carry_input=True)
        out[f"fused+graphs+carry-{name}"] = lambda x: carried(x)
        out.graph_runners.append(carried)


def run(model: torch.nn.Module, sizes, batches, dtype: torch.dtype, device: torch.device,
        backend: str = "auto", compile: bool = True, carry: bool = False, warmup: int = 5,
        iters: int = 20, out_csv: str | Path | None = None, label: str = "",
        print_fn: Callable[[str], None] = print, extra: dict | None = None) -> list[BenchRow]:
    """Time every variant at every (size, batch); print the table; append harness CSV rows
    to ``out_csv``. ``sizes``: ints (every axis) or one size per spatial axis of the model
    ((H, W); 3-D models (D, H, W)); ``extra``: more name -> callable variants (an int8
    checkpoint). Returns the rows.

    Each variant is called 3 times before its timing (a CUDA-graph runner's eager warm-up
    calls and its capture stay out of it) and its error is taken after it (a graph replay
    for the graph variants). The error reference is the fp32 model with TF32 off; the timed
    fp32 variants run with the process's TF32 setting (PyTorch's default: TF32 convolutions
    on CUDA), which the header states. The variants are rebuilt and dynamo is reset for
    every shape (one static graph and one shape's captured graphs at a time)."""
    device = torch.device(device)
    if out_csv:  # before minutes of timing, not after
        check_csv(out_csv)
    old_bench = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda" or old_bench
    try:
        env = environment(device)
        dims = spatial_dims(model)
        notes = (["# int8-fp32in left out: int8 (torchao X86InductorQuantizer) is for 2-D "
                  "models"] if dims == 3 and device.type == "cpu" and dtype == torch.float32
                 else [])
        print_header(env, label, DTYPE_NAMES[dtype], print_fn, dims, notes)
        timer = Timer(device, warmup, iters, head_start=False)  # end-to-end latency
        rows: list[BenchRow] = []
        for size in sizes:
            size = expand_extent("size", (size,) if isinstance(size, int) else size, dims)
            for batch in batches:
                x = torch.randn(batch, getattr(model, "in_channels", 3), *size, device=device)
                fns = variants(model, device, dtype, backend, compile, carry, tuple(x.shape))
                fns.update(extra or {})
                rows += time_shape(model, fns, x, timer, env, label, print_fn)
                del fns
                gc.collect()
        print_picks(device, print_fn)
    finally:
        torch.backends.cudnn.benchmark = old_bench
    if out_csv and rows:
        append_rows(out_csv, rows)
    return rows


def size_width(dims: int) -> int:
    """The table's size column: 512x512, 128x128x128."""
    return 9 if dims == 2 else 11


def print_header(env: Env, label: str, dtype_name: str, print_fn, dims: int = 2,
                 notes: list[str] = ()) -> None:
    tf32 = ""
    if env.device_type == "cuda":
        tf32 = "  fp32 convs: TF32" if torch.backends.cudnn.allow_tf32 else "  fp32 convs: exact"
    else:
        from .runtime import cpu_features, cpu_isa

        tf32 = f"  ISA: {cpu_isa()} ({' '.join(sorted(cpu_features())) or 'flags unknown'})"
    print_fn(f"# {env.describe()}  {label}  {dtype_name}{tf32}")
    for note in notes:
        print_fn(note)
    unit = "img/s" if dims == 2 else "vol/s"
    print_fn(f"{'size':>{size_width(dims)}} {'batch':>5} {'variant':<26} {'ms':>9} {unit:>8} "
             f"{'vs eager':>9} {'vs compile':>10} {'rel L2 err':>11}")


def time_shape(model, fns: dict, x: torch.Tensor, timer: Timer, env: Env, label: str,
               print_fn) -> list[BenchRow]:
    """The rows of every variant of ``fns`` on input ``x`` (a failing variant is reported
    and left out), printed as the table's lines for this shape."""
    if any(k.startswith("compile") or "+compile" in k for k in fns):
        torch._dynamo.reset()  # a static graph per shape, no cache limit
    with torch.no_grad(), exact_fp32():
        ref = copy_to(model, x.device)(x).float()
    flops = network_flops(model, x)
    dtype_name = next(k for k in fns if k.startswith("fused-")).split("-", 1)[1]
    where = f"{'x'.join(str(s) for s in x.shape[2:]):>{size_width(x.dim() - 2)}}"
    rows = []
    for vname, fn in fns.items():
        try:
            stats, err = time_variant(fn, x, ref, timer)
        except Exception as e:  # noqa: BLE001 - report, keep going with the others
            print_fn(f"{where} {x.shape[0]:>5} {vname:<26} FAILED: "
                     f"{type(e).__name__}: {str(e)[:200]}")
            continue
        rows.append(env.row(suite="network", case=label, shape=shape_str(x.shape),
                            dtype=dtype_name, variant=vname, stats=stats, flops=flops,
                            err=err, err_kind=ERR_KIND))
    add_ratios(rows, dtype_name)
    for r in rows:
        print_fn(table_line(r, where, x.shape[0]))
    if rows:
        best = min(rows, key=lambda r: r.median_ms)
        print_fn(f"{'':>{len(where)}} {'':>5} fastest: {best.variant} ({best.median_ms:.3f} ms)")
    return rows


def time_variant(fn, x: torch.Tensor, ref: torch.Tensor, timer: Timer) -> tuple[Stats, float]:
    with torch.no_grad():
        for _ in range(3):
            fn(x)
    timer(lambda: fn(x))
    with torch.no_grad():
        err = rel_l2(fn(x).float(), ref)
    return timer.last, err


def add_ratios(rows: list[BenchRow], dtype_name: str) -> None:
    """ratio_vs_baseline: speed-up over eager-<dt>; extra: images/s and speed-up over
    compile-<dt> (nan where that variant did not run)."""
    set_ratios(rows, f"eager-{dtype_name}")
    comp = next((r.median_ms for r in rows if r.variant == f"compile-{dtype_name}"), float("nan"))
    for r in rows:
        batch = int(r.shape.split("x")[0])
        r.extra = dict(r.extra, images_per_s=round(batch * 1e3 / r.median_ms, 2),
                       speedup_vs_compile=round(comp / r.median_ms, 3))


def table_line(r: BenchRow, where: str, batch: int) -> str:
    vs_eager = r.ratio_vs_baseline if r.ratio_vs_baseline is not None else float("nan")
    return (f"{where:>9} {batch:>5} {r.variant:<26} {r.median_ms:>9.3f} "
            f"{r.extra['images_per_s']:>8.1f} {vs_eager:>9.2f} "
            f"{r.extra['speedup_vs_compile']:>10.2f} {r.err:>11.2e}")


def print_picks(device: torch.device, print_fn) -> None:
    """Which layers "auto" gave to Triton, and the timings that decided (CUDA)."""
    if device.type != "cuda":
        return
    from .ops import conv3x3 as conv_op

    picks = conv_op.describe_picks()
    if picks:
        print_fn("# auto's conv backend per layer shape (device ms per call, timed once on "
                 "first use):")
        for line in picks:
            print_fn("#   " + line)


def network_flops(model: torch.nn.Module, x: torch.Tensor) -> float | None:
    """Floating-point operations of one forward of ``model`` on ``x`` (convolutions and
    matmuls, as torch.utils.flop_counter counts them; None where it cannot)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            copy_to(model, "meta")(x.to("meta"))
        return float(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - a model the meta device cannot run: no FLOP column
        return None


def copy_to(model: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:

    return copy.deepcopy(model).eval().to(device)


class exact_fp32:
    """TF32 off for cuDNN and matmuls inside the block (the error reference)."""

    def __enter__(self):
        self.old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.old


def check_args(args: argparse.Namespace, device: torch.device) -> str:
    """The dtype name to time; ValueError (a one-line CLI error) for a bad option."""
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    if dtype_name == "fp16" and device.type != "cuda":
        raise ValueError("--dtype fp16 needs a CUDA device; on CPU use fp32 or bf16")
    for v, what in ((args.batch, "--batch"), (args.iters, "--iters")):
        if min(v if isinstance(v, list) else [v]) < 1:
            raise ValueError(f"{what} must be >= 1")
    if args.warmup < 0:
        raise ValueError("--warmup must be >= 0")
    if args.checkpoint is None and args.base_channels < 1:
        raise ValueError("--base-channels must be >= 1")
    if args.checkpoint is not None and args.spatial_dims is not None:
        raise ValueError("--spatial-dims builds a fresh model; a --checkpoint's model has its "
                         "own (drop --spatial-dims)")
    return dtype_name


def bench_sizes(args: argparse.Namespace, model) -> list[tuple[int, ...]]:
    """``--size`` (each one size for every axis, or one per axis of the model), else 512 x
    512 for 2-D models and for 3-D models the checkpoint's training patch, else 128^3."""
    dims = spatial_dims(model)
    if args.size is not None:
        return [expand_extent("--size", s, dims) for s in args.size]
    if dims == 2:
        return [(512, 512)]
    patch = None
    if args.checkpoint is not None:
        from .io.checkpoints import read_preprocessing

        patch = read_preprocessing(args.checkpoint).get("patch")
    return [tuple(int(v) for v in patch) if patch and len(patch) == 3 else (128,) * 3]


def load_model(args: argparse.Namespace):
    """The model to time, its label and extra variants: a checkpoint's model, or a fresh
    one; an int8 folder (``raunet-fast quantize``) is timed next to the fp32 checkpoint it
    was made from."""
    if args.checkpoint is None:
        dims = args.spatial_dims or 2
        model = demo_model(args.model, args.in_channels, args.out_channels, args.base_channels,
                           dims)
        return model, f"{args.model}{' 3-D' * (dims == 3)} base {args.base_channels}", {}
    from .hub import from_pretrained
    from .io.checkpoints import check_checkpoint_folder
    from .quantize import REPORT_NAME, Int8Model, is_quantized

    source, extra = Path(args.checkpoint), {}
    if is_quantized(source):
        extra = {"int8-checkpoint": Int8Model(source)}
        report = source / REPORT_NAME
        source = Path(json.loads(report.read_text()).get("source", "")) if report.is_file() else None
        if source is None or not source.is_dir():
            raise ValueError(f"{args.checkpoint} is an int8 model; its fp32 checkpoint (the "
                             f"'source' in {REPORT_NAME}) is needed for the reference rows")
    check_checkpoint_folder(source)
    return from_pretrained(source, map_location="cpu").eval(), f"{args.checkpoint}", extra


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from .engine.device import resolve_device

    device = resolve_device(args.device)
    dtype_name = check_args(args, device)
    model, label, extra = load_model(args)
    if extra and device.type != "cpu":
        raise ValueError("an int8 checkpoint runs on the CPU; pass --device cpu")
    run(model, bench_sizes(args, model), args.batch, DTYPES[dtype_name], device,
        backend=args.backend, compile=not args.no_compile, carry=args.carry,
        warmup=args.warmup, iters=args.iters, out_csv=args.out, label=label, extra=extra)
    return 0


def add_cli(sub) -> None:
    from .config import parse_extent

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
    p.add_argument("--spatial-dims", type=int, choices=[2, 3], default=None,
                   help="the fresh model's: 2 (images, default) or 3 (volumes)")
    p.add_argument("--size", type=parse_extent, nargs="+", default=None, metavar="S|HxW|DxHxW",
                   help="input sizes, each one size for every axis or one per axis of the "
                        "model (default: 512x512; 3-D models: the checkpoint's patch, else "
                        "128x128x128)")
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
    p.add_argument("--out", type=Path, default=None, help="CSV file to append rows to (the harness schema, docs/benchmarks.md)")
    p.set_defaults(func=_cmd_benchmark)
