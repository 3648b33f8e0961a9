"""``raunet-fast benchmark`` on the CPU: the table, the CSV and the errors (no timing is
asserted: speed is shown by benchmarks, never tested)."""
from __future__ import annotations

import csv

import pytest
import torch

from raunet_fast import cli
from raunet_fast.benchmark import Timer
from raunet_fast.models import build_model

TINY = ["--device", "cpu", "--base-channels", "4", "--no-compile", "--iters", "2",
        "--warmup", "1"]


def test_table_and_csv(tmp_path, capsys):
    out = tmp_path / "b.csv"
    assert cli.main(["benchmark", *TINY, "--size", "32", "24x40", "--batch", "1", "2",
                     "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fused-fp32" in text and "eager-fp32" in text and "fastest:" in text
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 * 2 * 2  # sizes x batches x (eager, fused)
    assert {r["variant"] for r in rows} == {"eager-fp32", "fused-fp32"}
    assert {(r["height"], r["width"]) for r in rows} == {("32", "32"), ("24", "40")}
    for r in rows:
        assert float(r["ms"]) > 0 and float(r["images_per_s"]) > 0
        if r["variant"] == "eager-fp32":  # the baseline of the speed-up column
            assert float(r["speedup_vs_eager"]) == 1.0
        # the fused fp32 model computes the same function (folded BN, fused kernels)
        assert float(r["rel_l2_err_vs_fp32"]) < 1e-4, r
    # bf16 adds the channels_last reference in bf16; its error is bf16-sized, not zero
    assert cli.main(["benchmark", *TINY, "--size", "32", "--dtype", "bf16"]) == 0
    text = capsys.readouterr().out
    bf = [line for line in text.splitlines() if " eager-bf16 " in line]
    assert bf and 1e-4 < float(bf[0].split()[-1]) < 0.1
    # appending to a CSV with other columns is refused, not silently misaligned
    other = tmp_path / "old.csv"
    other.write_text("timestamp,device,size,variant\n1,cpu,32,eager\n")
    assert cli.main(["benchmark", *TINY, "--size", "16", "--out", str(other)]) == 2
    assert "other columns" in capsys.readouterr().err


def test_checkpoint_model(tmp_path, capsys):
    ck = tmp_path / "ck"
    build_model("attention-unet", in_channels=4, out_channels=3, base_channels=4,
                depth=3).save_pretrained(ck)
    assert cli.main(["benchmark", *TINY, "--checkpoint", str(ck), "--size", "16"]) == 0
    text = capsys.readouterr().out
    assert str(ck) in text and "fused-fp32" in text


@pytest.mark.parametrize("argv,words", [
    (["--batch", "0"], ["--batch"]),
    (["--iters", "0"], ["--iters"]),
    (["--checkpoint", "/no/such/ck"], ["does not exist"]),
    (["--dtype", "fp16", "--device", "cpu"], ["fp16", "CUDA"]),
])
def test_errors_are_one_line(argv, words, capsys):
    assert cli.main(["benchmark", "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("raunet-fast benchmark: error:"), err
    for w in words:
        assert w in err


def test_timer_cpu():
    t = Timer(torch.device("cpu"), warmup=1, iters=3)
    ms = t(lambda: torch.ones(100).sum())
    assert ms > 0 and t.last_min <= ms
