"""The Trainer: any model of the family on ISIC 2018, BraTS 2021 or an image/mask folder,
and (``spatial_dims=3``) on BraTS or NIfTI-folder volumes in 3-D patches.

The paper's recipe: Adam (lr 1e-4), Dice + Focal loss, random flips / rotations /
elastic deformation, dropout, early stopping on validation Dice.

A run directory holds::

    RUN_DIR/run.json          the resolved training configuration, as first started, and
                              ``resumes``: per resume its time, the epoch it continued from
                              and the options changed ({option: [first, now]})
    RUN_DIR/log.csv, log.json one row per finished epoch (also kept in the training state,
                              so a resumed run rewrites them consistently); ``val_dice`` and
                              ``val_dice_<region>`` are scored on the validation images as
                              the network sees them (resized to --image-size, or tiles of
                              --patch), not at native size like ``evaluate``
    RUN_DIR/result.json       best epoch and validation Dice, whether it stopped early
    RUN_DIR/last/             weights after the latest epoch (from_pretrained loads it)
        training_state.pt     optimizer, scheduler, scaler, epoch, early-stopping and RNG state
        checkpoint.json       epoch, validation Dice, SHA-256 of the weights (written last)
        preprocessing.json    what evaluation needs to feed the network (dataset, sizes)
    RUN_DIR/best/             weights of the epoch with the best validation Dice

Checkpoints are written to a temporary folder and swapped in with renames, so a crash or
``kill -9`` at any moment leaves a complete ``last/`` (the old one or the new one);
``--resume`` continues from it, with the same data order and augmentation it would have
had without the interruption (both are seeded per epoch). A run that ended no epoch
(``run.json`` only) starts over under ``--resume``, after the same check of the options
against ``run.json``. Every start removes the leftovers of interrupted writes
(``.last.tmp``, ``.best.old``, ``.log.csv.*.tmp``, ...). A full disk stops the run with a
one-line error naming the file; the last complete checkpoint stays.

Each step of a run is a method (:meth:`Trainer.setup`, :meth:`~Trainer.train_epoch`,
:meth:`~Trainer.validate`, :meth:`~Trainer.on_epoch_end`, :meth:`~Trainer.save`): a subclass
overrides the one it needs.
"""
from __future__ import annotations

import errno
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..config import TrainConfig
from ..hub import atomic_write_json
from ..io.checkpoints import recover_checkpoint, write_checkpoint
from ..io.tables import write_csv
from .device import autocast, autocast_dtype, resolve_device, set_threads
from .resume import (check_same_run, holds_finished_epoch, record_resume, remove_temporaries,
                     resume_point)
from .training import (build_datasets, make_augment, patch_context, preprocessing_info,
                       validate)

LOG_FIELDS = ["epoch", "train_loss", "val_loss", "val_dice", "lr", "best", "epoch_time_s"]


def say(msg: str, progress: bool) -> None:
    from tqdm import tqdm

    from .distributed import is_main

    if is_main():  # under torchrun: rank 0 speaks for the job
        tqdm.write(msg, file=sys.stderr if progress else sys.stdout)


@contextmanager
def writing(path: Path):
    """A full disk (ENOSPC) inside the block becomes a one-line OSError naming ``path``."""
    try:
        yield
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        err = OSError(f"no space left on the device while writing {path}; the last complete "
                      f"checkpoint is kept: free some space, then rerun with --resume")
        err.errno = errno.ENOSPC
        raise err from e


class Trainer:
    """One training run (see the module docstring); :meth:`fit` runs it to the end."""

    #: whether this process writes the run folder (under torchrun: rank 0 only)
    writes = True

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg.validate()
        self.run_dir = Path(cfg.out)
        self.start_epoch, self.best_dice, self.best_epoch = 0, -1.0, 0
        self.bad_epochs, self.stopped = 0, False
        self.rows: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Device, run folder (fresh or resumed), data, model, optimisation."""
        cfg = self.cfg
        cfg.apply_reading_options()
        set_threads(cfg.threads)
        self.device = self.pick_device()
        self.amp_dtype = autocast_dtype(cfg.amp, self.device)
        last, state = self.prepare_run_folder()
        torch.manual_seed(cfg.seed)
        self.build_data()
        self.build_model(last)
        self.build_optimization()
        if state is not None:
            self.restore(state)
            self.write_log()
            if self.writes:
                with writing(self.run_dir / "run.json"):
                    record_resume(self.run_dir, cfg, self.start_epoch)
        from ..losses import DiceFocalLoss

        self.loss_fn = DiceFocalLoss("sigmoid", cfg.lambda_dice, cfg.lambda_focal,
                                     cfg.focal_alpha, cfg.focal_gamma)
        self.augment = make_augment(cfg)

    def pick_device(self) -> torch.device:
        return resolve_device(self.cfg.device)

    def prepare_run_folder(self):
        """The checkpoint to resume from and its state ((None, None): a fresh run); nothing
        in the run folder is written before this is settled."""
        run, cfg = self.run_dir, self.cfg
        if run.exists() and not run.is_dir():
            raise ValueError(f"--out {run} is a file, not a folder; choose another --out")
        if cfg.resume:
            last, state = self.resume_point()
        elif holds_finished_epoch(run):
            raise ValueError(f"{run} already holds a training run; pass --resume to continue "
                             f"it, or choose another --out")
        else:
            last, state = None, None
        run.mkdir(parents=True, exist_ok=True)
        remove_temporaries(run)
        if last is None:
            with writing(run / "run.json"):
                atomic_write_json(run / "run.json", cfg.to_dict())
        return last, state

    def resume_point(self):
        """``--resume``: the checkpoint and state to continue from, after the check of the
        options against ``run.json``; (None, None): the run starts (over)."""
        run, cfg = self.run_dir, self.cfg
        last, state = resume_point(run)
        check_same_run(run, cfg)
        if last is not None:
            recover_checkpoint(run, "best")
        elif run.is_dir() and any(run.iterdir()):
            say(f"--resume: {run} holds no finished epoch; starting it over", cfg.progress)
        else:
            say(f"--resume: {run} is empty or missing; starting a new run", cfg.progress)
        return last, state

    def build_data(self) -> None:
        from torch.utils.data import DataLoader

        cfg = self.cfg
        self.train_ds, self.val_ds = build_datasets(cfg)
        if not all(getattr(ds, "has_masks", True) for ds in (self.train_ds, self.val_ds)):
            raise ValueError("training and validation need ground-truth masks")
        self.prep = preprocessing_info(cfg, self.train_ds)
        if cfg.cache_images:
            # filled here, in the main process: a cache filled lazily in DataLoader workers
            # dies with them at the end of every epoch; this one is inherited by all workers
            for split, ds in (("train", self.train_ds), ("val", self.val_ds)):
                if hasattr(ds, "fill_cache"):
                    ds.fill_cache(cfg.progress, desc=f"caching {split} images")
        self.val_loader = DataLoader(self.val_ds, batch_size=cfg.batch_size, shuffle=False,
                                     num_workers=cfg.num_workers,
                                     pin_memory=self.device.type == "cuda")
        self.sample_weights = (self.train_ds.sample_weights(cfg.tumour_weight)
                               if hasattr(self.train_ds, "sample_weights") else None)

    def build_model(self, last: Path | None) -> None:
        from ..hub import from_pretrained
        from ..models import build_model

        cfg, ds = self.cfg, self.train_ds
        in_ch, out_ch = ds.channels, len(ds.region_names)
        if last is not None:
            model = from_pretrained(last, map_location="cpu", dropout=cfg.dropout,
                                    deep_supervision=cfg.deep_supervision)
        else:
            model = build_model(cfg.model, in_channels=in_ch, out_channels=out_ch,
                                base_channels=cfg.base_channels, depth=cfg.depth,
                                dropout=cfg.dropout, norm=cfg.norm,
                                deep_supervision=cfg.deep_supervision,
                                spatial_dims=cfg.spatial_dims)
        if getattr(model, "spatial_dims", 2) != cfg.spatial_dims:
            raise ValueError(f"the checkpoint's model is {model.spatial_dims}-D; the run is "
                             f"--spatial-dims {cfg.spatial_dims}")
        if (model.in_channels, model.out_channels) != (in_ch, out_ch):
            raise ValueError(f"the checkpoint's model has {model.in_channels} in / "
                             f"{model.out_channels} out channels; the {cfg.dataset} data needs "
                             f"{in_ch} / {out_ch}")
        self.model = model.to(self.device)
        self.forward = torch.compile(model) if cfg.compile else model

    def build_optimization(self) -> None:
        cfg = self.cfg
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.learning_rate(),
                                          weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler
        if cfg.scheduler == "plateau":
            self.scheduler = sched.ReduceLROnPlateau(self.optimizer, mode="max", factor=0.5,
                                                     patience=max(2, cfg.patience // 3))
        elif cfg.scheduler == "cosine":
            self.scheduler = sched.CosineAnnealingLR(self.optimizer, T_max=cfg.epochs)
        else:
            self.scheduler = None
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.amp_dtype == torch.float16)

    def learning_rate(self) -> float:
        return self.cfg.lr

    def restore(self, state: dict[str, Any]) -> None:
        """Optimizer, scheduler, scaler, RNG and early-stopping state of a resumed run."""
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"])
        self.start_epoch = int(state["epoch"])
        self.best_dice, self.best_epoch = float(state["best_dice"]), int(state["best_epoch"])
        self.bad_epochs, self.stopped = int(state["bad_epochs"]), bool(state["stopped_early"])
        self.rows = [dict(r) for r in state.get("log_rows", [])]
        say(f"resuming {self.run_dir} after epoch {self.start_epoch} (best val Dice "
            f"{self.best_dice:.4f} at epoch {self.best_epoch})", self.cfg.progress)

    # ------------------------------------------------------------------ one epoch
    def epoch_sampler(self, epoch: int):
        """The epoch's order of the training items, seeded by the epoch (resumable)."""
        from torch.utils.data import RandomSampler, WeightedRandomSampler

        from ..data.isic import GroupedSampler

        cfg, ds = self.cfg, self.train_ds
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        if self.sample_weights is not None:
            sampler = WeightedRandomSampler(self.sample_weights, len(ds), replacement=True,
                                            generator=g)
        elif cfg.patches_per_image > 1:  # an image's patches together: decoded once
            sampler = GroupedSampler(len(ds), cfg.patches_per_image, generator=g)
        else:
            sampler = RandomSampler(ds, generator=g)
        return sampler

    def epoch_loader(self, epoch: int):
        """The epoch's training loader (see :meth:`epoch_sampler`)."""
        from torch.utils.data import DataLoader

        cfg, ds = self.cfg, self.train_ds
        return DataLoader(ds, batch_size=cfg.batch_size, sampler=self.epoch_sampler(epoch),
                          num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda",
                          drop_last=len(ds) > cfg.batch_size)

    def train_step(self, batch, aug_gen: torch.Generator) -> tuple[float, int]:
        """One optimisation step; returns (loss, batch size)."""
        cfg = self.cfg
        x = batch["image"].to(self.device, non_blocking=True)
        y = batch["mask"].to(self.device, non_blocking=True)
        if self.augment is not None:
            x, y = self.augment_batch(x, y, aug_gen)
        context = patch_context(cfg)
        if any(context):  # the patch from the middle of its augmented surroundings
            middle = (..., *(slice(c, c + p) for c, p in zip(context, cfg.patch)))
            x, y = x[middle], y[middle]
        with autocast(self.device, self.amp_dtype):
            out = self.forward(x)
        loss = self.loss_fn(out, y)
        if not torch.isfinite(loss):
            raise ValueError(f"loss became {loss.item()} at epoch {self.epoch} step "
                             f"{self.step}; try a lower --lr or --amp none")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach()), x.shape[0]

    def augment_batch(self, x: torch.Tensor, y: torch.Tensor, aug_gen: torch.Generator):
        return self.augment(x, y, aug_gen)

    def train_epoch(self, epoch: int) -> float:
        """Train one epoch; returns the mean training loss."""
        from tqdm import tqdm

        if hasattr(self.train_ds, "set_epoch"):  # 3-D patches: drawn per (seed, epoch, item)
            self.train_ds.set_epoch(epoch)
        cfg, loader = self.cfg, self.epoch_loader(epoch)
        aug_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch + 500_009)
        steps = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader),
                                                                       cfg.max_steps_per_epoch)
        self.model.train()
        total, count, self.epoch = 0.0, 0, epoch
        last_val = f"{self.rows[-1]['val_dice']:.4f}" if self.rows else "-"
        with tqdm(total=steps, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, unit="batch",
                  disable=not cfg.progress, dynamic_ncols=True) as bar:
            for self.step, batch in enumerate(loader):
                if self.step >= steps:
                    break
                loss, n = self.train_step(batch, aug_gen)
                total, count = total + loss * n, count + n
                bar.update(1)
                bar.set_postfix(loss=f"{total / count:.4f}", val_dice=last_val,
                                best=f"{max(self.best_dice, 0):.4f}")
        if count == 0:
            raise ValueError(f"the training set yielded no batches (size {len(self.train_ds)}, "
                             f"batch size {cfg.batch_size})")
        return self.epoch_mean(total, count)

    def epoch_mean(self, total: float, count: float) -> float:
        """The epoch's mean training loss from this process's sums."""
        return total / count

    def validate(self) -> dict[str, Any]:
        return validate(self.forward, self.val_loader, self.loss_fn, self.device,
                        self.amp_dtype, self.cfg.threshold, len(self.val_ds.names),
                        self.cfg.progress)

    # ------------------------------------------------------------------ bookkeeping
    def on_epoch_end(self, epoch: int, train_loss: float, val: dict[str, Any],
                     t0: float) -> None:
        """Schedule, early stopping, checkpoints, log."""
        cfg = self.cfg
        lr = self.optimizer.param_groups[0]["lr"]
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val["val_dice"])
        elif self.scheduler is not None:
            self.scheduler.step()
        improved = val["val_dice"] > self.best_dice
        if improved:
            self.best_dice, self.best_epoch, self.bad_epochs = val["val_dice"], epoch, 0
        else:
            self.bad_epochs += 1
        self.stopped = self.bad_epochs >= cfg.patience
        row = {"epoch": epoch, "train_loss": round(train_loss, 6),
               "val_loss": round(val["val_loss"], 6), "val_dice": round(val["val_dice"], 6),
               "lr": float(f"{lr:.4g}"), "best": int(improved),
               "epoch_time_s": round(time.perf_counter() - t0, 2)}
        for name, d in zip(self.train_ds.region_names, val["val_dice_per_channel"]):
            row[f"val_dice_{name}"] = round(d, 6)
        self.save(epoch, val, improved, row)
        say(f"epoch {epoch}/{cfg.epochs}: train loss {train_loss:.4f}, val loss "
            f"{val['val_loss']:.4f}, val Dice {val['val_dice']:.4f}"
            f"{' (best)' if improved else ''}, {time.perf_counter() - t0:.1f}s", cfg.progress)
        if self.stopped:
            say(f"early stopping: no val Dice improvement for {cfg.patience} epochs "
                f"(best {self.best_dice:.4f} at epoch {self.best_epoch})", cfg.progress)

    def training_state(self, epoch: int, row: dict[str, Any]) -> dict[str, Any]:
        cuda = self.device.type == "cuda"
        return {"epoch": epoch, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "best_dice": self.best_dice, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "stopped_early": self.stopped,
                "torch_rng": torch.get_rng_state(), "log_rows": self.rows + [row],
                "cuda_rng": torch.cuda.get_rng_state() if cuda else None}

    def save(self, epoch: int, val: dict[str, Any], improved: bool,
             row: dict[str, Any]) -> None:
        """``best/`` when improved, then ``last/`` with the training state, then the log."""
        run = self.run_dir
        info = {"epoch": epoch, "val_dice": val["val_dice"], "best_epoch": self.best_epoch,
                "best_val_dice": self.best_dice}
        if not self.writes:
            self.rows.append(row)
            return
        if improved:
            with writing(run / "best"):
                write_checkpoint(run, "best", self.model, info, self.prep)
        with writing(run / "last"):
            write_checkpoint(run, "last", self.model, info, self.prep,
                             self.training_state(epoch, row))
        self.rows.append(row)
        self.write_log()

    def write_log(self) -> None:
        """``log.csv`` and ``log.json`` from the rows of the finished epochs."""
        run = self.run_dir
        if not self.writes:
            return
        fields = LOG_FIELDS + [f"val_dice_{r}" for r in self.train_ds.region_names]
        with writing(run / "log.csv"):
            write_csv(run / "log.csv", self.rows, fields)
        with writing(run / "log.json"):
            atomic_write_json(run / "log.json", self.rows)

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict[str, Any]:
        """Run (or resume) training as configured; returns a summary of the run."""
        self.setup()
        cfg, run = self.cfg, self.run_dir
        if self.stopped:
            say(f"{run} stopped early at epoch {self.start_epoch}; nothing to do", cfg.progress)
        for epoch in range(self.start_epoch + 1, cfg.epochs + 1):
            if self.stopped:
                break
            t0 = time.perf_counter()
            train_loss = self.train_epoch(epoch)
            self.on_epoch_end(epoch, train_loss, self.validate(), t0)
        result = {"run_dir": str(run), "epochs_completed": len(self.rows),
                  "best_epoch": self.best_epoch, "best_val_dice": self.best_dice,
                  "stopped_early": self.stopped, "best": str(run / "best"),
                  "last": str(run / "last")}
        if self.writes:
            with writing(run / "result.json"):
                atomic_write_json(run / "result.json", result)
        return result


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training as configured (:class:`Trainer`; under ``torchrun`` with
    several processes :class:`~raunet_fast.engine.ddp_trainer.DistributedTrainer`);
    returns a summary."""
    from .distributed import env_world_size

    if env_world_size() > 1:
        from .ddp_trainer import DistributedTrainer

        return DistributedTrainer(cfg).fit()
    return Trainer(cfg).fit()
