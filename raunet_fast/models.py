"""The U-Net family of the RA-U-Net paper: one parameterised network, two switches.

==================  ========  =========
class               residual  attention
==================  ========  =========
``UNet``            no        no
``AttentionUNet``   no        yes
``ResUNet``         yes       no
``RAUNet``          yes       yes
==================  ========  =========

All four return raw logits ``N x out_channels x H x W`` for any ``H x W`` (the input
is padded to a multiple of ``2**(depth-1)`` at the bottom/right and the output cropped
back). Nothing here knows about kernels: the fast inference path lives in
:mod:`raunet_fast.inference` and :mod:`raunet_fast.ops`.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import NORMS, AttentionGate, PlainBlock, ResidualBlock
from .errors import InputTypeError
from .hub import PretrainedMixin


class DecoderLevel(nn.Module):
    """One decoder level: up-conv, optional gate on the skip, concat, block."""

    def __init__(self, channels: int, attention: bool, block: type[nn.Module], norm: str,
                 dropout: float):
        super().__init__()
        self.up = nn.ConvTranspose2d(2 * channels, channels, kernel_size=2, stride=2, bias=True)
        self.gate = AttentionGate(channels, channels, channels // 2, norm) if attention else None
        self.block = block(2 * channels, channels, norm, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        up = self.up(x)
        alpha = None
        if self.gate is not None:
            skip, alpha = self.gate(skip, up)
        return self.block(torch.cat([skip, up], dim=1)), alpha


class SegmentationUNet(PretrainedMixin, nn.Module):
    """A U-Net with optional residual blocks and attention gates (docs/design.md).

    Args:
        in_channels: input channels (3 for RGB dermoscopy, 4 for BraTS modalities).
        out_channels: output channels (logits; one per class or region).
        base_channels: width of the first level; level ``i`` has ``base * 2**i``.
        depth: number of resolution levels (``depth - 1`` poolings).
        dropout: ``Dropout2d`` probability inside every block (0 disables it).
        norm: ``"batch"``, ``"instance"`` or ``"group"``.
        deep_supervision: in training mode, also return logits of the coarser
            decoder levels (1 .. depth-2), each at its own resolution.
        residual, attention: the two architecture switches (fixed by the subclasses).

    ``forward(x)`` returns logits. In training mode with ``deep_supervision`` it returns
    a tuple ``(logits, aux_1, ..., aux_{depth-2})`` where ``aux_k`` has spatial size
    ``ceil(H / 2**k) x ceil(W / 2**k)``. ``forward(x, return_attention=True)`` returns
    ``(output, alphas)`` with one ``N x 1 x h x w`` attention map per gate, finest first
    (an empty list for models without attention).
    """

    residual: bool = True
    attention: bool = True

    def __init__(self, in_channels: int = 3, out_channels: int = 1, base_channels: int = 64,
                 depth: int = 5, dropout: float = 0.0, norm: str = "batch",
                 deep_supervision: bool = False, *, residual: bool | None = None,
                 attention: bool | None = None):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("base_channels", base_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(depth, int) or depth < 2:
            raise ValueError(f"depth must be an int >= 2 (at least one pooling), got {depth!r}")
        if base_channels < 2:
            raise ValueError("base_channels must be >= 2 (attention gates use base_channels // 2)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        for name, value in (("residual", residual), ("attention", attention)):
            if value is None:
                continue
            if type(self) is not SegmentationUNet and bool(value) != getattr(type(self), name):
                raise ValueError(f"{type(self).__name__} has {name}={getattr(type(self), name)}; "
                                 f"use SegmentationUNet({name}={value}) or another class")
            setattr(self, name, bool(value))

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.base_channels = base_channels
        self.depth = depth
        self.dropout = float(dropout)
        self.norm = norm
        self.deep_supervision = bool(deep_supervision)

        block = ResidualBlock if self.residual else PlainBlock
        widths = [base_channels * 2 ** i for i in range(depth)]
        self.pool = nn.MaxPool2d(2)
        self.encoder = nn.ModuleList(
            block(in_channels if i == 0 else widths[i - 1], widths[i], norm, dropout)
            for i in range(depth))
        # decoder[i] produces level i (decoder[0] is full resolution); run deepest first.
        self.decoder = nn.ModuleList(
            DecoderLevel(widths[i], self.attention, block, norm, dropout) for i in range(depth - 1))
        self.head = nn.Conv2d(base_channels, out_channels, kernel_size=1, bias=True)
        self.aux_heads = (nn.ModuleList(nn.Conv2d(widths[i], out_channels, 1, bias=True)
                                        for i in range(1, depth - 1))
                          if self.deep_supervision else None)
        self.reset_parameters()

    # ------------------------------------------------------------------ config
    @property
    def config(self) -> dict[str, Any]:
        return {
            "architecture": type(self).__name__,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "base_channels": self.base_channels,
            "depth": self.depth,
            "dropout": self.dropout,
            "norm": self.norm,
            "deep_supervision": self.deep_supervision,
            "residual": self.residual,
            "attention": self.attention,
        }

    @property
    def size_multiple(self) -> int:
        """Inputs are padded to a multiple of this (``2**(depth-1)``)."""
        return 2 ** (self.depth - 1)

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------- forward
    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error for inputs the network cannot take."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise InputTypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            hint = (f"; add a batch dimension with x.unsqueeze(0) -> (1, {', '.join(map(str, x.shape))})"
                    if x.dim() == 3 else "")
            raise ValueError(f"{name} expects a 4-D input N x {self.in_channels} x H x W, "
                             f"got shape {tuple(x.shape)}{hint}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{name} was built with in_channels={self.in_channels} and expects "
                             f"N x {self.in_channels} x H x W, got {x.shape[1]} channels "
                             f"(shape {tuple(x.shape)})")
        if not x.is_floating_point():
            raise InputTypeError(f"{name} expects a floating-point input (float32/float16/bfloat16), "
                            f"got {x.dtype}; convert with x.float() (and scale to your "
                            f"training range)")
        if x.numel() == 0:
            raise ValueError(f"{name} got an empty input of shape {tuple(x.shape)}; "
                             f"N, H and W must all be >= 1")

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        self.check_input(x)
        h, w = x.shape[-2], x.shape[-1]
        m = self.size_multiple
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))

        skips = []
        for i, enc in enumerate(self.encoder):
            x = enc(x if i == 0 else self.pool(x))
            skips.append(x)

        x = skips[-1]
        alphas: list[torch.Tensor] = []
        feats: list[torch.Tensor] = []
        for i in range(self.depth - 2, -1, -1):
            x, alpha = self.decoder[i](x, skips[i])
            feats.append(x)
            if alpha is not None:
                alphas.append(alpha)
        logits = self.head(x)[..., :h, :w]

        out: torch.Tensor | tuple[torch.Tensor, ...] = logits
        if self.aux_heads is not None and self.training:
            aux = []
            for k in range(1, self.depth - 1):
                hk, wk = -(-h // 2 ** k), -(-w // 2 ** k)
                aux.append(self.aux_heads[k - 1](feats[-1 - k])[..., :hk, :wk])
            out = (logits, *aux)
        if return_attention:
            alphas = alphas[::-1]
            cropped = [a[..., :-(-h // 2 ** k), :-(-w // 2 ** k)] for k, a in enumerate(alphas)]
            return out, cropped
        return out

    def forward_with_attention(self, x: torch.Tensor):
        """``(output, alphas)``; same as ``forward(x, return_attention=True)``."""
        return self.forward(x, return_attention=True)

    def extra_repr(self) -> str:
        c = self.config
        return ", ".join(f"{k}={c[k]!r}" for k in ("in_channels", "out_channels", "base_channels",
                                                   "depth", "norm", "dropout", "deep_supervision"))


class UNet(SegmentationUNet):
    """Plain U-Net: no residual blocks, no attention gates."""

    residual = False
    attention = False


class AttentionUNet(SegmentationUNet):
    """Attention U-Net: plain blocks, attention gate on every skip."""

    residual = False
    attention = True


class ResUNet(SegmentationUNet):
    """Residual U-Net: residual blocks, no attention gates."""

    residual = True
    attention = False


class RAUNet(SegmentationUNet):
    """RA-U-Net (the paper's model): residual blocks and attention gates."""

    residual = True
    attention = True


ARCHITECTURES: dict[str, type[SegmentationUNet]] = {
    cls.__name__: cls for cls in (UNet, AttentionUNet, ResUNet, RAUNet)}

#: Names accepted by the CLI (``--model``), mapped to classes.
MODEL_NAMES: dict[str, type[SegmentationUNet]] = {
    "unet": UNet, "attention-unet": AttentionUNet, "resunet": ResUNet, "raunet": RAUNet}


def build_model(name: str, **kwargs: Any) -> SegmentationUNet:
    """Build a model from a CLI name (``raunet``) or a class name (``RAUNet``)."""
    cls = MODEL_NAMES.get(name.lower()) or ARCHITECTURES.get(name)
    if cls is None:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODEL_NAMES)}")
    return cls(**kwargs)

# The MONAI baselines (raunet_fast.peers): built by name and loaded from checkpoints like the
# family; MONAI itself is imported only when one is built.
from .peers import PEER_MODELS  # noqa: E402

ARCHITECTURES.update({cls.__name__: cls for cls in PEER_MODELS.values()})
MODEL_NAMES.update(PEER_MODELS)
