"""The Evaluator: a :class:`~raunet_fast.engine.predictor.Predictor` plus metrics.

2-D data (ISIC 2018, image folders): each image is fed at the training size (or in
windows at its own resolution), the logits are resized back to the image's own size and
thresholded, and Dice, Jaccard, the ISIC thresholded Jaccard, Hausdorff distance and HD95
(pixels) are computed at the original resolution. When exactly one of prediction and truth
is empty the distances are the image diagonal (the largest possible distance).

BraTS 2021: all axial slices of a case are predicted, pasted back into the full slice
grid, re-stacked into the 3-D volume, turned into the 0/1/2/4 label map a submission
would hold (ET over TC over WT, so the scored regions are nested) and scored per region
(WT, TC, ET) with Dice, Jaccard, HD and HD95 in mm (voxel spacing from the NIfTI header),
using the BraTS rules for empty masks: both empty gives Dice 1 and HD95 0, exactly one
empty gives Dice 0 and HD95 373.13.

3-D checkpoints (``spatial_dims=3``; BraTS 2021 or a NIfTI folder): each volume is
predicted whole by 3-D sliding windows and scored per region in mm
(:mod:`raunet_fast.engine.volume_inference`).
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import EvaluateConfig, check_threshold, expand_extent, fit_size, write_config
from ..hub import atomic_write_json
from ..io.checkpoints import check_checkpoint_folder, read_preprocessing
from ..io.nifti import write_labels
from ..io.tables import write_csv
from ..io.outputs import check_out
from ..metrics import BRATS_EMPTY_DISTANCE, ISIC_JACCARD_THRESHOLD, all_metrics, diagonal
from . import distributed as dist
from .device import autocast_dtype, resolve_device, set_threads
from .predictor import (Predictor, check_channels, default_window, load_ensemble, load_model,
                        missing_size_error, resolve_image_size)
from . import volume_inference as v3d

METRICS = v3d.METRICS  # dice, jaccard, hd, hd95


def stats(values: list[float]) -> dict[str, float]:
    """Mean, std, median and count of the finite values."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": float("nan"), "std": float("nan"), "median": float("nan"), "n": 0}
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals)),
            "median": float(statistics.median(vals)), "n": len(vals)}


class Evaluator:
    """Score ``cfg.checkpoint`` on a split (see the module docstring). ``model``: score this
    model instead of loading the checkpoint's weights (its preprocessing still applies)."""

    def __init__(self, cfg: EvaluateConfig, model=None):
        self.cfg = cfg.validate()
        self.checkpoint = Path(cfg.checkpoint)
        self.model = model
        self.out = None if cfg.out is None else Path(cfg.out)

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Resolve the checkpoint's preprocessing and build the predictor (a model that
        cannot be fused is refused before any output folder is made)."""
        cfg, ck = self.cfg, self.checkpoint
        cfg.apply_reading_options()
        set_threads(cfg.threads)
        if self.model is None:
            check_checkpoint_folder(ck)
        self.prep = prep = read_preprocessing(ck)
        if prep.get("dataset") and prep["dataset"] != cfg.dataset:
            raise ValueError(f"{ck} was trained on {prep['dataset']!r}, not {cfg.dataset!r}")
        self.device = resolve_device(cfg.device)
        if self.model is None:
            self.model = load_model(ck, self.device)
        v3d.check_volume_dataset(cfg.dataset, ck, self.model)
        self.threshold = float(prep.get("threshold", 0.5) if cfg.threshold is None else cfg.threshold)
        self.split_seed = int(prep.get("split_seed", 0) if cfg.split_seed is None else cfg.split_seed)
        check_threshold(self.threshold)  # the checkpoint's own, too
        if v3d.is_volume_model(self.model):
            self._setup_volumes(prep)
        else:
            self._setup_images(prep)

    def _setup_images(self, prep: dict[str, Any]) -> None:
        """A 2-D model: resized images or 2-D windows; BraTS slice by slice."""
        cfg, ck = self.cfg, self.checkpoint
        brats = cfg.dataset == "brats2021"
        if brats and cfg.window is not None:
            raise ValueError("--window is for checkpoints trained on patches (2-D images, 3-D "
                             "volumes); this 2-D BraTS checkpoint scores slice by slice at its "
                             "crop and size")
        self.window, self.overlap = default_window(cfg.window, cfg.overlap, cfg.image_size,
                                                   None if brats else prep.get("patch"))
        self.image_size = resolve_image_size(ck, prep, cfg.image_size, self.window)
        self.crop = cfg.crop if cfg.crop is not None else prep.get("crop", 192 if brats else None)
        if self.image_size is None and not brats and self.window is None:
            raise missing_size_error(ck)
        self.predictor = self._build_predictor(prep)

    def _setup_volumes(self, prep: dict[str, Any]) -> None:
        """A 3-D model: whole volumes in 3-D windows (default: the training patch)."""
        cfg = self.cfg
        v3d.check_volume_options(cfg.image_size, cfg.crop)
        self.window = v3d.volume_window(cfg.window, prep, self.model, self.checkpoint)
        self.overlap = 0.25 if cfg.overlap is None else cfg.overlap
        self.image_size = self.crop = None
        self.volumes, self.label_values = self._volumes()  # data checked before any output
        self.predictor = self._build_predictor(prep)
        self.predictor.progress = cfg.progress

    def _build_predictor(self, prep: dict[str, Any]) -> Predictor:
        cfg = self.cfg
        dev = self.device
        amp_dtype = autocast_dtype(cfg.amp, dev)
        self.model = model = self.model.to(dev).eval()
        if cfg.window is not None and not v3d.is_volume_model(model):  # 3-D: volume_window
            self.window = fit_size("--window", expand_extent("--window", self.window, 2),
                                   model.size_multiple)
        if cfg.image_size is not None:
            self.image_size = fit_size("--image-size", self.image_size, model.size_multiple)
        extra = load_ensemble(self.checkpoint, cfg.ensemble, prep, model, dev,
                              same_split=cfg.dataset in ("folder", *v3d.VOLUME_DATASETS))
        return Predictor.from_model(model, dev, fused=cfg.fused, dtype=cfg.dtype, tta=cfg.tta,
                                    ensemble=extra, amp_dtype=amp_dtype,
                                    batch_size=cfg.batch_size)

    def prediction_folder(self) -> Path | None:
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
        if not self.cfg.save_predictions:
            return None
        if self.out is None:
            raise ValueError("save_predictions needs an output folder")
        folder = self.out / "predictions"
        folder.mkdir(exist_ok=True)
        return folder

    # ------------------------------------------------------------------ scoring
    def run(self) -> dict[str, Any]:
        """Score every case; write ``out/cases.csv``, ``out/summary.json`` and
        ``out/config.json`` when ``out`` is given (existing ones only with ``overwrite``);
        return the summary."""
        with dist.session(self.cfg.device):
            return self._run()

    def _run(self) -> dict[str, Any]:
        # under torchrun each rank scores its share of the cases, rank 0 writes the tables
        if self.out is not None:
            check_out(self.out, ["cases.csv", "summary.json", "config.json"], self.cfg.overwrite)
        if not dist.is_main():
            self.cfg.progress = False
        self.setup()
        pred_dir = self.prediction_folder()
        if v3d.is_volume_model(self.model):
            rows, metrics, extra = self.score_volumes(pred_dir)
        elif self.cfg.dataset == "brats2021":
            rows, metrics, extra = self.score_brats(pred_dir)
        else:
            rows, metrics, extra = self.score_images(pred_dir)
        summary = self.summary(rows, metrics, extra)
        if self.out is not None and dist.is_main():
            write_csv(self.out / "cases.csv", rows, float_format=".10g")
            atomic_write_json(self.out / "summary.json", summary)
            write_config(self.cfg, self.out)
        return summary

    def _bar(self, total: int, unit: str):
        """This rank's case indices (all of them in one process), with a progress bar."""
        from tqdm import tqdm

        return tqdm(dist.shard(range(total)), desc=f"evaluate {self.cfg.split}", unit=unit,
                    disable=not self.cfg.progress)

    @staticmethod
    def _all_rows(rows: list[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
        """The rows of every rank's cases, in case order."""
        return [row for _, row in sorted(dist.gather_lists(rows), key=lambda r: r[0])]

    def score_brats(self, pred_dir: Path | None):
        from ..data.brats import REGIONS, BraTS2021, case_files, labels_to_regions

        cfg = self.cfg
        ds = BraTS2021(cfg.data_root, cfg.split, crop=self.crop, image_size=self.image_size,
                       skip_empty=False, memory_cases=1, seed=self.split_seed,
                       cache_dir=cfg.cache_dir, index_slices=False, nan_to_num=cfg.nan_to_num)
        check_channels(self.model, ds.channels, len(REGIONS), self.checkpoint)
        rows = []
        for i in self._bar(len(ds.names), "case"):
            case = ds.case(i)
            vol = torch.from_numpy(np.asarray(case["image"], dtype=np.float32))  # Z x 4 x X x Y
            labels = self.predictor.predict_volume(vol, ds.crop, ds.image_size, self.threshold)
            rows.append((i, brats_row(ds.names[i], labels_to_regions(labels),
                                      labels_to_regions(np.asarray(case["seg"])),
                                      case["spacing"])))
            if pred_dir is not None:
                write_labels(labels, case_files(ds.folders[i])["flair"],
                             pred_dir / f"{ds.names[i]}.nii.gz")
        rows = self._all_rows(rows)
        extra = {"regions": list(REGIONS), "distance_unit": "mm",
                 "empty_rule": v3d.empty_rule(brats=True)}
        return rows, region_metrics(rows, REGIONS), extra

    def _volumes(self):
        """The split as whole volumes (NIfTI folder: the checkpoint's label values, one per
        output channel)."""
        from ..data.volumes import build_volumes

        cfg, brats = self.cfg, self.cfg.dataset == "brats2021"
        labels = None if brats else v3d.checkpoint_labels(self.prep, self.model.out_channels)
        vols = build_volumes(cfg.dataset, cfg.data_root, cfg.split, seed=self.split_seed,
                             cache_dir=cfg.cache_dir, nan_to_num=cfg.nan_to_num,
                             memory_cases=1, labels=labels)
        check_channels(self.model, vols.channels, len(vols.region_names), self.checkpoint)
        return vols, labels

    def score_volumes(self, pred_dir: Path | None):
        """A 3-D model: each volume predicted whole in 3-D windows, its label map scored per
        region in mm (and written to ``pred_dir`` as ``<case>.nii.gz``)."""
        vols, values = self.volumes, self.label_values
        brats, regions = values is None, tuple(vols.region_names)
        rows = []
        for i in self._bar(len(vols), "case"):
            v = vols.volume(i)
            logits = self.predictor.logits_windowed(v.image, self.window, self.overlap)
            labels = v3d.label_map(vols.to_labels, logits, self.threshold)
            pred = v3d.label_regions(labels, values)
            rows.append((i, v3d.volume_row(v.name, pred, v.regions.numpy(), v.spacing,
                                           regions, brats)))
            if pred_dir is not None:
                write_labels(labels, v.reference, pred_dir / f"{v.name}.nii.gz")
        rows = self._all_rows(rows)
        extra = {"regions": list(regions), "distance_unit": "mm", "spatial_dims": 3,
                 "empty_rule": v3d.empty_rule(brats)}
        return rows, region_metrics(rows, regions), extra

    def score_images(self, pred_dir: Path | None):
        from ..data import build_dataset
        from ..data.common import read_mask, resize_pair

        cfg = self.cfg
        kw = {"seed": self.split_seed, "channels": self.model.in_channels} \
            if cfg.dataset == "folder" else {}
        ds = build_dataset(cfg.dataset, cfg.data_root, cfg.split, image_size=None,
                           require_masks=True, convert_channels=cfg.convert_channels, **kw)
        check_channels(self.model, ds.channels, 1, self.checkpoint)
        rows = []
        for i in self._bar(len(ds), "image"):
            image, _ = ds.load_case(i, draft_size=self.image_size)  # decoded as in training
            mask = read_mask(ds.mask_paths[i])  # scored at the original resolution
            x, _ = resize_pair(image, None, self.image_size)
            logits = self.predictor.predict_image(x, mask.shape, self.window, self.overlap)
            pred = (torch.sigmoid(logits[0]) > self.threshold).numpy()
            rows.append((i, image_row(ds.names[i], pred, mask)))
            if pred_dir is not None:
                save_mask_png(pred, pred_dir / f"{ds.names[i]}_segmentation.png")
        rows = self._all_rows(rows)
        metrics = {k: stats([r[k] for r in rows]) for k in (*METRICS, "thresholded_jaccard")}
        extra = {"distance_unit": "pixels",
                 "thresholded_jaccard_threshold": ISIC_JACCARD_THRESHOLD,
                 "empty_rule": "both empty: Dice 1, HD 0; one empty: Dice 0, HD = image "
                               "diagonal"}
        return rows, metrics, extra

    def summary(self, rows, metrics, extra) -> dict[str, Any]:
        cfg, name = self.cfg, self.predictor.name
        return {"checkpoint": str(self.checkpoint), "dataset": cfg.dataset,
                "data_root": str(cfg.data_root), "split": cfg.split, "cases": len(rows),
                "threshold": self.threshold,
                "image_size": None if self.image_size is None else list(self.image_size),
                **({"window": list(self.window), "overlap": self.overlap}
                   if self.window is not None else {}),
                "model": name if cfg.amp == "none" else f"{name} (amp {cfg.amp})",
                "metrics": metrics, **extra}


def region_metrics(rows: list[dict[str, Any]], regions) -> dict[str, Any]:
    """Statistics of each metric per region, and of the per-case mean over the regions."""
    metrics = {name: {k: stats([r[f"{k}_{name}"] for r in rows]) for k in METRICS}
               for name in regions}
    metrics["mean"] = {k: stats([float(np.mean([r[f"{k}_{n}"] for n in regions]))
                                 for r in rows]) for k in METRICS}
    return metrics


def brats_row(name: str, pred: np.ndarray, truth: np.ndarray, spacing) -> dict[str, Any]:
    """Per-region scores of one BraTS case (regions ``3 x Z x X x Y``; spacing in mm)."""
    from ..data.brats import REGIONS

    sx, sy, sz = spacing
    row: dict[str, Any] = {"case": name}
    for r, region in enumerate(REGIONS):
        m = all_metrics(pred[r], truth[r], spacing=(sz, sx, sy),
                        empty_distance=BRATS_EMPTY_DISTANCE)
        for k in METRICS:
            row[f"{k}_{region}"] = m[k]
    return row


def image_row(name: str, pred: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Scores of one 2-D image at its own resolution."""
    from ..metrics import thresholded_jaccard

    m = all_metrics(pred, mask, empty_distance=diagonal(mask.shape))
    return {"case": name, **m, "thresholded_jaccard": thresholded_jaccard(pred, mask),
            "height": mask.shape[0], "width": mask.shape[1]}


def save_mask_png(pred: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(pred.astype(np.uint8) * 255).save(path)


def evaluate(checkpoint, dataset: str, data_root, split: str = "val", out=None, *,
             model=None, **options) -> dict[str, Any]:
    """Score ``checkpoint`` on a split (Python API of ``raunet-fast evaluate``; ``options``:
    the fields of :class:`~raunet_fast.config.EvaluateConfig`). Returns the summary."""
    cfg = EvaluateConfig.from_dict(dict(options, checkpoint=checkpoint, dataset=dataset,
                                        data_root=data_root, split=split, out=out),
                                   where="evaluate()")
    return Evaluator(cfg, model=model).run()


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable table of a summary."""
    lines = [f"{summary['dataset']} {summary['split']}: {summary['cases']} cases "
             f"(distances in {summary['distance_unit']})"]
    m = summary["metrics"]
    if "regions" in summary:
        lines.append(f"{'region':8s} {'Dice':>14s} {'Jaccard':>14s} {'HD':>16s} {'HD95':>16s}")
        for name in (*summary["regions"], "mean"):
            lines.append(f"{name:8s} " + " ".join(
                f"{m[name][k]['mean']:>8.4f}±{m[name][k]['std']:<6.3f}" if k in ("dice", "jaccard")
                else f"{m[name][k]['mean']:>9.2f}±{m[name][k]['std']:<7.2f}" for k in METRICS))
    else:
        for k in (*METRICS, "thresholded_jaccard"):
            lines.append(f"  {k:20s} {m[k]['mean']:10.4f} ± {m[k]['std']:.4f}")
    return "\n".join(lines)
