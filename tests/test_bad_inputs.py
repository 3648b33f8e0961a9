"""A corpus of broken files fed to the CLI and the loaders: every one ends with exit code 2
and one line naming the file (no traceback), and no output file is replaced or half-written.

The corpus: zero-byte, wrong type, truncated after the header, decompression bomb, a mask
of the wrong size, a mask with ambiguous values, NaN / Inf voxels in a NIfTI volume.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from raunet_fast import cli
from raunet_fast.data import make_brats2021
from raunet_fast.models import build_model

TINY = ["--base-channels", "4", "--depth", "2", "--no-progress", "--device", "cpu"]


def _noise_png(path: Path, hw=(24, 20)) -> None:
    rng = np.random.default_rng(len(path.name))
    Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(path)


def _mask_png(path: Path, hw=(24, 20), values=(0, 255)) -> None:
    m = np.full(hw, values[0], np.uint8)
    m[hw[0] // 4:hw[0] // 2, 2:hw[1] - 2] = values[1]
    Image.fromarray(m).save(path)


def _truncated(path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


BROKEN_IMAGES = {  # name -> writer; each fails on the image itself
    "zero.png": lambda p: p.write_bytes(b""),
    "text.png": lambda p: p.write_text("this is not an image\n"),
    "cut.png": _truncated,
    "bomb.png": lambda p: Image.new("1", (20000, 20000)).save(p, optimize=True),
}
BROKEN_MASKS = {  # name -> (mask writer, the words of the error)
    "small.png": (lambda p: _mask_png(p, (10, 10)), "must have the size"),
    "labels.png": (lambda p: _mask_png(p, values=(0, 5)), "0/255"),
}


def _folder_data(root: Path) -> Path:
    """A folder data set with explicit train / val splits of good images."""
    for split, n in (("train", 4), ("val", 2)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            _noise_png(root / split / "images" / f"{split}{i}.png")
            _mask_png(root / split / "masks" / f"{split}{i}.png")
    return root


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(capsys, command: str, *words: str) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"raunet-fast {command}: error:"), err
    for w in words:
        assert w in err, (w, err)
    return err


def _train(root: Path, out: Path, *extra: str) -> int:
    return cli.main(["train", "--dataset", "folder", "--data-root", str(root), "--out", str(out),
                     "--epochs", "1", "--batch-size", "2", "--image-size", "16",
                     "--num-workers", "1", *TINY, *extra])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ck") / "best"
    torch.manual_seed(0)
    build_model("unet", base_channels=4, depth=2).eval().save_pretrained(path)
    (path / "preprocessing.json").write_text(json.dumps(
        {"dataset": "folder", "image_size": [16, 16], "threshold": 0.5, "split_seed": 0}))
    return path


@pytest.mark.parametrize("name", sorted(BROKEN_IMAGES))
def test_broken_image_train_evaluate_predict(name, checkpoint, tmp_path, capsys):
    root = _folder_data(tmp_path / "data")
    BROKEN_IMAGES[name](root / "train" / "images" / name)
    _mask_png(root / "train" / "masks" / name)
    # train: the file is decoded in a DataLoader worker process
    assert _train(root, tmp_path / "run") == 2
    _one_line(capsys, "train", name)
    assert not (tmp_path / "run" / "last").exists() and not (tmp_path / "run" / "best").exists()
    # evaluate on the split that holds it
    assert cli.main(["evaluate", "--checkpoint", str(checkpoint), "--dataset", "folder",
                     "--data-root", str(root), "--split", "train", "--out",
                     str(tmp_path / "ev"), "--no-progress", "--device", "cpu"]) == 2
    _one_line(capsys, "evaluate", name)
    assert _files(tmp_path / "ev") == []
    # predict: refused before anything is written; outputs from an earlier run untouched
    out = tmp_path / "pred"
    good = tmp_path / "good"
    shutil.copytree(root / "val" / "images", good)
    assert cli.main(["predict", "--checkpoint", str(checkpoint), "--input", str(good),
                     "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    before = _tree_digest(out)
    shutil.copy(root / "train" / "images" / name, good / name)
    assert cli.main(["predict", "--checkpoint", str(checkpoint), "--input", str(good),
                     "--out", str(out), "--no-progress", "--device", "cpu",
                     "--skip-existing"]) == 2
    _one_line(capsys, "predict", name)
    assert _tree_digest(out) == before


@pytest.mark.parametrize("name", sorted(BROKEN_MASKS))
def test_broken_mask_train_and_evaluate(name, checkpoint, tmp_path, capsys):
    root = _folder_data(tmp_path / "data")
    writer, words = BROKEN_MASKS[name]
    _noise_png(root / "train" / "images" / name)
    writer(root / "train" / "masks" / name)
    assert _train(root, tmp_path / "run") == 2
    _one_line(capsys, "train", name, words)
    assert cli.main(["evaluate", "--checkpoint", str(checkpoint), "--dataset", "folder",
                     "--data-root", str(root), "--split", "train", "--no-progress",
                     "--device", "cpu"]) == 2
    _one_line(capsys, "evaluate", name, words)


def test_worker_error_line_is_the_original_error(tmp_path, capsys):
    """The message torch's DataLoader gives an error from a worker (the whole traceback)
    comes out as the original error's line only."""
    root = _folder_data(tmp_path / "data")
    (root / "train" / "images" / "zero.png").write_bytes(b"")
    _mask_png(root / "train" / "masks" / "zero.png")
    from raunet_fast.data import ImageMaskFolder

    loader = torch.utils.data.DataLoader(ImageMaskFolder(root, "train", image_size=(16, 16)),
                                         batch_size=8, num_workers=1)
    with pytest.raises(ValueError) as info:
        next(iter(loader))
    assert "Traceback" in str(info.value) and len(str(info.value)) > 300  # torch's wrapping
    line = cli.error_line(info.value)
    assert line.startswith(f"cannot read image {root / 'train' / 'images' / 'zero.png'}: "), line
    assert "Traceback" not in line and len(line) < 300, line


def _nan_case(root: Path, value: float) -> Path:
    """Make 3 BraTS cases and put ``value`` into 5 voxels of every flair; returns the first
    case's flair."""
    make_brats2021(root, 3, (20, 22, 8), seed=1)
    cases = sorted(p for p in root.rglob("BraTS2021_*") if p.is_dir())
    for case in cases:
        flair = case / f"{case.name}_flair.nii.gz"
        img = nib.load(str(flair))
        data = np.asarray(img.dataobj).astype(np.float32)
        data.flat[[3, 50, 400, 700, 1000]] = value  # (reshape would copy: F order)
        header = img.header.copy()
        header.set_data_dtype(np.float32)  # the generator writes int16, which has no NaN
        nib.save(nib.Nifti1Image(data, img.affine, header), str(flair))
    return cases[0] / f"{cases[0].name}_flair.nii.gz"


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_voxels_are_named_with_their_count(value, tmp_path, capsys):
    flair = _nan_case(tmp_path / "brats", value)
    case = flair.parent
    ck = tmp_path / "ck"
    build_model("unet", in_channels=4, out_channels=3, base_channels=4, depth=2).eval() \
        .save_pretrained(ck)
    (ck / "preprocessing.json").write_text(json.dumps(
        {"dataset": "brats2021", "image_size": [16, 16], "crop": 16, "threshold": 0.5}))
    out = tmp_path / "pred"
    argv = ["predict", "--checkpoint", str(ck), "--input", str(case), "--out", str(out),
            "--no-progress", "--device", "cpu"]
    assert cli.main(argv) == 2
    _one_line(capsys, "predict", flair.name, "5 NaN / Inf voxels", "--nan-to-num")
    assert _files(out) == []
    assert cli.main([*argv, "--nan-to-num"]) == 0
    assert (out / f"{case.name}_pred_seg.nii.gz").is_file()
    run = tmp_path / "run"
    assert cli.main(["train", "--dataset", "brats2021", "--data-root", str(tmp_path / "brats"),
                     "--out", str(run), "--epochs", "1", "--batch-size", "2", "--crop", "16",
                     "--num-workers", "0", "--split-seed", "0", *TINY]) == 2
    _one_line(capsys, "train", "_flair.nii.gz holds 5 NaN / Inf voxels")
