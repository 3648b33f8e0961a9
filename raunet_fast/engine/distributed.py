"""Several processes, one job: ``torch.distributed`` under ``torchrun`` (see
docs/distributed.md).

``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``) starts one process per device; :func:`session` joins
them into a process group (NCCL on GPUs, gloo on CPUs) for the length of a command. Without
those variables, or with ``WORLD_SIZE=1``, every helper here is the single-process identity.

* :class:`GlobalBatches` - each training step's global batch, split across the ranks;
* :class:`Shard` / :func:`shard` - every item seen by exactly one rank (validation,
  prediction, evaluation);
* :class:`GlobalBatchNorm` - batch statistics over the global batch, on any device;
* :func:`sum_across` - a differentiable all-reduce (the global batch Dice);
* :func:`from_rank0`, :func:`gather_lists` - sharing results between ranks.

A rank that dies, or stops answering for ``timeout`` seconds, makes the others raise
:class:`PeerLost`, a one-line error (never a hang).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..losses import DiceFocalLoss


class PeerLost(ConnectionError):
    """Another rank of the job died or stopped answering. The process group cannot be
    torn down any more (its threads abort the interpreter's exit): the command line exits
    at once after the message (``exit_now``)."""

    exit_now = True


def env_rank() -> int:
    """This process's rank as the launcher set it (0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    """Whether a process group of more than one process is running."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (the one that writes run folders, logs and progress bars)."""
    return rank() == 0 if active() else env_rank() == 0


def backend_for(device: str) -> str:
    """NCCL for CUDA devices, gloo for the CPU (``auto`` follows what torch sees)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return "nccl" if device.startswith("cuda") else "gloo"


def _lost(e: BaseException) -> PeerLost:
    msg = " ".join(str(e).split())[:200]
    return PeerLost(f"rank {env_rank()} of {env_world_size()}: another rank of the job died or "
                    f"stopped answering ({type(e).__name__}: {msg}); the run can be continued "
                    f"with --resume")


@contextmanager
def session(device: str, timeout_s: float = 600.0):
    """A process group for the block when the launcher asked for several processes; a
    collective that fails (a rank died) or waits ``timeout_s`` becomes :class:`PeerLost`.
    A group that is already running (the caller's) is used and left running."""
    import torch.distributed as dist

    if env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        yield
        return
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    except (dist.DistError, RuntimeError) as e:
        raise PeerLost(f"rank {env_rank()} of {env_world_size()} could not join the job "
                       f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from e
    failed = False
    try:
        yield
    except PeerLost:
        failed = True
        raise
    except dist.DistError as e:
        failed = True
        raise _lost(e) from e
    except RuntimeError as e:  # gloo reports a closed connection as a plain RuntimeError
        failed = True
        if not any(w in str(e) for w in ("Connection", "connection", "gloo", "NCCL", "imed out")):
            raise
        raise _lost(e) from e
    finally:
        if not failed:  # a group with a dead member cannot be torn down collectively
            dist.destroy_process_group()


# ---------------------------------------------------------------------- sharing results
def from_rank0(fn: Callable[[], Any]) -> Any:
    """``fn()`` run on rank 0 only, its result (or its ValueError / OSError, re-raised on
    every rank) sent to all ranks."""
    import torch.distributed as dist

    if not active():
        return fn()
    box: list[Any] = [None]
    if rank() == 0:
        try:
            box[0] = ("ok", fn())
        except (ValueError, OSError) as e:
            box[0] = ("error", e)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        if rank() != 0:
            value.echo = True  # rank 0 reports it
        raise value
    return value


def gather_lists(items: list) -> list:
    """Every rank's list, concatenated in rank order, on every rank."""
    import torch.distributed as dist

    if not active():
        return list(items)
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, list(items))
    return [x for part in out for x in part]


def barrier() -> None:
    import torch.distributed as dist

    if active():
        dist.barrier()


def all_reduce_sum(values: Sequence[float], device=None) -> list[float]:
    """Sums over the ranks of a few numbers (float64)."""
    import torch.distributed as dist

    if not active():
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def sum_across(t: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over the ranks: the backward sums the gradients over the ranks
    too, so a loss built from the sum counts every rank's items once after DDP's mean."""
    return _SumAcross.apply(t) if active() else t


class _SumAcross(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


# ---------------------------------------------------------------------- samplers
def shard(items: Sequence, r: int | None = None, w: int | None = None) -> list:
    """This rank's items (``items[rank::world]``): each item goes to exactly one rank."""
    r, w = (rank() if r is None else r), (world_size() if w is None else w)
    return list(items[r::w])


class Shard(torch.utils.data.Sampler):
    """The indices ``rank, rank + world, ...`` of a data set, in order, without padding
    (unlike ``DistributedSampler``, no item is seen twice: sums over ranks are exact)."""

    def __init__(self, n: int, r: int, w: int):
        self.indices = list(range(r, n, w))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def split_sizes(n: int, w: int) -> list[int]:
    """How ``n`` items split over ``w`` ranks (the first ``n % w`` get one more)."""
    return [n // w + (i < n % w) for i in range(w)]


class GlobalBatches(torch.utils.data.Sampler):
    """Batches of ``batch_size`` drawn from ``sampler`` exactly as one process would draw
    them (same order, same ``drop_last``); this rank gets its contiguous part of each.
    :attr:`global_sizes` holds the size of every global batch."""

    def __init__(self, sampler, batch_size: int, drop_last: bool, r: int, w: int):
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last
        self.rank, self.world = r, w
        n = len(sampler)
        self.global_sizes = [batch_size] * (n // batch_size)
        if n % batch_size and not drop_last:
            self.global_sizes.append(n % batch_size)
        if self.global_sizes and min(self.global_sizes) < w:
            raise ValueError(f"a global batch of {min(self.global_sizes)} items cannot feed "
                             f"{w} ranks; raise --batch-size (it is the global batch) or run "
                             f"fewer processes")

    def __iter__(self) -> Iterator[list[int]]:
        batch: list[int] = []
        for i in self.sampler:
            batch.append(i)
            if len(batch) == self.batch_size:
                yield self._part(batch)
                batch = []
        if batch and not self.drop_last:
            yield self._part(batch)

    def _part(self, batch: list[int]) -> list[int]:
        sizes = split_sizes(len(batch), self.world)
        start = sum(sizes[:self.rank])
        return batch[start:start + sizes[self.rank]]

    def __len__(self) -> int:
        return len(self.global_sizes)


# ---------------------------------------------------------------------- BatchNorm
class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the global batch (all ranks), on
    any device (``torch.nn.SyncBatchNorm`` runs on GPUs only). Mean first, then the
    centred squares (two all-reduces: no cancellation of ``E[x^2] - E[x]^2``). Outside
    a process group, or in eval mode, it is ``BatchNorm2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        x = x.float()  # as torch's batch_norm under autocast
        dims = [0] + list(range(2, x.dim()))
        count = torch.full((1,), x.numel() / x.shape[1], dtype=x.dtype, device=x.device)
        sums = sum_across(torch.cat([x.sum(dims), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        shape = [1, -1] + [1] * (x.dim() - 2)
        d = x - mean.view(shape)
        var = sum_across((d * d).sum(dims)) / n
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach() * n / (n - 1).clamp_min(1))
        out = d * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
             else self.momentum)
        self.running_mean.mul_(1 - m).add_(mean, alpha=m)
        self.running_var.mul_(1 - m).add_(unbiased_var, alpha=m)


def global_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every ``BatchNorm2d`` replaced by a :class:`GlobalBatchNorm` holding
    the same parameters and statistics (state-dict keys unchanged)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm(child.num_features, child.eps, child.momentum,
                                  child.affine, child.track_running_stats,
                                  device=child.weight.device if child.affine else None)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            global_batchnorm(child)
    return module


# ---------------------------------------------------------------------- the loss
class GlobalBatchLoss(DiceFocalLoss):
    """:class:`~raunet_fast.losses.DiceFocalLoss` of the global batch: the batch Dice from
    sums over all ranks, the per-item means weighted by :attr:`share` (``world * local
    items / global items``, set before each step), so that DDP's mean of the ranks'
    gradients is the gradient of the global batch's loss and the mean over the ranks of
    the values is its value."""

    share = 1.0

    def reduce_sums(self, inter: torch.Tensor, denom: torch.Tensor):
        if not self.batch_dice:
            return inter, denom
        k = inter.shape[-1]
        both = sum_across(torch.cat([inter, denom], -1))
        return both[..., :k], both[..., k:]

    def dice_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d = super().dice_loss(logits, target)
        return d if self.batch_dice else d * self.share

    def focal_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().focal_loss(logits, target) * self.share
