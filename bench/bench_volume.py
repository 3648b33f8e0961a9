"""3-D RAUNet on volume patches: eager vs ``torch.compile`` vs the fused inference form.

A ``spatial_dims=3`` RAUNet (in 4 channels, out 3, base ``--base`` (16), depth ``--depth``
(5), BatchNorm with non-trivial running statistics) on one ``1 x 4 x S x S x S`` patch
(``--size``, 128), per variant:

  eager-fp32      the reference model as a user runs it (NCDHW, fp32)
  compile-fp32    ``torch.compile(model)`` (the baseline to beat)
  eager-bf16, compile-bf16   the model cast to bf16, channels_last_3d (CUDA only)
  fused-fp32      :func:`raunet_fast.inference.build_inference_model` (folded BN, oneDNN /
                  cuDNN fused conv + bias + add (+ ReLU), fused gates, channels_last_3d)
  fused-bf16      the same in bf16 (CPU: meant for AVX512-BF16 / AMX)

Reported: ms per patch (median of ``--reps`` after one warm-up call; compilation not
timed), the speed-up against eager-fp32 and against compile-fp32 measured in the same run,
the relative L2 error against eager fp32, and the memory per patch: on the CPU the peak RSS
rise during one forward (freed heap returned to the system first, ``malloc_trim``), on CUDA
``torch.cuda.max_memory_allocated`` above what was allocated before the call. Each variant
runs in its own child process (its own peak; no compiled graph shared), with the CPU
allocator tuned as the CLI tunes it.

    python bench/bench_volume.py [--size 128] [--base 16] [--depth 5] [--reps 3]
                                 [--variants ...] [--device auto|cpu|cuda] [--out CSV]
    pytest bench/bench_volume.py --benchmark-only    # CPU: 64^3 base 16; GPU: 128^3 base 32
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import subprocess
import sys
import tempfile

import pytest
import torch

IN_CH, OUT_CH = 4, 3
CPU_VARIANTS = ["eager-fp32", "compile-fp32", "fused-fp32", "fused-bf16"]
GPU_VARIANTS = ["eager-fp32", "eager-bf16", "compile-fp32", "compile-bf16", "fused-fp32",
                "fused-bf16"]


def volume_model(base: int, depth: int) -> torch.nn.Module:
    """A seeded eval-mode 3-D RAUNet whose BatchNorms hold non-trivial statistics."""
    from raunet_fast import RAUNet

    torch.manual_seed(0)
    model = RAUNet(IN_CH, OUT_CH, base_channels=base, depth=depth, spatial_dims=3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def variant(model: torch.nn.Module, name: str, device: torch.device):
    """The callable ``x -> logits`` of variant ``name`` (module docstring)."""
    from raunet_fast.inference import build_inference_model

    kind, dt = name.rsplit("-", 1)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dt]
    model = model.to(device)
    if kind == "fused":
        return build_inference_model(model, dtype=dtype)
    cl3 = torch.channels_last_3d
    if dtype != torch.float32:
        model = model.to(dtype).to(memory_format=cl3)
    fn = torch.compile(model, dynamic=False) if kind == "compile" else model
    if dtype == torch.float32:
        return fn
    return lambda x: fn(x.to(dtype).contiguous(memory_format=cl3))


# ------------------------------------------------------------------------- memory
def rss_bytes(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) * 1024


def release_and_reset_peak() -> None:
    """Return freed heap to the system, then restart the peak (VmHWM) from the current RSS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def memory_per_patch(fn, x) -> tuple[int, torch.Tensor]:
    """(bytes one forward adds at its peak (CPU: RSS; CUDA: the caching allocator), its
    output)."""
    import gc

    gc.collect()
    with torch.no_grad():
        if x.is_cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            y = fn(x)
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - before, y
        release_and_reset_peak()
        before = rss_bytes()
        y = fn(x)
        return rss_bytes("VmHWM") - before, y


# ------------------------------------------------------------------- one variant
def measure(name: str, size: int, base: int, depth: int, reps: int, device: str,
            out_path: str | None = None) -> dict:
    """Time one variant (in this process) and measure its memory per patch."""
    from raunet_fast.bench_harness import Timer

    dev = torch.device(device)
    model = volume_model(base, depth)
    fn = variant(model, name, dev)
    x = torch.randn(1, IN_CH, size, size, size, generator=torch.Generator().manual_seed(1)
                    ).to(dev)
    timer = Timer(dev, warmup=1, iters=reps, head_start=False)
    ms = timer(lambda: fn(x))
    mem, y = memory_per_patch(fn, x)
    if out_path:
        torch.save(y.float().cpu(), out_path)
    return {"variant": name, "ms": ms, "min_ms": timer.last.min_ms, "mem_mib": mem / 2 ** 20}


def child(name: str, args, out_path: str) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--size", str(args.size), "--base",
           str(args.base), "--depth", str(args.depth), "--reps", str(args.reps),
           "--device", args.device, "--save", out_path]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: list[dict], outputs: dict[str, torch.Tensor]) -> list[str]:
    """Markdown rows: ms, speed-ups against eager-fp32 and compile-fp32, error, memory."""
    from raunet_fast.bench_harness import rel_l2

    ms = {r["variant"]: r["ms"] for r in results}
    ref = outputs.get("eager-fp32")
    lines = ["| variant | ms / patch | x eager-fp32 | x compile-fp32 | rel. L2 vs eager fp32 "
             "| memory / patch MiB |", "|---|---|---|---|---|---|"]
    for r in results:
        v = r["variant"]
        ratio = {b: f"{ms[b] / r['ms']:.2f}" if b in ms else "-"
                 for b in ("eager-fp32", "compile-fp32")}
        err = f"{rel_l2(outputs[v], ref):.2g}" if ref is not None and v in outputs else "-"
        lines.append(f"| {v} | {r['ms']:.0f} | {ratio['eager-fp32']} | "
                     f"{ratio['compile-fp32']} | {err} | {r['mem_mib']:.0f} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--base", type=int, default=16)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--variants", nargs="+", default=None)
    p.add_argument("--out", default=None, help="append harness CSV rows to this file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child is not None:
        from raunet_fast.runtime import tune_cpu_allocator_unless_disabled

        tune_cpu_allocator_unless_disabled()
        print(json.dumps(measure(args.child, args.size, args.base, args.depth, args.reps,
                                 args.device, args.save)), flush=True)
        return 0
    return run(args)


def run(args) -> int:
    from raunet_fast.bench_harness import environment

    names = args.variants or (GPU_VARIANTS if args.device == "cuda" else CPU_VARIANTS)
    s = args.size
    print(f"# 3-D RAUNet base {args.base} depth {args.depth}, 1 x {IN_CH} x {s}^3 -> "
          f"{OUT_CH}, {args.reps} timed calls each, {environment(args.device).describe()}",
          flush=True)
    results, outputs = [], {}
    with tempfile.TemporaryDirectory(prefix="raunet-bench-volume-") as tmp:
        for name in names:
            path = os.path.join(tmp, f"{name}.pt")
            r = child(name, args, path)
            print(f"# {name}: {r['ms']:.0f} ms (min {r['min_ms']:.0f}), "
                  f"{r['mem_mib']:.0f} MiB", flush=True)
            results.append(r)
            outputs[name] = torch.load(path)
    print("\n".join(table(results, outputs)))
    if args.out:
        write_rows(args, results, outputs)
    return 0


def write_rows(args, results, outputs) -> None:
    from raunet_fast.bench_harness import Stats, environment, rel_l2, script_rows_written, set_ratios

    env, ref = environment(args.device), outputs.get("eager-fp32")
    rows = [env.row(stats=Stats(r["ms"], r["min_ms"], r["ms"], r["min_ms"], args.reps),
                    suite="volume", case=f"raunet3d base {args.base} depth {args.depth}",
                    shape=f"1x{IN_CH}x{args.size}x{args.size}x{args.size}",
                    dtype=r["variant"].rsplit("-", 1)[1], variant=r["variant"],
                    err=rel_l2(outputs[r["variant"]], ref) if ref is not None else None,
                    err_kind="rel_l2 vs eager fp32", extra={"mem_mib": r["mem_mib"]})
            for r in results]
    set_ratios(rows, "eager-fp32", key=lambda r: (r.suite, r.case, r.shape))
    script_rows_written(args.out, rows)


# ------------------------------------------------------------ pytest-benchmark suite
#: (device, size, base, depth, variants)
CASES = [("cpu", 64, 16, 5, CPU_VARIANTS), ("cuda", 128, 32, 5, GPU_VARIANTS)]


def _params():
    for device, size, base, depth, names in CASES:
        for name in names:
            marks = pytest.mark.bench_device(device, compile=name.startswith("compile"))
            yield pytest.param(device, size, base, depth, name, marks=marks,
                               id=f"{device}-{name}-1x{IN_CH}x{size}^3-base{base}")


@pytest.mark.parametrize("device,size,base,depth,name", list(_params()))
def test_volume(benchmark, bench_record, device, size, base, depth, name):
    dev = torch.device(device)
    fn = variant(volume_model(base, depth), name, dev)
    x = torch.randn(1, IN_CH, size, size, size, device=dev)

    def call():
        with torch.no_grad():
            out = fn(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out

    call()  # compile, cuDNN plans: not timed
    benchmark.pedantic(call, rounds=10 if device == "cuda" else 3, iterations=1)
    mem, _ = memory_per_patch(fn, x)
    bench_record(benchmark, device=device, suite="volume", case=f"raunet3d base {base}",
                 shape=f"1x{IN_CH}x{size}x{size}x{size}", dtype=name.rsplit("-", 1)[1],
                 variant=name, baseline="eager-fp32", extra={"mem_mib": mem / 2 ** 20})


if __name__ == "__main__":
    sys.exit(main())
