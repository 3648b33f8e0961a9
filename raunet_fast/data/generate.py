"""Synthetic lesion-like data written in exactly the real ISIC 2018 / BraTS 2021 layouts.

Lesions and tumours have fuzzy, low-contrast boundaries, texture and distractors (hairs,
tissue texture, noise), so a network has to learn something to segment them. Everything
is seeded: the same arguments write the same files.

CLI: ``raunet-fast make-data --kind isic2018|brats2021 --out DIR --cases N``.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from .isic import SPLIT_NAMES, input_dir_name, truth_dir_name

ISIC_FRACTIONS = (0.6, 0.2, 0.2)  # training, validation, test


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], cells: int = 6) -> np.ndarray:
    """Smooth random field of ``shape`` (2-D or 3-D) with values in [-1, 1]: coarse Gaussian
    noise upsampled with separable bicubic interpolation (torch, fast at 240 x 240 x 155)."""
    import torch
    import torch.nn.functional as F

    coarse = rng.standard_normal([max(2, min(cells, s)) for s in shape]).astype(np.float32)
    t = torch.from_numpy(coarse)
    if len(shape) == 2:
        t = F.interpolate(t[None, None], size=tuple(shape), mode="bicubic", align_corners=True)[0, 0]
    elif len(shape) == 3:
        cz = t.shape[2]
        t = F.interpolate(t.permute(2, 0, 1)[:, None], size=tuple(shape[:2]), mode="bicubic",
                          align_corners=True)[:, 0]                      # cz x X x Y
        t = t.reshape(1, 1, cz, -1).transpose(2, 3)                     # 1 x 1 x XY x cz
        t = F.interpolate(t, size=(t.shape[2], shape[2]), mode="bicubic", align_corners=True)
        t = t[0, 0].reshape(shape[0], shape[1], shape[2])
    else:
        raise ValueError(f"smooth fields are 2-D or 3-D, got shape {tuple(shape)}")
    field = t.numpy()
    return field / (np.abs(field).max() + 1e-8)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _unique_ids(rng: np.random.Generator, n: int, digits: int) -> list[str]:
    """``n`` increasing, non-contiguous ids (like the real releases)."""
    steps = rng.integers(1, 4, size=n)
    ids = np.cumsum(steps) - steps[0]
    if ids[-1] >= 10 ** digits:
        raise ValueError(f"cannot make {n} distinct {digits}-digit ids")
    return [f"{i:0{digits}d}" for i in ids]


def _prepare_out(out: Path, owned: list[Path], overwrite: bool) -> None:
    """Refuse to write into a non-empty ``out`` (old and new cases would mix, a case id could
    end up in two splits) unless ``overwrite``, which first removes the dataset folders
    ``owned`` (those this generator writes); other files in ``out`` are kept."""
    import shutil

    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if overwrite:
        for d in owned:
            if d.is_dir() and not d.is_symlink():
                shutil.rmtree(d)
            elif d.exists() or d.is_symlink():
                d.unlink()
    elif out.is_dir() and any(out.iterdir()):
        raise ValueError(f"--out {out} is not empty; its old cases would mix with the new ones. "
                         f"Choose an empty or new folder, or pass --overwrite to replace the "
                         f"generated data set there")
    out.mkdir(parents=True, exist_ok=True)


# ------------------------------------------------------------------------- ISIC 2018
def synth_lesion(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One dermoscopy-like RGB image (uint8 H x W x 3) and its lesion mask (bool H x W)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    s = min(height, width)
    # skin: colour, slow illumination change, vignetting, fine texture
    skin = np.array([0.86, 0.66, 0.56]) + rng.uniform(-0.07, 0.07, 3)
    light = 1.0 + 0.08 * _smooth_field(rng, (height, width), 3)
    r_centre = np.hypot((yy - height / 2) / (height / 2), (xx - width / 2) / (width / 2))
    vignette = 1.0 - rng.uniform(0.05, 0.3) * np.clip(r_centre - 0.7, 0, None) ** 2
    img = skin[None, None, :] * (light * vignette)[..., None]
    img = img + 0.03 * _smooth_field(rng, (height, width), 24)[..., None]

    # lesion: irregular star-shaped outline, fuzzy rim, blotchy pigment, low contrast
    cy = height / 2 + rng.uniform(-0.18, 0.18) * height
    cx = width / 2 + rng.uniform(-0.18, 0.18) * width
    r0 = rng.uniform(0.14, 0.3) * s
    theta = np.arctan2(yy - cy, xx - cx)
    rho = np.hypot(yy - cy, xx - cx)
    radius = np.ones_like(theta)
    for k in range(2, 7):
        radius += rng.uniform(0, 0.22 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    radius = r0 * radius * (1 + 0.08 * _smooth_field(rng, (height, width), 8))
    mask = rho < radius
    softness = rng.uniform(0.05, 0.14) * r0
    inside = _sigmoid((radius - rho) / softness)
    pigment = np.array([0.45, 0.28, 0.2]) + rng.uniform(-0.08, 0.08, 3)
    contrast = rng.uniform(0.3, 0.65)
    blotch = 0.75 + 0.25 * _smooth_field(rng, (height, width), 10)
    amount = (contrast * inside * blotch)[..., None]
    img = img * (1 - amount) + pigment[None, None, :] * amount
    # freckles: small dark spots outside the lesion (distractors, not in the mask)
    for _ in range(rng.integers(0, 4)):
        fy, fx = rng.uniform(0, height), rng.uniform(0, width)
        fr = rng.uniform(0.015, 0.04) * s
        d = np.hypot(yy - fy, xx - fx)
        if np.any(mask & (d < 3 * fr)):
            continue
        spot = _sigmoid((fr - d) / (0.3 * fr)) * rng.uniform(0.2, 0.45)
        img = img * (1 - spot[..., None]) + pigment[None, None, :] * spot[..., None]
    # hairs: thin dark curves crossing the image
    for _ in range(rng.integers(0, 4)):
        t = np.linspace(0, 1, 4 * s)
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        ang = rng.uniform(0, np.pi)
        bend = rng.uniform(-0.3, 0.3) * s
        px = x0 + (t - 0.5) * 1.5 * s * np.cos(ang) + bend * np.sin(np.pi * t) * np.sin(ang)
        py = y0 + (t - 0.5) * 1.5 * s * np.sin(ang) - bend * np.sin(np.pi * t) * np.cos(ang)
        ok = (px >= 0) & (px < width) & (py >= 0) & (py < height)
        hair = np.zeros((height, width))
        hair[py[ok].astype(int), px[ok].astype(int)] = 1.0
        hair = ndimage.gaussian_filter(hair, 0.6) * 2.5
        img = img * (1 - 0.5 * np.clip(hair, 0, 1))[..., None]
    img = img + rng.normal(0, 0.035, img.shape)
    img = ndimage.gaussian_filter(img, (0.7, 0.7, 0))
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), mask


def make_isic2018(out: str | Path, cases: int, shape: tuple[int, int] = (192, 256), seed: int = 0,
                  fractions: Sequence[float] = ISIC_FRACTIONS, size_jitter: float = 0.125,
                  overwrite: bool = False) -> dict[str, int]:
    """Write ``cases`` synthetic lesions into the official ISIC 2018 task 1 folders under
    ``out`` (training / validation / test, each with ground truth), ``.txt`` files included.

    Image sizes vary by up to ``size_jitter`` around ``shape`` (H, W), as real ISIC images
    vary. ``out`` must be empty or missing, unless ``overwrite``: then the six ISIC folders
    in it are removed first. Returns the number of cases per split.
    """
    from PIL import Image

    if cases < 3:
        raise ValueError(f"--cases must be at least 3 (one per split), got {cases}")
    if min(shape) < 8:
        raise ValueError(f"ISIC shape must be at least 8x8, got {shape}")
    out = Path(out)
    _prepare_out(out, [out / f(split) for split in SPLIT_NAMES
                       for f in (input_dir_name, truth_dir_name)], overwrite)
    rng = np.random.default_rng(seed)
    n_val = max(1, round(fractions[1] * cases))
    n_test = max(1, round(fractions[2] * cases))
    counts = {"train": cases - n_val - n_test, "val": n_val, "test": n_test}
    if counts["train"] < 1:
        counts = {"train": cases - 2, "val": 1, "test": 1}
    ids = iter(_unique_ids(rng, cases, 7))
    for split, n in counts.items():
        in_dir, gt_dir = out / input_dir_name(split), out / truth_dir_name(split)
        in_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        for d in (in_dir, gt_dir):
            (d / "LICENSE.txt").write_text("Synthetic data generated by raunet-fast make-data; "
                                           "not ISIC images.\n")
            (d / "ATTRIBUTION.txt").write_text(f"ISIC 2018 task 1 layout, {SPLIT_NAMES[split]} split "
                                               f"(synthetic)\n")
        for _ in range(n):
            case_id = next(ids)
            h = int(round(shape[0] * (1 + rng.uniform(-size_jitter, size_jitter))))
            w = int(round(shape[1] * (1 + rng.uniform(-size_jitter, size_jitter))))
            img, mask = synth_lesion(rng, h, w)
            Image.fromarray(img).save(in_dir / f"ISIC_{case_id}.jpg", quality=92)
            Image.fromarray((mask * 255).astype(np.uint8)).save(
                gt_dir / f"ISIC_{case_id}_segmentation.png")
    return counts


# ------------------------------------------------------------------------- BraTS 2021
def synth_brain(rng: np.random.Generator, shape: tuple[int, int, int], with_et: bool = True
                ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Four int16 MRI-like modalities and a 0/1/2/4 label map of ``shape`` (X, Y, Z)."""
    X, Y, Z = shape
    g = np.stack(np.meshgrid(np.arange(X), np.arange(Y), np.arange(Z), indexing="ij"), 0)
    g = g.astype(np.float32)
    size = np.array(shape, dtype=np.float32)[:, None, None, None]
    # brain: perturbed ellipsoid
    c_brain = size / 2 + rng.uniform(-0.03, 0.03, (3, 1, 1, 1)) * size
    r_brain = size * rng.uniform(0.36, 0.44, (3, 1, 1, 1))
    q_brain = np.sqrt((((g - c_brain) / r_brain) ** 2).sum(0))
    q_brain = q_brain + 0.06 * _smooth_field(rng, shape, 4)
    brain = q_brain < 1.0
    # tumour: centre inside the brain, irregular nested shells
    c_t = c_brain + rng.uniform(-0.45, 0.45, (3, 1, 1, 1)) * r_brain
    r_wt = np.minimum(r_brain * rng.uniform(0.3, 0.5), 0.45 * r_brain) * rng.uniform(0.8, 1.2, (3, 1, 1, 1))
    q = np.sqrt((((g - c_t) / r_wt) ** 2).sum(0)) + 0.18 * _smooth_field(rng, shape, 5)
    t_tc = rng.uniform(0.5, 0.7)
    t_ncr = t_tc * rng.uniform(0.45, 0.7)
    seg = np.zeros(shape, dtype=np.uint8)
    wt = (q < 1.0) & brain
    tc = (q < t_tc) & brain
    ncr = (q < t_ncr) & brain
    seg[wt] = 2
    if with_et:
        seg[tc] = 4
        seg[ncr] = 1
    else:
        seg[tc] = 1
    # fuzzy region memberships used for intensities
    w = rng.uniform(0.05, 0.1)
    s_wt = _sigmoid((1.0 - q) / w)
    s_tc = _sigmoid((t_tc - q) / w)
    s_ncr = _sigmoid((t_ncr - q) / w)
    s_et = (s_tc - s_ncr) if with_et else np.zeros_like(s_tc)
    tissue = _smooth_field(rng, shape, 12)
    contrast = rng.uniform(0.6, 1.0)
    recipes = {  # base, tissue texture, edema(WT), core(TC), enhancing(ET), necrosis
        "flair": (0.50, 0.10, 0.35, 0.05, 0.05, -0.10),
        "t1": (0.60, 0.12, -0.08, -0.15, 0.00, -0.10),
        "t1ce": (0.55, 0.10, -0.05, -0.05, 0.45, -0.15),
        "t2": (0.45, 0.10, 0.30, 0.15, 0.00, 0.20),
    }
    mods = {}
    for name, (base, tex, e_wt, e_tc, e_et, e_ncr) in recipes.items():
        v = (base + tex * tissue + contrast * (e_wt * s_wt + e_tc * s_tc + e_et * s_et + e_ncr * s_ncr))
        v = v * (1 + 0.05 * _smooth_field(rng, shape, 3)) + rng.normal(0, 0.05, shape)
        scale = rng.uniform(600, 1200)
        mods[name] = np.where(brain, np.clip(v, 0.02, None) * scale, 0).astype(np.int16)
    return mods, seg


def make_brats2021(out: str | Path, cases: int, shape: tuple[int, int, int] = (240, 240, 155),
                   seed: int = 0, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                   no_et_fraction: float = 0.15, overwrite: bool = False) -> dict[str, int]:
    """Write ``cases`` synthetic BraTS 2021 cases (``BraTS2021_<id>/BraTS2021_<id>_*.nii.gz``)
    under ``out``: flair, t1, t1ce, t2 (int16) and seg (uint8, labels 0/1/2/4); about
    ``no_et_fraction`` of the cases have no enhancing tumour, as in real low-grade cases.
    ``out`` must be empty or missing, unless ``overwrite``: then the ``BraTS2021_<id>``
    case folders in it are removed first."""
    import nibabel as nib

    from .brats import CASE_RE

    if cases < 1:
        raise ValueError(f"--cases must be at least 1, got {cases}")
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"BraTS shape must be three sizes >= 8, got {shape}")
    spacing = tuple(float(v) for v in spacing)
    if len(spacing) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing):
        raise ValueError(f"BraTS spacing must be three positive sizes in mm, got {spacing}")
    out = Path(out)
    owned = sorted(p for p in out.iterdir() if CASE_RE.match(p.name)) if out.is_dir() else []
    _prepare_out(out, owned, overwrite)
    rng = np.random.default_rng(seed)
    sx, sy, sz = spacing
    # orientation of the real release: x and y flipped (LPS-like), origin at the far corner
    affine = np.array([[-sx, 0, 0, 0], [0, -sy, 0, (shape[1] - 1) * sy], [0, 0, sz, 0],
                       [0, 0, 0, 1]], dtype=np.float64)
    for case_id in _unique_ids(rng, cases, 5):
        name = f"BraTS2021_{case_id}"
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        mods, seg = synth_brain(rng, tuple(shape), with_et=rng.random() >= no_et_fraction)
        for mod, vol in mods.items():
            img = nib.Nifti1Image(vol, affine)
            img.header.set_zooms((sx, sy, sz))
            nib.save(img, str(folder / f"{name}_{mod}.nii.gz"))
        img = nib.Nifti1Image(seg, affine)
        img.header.set_zooms((sx, sy, sz))
        nib.save(img, str(folder / f"{name}_seg.nii.gz"))
    return {"all": cases}


def make_nifti_folder(out: str | Path, cases: int, shape: tuple[int, int, int] = (96, 96, 64),
                      seed: int = 0, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                      channels: int = 2, per_channel_files: bool = False,
                      dataset_json: bool = True, overwrite: bool = False) -> dict[str, int]:
    """Write ``cases`` synthetic volumes in the NIfTI folder layout
    (``images/<case>.nii.gz`` X x Y x Z [x C], or ``images/<case>_000C.nii.gz`` per channel
    with ``per_channel_files``; ``labels/<case>.nii.gz``): the brain-like volumes of
    :func:`synth_brain` (its first ``channels`` modalities, 1 to 4) with labels 1 (core)
    and 2 (oedema); ``dataset.json`` names them unless ``dataset_json`` is False."""
    import json

    import nibabel as nib

    if cases < 1 or not 1 <= channels <= 4:
        raise ValueError(f"need cases >= 1 and channels in 1..4, got {cases}, {channels}")
    out = Path(out)
    owned = [out / "images", out / "labels", out / "dataset.json"]
    _prepare_out(out, [p for p in owned if p.exists()], overwrite)
    rng = np.random.default_rng(seed)
    affine = np.diag([*(float(v) for v in spacing), 1.0])
    for sub in ("images", "labels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for case_id in _unique_ids(rng, cases, 3):
        name = f"case_{case_id}"
        mods, seg = synth_brain(rng, tuple(shape), with_et=False)
        vols = [mods[m] for m in ("flair", "t1", "t1ce", "t2")[:channels]]
        if per_channel_files:
            for c, v in enumerate(vols):
                nib.save(nib.Nifti1Image(v, affine), str(out / "images" / f"{name}_{c:04d}.nii.gz"))
        else:
            data = vols[0] if channels == 1 else np.stack(vols, -1)
            nib.save(nib.Nifti1Image(data, affine), str(out / "images" / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(seg, affine), str(out / "labels" / f"{name}.nii.gz"))
    if dataset_json:
        (out / "dataset.json").write_text(json.dumps(
            {"labels": {"background": 0, "core": 1, "oedema": 2}}, indent=1))
    return {"all": cases}


# ------------------------------------------------------------------------- CLI
def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        parts = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 192x256 or 240x240x155, got {text!r}")
    if not parts or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"shape must look like 192x256 or 240x240x155, got {text!r}")
    return parts


def _parse_spacing(text: str) -> tuple[float, float, float]:
    """``"1x1x2.5"`` -> (1.0, 1.0, 2.5): exactly three positive, finite sizes in mm."""
    try:
        parts = tuple(float(p) for p in text.lower().split("x"))
    except ValueError:
        parts = ()
    if len(parts) != 3 or not all(math.isfinite(v) and v > 0 for v in parts):
        raise argparse.ArgumentTypeError(f"spacing must be three positive sizes in mm like "
                                         f"1x1x1 or 0.9x0.9x2.5, got {text!r}")
    return parts  # type: ignore[return-value]


def _cmd_make_data(args: argparse.Namespace) -> int:
    from ..io.lock import folder_lock

    with folder_lock(args.out, "make-data"):
        return _make_data(args)


def _make_data(args: argparse.Namespace) -> int:
    if args.kind == "isic2018":
        shape = args.shape or (192, 256)
        if len(shape) == 1:
            shape = shape * 2
        if len(shape) != 2:
            raise ValueError(f"--shape for isic2018 is HxW, got {'x'.join(map(str, shape))}")
        counts = make_isic2018(args.out, args.cases, shape, args.seed, overwrite=args.overwrite)
    else:
        shape = args.shape or (240, 240, 155)
        if len(shape) != 3:
            raise ValueError(f"--shape for brats2021 is XxYxZ, got {'x'.join(map(str, shape))}")
        spacing = args.spacing or (1.0, 1.0, 1.0)
        counts = make_brats2021(args.out, args.cases, shape, args.seed, spacing,
                                overwrite=args.overwrite)
    print(f"wrote {args.kind} data to {args.out}: " +
          ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("make-data", help="write synthetic ISIC 2018 / BraTS 2021 data in the real layouts",
                       description="Write lesion-like synthetic data in exactly the folder layout "
                                   "and file formats of ISIC 2018 task 1 or BraTS 2021, for tests, "
                                   "demos and smoke runs.")
    p.add_argument("--kind", required=True, choices=["isic2018", "brats2021"],
                   help="data set layout to write (required)")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder (created; must be empty unless --overwrite)")
    p.add_argument("--cases", required=True, type=int,
                   help="number of cases (ISIC: split 60/20/20 over training/validation/test)")
    p.add_argument("--shape", type=_parse_shape, default=None,
                   help="image size HxW for ISIC (default 192x256, jittered per image) or volume "
                        "XxYxZ for BraTS (default 240x240x155)")
    p.add_argument("--spacing", type=_parse_spacing, default=None, metavar="XxYxZ",
                   help="BraTS voxel spacing in mm as XxYxZ (default 1x1x1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated data (default: 0)")
    p.add_argument("--overwrite", action="store_true",
                   help="--out may hold an earlier generated data set: its data set folders "
                        "(ISIC split folders / BraTS2021_<id> case folders) are removed first "
                        "(without it a non-empty --out is refused)")
    p.set_defaults(func=_cmd_make_data)
