"""Whole 3-D volumes of a data set, for 3-D models: one interface over BraTS 2021 and a
folder of NIfTI files.

Axis order everywhere in the package's 3-D code: ``C x D x H x W`` with ``D`` the third
NIfTI axis (z, axial slices) and ``H, W`` the first two (x, y), so a 3-D volume is the
stack of the 2-D slices the 2-D code sees. ``spacing`` follows the same order (mm along
D, H, W). A prediction goes back to the file's own axis order with :func:`to_nifti_axes`
and takes the affine and header of :attr:`Volume.reference`.

The NIfTI folder layout (``--dataset nifti-folder``)::

    ROOT/images/<case>.nii.gz              one file per case: X x Y x Z, or X x Y x Z x C
    ROOT/images/<case>_0000.nii.gz, ...    or one file per channel (nnU-Net's naming)
    ROOT/labels/<case>.nii.gz              X x Y x Z integer labels (0 = background)
    ROOT/dataset.json                      optional: {"labels": {"background": 0, "x": 1}}

Each foreground label value is one output channel (a sigmoid each); without dataset.json
the values are those found in the label files. Images are z-scored per channel over the
voxels where any channel is non-zero, and 0 elsewhere (as BraTS is).
"""
from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .brats import BraTS2021, REGIONS, finite_volume, labels_to_regions, regions_to_labels
from ..io.nifti import read_nifti
from .common import split_names

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


@dataclass
class Volume:
    """One case: ``image`` C x D x H x W float32 (z-scored), ``regions`` K x D x H x W bool
    (None without labels), ``spacing`` (mm along D, H, W), ``reference`` (the NIfTI file
    whose affine and header a prediction for this case takes)."""

    name: str
    image: torch.Tensor
    regions: torch.Tensor | None
    spacing: tuple[float, float, float]
    reference: Path


def to_nifti_axes(array: np.ndarray) -> np.ndarray:
    """``... x D x H x W`` (the package's order) -> ``X x Y x Z x ...`` (the file's)."""
    a = np.asarray(array)
    lead = a.ndim - 3
    return a.transpose(lead + 1, lead + 2, lead, *range(lead))


def from_nifti_axes(array: np.ndarray) -> np.ndarray:
    """``X x Y x Z`` (a file's) -> ``D x H x W`` (the package's); inverse of
    :func:`to_nifti_axes` for 3-D arrays."""
    return np.moveaxis(np.asarray(array), 2, 0)


def zscore_channels(vols: list[np.ndarray]) -> np.ndarray:
    """Channels (each X x Y x Z float32) -> C x D x H x W float32, z-scored per channel over
    the voxels where any channel is non-zero, 0 elsewhere."""
    inside = np.zeros(vols[0].shape, dtype=bool)
    for v in vols:
        inside |= v != 0
    out = np.zeros((len(vols), *from_nifti_axes(vols[0]).shape), dtype=np.float32)
    for c, v in enumerate(vols):
        vals = v[inside]
        mean, std = (float(vals.mean()), float(vals.std())) if vals.size else (0.0, 1.0)
        out[c] = from_nifti_axes(np.where(inside, (v - mean) / max(std, 1e-8), 0.0))
    return out


class BraTSVolumes:
    """BraTS 2021 cases as whole volumes: 4 channels (flair, t1, t1ce, t2), regions WT, TC,
    ET. Reads through :class:`BraTS2021` (its cache and checks)."""

    channels = 4
    region_names = REGIONS

    def __init__(self, root, split: str = "train", seed: int = 0, cache_dir=None,
                 require_masks: bool = True, nan_to_num: bool = False, memory_cases: int = 8):
        self.slices = BraTS2021(root, split, crop=None, seed=seed, cache_dir=cache_dir,
                                require_masks=require_masks, index_slices=False,
                                nan_to_num=nan_to_num, memory_cases=memory_cases)
        self.names, self.has_masks = self.slices.names, require_masks

    def __len__(self) -> int:
        return len(self.names)

    def volume(self, i: int) -> Volume:
        case = self.slices.case(i)
        image = torch.from_numpy(np.asarray(case["image"], dtype=np.float32)).permute(1, 0, 2, 3)
        regions = None
        if case["seg"] is not None:
            regions = labels_to_regions(torch.from_numpy(np.array(case["seg"])))
        sx, sy, sz = case["spacing"]
        folder = self.slices.folders[i]
        return Volume(self.names[i], image.contiguous(), regions, (sz, sx, sy),
                      folder / f"{folder.name}_flair.nii.gz")

    def to_labels(self, masks: np.ndarray, probabilities: np.ndarray | None = None
                  ) -> np.ndarray:
        """K x D x H x W bool regions -> D x H x W uint8 labels 0 / 1 / 2 / 4 (ET over TC
        over WT: the regions are nested, so ``probabilities`` is not needed)."""
        return regions_to_labels(masks)


def _nifti_stem(path: Path) -> str | None:
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def find_nifti_cases(images: Path) -> dict[str, list[Path]]:
    """Case name -> its image files (one, or one per channel ``<case>_0000`` ... in order)."""
    files: dict[str, list[Path]] = {}
    for p in sorted(images.iterdir()):
        stem = _nifti_stem(p)
        if stem is None or not p.is_file():
            continue
        m = _CHANNEL_RE.match(stem)
        files.setdefault(m["case"] if m else stem, []).append(p)
    for name, paths in files.items():
        if len(paths) > 1 and any(not _CHANNEL_RE.match(_nifti_stem(p)) for p in paths):
            raise ValueError(f"case {name!r} in {images} has both a single image and "
                             f"per-channel <case>_NNNN files; keep one form")
    return files


def _label_file(labels: Path, name: str) -> Path | None:
    for suffix in NIFTI_SUFFIXES:
        if (labels / f"{name}{suffix}").is_file():
            return labels / f"{name}{suffix}"
    return None


class NiftiFolder:
    """A folder of NIfTI volumes and label maps (layout in the module docstring)."""

    def __init__(self, root, split: str = "train", seed: int = 0, require_masks: bool = True,
                 labels: tuple[int, ...] | None = None, nan_to_num: bool = False,
                 memory_cases: int = 8):
        root = Path(root)
        if not (root / "images").is_dir():
            raise FileNotFoundError(f"NIfTI folder {root} has no images/ folder "
                                    f"(expected images/<case>.nii.gz and labels/<case>.nii.gz)")
        cases = find_nifti_cases(root / "images")
        if not cases:
            raise ValueError(f"no .nii.gz / .nii files in {root / 'images'}")
        self.root, self.split, self.has_masks = root, split, require_masks
        self.names = split_names(list(cases), split, seed=seed)
        self.image_files = [cases[n] for n in self.names]
        self.label_files = [_label_file(root / "labels", n) for n in self.names]
        if require_masks:
            missing = [n for n, f in zip(self.names, self.label_files) if f is None]
            if missing:
                raise FileNotFoundError(f"no label file labels/{missing[0]}.nii.gz in {root} "
                                        f"({len(missing)} case(s) without labels)")
        self.channels = self._channel_count()
        self.labels = tuple(labels) if labels else self._label_values(cases)
        self.region_names = tuple(f"label{v}" for v in self.labels)
        self.nan_to_num, self.memory_cases = nan_to_num, max(1, memory_cases)
        self._mem: OrderedDict[int, Volume] = OrderedDict()

    def __len__(self) -> int:
        return len(self.names)

    def _channel_count(self) -> int:
        files = self.image_files[0]
        if len(files) > 1:
            return len(files)
        data, _ = read_nifti(files[0], (3, 4))
        return 1 if data.ndim == 3 else int(data.shape[3])

    def _label_values(self, cases: dict[str, list[Path]]) -> tuple[int, ...]:
        meta = self.root / "dataset.json"
        if meta.is_file():
            return labels_from_dataset_json(meta)
        values: set[int] = set()
        for name in sorted(cases):  # every split alike: the channels must not depend on it
            f = _label_file(self.root / "labels", name)
            if f is not None:
                values |= set(np.unique(_read_labels(f)).tolist())
        values.discard(0)
        if not values:
            raise ValueError(f"the label files under {self.root / 'labels'} hold no "
                             f"foreground (only 0)")
        return tuple(sorted(int(v) for v in values))

    def _image(self, i: int) -> tuple[np.ndarray, tuple[float, ...]]:
        image, zooms = read_case_images(self.image_files[i], self.names[i], self.nan_to_num)
        if len(image) != self.channels:
            raise ValueError(f"case {self.names[i]} has {len(image)} channels; the first case "
                             f"of the split has {self.channels}")
        return image, zooms

    def volume(self, i: int) -> Volume:
        if i in self._mem:
            self._mem.move_to_end(i)
            return self._mem[i]
        image, (sx, sy, sz) = self._image(i)
        regions = None
        if self.has_masks:
            seg = from_nifti_axes(_read_labels(self.label_files[i]))
            if seg.shape != image.shape[1:]:
                raise ValueError(f"label map {self.label_files[i]} has shape "
                                 f"{to_nifti_axes(seg).shape} but the image has "
                                 f"{to_nifti_axes(image[0]).shape}")
            regions = torch.from_numpy(np.stack([seg == v for v in self.labels]))
        vol = Volume(self.names[i], torch.from_numpy(image), regions, (sz, sx, sy),
                     self.image_files[i][0])
        self._mem[i] = vol
        while len(self._mem) > self.memory_cases:
            self._mem.popitem(last=False)
        return vol

    def to_labels(self, masks: np.ndarray, probabilities: np.ndarray | None = None
                  ) -> np.ndarray:
        """K x D x H x W masks -> D x H x W label values (:func:`masks_to_labels`)."""
        return masks_to_labels(masks, self.labels, probabilities)


def masks_to_labels(masks: np.ndarray, labels, probabilities: np.ndarray | None = None
                    ) -> np.ndarray:
    """K x D x H x W masks (channel k: label value ``labels[k]``) -> D x H x W label values
    (uint8 when every value fits, else int32); where several channels are on, the most
    probable one wins (any increasing function of the probabilities, e.g. logits, gives the
    same), without probabilities the last."""
    masks = np.asarray(masks, dtype=bool)
    score = masks.astype(np.float32) if probabilities is None else \
        np.where(masks, probabilities, -np.inf)
    winner = np.argmax(score, axis=0)
    values = np.asarray(labels, dtype=np.int32)[winner]
    out_dtype = np.uint8 if max(labels) < 256 else np.int32
    return np.where(masks.any(0), values, 0).astype(out_dtype)


def read_case_images(files: list[Path], name: str, nan_to_num: bool = False
                     ) -> tuple[np.ndarray, tuple[float, ...]]:
    """One case's image files (one X x Y x Z [x C] file, or one per channel) -> the
    z-scored C x D x H x W float32 image (:func:`zscore_channels`) and the first file's
    voxel size (mm along X, Y, Z)."""
    vols, shape, zooms = [], None, None
    for f in files:
        data, z = read_nifti(f, (3, 4))
        parts = [data] if data.ndim == 3 else [data[..., c] for c in range(data.shape[3])]
        for part in parts:
            if shape is None:
                shape, zooms = part.shape, z
            elif part.shape != shape:
                raise ValueError(f"{f} has shape {part.shape} but the first channel of "
                                 f"case {name} has {shape}")
            vols.append(finite_volume(part, f, nan_to_num))
    return zscore_channels(vols), zooms


def _read_labels(path: Path) -> np.ndarray:
    data, _ = read_nifti(path, (3,))
    labels = np.rint(np.asarray(data, dtype=np.float64))
    if not np.isfinite(labels).all() or labels.min() < 0:
        raise ValueError(f"label map {path} holds negative or non-finite values; labels are "
                         f"integers >= 0 (0 = background)")
    return labels.astype(np.int32)


def labels_from_dataset_json(path: Path) -> tuple[int, ...]:
    """Foreground label values of a dataset.json: ``{"labels": {"name": value}}`` (nnU-Net
    v2) or ``{"labels": {"value": "name"}}`` (Medical Segmentation Decathlon)."""
    try:
        labels = json.loads(Path(path).read_text())["labels"]
        pairs = [(k, v) if isinstance(v, int) else (v, int(k)) for k, v in labels.items()]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: cannot read its \"labels\" ({e}); expected "
                         f"{{\"labels\": {{\"background\": 0, \"tumour\": 1}}}}") from e
    values = sorted({v for _, v in pairs} - {0})
    if not values:
        raise ValueError(f"{path} names no foreground label (only background 0)")
    return tuple(values)


VOLUME_DATASETS = ("brats2021", "nifti-folder")


def build_volumes(name: str, root, split: str, **kw):
    """Whole-volume view of a data set by CLI name: ``brats2021`` or ``nifti-folder``."""
    if name == "brats2021":
        kw.pop("labels", None)
        return BraTSVolumes(root, split, **kw)
    if name == "nifti-folder":
        kw.pop("cache_dir", None)
        return NiftiFolder(root, split, **kw)
    raise ValueError(f"{name} is not a volume data set; 3-D models take {VOLUME_DATASETS}")
