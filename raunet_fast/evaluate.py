"""Evaluation of a trained checkpoint: per-case CSV and a summary JSON.

2-D data (ISIC 2018, image folders): each image is fed at the training size, the logits
are resized back to the image's own size and thresholded, and Dice, Jaccard, the ISIC
thresholded Jaccard, Hausdorff distance and HD95 (pixels) are computed at the original
resolution. When exactly one of prediction and truth is empty the distances are the
image diagonal (the largest possible distance).

BraTS 2021: all axial slices of a case are predicted, pasted back into the full slice
grid, re-stacked into the 3-D volume, turned into the 0/1/2/4 label map a submission
would hold (ET over TC over WT, so the scored regions are nested) and scored per region
(WT, TC, ET) with Dice,
Jaccard, HD and HD95 in mm (voxel spacing from the NIfTI header), using the BraTS rules
for empty masks: both empty gives Dice 1 and HD95 0, exactly one empty gives Dice 0 and
HD95 373.13.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .hub import atomic_write_bytes, atomic_write_json
from .metrics import BRATS_EMPTY_DISTANCE, ISIC_JACCARD_THRESHOLD, all_metrics, diagonal
from .train import PREPROCESSING_NAME, autocast_dtype, resolve_device

METRICS = ("dice", "jaccard", "hd", "hd95")


def _stats(values: list[float]) -> dict[str, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": float("nan"), "std": float("nan"), "median": float("nan"), "n": 0}
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals)),
            "median": float(statistics.median(vals)), "n": len(vals)}


def read_preprocessing(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's ``preprocessing.json`` ({} when it has none)."""
    path = Path(checkpoint) / PREPROCESSING_NAME
    if not path.is_file():
        return {}
    try:
        prep = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(prep, dict):
        raise ValueError(f"{path} holds a JSON {type(prep).__name__}, not an object with the "
                         f"preprocessing settings (dataset, image_size, ...)")
    return prep


def check_checkpoint_folder(checkpoint: Path) -> None:
    """A clear error when ``checkpoint`` is not a folder written by training / save_pretrained."""
    from .hub import CONFIG_NAME

    what = "a checkpoint folder written by training or save_pretrained (e.g. RUN_DIR/best)"
    if not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist; pass {what}")
    if not checkpoint.is_dir():
        raise ValueError(f"checkpoint {checkpoint} is a file, not a folder; pass {what}")
    if not (checkpoint / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} has no {CONFIG_NAME}; pass {what}")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    fields = list(rows[0]) if rows else ["case"]
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.10g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_bytes(path, buf.getvalue().encode())


@torch.no_grad()
def _predict(model, x: torch.Tensor, device, amp_dtype, batch_size: int) -> torch.Tensor:
    outs = []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].to(device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outs.append(model(xb).float().cpu())
    return torch.cat(outs)


def predict_windowed(model, x: torch.Tensor, window, overlap: float, device, amp_dtype,
                     batch_size: int) -> torch.Tensor:
    """``C x H x W`` image -> ``K x H x W`` float32 CPU logits at the image's own resolution,
    from overlapping windows (:func:`~raunet_fast.sliding_window.sliding_window_inference`,
    ``batch_size`` windows per call, under autocast when ``amp_dtype``)."""
    from .sliding_window import sliding_window_inference

    def run(xb):
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            return model(xb)
    return sliding_window_inference(run, x[None], window, overlap=overlap,
                                    batch_size=batch_size, device=device)[0].cpu()


def add_prediction_args(p: argparse.ArgumentParser, ensemble_note: str) -> None:
    """--tta, --ensemble, --window, --overlap: how predictions are made (evaluate, predict)."""
    from .cli import parse_size

    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: the mean of the predictions over 4 flips "
                        "(raunet_fast.tta.FlipTTA; 4x the inference time)")
    p.add_argument("--ensemble", type=Path, nargs="+", default=(), metavar="CHECKPOINT",
                   help=f"more checkpoints trained alike ({ensemble_note}): the mean of all "
                        f"the models' predictions")
    p.add_argument("--window", type=parse_size, default=None, metavar="S|HxW",
                   help="2-D: predict each image at its own resolution in overlapping S x S "
                        "windows, blended, instead of resizing to the network size (for models "
                        "trained on patches; default for a checkpoint trained with --patch)")
    p.add_argument("--overlap", type=float, default=None,
                   help="with --window: fraction of a window its neighbours share (default 0.25)")


def check_window(window, overlap, image_size, default=None):
    """The (h, w) window and the overlap of ``--window`` / ``--overlap`` (None: no windows),
    or a one-line error for combinations that do not apply. ``default``: the checkpoint's
    training patch (``preprocessing.json``), used when neither a window nor an image size is
    given."""
    if window is None and image_size is None and default:
        window = tuple(default)
    if window is None:
        if overlap is not None:
            raise ValueError("--overlap applies to --window (sliding-window prediction)")
        return None, 0.25
    from .sliding_window import _pair

    window = _pair(window, "--window")
    if image_size is not None:
        raise ValueError("--window predicts at each image's own resolution; --image-size "
                         "(resize to the network size) does not apply with it")
    overlap = 0.25 if overlap is None else overlap
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"--overlap must be in [0, 1), got {overlap}")
    return window, overlap


def segment_volume(model, vol: torch.Tensor, crop, image_size, device, amp_dtype,
                   batch_size: int, threshold: float) -> np.ndarray:
    """BraTS: one case's preprocessed volume ``Z x 4 x X x Y`` -> its ``Z x X x Y`` uint8
    label map 0/1/2/4.

    The axial slices are cropped / resized as in training, predicted in batches of
    ``batch_size``, the logits resized back and pasted into the full slice grid, each region
    (WT, TC, ET) thresholded and the regions re-stacked into labels (ET over TC over WT, so
    the regions of the label map are nested). Used by evaluation and prediction alike."""
    from .data.brats import prepare_slices, regions_to_labels, restore_slices

    logits = _predict(model, prepare_slices(vol, crop, image_size), device, amp_dtype, batch_size)
    logits = restore_slices(logits, vol.shape[-2:], crop)
    cut = math.log(threshold / (1 - threshold))
    regions = (logits > cut).permute(1, 0, 2, 3).numpy()  # 3 x Z x X x Y
    return regions_to_labels(regions)


def write_brats_labels(labels: np.ndarray, reference: Path, path: Path) -> None:
    """Write a ``Z x X x Y`` label map as a uint8 NIfTI volume ``X x Y x Z`` with the affine
    and header of ``reference`` (the case's flair), atomically."""
    import os

    import nibabel as nib

    ref = nib.load(str(reference))
    header = ref.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1, 0)
    img = nib.Nifti1Image(np.ascontiguousarray(np.moveaxis(labels, 0, 2), dtype=np.uint8),
                          ref.affine, header)
    path = Path(path)
    tmp = path.with_name(f".{path.name[:-len('.nii.gz')]}.tmp{os.getpid()}.nii.gz")
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_run_options(batch_size: int, image_size, out) -> None:
    """Options evaluate and predict share: batch size, image size, an --out that is no file."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
        raise ValueError(f"image_size must be two sizes >= 1 (H, W), got {image_size}")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose another --out")


#: preprocessing.json keys that members of an ensemble must share with the first checkpoint
ENSEMBLE_KEYS = ("dataset", "image_size", "patch", "crop", "output", "regions")


def load_ensemble(checkpoint: Path, extra, prep: dict[str, Any], model, device,
                  same_split: bool = False) -> list:
    """The models of the ``extra`` checkpoints (an ensemble with ``model``, the one of
    ``checkpoint``): each must be a checkpoint folder whose preprocessing (:data:`ENSEMBLE_KEYS`)
    and input / output channels match the first's. ``same_split`` (scoring data sets split by
    ``split_seed``): the members must share the split too, or one member's training cases
    would be among the cases scored."""
    from .hub import from_pretrained

    models = []
    for ck in extra or ():
        ck = Path(ck)
        check_checkpoint_folder(ck)
        p = read_preprocessing(ck)
        for key in ENSEMBLE_KEYS + (("split_seed",) if same_split else ()):
            if p.get(key) != prep.get(key):
                raise ValueError(f"--ensemble {ck}: its preprocessing {key!r} is {p.get(key)!r}, "
                                 f"{checkpoint}'s is {prep.get(key)!r}; ensemble members must "
                                 f"be trained alike")
        m = from_pretrained(ck, map_location=device).eval()
        if (m.in_channels, m.out_channels) != (model.in_channels, model.out_channels):
            raise ValueError(f"--ensemble {ck}: {m.in_channels} -> {m.out_channels} channels, "
                             f"{checkpoint}: {model.in_channels} -> {model.out_channels}")
        models.append(m)
    return models


def build_forward(model, device: torch.device, fused: bool, dtype: str | None,
                  tta: bool = False, ensemble=()):
    """``model`` itself, or with ``fused`` its folded, fused inference form
    (:func:`~raunet_fast.inference.build_inference_model`, backend ``auto``) in ``dtype``
    (``fp32`` / ``bf16`` / ``fp16``; None: fp32 on CPU, bf16 on CUDA); with ``tta`` wrapped
    in :class:`~raunet_fast.tta.FlipTTA` (mean over 4 flips); with ``ensemble`` (more models)
    the mean of all of them (:class:`~raunet_fast.tta.Ensemble`, each fused as asked). Returns
    the module and a short description ("reference", "fused bf16", "... + flip TTA")."""
    if ensemble:
        from .tta import Ensemble

        members = [build_forward(m, device, fused, dtype)[0] for m in (model, *ensemble)]
        fwd = Ensemble(members)
        _, name = build_forward(model, device, fused, dtype)
        name = f"{name} ensemble of {len(members)}"
        if tta:
            from .tta import FlipTTA

            return FlipTTA(fwd), f"{name} + flip TTA"
        return fwd, name
    if tta:
        from .tta import FlipTTA

        fwd, name = build_forward(model, device, fused, dtype)
        return FlipTTA(fwd), f"{name} + flip TTA"
    if not fused:
        return model, "reference"
    from .inference import build_inference_model, inference_dtype

    dt = inference_dtype(dtype, device)
    try:
        fast = build_inference_model(model.eval(), dtype=dt)
    except ValueError as e:
        raise ValueError(f"--fused: {e}") from e
    name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dt]
    return fast, f"fused {name}"


def evaluate(checkpoint: str | Path, dataset: str, data_root: str | Path, split: str = "val",
             out: str | Path | None = None, device: str = "auto", batch_size: int = 8,
             image_size: tuple[int, int] | None = None, crop: int | None = None,
             threshold: float | None = None, split_seed: int | None = None, amp: str = "none",
             save_predictions: bool = False, cache_dir: str | Path | None = None,
             progress: bool = True, model=None, fused: bool = False,
             dtype: str | None = None, tta: bool = False, ensemble=(),
             window=None, overlap: float | None = None) -> dict[str, Any]:
    """Score ``checkpoint`` (a folder written by training / ``save_pretrained``) on a split.

    ``image_size`` / ``crop`` / ``threshold`` default to the values training stored in the
    checkpoint's ``preprocessing.json``. Writes ``out/cases.csv`` and ``out/summary.json``
    (when ``out`` is given) and returns the summary.

    BraTS: each case's NIfTI files are read once per run (the slice index, which scoring
    does not need, is never built), one case in memory at a time; ``cache_dir`` is the
    preprocessed ``.npy`` cache of training's ``--cache-dir`` (read when it matches the
    source files, written otherwise). Other data sets ignore it.

    ``tta=True`` scores the mean prediction over four flips
    (:class:`~raunet_fast.tta.FlipTTA`); ``ensemble``: more checkpoints (trained alike)
    whose models are averaged with this one (:class:`~raunet_fast.tta.Ensemble`). ``window``
    (2-D): score predictions made at each image's own resolution in overlapping windows of
    this size (``overlap``: the fraction neighbours share, default 0.25) instead of resizing
    to the network size; ``batch_size`` then counts windows. A checkpoint trained on patches
    (``train --patch``) is scored that way by default, with its patch size as the window.

    ``fused=True`` scores the folded, fused inference model
    (:func:`~raunet_fast.inference.build_inference_model`) in ``dtype`` (``"fp32"``,
    ``"bf16"``, ``"fp16"``; None: fp32 on CPU, bf16 on CUDA) instead of the reference model;
    ``amp`` must then be ``"none"`` (the fused model has its own precision). ``dtype``
    without ``fused`` is an error: the reference model's precision is ``amp``.
    """
    from tqdm import tqdm

    from .hub import from_pretrained

    checkpoint = Path(checkpoint)
    check_run_options(batch_size, image_size, out)
    if window is not None and dataset == "brats2021":
        raise ValueError("--window is for 2-D data; BraTS volumes are scored slice by slice "
                         "at the checkpoint's crop and size")
    if crop is not None and crop < 1:
        raise ValueError(f"crop must be >= 1, got {crop}")
    if model is None:
        check_checkpoint_folder(checkpoint)
    prep = read_preprocessing(checkpoint)
    window, overlap = check_window(window, overlap, image_size,
                                   prep.get("patch") if dataset != "brats2021" else None)
    if prep.get("dataset") and prep["dataset"] != dataset:
        raise ValueError(f"{checkpoint} was trained on {prep['dataset']!r}, not {dataset!r}")
    if image_size is None and prep.get("image_size") and window is None:
        image_size = tuple(prep["image_size"])
    if crop is None:
        crop = prep.get("crop", 192 if dataset == "brats2021" else None)
    threshold = float(prep.get("threshold", 0.5) if threshold is None else threshold)
    split_seed = int(prep.get("split_seed", 0) if split_seed is None else split_seed)
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if image_size is None and dataset != "brats2021" and window is None:
        has = (checkpoint / PREPROCESSING_NAME).is_file()
        raise ValueError(f"{checkpoint} has no "
                         f"{'image_size in its ' if has else ''}{PREPROCESSING_NAME} (the size "
                         f"it was trained at); pass --image-size, or --window for a model "
                         f"trained on patches")
    if image_size is not None and prep.get("patch"):
        warnings.warn(f"{checkpoint} was trained on {prep['patch']} patches at native "
                      f"resolution; --image-size resizes the images it is scored on")
    if fused and amp != "none":
        raise ValueError(f"--amp {amp} does not apply to --fused (the fused model runs in its "
                         f"own precision): drop --amp and choose --dtype fp32, bf16 or fp16")
    if dtype is not None and not fused:
        raise ValueError(f"--dtype {dtype} is the precision of the fused model; pass --fused "
                         f"with it (the reference model's precision is --amp)")
    dev = resolve_device(device)
    amp_dtype = autocast_dtype(amp, dev)
    if model is None:
        model = from_pretrained(checkpoint, map_location=dev)
    model = model.to(dev).eval()
    extra = load_ensemble(checkpoint, ensemble, prep, model, dev,
                          same_split=dataset in ("folder", "brats2021"))

    # built (and a model that cannot be fused refused) before any output folder is made
    forward, model_name = build_forward(model, dev, fused, dtype, tta, extra)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
    pred_dir = None
    if save_predictions:
        if out is None:
            raise ValueError("save_predictions needs an output folder")
        pred_dir = out / "predictions"
        pred_dir.mkdir(exist_ok=True)

    rows: list[dict[str, Any]] = []
    if dataset == "brats2021":
        from .data.brats import REGIONS, BraTS2021, case_files, labels_to_regions

        ds = BraTS2021(data_root, split, crop=crop, image_size=image_size, skip_empty=False,
                       memory_cases=1, seed=split_seed, cache_dir=cache_dir, index_slices=False)
        _check_channels(model, ds.channels, len(REGIONS), checkpoint)
        for i in tqdm(range(len(ds.names)), desc=f"evaluate {split}", unit="case",
                      disable=not progress):
            case = ds.case(i)
            vol = torch.from_numpy(np.asarray(case["image"], dtype=np.float32))  # Z x 4 x X x Y
            # the label map a BraTS submission would hold (ET over TC over WT), and its regions
            labels = segment_volume(forward, vol, ds.crop, ds.image_size, dev, amp_dtype,
                                    batch_size, threshold)
            pred = labels_to_regions(labels)
            truth = labels_to_regions(np.asarray(case["seg"]))  # 3 x Z x X x Y
            sx, sy, sz = case["spacing"]
            row: dict[str, Any] = {"case": ds.names[i]}
            for r, name in enumerate(REGIONS):
                m = all_metrics(pred[r], truth[r], spacing=(sz, sx, sy),
                                empty_distance=BRATS_EMPTY_DISTANCE)
                for k in METRICS:
                    row[f"{k}_{name}"] = m[k]
            rows.append(row)
            if pred_dir is not None:
                write_brats_labels(labels, case_files(ds.folders[i])["flair"],
                                   pred_dir / f"{ds.names[i]}.nii.gz")
        summary_metrics = {name: {k: _stats([r[f"{k}_{name}"] for r in rows]) for k in METRICS}
                           for name in REGIONS}
        summary_metrics["mean"] = {k: _stats([float(np.mean([r[f"{k}_{n}"] for n in REGIONS]))
                                              for r in rows]) for k in METRICS}
        extra = {"regions": list(REGIONS), "distance_unit": "mm",
                 "empty_rule": f"both empty: Dice 1, HD 0; one empty: Dice 0, HD {BRATS_EMPTY_DISTANCE}"}
    else:
        from .data import build_dataset
        from .data.common import read_mask, resize_pair
        from .metrics import thresholded_jaccard

        kw = {"seed": split_seed} if dataset == "folder" else {}
        ds = build_dataset(dataset, data_root, split, image_size=None, require_masks=True, **kw)
        _check_channels(model, ds.channels, 1, checkpoint)
        for i in tqdm(range(len(ds)), desc=f"evaluate {split}", unit="image", disable=not progress):
            image, _ = ds.load_case(i, draft_size=image_size)  # decoded as in training
            mask = read_mask(ds.mask_paths[i])  # scored at the original resolution
            x, _ = resize_pair(image, None, image_size)
            if window is not None:
                logits = predict_windowed(forward, x, window, overlap, dev, amp_dtype,
                                          batch_size)[None]
            else:
                logits = _predict(forward, x[None], dev, amp_dtype, 1)
            if tuple(logits.shape[-2:]) != tuple(mask.shape):
                logits = F.interpolate(logits, size=mask.shape, mode="bilinear",
                                       align_corners=False)
            pred = (torch.sigmoid(logits[0, 0]) > threshold).numpy()
            m = all_metrics(pred, mask, empty_distance=diagonal(mask.shape))
            row = {"case": ds.names[i], **m,
                   "thresholded_jaccard": thresholded_jaccard(pred, mask),
                   "height": mask.shape[0], "width": mask.shape[1]}
            rows.append(row)
            if pred_dir is not None:
                from PIL import Image

                Image.fromarray(pred.astype(np.uint8) * 255).save(
                    pred_dir / f"{ds.names[i]}_segmentation.png")
        summary_metrics = {k: _stats([r[k] for r in rows]) for k in (*METRICS, "thresholded_jaccard")}
        extra = {"distance_unit": "pixels",
                 "thresholded_jaccard_threshold": ISIC_JACCARD_THRESHOLD,
                 "empty_rule": "both empty: Dice 1, HD 0; one empty: Dice 0, HD = image diagonal"}

    summary = {"checkpoint": str(checkpoint), "dataset": dataset, "data_root": str(data_root),
               "split": split, "cases": len(rows), "threshold": threshold,
               "image_size": None if image_size is None else list(image_size),
               **({"window": list(window), "overlap": overlap} if window is not None else {}),
               "model": model_name if amp == "none" else f"{model_name} (amp {amp})",
               "metrics": summary_metrics, **extra}
    if out is not None:
        _write_csv(out / "cases.csv", rows)
        atomic_write_json(out / "summary.json", summary)
    return summary


def _check_channels(model, in_ch: int, out_ch: int, checkpoint: Path) -> None:
    if model.in_channels != in_ch or model.out_channels != out_ch:
        raise ValueError(f"the model in {checkpoint} has {model.in_channels} input / "
                         f"{model.out_channels} output channels; this data set needs {in_ch} / {out_ch}")


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


def _cmd_evaluate(args: argparse.Namespace) -> int:
    summary = evaluate(args.checkpoint, args.dataset, args.data_root, args.split, args.out,
                       device=args.device, batch_size=args.batch_size, image_size=args.image_size,
                       crop=args.crop, threshold=args.threshold, split_seed=args.split_seed,
                       amp=args.amp, save_predictions=args.save_predictions,
                       cache_dir=args.cache_dir, progress=args.progress, fused=args.fused,
                       dtype=args.dtype, tta=args.tta, ensemble=args.ensemble,
                       window=args.window, overlap=args.overlap)
    print(format_summary(summary))
    if args.fused or args.tta:
        print(f"scored with the {summary['model']} model")
    print(f"per-case scores in {Path(args.out) / 'cases.csv'}, summary in "
          f"{Path(args.out) / 'summary.json'}")
    return 0


def add_cli(sub) -> None:
    from .cli import parse_size

    p = sub.add_parser("evaluate", help="score a checkpoint on a data split (cases.csv, summary.json)",
                       description="Score a trained checkpoint on a split: Dice, Jaccard, Hausdorff "
                                   "and HD95 per case (BraTS: per region WT/TC/ET on 3-D volumes), "
                                   "written to EVAL_DIR/cases.csv and EVAL_DIR/summary.json.")
    p.add_argument("--checkpoint", required=True, type=Path, help="e.g. RUN_DIR/best")
    p.add_argument("--dataset", required=True, choices=["isic2018", "brats2021", "folder"])
    p.add_argument("--data-root", required=True, type=Path)
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--out", required=True, type=Path, help="output folder EVAL_DIR (created)")
    p.add_argument("--image-size", type=parse_size, default=None, metavar="S|HxW",
                   help="network input size (default: the one stored with the checkpoint)")
    p.add_argument("--crop", type=int, default=None, help="BraTS crop (default: from the checkpoint)")
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--split-seed", type=int, default=None,
                   help="BraTS / folder split seed (default: the one used in training)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"],
                   help="autocast precision of the reference model (not with --fused)")
    add_prediction_args(p, ensemble_note="other --seed, same split")
    p.add_argument("--fused", action="store_true",
                   help="score the folded, fused inference model (the fast path of "
                        "raunet_fast.inference.build_inference_model; norm=batch models) instead "
                        "of the reference model; --amp is rejected with it, use --dtype")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"],
                   help="precision of the --fused model (default fp32 on CPU, bf16 on CUDA)")
    p.add_argument("--save-predictions", action="store_true",
                   help="also write the predicted masks (PNG / NIfTI) to EVAL_DIR/predictions/")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="BraTS: keep preprocessed volumes here as .npy (as in train; the same "
                        "folder can be shared with training)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=_cmd_evaluate)
