"""``raunet-fast benchmark`` on the CPU: the table, the CSV and the errors (no timing is
asserted: speed is shown by benchmarks, never tested)."""
from __future__ import annotations

import csv
import importlib.util
import json
import re

import pytest
import torch

from raunet_fast import cli
from raunet_fast.bench_harness import CSV_FIELDS
from raunet_fast.benchmark import Timer
from raunet_fast.models import build_model

TINY = ["--device", "cpu", "--base-channels", "4", "--no-compile", "--iters", "2",
        "--warmup", "1"]


def _cpu_flags() -> set[str]:
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return set()
    return set(re.findall(r"\b\w+\b", text.split("flags", 1)[-1].split("\n", 1)[0]))


def expected_cpu_fp32_variants() -> set[str]:
    """Without --no-compile's rows: eager and fused always; ONNX Runtime when the onnx extra
    is installed; the fused model in bf16 where the CPU has bf16 matrix units."""
    names = {"eager-fp32", "fused-fp32"}
    if all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript")):
        names.add("onnxruntime-fp32")
    if {"amx_bf16", "avx512_bf16"} & _cpu_flags():
        names.add("fused-bf16")
    return names


def test_table_and_csv(tmp_path, capsys):
    out = tmp_path / "b.csv"
    assert cli.main(["benchmark", *TINY, "--size", "32", "24x40", "--batch", "1", "2",
                     "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fused-fp32" in text and "eager-fp32" in text and "fastest:" in text
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == CSV_FIELDS   # the harness schema, every column
    names = expected_cpu_fp32_variants()
    assert len(rows) == 2 * 2 * len(names)  # sizes x batches x variants
    assert {r["variant"] for r in rows} == names
    assert {r["shape"] for r in rows} == {"1x3x32x32", "2x3x32x32", "1x3x24x40", "2x3x24x40"}
    for r in rows:
        assert r["suite"] == "network" and r["dtype"] == "fp32" and r["device_type"] == "cpu"
        extra = json.loads(r["extra"])
        assert float(r["median_ms"]) > 0 and extra["images_per_s"] > 0
        assert float(r["p10_ms"]) <= float(r["median_ms"]) <= float(r["p90_ms"])
        assert float(r["flops"]) > 0 and float(r["tflop_per_s"]) > 0
        assert r["baseline"] == "eager-fp32"
        if r["variant"] == "eager-fp32":  # the baseline of the speed-up column
            assert float(r["ratio_vs_baseline"]) == 1.0
        assert r["err_kind"].startswith("rel_l2")
        if r["variant"] == "fused-bf16":  # bf16-sized, not zero and not garbage
            assert 1e-4 < float(r["err"]) < 0.1, r
        else:  # the same function in fp32 (folded BN, fused kernels, ONNX Runtime)
            assert float(r["err"]) < 1e-4, r
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
