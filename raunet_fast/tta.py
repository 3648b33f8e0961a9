"""Test-time augmentation by flips (as nnU-Net mirrors at inference), and model ensembles.

:class:`FlipTTA` wraps any segmentation model (the reference models, the fused inference
model, a sliding-window callable's model) and returns the mean of its predictions over
flips of the input, each flipped back: images (``N x C x H x W``, 4 flips by default) and
volumes (``N x C x D x H x W``, 8 flips by default). Costs one forward per flip.
"""
from __future__ import annotations

import itertools
from typing import Callable, Sequence

import torch
import torch.nn as nn

__all__ = ["FlipTTA", "FLIPS", "FLIPS_3D", "Ensemble"]

#: The default flip set: identity, vertical, horizontal, both (spatial dims of N x C x H x W).
FLIPS: tuple[tuple[int, ...], ...] = ((), (-2,), (-1,), (-2, -1))
#: The default flip set of volumes (N x C x D x H x W): every subset of the three axes.
FLIPS_3D: tuple[tuple[int, ...], ...] = tuple(
    f for k in range(4) for f in itertools.combinations((-3, -2, -1), k))


class FlipTTA(nn.Module):
    """``FlipTTA(model)(x)`` = mean over ``flips`` of ``flip(model(flip(x)))``.

    ``flips``: tuples of spatial dims to flip (``()`` is the plain forward; -3 is D, for
    volumes only); default (None) :data:`FLIPS` for images, :data:`FLIPS_3D` for volumes.
    The mean is taken over the model's raw outputs (logits stay logits, in float32), so the
    wrapper drops in wherever the model did: apply sigmoid / softmax after it as before.
    Outputs must have the input's spatial size.
    """

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor],
                 flips: Sequence[Sequence[int]] | None = None):
        super().__init__()
        if flips is not None:
            flips = tuple(tuple(int(d) for d in f) for f in flips)
            if not flips:
                raise ValueError("flips must hold at least one flip (() is the plain forward)")
            for f in flips:
                if any(d not in (-3, -2, -1) for d in f) or len(set(f)) != len(f):
                    raise ValueError(f"each flip is a tuple of distinct spatial dims -3 (D, "
                                     f"volumes), -2 (H) and -1 (W), got {f}")
        self.model = model
        self.flips = flips

    def flips_for(self, x: torch.Tensor) -> tuple[tuple[int, ...], ...]:
        """The flips applied to ``x`` (4-D: images, 5-D: volumes)."""
        if not isinstance(x, torch.Tensor) or x.dim() not in (4, 5):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"FlipTTA expects N x C x H x W input (or a volume "
                             f"N x C x D x H x W), got {got}")
        if self.flips is None:
            return FLIPS if x.dim() == 4 else FLIPS_3D
        if x.dim() == 4 and any(-3 in f for f in self.flips):
            raise ValueError("flip dim -3 (D) needs volumes (N x C x D x H x W); this input "
                             "is N x C x H x W")
        return self.flips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flips, spatial = self.flips_for(x), x.shape[2:]
        total = None
        for f in flips:
            y = self.model(torch.flip(x, f) if f else x)
            if not isinstance(y, torch.Tensor) or y.dim() != x.dim() or y.shape[2:] != spatial:
                got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise ValueError(f"FlipTTA needs N x K x <spatial> outputs of the input's size "
                                 f"{tuple(spatial)}, the model returned {got}")
            y = (torch.flip(y, f) if f else y).float()
            total = y if total is None else total + y
        return total / len(flips)


class Ensemble(nn.Module):
    """``Ensemble(models)(x)`` = mean of the models' raw outputs (logits stay logits, float32):
    several trainings of one architecture (other seeds, folds or splits), as nnU-Net
    ensembles its folds. The models must map the input to outputs of one shape."""

    def __init__(self, models: Sequence[Callable[[torch.Tensor], torch.Tensor]]):
        super().__init__()
        models = list(models)
        if not models:
            raise ValueError("Ensemble needs at least one model")
        if all(isinstance(m, nn.Module) for m in models):
            self.members = nn.ModuleList(models)
        else:
            self.members = models

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for i, m in enumerate(self.members):
            y = m(x)
            if not isinstance(y, torch.Tensor):
                raise ValueError(f"Ensemble member {i} returned {type(y).__name__}, not a tensor")
            y = y.float()
            if total is not None and y.shape != total.shape:
                raise ValueError(f"Ensemble members disagree on the output shape: member 0 gave "
                                 f"{tuple(total.shape)}, member {i} {tuple(y.shape)}")
            total = y if total is None else total + y
        return total / len(self.members)
