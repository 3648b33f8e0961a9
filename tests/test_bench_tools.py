"""The benchmark harness and helper scripts (no timing asserted): a harness row round-trips
through the CSV with every column, the environment columns are filled, appending keeps one
header; bench/conv_targets.py reads bench_conv tables (text, harness CSV, older CSV) and
judges issue 4's targets; bench/op_overhead.py runs; ``pytest bench/`` collects the suites."""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from raunet_fast import bench_harness as bh

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TABLE = """
batch 8  level 2: 64->128 @ 256x256
  variant                         ms  TFLOP/s  vs eager  x floor   rel err
  eager                        0.973   247.10       1.0    2.679  0.00e+00
  cudnn-floor                  0.363   662.07     2.679      1.0       nan
  cudnn-fused                  0.300   552.30     3.243    0.826  1.13e-02
  fused-triton                 0.380   268.88     2.561    1.047  1.13e-02
  fused-cuda                   0.477   504.05      2.04    1.314  1.13e-02
  fused-broken                 0.100   900.00      9.73    0.275  8.00e-01

batch 8  level 5: 512->1024 @ 32x32
  variant                         ms  TFLOP/s  vs eager  x floor   rel err
  eager                        0.537   400.00       1.0    1.360  0.00e+00
  cudnn-floor                  0.395   500.00     1.360      1.0       nan
  fused-cuda                   0.410   480.00     1.310    1.038  6.90e-03
"""


def test_conv_targets_reads_tables_and_judges(tmp_path, capsys):
    ct = _load("conv_targets")
    tables = ct.parse(TABLE)
    assert set(tables) == {(8, 2), (8, 5)}
    assert tables[(8, 2)]["rows"]["fused-triton"] == (0.380, 2.561, 1.047, 1.13e-02)
    rows = ct.targets(tables)
    # the fastest fused row with a sane error: not the reference cudnn-fused row, not the
    # 80%-off "fused-broken" row
    assert [(r["level"], r["best"]) for r in rows] == [(2, "fused-triton"), (5, "fused-cuda")]
    assert rows[0]["floor_met"] and rows[0]["eager_met"]
    assert rows[1]["floor_met"] and not rows[1]["eager_met"]   # 1.31x eager < 1.5
    f = tmp_path / "conv.txt"
    f.write_text(TABLE)
    assert ct.main([str(f)]) == 0
    out = capsys.readouterr().out
    assert "fused-triton" in out and "fused-broken" not in out


def test_op_overhead_runs(capsys):
    _load("op_overhead").main(["--calls", "20"])
    out = capsys.readouterr().out
    for row in ("module", "op", "impl", "eager_direct", "check", "overhead"):
        assert f"  {row} " in out, out


def full_row(**over) -> bh.BenchRow:
    """A row with every column set (none left at its default)."""
    env = bh.environment("cpu")
    stats = bh.Stats.of([1.5, 1.0, 2.0, 1.25, 3.0])
    fields = dict(suite="network", case="raunet base 16", shape="1x3x128x128", dtype="fp32",
                  variant="fused-fp32", nbytes=None, flops=2.5e9, baseline="eager-fp32",
                  ratio_vs_baseline=1.75, err=3.0e-7, err_kind="rel_l2 vs eager fp32",
                  bytes=123456789, extra={"images_per_s": 66.7, "note": "a, \"quoted\" cell"})
    fields.update(over)
    fields.pop("nbytes")
    return env.row(stats=stats, **fields)


def test_row_round_trips_with_every_column(tmp_path):
    row = full_row()
    cells = bh.row_to_dict(row)
    assert list(cells) == bh.CSV_FIELDS
    empty = [k for k, v in cells.items() if v == "" and k != "commit"]
    assert not empty, empty   # every column filled (commit: "" outside a checkout)
    assert row.gb_per_s == pytest.approx(123456789 / row.median_ms / 1e6)
    assert row.tflop_per_s == pytest.approx(2.5e9 / row.median_ms / 1e9)
    path = tmp_path / "r.csv"
    assert bh.append_rows(path, [row]) == 1
    with open(path, newline="") as f:
        assert next(csv.reader(f)) == bh.CSV_FIELDS
    back = bh.read_rows(path)
    assert back == [row]   # exact: floats written with repr, extra as JSON
    # empty optional cells read back as None, a nan in extra as null
    sparse = bh.BenchRow(suite="s", case="c", shape="1", dtype="fp32", variant="v",
                         median_ms=2.0, extra={"x": float("nan")})
    bh.append_rows(path, [sparse])
    got = bh.read_rows(path)[1]
    assert got.p10_ms is None and got.bytes is None and got.gb_per_s is None
    assert got.extra == {"x": None}


def test_stats_percentiles():
    st = bh.Stats.of([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (st.median_ms, st.min_ms, st.rounds) == (3.0, 1.0, 5)
    assert st.p10_ms == pytest.approx(1.4) and st.p90_ms == pytest.approx(4.6)
    with pytest.raises(ValueError):
        bh.Stats.of([])


def test_environment_is_filled():
    env = bh.environment("cpu")
    assert env.device and env.device_type == "cpu" and env.arch
    assert env.threads == torch.get_num_threads()
    assert env.python == ".".join(map(str, sys.version_info[:3]))
    assert env.torch == torch.__version__ and env.date.endswith("+00:00")
    if (ROOT / ".git").exists():   # a checkout: the commit column says which code ran
        assert len(env.commit) == 12 and int(env.commit, 16) >= 0
    assert bh.git_commit(Path("/")) == ""   # not a checkout: empty, no error
    assert str(torch.get_num_threads()) in env.describe()
    assert bh.free_cores() >= 0
    warning = bh.thread_warning()
    assert warning is None or "threads" in warning


def test_append_keeps_one_header_and_refuses_other_columns(tmp_path):
    path = tmp_path / "sub" / "r.csv"
    for i in range(3):
        bh.append_rows(path, [full_row(variant=f"v{i}"), full_row(variant=f"w{i}")])
    lines = path.read_text().splitlines()
    assert sum(line.startswith("suite,") for line in lines) == 1
    assert [r.variant for r in bh.read_rows(path)] == ["v0", "w0", "v1", "w1", "v2", "w2"]
    assert bh.append_rows(path, []) == 0
    old = tmp_path / "old.csv"
    old.write_text("timestamp,device,ms\n1,cpu,2\n")
    with pytest.raises(ValueError, match="other columns"):
        bh.append_rows(old, [full_row()])
    assert old.read_text() == "timestamp,device,ms\n1,cpu,2\n"


def test_set_ratios_against_the_baseline_of_the_same_case():
    rows = [dataclasses.replace(full_row(), variant=v, median_ms=ms, baseline="",
                                ratio_vs_baseline=None, shape=shape)
            for v, ms, shape in (("eager", 4.0, "a"), ("fused", 2.0, "a"), ("fused", 1.0, "b"))]
    bh.set_ratios(rows, "eager")
    assert [r.ratio_vs_baseline for r in rows] == [1.0, 2.0, None]
    assert rows[1].baseline == "eager" and rows[2].baseline == ""


def test_conv_targets_reads_harness_and_old_csv(tmp_path):
    ct = _load("conv_targets")
    rows = []
    for variant, ms, err in (("eager", 0.973, 0.0), ("cudnn-floor", 0.363, float("nan")),
                             ("fused-triton", 0.380, 1.13e-2), ("fused-broken", 0.1, 0.8)):
        rows.append(dataclasses.replace(
            full_row(), suite="conv_block", case="level2", shape="8x64x256x256",
            variant=variant, median_ms=ms, err=err, ratio_vs_baseline=0.973 / ms,
            extra=dict(level=2, cin=64, cout=128, ms_stat=ms, x_floor=round(ms / 0.363, 3))))
    rows.append(full_row())   # another suite's row in the same file: ignored
    new = tmp_path / "conv.csv"
    bh.append_rows(new, rows)
    tables = ct.parse_csv(str(new))
    assert set(tables) == {(8, 2)} and tables[(8, 2)]["shape"] == "64->128 @ 256x256"
    best = ct.targets(tables)
    assert [(r["best"], r["floor_met"]) for r in best] == [("fused-triton", True)]
    old = tmp_path / "old.csv"
    old.write_text("timestamp,batch,level,cin,cout,hw,variant,ms,tflops,rel_err,"
                   "speedup_vs_eager,x_floor\n"
                   "t,8,5,512,1024,32,fused-cuda,0.41,480,6.9e-03,1.31,1.038\n")
    (r,) = ct.targets(ct.parse_csv(str(old)))
    assert r["best"] == "fused-cuda" and r["floor_met"] and not r["eager_met"]
    assert ct.main([str(new)]) == 0


def test_pytest_bench_collects_the_suites():
    """``pytest bench/ --collect-only`` from the repository root finds every suite, with
    CPU-sized and GPU cases (shapes in the ids); collecting runs no benchmark."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "pytest", "bench/", "--collect-only", "-q",
                          "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True,
                         timeout=240, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    ids = [line for line in out.stdout.splitlines() if "::" in line]
    for suite in ("bench_attention_gate.py", "bench_conv.py", "bench_network.py"):
        assert any(line.startswith(f"bench/{suite}::") for line in ids), suite
    assert any("cpu-" in line and "1x3x128x128" in line for line in ids)
    assert any("cuda-" in line and "x512x512" in line for line in ids)
    assert len(ids) == len(set(ids))   # no suite collected twice
