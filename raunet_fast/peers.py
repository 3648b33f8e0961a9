"""Outside baselines: MONAI's ``AttentionUnet`` and ``BasicUNet`` behind the forward
contract of the U-Net family (``N x C x H x W`` in, logits of the same ``H x W`` out, any
size: padded at the bottom/right to the network's size multiple and cropped back), with
``config`` / ``save_pretrained`` / ``from_pretrained`` like the family's models.

Widths follow ``base_channels`` (c) and ``depth``:

* ``MonaiAttentionUnet``: ``channels=(c, 2c, ..., c * 2**(depth-1))``, strides 2;
* ``MonaiBasicUNet``: ``features=(c, c, 2c, 4c, 8c, c)``; BasicUNet always has 5 levels,
  so its ``depth`` must be 5.

MONAI (the ``peers`` extra) is imported when a peer is built, never at import time.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import require
from .hub import PretrainedMixin

#: the ``depth`` a peer is built with, where MONAI fixes it
FIXED_DEPTH = {"monai-basicunet": 5}


def monai_nets():
    """``monai.networks.nets``, or a one-line :class:`~raunet_fast.errors.MissingExtra`."""
    require("monai", "peers", "the MONAI baselines")  # also when the submodule is cached
    return require("monai.networks.nets", "peers", "the MONAI baselines")


class MonaiPeer(PretrainedMixin, nn.Module):
    """A MONAI network (``self.net``) with the family's constructor, config and forward."""

    label: str = ""
    norms: tuple[str, ...] = ("batch",)

    def __init__(self, in_channels: int = 3, out_channels: int = 1, base_channels: int = 64,
                 depth: int = 5, dropout: float = 0.0, norm: str = "batch",
                 deep_supervision: bool = False, spatial_dims: int = 2):
        super().__init__()
        name = type(self).__name__
        for key, value in (("in_channels", in_channels), ("out_channels", out_channels),
                           ("base_channels", base_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        if not isinstance(depth, int) or depth < 2:
            raise ValueError(f"depth must be an int >= 2, got {depth!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if norm not in self.norms:
            raise ValueError(f"{name} supports norm {' or '.join(self.norms)}, got {norm!r}")
        if spatial_dims != 2:
            raise ValueError(f"{name} is built for images only (spatial_dims=2), got "
                             f"spatial_dims={spatial_dims!r}")
        if deep_supervision:
            raise ValueError(f"{name} has no deep supervision; train it without "
                             f"--deep-supervision")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.base_channels, self.depth = base_channels, depth
        self.dropout, self.norm = float(dropout), norm
        self.deep_supervision, self.spatial_dims = False, 2
        self.attention = False
        self.net = self.build(monai_nets())

    def build(self, nets) -> nn.Module:
        raise NotImplementedError

    @property
    def config(self) -> dict[str, Any]:
        return {"architecture": type(self).__name__, "in_channels": self.in_channels,
                "out_channels": self.out_channels, "base_channels": self.base_channels,
                "depth": self.depth, "dropout": self.dropout, "norm": self.norm,
                "deep_supervision": False, "spatial_dims": 2}

    @property
    def size_multiple(self) -> int:
        return 2 ** (self.depth - 1)

    def check_input(self, x: torch.Tensor) -> None:
        from .models import SegmentationUNet

        SegmentationUNet.check_input(self, x)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """Logits ``N x out_channels x H x W``; with ``return_attention`` also ``[]`` (the
        gates' maps stay inside MONAI)."""
        self.check_input(x)
        h, w = x.shape[-2:]
        m = self.size_multiple
        x = F.pad(x, (0, (-w) % m, 0, (-h) % m))
        out = self.net(x)[..., :h, :w]
        return (out, []) if return_attention else out


class MonaiAttentionUnet(MonaiPeer):
    """MONAI ``AttentionUnet``: channels ``c * 2**i`` per level, strides 2."""

    label = "MONAI AttentionUnet"

    def build(self, nets) -> nn.Module:
        c = self.base_channels
        return nets.AttentionUnet(
            spatial_dims=2, in_channels=self.in_channels, out_channels=self.out_channels,
            channels=tuple(c * 2 ** i for i in range(self.depth)),
            strides=(2,) * (self.depth - 1), dropout=self.dropout)


class MonaiBasicUNet(MonaiPeer):
    """MONAI ``BasicUNet``: features ``(c, c, 2c, 4c, 8c, c)``, always 5 levels."""

    label = "MONAI BasicUNet"
    norms = ("batch", "instance")

    def build(self, nets) -> nn.Module:
        if self.depth != FIXED_DEPTH["monai-basicunet"]:
            raise ValueError(f"MonaiBasicUNet has 5 levels (MONAI fixes them), got "
                             f"depth={self.depth}")
        c = self.base_channels
        norm = ("instance", {"affine": True}) if self.norm == "instance" else "batch"
        return nets.BasicUNet(spatial_dims=2, in_channels=self.in_channels,
                              out_channels=self.out_channels,
                              features=(c, c, 2 * c, 4 * c, 8 * c, c), norm=norm,
                              dropout=self.dropout)


#: CLI names (``--model``) of the peers, mapped to classes
PEER_MODELS: dict[str, type[MonaiPeer]] = {
    "monai-attention-unet": MonaiAttentionUnet, "monai-basicunet": MonaiBasicUNet}
