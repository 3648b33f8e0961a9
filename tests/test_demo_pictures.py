"""``raunet-fast demo`` draws test cases (input, truth, prediction, attention map) into
cases.png and prints the fused model's speed against the reference; without matplotlib
it still runs and says in one line that pictures need the plots extra."""
from __future__ import annotations

import csv
import sys

import numpy as np
import pytest
from PIL import Image

from raunet_fast.demo import run_demo

TINY = {"cases": 10, "epochs": 1, "image_size": 24, "base_channels": 6, "depth": 3,
        "batch_size": 3, "progress": False}


def test_demo_writes_cases_png_and_prints_speed(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo"
    result = run_demo(out, **TINY)
    text = capsys.readouterr().out
    with open(out / "eval" / "cases.csv", newline="") as f:
        n_test = len(list(csv.DictReader(f)))
    with Image.open(out / "cases.png") as im:
        assert im.format == "PNG"
        arr = np.asarray(im.convert("L"), dtype=np.float64)
    rows, cols = min(4, n_test), 4  # input, truth, prediction, attention map
    h, w = arr.shape
    assert w * rows == h * cols  # square panels in a rows x cols grid
    for r in range(rows):
        for c in range(cols):
            assert arr[r * h // rows:(r + 1) * h // rows, c * w // cols:(c + 1) * w // cols].std() > 5
    line = next(s for s in text.splitlines() if s.startswith("speed on this machine"))
    assert "reference model" in line and "fused fp32 model" in line and "images/s" in line
    assert set(result["speed"]) == {"reference", "fused fp32"}
    assert all(v > 0 for v in result["speed"].values())
    assert str(out / "cases.png") in text


def test_demo_without_matplotlib_still_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    out = tmp_path / "demo"
    result = run_demo(out, **TINY)
    text = capsys.readouterr().out
    said = [s for s in text.splitlines() if "plots extra" in s]
    assert len(said) == 1 and 'raunet-fast[plots]' in said[0]
    assert result["pictures"] is None and not (out / "cases.png").exists()
    assert (out / "eval" / "summary.json").is_file()
