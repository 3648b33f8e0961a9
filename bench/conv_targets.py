"""Issue 4's targets from a bench_conv.py table: per (batch, level), the fastest fused block
variant, its ratio to the bare convolutions ("x floor", target <= 1.1) and its speed-up
over the eager block (target >= 1.5), and whether each target is met.

    python bench/conv_targets.py bench/results/<gpu>-<date>/conv.txt
    python bench/conv_targets.py bench/results/<gpu>-<date>/conv.csv

Reads the printed tables, or a CSV: the harness schema (``conv_block`` rows of
``bench_conv.py --out`` or ``pytest bench/ --bench-csv``) or the older bench_conv CSV columns
(batch, level, cin, cout, hw, variant, ms, speedup_vs_eager, x_floor, rel_err). Text tables: (``batch N  level L: ...`` headers, then ``variant ms TFLOP/s
vs-eager x-floor rel-err`` rows); rows whose relative error exceeds ``--max-err`` (a wrong
kernel) are not counted. Variants considered: ``fused-*`` (the package's blocks) - the
reference rows (eager, compile-*, cudnn-*, conv1-*) are not candidates.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys

HEADER = re.compile(r"^batch\s+(\d+)\s+level\s+(\d+):\s*(.*)$")
ROW = re.compile(r"^\s+(\S+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+|)\s+(\S+)\s*$")


def parse(text: str) -> dict[tuple[int, int], dict]:
    """{(batch, level): {"shape": str, "rows": {variant: (ms, vs_eager, x_floor, err)}}}"""
    out: dict[tuple[int, int], dict] = {}
    cur = None
    for line in text.splitlines():
        m = HEADER.match(line.strip())
        if m:
            cur = out.setdefault((int(m.group(1)), int(m.group(2))),
                                 {"shape": m.group(3), "rows": {}})
            continue
        m = ROW.match(line)
        if cur is not None and m and m.group(1) != "variant":
            try:
                err = float(m.group(6))
            except ValueError:
                err = float("nan")
            floor = float(m.group(5)) if m.group(5) else float("nan")
            cur["rows"][m.group(1)] = (float(m.group(2)), float(m.group(4)), floor, err)
    return out


def _num(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def parse_csv(path: str) -> dict[tuple[int, int], dict]:
    """The tables of :func:`parse` from a CSV: harness rows (suite ``conv_block``) or the
    older bench_conv columns."""
    with open(path, newline="") as f:
        records = list(csv.DictReader(f))
    out: dict[tuple[int, int], dict] = {}
    for r in records:
        if "suite" in r:  # the harness schema
            if r["suite"] != "conv_block":
                continue
            extra = json.loads(r["extra"] or "{}")
            n, cin, hw = (int(v) for v in r["shape"].split("x")[:3])
            level, cout, ms = extra["level"], extra["cout"], extra.get("ms_stat", r["median_ms"])
            vs_eager, x_floor, err = r["ratio_vs_baseline"], extra.get("x_floor"), r["err"]
        else:  # bench_conv.py's CSV before the harness
            n, level, cin, cout, hw = (int(r[k]) for k in ("batch", "level", "cin", "cout", "hw"))
            ms, vs_eager, x_floor, err = r["ms"], r["speedup_vs_eager"], r["x_floor"], r["rel_err"]
        t = out.setdefault((n, level), {"shape": f"{cin}->{cout} @ {hw}x{hw}", "rows": {}})
        t["rows"][r["variant"]] = (float(ms), _num(vs_eager), _num(x_floor), _num(err))
    return out


def targets(tables: dict, max_err: float = 0.05, floor_target: float = 1.1,
            eager_target: float = 1.5) -> list[dict]:
    rows = []
    for (batch, level), t in sorted(tables.items()):
        fused = {k: v for k, v in t["rows"].items()
                 if k.startswith("fused-") and not (v[3] > max_err)}
        if not fused:
            continue
        best = min(fused, key=lambda k: fused[k][0])
        ms, vs_eager, x_floor, err = fused[best]
        rows.append(dict(batch=batch, level=level, shape=t["shape"], best=best, ms=ms,
                         x_floor=x_floor, vs_eager=vs_eager,
                         floor_met=x_floor <= floor_target, eager_met=vs_eager >= eager_target))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table", help="bench_conv.py output (text), or a CSV (harness or older)")
    p.add_argument("--max-err", type=float, default=0.05,
                   help="relative error above which a row is a wrong kernel, not a result")
    args = p.parse_args(argv)
    if args.table.endswith(".csv"):
        tables = parse_csv(args.table)
    else:
        with open(args.table) as f:
            tables = parse(f.read())
    rows = targets(tables, args.max_err)
    if not rows:
        print("no bench_conv tables found", file=sys.stderr)
        return 1
    print(f"{'batch':>5} {'level':>5} {'shape':<26} {'fastest fused':<24} {'ms':>8} "
          f"{'x floor':>8} {'<=1.1':>6} {'vs eager':>9} {'>=1.5':>6}")
    for r in rows:
        print(f"{r['batch']:>5} {r['level']:>5} {r['shape']:<26} {r['best']:<24} {r['ms']:>8.3f} "
              f"{r['x_floor']:>8.3f} {'yes' if r['floor_met'] else 'no':>6} "
              f"{r['vs_eager']:>9.3f} {'yes' if r['eager_met'] else 'no':>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
