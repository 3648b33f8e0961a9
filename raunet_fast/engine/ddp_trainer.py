"""The :class:`~raunet_fast.engine.trainer.Trainer` of one model on several processes
(``torchrun``, DistributedDataParallel; see docs/distributed.md).

* ``--batch-size`` is the global batch: each step draws the batch one process would draw
  (same order, same augmentation parameters) and gives each rank a contiguous part; the
  loss is that of the global batch (the batch Dice from sums over the ranks), so with
  instance or group norm, or ``--sync-batchnorm``, N processes take the steps one process
  would take. Plain BatchNorm normalises each rank's part with its own statistics.
* Validation is sharded; its sums are all-reduced, so every rank agrees on the best epoch
  and on early stopping. The mean training loss is all-reduced the same way.
* Rank 0 alone prepares and writes the run folder (checkpoints, logs, ``run.json``) and
  shows progress; it sends the resume state to the others (no shared disk needed), and the
  DDP wrapper copies its weights to them, so a run resumes on any number of processes.
* Dropout draws from a generator seeded per (seed, epoch, rank): reproducible, resumable
  and different on every rank.
"""
from __future__ import annotations

from typing import Any

import torch

from . import distributed as dist
from .trainer import Trainer


class DistributedTrainer(Trainer):
    """A Trainer whose process is one rank of a ``torchrun`` job (see the module doc)."""

    def fit(self) -> dict[str, Any]:
        with dist.session(self.cfg.device, self.cfg.dist_timeout):
            self.rank, self.world = dist.rank(), dist.world_size()
            self.writes = self.rank == 0
            if not self.writes:
                self.cfg.progress = False
            return super().fit()

    def pick_device(self) -> torch.device:
        device = super().pick_device()
        if device.type == "cuda":  # the session chose this rank's GPU
            return torch.device("cuda", torch.cuda.current_device())
        return device

    def prepare_run_folder(self):
        """Rank 0 settles the run folder; every rank gets the state to resume from."""
        last, state = dist.from_rank0(lambda: super(DistributedTrainer, self)
                                      .prepare_run_folder())
        return (last if self.writes else None), state

    def build_data(self) -> None:
        from torch.utils.data import DataLoader

        super().build_data()
        cfg = self.cfg
        self.val_loader = DataLoader(self.val_ds, batch_size=cfg.batch_size,
                                     sampler=dist.Shard(len(self.val_ds), self.rank, self.world),
                                     num_workers=cfg.num_workers,
                                     pin_memory=self.device.type == "cuda")

    def build_model(self, last) -> None:
        from torch.nn.parallel import DistributedDataParallel

        super().build_model(last)
        if self.cfg.sync_batchnorm:
            self.model = dist.global_batchnorm(self.model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        self.forward = torch.compile(self.ddp) if self.cfg.compile else self.ddp

    def learning_rate(self) -> float:
        return self.cfg.lr * (self.world if self.cfg.scale_lr else 1)

    def setup(self) -> None:
        super().setup()
        loss = self.val_loss_fn = self.loss_fn  # validation: each rank its own items
        self.loss_fn = dist.GlobalBatchLoss(loss.mode, loss.lambda_dice, loss.lambda_focal,
                                            loss.alpha, loss.gamma)

    # ------------------------------------------------------------------ one epoch
    def epoch_loader(self, epoch: int):
        from torch.utils.data import DataLoader

        cfg, ds = self.cfg, self.train_ds
        batches = dist.GlobalBatches(self.epoch_sampler(epoch), cfg.batch_size,
                                     len(ds) > cfg.batch_size, self.rank, self.world)
        self.global_sizes = batches.global_sizes
        return DataLoader(ds, batch_sampler=batches, num_workers=cfg.num_workers,
                          pin_memory=self.device.type == "cuda")

    def train_epoch(self, epoch: int) -> float:
        torch.manual_seed((self.cfg.seed * 1_000_003 + epoch) * 65_537 + self.rank)
        return super().train_epoch(epoch)

    def train_step(self, batch, aug_gen: torch.Generator) -> tuple[float, float]:
        """One DDP step; returns (this rank's loss, global items / world): summed over the
        ranks by :meth:`epoch_mean`, they give the global mean loss."""
        n_global = self.global_sizes[self.step]
        self.loss_fn.share = self.world * batch["image"].shape[0] / n_global
        loss, _ = super().train_step(batch, aug_gen)
        return loss, n_global / self.world

    def augment_batch(self, x: torch.Tensor, y: torch.Tensor, aug_gen: torch.Generator):
        """This rank's part of the augmentation parameters of the whole global batch."""
        n_global = self.global_sizes[self.step]
        start = sum(dist.split_sizes(n_global, self.world)[:self.rank])
        params = self.augment.sample(n_global, aug_gen, spatial_dims=x.dim() - 2)
        part = {k: v[start:start + x.shape[0]] for k, v in params.items()}
        return self.augment.apply(x, y, part)

    def epoch_mean(self, total: float, count: float) -> float:
        total, count = dist.all_reduce_sum([total, count], self.device)
        return total / count

    def validate(self) -> dict[str, Any]:
        from .training import validate

        def reduce(stats, loss_sum, n_items):
            flat = dist.all_reduce_sum(stats.flatten().tolist() + [loss_sum, n_items],
                                       self.device)
            return (torch.tensor(flat[:-2], dtype=torch.float64).view_as(stats),
                    flat[-2], int(flat[-1]))

        return validate(self.model, self.val_loader, self.val_loss_fn, self.device,
                        self.amp_dtype, self.cfg.threshold, len(self.val_ds.names),
                        self.cfg.progress, reduce=reduce)
