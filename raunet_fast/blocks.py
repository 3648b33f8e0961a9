"""Building blocks of the U-Net family (reference, eager PyTorch).

Small composable modules, configured by arguments (never copied per variant):

* :class:`ConvNormAct`   - ``Conv(k, bias=False) -> Norm -> (ReLU)``
* :class:`PlainBlock`    - ``[Conv3x3-Norm-ReLU] x 2``
* :class:`ResidualBlock` - ``Conv3x3-Norm-ReLU -> Conv3x3-Norm`` + shortcut, add, ReLU
* :class:`AttentionGate` - additive attention gate of Oktay et al., at skip resolution

Every conv that is followed by a norm has ``bias=False``; each (conv, norm) pair
lives in one :class:`ConvNormAct`, so that inference code can fold the norm into
the conv by walking these modules.
"""
from __future__ import annotations

import torch
from torch import nn

NORMS = ("batch", "instance", "group")


def group_count(channels: int, max_groups: int = 32) -> int:
    """Largest number of groups <= ``max_groups`` that divides ``channels``."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


def make_norm(kind: str, channels: int) -> nn.Module:
    """A 2-D normalisation layer with learnable affine parameters (2*C of them)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        # track_running_stats=False: per-image statistics in train and eval alike.
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class ConvNormAct(nn.Module):
    """``Conv2d(kernel_size, bias=False) -> norm -> ReLU (optional)``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, norm: str = "batch",
                 act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = make_norm(norm, out_ch)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


def _dropout(p: float) -> nn.Module:
    return nn.Dropout2d(p) if p > 0 else nn.Identity()


class PlainBlock(nn.Module):
    """``[Conv3x3 -> Norm -> ReLU] x 2`` (dropout, when asked, between the two)."""

    residual = False

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch", dropout: float = 0.0):
        super().__init__()
        self.conv1 = ConvNormAct(in_ch, out_ch, 3, norm, act=True)
        self.drop = _dropout(dropout)
        self.conv2 = ConvNormAct(out_ch, out_ch, 3, norm, act=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.drop(self.conv1(x)))


class ResidualBlock(nn.Module):
    """``Conv3x3-Norm-ReLU -> Conv3x3-Norm`` plus shortcut, add, ReLU.

    The shortcut is the identity when ``in_ch == out_ch``, else ``Conv1x1(bias=False)-Norm``.
    """

    residual = True

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch", dropout: float = 0.0):
        super().__init__()
        self.conv1 = ConvNormAct(in_ch, out_ch, 3, norm, act=True)
        self.drop = _dropout(dropout)
        self.conv2 = ConvNormAct(out_ch, out_ch, 3, norm, act=False)
        self.shortcut = (nn.Identity() if in_ch == out_ch
                         else ConvNormAct(in_ch, out_ch, 1, norm, act=False))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.drop(self.conv1(x))) + self.shortcut(x))


class AttentionGate(nn.Module):
    """Additive attention gate on a skip connection, computed at skip resolution.

    ``alpha = sigmoid(Norm(psi(ReLU(Norm(W_x x) + Norm(W_g g)))))``, output ``x * alpha``.
    ``W_x``: ``Conv1x1(x_ch -> inter_ch)``, ``W_g``: ``Conv1x1(g_ch -> inter_ch)``,
    ``psi``: ``Conv1x1(inter_ch -> 1)``, all without bias (each is followed by a norm).

    Returns ``(x * alpha, alpha)``; ``alpha`` has shape ``N x 1 x H x W``.
    """

    def __init__(self, x_ch: int, g_ch: int, inter_ch: int, norm: str = "batch"):
        super().__init__()
        self.w_x = ConvNormAct(x_ch, inter_ch, 1, norm, act=False)
        self.w_g = ConvNormAct(g_ch, inter_ch, 1, norm, act=False)
        self.psi = ConvNormAct(inter_ch, 1, 1, norm, act=False)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = torch.sigmoid(self.psi(torch.relu(self.w_x(x) + self.w_g(g))))
        return x * alpha, alpha
