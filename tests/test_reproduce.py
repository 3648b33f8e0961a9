"""``raunet-fast reproduce`` end to end in miniature (generated data, tiny networks, one
epoch, two seeds): every file is written, the table's statistics match values recomputed
here from the runs' own cases.csv (numpy, scipy), the figures are PNGs with the expected
grid of panels, and --resume keeps finished runs."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import wilcoxon

from helpers.reproduce import METRICS, case_scores, read
from raunet_fast import cli

pytest.importorskip("matplotlib")

MODELS = {"unet": "U-Net", "attention-unet": "Attention U-Net", "raunet": "RA-U-Net"}
SEEDS = 2
# the paper's Table 1 as printed (Dice %, Jaccard %, HD px)
PAPER = {"U-Net": (86.1, 78.4, 7.6), "Attention U-Net": (88.7, 81.1, 6.2),
         "RA-U-Net": (91.4, 84.9, 4.8)}


def reproduce_args(out: Path, *extra: str) -> list[str]:
    # odd sizes: a non-square input and 6 base channels (gates of 3)
    return ["reproduce", "--dataset", "generated", "--out", str(out), "--cases", "20",
            "--seeds", str(SEEDS), "--epochs", "1", "--image-size", "24x40",
            "--base-channels", "6", "--depth", "3", "--batch-size", "4", "--lr", "3e-3",
            "--num-workers", "0", "--device", "cpu", "--no-progress", *extra]


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reproduce") / "out"
    assert cli.main(reproduce_args(out)) == 0
    return out




def test_writes_every_file(done):
    for name in ("table1.md", "table1.csv", "table1_paired.csv", "fig5_metrics.png",
                 "fig6_cases.png", "curves.png", "report.md", "reproduce.json"):
        assert (done / name).is_file(), name
    for model in MODELS:
        for seed in range(SEEDS):
            run = done / "runs" / f"{model}-seed{seed}"
            for name in ("run.json", "log.csv", "best/model.safetensors", "test/cases.csv",
                         "test/config.json"):
                assert (run / name).is_file(), run / name
    report = (done / "report.md").read_text()
    for words in ("synthetic", "split", "epochs", "seeds", "CPU cores", "wall time",
                  "What this run shows", "Overall"):
        assert words in report, words


def test_table_matches_the_runs_cases(done):
    rows = read(done / "table1.csv")
    ours = {r["model"]: r for r in rows if r["source"] == "ours"}
    assert set(ours) == set(MODELS.values())
    for model, label in MODELS.items():
        per_seed = [case_scores(done, model, s) for s in range(SEEDS)]
        for m in METRICS:
            run_means = np.array([np.nanmean([c[m] for c in cases.values()])
                                  for cases in per_seed], dtype=np.float64)
            assert float(ours[label][f"{m}_mean"]) == pytest.approx(run_means.mean(), rel=1e-8)
            assert float(ours[label][f"{m}_std"]) == pytest.approx(run_means.std(ddof=1),
                                                                   rel=1e-8, abs=1e-10)
        assert int(ours[label]["params"]) > 0 and float(ours[label]["images_per_s"]) > 0
    paper = {r["model"]: r for r in rows if r["source"] != "ours"}
    for label, values in PAPER.items():
        got = tuple(float(paper[label][f"{k}_paper"]) for k in ("dice", "jaccard", "hd"))
        assert got == values


def test_paired_comparisons_match_scipy(done):
    rows = read(done / "table1_paired.csv")
    assert len(rows) == 2 * len(METRICS)
    proposed = [case_scores(done, "raunet", s) for s in range(SEEDS)]
    for base in ("unet", "attention-unet"):
        other = [case_scores(done, base, s) for s in range(SEEDS)]
        names = sorted(proposed[0])
        for m in METRICS:
            d = np.array([np.mean([p[n][m] for p in proposed]) -
                          np.mean([o[n][m] for o in other]) for n in names])
            row = next(r for r in rows if r["comparison"] == f"RA-U-Net - {MODELS[base]}"
                       and r["metric"] == m)
            assert int(row["cases"]) == len(names) >= 3
            assert float(row["mean_diff"]) == pytest.approx(d.mean(), rel=1e-8, abs=1e-10)
            expected_p = 1.0 if not np.any(d) else wilcoxon(d).pvalue
            assert float(row["wilcoxon_p"]) == pytest.approx(expected_p, rel=1e-8)
            lo, hi = float(row["ci_low"]), float(row["ci_high"])
            # a bootstrap interval of the mean lies within the range of the differences
            assert d.min() - 1e-9 <= lo <= d.mean() + 1e-9 <= hi + 2e-9 <= d.max() + 3e-9


def panel_grid(path: Path, rows: int, cols: int) -> np.ndarray:
    """The PNG as an array after checking it is one, laid out as rows x cols square
    panels, each holding a drawing (not one flat colour)."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    arr = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    h, w = arr.shape
    assert w * rows == h * cols, (path.name, w, h, rows, cols)
    ch, cw = h // rows, w // cols
    for r in range(rows):
        for c in range(cols):
            cell = arr[r * ch:(r + 1) * ch, c * cw:(c + 1) * cw]
            assert cell.std() > 5, (path.name, r, c)
    return arr


def test_figures_have_the_expected_panels(done):
    n_test = len(read(done / "runs" / "raunet-seed0" / "test" / "cases.csv"))
    panel_grid(done / "fig5_metrics.png", 1, len(METRICS))
    panel_grid(done / "curves.png", 1, len(MODELS))
    # best, median, worst; input, truth, one prediction per model, the attention map
    panel_grid(done / "fig6_cases.png", min(3, n_test), 2 + len(MODELS) + 1)
    with pytest.raises(AssertionError):  # the check can fail: a column too many
        panel_grid(done / "fig6_cases.png", min(3, n_test), 2 + len(MODELS) + 2)


def test_resume_keeps_finished_runs(done, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(done, out)
    weights = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/best/model.safetensors")}
    shutil.rmtree(out / "runs" / "unet-seed1")                  # never trained
    shutil.rmtree(out / "runs" / "raunet-seed1" / "test")       # trained, not evaluated
    (out / "table1.csv").unlink()
    # without --resume the earlier reproduce is refused in one line
    assert cli.main(reproduce_args(out)) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli.main(reproduce_args(out, "--resume")) == 0
    for p, mtime in weights.items():
        if "unet-seed1" != p.parent.parent.name:
            assert p.stat().st_mtime_ns == mtime, p
    assert (out / "runs" / "unet-seed1" / "best" / "model.safetensors").is_file()
    assert (out / "runs" / "raunet-seed1" / "test" / "cases.csv").is_file()
    assert (out / "table1.csv").is_file()
    import json

    done_now = json.loads((out / "reproduce.json").read_text())["last_invocation"]
    assert done_now["trained"] == ["unet-seed1"]


def test_bad_input_is_one_line(tmp_path, capsys):
    args = ["reproduce", "--dataset", "isic2018", "--out", str(tmp_path / "o")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "--data-root" in err and len(err.strip().splitlines()) == 1


def test_missing_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    assert cli.main(reproduce_args(tmp_path / "o")) == 2
    err = capsys.readouterr().err.strip()
    assert "raunet-fast[plots]" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o" / "runs").exists()  # refused before any training


def test_brats_tables_per_region_and_resunet(tmp_path):
    from raunet_fast.data import make_brats2021

    make_brats2021(tmp_path / "data", 12, (28, 30, 10), seed=4, spacing=(1.0, 1.0, 2.0))
    out = tmp_path / "out"
    assert cli.main(["reproduce", "--dataset", "brats2021", "--data-root", str(tmp_path / "data"),
                     "--out", str(out), "--seeds", "2", "--epochs", "1", "--crop", "20",
                     "--base-channels", "6", "--depth", "3", "--num-workers", "0",
                     "--device", "cpu", "--no-progress", "--with-resunet"]) == 0
    models = [*MODELS, "resunet"]
    ours = {r["model"]: r for r in read(out / "table1.csv") if r["source"] == "ours"}
    assert set(ours) == {"U-Net", "Attention U-Net", "ResUNet", "RA-U-Net"}
    label = {**MODELS, "resunet": "ResUNet"}
    for model in models:
        runs = [read(out / "runs" / f"{model}-seed{s}" / "test" / "cases.csv") for s in range(2)]
        for m in METRICS:
            k = 100 if m in ("dice", "jaccard") else 1
            # the region mean per case, then per run, then over seeds
            means = np.array([np.mean([np.mean([float(r[f"{m}_{g}"]) for g in ("WT", "TC", "ET")])
                                       for r in rows]) * k for rows in runs])
            assert float(ours[label[model]][f"{m}_mean_mean"]) == pytest.approx(means.mean(), rel=1e-8)
            wt = np.array([np.mean([float(r[f"{m}_WT"]) for r in rows]) * k for rows in runs])
            assert float(ours[label[model]][f"{m}_WT_std"]) == pytest.approx(wt.std(ddof=1), rel=1e-8,
                                                                             abs=1e-10)
    n_test = len(read(out / "runs" / "raunet-seed0" / "test" / "cases.csv"))
    panel_grid(out / "fig6_cases.png", min(3, n_test), 2 + len(models) + 1)
    panel_grid(out / "fig5_metrics.png", 1, len(METRICS))
    paired = read(out / "table1_paired.csv")
    assert {r["comparison"] for r in paired} == {
        f"RA-U-Net - {label[m]}" for m in ("unet", "attention-unet", "resunet")}
