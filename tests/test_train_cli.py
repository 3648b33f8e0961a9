"""End to end from the command line on generated data: train, checkpoint, resume, evaluate;
a training process killed with SIGKILL resumes from its last checkpoint."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import raunet_fast
from raunet_fast import cli
from raunet_fast.cli import summary as cli_summary
from raunet_fast.data import make_brats2021, make_isic2018
from raunet_fast.io.checkpoints import (CHECKPOINT_NAME, STATE_NAME, checkpoint_ok, load_training_state,
                                       recover_checkpoint, write_checkpoint)

medpy_binary = pytest.importorskip("medpy.metric.binary")

TINY = ["--base-channels", "4", "--depth", "3", "--num-workers", "0", "--no-progress",
        "--device", "cpu", "--lr", "3e-3"]


@pytest.fixture(scope="module")
def isic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("isic")
    make_isic2018(root, 12, (40, 48), seed=3)  # 8 train, 2 val, 2 test
    return root


@pytest.fixture(scope="module")
def brats_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats")
    make_brats2021(root, 5, (28, 30, 10), seed=4, spacing=(1.0, 1.0, 2.0))
    return root


def isic_train_args(root: Path, run: Path, epochs: int, *extra: str) -> list[str]:
    return ["train", "--model", "raunet", "--dataset", "isic2018", "--data-root", str(root),
            "--out", str(run), "--epochs", str(epochs), "--batch-size", "4", "--image-size", "32",
            *TINY, *extra]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_isic_train_resume_evaluate(isic_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(isic_train_args(isic_root, run, 2)) == 0
    for name in ("best", "last"):
        model = raunet_fast.from_pretrained(run / name)
        assert type(model).__name__ == "RAUNet" and model.base_channels == 4
        assert checkpoint_ok(run / name)
    rows = read_csv(run / "log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_loss", "val_loss", "val_dice", "lr", "val_dice_lesion"} <= set(rows[0])
    assert load_training_state(run / "last")["epoch"] == 2
    assert not (run / "best" / STATE_NAME).exists()

    # an existing run is never overwritten silently
    capsys.readouterr()
    assert cli.main(isic_train_args(isic_root, run, 3)) == 2
    assert "--resume" in capsys.readouterr().err
    # resuming with another architecture is refused, naming the difference
    assert cli.main(isic_train_args(isic_root, run, 3, "--resume", "--image-size", "40")) == 2
    assert "image_size" in capsys.readouterr().err

    assert cli.main(isic_train_args(isic_root, run, 3, "--resume")) == 0
    assert [r["epoch"] for r in read_csv(run / "log.csv")] == ["1", "2", "3"]
    assert [{k: str(v) for k, v in r.items()} for r in json.loads((run / "log.json").read_text())] \
        == read_csv(run / "log.csv")
    state = load_training_state(run / "last")
    assert state["epoch"] == 3 and len(state["optimizer"]["state"]) > 0

    # resumed training ends exactly where an uninterrupted run ends
    straight = tmp_path / "straight"
    assert cli.main(isic_train_args(isic_root, straight, 3)) == 0
    a = raunet_fast.from_pretrained(run / "last").state_dict()
    b = raunet_fast.from_pretrained(straight / "last").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert read_csv(run / "log.csv") [-1]["val_dice"] == read_csv(straight / "log.csv")[-1]["val_dice"]

    # evaluate the best checkpoint on the test split
    ev = tmp_path / "eval"
    assert cli.main(["evaluate", "--checkpoint", str(run / "best"), "--dataset", "isic2018",
                     "--data-root", str(isic_root), "--split", "test", "--out", str(ev),
                     "--no-progress", "--device", "cpu"]) == 0
    cases = read_csv(ev / "cases.csv")
    # a second evaluate into the same --out refuses to replace its results (one line, exit 2)
    before = (ev / "summary.json").read_bytes()
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(run / "best"), "--dataset", "isic2018",
                     "--data-root", str(isic_root), "--split", "val", "--out", str(ev),
                     "--no-progress", "--device", "cpu"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (ev / "summary.json").read_bytes() == before
    assert len(cases) == 2 and {"case", "dice", "jaccard", "hd", "hd95",
                                "thresholded_jaccard"} <= set(cases[0])
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["cases"] == 2 and summary["split"] == "test"
    for k in ("dice", "jaccard", "hd", "hd95"):
        vals = [float(c[k]) for c in cases]
        assert summary["metrics"][k]["mean"] == pytest.approx(np.mean(vals), rel=1e-4)
        assert summary["metrics"][k]["std"] == pytest.approx(np.std(vals), rel=1e-4, abs=1e-6)
    assert all(0 <= float(c["dice"]) <= 1 for c in cases)
    resolved = json.loads((ev / "config.json").read_text())  # the run's config beside it
    assert (resolved["checkpoint"], resolved["split"]) == (str(run / "best"), "test")
    assert resolved["threshold"] is None and resolved["batch_size"] == 8  # not given: default

    # the fused inference model (CPU fp32) scores the same
    ev_fused = tmp_path / "eval-fused"
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(run / "best"), "--dataset", "isic2018",
                     "--data-root", str(isic_root), "--split", "test", "--out", str(ev_fused),
                     "--no-progress", "--device", "cpu", "--fused"]) == 0
    assert "fused fp32" in capsys.readouterr().out
    fused = json.loads((ev_fused / "summary.json").read_text())
    assert (summary["model"], fused["model"]) == ("reference", "fused fp32")
    for a, b in zip(cases, read_csv(ev_fused / "cases.csv")):
        assert a["case"] == b["case"]
        assert float(a["dice"]) == pytest.approx(float(b["dice"]), abs=1e-3)
    assert fused["metrics"]["dice"]["mean"] == pytest.approx(summary["metrics"]["dice"]["mean"],
                                                             abs=1e-3)

    # flip TTA: recorded in the summary, scores in range (they differ from the plain model's)
    ev_tta = tmp_path / "eval-tta"
    assert cli.main(["evaluate", "--checkpoint", str(run / "best"), "--dataset", "isic2018",
                     "--data-root", str(isic_root), "--split", "test", "--out", str(ev_tta),
                     "--no-progress", "--device", "cpu", "--tta"]) == 0
    tta = json.loads((ev_tta / "summary.json").read_text())
    assert tta["model"] == "reference + flip TTA"
    assert 0 <= tta["metrics"]["dice"]["mean"] <= 1
    # an ensemble of the best and the last checkpoint of the run
    ev_ens = tmp_path / "eval-ens"
    assert cli.main(["evaluate", "--checkpoint", str(run / "best"), "--ensemble", str(run / "last"),
                     "--dataset", "isic2018", "--data-root", str(isic_root), "--split", "test",
                     "--out", str(ev_ens), "--no-progress", "--device", "cpu"]) == 0
    assert json.loads((ev_ens / "summary.json").read_text())["model"] == "reference ensemble of 2"

    # --window: scored at each image's own resolution from blended windows; the saved masks
    # equal the model's own sliding-window output (computed here)
    from PIL import Image

    from raunet_fast.sliding_window import sliding_window_inference

    ev_win = tmp_path / "eval-win"
    assert cli.main(["evaluate", "--checkpoint", str(run / "best"), "--dataset", "isic2018",
                     "--data-root", str(isic_root), "--split", "test", "--out", str(ev_win),
                     "--no-progress", "--device", "cpu", "--window", "24", "--overlap", "0.5",
                     "--save-predictions"]) == 0
    win = json.loads((ev_win / "summary.json").read_text())
    assert win["window"] == [24, 24] and win["overlap"] == 0.5 and win["image_size"] is None
    model = raunet_fast.from_pretrained(run / "best").eval()
    saved = sorted((ev_win / "predictions").glob("*_segmentation.png"))
    assert len(saved) == 2
    for path in saved:
        name = path.name[:-len("_segmentation.png")]
        img = next((isic_root / "ISIC2018_Task1-2_Test_Input").glob(f"{name}.*"))
        arr = np.asarray(Image.open(img).convert("RGB"), dtype=np.float32) / 255.0
        x = torch.from_numpy(arr).permute(2, 0, 1)[None]
        logits = sliding_window_inference(model, x, 24, overlap=0.5)
        np.testing.assert_array_equal(np.asarray(Image.open(path)) == 255,
                                      (torch.sigmoid(logits[0, 0]) > 0.5).numpy(), err_msg=name)

    # no ground truth for the split: a clear error, not a crash
    import shutil

    shutil.rmtree(isic_root.parent / "isic_nogt", ignore_errors=True)
    shutil.copytree(isic_root, tmp_path / "nogt")
    shutil.rmtree(tmp_path / "nogt" / "ISIC2018_Task1_Test_GroundTruth")
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(run / "best"), "--dataset", "isic2018",
                     "--data-root", str(tmp_path / "nogt"), "--split", "test",
                     "--out", str(tmp_path / "ev2"), "--no-progress"]) == 2
    assert "ground truth" in capsys.readouterr().err


def test_isic_patch_training_and_windowed_evaluation(isic_root, tmp_path, capsys):
    """train --patch: random native-resolution patches; the checkpoint records the patch,
    evaluate and predict then default to windows of that size."""
    run = tmp_path / "run"
    args = ["train", "--model", "raunet", "--dataset", "isic2018", "--data-root", str(isic_root),
            "--out", str(run), "--epochs", "1", "--batch-size", "4", "--patch", "16", *TINY]
    assert cli.main(args) == 0
    prep = json.loads((run / "best" / "preprocessing.json").read_text())
    assert prep["patch"] == [16, 16] and prep["image_size"] is None
    ev = tmp_path / "ev"
    assert cli.main(["evaluate", "--checkpoint", str(run / "best"), "--dataset", "isic2018",
                     "--data-root", str(isic_root), "--split", "test", "--out", str(ev),
                     "--no-progress", "--device", "cpu"]) == 0
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["window"] == [16, 16] and summary["overlap"] == 0.25
    assert len(read_csv(ev / "cases.csv")) == 2
    pr = tmp_path / "pr"
    assert cli.main(["predict", "--checkpoint", str(run / "best"), "--input",
                     str(isic_root / "ISIC2018_Task1-2_Test_Input"), "--out", str(pr),
                     "--no-progress", "--device", "cpu", "--overlap", "0.5"]) == 0
    assert len(list(pr.glob("*_mask.png"))) == 2
    # --patch excludes --image-size and BraTS; a resumed run keeps its patch
    capsys.readouterr()
    assert cli.main(args[:-len(TINY)] + ["--image-size", "32", *TINY, "--out",
                                         str(tmp_path / "r2")]) == 2
    assert "--patch" in capsys.readouterr().err
    assert cli.main([*args[:-len(TINY)], *TINY, "--resume", "--epochs", "2", "--patch",
                     "24"]) == 2
    assert "patch: run has [16, 16]" in capsys.readouterr().err
    # training cuts random patches, validation tiles whole images
    from raunet_fast.config import TrainConfig
    from raunet_fast.engine.training import build_datasets

    tr, va = build_datasets(TrainConfig(data_root=str(isic_root), out=str(tmp_path / "x"),
                                        dataset="isic2018", patch=(16, 16)))
    assert tr.index is None and tr.random_patches and len(tr) == len(tr.names)
    assert tr.context == (4, 4) and tr[0]["image"].shape == (3, 24, 24)  # ceil(0.21 * 16)
    assert va.index is not None and len(va) > len(va.names) and "valid" in va[0]
    # several patches per decoded image: K x the items, an image's patches in a row
    tr2, _ = build_datasets(TrainConfig(data_root=str(isic_root), out=str(tmp_path / "x"),
                                        dataset="isic2018", patch=(16, 16), patches_per_image=3))
    assert len(tr2) == 3 * len(tr2.names) and tr2[5]["case"] == 1
    run3 = tmp_path / "run3"
    assert cli.main([*args[:-len(TINY)], *TINY, "--out", str(run3), "--patches-per-image", "2",
                     "--max-steps-per-epoch", "2"]) == 0
    log = read_csv(run3 / "log.csv")
    assert len(log) == 1 and float(log[0]["val_dice"]) >= 0
    capsys.readouterr()
    assert cli.main(isic_train_args(isic_root, tmp_path / "r4", 1, "--patches-per-image",
                                    "2")) == 2
    assert "--patches-per-image needs --patch" in capsys.readouterr().err
    # it fixes what an epoch is: a resumed run keeps it; a run.json from before the option
    # existed counts as K = 1
    assert cli.main([*args[:-len(TINY)], *TINY, "--out", str(run3), "--patches-per-image", "3",
                     "--resume", "--epochs", "2"]) == 2
    assert "patches_per_image: run has 2, now 3" in capsys.readouterr().err
    old_run = json.loads((run / "run.json").read_text())
    old_run.pop("patches_per_image", None)
    (run / "run.json").write_text(json.dumps(old_run))
    assert cli.main([*args[:-len(TINY)], *TINY, "--resume", "--epochs", "2"]) == 0
    # export sizes a patch checkpoint's static program at its patch
    assert cli.main(["export", "--checkpoint", str(run / "best"), "--out",
                     str(tmp_path / "m.pt2"), "--static"]) == 0
    assert "1 x 3 x 16 x 16" in capsys.readouterr().out


def test_brats_train_resume_evaluate(brats_root, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--model", "attention-unet", "--dataset", "brats2021", "--data-root",
            str(brats_root), "--out", str(run), "--batch-size", "8", "--crop", "24",
            "--image-size", "16", *TINY]
    assert cli.main(args + ["--epochs", "2"]) == 0
    assert cli.main(args + ["--epochs", "3", "--resume"]) == 0
    rows = read_csv(run / "log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert {"val_dice_WT", "val_dice_TC", "val_dice_ET"} <= set(rows[0])
    model = raunet_fast.from_pretrained(run / "best")
    assert (type(model).__name__, model.in_channels, model.out_channels) == ("AttentionUNet", 4, 3)

    ev = tmp_path / "eval"
    assert cli.main(["evaluate", "--checkpoint", str(run / "best"), "--dataset", "brats2021",
                     "--data-root", str(brats_root), "--split", "val", "--out", str(ev),
                     "--save-predictions", "--no-progress", "--device", "cpu"]) == 0
    cases = read_csv(ev / "cases.csv")
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["regions"] == ["WT", "TC", "ET"] and summary["cases"] == len(cases) == 1
    for region in ("WT", "TC", "ET", "mean"):
        assert set(summary["metrics"][region]) == {"dice", "jaccard", "hd", "hd95"}
    # re-check the scores from the saved 3-D prediction with medpy, spacing from the header
    case = cases[0]["case"]
    pred_img = nib.load(str(ev / "predictions" / f"{case}.nii.gz"))
    pred = np.asanyarray(pred_img.dataobj)
    truth = np.asanyarray(nib.load(str(brats_root / case / f"{case}_seg.nii.gz")).dataobj)
    assert pred.shape == truth.shape == (28, 30, 10)
    assert set(np.unique(pred).tolist()) <= {0, 1, 2, 4}
    assert pred.dtype == np.uint8

    # the fused model (attention gates included) scores the same, region by region
    ev_fused = tmp_path / "eval-fused"
    assert cli.main(["evaluate", "--checkpoint", str(run / "best"), "--dataset", "brats2021",
                     "--data-root", str(brats_root), "--split", "val", "--out", str(ev_fused),
                     "--no-progress", "--device", "cpu", "--fused", "--dtype", "fp32"]) == 0
    fused = json.loads((ev_fused / "summary.json").read_text())
    for region in ("WT", "TC", "ET", "mean"):
        assert fused["metrics"][region]["dice"]["mean"] == pytest.approx(
            summary["metrics"][region]["dice"]["mean"], abs=1e-3), region
    for region, labels in (("WT", (1, 2, 4)), ("TC", (1, 4)), ("ET", (4,))):
        p, t = np.isin(pred, labels), np.isin(truth, labels)
        got = {k: float(cases[0][f"{k}_{region}"]) for k in ("dice", "hd95")}
        if p.any() and t.any():
            assert got["dice"] == pytest.approx(medpy_binary.dc(p, t), rel=1e-4)
            assert got["hd95"] == pytest.approx(medpy_binary.hd95(p, t, (1.0, 1.0, 2.0)), rel=1e-4)
        elif p.any() != t.any():
            assert (got["dice"], got["hd95"]) == (0.0, 373.13)
        else:
            assert (got["dice"], got["hd95"]) == (1.0, 0.0)


def test_checkpoint_swap_survives_a_crash_at_any_step(tmp_path):
    from raunet_fast import RAUNet

    model = RAUNet(3, 1, base_channels=4, depth=3)
    info, prep = {"epoch": 1}, {"dataset": "isic2018"}
    write_checkpoint(tmp_path, "last", model, info, prep, {"epoch": 1})
    with torch.no_grad():
        model.head.bias.fill_(7.0)
    # crash while the new checkpoint was half written: the old one stays
    (tmp_path / ".last.tmp").mkdir()
    (tmp_path / ".last.tmp" / "model.safetensors").write_bytes(b"partial")
    assert recover_checkpoint(tmp_path, "last", need_state=True) == tmp_path / "last"
    assert load_training_state(tmp_path / "last")["epoch"] == 1
    assert not (tmp_path / ".last.tmp").exists()
    # crash between the two renames: the complete new checkpoint is taken
    write_checkpoint(tmp_path, ".staging", model, {"epoch": 2}, prep, {"epoch": 2})
    os.replace(tmp_path / "last", tmp_path / ".last.old")
    os.replace(tmp_path / ".staging", tmp_path / ".last.tmp")
    assert recover_checkpoint(tmp_path, "last", need_state=True) is not None
    assert load_training_state(tmp_path / "last")["epoch"] == 2
    assert raunet_fast.from_pretrained(tmp_path / "last").head.bias.item() == 7.0
    assert not (tmp_path / ".last.old").exists()
    # weights that do not match the marker are not trusted
    (tmp_path / "last" / "model.safetensors").write_bytes(b"x" * 10)
    assert not checkpoint_ok(tmp_path / "last")


def test_sigkill_mid_training_then_resume(isic_root, tmp_path):
    run = tmp_path / "run"
    argv = isic_train_args(isic_root, run, 40, "--batch-size", "2")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "raunet_fast.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 90
        while not (run / "last" / CHECKPOINT_NAME).is_file():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "no checkpoint within 90 s"
            time.sleep(0.02)
        time.sleep(0.15)  # into the next epoch (or the next checkpoint write)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    last = recover_checkpoint(run, "last", need_state=True)
    assert last is not None, "no usable checkpoint after SIGKILL"
    done = load_training_state(last)["epoch"]
    assert 1 <= done < 40
    raunet_fast.from_pretrained(last)
    # the kill may have hit the swap of best/ (renamed away, new one not yet in place)
    best = recover_checkpoint(run, "best")
    assert best is not None
    raunet_fast.from_pretrained(best)

    target = done + 2
    assert cli.main(isic_train_args(isic_root, run, target, "--batch-size", "2", "--resume")) == 0
    rows = read_csv(run / "log.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, target + 1))
    assert load_training_state(run / "last")["epoch"] == target
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
    best_epoch = json.loads((run / "best" / CHECKPOINT_NAME).read_text())["epoch"]
    best_dice = max(float(r["val_dice"]) for r in rows)
    assert float(rows[best_epoch - 1]["val_dice"]) == pytest.approx(best_dice, abs=1e-6)


def test_demo_smoke(tmp_path, capsys):
    from raunet_fast.demo import run_demo

    out = tmp_path / "demo"
    result = run_demo(out, cases=6, epochs=1, image_size=32, base_channels=4, depth=3,
                      progress=False)
    text = capsys.readouterr().out
    assert "untrained RA-U-Net" in text and "trained RA-U-Net" in text and "Dice" in text
    for p in ("run/best/model.safetensors", "run/log.csv", "eval/summary.json", "eval/cases.csv"):
        assert (out / p).is_file(), p
    assert 0 <= result["trained"]["metrics"]["dice"]["mean"] <= 1
    # a folder the demo did not write is never replaced
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="not written by raunet-fast demo"):
        run_demo(other, cases=6, epochs=1)


def test_early_stopping_and_folder_dataset(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (20, 26, 3), dtype=np.uint8)).save(
            tmp_path / "data" / "images" / f"p{i}.png")
        Image.fromarray(((rng.random((20, 26)) > 0.6) * 255).astype(np.uint8)).save(
            tmp_path / "data" / "masks" / f"p{i}_mask.png")
    run = tmp_path / "run"
    # instance norm has no running statistics and lr ~0 freezes the weights, so the
    # validation Dice never improves after epoch 1: patience 2 stops after epoch 3
    args = ["train", "--model", "unet", "--dataset", "folder", "--data-root", str(tmp_path / "data"),
            "--out", str(run), "--epochs", "10", "--batch-size", "4", "--image-size", "16",
            "--patience", "2", *TINY, "--norm", "instance", "--lr", "1e-20", "--no-augment"]
    assert cli.main(args) == 0
    assert [r["epoch"] for r in read_csv(run / "log.csv")] == ["1", "2", "3"]
    # a generic folder's one channel has a neutral name (ISIC's is "lesion")
    assert "val_dice_foreground" in read_csv(run / "log.csv")[0]
    assert "val_dice_lesion" not in read_csv(run / "log.csv")[0]
    prep = json.loads((run / "best" / "preprocessing.json").read_text())
    assert prep["regions"] == ["foreground"]
    state = load_training_state(run / "last")
    assert state["stopped_early"] and state["best_epoch"] == 1
    assert "early stopping" in capsys.readouterr().out
    assert cli.main(args + ["--resume"]) == 0  # a finished run stays finished
    assert len(read_csv(run / "log.csv")) == 3
    ev = tmp_path / "eval"
    assert cli.main(["evaluate", "--checkpoint", str(run / "best"), "--dataset", "folder",
                     "--data-root", str(tmp_path / "data"), "--split", "val", "--out", str(ev),
                     "--no-progress"]) == 0
    assert len(read_csv(ev / "cases.csv")) == 1


def test_train_errors(isic_root, tmp_path, capsys):
    if not torch.cuda.is_available():
        assert cli.main(isic_train_args(isic_root, tmp_path / "r1", 1, "--device", "cuda")) == 2
        assert "CUDA" in capsys.readouterr().err
    assert cli.main(isic_train_args(tmp_path / "missing", tmp_path / "r2", 1)) == 2
    assert "missing" in capsys.readouterr().err
    assert cli.main(isic_train_args(isic_root, tmp_path / "r3", 0)) == 2
    assert "epochs" in capsys.readouterr().err


def test_resume_refuses_a_broken_run_folder(isic_root, tmp_path, capsys):
    import shutil

    done = tmp_path / "done"
    assert cli.main(isic_train_args(isic_root, done, 1)) == 0
    keep = ("run.json", "log.csv", "best/model.safetensors", "best/checkpoint.json")

    def snapshot(run):
        return {k: (run / k).read_bytes() for k in keep}

    def corrupt_weights(run):
        w = run / "last" / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])

    def corrupt_marker(run):
        (run / "last" / CHECKPOINT_NAME).write_text('{"epoch": 1, "weights_sha')

    def drop_last(run):
        shutil.rmtree(run / "last")

    for name, damage, named in (("weights", corrupt_weights, "model.safetensors"),
                                ("marker", corrupt_marker, CHECKPOINT_NAME),
                                ("nolast", drop_last, "last")):
        run = tmp_path / name
        shutil.copytree(done, run)
        damage(run)
        before = snapshot(run)
        capsys.readouterr()
        assert cli.main(isic_train_args(isic_root, run, 2, "--resume")) == 2, name
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert named in err and "--out" in err and "remove" in err, err
        assert snapshot(run) == before, f"{name}: the run folder was modified"

    # a folder that holds something else entirely is not taken over either
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert cli.main(isic_train_args(isic_root, other, 1, "--resume")) == 2
    assert "notes.txt" in capsys.readouterr().err
    # missing or empty: a new run starts
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(isic_train_args(isic_root, empty, 1, "--resume")) == 0
    assert checkpoint_ok(empty / "last")


def _one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


def test_bad_options_are_one_line_errors(isic_root, brats_root, tmp_path, capsys):
    from raunet_fast.models import build_model

    file = tmp_path / "a-file"
    file.write_text("keep")
    assert cli.main(isic_train_args(isic_root, file, 1)) == 2
    _one_line_error(capsys, "a-file")
    assert cli.main(isic_train_args(isic_root, file / "run", 1)) == 2  # a file as parent folder
    _one_line_error(capsys)
    assert file.read_text() == "keep"
    brats = ["train", "--model", "unet", "--dataset", "brats2021", "--data-root", str(brats_root),
             "--epochs", "1", "--batch-size", "4", *TINY]
    for extra, word in ((["--crop", "0"], "crop"), (["--crop", "-5"], "crop"),
                        (["--tumour-weight", "-1"], "tumour_weight"),
                        (["--tumour-weight", "0"], "tumour_weight")):
        run = tmp_path / f"r{extra[1]}"
        assert cli.main(brats + ["--out", str(run), *extra]) == 2, extra
        _one_line_error(capsys, word)
        assert not run.exists()

    ck = tmp_path / "ck"
    build_model("unet", in_channels=3, out_channels=1, base_channels=4, depth=3).save_pretrained(ck)
    (ck / "preprocessing.json").write_text(json.dumps({"dataset": "isic2018", "image_size": [16, 16]}))
    ev = ["evaluate", "--checkpoint", str(ck), "--dataset", "isic2018", "--data-root",
          str(isic_root), "--no-progress", "--device", "cpu"]
    assert cli.main(ev + ["--out", str(tmp_path / "ev"), "--batch-size", "0"]) == 2
    _one_line_error(capsys, "batch_size")
    assert cli.main(ev + ["--out", str(file)]) == 2
    _one_line_error(capsys, "a-file")
    assert cli.main(ev + ["--out", str(tmp_path / "ev")]) == 0  # the checkpoint itself is fine


def test_evaluate_fused_options(isic_root, tmp_path, capsys):
    from raunet_fast.models import build_model

    ck = tmp_path / "ck"
    build_model("unet", in_channels=3, out_channels=1, base_channels=4, depth=3).save_pretrained(ck)
    (ck / "preprocessing.json").write_text(json.dumps({"dataset": "isic2018", "image_size": [16, 16]}))
    ev = ["evaluate", "--checkpoint", str(ck), "--dataset", "isic2018", "--data-root",
          str(isic_root), "--no-progress", "--device", "cpu", "--out", str(tmp_path / "ev")]
    capsys.readouterr()
    assert cli.main(ev + ["--fused", "--amp", "bf16"]) == 2  # rejected, not silently ignored
    _one_line_error(capsys, "--amp", "--fused", "--dtype")
    assert cli.main(ev + ["--dtype", "bf16"]) == 2
    _one_line_error(capsys, "--dtype", "--fused")
    assert not (tmp_path / "ev").exists()
    inst = tmp_path / "inst"
    build_model("unet", base_channels=4, depth=3, norm="instance").save_pretrained(inst)
    (inst / "preprocessing.json").write_text((ck / "preprocessing.json").read_text())
    assert cli.main(ev[:2] + [str(inst)] + ev[3:] + ["--fused"]) == 2
    _one_line_error(capsys, "norm")
    assert not (tmp_path / "ev").exists(), "refused before any output folder is made"
    assert cli.main(ev + ["--fused", "--dtype", "bf16"]) == 0  # bf16 runs on the CPU too
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["model"] == "fused bf16"
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    assert "--amp is rejected" in " ".join(capsys.readouterr().out.split())


def test_cli_error_classes_and_debug(monkeypatch, capsys):
    from raunet_fast.errors import InputTypeError

    def raising(exc):
        def cmd(args):
            raise exc
        return cmd

    argv = ["summary", "--base-channels", "4", "--depth", "3"]
    for exc in (InputTypeError("x must be a tensor"), NotADirectoryError(20, "Not a directory"),
                PermissionError(13, "Permission denied"), ValueError("bad\nvalue")):
        monkeypatch.setattr(cli_summary, "run", raising(exc))
        monkeypatch.delenv("RAUNET_DEBUG", raising=False)
        assert cli.main(argv) == 2
        _one_line_error(capsys, "raunet-fast summary: error:")
        monkeypatch.setenv("RAUNET_DEBUG", "1")  # everything re-raised, with its traceback
        with pytest.raises(type(exc)):
            cli.main(argv)
    # a TypeError the package did not raise on purpose is a bug: traceback, not a user error
    monkeypatch.delenv("RAUNET_DEBUG", raising=False)
    monkeypatch.setattr(cli_summary, "run", raising(TypeError("unsupported operand type(s)")))
    with pytest.raises(TypeError, match="unsupported operand"):
        cli.main(argv)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "RAUNET_DEBUG=1" in capsys.readouterr().out


def test_evaluate_names_a_bad_checkpoint(isic_root, tmp_path, capsys):
    from raunet_fast.models import build_model

    def evaluate(ck):
        capsys.readouterr()
        code = cli.main(["evaluate", "--checkpoint", str(ck), "--dataset", "isic2018", "--data-root",
                         str(isic_root), "--out", str(tmp_path / "ev"), "--no-progress",
                         "--device", "cpu"])
        return code, capsys.readouterr().err

    code, err = evaluate(tmp_path / "nope")
    assert code == 2 and "nope does not exist" in err and "preprocessing" not in err, err
    (tmp_path / "empty").mkdir()
    code, err = evaluate(tmp_path / "empty")
    assert code == 2 and "config.json" in err and "preprocessing" not in err, err
    ck = tmp_path / "ck"
    build_model("unet", in_channels=3, out_channels=1, base_channels=4, depth=3).save_pretrained(ck)
    for text in ("[1]", '"isic2018"', "3"):
        (ck / "preprocessing.json").write_text(text)
        code, err = evaluate(ck)
        assert code == 2 and "preprocessing.json" in err and len(err.strip().splitlines()) == 1, err
    (ck / "preprocessing.json").write_text('{"dataset": "isic2018", "image_size": [16, 16]}')
    assert evaluate(ck)[0] == 0


@pytest.fixture
def brats_checkpoint(tmp_path) -> Path:
    """An untrained tiny BraTS model with the preprocessing training would store."""
    from raunet_fast.models import build_model

    ck = tmp_path / "ck"
    build_model("unet", in_channels=4, out_channels=3, base_channels=4, depth=3).save_pretrained(ck)
    (ck / "preprocessing.json").write_text(json.dumps({"dataset": "brats2021", "crop": 24,
                                                       "image_size": [16, 16]}))
    return ck


def _count_brats_reads(monkeypatch) -> list[str]:
    """Record every NIfTI volume the BraTS loader reads (file names, in order)."""
    from raunet_fast.data import brats

    reads: list[str] = []
    real = brats._load_nifti

    def counting(path):
        reads.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(brats, "_load_nifti", counting)
    return reads


def _evaluate_brats(ck: Path, root: Path, out: Path, *extra: str) -> list[dict[str, str]]:
    assert cli.main(["evaluate", "--checkpoint", str(ck), "--dataset", "brats2021", "--data-root",
                     str(root), "--split", "train", "--out", str(out), "--no-progress",
                     "--device", "cpu", *extra]) == 0
    return read_csv(out / "cases.csv")


def test_brats_evaluate_reads_each_volume_once(brats_root, brats_checkpoint, tmp_path, monkeypatch):
    reads = _count_brats_reads(monkeypatch)
    rows = _evaluate_brats(brats_checkpoint, brats_root, tmp_path / "ev")
    names = [r["case"] for r in rows]
    assert len(names) == 3  # the train split of the 5 cases
    expected = sorted(f"{n}_{k}.nii.gz" for n in names for k in ("flair", "t1", "t1ce", "t2", "seg"))
    assert sorted(reads) == expected  # every volume read exactly once (it used to be twice)


def test_brats_evaluate_uses_cache_dir(brats_root, brats_checkpoint, tmp_path, monkeypatch):
    plain = _evaluate_brats(brats_checkpoint, brats_root, tmp_path / "ev0")
    reads = _count_brats_reads(monkeypatch)
    cache = tmp_path / "cache"
    first = _evaluate_brats(brats_checkpoint, brats_root, tmp_path / "ev1", "--cache-dir", str(cache))
    names = [r["case"] for r in first]
    assert len(reads) == 5 * len(names)  # filled from the NIfTI files, each read once
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        f"{n}_{k}" for n in names for k in ("image.npy", "seg.npy", "meta.json"))
    reads.clear()
    second = _evaluate_brats(brats_checkpoint, brats_root, tmp_path / "ev2", "--cache-dir", str(cache))
    assert reads == []  # served from the cache
    assert plain == first == second


def test_cache_images_reads_each_image_once_with_workers(isic_root, tmp_path, monkeypatch):
    from raunet_fast.data import isic

    log = tmp_path / "reads.txt"
    real = isic.read_image

    def counting(path, *a, **kw):  # runs in the DataLoader workers too (a file, not a counter)
        with open(log, "a") as f:
            f.write(f"{Path(path).name}\n")
        return real(path, *a, **kw)

    monkeypatch.setattr(isic, "read_image", counting)
    images = [p.name for split in ("Training", "Validation")
              for p in (isic_root / f"ISIC2018_Task1-2_{split}_Input").glob("*.jpg")]
    run = tmp_path / "run"
    assert cli.main(isic_train_args(isic_root, run, 2, "--cache-images", "--num-workers", "2",
                                    "--max-steps-per-epoch", "1")) == 0
    reads = log.read_text().split()
    assert sorted(reads) == sorted(images), "each train/val image should be decoded once"
