"""BraTS 2021 in its official layout, served as 2-D axial slices.

::

    ROOT/BraTS2021_00000/BraTS2021_00000_{flair,t1,t1ce,t2,seg}.nii.gz   (240 x 240 x 155)

(the case folders may also sit one or two levels deeper, e.g. inside
``RSNA_ASNR_MICCAI_BraTS2021_TrainingData_16July2021/``). The release is one pool of
labelled cases; ``split`` divides it by patient, reproducibly (:func:`split_names`).

Preprocessing, the usual 2-D practice: the four modalities become channels
(flair, t1, t1ce, t2), each z-scored over brain voxels (any modality non-zero) and 0
outside the brain; labels 0 / 1 (NCR) / 2 (ED) / 4 (ET) become the three nested region
channels WT = {1, 2, 4}, TC = {1, 4}, ET = {4}; slices are centre-cropped (or padded) to
``crop`` and, if ``image_size`` differs, resized to it.
"""
from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..io.nifti import read_nifti
from .common import split_names

MODALITIES = ("flair", "t1", "t1ce", "t2")
REGIONS = ("WT", "TC", "ET")
REGION_LABELS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
LABELS = (0, 1, 2, 4)
CASE_RE = re.compile(r"^BraTS2021_\d{5}$")


def labels_to_regions(seg: np.ndarray | torch.Tensor):
    """Label map (..., values 0/1/2/4) -> stacked bool regions WT, TC, ET on a new axis 0."""
    if isinstance(seg, torch.Tensor):
        return torch.stack([(seg == 1) | (seg == 2) | (seg == 4), (seg == 1) | (seg == 4),
                            seg == 4])
    return np.stack([np.isin(seg, REGION_LABELS[r]) for r in REGIONS])


def regions_to_labels(regions: np.ndarray) -> np.ndarray:
    """Stacked WT, TC, ET masks -> label map 0/1/2/4 (ET wins over TC wins over WT)."""
    wt, tc, et = (np.asarray(r, dtype=bool) for r in regions)
    seg = np.zeros(wt.shape, dtype=np.uint8)
    seg[wt] = 2
    seg[tc] = 1
    seg[et] = 4
    return seg


def find_cases(root: Path, max_depth: int = 2) -> dict[str, Path]:
    """Case folders ``BraTS2021_<5 digits>`` at or below ``root``."""
    level, found = [Path(root)], {}
    for _ in range(max_depth + 1):
        nxt = []
        for d in level:
            for c in sorted(d.iterdir()):
                if not c.is_dir() or c.name.startswith("."):
                    continue
                if CASE_RE.match(c.name):
                    found.setdefault(c.name, c)
                else:
                    nxt.append(c)
        if found:
            break
        level = nxt
    return found


def case_files(folder: Path) -> dict[str, Path]:
    name = folder.name
    return {k: folder / f"{name}_{k}.nii.gz" for k in (*MODALITIES, "seg")}


def _load_nifti(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    if not path.is_file():
        raise FileNotFoundError(f"BraTS file {path} does not exist")
    return read_nifti(path, (3,))


def finite_volume(data: np.ndarray, path: Path, nan_to_num: bool = False) -> np.ndarray:
    """``data`` as float32; NaN / Inf voxels are an error naming the file and their count, or
    with ``nan_to_num`` are set to 0 (outside the brain, as background is)."""
    vol = np.asarray(data, dtype=np.float32)
    bad = int(vol.size - np.count_nonzero(np.isfinite(vol)))
    if bad and not nan_to_num:
        raise ValueError(f"{path} holds {bad} NaN / Inf voxels (of {vol.size}); repair the file, "
                         f"or pass --nan-to-num to read them as 0")
    if bad:
        vol = np.nan_to_num(vol, nan=0.0, posinf=0.0, neginf=0.0)
    return vol


def load_case(folder: Path, with_seg: bool = True, nan_to_num: bool = False) -> dict:
    """Read and preprocess one case.

    Returns ``image`` (Z x 4 x X x Y float16, z-scored), ``seg`` (Z x X x Y uint8 labels
    or None), ``spacing`` (mm, X, Y, Z) and ``shape`` (X, Y, Z). Non-finite voxels: see
    :func:`finite_volume`.
    """
    files = case_files(folder)
    vols, shape, spacing = [], None, None
    for m in MODALITIES:
        data, zooms = _load_nifti(files[m])
        if shape is None:
            shape, spacing = data.shape, zooms
        elif data.shape != shape:
            raise ValueError(f"{files[m]} has shape {data.shape} but {files[MODALITIES[0]]} has "
                             f"{shape}; all modalities of a case must match")
        vols.append(finite_volume(data, files[m], nan_to_num))
    brain = np.zeros(shape, dtype=bool)
    for v in vols:
        brain |= v != 0
    image = np.zeros((shape[2], 4, shape[0], shape[1]), dtype=np.float16)
    for c, v in enumerate(vols):
        vals = v[brain]
        mean, std = (float(vals.mean()), float(vals.std())) if vals.size else (0.0, 1.0)
        z = np.where(brain, (v - mean) / max(std, 1e-8), 0.0)
        image[:, c] = np.moveaxis(z, 2, 0)
    seg = None
    if with_seg:
        s, _ = _load_nifti(files["seg"])
        if s.shape != shape:
            raise ValueError(f"segmentation {files['seg']} has shape {s.shape} but the images "
                             f"of the case have {shape}; it is not resized")
        s = np.rint(np.asarray(s, dtype=np.float32)).astype(np.int16)
        bad = sorted(set(np.unique(s).tolist()) - set(LABELS))
        if bad:
            raise ValueError(f"{files['seg']} holds labels {bad}; BraTS 2021 labels are "
                             f"{list(LABELS)} (0 background, 1 NCR, 2 ED, 4 ET)")
        seg = np.ascontiguousarray(np.moveaxis(s.astype(np.uint8), 2, 0))
    return {"image": image, "seg": seg, "spacing": spacing, "shape": tuple(shape)}


def _window(x: torch.Tensor, size: tuple[int, int], offset: tuple[int, int],
            fill: float = 0.0) -> torch.Tensor:
    """``out[..., i, j] = x[..., i + offset[0], j + offset[1]]``, ``fill`` outside ``x``."""
    h, w = x.shape[-2:]
    out = x.new_full((*x.shape[:-2], *size), fill)
    oy, ox = offset
    y0, y1 = max(0, -oy), min(size[0], h - oy)
    x0, x1 = max(0, -ox), min(size[1], w - ox)
    if y1 > y0 and x1 > x0:
        out[..., y0:y1, x0:x1] = x[..., y0 + oy:y1 + oy, x0 + ox:x1 + ox]
    return out


def crop_or_pad(x: torch.Tensor, size: tuple[int, int], fill: float = 0.0) -> torch.Tensor:
    """Centre crop / pad (with ``fill``) the last two dimensions to ``size``."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    return _window(x, tuple(size), ((h - size[0]) // 2, (w - size[1]) // 2), fill)


def uncrop(x: torch.Tensor, full_size: tuple[int, int], fill: float = 0.0) -> torch.Tensor:
    """Inverse of :func:`crop_or_pad`: put a centre window back at its place in ``full_size``."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(full_size):
        return x
    return _window(x, tuple(full_size), (-((full_size[0] - h) // 2), -((full_size[1] - w) // 2)),
                   fill)


def _pair(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    return (size, size) if isinstance(size, int) else tuple(size)


def prepare_slices(image: torch.Tensor, crop: int | tuple[int, int] | None,
                   image_size: tuple[int, int] | None) -> torch.Tensor:
    """``... x X x Y`` full slices -> network input ``... x h x w``: centre crop (or pad) to
    ``crop``, then resize (bilinear) to ``image_size`` when it differs. The preprocessing
    of training, evaluation and prediction."""
    crop, image_size = _pair(crop), _pair(image_size)
    if crop is not None:
        image = crop_or_pad(image, crop)
    if image_size is not None and tuple(image.shape[-2:]) != image_size:
        lead = image.shape[:-2]
        image = F.interpolate(image.reshape(-1, 1, *image.shape[-2:]).float(),
                              size=image_size, mode="bilinear", align_corners=False)
        image = image.reshape(*lead, *image_size)
    return image


def restore_slices(logits: torch.Tensor, full_size: tuple[int, int],
                   crop: int | tuple[int, int] | None) -> torch.Tensor:
    """Inverse of :func:`prepare_slices` for network output ``N x C x h x w``: resized back
    to the crop and pasted into a canvas of the full slice size ``N x C x X x Y``; outside
    the crop the logits are a large negative number, i.e. background."""
    crop = _pair(crop) or tuple(full_size)
    if tuple(logits.shape[-2:]) != tuple(crop):
        logits = F.interpolate(logits.float(), size=crop, mode="bilinear", align_corners=False)
    return uncrop(logits, tuple(full_size), fill=-1e4)


class BraTS2021(Dataset):
    """Axial slices of the BraTS 2021 cases of one split.

    Items: ``image`` ``4 x h x w`` float32, ``mask`` ``3 x h x w`` float32 (WT, TC, ET),
    ``case`` (index into :attr:`names`), ``slice`` (z). Training splits skip slices
    without brain (``skip_empty``); :meth:`sample_weights` over-samples tumour slices.

    Volumes are preprocessed once per case. Without ``cache_dir`` they stay in memory
    (at most ``memory_cases`` at a time); for the real data set pass ``cache_dir``, where
    they are written once as ``.npy`` files and memory-mapped afterwards. The cache's
    ``<case>_meta.json`` / ``<case>_index.json`` record the path, size and mtime of every
    source NIfTI file; a cached case whose sources differ (another data root, a replaced
    file) is rebuilt, never served stale.

    The slice index (:attr:`index`, :attr:`tumour`, :attr:`shapes`, :attr:`spacings`) needs
    every case once. By default it is built in the constructor; with ``index_slices=False``
    it is built on first use instead, so per-case users (:meth:`case`, :meth:`prepare`,
    :meth:`restore`, as in evaluation) read each volume only when they ask for it.
    """

    channels = 4
    region_names = REGIONS

    def __init__(self, root: str | Path, split: str = "train", crop: int | tuple[int, int] | None = 192,
                 image_size: tuple[int, int] | None = None, fractions: tuple[float, float] = (0.15, 0.15),
                 seed: int = 0, skip_empty: bool | None = None, cache_dir: str | Path | None = None,
                 memory_cases: int = 64, require_masks: bool = True, progress: bool = False,
                 index_slices: bool = True, nan_to_num: bool = False):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"BraTS 2021 data root {root} is not a directory")
        cases = find_cases(root)
        if not cases:
            raise ValueError(f"no BraTS2021_<5 digits> case folders under {root}")
        self.names = split_names(list(cases), split, fractions, seed)
        self.folders = [cases[n] for n in self.names]
        for folder in self.folders:
            for kind, f in case_files(folder).items():
                if kind == "seg" and not require_masks:
                    continue
                if not f.is_file():
                    raise FileNotFoundError(f"BraTS file {f} does not exist")
        self.root, self.split = root, split
        self.has_masks = require_masks
        self.crop = None if crop is None else ((crop, crop) if isinstance(crop, int) else tuple(crop))
        self.image_size = None if image_size is None else tuple(image_size)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.memory_cases = max(1, memory_cases)
        self._mem: OrderedDict[int, dict] = OrderedDict()
        self.skip_empty = (split == "train") if skip_empty is None else skip_empty
        self.progress, self.nan_to_num = progress, nan_to_num
        self._index: list[tuple[int, int]] | None = None
        self._tumour: list[bool] = []
        self._shapes: list[tuple[int, ...]] = []
        self._spacings: list[tuple[float, ...]] = []
        if index_slices:
            self._build_index()

    # --------------------------------------------------------------- slice index
    def _ensure_index(self) -> None:
        if self._index is None:
            self._build_index()

    def _build_index(self) -> None:
        index, tumour, shapes, spacings = [], [], [], []
        it = range(len(self.names))
        if self.progress:
            from tqdm import tqdm
            it = tqdm(it, desc=f"BraTS {self.split}: indexing", unit="case", leave=False)
        for i in it:
            info = self._slice_info(i)
            shapes.append(tuple(info["shape"]))
            spacings.append(tuple(info["spacing"]))
            for z, (brain, tum) in enumerate(zip(info["brain"], info["tumour"])):
                if brain or not self.skip_empty:
                    index.append((i, z))
                    tumour.append(bool(tum))
        if not index:
            raise ValueError(f"BraTS split {self.split!r} under {self.root} has no slices with brain")
        self._index, self._tumour, self._shapes, self._spacings = index, tumour, shapes, spacings

    @property
    def index(self) -> list[tuple[int, int]]:
        """(case, z) of every item."""
        self._ensure_index()
        return self._index

    @property
    def tumour(self) -> list[bool]:
        """Whether item k's slice holds tumour."""
        self._ensure_index()
        return self._tumour

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """(X, Y, Z) of every case."""
        self._ensure_index()
        return self._shapes

    @property
    def spacings(self) -> list[tuple[float, ...]]:
        """Voxel spacing (mm, X, Y, Z) of every case."""
        self._ensure_index()
        return self._spacings

    # --------------------------------------------------------------- caching
    def _sources(self, i: int) -> dict[str, dict]:
        """Path, size and mtime of the NIfTI files case ``i`` is built from (the cache key)."""
        out = {}
        for kind, f in case_files(self.folders[i]).items():
            if kind == "seg" and not self.has_masks:
                continue
            st = f.stat()
            out[kind] = {"path": str(f.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        return out

    @staticmethod
    def _read_cached_json(path: Path, sources: dict[str, dict]) -> dict | None:
        """A cache JSON file when it was written from exactly ``sources``, else None."""
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        stored = data.get("sources") if isinstance(data, dict) else None
        if not isinstance(stored, dict) or any(stored.get(k) != v for k, v in sources.items()):
            return None
        return data

    def _slice_info(self, i: int) -> dict:
        path = None if self.cache_dir is None else self.cache_dir / f"{self.names[i]}_index.json"
        if path is not None:
            sources = self._sources(i)
            info = self._read_cached_json(path, sources)
            if info is not None:
                return info
        case = self.case(i)
        img, seg = case["image"], case["seg"]
        info = {"shape": case["shape"], "spacing": case["spacing"],
                "brain": np.any(img != 0, axis=(1, 2, 3)).tolist(),
                "tumour": (np.any(seg != 0, axis=(1, 2)).tolist() if seg is not None
                           else [False] * img.shape[0])}
        if path is not None:
            from ..hub import atomic_write_json
            atomic_write_json(path, dict(info, sources=sources))
        return info

    def case(self, i: int) -> dict:
        """Preprocessed arrays of case ``i`` (see :func:`load_case`)."""
        if i in self._mem:
            self._mem.move_to_end(i)
            return self._mem[i]
        case, sources = None, None
        if self.cache_dir is not None:
            stem = self.cache_dir / self.names[i]
            sources = self._sources(i)
            files = [Path(f"{stem}_image.npy"), Path(f"{stem}_meta.json")]
            if self.has_masks:
                files.append(Path(f"{stem}_seg.npy"))
            meta = self._read_cached_json(files[1], sources)
            if meta is not None and all(f.is_file() for f in files):
                case = {"image": np.load(files[0], mmap_mode="r"),
                        "seg": np.load(files[2], mmap_mode="r") if self.has_masks else None,
                        "spacing": tuple(meta["spacing"]), "shape": tuple(meta["shape"])}
        if case is None:
            case = load_case(self.folders[i], with_seg=self.has_masks, nan_to_num=self.nan_to_num)
            if self.cache_dir is not None:
                self._write_cache(i, case, sources)
        self._mem[i] = case
        while len(self._mem) > self.memory_cases:
            self._mem.popitem(last=False)
        return case

    def _write_cache(self, i: int, case: dict, sources: dict[str, dict]) -> None:
        from ..hub import atomic_write_json

        stem = self.cache_dir / self.names[i]
        for key in ("image", "seg"):
            if case[key] is None:
                continue
            tmp = Path(f"{stem}_{key}.tmp{os.getpid()}.npy")
            np.save(tmp, case[key])
            os.replace(tmp, f"{stem}_{key}.npy")
        # written last: it vouches for the .npy files above
        atomic_write_json(f"{stem}_meta.json", {"spacing": list(case["spacing"]),
                                                "shape": list(case["shape"]),
                                                "sources": sources})

    # --------------------------------------------------------------- slices
    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """``... x X x Y`` full slices -> cropped and resized network input ``... x h x w``."""
        return prepare_slices(image, self.crop, self.image_size)

    def restore(self, logits: torch.Tensor, full_size: tuple[int, int]) -> torch.Tensor:
        """Network output ``N x C x h x w`` -> ``N x C x X x Y`` in the original slice grid
        (see :func:`restore_slices`)."""
        return restore_slices(logits, full_size, self.crop)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> dict:
        i, z = self.index[k]
        case = self.case(i)
        image = self.prepare(torch.from_numpy(np.asarray(case["image"][z], dtype=np.float32)))
        item = {"image": image.contiguous(), "case": i, "slice": z}
        if case["seg"] is not None:
            seg = torch.from_numpy(np.array(case["seg"][z]))
            mask = labels_to_regions(seg).float()
            if self.crop is not None:
                mask = crop_or_pad(mask, self.crop)
            if self.image_size is not None and tuple(mask.shape[-2:]) != self.image_size:
                mask = (F.interpolate(mask[None], size=self.image_size, mode="bilinear",
                                      align_corners=False)[0] > 0.5).float()
            item["mask"] = mask.contiguous()
        return item

    def sample_weights(self, tumour_weight: float = 3.0) -> torch.Tensor:
        """Per-item sampling weights: slices with tumour count ``tumour_weight`` times."""
        t = torch.tensor(self.tumour, dtype=torch.float64)
        return 1.0 + (tumour_weight - 1.0) * t
