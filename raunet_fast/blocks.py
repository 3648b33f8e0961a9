"""Building blocks of the U-Net family (reference, eager PyTorch).

Small composable modules, configured by arguments (never copied per variant):

* :class:`ConvNormAct`   - ``Conv(k, bias=False) -> Norm -> (ReLU)``
* :class:`PlainBlock`    - ``[Conv3x3-Norm-ReLU] x 2``
* :class:`ResidualBlock` - ``Conv3x3-Norm-ReLU -> Conv3x3-Norm`` + shortcut, add, ReLU
* :class:`AttentionGate` - additive attention gate of Oktay et al., at skip resolution

Every conv that is followed by a norm has ``bias=False``; each (conv, norm) pair
lives in one :class:`ConvNormAct`, so that inference code can fold the norm into
the conv by walking these modules.

Every module takes ``spatial_dims`` (2: images, ``N x C x H x W``; 3: volumes,
``N x C x D x H x W``); :func:`layer` maps a layer kind to its 2-D or 3-D class, so one
code path builds both.
"""
from __future__ import annotations

import torch
from torch import nn

NORMS = ("batch", "instance", "group")
SPATIAL_DIMS = (2, 3)

_LAYERS = {
    2: {"conv": nn.Conv2d, "up": nn.ConvTranspose2d, "pool": nn.MaxPool2d,
        "batch": nn.BatchNorm2d, "instance": nn.InstanceNorm2d, "dropout": nn.Dropout2d},
    3: {"conv": nn.Conv3d, "up": nn.ConvTranspose3d, "pool": nn.MaxPool3d,
        "batch": nn.BatchNorm3d, "instance": nn.InstanceNorm3d, "dropout": nn.Dropout3d},
}


def check_spatial_dims(spatial_dims) -> int:
    """``spatial_dims`` if it is 2 or 3, else a one-line ``ValueError``."""
    if type(spatial_dims) is not int or spatial_dims not in SPATIAL_DIMS:
        raise ValueError(f"spatial_dims must be 2 (images) or 3 (volumes), got {spatial_dims!r}")
    return int(spatial_dims)


def layer(kind: str, spatial_dims: int) -> type[nn.Module]:
    """The ``torch.nn`` class of a layer kind (``conv``, ``up``, ``pool``, ``batch``,
    ``instance``, ``dropout``) for 2-D or 3-D inputs."""
    return _LAYERS[check_spatial_dims(spatial_dims)][kind]


def group_count(channels: int, max_groups: int = 32) -> int:
    """Largest number of groups <= ``max_groups`` that divides ``channels``."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def make_norm(kind: str, channels: int, spatial_dims: int = 2) -> nn.Module:
    """A normalisation layer with learnable affine parameters (2*C of them)."""
    if kind == "batch":
        return layer("batch", spatial_dims)(channels)
    if kind == "instance":
        # track_running_stats=False: per-image statistics in train and eval alike.
        return layer("instance", spatial_dims)(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class ConvNormAct(nn.Module):
    """``Conv(kernel_size, bias=False) -> norm -> ReLU (optional)``, 2-D or 3-D."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, norm: str = "batch",
                 act: bool = True, spatial_dims: int = 2):
        super().__init__()
        self.conv = layer("conv", spatial_dims)(in_ch, out_ch, kernel_size,
                                                padding=kernel_size // 2, bias=False)
        self.norm = make_norm(norm, out_ch, spatial_dims)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


def _dropout(p: float, spatial_dims: int) -> nn.Module:
    return layer("dropout", spatial_dims)(p) if p > 0 else nn.Identity()


class PlainBlock(nn.Module):
    """``[Conv3x3 -> Norm -> ReLU] x 2`` (dropout, when asked, between the two)."""

    residual = False

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch", dropout: float = 0.0,
                 spatial_dims: int = 2):
        super().__init__()
        self.conv1 = ConvNormAct(in_ch, out_ch, 3, norm, True, spatial_dims)
        self.drop = _dropout(dropout, spatial_dims)
        self.conv2 = ConvNormAct(out_ch, out_ch, 3, norm, True, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.drop(self.conv1(x)))


class ResidualBlock(nn.Module):
    """``Conv3x3-Norm-ReLU -> Conv3x3-Norm`` plus shortcut, add, ReLU.

    The shortcut is the identity when ``in_ch == out_ch``, else ``Conv1x1(bias=False)-Norm``.
    """

    residual = True

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch", dropout: float = 0.0,
                 spatial_dims: int = 2):
        super().__init__()
        self.conv1 = ConvNormAct(in_ch, out_ch, 3, norm, True, spatial_dims)
        self.drop = _dropout(dropout, spatial_dims)
        self.conv2 = ConvNormAct(out_ch, out_ch, 3, norm, False, spatial_dims)
        self.shortcut = (nn.Identity() if in_ch == out_ch
                         else ConvNormAct(in_ch, out_ch, 1, norm, False, spatial_dims))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.drop(self.conv1(x))) + self.shortcut(x))


class AttentionGate(nn.Module):
    """Additive attention gate on a skip connection, computed at skip resolution.

    ``alpha = sigmoid(Norm(psi(ReLU(Norm(W_x x) + Norm(W_g g)))))``, output ``x * alpha``.
    ``W_x``: ``Conv1x1(x_ch -> inter_ch)``, ``W_g``: ``Conv1x1(g_ch -> inter_ch)``,
    ``psi``: ``Conv1x1(inter_ch -> 1)``, all without bias (each is followed by a norm).

    Returns ``(x * alpha, alpha)``; ``alpha`` has shape ``N x 1 x H x W``
    (``N x 1 x D x H x W`` for volumes): the gate's math is per pixel / voxel.
    """

    def __init__(self, x_ch: int, g_ch: int, inter_ch: int, norm: str = "batch",
                 spatial_dims: int = 2):
        super().__init__()
        self.w_x = ConvNormAct(x_ch, inter_ch, 1, norm, False, spatial_dims)
        self.w_g = ConvNormAct(g_ch, inter_ch, 1, norm, False, spatial_dims)
        self.psi = ConvNormAct(inter_ch, 1, 1, norm, False, spatial_dims)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = torch.sigmoid(self.psi(torch.relu(self.w_x(x) + self.w_g(g))))
        return x * alpha, alpha
