"""Benchmark of the whole network: the reference RAUNet (eager), ``torch.compile`` of it and
the fused model (:func:`raunet_fast.inference.build_inference_model`), plus CUDA graphs on a
GPU, under pytest-benchmark (the variants of :func:`raunet_fast.benchmark.variants`).

CPU-sized: 1 x 3 x 128 x 128, base 16, fp32. GPU: 1 and 8 x 3 x 512 x 512, base 64, bf16.
TFLOP/s counts the reference model's convolutions (torch.utils.flop_counter); the error
column is the relative L2 error against the fp32 reference.

    pytest bench/bench_network.py --benchmark-only [--bench-csv FILE]
    raunet-fast benchmark --size 512 --batch 1 8       # the same variants as a table
"""
from __future__ import annotations

import functools

import pytest
import torch

from raunet_fast.bench_harness import DTYPES, rel_l2, shape_str
from raunet_fast.benchmark import demo_model, exact_fp32, network_flops, variants

#: (device, batch, size, base channels, dtype name, variants)
CPU_CASES = [("cpu", 1, 128, 16, "fp32", ["eager-fp32", "compile-fp32", "fused-fp32"])]
GPU_CASES = [("cuda", b, 512, 64, "bf16",
              ["eager-fp32", "eager-bf16", "compile-bf16", "fused-bf16", "fused+graphs-bf16"])
             for b in (1, 8)]


def params():
    for device, batch, size, base, dt, names in CPU_CASES + GPU_CASES:
        for name in names:
            yield pytest.param(device, batch, size, base, dt, name,
                               marks=pytest.mark.bench_device(device),
                               id=f"{device}-{name}-{batch}x3x{size}x{size}-base{base}")


@functools.lru_cache(maxsize=1)
def built(device: str, base: int, dt: str):
    """The model and its variants, built once per (device, width, dtype) (the cases of one
    configuration share them; compiled variants compile on their first call)."""
    torch.manual_seed(0)
    model = demo_model("raunet", base_channels=base)
    return model, variants(model, torch.device(device), DTYPES[dt], compile=True)


@pytest.mark.parametrize("device,batch,size,base,dt,name", list(params()))
def test_network(benchmark, bench_record, device, batch, size, base, dt, name):
    model, fns = built(device, base, dt)
    fn = fns[name]
    x = torch.randn(batch, 3, size, size, device=device)
    with torch.no_grad(), exact_fp32():
        ref = model.to(device)(x).float()

    def call():
        with torch.no_grad():
            out = fn(x)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    for _ in range(3):  # compile, autotune, graph capture: not timed
        call()
    err = rel_l2(call().float(), ref)
    benchmark.pedantic(call, rounds=20 if device == "cuda" else 10, iterations=1,
                       warmup_rounds=1)
    bench_record(benchmark, device=device, suite="network", case=f"raunet base {base}",
                 shape=shape_str(x.shape), dtype=dt, variant=name,
                 flops=network_flops(model, x), err=err,
                 err_kind="rel_l2 vs eager fp32 (TF32 off)", baseline=f"eager-{dt}")
