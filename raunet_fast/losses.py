"""The paper's loss, ``lambda1 * Dice + lambda2 * Focal``, from logits, in fp32.

``DiceFocalLoss(mode="sigmoid")`` is for multi-label heads (one independent sigmoid per
channel: the ISIC lesion, the BraTS WT/TC/ET regions) with float targets of the logits'
shape. ``mode="softmax"`` is for multi-class heads with integer class targets
``N x H x W`` (or ``N x 1 x H x W``).

Whatever autocast is active, the loss upcasts the logits and computes in float32.
Deep supervision: pass the model's training output tuple ``(logits, aux_1, ...)``, 2-D or
3-D; the target is downsampled (nearest) to each auxiliary output's size and the terms are
weighted ``1, 1/2, 1/4, ...`` and normalised to sum to 1.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _resize_target(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``target`` (``N x K x spatial`` or class indices ``N x spatial``, 2-D or 3-D) at
    ``size`` by nearest neighbour: at half the size, the first voxel of each 2 x 2 (x 2)
    block."""
    if tuple(target.shape[-len(size):]) == tuple(size):
        return target
    t = target.float()
    squeeze = t.dim() == len(size) + 1
    t = t[:, None] if squeeze else t
    t = F.interpolate(t, size=tuple(size), mode="nearest")
    t = t[:, 0] if squeeze else t
    return t.to(target.dtype)


class DiceFocalLoss(nn.Module):
    """``lambda_dice * soft Dice loss + lambda_focal * focal loss`` from logits.

    Args:
        mode: ``"sigmoid"`` (multi-label) or ``"softmax"`` (multi-class).
        lambda_dice, lambda_focal: weights of the two terms (paper: lambda1, lambda2).
        alpha: focal class balance. Sigmoid: weight of positives, negatives get
            ``1 - alpha`` (``None`` disables). Softmax: one weight per class, or a number
            for all classes (``None``: 1).
        gamma: focal focusing parameter (0 gives cross-entropy).
        smooth: added to numerator and denominator of the soft Dice.
        batch_dice: Dice over the whole batch per channel (stable when a channel is empty
            in some samples) instead of per sample.
        include_background: softmax only; whether class 0 enters the Dice term.
        ds_weights: deep-supervision weights, finest first (default ``1, 1/2, 1/4 ...``).
    """

    def __init__(self, mode: str = "sigmoid", lambda_dice: float = 1.0, lambda_focal: float = 1.0,
                 alpha: float | Sequence[float] | None = 0.25, gamma: float = 2.0,
                 smooth: float = 1.0, batch_dice: bool = True, include_background: bool = False,
                 ds_weights: Sequence[float] | None = None):
        super().__init__()
        if mode not in ("sigmoid", "softmax"):
            raise ValueError(f"mode must be 'sigmoid' or 'softmax', got {mode!r}")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.mode = mode
        self.lambda_dice, self.lambda_focal = float(lambda_dice), float(lambda_focal)
        self.alpha = alpha
        self.gamma = float(gamma)
        self.smooth = float(smooth)
        self.batch_dice = batch_dice
        self.include_background = include_background
        self.ds_weights = None if ds_weights is None else [float(w) for w in ds_weights]

    def extra_repr(self) -> str:
        return (f"mode={self.mode!r}, lambda_dice={self.lambda_dice}, lambda_focal={self.lambda_focal}, "
                f"alpha={self.alpha}, gamma={self.gamma}")

    # ---------------------------------------------------------------- pieces
    def _prepare(self, logits: torch.Tensor, target: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if logits.dim() < 3:
            raise ValueError(f"logits must be N x C x spatial..., got shape {tuple(logits.shape)}")
        logits = logits.float()
        if self.mode == "sigmoid":
            if target.shape != logits.shape:
                raise ValueError(f"sigmoid mode needs a target of the logits' shape "
                                 f"{tuple(logits.shape)}, got {tuple(target.shape)}")
            return logits, target.float()
        if target.dim() == logits.dim() and target.shape[1] == 1:
            target = target[:, 0]
        if target.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(f"softmax mode needs class-index targets N x spatial "
                             f"{tuple(logits.shape[:1] + logits.shape[2:])}, got {tuple(target.shape)}")
        if target.is_floating_point():
            target = target.round()
        target = target.long()
        c = logits.shape[1]
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= c):
            raise ValueError(f"class targets must lie in [0, {c - 1}], got values "
                             f"{int(target.min())}..{int(target.max())}")
        return logits, target

    def dice_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = self._prepare(logits, target)
        if self.mode == "sigmoid":
            prob, onehot = torch.sigmoid(logits), target
        else:
            prob = torch.softmax(logits, dim=1)
            onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).float()
            if not self.include_background and logits.shape[1] > 1:
                prob, onehot = prob[:, 1:], onehot[:, 1:]
        dims = ((0,) if self.batch_dice else ()) + tuple(range(2, logits.dim()))
        inter = (prob * onehot).sum(dims)
        denom = prob.sum(dims) + onehot.sum(dims)
        inter, denom = self.reduce_sums(inter, denom)
        return 1.0 - ((2 * inter + self.smooth) / (denom + self.smooth)).mean()

    def reduce_sums(self, inter: torch.Tensor, denom: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the Dice's intersections and sizes may be summed with other processes'
        (the batch Dice of a batch split over several, as in DDP); here, unchanged."""
        return inter, denom

    def focal_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = self._prepare(logits, target)
        if self.mode == "sigmoid":
            ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            p_t = torch.exp(-ce)
            loss = (1 - p_t).pow(self.gamma) * ce if self.gamma else ce
            if self.alpha is not None:
                a = float(self.alpha)
                loss = loss * (a * target + (1 - a) * (1 - target))
            return loss.mean()
        logp = torch.log_softmax(logits, dim=1)
        ce = -logp.gather(1, target[:, None])[:, 0]
        p_t = torch.exp(-ce)
        loss = (1 - p_t).pow(self.gamma) * ce if self.gamma else ce
        if self.alpha is not None:
            if isinstance(self.alpha, (int, float)):
                loss = loss * float(self.alpha)
            else:
                w = torch.as_tensor(list(self.alpha), dtype=torch.float32, device=logits.device)
                if w.numel() != logits.shape[1]:
                    raise ValueError(f"alpha has {w.numel()} class weights for {logits.shape[1]} classes")
                loss = loss * w[target]
        return loss.mean()

    def single(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = logits.new_zeros((), dtype=torch.float32)
        if self.lambda_dice:
            total = total + self.lambda_dice * self.dice_loss(logits, target)
        if self.lambda_focal:
            total = total + self.lambda_focal * self.focal_loss(logits, target)
        return total

    def forward(self, output: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        device_type = (output[0] if isinstance(output, (tuple, list)) else output).device.type
        with torch.autocast(device_type=device_type, enabled=False):
            if not isinstance(output, (tuple, list)):
                return self.single(output, target)
            weights = self.ds_weights or [0.5 ** k for k in range(len(output))]
            if len(weights) < len(output):
                raise ValueError(f"{len(output)} outputs but only {len(weights)} ds_weights")
            weights = weights[:len(output)]
            norm = sum(weights)
            total = output[0].new_zeros((), dtype=torch.float32)
            for w, out in zip(weights, output):
                if w:
                    total = total + (w / norm) * self.single(out, _resize_target(target, out.shape[2:]))
            return total
