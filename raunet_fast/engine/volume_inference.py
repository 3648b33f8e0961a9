"""3-D checkpoints (``spatial_dims=3``) in ``evaluate`` and ``predict``: each volume is
predicted whole by 3-D sliding windows (default window: the training patch), every output
channel thresholded, the masks turned into the label map a NIfTI file holds (BraTS: 0 / 1 /
2 / 4, ET over TC over WT; a NIfTI folder: its label values, the most probable channel
where several are on) and scored per region in mm (the voxel spacing of the header,
anisotropic spacing respected) from that label map, i.e. from what a saved prediction
holds.

Empty masks: BraTS uses its rule (Dice 1 and HD 0 when both are empty, Dice 0 and HD
373.13 mm when exactly one is); a NIfTI folder the same with the volume's diagonal in mm
as the distance.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import expand_extent, fit_size
from ..metrics import BRATS_EMPTY_DISTANCE, all_metrics, diagonal

METRICS = ("dice", "jaccard", "hd", "hd95")
#: where a 3-D checkpoint's predictions come from (the 2-D data sets hold images)
VOLUME_DATASETS = ("brats2021", "nifti-folder")


def is_volume_model(model) -> bool:
    """Whether ``model`` takes volumes (``N x C x D x H x W``)."""
    return getattr(model, "spatial_dims", 2) == 3


def check_volume_dataset(dataset: str, checkpoint: Path, model) -> None:
    """A one-line error when a 3-D model meets 2-D data, or a 2-D model volume data."""
    if is_volume_model(model) and dataset not in VOLUME_DATASETS:
        raise ValueError(f"{checkpoint} holds a 3-D model (spatial_dims=3, volumes); "
                         f"--dataset {dataset} holds 2-D images: use "
                         f"{' or '.join(VOLUME_DATASETS)}")
    if not is_volume_model(model) and dataset == "nifti-folder":
        raise ValueError(f"{checkpoint} holds a 2-D model (images); --dataset nifti-folder "
                         f"holds volumes, for 3-D models (spatial_dims=3)")


def check_volume_options(image_size=None, crop=None) -> None:
    """Options of 2-D inference that a 3-D model does not take."""
    if image_size is not None:
        raise ValueError("--image-size resizes 2-D images; a 3-D model predicts each volume "
                         "at its own resolution in windows (--window DxHxW)")
    if crop is not None:
        raise ValueError("--crop applies to the axial slices of a 2-D BraTS model; a 3-D model "
                         "predicts the whole volume (--window DxHxW)")


def volume_window(window, prep: dict[str, Any], model, checkpoint: Path) -> tuple[int, ...]:
    """The 3-D window: ``window`` as given (one size or D x H x W, rounded up to the
    network's size multiple), else the checkpoint's training patch."""
    if window is not None:
        return fit_size("--window", expand_extent("--window", window, 3), model.size_multiple)
    patch = prep.get("patch")
    if not patch or len(patch) != 3:
        raise ValueError(f"{checkpoint} records no 3-D training patch (\"patch\": [D, H, W] in "
                         f"its preprocessing.json); pass --window DxHxW")
    return tuple(int(s) for s in patch)


def checkpoint_labels(prep: dict[str, Any], out_channels: int) -> tuple[int, ...]:
    """The label value of each output channel of a NIfTI-folder checkpoint: its
    ``"labels"``, else 1, 2, ... K."""
    labels = prep.get("labels")
    if labels is None:
        return tuple(range(1, out_channels + 1))
    if not (isinstance(labels, list) and len(labels) == out_channels and
            all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in labels)):
        raise ValueError(f"preprocessing.json \"labels\" must list {out_channels} label values "
                         f"> 0 (one per output channel), got {labels!r}")
    return tuple(labels)


def label_map(to_labels, logits: torch.Tensor, threshold: float) -> np.ndarray:
    """``K x D x H x W`` logits -> the ``D x H x W`` label map: each channel's sigmoid
    above ``threshold`` (the logit above its inverse), the masks combined by
    ``to_labels(masks, scores)`` (the logits serve as scores: the sigmoid keeps their
    order)."""
    cut = math.log(threshold / (1 - threshold))
    scores = logits.float().numpy()
    return to_labels(scores > cut, scores)


def label_regions(labels: np.ndarray, values: tuple[int, ...] | None) -> np.ndarray:
    """The ``K x D x H x W`` regions a label map holds: BraTS (``values`` None) WT, TC, ET;
    else one mask per label value."""
    if values is None:
        from ..data.brats import labels_to_regions

        return labels_to_regions(labels)
    return np.stack([labels == v for v in values])


def volume_row(name: str, pred: np.ndarray, truth: np.ndarray, spacing,
               regions: tuple[str, ...], brats: bool) -> dict[str, Any]:
    """Per-region scores of one volume (``K x D x H x W`` masks, spacing mm along D, H,
    W)."""
    empty = BRATS_EMPTY_DISTANCE if brats else diagonal(truth.shape[1:], spacing)
    row: dict[str, Any] = {"case": name}
    for r, region in enumerate(regions):
        m = all_metrics(pred[r], truth[r], spacing=spacing, empty_distance=empty)
        for k in METRICS:
            row[f"{k}_{region}"] = m[k]
    return row


def empty_rule(brats: bool) -> str:
    distance = f"{BRATS_EMPTY_DISTANCE}" if brats else "the volume's diagonal (mm)"
    return f"both empty: Dice 1, HD 0; one empty: Dice 0, HD {distance}"


def case_channels(files: list[Path]) -> int:
    """The channels of a NIfTI case from its headers (nothing decoded): one file per
    channel, or one file X x Y x Z [x C]."""
    import nibabel as nib

    if len(files) > 1:
        return len(files)
    try:
        shape = nib.load(str(files[0])).shape
    except Exception as e:  # nibabel / gzip raise many types
        raise ValueError(f"cannot read NIfTI file {files[0]}: {e}") from e
    return 1 if len(shape) == 3 else int(shape[3])


def nifti_inputs(input: Path, checkpoint: Path) -> dict[str, list[Path]]:
    """Case name -> image files of a ``predict --input`` for a 3-D NIfTI checkpoint: a
    ``.nii.gz`` / ``.nii`` file, a folder of them (one per case, or ``<case>_0000`` ... per
    channel), or a NIfTI folder holding ``images/``."""
    from ..data.volumes import _nifti_stem, find_nifti_cases

    what = (f"{checkpoint} holds a 3-D model (volumes): pass a .nii.gz file, a folder of "
            f"them, or a NIfTI folder with images/")
    if input.is_file():
        stem = _nifti_stem(input)
        if stem is None:
            raise ValueError(f"--input {input} is not a NIfTI file (.nii.gz / .nii); {what}")
        return {stem: [input]}
    folder = input / "images" if (input / "images").is_dir() else input
    cases = find_nifti_cases(folder)
    if not cases:
        raise ValueError(f"--input {folder} holds no .nii.gz / .nii files; {what}")
    return cases
