"""Pieces of a training run that need no Trainer state: data sets, the patch margin, the
preprocessing record, validation Dice per case."""
from __future__ import annotations

import math
from typing import Any

import torch

from ..config import TrainConfig


def build_datasets(cfg: TrainConfig, splits=("train", "val")) -> list:
    if cfg.spatial_dims == 3:
        return build_volume_datasets(cfg, splits)
    from ..data import build_dataset

    size = cfg.resolved_image_size()
    kw: dict[str, Any] = {}
    if cfg.dataset == "brats2021":
        kw.update(crop=cfg.crop, cache_dir=cfg.cache_dir, seed=cfg.split_seed,
                  progress=cfg.progress)
        kw.update(nan_to_num=cfg.nan_to_num)
    else:
        kw.update(cache=cfg.cache_images, convert_channels=cfg.convert_channels)
        if cfg.dataset == "folder":
            kw.update(seed=cfg.split_seed, channels=cfg.in_channels)
        if cfg.patch is not None:
            kw.update(patch=tuple(cfg.patch))
    out = []
    for split in splits:
        extra = {}
        if cfg.patch is not None:
            extra = {"random_patches": split == "train"}
            if split == "train":
                extra["context"] = patch_context(cfg)
                if cfg.patches_per_image != 1:
                    extra["patches_per_image"] = cfg.patches_per_image
        out.append(build_dataset(cfg.dataset, cfg.data_root, split, image_size=size, **kw,
                                 **extra))
        if cfg.dataset == "folder":  # every split in the channels of the first
            kw["channels"] = out[0].channels
    return out


def build_volume_datasets(cfg: TrainConfig, splits=("train", "val")) -> list:
    """3-D runs: random patches of the training volumes, tiles of the others."""
    from ..data.volume_patches import VolumePatches, VolumeTiles, header_shapes
    from ..data.volumes import build_volumes

    kw = {"seed": cfg.split_seed, "nan_to_num": cfg.nan_to_num}
    if cfg.dataset == "brats2021":
        kw["cache_dir"] = cfg.cache_dir
    out = []
    for split in splits:
        if out and cfg.dataset == "nifti-folder":  # every split in the labels of the first
            kw["labels"] = out[0].volumes.labels
        vols = build_volumes(cfg.dataset, cfg.data_root, split, **kw)
        if split == "train":
            out.append(VolumePatches(vols, cfg.patch, cfg.resolved_foreground_ratio(),
                                     cfg.seed, cfg.patches_per_image, patch_context(cfg)))
        else:
            out.append(VolumeTiles(vols, cfg.patch, header_shapes(vols)))
    return out


def make_augment(cfg: TrainConfig):
    """The run's augmentation (None with ``--no-augment``); outside the data BraTS and
    volumes (z-scored, 0 outside the body) read zeros, images a reflection."""
    from ..data import Augment

    if not cfg.augment:
        return None
    zeros = cfg.dataset in ("brats2021", "nifti-folder")
    return Augment(padding_mode="zeros" if zeros else "reflection")


def patch_context(cfg: TrainConfig) -> tuple[int, ...]:
    """Margin (pixels / voxels per side) cut around each training patch when it will be
    augmented; the trainer cuts the patch from the middle after augmenting. 2-D: a square
    rotated by up to 45 degrees stays inside 1.42x its side, so 0.21 of the patch on each
    side keeps rotations and deformations on real image pixels. (Elastic displacements, a
    fraction of the augmented input's size, are larger in pixels by the same 1.42x.) 3-D:
    :meth:`~raunet_fast.data.Augment.margin` of the run's augmentation (the rotated box at
    the worst angles plus 3 standard deviations of the elastic displacement)."""
    if cfg.patch is None or not cfg.augment:
        return (0,) * (2 if cfg.patch is None else len(cfg.patch))
    if cfg.spatial_dims == 3:
        return make_augment(cfg).margin(tuple(cfg.patch))
    return (math.ceil(0.21 * cfg.patch[0]), math.ceil(0.21 * cfg.patch[1]))


def preprocessing_info(cfg: TrainConfig, ds) -> dict[str, Any]:
    if cfg.spatial_dims == 3:
        return volume_preprocessing_info(cfg, ds)
    size = cfg.resolved_image_size()
    return {"dataset": cfg.dataset, "image_size": None if size is None else list(size),
            "patch": None if cfg.patch is None else list(cfg.patch),
            "crop": cfg.crop if cfg.dataset == "brats2021" else None,
            "in_channels": ds.channels, "regions": list(ds.region_names),
            "threshold": cfg.threshold, "output": "sigmoid per channel",
            "split_seed": cfg.split_seed,
            "normalization": ("z-score per modality over brain voxels"
                              if cfg.dataset == "brats2021" else "pixel / 255")}


def volume_preprocessing_info(cfg: TrainConfig, ds) -> dict[str, Any]:
    """``preprocessing.json`` of a 3-D run (``labels``: the label value of each output
    channel of a NIfTI folder; BraTS regions are fixed, null)."""
    labels = getattr(ds.volumes, "labels", None) if cfg.dataset == "nifti-folder" else None
    return {"dataset": cfg.dataset, "spatial_dims": 3, "image_size": None,
            "patch": list(cfg.patch), "crop": None, "in_channels": ds.channels,
            "regions": list(ds.region_names),
            "labels": None if labels is None else [int(v) for v in labels],
            "threshold": cfg.threshold, "output": "sigmoid per channel",
            "split_seed": cfg.split_seed,
            "normalization": "z-score per channel over non-zero voxels",
            "foreground_ratio": cfg.resolved_foreground_ratio()}


@torch.no_grad()
def validate(model, loader, loss_fn, device: torch.device, amp_dtype, threshold: float,
             n_cases: int, progress: bool = False, reduce=None) -> dict[str, Any]:
    """Validation loss and Dice per case (image or 3-D volume) and channel, averaged.

    Intersections and sizes are summed over all items of a case (all slices of a BraTS
    volume, all tiles of a patch-trained 2-D image or 3-D volume - counted on their
    ``valid`` pixels, so each image pixel once) before the Dice; a case where both prediction and truth of a
    channel are empty scores 1 for it. ``reduce(stats, loss_sum, n_items)``: the sums over
    all processes when each saw a part of the loader's data set (returns the three).
    """
    from tqdm import tqdm

    from .device import autocast

    model.eval()
    cut = math.log(threshold / (1 - threshold))
    stats = torch.zeros(n_cases, len(loader.dataset.region_names), 3, dtype=torch.float64)
    loss_sum, n_items = 0.0, 0
    for batch in tqdm(loader, desc="  validate", leave=False, disable=not progress, unit="batch"):
        x = batch["image"].to(device, non_blocking=True)
        y = batch["mask"].to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(x)
        loss_sum += float(loss_fn(logits, y)) * x.shape[0]
        n_items += x.shape[0]
        pred = (logits.float() > cut).float()
        if "valid" in batch:  # tiles: each image pixel counted once, padding never
            valid = batch["valid"].to(device, non_blocking=True)
            pred, y = pred * valid, y * valid
        dims = tuple(range(2, pred.dim()))
        per = torch.stack([(pred * y).sum(dims), pred.sum(dims), y.sum(dims)], -1).double().cpu()
        stats.index_add_(0, batch["case"].long(), per)
    if reduce is not None:
        stats, loss_sum, n_items = reduce(stats, loss_sum, n_items)
    if n_items == 0:
        raise ValueError("the validation set is empty")
    inter, psum, tsum = stats.unbind(-1)
    denom = psum + tsum
    dice = torch.where(denom > 0, 2 * inter / denom.clamp_min(1e-12), torch.ones_like(denom))
    per_channel = dice[case_ids(loader.dataset)].mean(0)
    return {"val_loss": loss_sum / max(1, n_items), "val_dice": float(per_channel.mean()),
            "val_dice_per_channel": per_channel.tolist()}


def case_ids(dataset) -> list[int]:
    """Indices of the cases a dataset's items cover (BraTS: volumes with slices in it)."""
    if getattr(dataset, "index", None) is not None:
        return sorted({entry[0] for entry in dataset.index})
    return list(range(len(dataset)))
