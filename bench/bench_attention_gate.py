"""Benchmark of the fused attention gate against the eager module and torch.compile.

Shapes: the gate of each decoder level of a 512 x 512 RAUNet (C = 64 @ 512, 128 @ 256,
256 @ 128, 512 @ 64; F = C/2; batch 1 and 8) on CUDA; smaller on CPU (the CPU target
shape 1 x 64 x 256 x 256 included). Variants: ``eager`` (the reference
:class:`~raunet_fast.blocks.AttentionGate` module, eval, channels_last), ``compile``
(``torch.compile`` of it), and each fused backend of :func:`raunet_fast.ops.attention_gate`
(``triton``, ``cuda`` (tensor cores for half / bf16), ``cuda-fma`` (CUDA cores) on a
GPU; ``cpp`` on the CPU). GB/s counts the minimum traffic:
x and g read once, out written once. On CUDA the card's device-to-device copy bandwidth
is measured once (``dst.copy_(src)``, read + write), and every GB/s is also given as a
percentage of it. CUDA timings flush L2 before each call and use CUDA events, with the
host given a head start (see :class:`Timer`).

Two ways to run:

    python bench/bench_attention_gate.py --out bench/results/attention_gate.csv
        prints a table and appends harness CSV rows (docs/benchmarks.md)
    pytest bench/bench_attention_gate.py --benchmark-only [--bench-csv FILE]
        the same cases under pytest-benchmark (GB/s and speed-ups in extra_info and the
        harness rows; torch.compile cases on the CPU only with --bench-compile)
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

import torch

from raunet_fast.blocks import AttentionGate
from raunet_fast.ops import attention_gate, attention_gate_concat
from raunet_fast.ops.attention_gate import cast_gate_params, fold_attention_gate, gate_bytes

# the module itself: ``import raunet_fast.ops.attention_gate as m`` would give the op
# function bound under the same name on raunet_fast.ops
gate_mod = importlib.import_module("raunet_fast.ops.attention_gate")

from raunet_fast.bench_harness import DTYPE_NAMES, DTYPES  # noqa: E402
#: (C, spatial size): decoder levels of a 512 x 512 RAUNet with base 64
GPU_LEVELS = [(64, 512), (128, 256), (256, 128), (512, 64)]
GPU_BATCHES = [1, 8]
#: CPU: the issue's target shape (64 x 256 x 256) and the deeper levels at that scale
CPU_LEVELS = [(64, 256), (128, 128), (256, 64), (512, 32)]
CPU_BATCHES = [1]


# -------------------------------------------------------------------------------- timing
# the package's timing method (CUDA: events, L2 flush, host head start; see its docstring)
from raunet_fast.bench_harness import (Timer, append_rows, cpu_arch, environment, max_abs, set_ratios, thread_warning,
                                       triton_version)


def copy_bandwidth_gbs(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written per second)."""
    if device.type != "cuda":
        return float("nan")
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = Timer(device, warmup=3, iters=10)(lambda: dst.copy_(src))
    return 2 * nbytes / ms / 1e6


def versions() -> tuple[str, str]:
    """(torch, triton) versions ("none" without triton)."""
    return torch.__version__, triton_version() or "none"


# ------------------------------------------------------------------------------- cases
def make_case(c: int, size: int, batch: int, dtype: torch.dtype, device: torch.device):
    """An eval-mode gate with non-trivial BN statistics, its folded parameters, inputs."""
    gate = AttentionGate(c, c, c // 2)
    gate.train()
    with torch.no_grad():  # a few batches give the BNs running statistics to fold
        for _ in range(2):
            gate(torch.randn(2, c, 8, 8), torch.randn(2, c, 8, 8))
    gate = gate.eval().to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
    params = cast_gate_params(fold_attention_gate(gate), dtype, device)
    x = torch.randn(batch, c, size, size, device=device, dtype=dtype)
    g = torch.randn(batch, c, size, size, device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    g = g.contiguous(memory_format=torch.channels_last)
    return gate, params, x, g


def fused_backends(device: torch.device) -> list[str]:
    """Fused variants: ``cuda`` uses tensor cores (WMMA) for half / bf16, ``cuda-fma`` the
    CUDA-core kernel."""
    return ["triton", "cuda", "cuda-fma"] if device.type == "cuda" else ["cpp"]


def _fused(params, backend):
    if backend != "cuda-fma":
        return lambda x, g: attention_gate(x, g, **params, backend=backend)

    def run(x, g):
        old = gate_mod.CUDA_TENSOR_CORES
        gate_mod.CUDA_TENSOR_CORES = False
        try:
            return attention_gate(x, g, **params, backend="cuda")
        finally:
            gate_mod.CUDA_TENSOR_CORES = old
    return run


def variants(gate, params, device, with_compile=True):
    """name -> callable(x, g) returning the gated x."""
    out = {"eager": lambda x, g: gate(x, g)[0]}
    if with_compile:
        compiled = torch.compile(gate)
        out["compile"] = lambda x, g: compiled(x, g)[0]
    for b in fused_backends(device):
        out[b] = _fused(params, b)
    # the decoder's gate + cat: separately, and in one pass (attention_gate_concat); both
    # return the gated channels (a view) for the error column; GB/s counts the gate's bytes
    # only, so compare these two rows with each other
    b = fused_backends(device)[0]
    out[f"{b}+cat"] = lambda x, g: torch.cat(
        [attention_gate(x, g, **params, backend=b), g], 1)[:, :x.shape[1]]
    out[f"{b}-concat"] = lambda x, g: attention_gate_concat(
        x, g, **params, backend=b)[:, :x.shape[1]]
    return out


SUITE = "attention_gate"
ERR_KIND = "max_abs vs eager"


def run_table(device: torch.device, dtypes: list[torch.dtype], levels, batches, warmup, iters,
              with_compile=True, out_csv: str | None = None) -> list:
    """Time every variant of every (dtype, level, batch); print the table; append harness
    rows (suite ``attention_gate``) to ``out_csv``. Returns the rows."""
    timer = Timer(device, warmup, iters)
    copy_bw = copy_bandwidth_gbs(device)
    env = environment(device)
    print_header(env, device, copy_bw)
    rows = []
    for dtype in dtypes:
        for c, size in levels:
            for batch in batches:
                torch._dynamo.reset()
                case = make_case(c, size, batch, dtype, device)
                rows += time_case(case, device, timer, env, copy_bw, with_compile)
    if out_csv and rows:
        append_rows(out_csv, rows)
        print(f"# appended {len(rows)} rows to {out_csv}")
    print_autotune_choices()
    return rows


def print_header(env, device: torch.device, copy_bw: float) -> None:
    print(f"# {env.describe()}")
    if device.type == "cuda":
        print(f"# device-to-device copy bandwidth: {copy_bw:.0f} GB/s (read + write)")
    else:
        print(f"# CPU threads: {torch.get_num_threads()}, ISA: {cpu_arch()}; load average "
              f"{os.getloadavg()[0]:.2f} (timings are medians; min ms beside)")
        warning = thread_warning()
        if warning:
            print(f"# WARNING: {warning}")
    print(f"{'shape (N x C x H x W)':>22} {'dtype':>5} {'variant':>8} {'ms':>9} {'min ms':>9} "
          f"{'GB/s':>8} {'%copy':>6} {'vs eager':>8} {'vs comp':>8} {'max err':>9}")


def time_case(case, device, timer, env, copy_bw: float, with_compile: bool) -> list:
    """The rows of every variant on one case (a failing variant is reported, left out)."""
    gate, params, x, g = case
    dname = DTYPE_NAMES[x.dtype]
    shape = "x".join(str(v) for v in x.shape)
    with torch.no_grad():
        ref = gate(x, g)[0].float()
    rows = []
    for vname, fn in variants(gate, params, device, with_compile).items():
        try:
            with torch.no_grad():
                err = max_abs(fn(x, g).float(), ref)
            timer(lambda: fn(x, g))
        except Exception as e:  # report and go on with the other variants
            print(f"{shape:>22} {dname:>5} {vname:>8} FAILED {type(e).__name__}: {str(e)[:300]}")
            continue
        rows.append(env.row(suite=SUITE, case=f"C{x.shape[1]}", shape=shape, dtype=dname,
                            variant=vname, stats=timer.last, bytes=gate_bytes(x, g), err=err,
                            err_kind=ERR_KIND))
    add_columns(rows, copy_bw)
    for r in rows:
        print_row(r)
    return rows


def add_columns(rows: list, copy_bw: float) -> None:
    """Speed-up over eager (the ratio column) and over compile, % of the copy bandwidth."""
    set_ratios(rows, "eager")
    comp = next((r.median_ms for r in rows if r.variant == "compile"), float("nan"))
    for r in rows:
        r.extra["speedup_vs_compile"] = round(comp / r.median_ms, 3)
        if copy_bw == copy_bw:
            r.extra.update(pct_copy_bw=round(100 * r.gb_per_s / copy_bw, 1),
                           copy_bw_gb_per_s=round(copy_bw, 1))


def print_row(r) -> None:
    pct = f"{r.extra['pct_copy_bw']:6.1f}" if "pct_copy_bw" in r.extra else f"{'-':>6}"
    vs_eager = r.ratio_vs_baseline if r.ratio_vs_baseline is not None else float("nan")
    print(f"{r.shape:>22} {r.dtype:>5} {r.variant:>8} {r.median_ms:>9.4f} {r.min_ms:>9.4f} "
          f"{r.gb_per_s:>8.1f} {pct} {vs_eager:>8.2f} {r.extra['speedup_vs_compile']:>8.2f} "
          f"{r.err:>9.2e}")


def print_autotune_choices() -> None:
    """Which Triton config the autotuner picked per gate shape (which entries of CONFIGS
    earn their place; tuning data for the next change of the config list)."""
    launch = sys.modules.get("raunet_fast.ops.attention_gate.triton.launch")
    tuned = getattr(launch, "_TUNED", None)   # key -> the config picked for it
    if not tuned:
        return
    print("# triton autotune choices: (Cx, Cg, F) dtype N concat H*W -> config")
    for key, cfg in tuned.items():
        print(f"#   {key[:3]} {str(key[3]).replace('torch.', '')} N={key[4]} "
              f"{'concat ' if key[5] else ''}{key[6]} -> {cfg}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=None,
                   help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--batch", type=int, nargs="+", default=None)
    p.add_argument("--channels", type=int, nargs="+", default=None,
                   help="only these decoder levels (by C)")
    p.add_argument("--size-scale", type=float, default=1.0,
                   help="multiply the spatial sizes (e.g. 0.5 for a quick run)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--out", default=None, help="CSV file to append rows to")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cuda = device.type == "cuda"
    dtypes = [DTYPES[d] for d in (args.dtype or (["bf16"] if cuda else ["fp32"]))]
    levels = GPU_LEVELS if cuda else CPU_LEVELS
    if args.channels:
        levels = [lv for lv in levels if lv[0] in args.channels]
    levels = [(c, max(8, int(s * args.size_scale))) for c, s in levels]
    batches = args.batch or (GPU_BATCHES if cuda else CPU_BATCHES)
    run_table(device, dtypes, levels, batches, args.warmup, args.iters,
              with_compile=not args.no_compile, out_csv=args.out)
    return 0


# --------------------------------------------------------------------- pytest-benchmark
def _pytest_cases():
    """Every (device, dtype, level, batch, variant): the CPU-sized and the GPU cases (the
    conftest skips those of the other device)."""
    sets = [("cpu", torch.float32, CPU_LEVELS, CPU_BATCHES, ["eager", "compile", "cpp"]),
            ("cuda", torch.bfloat16, GPU_LEVELS, GPU_BATCHES,
             ["eager", "compile", "triton", "cuda", "cuda-fma"])]
    for dev, dtype, levels, batches, names in sets:
        for c, size in levels:
            for batch in batches:
                for v in names:
                    yield pytest.param(
                        torch.device(dev), dtype, c, size, batch, v,
                        marks=pytest.mark.bench_device(dev, compile=v == "compile"),
                        id=f"{dev}-{v}-{DTYPE_NAMES[dtype]}-{batch}x{c}x{size}x{size}")


try:
    import pytest
except ImportError:  # script mode without pytest
    pytest = None

if pytest is not None:
    @pytest.mark.parametrize("device,dtype,c,size,batch,variant", list(_pytest_cases()))
    def test_bench_attention_gate(benchmark, bench_record, device, dtype, c, size, batch,
                                  variant):
        torch._dynamo.reset()
        gate, params, x, g = make_case(c, size, batch, dtype, device)
        fn = variants(gate, params, device, with_compile=variant == "compile")[variant]
        flush = torch.empty(256 * 2 ** 20, dtype=torch.uint8, device=device) \
            if device.type == "cuda" else None

        def setup():  # not timed: flush L2 so every call reads from memory
            if flush is not None:
                flush.zero_()
                torch.cuda.synchronize(device)

        def call():
            with torch.no_grad():
                out = fn(x, g)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return out

        for _ in range(3):  # warm up: compile, autotune, extension build
            call()
        with torch.no_grad():
            err = max_abs(call().float(), gate(x, g)[0].float())
        benchmark.pedantic(call, setup=setup, rounds=20, iterations=1, warmup_rounds=2)
        bench_record(benchmark, device=device, suite=SUITE, case=f"C{c}",
                     shape=f"{batch}x{c}x{size}x{size}", dtype=DTYPE_NAMES[dtype],
                     variant=variant, nbytes=gate_bytes(x, g), err=err, err_kind=ERR_KIND,
                     baseline="eager",
                     extra={"note": "wall time incl. launch and synchronize"})


if __name__ == "__main__":
    sys.exit(main())
