"""3-D training (``train --spatial-dims 3 --patch DxHxW``) on generated BraTS and NIfTI-folder
volumes: runs, resume, preprocessing.json; patch sampling (foreground ratio, padding,
seeding) and tile validation checked against the volumes read directly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

import raunet_fast
from raunet_fast import cli
from raunet_fast.config import TrainConfig
from raunet_fast.data import make_brats2021
from raunet_fast.data.generate import make_nifti_folder
from raunet_fast.data.volume_patches import VolumePatches, VolumeTiles, header_shapes
from raunet_fast.data.volumes import build_volumes
from raunet_fast.engine import Trainer
from raunet_fast.engine.training import validate
from raunet_fast.io.checkpoints import read_preprocessing
from raunet_fast.io.tables import read_csv
from raunet_fast.losses import DiceFocalLoss

SHAPE = (20, 18, 12)  # X, Y, Z of the files: volumes are D x H x W = 12 x 20 x 18
TINY = ["--spatial-dims", "3", "--patch", "8", "--base-channels", "4", "--depth", "3",
        "--num-workers", "0", "--no-progress", "--device", "cpu", "--batch-size", "2",
        "--lr", "3e-3", "--max-steps-per-epoch", "2"]
PREP_KEYS = {"dataset", "spatial_dims", "image_size", "patch", "crop", "in_channels", "regions",
             "labels", "threshold", "output", "split_seed", "normalization", "foreground_ratio"}


@pytest.fixture(scope="module")
def brats(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats3d")
    make_brats2021(root, 6, SHAPE, seed=2, spacing=(1.0, 1.0, 1.5))
    return root


@pytest.fixture(scope="module")
def nifti(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nifti3d")
    make_nifti_folder(root, 5, SHAPE, seed=4, channels=3)
    return root


def train_args(dataset: str, root: Path, run: Path, epochs: int, *extra: str) -> list[str]:
    return ["train", "--dataset", dataset, "--data-root", str(root), "--out", str(run),
            "--epochs", str(epochs), *TINY, *extra]


def test_brats_3d_run_trains_and_resumes_exactly(brats, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    assert cli.main(train_args("brats2021", brats, straight, 2, "--deep-supervision")) == 0
    rows = read_csv(straight / "log.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(np.isfinite(float(r[k])) for r in rows for k in ("train_loss", "val_loss"))
    config = json.loads((straight / "last" / "config.json").read_text())
    assert config["spatial_dims"] == 3 and config["deep_supervision"] is True
    prep = read_preprocessing(straight / "best")
    assert set(prep) == PREP_KEYS
    assert (prep["spatial_dims"], prep["patch"], prep["image_size"], prep["crop"]) == \
        (3, [8, 8, 8], None, None)
    assert (prep["regions"], prep["labels"], prep["in_channels"]) == (["WT", "TC", "ET"], None, 4)
    assert prep["foreground_ratio"] == 0.33
    assert prep["normalization"] == "z-score per channel over non-zero voxels"
    assert raunet_fast.from_pretrained(straight / "best").spatial_dims == 3

    run = tmp_path / "run"
    real = Trainer.train_epoch

    def crash_in_epoch_2(self, epoch):
        if epoch == 2:
            raise RuntimeError("power cut")
        return real(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", crash_in_epoch_2)
    with pytest.raises(RuntimeError, match="power cut"):
        cli.main(train_args("brats2021", brats, run, 2, "--deep-supervision"))
    monkeypatch.undo()
    assert cli.main(train_args("brats2021", brats, run, 2, "--deep-supervision",
                               "--resume")) == 0
    a = raunet_fast.from_pretrained(run / "last").state_dict()
    b = raunet_fast.from_pretrained(straight / "last").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert read_csv(run / "log.csv")[1]["train_loss"] == rows[1]["train_loss"]


def test_nifti_folder_3d_run(nifti, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(train_args("nifti-folder", nifti, run, 1, "--patches-per-image", "2",
                               "--foreground-ratio", "0.5", "--patch", "8x12x8")) == 0
    prep = read_preprocessing(run / "last")
    assert set(prep) == PREP_KEYS
    assert (prep["dataset"], prep["patch"], prep["in_channels"]) == ("nifti-folder", [8, 12, 8], 3)
    assert (prep["labels"], prep["regions"]) == ([1, 2], ["label1", "label2"])
    assert prep["foreground_ratio"] == 0.5
    assert np.isfinite(float(read_csv(run / "log.csv")[0]["train_loss"]))
    # a 3-D run does not resume as 2-D
    capsys.readouterr()
    assert cli.main(["train", "--dataset", "brats2021", "--data-root", str(nifti), "--out",
                     str(run), "--epochs", "2", "--resume", "--no-progress"]) == 2
    assert "spatial_dims: run has 3, now 2" in capsys.readouterr().err


def _volumes(root, split="train"):
    return build_volumes("brats2021", root, split)


def test_foreground_ratio_one_always_holds_foreground(brats):
    ds = VolumePatches(_volumes(brats), (4, 4, 4), foreground_ratio=1.0, seed=1,
                       patches_per_volume=20)
    for epoch in (1, 2):
        ds.set_epoch(epoch)
        for j in range(len(ds)):
            assert ds[j]["mask"].any(), (epoch, j)


def test_foreground_ratio_zero_is_uniform_and_draws_are_seeded(brats):
    vols = _volumes(brats)
    patch = (4, 6, 5)
    ds = VolumePatches(vols, patch, foreground_ratio=0.0, seed=3, patches_per_volume=300)
    d, h, w = vols.volume(0).image.shape[1:]
    starts = np.array([ds.draw(j)[1] for j in range(300)])  # volume 0's 300 patches
    for axis, n in enumerate((d - patch[0] + 1, h - patch[1] + 1, w - patch[2] + 1)):
        counts = np.bincount(starts[:, axis], minlength=n)
        assert len(counts) == n
        assert stats.chisquare(counts).pvalue > 1e-4, (axis, counts)
    # the same (seed, epoch, item) gives the same patch, another epoch or seed another one
    again = VolumePatches(vols, patch, foreground_ratio=0.0, seed=3, patches_per_volume=300)
    assert torch.equal(again[7]["image"], ds[7]["image"])
    again.set_epoch(1)
    assert again.draw(7) != ds.draw(7)
    other = VolumePatches(vols, patch, foreground_ratio=0.0, seed=4, patches_per_volume=300)
    assert [other.draw(j) for j in range(5)] != [ds.draw(j) for j in range(5)]


def test_volumes_smaller_than_the_patch_are_zero_padded(brats):
    vols = _volumes(brats)
    vol = vols.volume(1)
    d, h, w = vol.image.shape[1:]
    ds = VolumePatches(vols, (d + 3, h + 2, w + 5), foreground_ratio=0.5, seed=0)
    item = ds[1]
    assert item["image"].shape == (4, d + 3, h + 2, w + 5)
    assert torch.equal(item["image"][:, :d, :h, :w], vol.image)
    assert torch.equal(item["mask"][:, :d, :h, :w], vol.regions.float())
    assert not item["image"][:, d:].any() and not item["mask"][..., w:].any()


def test_tiles_cover_every_voxel_once(brats):
    vols = _volumes(brats, "all")
    tiles = VolumeTiles(vols, (8, 8, 8), header_shapes(vols))
    for i in range(len(vols)):
        vol = vols.volume(i)
        d, h, w = vol.image.shape[1:]
        assert tiles.shapes[i] == (d, h, w)
        image = torch.zeros(4, d + 8, h + 8, w + 8)
        count = torch.zeros(d + 8, h + 8, w + 8)
        for k, (case, z, y, x) in enumerate(tiles.index):
            if case != i:
                continue
            item = tiles[k]
            image[:, z:z + 8, y:y + 8, x:x + 8] += item["image"] * item["valid"]
            count[z:z + 8, y:y + 8, x:x + 8] += item["valid"][0]
        assert float(count.sum()) == d * h * w
        assert torch.equal(count[:d, :h, :w], torch.ones(d, h, w))
        assert torch.equal(image[:, :d, :h, :w], vol.image)


class VoxelModel(torch.nn.Module):
    """Logits = the first three channels: a per-voxel model, so tiles cannot change it."""

    def forward(self, x):
        return x[:, :3]


def test_tile_validation_dice_is_per_whole_volume(brats):
    vols = _volumes(brats, "all")
    tiles = VolumeTiles(vols, (8, 8, 8), header_shapes(vols))
    loader = torch.utils.data.DataLoader(tiles, batch_size=3)
    got = validate(VoxelModel(), loader, DiceFocalLoss("sigmoid"), torch.device("cpu"), None,
                   0.5, len(vols.names))
    per_case = []
    for i in range(len(vols)):  # the same Dice from whole volumes, float64
        vol = vols.volume(i)
        pred, truth = (vol.image[:3] > 0).double(), vol.regions.double()
        inter, total = (pred * truth).sum((1, 2, 3)), pred.sum((1, 2, 3)) + truth.sum((1, 2, 3))
        per_case.append(torch.where(total > 0, 2 * inter / total.clamp_min(1e-12), 1.0))
    want = torch.stack(per_case).mean(0)
    assert got["val_dice_per_channel"] == pytest.approx(want.tolist(), abs=1e-9)


@pytest.mark.parametrize("extra, message", [
    ({"patch": None}, "needs --patch"),
    ({"image_size": (16, 16)}, "--image-size is for 2-D"),
    ({"crop": 160}, "--crop is for 2-D"),
    ({"cache_images": True}, "--cache-images is for 2-D"),
    ({"tumour_weight": 2.0}, "--foreground-ratio"),
    ({"dataset": "isic2018"}, "brats2021 or nifti-folder"),
    ({"foreground_ratio": 1.5}, "foreground-ratio must be in"),
    ({"patch": (8, 8)}, "DxHxW"),
    ({"model": "monai-basicunet"}, "2-D only"),
    ({"spatial_dims": 2, "dataset": "nifti-folder", "patch": None}, "--spatial-dims 3"),
    ({"spatial_dims": 2, "foreground_ratio": 0.5, "patch": None}, "3-D patches"),
])
def test_bad_3d_options(extra, message, tmp_path):
    kw = dict(data_root=str(tmp_path), out=str(tmp_path / "run"), dataset="brats2021",
              spatial_dims=3, patch=(8,))
    with pytest.raises(ValueError, match=message.replace("-", "\\-").replace("(", "\\(")):
        TrainConfig(**{**kw, **extra}).validate()


def test_crop_is_refused_in_3d_only_when_given(tmp_path, capsys):
    base = ["train", "--dataset", "brats2021", "--data-root", str(tmp_path), "--out",
            str(tmp_path / "r"), "--spatial-dims", "3", "--patch", "16"]
    assert cli.main(base + ["--crop", "192", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "--crop is for 2-D" in err and len(err.strip().splitlines()) == 1
    assert cli.main(base + ["--print-config"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed)["crop"] is None
    # the resolved config of a 3-D run is a valid --config for the same run
    (tmp_path / "run.json").write_text(printed)
    assert cli.main(["train", "--config", str(tmp_path / "run.json"), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(printed)


def test_3d_config_resolves_patch_and_crop(tmp_path):
    cfg = TrainConfig(data_root=str(tmp_path), out=str(tmp_path / "r"), dataset="brats2021",
                      spatial_dims=3, patch=(12,), depth=3).validate()
    assert cfg.patch == (12, 12, 12) and cfg.crop is None
    assert cfg.resolved_image_size() is None and cfg.resolved_foreground_ratio() == 0.33
    with pytest.warns(UserWarning, match="multiple of 4"):
        cfg = TrainConfig(data_root=str(tmp_path), out=str(tmp_path / "r"), depth=3,
                          dataset="nifti-folder", spatial_dims=3, patch=(6, 8, 9)).validate()
    assert cfg.patch == (8, 8, 12)


GOOD_PREP = {"dataset": "nifti-folder", "spatial_dims": 3, "image_size": None,
             "patch": [8, 8, 8], "crop": None, "in_channels": 2, "regions": ["label1", "label3"],
             "labels": [1, 3], "threshold": 0.5, "output": "sigmoid per channel",
             "split_seed": 0, "normalization": "z-score per channel over non-zero voxels",
             "foreground_ratio": 0.33}


@pytest.mark.parametrize("change, message", [
    ({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
    ({"spatial_dims": True}, "spatial_dims must be 2 or 3"),
    ({"patch": [8, 8]}, "a 3-D model takes D, H, W"),
    ({"spatial_dims": 2, "patch": [8, 8, 8]}, "a 2-D model takes H, W"),
    ({"image_size": [8, 8]}, "image_size must be null"),
    ({"spatial_dims": 2, "patch": [8, 8]}, "nifti-folder holds volumes"),
    ({"labels": [0, 1]}, "labels must be a list of distinct integers >= 1"),
    ({"labels": [1, 1]}, "labels must be a list of distinct integers >= 1"),
    ({"labels": [1]}, "one entry per output channel"),
    ({"foreground_ratio": 1.5}, "foreground_ratio must be a number in [0, 1]"),
    ({"foreground_ratio": "0.3"}, "foreground_ratio must be a number"),
])
def test_3d_preprocessing_is_checked(tmp_path, change, message):
    (tmp_path / "preprocessing.json").write_text(json.dumps({**GOOD_PREP, **change}))
    with pytest.raises(ValueError) as e:
        read_preprocessing(tmp_path)
    assert message in str(e.value) and "preprocessing.json" in str(e.value)


def test_3d_preprocessing_reads_back(tmp_path):
    (tmp_path / "preprocessing.json").write_text(json.dumps(GOOD_PREP))
    assert read_preprocessing(tmp_path) == GOOD_PREP
