"""Whole-volume data (raunet_fast.data.volumes): BraTS and the NIfTI folder layout, read
back against nibabel and numpy directly."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from raunet_fast.data import make_brats2021
from raunet_fast.data.brats import BraTS2021
from raunet_fast.data.generate import make_nifti_folder
from raunet_fast.data.volumes import (NiftiFolder, build_volumes, from_nifti_axes,
                                      to_nifti_axes)

SHAPE = (21, 18, 11)  # X, Y, Z: odd, unequal


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats3d")
    make_brats2021(root, 4, SHAPE, seed=3, spacing=(1.0, 1.5, 2.5))
    return root


@pytest.fixture(scope="module")
def nifti(tmp_path_factory):
    root = tmp_path_factory.mktemp("nifti")
    make_nifti_folder(root, 4, SHAPE, seed=5, spacing=(0.8, 1.0, 3.0), channels=3)
    return root


def test_axes_round_trip():
    a = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # C x D x H x W
    b = to_nifti_axes(a)
    assert b.shape == (4, 5, 3, 2)
    assert b[1, 2, 0, 1] == a[1, 0, 1, 2]
    assert np.array_equal(from_nifti_axes(to_nifti_axes(a[0])), a[0])


def test_brats_volume_is_the_stack_of_its_slices(brats):
    vols = build_volumes("brats2021", brats, "all")
    slices = BraTS2021(brats, "all", crop=None, skip_empty=False)
    v = vols.volume(1)
    assert v.image.shape == (4, SHAPE[2], SHAPE[0], SHAPE[1])
    items = [slices[k] for k, (i, _) in enumerate(slices.index) if i == 1]
    assert torch.equal(v.image, torch.stack([it["image"] for it in items], 1))
    assert torch.equal(v.regions.float(), torch.stack([it["mask"] for it in items], 1))
    assert v.spacing == (2.5, 1.0, 1.5)
    seg = nib.load(str(brats / v.name / f"{v.name}_seg.nii.gz")).get_fdata()
    assert np.array_equal(to_nifti_axes(vols.to_labels(v.regions.numpy())), seg)


def _zscore(raw: np.ndarray) -> np.ndarray:  # X x Y x Z x C, computed here independently
    inside = (raw != 0).any(-1)
    out = np.zeros(raw.shape, dtype=np.float64)
    for c in range(raw.shape[-1]):
        vals = raw[..., c][inside].astype(np.float64)
        out[..., c][inside] = (vals - vals.mean()) / vals.std()
    return out


def test_nifti_folder_matches_nibabel(nifti):
    ds = NiftiFolder(nifti, "all")
    assert ds.channels == 3 and ds.labels == (1, 2) and ds.region_names == ("label1", "label2")
    v = ds.volume(2)
    raw = nib.load(str(nifti / "images" / f"{v.name}.nii.gz")).get_fdata()
    want = _zscore(raw)
    got = to_nifti_axes(v.image.numpy())
    assert got.shape == raw.shape
    np.testing.assert_allclose(got, want, atol=2e-5)
    seg = nib.load(str(nifti / "labels" / f"{v.name}.nii.gz")).get_fdata()
    for k, value in enumerate((1, 2)):
        assert np.array_equal(to_nifti_axes(v.regions[k].numpy()), seg == value)
    assert np.array_equal(to_nifti_axes(ds.to_labels(v.regions.numpy())), seg)
    assert v.spacing == pytest.approx((3.0, 0.8, 1.0))


def test_per_channel_files_and_scanned_labels_agree(nifti, tmp_path):
    make_nifti_folder(tmp_path, 4, SHAPE, seed=5, spacing=(0.8, 1.0, 3.0), channels=3,
                      per_channel_files=True, dataset_json=False)
    a, b = NiftiFolder(nifti, "all"), NiftiFolder(tmp_path, "all")
    assert b.labels == a.labels and b.names == a.names and b.channels == 3
    assert torch.equal(a.volume(0).image, b.volume(0).image)


def test_to_labels_most_probable_wins(nifti):
    ds = NiftiFolder(nifti, "all")
    masks = np.array([[[[1, 1, 0]]], [[[1, 0, 0]]]], dtype=bool)  # 2 x 1 x 1 x 3
    probs = np.array([[[[0.6, 0.9, 0.1]]], [[[0.8, 0.2, 0.3]]]])
    assert ds.to_labels(masks, probs).tolist() == [[[2, 1, 0]]]


def test_nifti_folder_errors(nifti, tmp_path):
    with pytest.raises(FileNotFoundError, match="no images/ folder"):
        NiftiFolder(tmp_path)
    bad = tmp_path / "bad"
    make_nifti_folder(bad, 3, SHAPE, channels=1)
    name = sorted(p.name for p in (bad / "labels").iterdir())[0]
    (bad / "labels" / name).unlink()
    with pytest.raises(FileNotFoundError, match="no label file"):
        NiftiFolder(bad, "all")
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)),
             str(bad / "labels" / name))
    ds = NiftiFolder(bad, "all")
    with pytest.raises(ValueError, match="has shape"):
        ds.volume(0)
    (bad / "dataset.json").write_text(json.dumps({"labels": ["background"]}))
    with pytest.raises(ValueError, match="cannot read its"):
        NiftiFolder(bad, "all")
    with pytest.raises(ValueError, match="not a volume data set"):
        build_volumes("isic2018", bad, "all")
