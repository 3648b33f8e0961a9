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
back). ``spatial_dims=3`` builds the same network for volumes from the same code (3-D
convs, norms, pooling and up-convs): ``N x C x D x H x W`` in, logits of the same
``D x H x W`` out, any ``D x H x W`` (each padded at its end, then cropped). Nothing here knows about kernels: the fast inference path lives in
:mod:`raunet_fast.inference` and :mod:`raunet_fast.ops`.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import NORMS, AttentionGate, PlainBlock, ResidualBlock, check_spatial_dims, layer
from .errors import InputTypeError
from .hub import PretrainedMixin


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``x`` zero-padded at the end of each spatial dimension (all after N, C) to a multiple
    of ``multiple``; ``x`` itself when no padding is needed."""
    pads = [(-s) % multiple for s in x.shape[2:]]
    if not any(pads):
        return x
    return F.pad(x, [v for p in reversed(pads) for v in (0, p)])


def crop_to(y: torch.Tensor, size: tuple[int, ...], level: int = 0) -> torch.Tensor:
    """``y`` cropped to the input ``size`` downsampled ``level`` times (``ceil(s / 2**level)``
    per spatial dimension)."""
    return y[(..., *(slice(0, -(-s // 2 ** level)) for s in size))]


class DecoderLevel(nn.Module):
    """One decoder level: up-conv, optional gate on the skip, concat, block."""

    def __init__(self, channels: int, attention: bool, block: type[nn.Module], norm: str,
                 dropout: float, spatial_dims: int = 2):
        super().__init__()
        self.up = layer("up", spatial_dims)(2 * channels, channels, kernel_size=2, stride=2,
                                            bias=True)
        self.gate = (AttentionGate(channels, channels, channels // 2, norm, spatial_dims)
                     if attention else None)
        self.block = block(2 * channels, channels, norm, dropout, spatial_dims)

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
        dropout: ``Dropout2d`` (``Dropout3d``) probability inside every block (0 disables it).
        norm: ``"batch"``, ``"instance"`` or ``"group"``.
        deep_supervision: in training mode, also return logits of the coarser
            decoder levels (1 .. depth-2), each at its own resolution.
        residual, attention: the two architecture switches (fixed by the subclasses).
        spatial_dims: 2 (images, ``N x C x H x W``) or 3 (volumes, ``N x C x D x H x W``:
            every conv, norm, pooling and up-conv is its 3-D form).

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
                 attention: bool | None = None, spatial_dims: int = 2):
        super().__init__()
        spatial_dims = check_spatial_dims(spatial_dims)
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
        self.spatial_dims = spatial_dims

        block = ResidualBlock if self.residual else PlainBlock
        widths = [base_channels * 2 ** i for i in range(depth)]
        conv, sd = layer("conv", spatial_dims), spatial_dims
        self.pool = layer("pool", sd)(2)
        self.encoder = nn.ModuleList(
            block(in_channels if i == 0 else widths[i - 1], widths[i], norm, dropout, sd)
            for i in range(depth))
        # decoder[i] produces level i (decoder[0] is full resolution); run deepest first.
        self.decoder = nn.ModuleList(
            DecoderLevel(widths[i], self.attention, block, norm, dropout, sd)
            for i in range(depth - 1))
        self.head = conv(base_channels, out_channels, kernel_size=1, bias=True)
        self.aux_heads = (nn.ModuleList(conv(widths[i], out_channels, 1, bias=True)
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
            "spatial_dims": self.spatial_dims,
        }

    @property
    def size_multiple(self) -> int:
        """Inputs are padded to a multiple of this (``2**(depth-1)``)."""
        return 2 ** (self.depth - 1)

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm,
                                nn.modules.instancenorm._InstanceNorm)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------- forward
    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error for inputs the network cannot take."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise InputTypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
        dims = getattr(self, "spatial_dims", 2)
        want = f"N x {self.in_channels} x {'D x ' if dims == 3 else ''}H x W"
        if x.dim() != 2 + dims:
            hint = (f"; add a batch dimension with x.unsqueeze(0) -> (1, {', '.join(map(str, x.shape))})"
                    if x.dim() == 1 + dims else "")
            kind = "" if dims == 2 else " (a spatial_dims=3 model: volumes)"
            raise ValueError(f"{name}{kind} expects a {2 + dims}-D input {want}, "
                             f"got shape {tuple(x.shape)}{hint}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{name} was built with in_channels={self.in_channels} and expects "
                             f"{want}, got {x.shape[1]} channels (shape {tuple(x.shape)})")
        if not x.is_floating_point():
            raise InputTypeError(f"{name} expects a floating-point input (float32/float16/bfloat16), "
                            f"got {x.dtype}; convert with x.float() (and scale to your "
                            f"training range)")
        if x.numel() == 0:
            raise ValueError(f"{name} got an empty input of shape {tuple(x.shape)}; "
                             f"N and every spatial size must be >= 1")

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        self.check_input(x)
        size = tuple(x.shape[2:])
        x = pad_to_multiple(x, self.size_multiple)

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
        logits = crop_to(self.head(x), size)

        out: torch.Tensor | tuple[torch.Tensor, ...] = logits
        if self.aux_heads is not None and self.training:
            aux = [crop_to(self.aux_heads[k - 1](feats[-1 - k]), size, k)
                   for k in range(1, self.depth - 1)]
            out = (logits, *aux)
        if return_attention:
            return out, [crop_to(a, size, k) for k, a in enumerate(alphas[::-1])]
        return out

    def forward_with_attention(self, x: torch.Tensor):
        """``(output, alphas)``; same as ``forward(x, return_attention=True)``."""
        return self.forward(x, return_attention=True)

    def extra_repr(self) -> str:
        c = self.config
        text = ", ".join(f"{k}={c[k]!r}" for k in ("in_channels", "out_channels", "base_channels",
                                                   "depth", "norm", "dropout", "deep_supervision"))
        return text + (f", spatial_dims={self.spatial_dims}" if self.spatial_dims != 2 else "")


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
