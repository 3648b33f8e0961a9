"""``evaluate`` and ``predict`` with 3-D checkpoints (spatial_dims=3) on generated BraTS and
NIfTI-folder volumes: scores recomputed here from the saved NIfTI files with numpy and
scipy (anisotropic spacing from the headers), predictions against evaluation's and
against the model run on the whole volume here, and the one-line errors."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from raunet_fast import cli
from raunet_fast.data import make_brats2021
from raunet_fast.data.generate import make_nifti_folder
from raunet_fast.models import build_model

SHAPE = (20, 18, 12)  # X, Y, Z of the generated volumes: unequal, Y not a multiple of 4
PATCH = [8, 12, 12]   # D, H, W training patch recorded with the checkpoints
BRATS_WT_TC_ET = ((1, 2, 4), (1, 4), (4,))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data3d")
    make_brats2021(root / "brats", 4, SHAPE, seed=1, spacing=(1.0, 1.5, 2.5))
    make_nifti_folder(root / "nifti", 4, SHAPE, seed=2, spacing=(0.8, 1.1, 3.0), channels=2)
    return {"brats2021": root / "brats", "nifti-folder": root / "nifti"}


def _image_files(data: dict[str, Path], dataset: str) -> list[Path]:
    if dataset == "brats2021":
        return sorted(data[dataset].glob("BraTS2021_*/*_flair.nii.gz"))
    return sorted((data[dataset] / "images").glob("*.nii.gz"))


def _make_checkpoint(path: Path, dataset: str, cin: int, cout: int, volumes) -> Path:
    """A tiny 3-D RAUNet with non-trivial BatchNorm statistics and head biases that put about
    half of the voxels of ``volumes`` above the threshold (masks with real surfaces)."""
    torch.manual_seed(0)
    model = build_model("raunet", in_channels=cin, out_channels=cout, base_channels=4, depth=3,
                        spatial_dims=3)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(volumes)
        model.eval()
        logits = model(volumes).transpose(0, 1).reshape(cout, -1)
        model.head.bias -= logits.median(1).values
    model.save_pretrained(path)
    prep = {"dataset": dataset, "spatial_dims": 3, "image_size": None, "patch": PATCH,
            "crop": None, "in_channels": cin, "regions": None,
            "labels": [1, 2] if dataset == "nifti-folder" else None, "threshold": 0.5,
            "output": "sigmoid per channel", "split_seed": 0,
            "normalization": "z-score per channel over non-zero voxels", "foreground_ratio": 0.33}
    (path / "preprocessing.json").write_text(json.dumps(prep))
    return path


@pytest.fixture(scope="module")
def checkpoints(data, tmp_path_factory) -> dict[str, Path]:
    from raunet_fast.data.volumes import build_volumes

    root = tmp_path_factory.mktemp("ck3d")
    out = {}
    for dataset, (cin, cout) in (("brats2021", (4, 3)), ("nifti-folder", (2, 2))):
        vols = build_volumes(dataset, data[dataset], "all")
        x = torch.stack([vols.volume(i).image for i in range(2)])
        out[dataset] = _make_checkpoint(root / dataset, dataset, cin, cout, x)
    return out


def _evaluate(ck: Path, dataset: str, root: Path, out: Path, *extra: str) -> int:
    return cli.main(["evaluate", "--checkpoint", str(ck), "--dataset", dataset, "--data-root",
                     str(root), "--split", "train", "--out", str(out), "--no-progress",
                     "--device", "cpu", *extra])


def _predict(ck: Path, input: Path, out: Path, *extra: str) -> int:
    return cli.main(["predict", "--checkpoint", str(ck), "--input", str(input), "--out",
                     str(out), "--no-progress", "--device", "cpu", *extra])


@pytest.fixture(scope="module")
def evaluated(data, checkpoints, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ev3d")
    for dataset in data:
        assert _evaluate(checkpoints[dataset], dataset, data[dataset], root / dataset,
                         "--save-predictions", "--overlap", "0.5") == 0
    return {d: root / d for d in data}


def _read(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img


def _hd_hd95(a: np.ndarray, b: np.ndarray, spacing) -> tuple[float, float]:
    """Hausdorff and HD95 of two non-empty masks, written out with scipy: the surface is
    the mask minus its face-connected erosion, distances by Euclidean distance transforms
    with the voxel spacing, HD95 the 95th percentile of both directions pooled."""
    st = ndimage.generate_binary_structure(a.ndim, 1)
    sa, sb = a & ~ndimage.binary_erosion(a, st), b & ~ndimage.binary_erosion(b, st)
    d_ab = ndimage.distance_transform_edt(~sb, sampling=spacing)[sa]
    d_ba = ndimage.distance_transform_edt(~sa, sampling=spacing)[sb]
    both = np.concatenate([d_ab, d_ba])
    return float(both.max()), float(np.percentile(both, 95))


def _truth_and_regions(data, dataset: str, case: str):
    """The case's ground-truth label file (read here), its image file, and the label values
    of each scored region."""
    if dataset == "brats2021":
        folder = data[dataset] / case
        return folder / f"{case}_seg.nii.gz", folder / f"{case}_flair.nii.gz", \
            dict(zip(("WT", "TC", "ET"), BRATS_WT_TC_ET))
    root = data[dataset]
    return root / "labels" / f"{case}.nii.gz", root / "images" / f"{case}.nii.gz", \
        {"label1": (1,), "label2": (2,)}


@pytest.mark.parametrize("dataset", ["brats2021", "nifti-folder"])
def test_evaluate_scores_match_numpy_and_scipy(data, evaluated, dataset):
    out = evaluated[dataset]
    with open(out / "cases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == len(rows) == 2 and summary["distance_unit"] == "mm"
    assert summary["window"] == PATCH and summary["overlap"] == 0.5
    distance_checked, spacing_matters = 0, False
    for row in rows:
        truth_file, image_file, regions = _truth_and_regions(data, dataset, row["case"])
        pred, pred_img = _read(out / "predictions" / f"{row['case']}.nii.gz")
        truth, _ = _read(truth_file)
        ref = nib.load(str(image_file))
        np.testing.assert_array_equal(pred_img.affine, ref.affine)
        assert pred.shape == SHAPE and pred.dtype == np.uint8
        assert pred_img.header.get_zooms()[:3] == ref.header.get_zooms()[:3]
        spacing = [float(z) for z in ref.header.get_zooms()[:3]]  # X, Y, Z: anisotropic
        for region, values in regions.items():
            p, t = np.isin(pred, values), np.isin(truth, values)
            inter, total = np.logical_and(p, t).sum(), p.sum() + t.sum()
            dice = 2 * inter / total if total else 1.0
            assert float(row[f"dice_{region}"]) == pytest.approx(dice, abs=1e-9), region
            assert float(row[f"jaccard_{region}"]) == pytest.approx(
                inter / (total - inter) if total else 1.0, abs=1e-9)
            if p.any() and t.any():
                hd, hd95 = _hd_hd95(p, t, spacing)
                assert float(row[f"hd_{region}"]) == pytest.approx(hd, rel=1e-6)
                assert float(row[f"hd95_{region}"]) == pytest.approx(hd95, rel=1e-6)
                spacing_matters |= abs(_hd_hd95(p, t, [1.0] * 3)[1] - hd95) > 1e-3
                distance_checked += 1
    assert distance_checked >= 2 and spacing_matters
    mean = np.mean([float(r[f"dice_{next(iter(regions))}"]) for r in rows])
    assert summary["metrics"][next(iter(regions))]["dice"]["mean"] == pytest.approx(mean)


@pytest.mark.parametrize("dataset,suffix", [("brats2021", "_pred_seg.nii.gz"),
                                            ("nifti-folder", ".nii.gz")])
def test_predict_writes_evaluations_labels(data, checkpoints, evaluated, tmp_path, capsys,
                                           dataset, suffix):
    out = tmp_path / "pred"
    ck = checkpoints[dataset]
    assert _predict(ck, data[dataset], out, "--overlap", "0.5") == 0
    assert "wrote 4 segmentations for 4 volumes" in capsys.readouterr().out
    images = _image_files(data, dataset)
    names = sorted(p.name for p in out.iterdir())
    cases = [p.parent.name if dataset == "brats2021" else p.name[:-len(".nii.gz")]
             for p in images]
    assert names == sorted([f"{c}{suffix}" for c in cases] + ["predict_config.json"])
    for case, image in zip(cases, images):
        pred, img = _read(out / f"{case}{suffix}")
        np.testing.assert_array_equal(img.affine, nib.load(str(image)).affine)
        assert pred.dtype == np.uint8 and pred.shape == SHAPE
        saved = evaluated[dataset] / "predictions" / f"{case}.nii.gz"
        if saved.exists():  # the cases evaluation scored: the same label map
            np.testing.assert_array_equal(pred, _read(saved)[0])
            assert len(np.unique(pred)) > 2
    # existing outputs: refused, skipped, or replaced
    assert _predict(ck, data[dataset], out) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--overwrite" in err, err
    assert _predict(ck, data[dataset], out, "--skip-existing") == 0
    assert "4 volumes already done, skipped" in capsys.readouterr().out
    assert _predict(ck, data[dataset], out, "--overwrite", "--overlap", "0.5") == 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files


def _zscore(raw: np.ndarray) -> np.ndarray:
    """X x Y x Z x C -> C x Z x X x Y, z-scored per channel over the voxels where any
    channel is non-zero (the documented normalisation), 0 elsewhere, in fp64."""
    inside = (raw != 0).any(-1)
    out = np.zeros(raw.shape, dtype=np.float64)
    for c in range(raw.shape[-1]):
        vals = raw[..., c][inside]
        out[..., c][inside] = (vals - vals.mean()) / vals.std()
    return out.transpose(3, 2, 0, 1)


def _flip_mean(model, x: torch.Tensor) -> torch.Tensor:
    """The mean of the model's predictions over the 8 flips of a volume, written out."""
    total = 0
    for fd in (False, True):
        for fh in (False, True):
            for fw in (False, True):
                dims = [d for d, on in ((2, fd), (3, fh), (4, fw)) if on]
                y = model(x.flip(dims)) if dims else model(x)
                total = total + (y.flip(dims) if dims else y)
    return total / 8


def test_predict_one_file_equals_the_model_on_the_whole_volume(data, checkpoints, tmp_path):
    """One .nii.gz file, a window covering the volume padded to the size multiple: the
    label map is the model run here on the whole volume (normalised here from the raw
    file), each channel > 0.5, the most probable label where both are on. Per-channel
    files give the same; --tta is the mean over the 8 flips."""
    from raunet_fast.hub import from_pretrained

    ck = checkpoints["nifti-folder"]
    model = from_pretrained(ck).eval()
    image = _image_files(data, "nifti-folder")[0]
    x = torch.from_numpy(_zscore(np.asanyarray(nib.load(str(image)).dataobj))).float()[None]
    window = ["--window", "12x20x20"]
    # TTA flips each window, padded (here: the volume padded along W to the window)
    def padded_tta(v):
        return _flip_mean(model, torch.nn.functional.pad(v, (0, 2)))[..., :18]

    for tta, forward in ((False, model), (True, padded_tta)):
        out = tmp_path / f"one{tta}"
        assert _predict(ck, image, out, *window, *(["--tta"] if tta else [])) == 0
        with torch.no_grad():
            logits = forward(x)[0].numpy()
        on = logits > 0
        want = np.where(on.any(0), np.where(on[1] & (~on[0] | (logits[1] > logits[0])), 2, 1),
                        0).transpose(1, 2, 0)
        got = _read(out / image.name)[0]
        assert set(np.unique(got).tolist()) == {0, 1, 2}
        assert (got != want).sum() <= 3, (got != want).sum()  # float ties at the threshold
    per_channel = tmp_path / "per-channel"
    make_nifti_folder(per_channel, 4, SHAPE, seed=2, spacing=(0.8, 1.1, 3.0), channels=2,
                      per_channel_files=True)
    assert _predict(ck, per_channel / "images", tmp_path / "pc", *window) == 0
    assert _predict(ck, image, tmp_path / "single", *window) == 0
    np.testing.assert_array_equal(_read(tmp_path / "pc" / image.name)[0],
                                  _read(tmp_path / "single" / image.name)[0])


def _one_line(capsys, command: str, *words: str) -> None:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"raunet-fast {command}: error:"), err
    for w in words:
        assert w in err, (w, err)


def test_errors_are_one_line(data, checkpoints, tmp_path, capsys):
    ck3, ckb = checkpoints["nifti-folder"], checkpoints["brats2021"]
    nifti, out = data["nifti-folder"], tmp_path / "out"
    ck2 = tmp_path / "ck2d"
    build_model("unet", in_channels=2, out_channels=2, base_channels=4,
                depth=3).save_pretrained(ck2)
    (ck2 / "preprocessing.json").write_text(json.dumps({"image_size": [16, 16]}))
    ev = lambda ck, *a: lambda: _evaluate(ck, "nifti-folder", nifti, out, *a)  # noqa: E731
    pr = lambda ck, *a: lambda: _predict(ck, nifti, out, *a)  # noqa: E731
    cases = [
        ("evaluate", ev(ck2), ("2-D model", "nifti-folder")),
        ("evaluate", lambda: _evaluate(ck3, "folder", nifti, out), ("trained on 'nifti-folder'",)),
        ("evaluate", ev(ck3, "--window", "8x8"), ("--window 8x8", "DxHxW")),
        ("evaluate", ev(ck3, "--image-size", "16"), ("--image-size", "3-D")),
        ("evaluate", ev(ck3, "--crop", "8"), ("--crop", "3-D")),
        ("evaluate", ev(ckb), ("trained on 'brats2021'",)),
        ("predict", pr(ck3, "--window", "16x16"), ("2 sizes", "DxHxW")),
        ("predict", pr(ck3, "--probabilities"), ("--probabilities",)),
        ("predict", pr(ckb), ("BraTS",)),
    ]
    for command, call, words in cases:
        capsys.readouterr()
        assert call() == 2, words
        _one_line(capsys, command, *words)
    # a 3-D model on 2-D data (no data set recorded): isic2018, a PNG file
    bare = tmp_path / "bare3d"
    shutil.copytree(ck3, bare)
    (bare / "preprocessing.json").write_text(json.dumps({"patch": PATCH}))
    assert _evaluate(bare, "isic2018", nifti, out) == 2
    _one_line(capsys, "evaluate", "3-D model", "isic2018")
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(png)
    assert _predict(bare, png, out) == 2
    _one_line(capsys, "predict", "x.png", "not a NIfTI file")
    # channels the model does not take (three-channel volumes for a two-channel model)
    three = tmp_path / "three"
    make_nifti_folder(three, 3, SHAPE, seed=4, channels=3)
    assert _evaluate(ck3, "nifti-folder", three, out) == 2
    _one_line(capsys, "evaluate", "2 input", "needs 3")
    assert _predict(ck3, three, out) == 2
    _one_line(capsys, "predict", "3 channels", "takes 2")
    # no patch recorded and no --window
    (bare / "preprocessing.json").write_text(json.dumps({"dataset": "nifti-folder"}))
    assert _predict(bare, nifti, out) == 2
    _one_line(capsys, "predict", "--window DxHxW")
    assert not out.exists()  # no error above created the output folder


def test_fused_3d_gives_the_reference_labels(data, checkpoints, tmp_path, capsys):
    """--fused runs the fused 3-D form: the labels are the reference model's up to float
    rounding at the threshold."""
    ck, image = checkpoints["nifti-folder"], _image_files(data, "nifti-folder")[0]
    assert _predict(ck, image, tmp_path / "ref") == 0
    capsys.readouterr()
    assert _predict(ck, image, tmp_path / "fused", "--fused", "--dtype", "fp32") == 0
    ref, fused = (_read(tmp_path / d / image.name)[0] for d in ("ref", "fused"))
    assert (ref != fused).sum() <= 5


def test_unreadable_volume_is_skipped_with_skip_errors(data, checkpoints, tmp_path, capsys):
    ck = checkpoints["nifti-folder"]
    folder = tmp_path / "images"
    shutil.copytree(data["nifti-folder"] / "images", folder)
    (folder / "broken.nii.gz").write_bytes(b"not a gzip stream")
    assert _predict(ck, folder, tmp_path / "a") == 2
    _one_line(capsys, "predict", "broken.nii.gz")
    assert not (tmp_path / "a").exists()
    assert _predict(ck, folder, tmp_path / "b", "--skip-errors") == 2
    captured = capsys.readouterr()
    assert "wrote 4 segmentations for 4 volumes" in captured.out
    assert "broken.nii.gz" in captured.err and "1 input could not be read" in captured.err
    assert sorted(p.name for p in (tmp_path / "b").glob("*.nii.gz")) == \
        sorted(p.name for p in (data["nifti-folder"] / "images").glob("*.nii.gz"))
