"""Config sweep of the Triton attention gate: every candidate tiling pinned (no autotuning).

For each shape (bf16, channels_last, F = C/2; default: the level-1 gate of a 512 x 512
RAUNet at batch 8 and 1, and level 2 at batch 8) it times
:func:`raunet_fast.ops.attention_gate.triton.launch.attention_gate_forward` with each candidate
config (the shipped :data:`CONFIGS` that apply, then a grid over pixel tile, warps and
the streaming cache hints), and reports ms, GB/s and % of the measured copy bandwidth.
Each config is timed twice: with the host head start of :class:`raunet_fast.bench_harness.Timer`
(device time) and without it (the previous method: the launch latency of the Python
launcher can show). Also the op through the autotuner (``attention_gate(backend="triton")``).

    python bench/gate_sweep.py [--shapes 8x64x512 1x64x512 8x128x256] [--iters 30]

Tuning data for the config list, not a benchmark of record (bench_attention_gate.py is): it
prints a table and writes no CSV.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_attention_gate import copy_bandwidth_gbs, make_case, versions  # noqa: E402

from raunet_fast.bench_harness import Timer, device_name  # noqa: E402

from raunet_fast.ops import attention_gate  # noqa: E402
from raunet_fast.ops.attention_gate import gate_bytes  # noqa: E402


def grid_configs() -> list[dict]:
    out = []
    for bp, warps in ((64, 4), (128, 4), (128, 8), (256, 4), (256, 8), (512, 8), (512, 16)):
        for stream in (False, True):
            out.append({"BLOCK_P": bp, "MAX_BLOCK_K": 64, "MAX_BLOCK_F": 64,
                        "num_warps": warps, "num_stages": 2, "stream": stream})
    return out


def describe(cfg: dict) -> str:
    return (f"P{cfg['BLOCK_P']} K{cfg['MAX_BLOCK_K']} F{cfg['MAX_BLOCK_F']} w{cfg['num_warps']}"
            f" s{cfg['num_stages']}{' stream' if cfg.get('stream') else ''}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=["8x64x512", "1x64x512", "8x128x256"],
                   help="NxCxS: batch, channels, square size")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    from raunet_fast.ops.attention_gate.triton.configs import CONFIGS, configs_for
    from raunet_fast.ops.attention_gate.triton.launch import attention_gate_forward

    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    new_t = Timer(device, 3, args.iters, head_start=True)
    old_t = Timer(device, 3, args.iters, head_start=False)
    copy_bw = copy_bandwidth_gbs(device)
    tv, trv = versions()
    print(f"# {device_name(device)}  torch {tv}  triton {trv}  {args.dtype}  "
          f"copy bandwidth {copy_bw:.0f} GB/s")
    print(f"{'shape':>12} {'config':<30} {'ms':>8} {'GB/s':>7} {'%copy':>6} "
          f"{'ms(no hs)':>9} {'%copy':>6}  max err")
    for spec in args.shapes:
        n, c, s = (int(v) for v in spec.split("x"))
        gate, params, x, g = make_case(c, s, n, dtype, device)
        nbytes = gate_bytes(x, g)
        with torch.no_grad():
            ref = gate(x, g)[0].float()
        shipped = [(f"CONFIGS[{CONFIGS.index(cfg)}]", cfg) for cfg in configs_for(dtype, c, c)]
        cands = shipped + [("grid", cfg) for cfg in grid_configs()]
        rows = []
        for label, cfg in cands:
            out = torch.empty_like(x)

            def run(cfg=cfg, out=out):
                attention_gate_forward(x, g, params["w_x"], params["w_g"], params["bias"],
                                       params["w_psi"], params["b_psi"], out, config=cfg)
                return out
            try:
                err = (run().float() - ref).abs().max().item()
                ms, ms_old = new_t(run), old_t(run)
            except Exception as e:  # noqa: BLE001 - a config may not build for a shape
                print(f"{spec:>12} {describe(cfg):<30} FAILED {type(e).__name__}: {str(e)[:120]}")
                continue
            rows.append((ms, label, cfg, ms_old, err))
        op = lambda: attention_gate(x, g, **params, backend="triton")  # noqa: E731
        err = (op().float() - ref).abs().max().item()
        rows.append((new_t(op), "op (autotuned)", {}, old_t(op), err))
        for ms, label, cfg, ms_old, err in sorted(rows, key=lambda r: r[0]):
            gbs, gbs_old = nbytes / ms / 1e6, nbytes / ms_old / 1e6
            name = describe(cfg) if cfg else label
            if label.startswith("CONFIGS"):
                name = f"{label} {name}"
            print(f"{spec:>12} {name:<30} {ms:8.4f} {gbs:7.0f} {100 * gbs / copy_bw:6.1f} "
                  f"{ms_old:9.4f} {100 * gbs_old / copy_bw:6.1f}  {err:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
