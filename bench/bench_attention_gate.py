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
        prints a table and appends CSV rows (device name, torch / triton versions, UTC time)
    pytest bench/bench_attention_gate.py --benchmark-only
        the same cases under pytest-benchmark (GB/s and speedups in extra_info)
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib
import os
import platform
import sys

import torch

from raunet_fast.blocks import AttentionGate
from raunet_fast.ops import attention_gate, attention_gate_concat
from raunet_fast.ops.attention_gate import cast_gate_params, fold_attention_gate, gate_bytes

# the module itself: ``import raunet_fast.ops.attention_gate as m`` would give the op
# function bound under the same name on raunet_fast.ops
gate_mod = importlib.import_module("raunet_fast.ops.attention_gate")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: (C, spatial size): decoder levels of a 512 x 512 RAUNet with base 64
GPU_LEVELS = [(64, 512), (128, 256), (256, 128), (512, 64)]
GPU_BATCHES = [1, 8]
#: CPU: the issue's target shape (64 x 256 x 256) and the deeper levels at that scale
CPU_LEVELS = [(64, 256), (128, 128), (256, 64), (512, 32)]
CPU_BATCHES = [1]


# -------------------------------------------------------------------------------- timing
# the package's timing method (CUDA: events, L2 flush, host head start; see its docstring)
from raunet_fast.benchmark import Timer  # noqa: E402


def copy_bandwidth_gbs(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written per second)."""
    if device.type != "cuda":
        return float("nan")
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = Timer(device, warmup=3, iters=10)(lambda: dst.copy_(src))
    return 2 * nbytes / ms / 1e6


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def versions() -> tuple[str, str]:
    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = "none"
    return torch.__version__, tv


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


def run_table(device: torch.device, dtypes: list[torch.dtype], levels, batches, warmup, iters,
              with_compile=True, out_csv: str | None = None) -> list[dict]:
    timer = Timer(device, warmup, iters)
    copy_bw = copy_bandwidth_gbs(device)
    tv, trv = versions()
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    name = device_name(device)
    print(f"# {name}  torch {tv}  triton {trv}  {stamp}")
    if device.type == "cuda":
        print(f"# device-to-device copy bandwidth: {copy_bw:.0f} GB/s (read + write)")
    else:
        try:
            isa = gate_mod._extension("cpp").cpu_isa()
        except Exception as e:  # noqa: BLE001 - report, the cpp rows will say FAILED
            isa = f"unavailable ({type(e).__name__})"
        print(f"# CPU threads: {torch.get_num_threads()}, cpp micro kernel: {isa}; "
              f"load average {os.getloadavg()[0]:.2f} (timings are medians; min ms beside)")
    print(f"{'shape (N x C x H x W)':>22} {'dtype':>5} {'variant':>8} {'ms':>9} {'min ms':>9} "
          f"{'GB/s':>8} {'%copy':>6} {'vs eager':>8} {'vs comp':>8} {'max err':>9}")
    rows = []
    for dtype in dtypes:
        dname = {v: k for k, v in DTYPES.items()}[dtype]
        for c, size in levels:
            for batch in batches:
                torch._dynamo.reset()
                gate, params, x, g = make_case(c, size, batch, dtype, device)
                nbytes = gate_bytes(x, g)
                with torch.no_grad():
                    ref = gate(x, g)[0].float()
                results = {}
                for vname, fn in variants(gate, params, device, with_compile).items():
                    try:
                        with torch.no_grad():
                            err = (fn(x, g).float() - ref).abs().max().item()
                        ms = timer(lambda: fn(x, g))
                        ms_min = timer.last_min
                    except Exception as e:  # report and go on with the other variants
                        print(f"{f'{batch}x{c}x{size}x{size}':>22} {dname:>5} {vname:>8} "
                              f"FAILED {type(e).__name__}: {str(e)[:300]}")
                        continue
                    results[vname] = (ms, err, ms_min)
                eager = results.get("eager", (float("nan"),))[0]
                comp = results.get("compile", (float("nan"),))[0]
                for vname, (ms, err, ms_min) in results.items():
                    gbs = nbytes / ms / 1e6
                    row = dict(timestamp=stamp, device=name, torch=tv, triton=trv,
                               threads=torch.get_num_threads() if device.type == "cpu" else "",
                               batch=batch, channels=c, height=size, width=size, dtype=dname,
                               variant=vname, ms=round(ms, 5), min_ms=round(ms_min, 5),
                               gb_per_s=round(gbs, 2),
                               pct_copy_bw=round(100 * gbs / copy_bw, 1) if copy_bw == copy_bw else "",
                               copy_bw_gb_per_s=round(copy_bw, 1) if copy_bw == copy_bw else "",
                               speedup_vs_eager=round(eager / ms, 3),
                               speedup_vs_compile=round(comp / ms, 3), max_abs_err_vs_eager=f"{err:.3e}")
                    rows.append(row)
                    pct = f"{100 * gbs / copy_bw:6.1f}" if copy_bw == copy_bw else f"{'-':>6}"
                    print(f"{f'{batch}x{c}x{size}x{size}':>22} {dname:>5} {vname:>8} {ms:>9.4f} "
                          f"{ms_min:>9.4f} {gbs:>8.1f} {pct} {eager / ms:>8.2f} {comp / ms:>8.2f} "
                          f"{err:>9.2e}")
    if out_csv and rows:
        new = not os.path.exists(out_csv)
        os.makedirs(os.path.dirname(os.path.abspath(out_csv)), exist_ok=True)
        with open(out_csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                w.writeheader()
            w.writerows(rows)
        print(f"# appended {len(rows)} rows to {out_csv}")
    print_autotune_choices()
    return rows


def print_autotune_choices() -> None:
    """Which Triton config the autotuner picked per gate shape (which entries of CONFIGS
    earn their place; tuning data for the next change of the config list)."""
    import sys

    kmod = sys.modules.get("raunet_fast.kernels.attention_gate")
    if kmod is None or not kmod._autotuned:
        return
    print("# triton autotune choices: (Cx, Cg, F, dtype, N) H*W -> config")
    for key, tuner in kmod._autotuned.items():
        for hw_key, cfg in getattr(tuner, "cache", {}).items():
            print(f"#   {key[:3]} {str(key[3]).replace('torch.', '')} N={key[4]} "
                  f"{hw_key[0] if hw_key else ''} -> {cfg}")


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
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    for c, size in (GPU_LEVELS if cuda else CPU_LEVELS):
        for batch in (GPU_BATCHES if cuda else CPU_BATCHES):
            for v in ["eager", "compile", *fused_backends(device)]:
                yield device, dtype, c, size, batch, v


try:
    import pytest
except ImportError:  # script mode without pytest
    pytest = None

if pytest is not None:
    _CASES = list(_pytest_cases())

    @pytest.mark.parametrize("device,dtype,c,size,batch,variant", _CASES,
                             ids=[f"{v}-{str(dt)[6:]}-{b}x{c}x{s}x{s}"
                                  for _, dt, c, s, b, v in _CASES])
    def test_bench_attention_gate(benchmark, device, dtype, c, size, batch, variant):
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
                fn(x, g)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        for _ in range(3):  # warm up: compile, autotune, extension build
            call()
        benchmark.pedantic(call, setup=setup, rounds=20, iterations=1, warmup_rounds=2)
        nbytes = gate_bytes(x, g)
        median_s = benchmark.stats.stats.median
        benchmark.extra_info.update(
            device=device_name(device), dtype=str(dtype), shape=f"{batch}x{c}x{size}x{size}",
            bytes=nbytes, gb_per_s=round(nbytes / median_s / 1e9, 2),
            note="wall time incl. launch and synchronize; the script mode times with CUDA events")


if __name__ == "__main__":
    sys.exit(main())
