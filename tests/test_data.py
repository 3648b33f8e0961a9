"""Datasets on generated data in the real ISIC 2018 / BraTS 2021 layouts, and their errors."""
from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from raunet_fast import cli
from raunet_fast.data import (BraTS2021, ISIC2018, ImageMaskFolder, labels_to_regions,
                              make_brats2021, make_isic2018, regions_to_labels)
from raunet_fast.data.brats import crop_or_pad, load_case, uncrop
from raunet_fast.data.common import split_names

BRATS_SHAPE = (30, 28, 12)


@pytest.fixture(scope="module")
def isic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("isic")
    assert cli.main(["make-data", "--kind", "isic2018", "--out", str(root), "--cases", "10",
                     "--shape", "40x48", "--seed", "1"]) == 0
    return root


@pytest.fixture(scope="module")
def brats_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats")
    make_brats2021(root, 5, BRATS_SHAPE, seed=2, spacing=(1.0, 1.0, 2.0))
    return root


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------ ISIC 2018
def test_isic_layout_on_disk(isic_root):
    names = sorted(p.name for p in isic_root.iterdir())
    assert names == ["ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1-2_Training_Input",
                     "ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Test_GroundTruth",
                     "ISIC2018_Task1_Training_GroundTruth", "ISIC2018_Task1_Validation_GroundTruth"]
    images = sorted((isic_root / "ISIC2018_Task1-2_Training_Input").glob("*.jpg"))
    assert all(re.fullmatch(r"ISIC_\d{7}\.jpg", p.name) for p in images)
    assert list((isic_root / "ISIC2018_Task1-2_Training_Input").glob("*.txt"))
    for p in images:
        mask = isic_root / "ISIC2018_Task1_Training_GroundTruth" / f"{p.stem}_segmentation.png"
        m = Image.open(mask)
        assert m.mode == "L" and m.size == Image.open(p).size
        values = set(np.unique(np.asarray(m)).tolist())
        assert values <= {0, 255} and 255 in values
    sizes = {Image.open(p).size for p in images}
    assert len(sizes) > 1, "image sizes should vary like the real data"


def test_isic_dataset_items(isic_root):
    counts = {s: len(ISIC2018(isic_root, s)) for s in ("train", "val", "test")}
    assert counts == {"train": 6, "val": 2, "test": 2}
    ds = ISIC2018(isic_root, "train", image_size=(32, 24))
    item = ds[0]
    assert item["image"].shape == (3, 32, 24) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["mask"].shape == (1, 32, 24)
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    assert item["case"] == 0
    image, mask = ds.load_case(0)
    assert image.shape[:2] == mask.shape and mask.dtype == bool
    # the lesion is darker than the skin: data is not noise
    assert image[mask].mean() < image[~mask].mean() - 10


def test_isic_nested_mirror_layout(isic_root, tmp_path):
    root = tmp_path / "mirror" / "ISIC2018"
    for d in isic_root.iterdir():  # X/X/files, as some mirrors unpack
        shutil.copytree(d, root / d.name / d.name)
    ds = ISIC2018(tmp_path / "mirror", "val")
    assert len(ds) == 2 and ds[1]["mask"].shape[0] == 1


def test_isic_missing_ground_truth_is_a_clear_error(isic_root, tmp_path):
    root = _copy(isic_root, tmp_path)
    shutil.rmtree(root / "ISIC2018_Task1_Test_GroundTruth")
    with pytest.raises(FileNotFoundError, match="ISIC2018_Task1_Test_GroundTruth.*no ground truth"):
        ISIC2018(root, "test")
    ds = ISIC2018(root, "test", require_masks=False)
    assert not ds.has_masks and "mask" not in ds[0]


def test_isic_bad_files_are_named(isic_root, tmp_path):
    root = _copy(isic_root, tmp_path)
    gt = root / "ISIC2018_Task1_Training_GroundTruth"
    masks = sorted(gt.glob("*.png"))
    # mask of another size: reported, not resized
    Image.open(masks[0]).resize((11, 13)).save(masks[0])
    ds = ISIC2018(root, "train", image_size=(16, 16))
    with pytest.raises(ValueError, match=re.escape(masks[0].name) + ".*13x11"):
        ds[0]
    # corrupt image
    images = sorted((root / "ISIC2018_Task1-2_Training_Input").glob("*.jpg"))
    images[1].write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError, match=re.escape(images[1].name)):
        ds[1]
    # missing mask
    masks[2].unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(masks[2].name)):
        ISIC2018(root, "train")
    # empty input folder
    for p in (root / "ISIC2018_Task1-2_Validation_Input").glob("*.jpg"):
        p.unlink()
    with pytest.raises(ValueError, match="no ISIC_"):
        ISIC2018(root, "val")
    (tmp_path / "nothing-here").mkdir()
    with pytest.raises(FileNotFoundError, match="ISIC2018_Task1-2_Training_Input"):
        ISIC2018(tmp_path / "nothing-here")


# ------------------------------------------------------------------ folder
def test_image_mask_folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(7):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
            tmp_path / "images" / f"img{i}.png")
        suffix = "_mask" if i % 2 else ""
        Image.fromarray(((rng.random((20, 24)) > 0.5) * 255).astype(np.uint8)).save(
            tmp_path / "masks" / f"img{i}{suffix}.png")
    splits = {s: ImageMaskFolder(tmp_path, s, image_size=(16, 16)).names for s in ("train", "val", "test")}
    assert sorted(sum(splits.values(), [])) == [f"img{i}" for i in range(7)]
    assert splits == {s: ImageMaskFolder(tmp_path, s).names for s in splits}  # reproducible
    item = ImageMaskFolder(tmp_path, "all", image_size=(16, 16))[3]
    assert item["image"].shape == (3, 16, 16) and item["mask"].shape == (1, 16, 16)
    with pytest.raises(ValueError, match="img0.png has colour channels.*--convert-channels"):
        ImageMaskFolder(tmp_path, "all", grayscale=True)[0]
    gray = ImageMaskFolder(tmp_path, "all", grayscale=True, convert_channels=True)[0]["image"]
    assert gray.shape[0] == 1
    (tmp_path / "masks" / "img4.png").unlink()
    with pytest.raises(FileNotFoundError, match="img4.png"):
        ImageMaskFolder(tmp_path, "all")


def test_split_names_is_by_name_and_disjoint():
    names = [f"case{i:03d}" for i in range(40)]
    parts = {s: split_names(names, s) for s in ("train", "val", "test")}
    assert sorted(sum(parts.values(), [])) == names
    assert len(parts["val"]) == 6 and len(parts["test"]) == 6
    assert parts == {s: split_names(list(reversed(names)), s) for s in parts}
    assert parts["val"] != split_names(names, "val", seed=1)
    with pytest.raises(ValueError, match="at least 3"):
        split_names(names[:2], "train")


# ------------------------------------------------------------------ BraTS 2021
def test_brats_layout_on_disk(brats_root):
    cases = sorted(p.name for p in brats_root.iterdir())
    assert len(cases) == 5 and all(re.fullmatch(r"BraTS2021_\d{5}", c) for c in cases)
    folder = brats_root / cases[0]
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted(f"{cases[0]}_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2", "seg"))
    with gzip.open(folder / files[0]) as f:  # really gzip-compressed NIfTI-1
        assert f.read(348)[344:348] == b"n+1\x00"
    seg = nib.load(str(folder / f"{cases[0]}_seg.nii.gz"))
    assert seg.shape == BRATS_SHAPE
    assert seg.header.get_zooms() == (1.0, 1.0, 2.0)
    labels = set()
    for c in cases:
        s = np.asanyarray(nib.load(str(brats_root / c / f"{c}_seg.nii.gz")).dataobj)
        labels |= set(np.unique(s).tolist())
        flair = np.asanyarray(nib.load(str(brats_root / c / f"{c}_flair.nii.gz")).dataobj)
        assert flair.dtype == np.int16 and (flair[s > 0] > 0).all()  # tumour lies in the brain
        assert flair[s == 2].mean() > flair[(s == 0) & (flair > 0)].mean()  # oedema bright in FLAIR
    assert labels <= {0, 1, 2, 4} and {1, 2, 4} <= labels


def test_brats_regions_and_slices(brats_root):
    ds = BraTS2021(brats_root, "all", crop=24)
    item = ds[len(ds) // 2]
    assert item["image"].shape == (4, 24, 24) and item["mask"].shape == (3, 24, 24)
    m = item["mask"]
    assert bool((m[2] <= m[1]).all() and (m[1] <= m[0]).all()), "ET in TC in WT"
    case = ds.case(0)
    img, seg = np.asarray(case["image"], dtype=np.float32), np.asarray(case["seg"])
    assert img.shape == (BRATS_SHAPE[2], 4, *BRATS_SHAPE[:2])
    brain = (img != 0).any(1)
    for c in range(4):  # z-scored over brain voxels
        v = img[:, c][brain]
        assert abs(v.mean()) < 0.01 and abs(v.std() - 1) < 0.01
    assert case["spacing"] == (1.0, 1.0, 2.0)
    regions = labels_to_regions(seg)
    np.testing.assert_array_equal(regions[0], seg > 0)
    np.testing.assert_array_equal(regions[1], (seg == 1) | (seg == 4))
    np.testing.assert_array_equal(regions[2], seg == 4)
    np.testing.assert_array_equal(regions_to_labels(regions), seg)
    # image_size resizes the crop
    assert BraTS2021(brats_root, "all", crop=24, image_size=(16, 16))[0]["image"].shape == (4, 16, 16)


def test_brats_patient_split_and_oversampling(brats_root, tmp_path):
    parts = {s: BraTS2021(brats_root, s, crop=None) for s in ("train", "val", "test")}
    names = {s: set(d.names) for s, d in parts.items()}
    assert names["train"].isdisjoint(names["val"]) and names["val"].isdisjoint(names["test"])
    assert len(set().union(*names.values())) == 5
    assert names["val"] == set(BraTS2021(brats_root, "val", crop=None).names)
    train = parts["train"]
    assert all(train.case(i)["image"][z].any() for i, z in train.index)  # empty slices skipped
    w = train.sample_weights(4.0)
    assert set(w.unique().tolist()) <= {1.0, 4.0} and (w == 4.0).any()
    assert len(parts["val"]) == BRATS_SHAPE[2] * len(parts["val"].names)  # all slices
    # cached copy gives identical items
    cached = BraTS2021(brats_root, "train", crop=None, cache_dir=tmp_path / "cache")
    again = BraTS2021(brats_root, "train", crop=None, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").glob("*_image.npy"))
    for k in (0, len(train) - 1):
        torch.testing.assert_close(cached[k]["image"], train[k]["image"])
        torch.testing.assert_close(again[k]["image"], train[k]["image"])
        assert torch.equal(again[k]["mask"], train[k]["mask"])


def test_brats_lazy_index_reads_nothing_until_needed(brats_root, monkeypatch):
    from raunet_fast.data import brats

    eager = BraTS2021(brats_root, "train", crop=None)
    reads = []
    real = brats._load_nifti
    monkeypatch.setattr(brats, "_load_nifti", lambda path: (reads.append(path), real(path))[1])
    lazy = BraTS2021(brats_root, "train", crop=None, index_slices=False)
    assert reads == [] and lazy.names == eager.names
    lazy.case(0)
    assert len(reads) == 5  # four modalities and the segmentation of one case
    # the index is built on first use and equals the eager one
    assert (lazy.index, lazy.tumour, lazy.shapes, lazy.spacings) == \
        (eager.index, eager.tumour, eager.shapes, eager.spacings)
    assert len(lazy) == len(eager)
    torch.testing.assert_close(lazy[len(lazy) - 1]["image"], eager[len(eager) - 1]["image"])


def test_crop_roundtrip():
    x = torch.arange(2 * 9 * 11, dtype=torch.float32).reshape(2, 9, 11)
    for size in [(4, 6), (9, 11), (12, 14), (5, 13)]:
        back = uncrop(crop_or_pad(x, size), (9, 11), fill=-1)
        keep = back != -1
        assert torch.equal(back[keep], x[keep])
        assert keep[0].sum() == min(9, size[0]) * min(11, size[1])


def test_brats_bad_files_are_named(brats_root, tmp_path):
    root = _copy(brats_root, tmp_path)
    cases = sorted(p for p in root.iterdir())
    # corrupt volume
    bad = cases[0] / f"{cases[0].name}_t1.nii.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ValueError, match=re.escape(bad.name)):
        BraTS2021(root, "all")
    shutil.copy(brats_root / cases[0].name / bad.name, bad)
    # segmentation of another shape: reported, not resized
    seg_path = cases[1] / f"{cases[1].name}_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((30, 28, 11), np.uint8), np.eye(4)), str(seg_path))
    with pytest.raises(ValueError, match=re.escape(seg_path.name) + ".*not resized"):
        BraTS2021(root, "all")
    # labels outside 0/1/2/4
    nib.save(nib.Nifti1Image(np.full(BRATS_SHAPE, 3, np.uint8), np.eye(4)), str(seg_path))
    with pytest.raises(ValueError, match=r"labels \[3\]"):
        BraTS2021(root, "all")
    # missing modality
    (cases[2] / f"{cases[2].name}_t2.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=f"{cases[2].name}_t2.nii.gz"):
        BraTS2021(root, "all")
    with pytest.raises(ValueError, match="no BraTS2021_"):
        BraTS2021(tmp_path / "copy" / cases[0].name, "all")


def test_make_data_cli_errors(tmp_path, capsys):
    assert cli.main(["make-data", "--kind", "isic2018", "--out", str(tmp_path), "--cases", "2"]) == 2
    assert "at least 3" in capsys.readouterr().err
    assert cli.main(["make-data", "--kind", "brats2021", "--out", str(tmp_path), "--cases", "1",
                     "--shape", "20x20"]) == 2
    assert "XxYxZ" in capsys.readouterr().err


def test_generation_is_seeded(tmp_path):
    make_isic2018(tmp_path / "a", 3, (24, 24), seed=5)
    make_isic2018(tmp_path / "b", 3, (24, 24), seed=5)
    fa = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert fa == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.*"))
    for p in fa:
        assert (tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes()


def _isic_ids(root: Path) -> dict[str, set[str]]:
    return {s: {p.stem for p in (root / f"ISIC2018_Task1-2_{n}_Input").glob("*.jpg")}
            for s, n in (("train", "Training"), ("val", "Validation"), ("test", "Test"))}


def test_make_data_refuses_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "isic"
    args = ["make-data", "--kind", "isic2018", "--out", str(out), "--shape", "12x12"]
    assert cli.main(args + ["--cases", "5", "--seed", "1"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert cli.main(args + ["--cases", "9", "--seed", "2"]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # --overwrite replaces the data set: only the new cases, no id in two splits
    (out / "notes.txt").write_text("mine")
    assert cli.main(args + ["--cases", "9", "--seed", "2", "--overwrite"]) == 0
    ids = _isic_ids(out)
    assert sum(len(v) for v in ids.values()) == 9
    assert len(set().union(*ids.values())) == 9
    masks = {p.stem.replace("_segmentation", "") for p in out.glob("*GroundTruth/*.png")}
    assert masks == set().union(*ids.values())
    assert (out / "notes.txt").read_text() == "mine"
    fresh = tmp_path / "fresh"
    make_isic2018(fresh, 9, (12, 12), seed=2)
    assert _isic_ids(fresh) == ids

    # BraTS: the case folders of the earlier set are removed too
    bout = tmp_path / "brats"
    bargs = ["make-data", "--kind", "brats2021", "--out", str(bout), "--shape", "8x8x8"]
    assert cli.main(bargs + ["--cases", "3"]) == 0
    assert cli.main(bargs + ["--cases", "1", "--seed", "3"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert len(list(bout.iterdir())) == 3
    assert cli.main(bargs + ["--cases", "1", "--seed", "3", "--overwrite"]) == 0
    assert len(list(bout.iterdir())) == 1


def test_masks_stored_as_0_1_or_0_255(tmp_path):
    root = tmp_path / "isic"
    make_isic2018(root, 3, (16, 20), seed=7)
    gt = root / "ISIC2018_Task1_Training_GroundTruth"
    path = sorted(gt.glob("*.png"))[0]
    truth = np.asarray(Image.open(path)) == 255  # generated as 0/255
    assert truth.any() and not truth.all()
    ref = ISIC2018(root, "train", image_size=(8, 8))[0]["mask"]
    # the same mask stored as 0/1 (common in folder data sets) reads the same, not empty
    Image.fromarray(truth.astype(np.uint8)).save(path)
    assert np.asarray(Image.open(path)).max() == 1
    ds = ISIC2018(root, "train", image_size=(8, 8))
    np.testing.assert_array_equal(ds.load_case(0)[1], truth)
    assert torch.equal(ds[0]["mask"], ref)
    # a resampled 0/255 mask: anything above 127 is foreground
    rng = np.random.default_rng(torch.randint(0, 2**31, ()).item())
    vals = rng.choice(np.array([0, 1, 64, 127, 128, 200, 255], np.uint8), truth.shape)
    vals[0, 0] = 255
    Image.fromarray(vals).save(path)
    np.testing.assert_array_equal(ds.load_case(0)[1], np.isin(vals, [128, 200, 255]))
    # all background: an empty mask
    Image.fromarray(np.zeros_like(vals)).save(path)
    assert not ds.load_case(0)[1].any()
    # a small maximum other than 1 (label map, scaled mask) is ambiguous: an error naming it
    Image.fromarray((truth * 2).astype(np.uint8)).save(path)
    with pytest.raises(ValueError, match=re.escape(path.name) + r".*\{0, 2\}"):
        ds[0]


def test_make_data_bad_out_and_spacing(tmp_path, capsys):
    file = tmp_path / "a-file"
    file.write_text("keep")
    for kind in ("isic2018", "brats2021"):
        assert cli.main(["make-data", "--kind", kind, "--out", str(file), "--cases", "3",
                         "--shape", "8x8x8" if kind == "brats2021" else "8x8"]) == 2
        err = capsys.readouterr().err
        assert "a-file" in err and len(err.strip().splitlines()) == 1, err
    assert file.read_text() == "keep"
    for spacing in ("0x1x-1", "1x1", "1x1x1x1", "1xnanx1", "axbxc"):
        with pytest.raises(SystemExit) as e:
            cli.main(["make-data", "--kind", "brats2021", "--out", str(tmp_path / "b"),
                      "--cases", "1", "--shape", "8x8x8", "--spacing", spacing])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "--spacing" in err and "three positive" in err and "Traceback" not in err, err
    assert not (tmp_path / "b").exists()
    assert cli.main(["make-data", "--kind", "brats2021", "--out", str(tmp_path / "b"),
                     "--cases", "1", "--shape", "8x8x8", "--spacing", "0.5x1x2.5"]) == 0
    seg = next((tmp_path / "b").glob("*/*_seg.nii.gz"))
    assert nib.load(str(seg)).header.get_zooms() == (0.5, 1.0, 2.5)


def test_brats_cache_is_rebuilt_when_its_sources_change(brats_root, tmp_path):
    cache = tmp_path / "cache"
    root = tmp_path / "other-root"
    shutil.copytree(brats_root, root)
    a, b = sorted(p.name for p in root.iterdir())[:2]

    def assert_fresh(ds):
        refs = [load_case(folder) for folder in ds.folders]  # what the files on disk hold now
        for i, ref in enumerate(refs):
            np.testing.assert_array_equal(np.asarray(ds.case(i)["image"]), ref["image"])
            np.testing.assert_array_equal(np.asarray(ds.case(i)["seg"]), ref["seg"])
        # the slice index (cached too) says which slices hold tumour
        assert ds.tumour == [bool(refs[i]["seg"][z].any()) for i, z in ds.index]

    BraTS2021(brats_root, "all", crop=None, cache_dir=cache)
    # another data root with the same case names but other contents: case a holds case b's
    # volumes there
    for kind in ("flair", "t1", "t1ce", "t2", "seg"):
        shutil.copy(root / b / f"{b}_{kind}.nii.gz", root / a / f"{a}_{kind}.nii.gz")
    assert_fresh(BraTS2021(root, "all", crop=None, cache_dir=cache))
    # a file replaced in place under the same root
    shutil.copy(brats_root / a / f"{a}_t1ce.nii.gz", root / a / f"{a}_t1ce.nii.gz")
    shutil.copy(brats_root / a / f"{a}_seg.nii.gz", root / b / f"{b}_seg.nii.gz")
    ds = BraTS2021(root, "all", crop=None, cache_dir=cache)
    assert_fresh(ds)
    # unchanged sources: served from the cache (memory-mapped), not rebuilt
    assert isinstance(BraTS2021(root, "all", crop=None, cache_dir=cache).case(0)["image"], np.memmap)


def test_patches_stay_aligned_with_their_masks(tmp_path):
    """``patch``: image and mask cut at the same place, at native resolution (each mask here
    is the image's red channel > 127, so alignment is checkable pixel by pixel); random
    positions vary; small images are zero-padded. Without ``random_patches`` (validation)
    the tiles cover every image and their ``valid`` masks own each real pixel exactly once:
    putting the tiles back together over ``valid`` rebuilds the image."""
    rng = np.random.default_rng(1)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    sizes = {}
    for i, (h, w) in enumerate([(30, 41), (17, 20), (9, 12)]):  # the last < the patch
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(tmp_path / "images" / f"p{i}.png")
        Image.fromarray(((img[..., 0] > 127) * 255).astype(np.uint8)).save(
            tmp_path / "masks" / f"p{i}.png")
        sizes[f"p{i}"] = img
    for cache in (False, True):
        ds = ImageMaskFolder(tmp_path, "all", patch=(16, 16), random_patches=True, cache=cache)
        ds.fill_cache()
        assert len(ds) == 3 and ds.index is None
        for i in range(len(ds)):
            img = sizes[ds.names[i]]
            h, w = img.shape[:2]
            corners = set()
            for _ in range(12):
                item = ds[i]
                x, m = item["image"], item["mask"]
                assert x.shape == (3, 16, 16) and m.shape == (1, 16, 16) and "valid" not in item
                assert torch.equal(m[0] > 0.5, x[0] > 127.5 / 255), ds.names[i]
                corners.add(tuple(x[:, 0, 0].tolist()))
            if h > 16 and w > 16:
                assert len(corners) > 1  # the position is random
            else:  # padded bottom and right with zeros, image at the top left
                assert float(x[:, h:].abs().sum()) == 0 and float(x[:, :, w:].abs().sum()) == 0
                assert float(m[:, h:].sum()) == 0 and float(m[:, :, w:].sum()) == 0
                assert torch.equal((x[:, :h, :w] * 255).round().byte(),
                                   torch.from_numpy(img).permute(2, 0, 1))
        tiles = ImageMaskFolder(tmp_path, "all", patch=(16, 16), cache=cache)
        assert len(tiles) == len(tiles.index) == 6 + 4 + 1  # 30x41: 2 x 3 tiles; 17x20: 2 x 2
        for i, name in enumerate(tiles.names):
            img = torch.from_numpy(sizes[name]).permute(2, 0, 1).float() / 255
            h, w = img.shape[1:]
            canvas = torch.zeros(3, max(h, 16) + 16, max(w, 16) + 16)
            owned = torch.zeros(max(h, 16) + 16, max(w, 16) + 16)
            for j, (case, y, x0) in enumerate(tiles.index):
                if case != i:
                    continue
                item = tiles[j]
                assert item["case"] == i and torch.equal(item["mask"][0] > 0.5,
                                                         item["image"][0] > 127.5 / 255)
                v = item["valid"][0]
                canvas[:, y:y + 16, x0:x0 + 16] += item["image"] * v
                owned[y:y + 16, x0:x0 + 16] += v
            assert torch.equal(owned[:h, :w], torch.ones(h, w))  # every pixel once
            assert float(owned.sum()) == h * w  # nothing outside the image
            torch.testing.assert_close(canvas[:, :h, :w], img, rtol=0, atol=1e-6)
    # a context margin around random patches (for augmentation): real pixels around, zeros
    # beyond the image; the small image sits at (margin + 0, margin + 0)
    ctx = ImageMaskFolder(tmp_path, "all", patch=(16, 16), random_patches=True, context=(4, 3))
    for i, name in enumerate(ctx.names):
        item = ctx[i]
        x, m = item["image"], item["mask"]
        assert x.shape == (3, 24, 22) and m.shape == (1, 24, 22)
        assert torch.equal(m[0] > 0.5, x[0] > 127.5 / 255)
        img = torch.from_numpy(sizes[name]).permute(2, 0, 1)
        if name == "p2":  # 9 x 12 < 16 x 16: the patch starts at the image's corner
            assert torch.equal((x[:, 4:13, 3:15] * 255).round().byte(), img)
            assert float(x.sum()) == pytest.approx(float(img.float().sum() / 255), rel=1e-5)
    with pytest.raises(ValueError, match="exclude"):
        ImageMaskFolder(tmp_path, "all", patch=(16, 16), image_size=(8, 8))
    with pytest.raises(ValueError, match="patch"):
        ImageMaskFolder(tmp_path, "all", patch=(0, 16))


def test_grouped_sampler_keeps_groups_together():
    from raunet_fast.data.isic import GroupedSampler

    s = list(GroupedSampler(12, 3, torch.Generator().manual_seed(0)))
    assert sorted(s) == list(range(12)) and len(GroupedSampler(12, 3)) == 12
    groups = [s[i:i + 3] for i in range(0, 12, 3)]
    assert all(g == list(range(g[0], g[0] + 3)) and g[0] % 3 == 0 for g in groups)
    orders = {tuple(GroupedSampler(40, 4, torch.Generator().manual_seed(k))) for k in range(5)}
    assert len(orders) > 1  # shuffled
    assert list(GroupedSampler(40, 4, torch.Generator().manual_seed(7))) == \
        list(GroupedSampler(40, 4, torch.Generator().manual_seed(7)))  # reproducible
    with pytest.raises(ValueError, match="whole groups"):
        GroupedSampler(10, 3)


def test_patches_per_image_decodes_each_image_once(tmp_path, monkeypatch):
    """``patches_per_image`` K: K random patches per image (item j from image j // K), each
    aligned with its mask and at its own position; in grouped order every image is decoded
    once for its K patches (no cache)."""
    from raunet_fast.data import isic
    from raunet_fast.data.isic import GroupedSampler

    rng = np.random.default_rng(2)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i, (h, w) in enumerate([(40, 37), (33, 50), (29, 29)]):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(tmp_path / "images" / f"q{i}.png")
        Image.fromarray(((img[..., 0] > 127) * 255).astype(np.uint8)).save(
            tmp_path / "masks" / f"q{i}.png")
    reads = []
    real = isic.read_image

    def counting(path, *a, **kw):
        reads.append(Path(path).name)
        return real(path, *a, **kw)

    monkeypatch.setattr(isic, "read_image", counting)
    ds = ImageMaskFolder(tmp_path, "all", patch=(12, 12), random_patches=True,
                         patches_per_image=4)
    assert len(ds) == 12
    order = list(GroupedSampler(len(ds), 4, torch.Generator().manual_seed(1)))
    corners = {}
    for j in order:
        item = ds[j]
        assert item["case"] == j // 4
        assert torch.equal(item["mask"][0] > 0.5, item["image"][0] > 127.5 / 255)
        corners.setdefault(j // 4, set()).add(tuple(item["image"][:, 0, 0].tolist()))
    assert sorted(reads) == sorted(f"q{i}.png" for i in range(3)), reads  # once per image
    assert all(len(c) > 1 for c in corners.values())  # K patches at K positions
    with pytest.raises(ValueError, match="patches_per_image"):
        ImageMaskFolder(tmp_path, "all", patch=(12, 12), patches_per_image=2)  # tiles
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="patches_per_image"):
            ImageMaskFolder(tmp_path, "all", patch=(12, 12), random_patches=True,
                            patches_per_image=bad)
    with pytest.raises(ValueError, match="patches_per_image"):   # resized items: no patches
        ImageMaskFolder(tmp_path, "all", image_size=(16, 16), random_patches=True,
                        patches_per_image=2)
