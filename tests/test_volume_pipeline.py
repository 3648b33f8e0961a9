"""A tiny 3-D BraTS run end to end through the command line: train, resume, evaluate,
predict, and the fused model on the same volumes. The scores are recomputed here from the
written NIfTI files against the label files read with nibabel."""
from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from raunet_fast import cli
from raunet_fast.data import make_brats2021
from raunet_fast.data.volumes import BraTSVolumes

SHAPE = (22, 18, 13)  # X, Y, Z of the files: odd and unequal
RUN = ["--dataset", "brats2021", "--spatial-dims", "3", "--patch", "8x12x8",
       "--base-channels", "4", "--depth", "3", "--num-workers", "0", "--no-progress",
       "--device", "cpu", "--batch-size", "2", "--lr", "3e-3", "--max-steps-per-epoch", "3",
       "--dropout", "0"]
REGION_LABELS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("brats_e2e")
    data, out = root / "data", root / "run"
    make_brats2021(data, 6, SHAPE, seed=11, spacing=(1.0, 1.2, 2.0))
    base = ["train", "--data-root", str(data), "--out", str(out), *RUN]
    assert cli.main([*base, "--epochs", "1"]) == 0
    assert cli.main([*base, "--epochs", "2", "--resume"]) == 0
    return {"data": data, "run": out}


def _evaluate(run, out: Path, *extra: str) -> list[dict[str, str]]:
    assert cli.main(["evaluate", "--checkpoint", str(run["run"] / "best"), "--dataset",
                     "brats2021", "--data-root", str(run["data"]), "--split", "test",
                     "--out", str(out), "--save-predictions", "--no-progress", "--device",
                     "cpu", *extra]) == 0
    with open(out / "cases.csv") as f:
        return list(csv.DictReader(f))


def test_resumed_run_logged_both_epochs(run):
    with open(run["run"] / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(np.isfinite(float(r["val_dice"])) for r in rows)


def test_evaluate_scores_the_written_label_maps(run, tmp_path):
    rows = _evaluate(run, tmp_path / "eval")
    test_cases = BraTSVolumes(run["data"], "test").names
    assert [r["case"] for r in rows] == test_cases
    for row in rows:
        case = row["case"]
        pred = np.asarray(nib.load(str(tmp_path / "eval" / "predictions"
                                       / f"{case}.nii.gz")).dataobj)
        truth_img = nib.load(str(run["data"] / case / f"{case}_seg.nii.gz"))
        truth = np.asarray(truth_img.dataobj)
        assert pred.shape == SHAPE
        np.testing.assert_array_equal(
            nib.load(str(tmp_path / "eval" / "predictions" / f"{case}.nii.gz")).affine,
            truth_img.affine)
        for region, labels in REGION_LABELS.items():
            p, t = np.isin(pred, labels), np.isin(truth, labels)
            denom = p.sum() + t.sum()
            dice = 1.0 if denom == 0 else 2.0 * (p & t).sum() / denom
            assert float(row[f"dice_{region}"]) == pytest.approx(dice, abs=1e-9), region


def test_predict_and_fused_give_evaluations_labels(run, tmp_path):
    _evaluate(run, tmp_path / "eval")
    test_cases = BraTSVolumes(run["data"], "test").names
    folder = tmp_path / "cases"
    folder.mkdir()
    for case in test_cases:
        (folder / case).symlink_to(run["data"] / case)
    for name, extra in (("pred", ()), ("fused", ("--fused", "--dtype", "fp32"))):
        out = tmp_path / name
        assert cli.main(["predict", "--checkpoint", str(run["run"] / "best"), "--input",
                         str(folder), "--out", str(out), "--no-progress", "--device", "cpu",
                         *extra]) == 0
        for case in test_cases:
            got = np.asarray(nib.load(str(out / f"{case}_pred_seg.nii.gz")).dataobj)
            want = np.asarray(nib.load(str(tmp_path / "eval" / "predictions"
                                           / f"{case}.nii.gz")).dataobj)
            if name == "pred":
                np.testing.assert_array_equal(got, want)
            else:  # fp32 fused vs reference: a voxel may flip where a logit sits at the cut
                assert (got != want).mean() < 1e-3, case
