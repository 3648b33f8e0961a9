"""The benchmark helper scripts' logic (no timing asserted): bench/conv_targets.py reads
bench_conv tables and judges issue 4's targets; bench/op_overhead.py runs."""
from __future__ import annotations

import importlib.util
from pathlib import Path

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
