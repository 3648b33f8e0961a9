"""Training: any model of the family on ISIC 2018, BraTS 2021 or an image/mask folder.

The paper's recipe: Adam (lr 1e-4), Dice + Focal loss, random flips / rotations /
elastic deformation, dropout, early stopping on validation Dice.

A run directory holds::

    RUN_DIR/run.json          the training configuration
    RUN_DIR/log.csv, log.json one row per finished epoch (also kept in the training state,
                              so a resumed run rewrites them consistently)
    RUN_DIR/result.json       best epoch and validation Dice, whether it stopped early
    RUN_DIR/last/             weights after the latest epoch (from_pretrained loads it)
        training_state.pt     optimizer, scheduler, scaler, epoch, early-stopping and RNG state
        checkpoint.json       epoch, validation Dice, SHA-256 of the weights (written last)
        preprocessing.json    what evaluation needs to feed the network (dataset, sizes)
    RUN_DIR/best/             weights of the epoch with the best validation Dice

Checkpoints are written to a temporary folder and swapped in with renames, so a crash or
``kill -9`` at any moment leaves a complete ``last/`` (the old one or the new one);
``--resume`` continues from it, with the same data order and augmentation it would have
had without the interruption (both are seeded per epoch).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .hub import WEIGHTS_NAME, atomic_write_bytes, atomic_write_json

STATE_NAME = "training_state.pt"
CHECKPOINT_NAME = "checkpoint.json"
PREPROCESSING_NAME = "preprocessing.json"

#: options that fix the model or the data; a resumed run must be given the same values
_FIXED = ("model", "dataset", "image_size", "patch", "patches_per_image", "crop",
          "base_channels", "depth", "norm", "deep_supervision", "seed", "split_seed")


@dataclass
class TrainConfig:
    """Everything a training run depends on (``raunet-fast train --help`` documents each)."""

    data_root: str
    out: str
    model: str = "raunet"
    dataset: str = "isic2018"
    epochs: int = 150
    batch_size: int = 8
    image_size: tuple[int, int] | None = None  # None: 512x512 (2-D sets), the crop (BraTS)
    patch: tuple[int, int] | None = None       # 2-D: train on patches at native resolution
    patches_per_image: int = 1                  # with patch: patches cut per decoded image
    crop: int | None = 192                      # BraTS axial crop
    base_channels: int = 64
    depth: int = 5
    norm: str = "batch"
    dropout: float = 0.1
    deep_supervision: bool = False
    lr: float = 1e-4
    weight_decay: float = 0.0
    scheduler: str = "plateau"
    patience: int = 20
    lambda_dice: float = 1.0
    lambda_focal: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    augment: bool = True
    tumour_weight: float = 3.0
    threshold: float = 0.5
    amp: str = "none"
    compile: bool = False
    seed: int = 0
    num_workers: int = 2
    max_steps_per_epoch: int | None = None
    device: str = "auto"
    cache_dir: str | None = None
    cache_images: bool = False
    resume: bool = False
    progress: bool = True
    split_seed: int = 0

    def resolved_image_size(self) -> tuple[int, int] | None:
        if self.image_size is not None:
            return tuple(self.image_size)
        if self.patch is not None:  # native resolution
            return None
        if self.dataset == "brats2021":
            return None
        return (512, 512)


# ---------------------------------------------------------------------- helpers
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device "
                         f"(torch {torch.__version__}); use --device cpu")
    return torch.device(name)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "none":
        return None
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp must be none, bf16 or fp16, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device; on CPU use --amp bf16 or none")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_datasets(cfg: TrainConfig, splits=("train", "val")) -> list:
    from .data import build_dataset

    size = cfg.resolved_image_size()
    kw: dict[str, Any] = {}
    if cfg.dataset == "brats2021":
        kw.update(crop=cfg.crop, cache_dir=cfg.cache_dir, seed=cfg.split_seed,
                  progress=cfg.progress)
    else:
        kw.update(cache=cfg.cache_images)
        if cfg.dataset == "folder":
            kw.update(seed=cfg.split_seed)
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
    return out


def patch_context(cfg: TrainConfig) -> tuple[int, int]:
    """Margin (pixels per side) cut around each training patch when it will be augmented:
    a square rotated by up to 45 degrees stays inside 1.42x its side, so 0.21 of the patch
    on each side keeps rotations and deformations on real image pixels; the trainer cuts
    the patch from the middle after augmenting. (Elastic displacements, a fraction of the
    augmented input's size, are larger in pixels by the same 1.42x.)"""
    if cfg.patch is None or not cfg.augment:
        return (0, 0)
    return (math.ceil(0.21 * cfg.patch[0]), math.ceil(0.21 * cfg.patch[1]))


def preprocessing_info(cfg: TrainConfig, ds) -> dict[str, Any]:
    size = cfg.resolved_image_size()
    return {"dataset": cfg.dataset, "image_size": None if size is None else list(size),
            "patch": None if cfg.patch is None else list(cfg.patch),
            "crop": cfg.crop if cfg.dataset == "brats2021" else None,
            "in_channels": ds.channels, "regions": list(ds.region_names),
            "threshold": cfg.threshold, "output": "sigmoid per channel",
            "split_seed": cfg.split_seed,
            "normalization": ("z-score per modality over brain voxels"
                              if cfg.dataset == "brats2021" else "pixel / 255")}


# ---------------------------------------------------------------------- checkpoints
def write_checkpoint(run: Path, name: str, model, info: dict[str, Any],
                     preprocessing: dict[str, Any], state: dict[str, Any] | None = None) -> Path:
    """Write a complete checkpoint folder ``run/name`` atomically (temp folder + renames)."""
    final, tmp, old = run / name, run / f".{name}.tmp", run / f".{name}.old"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    atomic_write_json(tmp / PREPROCESSING_NAME, preprocessing)
    sha = _sha256(tmp / WEIGHTS_NAME)
    if state is not None:
        buf = io.BytesIO()
        torch.save(dict(state, weights_sha256=sha), buf)
        atomic_write_bytes(tmp / STATE_NAME, buf.getvalue())
    atomic_write_json(tmp / CHECKPOINT_NAME, dict(info, weights_sha256=sha))  # completeness marker
    _fsync_dir(tmp)
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(run)
    if old.exists():
        shutil.rmtree(old)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def checkpoint_problems(folder: Path, need_state: bool = False) -> list[str]:
    """Why ``folder`` is not a complete checkpoint (empty list: it is one: marker present,
    weights hash matches, training state present when ``need_state``)."""
    if not folder.is_dir():
        return [f"{folder} is missing"]
    marker, weights = folder / CHECKPOINT_NAME, folder / WEIGHTS_NAME
    try:
        info = json.loads(marker.read_text())
        expected = info["weights_sha256"]
    except FileNotFoundError:
        return [f"{marker} is missing"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"{marker} is corrupt ({type(e).__name__}: {e})"]
    try:
        if _sha256(weights) != expected:
            return [f"{weights} does not match the SHA-256 in {marker} (truncated or replaced)"]
    except OSError as e:
        return [f"{weights} cannot be read ({e.strerror or e})"]
    if need_state and not (folder / STATE_NAME).is_file():
        return [f"{folder / STATE_NAME} is missing"]
    return []


def checkpoint_ok(folder: Path, need_state: bool = False) -> bool:
    """Whether ``folder`` is a complete checkpoint (marker present, weights hash matches)."""
    return not checkpoint_problems(folder, need_state)


def recover_checkpoint(run: Path, name: str, need_state: bool = False) -> Path | None:
    """After a crash: make ``run/name`` the newest complete checkpoint, drop leftovers.

    Returns None (and deletes nothing) when neither ``run/name`` nor a leftover
    ``.name.tmp`` / ``.name.old`` is complete."""
    final, tmp, old = run / name, run / f".{name}.tmp", run / f".{name}.old"
    if not checkpoint_ok(final, need_state):
        for cand in (tmp, old):  # tmp is newer than old
            if checkpoint_ok(cand, need_state):
                if final.exists():
                    shutil.rmtree(final)
                os.replace(cand, final)
                break
    if not checkpoint_ok(final, need_state):
        return None  # nothing usable: leave every file as it is for the user to inspect
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    return final


def load_training_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE_NAME
    try:
        state = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read training state {path}: {e}") from e
    if state.get("weights_sha256") != _sha256(folder / WEIGHTS_NAME):
        raise ValueError(f"{path} does not belong to the weights in {folder / WEIGHTS_NAME}")
    return state


# ---------------------------------------------------------------------- log
LOG_FIELDS = ["epoch", "train_loss", "val_loss", "val_dice", "lr", "best", "epoch_time_s"]


def read_log(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_log(path: Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write_bytes(path, buf.getvalue().encode())


# ---------------------------------------------------------------------- validation
@torch.no_grad()
def validate(model, loader, loss_fn, device: torch.device, amp_dtype, threshold: float,
             n_cases: int, progress: bool = False) -> dict[str, Any]:
    """Validation loss and Dice per case (image or 3-D volume) and channel, averaged.

    Intersections and sizes are summed over all items of a case (all slices of a BraTS
    volume, all tiles of a patch-trained 2-D image - counted on their ``valid`` pixels, so
    each image pixel once) before the Dice; a case where both prediction and truth of a
    channel are empty scores 1 for it.
    """
    from tqdm import tqdm

    model.eval()
    cut = math.log(threshold / (1 - threshold))
    stats = None
    loss_sum, n_items = 0.0, 0
    for batch in tqdm(loader, desc="  validate", leave=False, disable=not progress, unit="batch"):
        x = batch["image"].to(device, non_blocking=True)
        y = batch["mask"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(x)
        loss_sum += float(loss_fn(logits, y)) * x.shape[0]
        n_items += x.shape[0]
        pred = (logits.float() > cut).float()
        if "valid" in batch:  # tiles: each image pixel counted once, padding never
            valid = batch["valid"].to(device, non_blocking=True)
            pred, y = pred * valid, y * valid
        dims = tuple(range(2, pred.dim()))
        per = torch.stack([(pred * y).sum(dims), pred.sum(dims), y.sum(dims)], -1).double().cpu()
        if stats is None:
            stats = torch.zeros(n_cases, per.shape[1], 3, dtype=torch.float64)
        stats.index_add_(0, batch["case"].long(), per)
    if stats is None:
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


# ---------------------------------------------------------------------- training
def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training as configured; returns a summary of the run."""
    from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler

    from .data.isic import GroupedSampler
    from tqdm import tqdm

    from .data import Augment
    from .hub import from_pretrained
    from .losses import DiceFocalLoss
    from .models import build_model

    _check_config(cfg)
    run = Path(cfg.out)
    device = resolve_device(cfg.device)
    amp_dtype = autocast_dtype(cfg.amp, device)
    progress = cfg.progress
    if run.exists() and not run.is_dir():
        raise ValueError(f"--out {run} is a file, not a folder; choose another --out")

    # ---- resume or fresh start (nothing in the run folder is written before this is settled)
    last, state = None, None
    if cfg.resume:
        last, state = _resume_point(run)
        if last is None:
            _say(f"--resume: {run} is empty or missing; starting a new run", progress)
        else:
            _check_same_run(run, cfg)
            recover_checkpoint(run, "best")
    elif (run / "last").exists() or (run / ".last.tmp").exists() or (run / "log.csv").exists():
        raise ValueError(f"{run} already holds a training run; pass --resume to continue it, or "
                         f"choose another --out")
    run.mkdir(parents=True, exist_ok=True)
    if last is None:
        atomic_write_json(run / "run.json", _jsonable(asdict(cfg)))

    torch.manual_seed(cfg.seed)
    train_ds, val_ds = build_datasets(cfg)
    if not getattr(train_ds, "has_masks", True) or not getattr(val_ds, "has_masks", True):
        raise ValueError("training and validation need ground-truth masks")
    in_ch, out_ch = train_ds.channels, len(train_ds.region_names)
    prep = preprocessing_info(cfg, train_ds)
    if cfg.cache_images:
        # filled here, in the main process: a cache filled lazily in DataLoader workers dies
        # with them at the end of every epoch; this one is inherited by all workers
        for split, ds in (("train", train_ds), ("val", val_ds)):
            if hasattr(ds, "fill_cache"):
                ds.fill_cache(progress, desc=f"caching {split} images")

    if last is not None:
        model = from_pretrained(last, map_location="cpu", dropout=cfg.dropout,
                                deep_supervision=cfg.deep_supervision)
    else:
        model = build_model(cfg.model, in_channels=in_ch, out_channels=out_ch,
                            base_channels=cfg.base_channels, depth=cfg.depth, dropout=cfg.dropout,
                            norm=cfg.norm, deep_supervision=cfg.deep_supervision)
    if (model.in_channels, model.out_channels) != (in_ch, out_ch):
        raise ValueError(f"the checkpoint's model has {model.in_channels} in / {model.out_channels} "
                         f"out channels; the {cfg.dataset} data needs {in_ch} / {out_ch}")
    if cfg.patch is not None and any(v % model.size_multiple for v in cfg.patch):
        warnings.warn(f"--patch {cfg.patch[0]}x{cfg.patch[1]} is not a multiple of the model's "
                      f"size multiple {model.size_multiple}: every forward pass pads it")
    model.to(device)
    fwd = torch.compile(model) if cfg.compile else model

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.scheduler == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=0.5, patience=max(2, cfg.patience // 3))
    elif cfg.scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    else:
        scheduler = None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    start_epoch, best_dice, best_epoch, bad_epochs, stopped = 0, -1.0, 0, 0, False
    rows: list[dict[str, Any]] = []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"])
        start_epoch = int(state["epoch"])
        best_dice, best_epoch = float(state["best_dice"]), int(state["best_epoch"])
        bad_epochs, stopped = int(state["bad_epochs"]), bool(state["stopped_early"])
        rows = [dict(r) for r in state.get("log_rows", [])]
        _say(f"resuming {run} after epoch {start_epoch} (best val Dice {best_dice:.4f} "
             f"at epoch {best_epoch})", progress)
    log_fields = LOG_FIELDS + [f"val_dice_{r}" for r in train_ds.region_names]

    loss_fn = DiceFocalLoss("sigmoid", cfg.lambda_dice, cfg.lambda_focal, cfg.focal_alpha,
                            cfg.focal_gamma)
    augment = (Augment(padding_mode="zeros" if cfg.dataset == "brats2021" else "reflection")
               if cfg.augment else None)
    context = patch_context(cfg)
    pin = device.type == "cuda"
    val_loader = DataLoader(val_ds, batch_size=cfg.batch_size, shuffle=False,
                            num_workers=cfg.num_workers, pin_memory=pin)
    weights = train_ds.sample_weights(cfg.tumour_weight) if hasattr(train_ds, "sample_weights") else None

    if stopped:
        _say(f"{run} stopped early at epoch {start_epoch}; nothing to do", progress)
    last_val = f"{rows[-1]['val_dice']:.4f}" if rows else "-"
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        if stopped:
            break
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        if weights is not None:
            sampler = WeightedRandomSampler(weights, len(train_ds), replacement=True, generator=g)
        elif cfg.patches_per_image > 1:  # an image's patches together: decoded once
            sampler = GroupedSampler(len(train_ds), cfg.patches_per_image, generator=g)
        else:
            sampler = RandomSampler(train_ds, generator=g)
        loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler,
                            num_workers=cfg.num_workers, pin_memory=pin,
                            drop_last=len(train_ds) > cfg.batch_size)
        aug_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch + 500_009)
        steps = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
        model.train()
        total, count = 0.0, 0
        bar = tqdm(total=steps, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, unit="batch",
                   disable=not progress, dynamic_ncols=True)
        for step, batch in enumerate(loader):
            if step >= steps:
                break
            x = batch["image"].to(device, non_blocking=True)
            y = batch["mask"].to(device, non_blocking=True)
            if augment is not None:
                x, y = augment(x, y, aug_gen)
            if context != (0, 0):  # the patch from the middle of its augmented surroundings
                (cy, cx), (ph, pw) = context, cfg.patch
                x, y = x[..., cy:cy + ph, cx:cx + pw], y[..., cy:cy + ph, cx:cx + pw]
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                out = fwd(x)
            loss = loss_fn(out, y)
            if not torch.isfinite(loss):
                raise ValueError(f"loss became {loss.item()} at epoch {epoch} step {step}; "
                                         f"try a lower --lr or --amp none")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += float(loss.detach()) * x.shape[0]
            count += x.shape[0]
            bar.update(1)
            bar.set_postfix(loss=f"{total / count:.4f}", val_dice=last_val, best=f"{max(best_dice, 0):.4f}")
        bar.close()
        if count == 0:
            raise ValueError(f"the training set yielded no batches (size {len(train_ds)}, batch "
                             f"size {cfg.batch_size})")
        val = validate(fwd, val_loader, loss_fn, device, amp_dtype, cfg.threshold,
                       len(val_ds.names), progress)
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val["val_dice"])
            else:
                scheduler.step()
        improved = val["val_dice"] > best_dice
        if improved:
            best_dice, best_epoch, bad_epochs = val["val_dice"], epoch, 0
        else:
            bad_epochs += 1
        stopped = bad_epochs >= cfg.patience
        row = {"epoch": epoch, "train_loss": round(total / count, 6),
               "val_loss": round(val["val_loss"], 6), "val_dice": round(val["val_dice"], 6),
               "lr": float(f"{lr:.4g}"), "best": int(improved),
               "epoch_time_s": round(time.perf_counter() - t0, 2)}
        for name, d in zip(train_ds.region_names, val["val_dice_per_channel"]):
            row[f"val_dice_{name}"] = round(d, 6)
        info = {"epoch": epoch, "val_dice": val["val_dice"], "best_epoch": best_epoch,
                "best_val_dice": best_dice}
        if improved:
            write_checkpoint(run, "best", model, info, prep)
        state = {"epoch": epoch, "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict() if scheduler is not None else None,
                 "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                 "best_dice": best_dice, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                 "stopped_early": stopped, "torch_rng": torch.get_rng_state(),
                 "log_rows": rows + [row],
                 "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None}
        write_checkpoint(run, "last", model, info, prep, state)
        rows.append(row)
        last_val = f"{val['val_dice']:.4f}"
        write_log(run / "log.csv", rows, log_fields)
        atomic_write_json(run / "log.json", rows)
        _say(f"epoch {epoch}/{cfg.epochs}: train loss {total / count:.4f}, val loss "
             f"{val['val_loss']:.4f}, val Dice {val['val_dice']:.4f}"
             f"{' (best)' if improved else ''}, {time.perf_counter() - t0:.1f}s", progress)
        if stopped:
            _say(f"early stopping: no val Dice improvement for {cfg.patience} epochs "
                 f"(best {best_dice:.4f} at epoch {best_epoch})", progress)

    result = {"run_dir": str(run), "epochs_completed": len(rows), "best_epoch": best_epoch,
              "best_val_dice": best_dice, "stopped_early": stopped,
              "best": str(run / "best"), "last": str(run / "last")}
    atomic_write_json(run / "result.json", result)
    return result


def _say(msg: str, progress: bool) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr if progress else sys.stdout)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def _check_config(cfg: TrainConfig) -> None:
    from .data import DATASETS
    from .models import MODEL_NAMES

    if cfg.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {cfg.dataset!r}; choose one of {DATASETS}")
    if cfg.model.lower() not in MODEL_NAMES:
        raise ValueError(f"unknown model {cfg.model!r}; choose one of {sorted(MODEL_NAMES)}")
    for name in ("epochs", "batch_size", "patience"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.max_steps_per_epoch is not None and cfg.max_steps_per_epoch < 1:
        raise ValueError(f"max_steps_per_epoch must be >= 1, got {cfg.max_steps_per_epoch}")
    if not cfg.lr > 0:
        raise ValueError(f"lr must be > 0, got {cfg.lr}")
    if not 0 < cfg.threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {cfg.threshold}")
    if cfg.scheduler not in ("plateau", "cosine", "none"):
        raise ValueError(f"scheduler must be plateau, cosine or none, got {cfg.scheduler!r}")
    if cfg.num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {cfg.num_workers}")
    if cfg.crop is not None and cfg.crop < 1:
        raise ValueError(f"crop must be >= 1 (pixels of the BraTS axial crop), got {cfg.crop}")
    if cfg.image_size is not None and (len(cfg.image_size) != 2 or min(cfg.image_size) < 1):
        raise ValueError(f"image_size must be two sizes >= 1 (H, W), got {cfg.image_size}")
    if cfg.patch is not None:
        if isinstance(cfg.patch, int):
            cfg.patch = (cfg.patch, cfg.patch)
        if len(cfg.patch) != 2 or min(cfg.patch) < 1:
            raise ValueError(f"patch must be two sizes >= 1 (H, W), got {cfg.patch}")
        if cfg.dataset == "brats2021":
            raise ValueError("--patch is for 2-D data; BraTS slices are cropped with --crop")
        if cfg.image_size is not None:
            raise ValueError("--patch trains on patches at each image's own resolution; "
                             "--image-size (resize) does not apply with it")
    if cfg.patches_per_image < 1:
        raise ValueError(f"patches_per_image must be >= 1, got {cfg.patches_per_image}")
    if cfg.patches_per_image != 1 and cfg.patch is None:
        raise ValueError("--patches-per-image needs --patch (it cuts several random patches "
                         "from each decoded image)")
    if not (cfg.tumour_weight > 0 and math.isfinite(cfg.tumour_weight)):
        raise ValueError(f"tumour_weight must be a positive number (1 = uniform sampling), "
                         f"got {cfg.tumour_weight}")


#: what a training run writes into its folder (besides the .last.* / .best.* temporaries)
_RUN_FILES = ("last", "best", "log.csv", "log.json", "run.json", "result.json")


def _resume_point(run: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """``--resume``: the complete ``last/`` checkpoint of ``run`` and its training state, or
    (None, None) when ``run`` is missing or empty (a new run starts). Anything else, a
    folder with run files but no complete loadable checkpoint, is an error that names what
    is broken: a fresh start there would overwrite ``best/``, ``log.csv`` and ``run.json``."""
    if not run.exists() or not any(run.iterdir()):
        return None, None
    last = recover_checkpoint(run, "last", need_state=True)
    hint = f"; remove {run} to start over there, or pass a new --out"
    if last is None:
        problems = checkpoint_problems(run / "last", need_state=True)
        for leftover in (run / ".last.tmp", run / ".last.old"):
            if leftover.exists():
                problems += checkpoint_problems(leftover, need_state=True)
        found = sorted(p.name for p in run.iterdir()
                       if p.name in _RUN_FILES or p.name.startswith((".last.", ".best.")))
        if not found:
            raise ValueError(f"--resume: {run} holds no training run (it contains "
                             f"{', '.join(sorted(p.name for p in run.iterdir())[:5])}){hint}")
        if not (run / "last").exists() and not any(n.startswith(".last.") for n in found):
            problems = [f"{run / 'last'} is missing (found {', '.join(found)}; did the run stop "
                        f"before its first epoch ended?)"]
        raise ValueError(f"--resume: {run} holds no complete checkpoint to continue from: "
                         f"{'; '.join(problems)}{hint}")
    try:
        from .hub import read_config

        read_config(last)
        state = load_training_state(last)
    except (OSError, ValueError) as e:
        raise ValueError(f"--resume: the checkpoint {last} cannot be loaded: {e}{hint}") from e
    return last, state


def _check_same_run(run: Path, cfg: TrainConfig) -> None:
    path = run / "run.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    new = _jsonable(asdict(cfg))
    # options added later: a run.json without them ran with their defaults
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                if f.default is not dataclasses.MISSING}
    diff = [f"{k}: run has {old.get(k, defaults.get(k))!r}, now {new[k]!r}" for k in _FIXED
            if old.get(k, defaults.get(k)) != new[k]]
    if diff:
        raise ValueError(f"--resume: {run} was started with other settings ({'; '.join(diff)}); "
                         f"pass the same options to continue it")


# ---------------------------------------------------------------------- CLI
def add_train_args(p: argparse.ArgumentParser) -> None:
    from .cli import parse_size

    p.add_argument("--model", default="raunet", choices=["raunet", "attention-unet", "unet", "resunet"])
    p.add_argument("--dataset", required=True, choices=["isic2018", "brats2021", "folder"])
    p.add_argument("--data-root", required=True, type=Path, help="folder holding the data set")
    p.add_argument("--out", required=True, type=Path, help="run directory (created)")
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=parse_size, default=None, metavar="S|HxW",
                   help="network input size (default 512 for 2-D data; the crop for BraTS)")
    p.add_argument("--patch", type=parse_size, default=None, metavar="S|HxW",
                   help="2-D: train on random S x S patches of the images at their own "
                        "resolution (validation: whole images in S x S tiles); evaluate / "
                        "predict then default to --window S")
    p.add_argument("--patches-per-image", type=int, default=1, metavar="K",
                   help="with --patch: K random patches per image and epoch, drawn one after "
                        "another so that each image is decoded once for K patches (large "
                        "JPEGs without --cache-images; an epoch is then K times as long). A "
                        "batch then holds batch-size / K images: keep K well below the batch "
                        "size (BatchNorm statistics), ideally a divisor of it")
    p.add_argument("--crop", type=int, default=192, help="BraTS: centre crop of the axial slices")
    p.add_argument("--base-channels", type=int, default=64)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--norm", default="batch", choices=["batch", "instance", "group"])
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--deep-supervision", action="store_true")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (paper: 1e-4)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--scheduler", default="plateau", choices=["plateau", "cosine", "none"])
    p.add_argument("--patience", type=int, default=20,
                   help="early stopping: epochs without val Dice improvement")
    p.add_argument("--lambda-dice", type=float, default=1.0)
    p.add_argument("--lambda-focal", type=float, default=1.0)
    p.add_argument("--focal-alpha", type=float, default=0.25)
    p.add_argument("--focal-gamma", type=float, default=2.0)
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--tumour-weight", type=float, default=3.0,
                   help="BraTS: sampling weight of slices with tumour (1 = uniform)")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=0,
                   help="BraTS / folder: seed of the reproducible train/val/test split by case")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--max-steps-per-epoch", type=int, default=None)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="BraTS: keep preprocessed volumes here as .npy (recommended for real data)")
    p.add_argument("--cache-images", action="store_true",
                   help="2-D data: keep decoded, resized images in memory (small data sets; "
                        "with --patch the full-resolution uint8 images: 4 bytes a pixel)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    kw = {k: getattr(args, k) for k in names if hasattr(args, k)}
    for k in ("data_root", "out", "cache_dir"):
        if kw.get(k) is not None:
            kw[k] = str(kw[k])
    for k in ("image_size", "patch"):
        if kw.get(k) is not None:
            kw[k] = tuple(kw[k])
    return TrainConfig(**kw)


def _cmd_train(args: argparse.Namespace) -> int:
    result = train(config_from_args(args))
    print(f"best val Dice {result['best_val_dice']:.4f} at epoch {result['best_epoch']}; "
          f"weights in {result['best']} (best) and {result['last']} (last), log in "
          f"{Path(result['run_dir']) / 'log.csv'}")
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("train", help="train a model on ISIC 2018, BraTS 2021 or an image folder",
                       description="Train a model of the family with Adam and Dice+Focal loss, "
                                   "augmentation and early stopping on validation Dice. Writes "
                                   "RUN_DIR/best/, RUN_DIR/last/ and RUN_DIR/log.csv; --resume "
                                   "continues an interrupted run.")
    add_train_args(p)
    p.set_defaults(func=_cmd_train)
