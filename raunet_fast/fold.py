"""Exact folding of eval-mode BatchNorm into the convolution before it.

``BN(conv(x)) = conv(x; W * s) + (beta - mean * s)`` with ``s = gamma / sqrt(var + eps)``,
for 2-D (Conv2d + BatchNorm2d) and 3-D (Conv3d + BatchNorm3d) layers alike: ``s`` scales
the weight along its output-channel axis whatever the kernel's rank.
The algebra runs in float64 and is cast once at the end, so the folded conv matches the
eval-mode module to the rounding of the final dtype. Only BatchNorm folds: instance and
group norms use statistics of the input itself.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvNormAct


#: the BatchNorm that folds into a conv, by the conv weight's dimension (2-D, 3-D)
_BATCHNORM_FOR = {4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def fold_conv_bn(conv: nn.Module, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Return float64 ``(weight, bias)`` of ``conv`` (Conv2d or Conv3d) followed by
    eval-mode ``bn`` (BatchNorm2d or BatchNorm3d, matching the conv)."""
    want = _BATCHNORM_FOR.get(conv.weight.dim())
    if want is None or not isinstance(bn, want):
        name = want.__name__ if want is not None else "BatchNorm2d / BatchNorm3d"
        raise ValueError(f"only {name} folds into a {type(conv).__name__} (got "
                         f"{type(bn).__name__}); instance/group norms depend on the input "
                         f"and cannot be folded")
    if bn.training:
        raise ValueError("fold BatchNorm only in eval mode (call model.eval() first): in "
                         "training mode it uses batch statistics")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics (track_running_stats=False) cannot be folded")
    w = conv.weight.detach().to(torch.float64)
    mean = bn.running_mean.detach().to(torch.float64)
    var = bn.running_var.detach().to(torch.float64)
    gamma = bn.weight.detach().to(torch.float64) if bn.affine else torch.ones_like(mean)
    beta = bn.bias.detach().to(torch.float64) if bn.affine else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    bias = beta - mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias.detach().to(torch.float64) * scale
    return w * scale.reshape(-1, *([1] * (w.dim() - 1))), bias


def fold_conv_norm_act(m: ConvNormAct) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 ``(weight, bias)`` of a :class:`ConvNormAct` (its activation not included)."""
    return fold_conv_bn(m.conv, m.norm)


def fold_plain_block(block) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Float64 ``((w1, b1), (w2, b2))`` of an eval-mode :class:`~raunet_fast.blocks.PlainBlock`:
    ``relu(conv(relu(conv(x, w1) + b1), w2) + b2)`` equals the block (dropout is the identity
    in eval mode)."""
    return fold_conv_norm_act(block.conv1), fold_conv_norm_act(block.conv2)


def fold_residual_block(block) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                        torch.Tensor | None]:
    """Float64 ``(w1, b1, w2, b2, ws)`` of an eval-mode :class:`~raunet_fast.blocks.ResidualBlock`.

    ``h = relu(conv3x3(x, w1) + b1)``;
    ``y = relu(conv3x3(h, w2) + b2 + (x if ws is None else conv1x1(x, ws)))``.
    ``ws`` is ``Cout x Cin`` (the folded 1x1 projection) or ``None`` for the identity
    shortcut; ``b2`` already includes the projection's folded bias (both land in one
    accumulator).
    """
    w1, b1 = fold_conv_norm_act(block.conv1)
    w2, b2 = fold_conv_norm_act(block.conv2)
    ws = None
    if isinstance(block.shortcut, ConvNormAct):
        wsc, bsc = fold_conv_norm_act(block.shortcut)
        ws = wsc.flatten(1)
        b2 = b2 + bsc
    elif not isinstance(block.shortcut, nn.Identity):
        raise ValueError(f"cannot fold a residual shortcut of type {type(block.shortcut).__name__}")
    return w1, b1, w2, b2, ws


def carry_input_through(w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                        ws: torch.Tensor, multiple: int = 8
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rewrite a projection-shortcut residual block as two plain conv + bias + ReLU layers.

    ``h = relu(conv3x3(x, w1) + b1)``, ``y = relu(conv3x3(h, w2) + b2 + conv1x1(x, ws))``
    becomes ``h' = relu(conv3x3(x, w1') + b1')``, ``y = relu(conv3x3(h', w2') + b2)`` where
    ``h'`` carries the block input along: its channels are ``[h, relu(x), relu(-x), 0...]``
    (``w1'`` has +-1 at the centre tap for the carried channels, zero-padded to a multiple
    of ``multiple`` channels for tensor-core friendly shapes), and ``w2'`` puts ``ws`` and
    ``-ws`` at the centre tap on them: ``ws relu(x) - ws relu(-x) = ws x``. Exact: the
    carried channels are copies of x (one of relu(x), relu(-x) is 0), nothing is rounded
    that was not before. Same ``b2``.

    Worth it when Cin is small next to the block's width (RA-U-Net's first block, 3 or 4
    -> 64): the shortcut then rides in conv2's K loop (+2 Cin channels, 1/9 of them
    non-zero) instead of a separate 1x1 convolution whose Cout-channel output is written
    and read back at full resolution. Returns float64 ``(w1', b1', w2')``.
    """
    cmid, cin = w1.shape[0], w1.shape[1]
    cout = w2.shape[0]
    width = -(-(cmid + 2 * cin) // multiple) * multiple
    d = torch.float64
    w1c = torch.zeros(width, cin, 3, 3, dtype=d, device=w1.device)
    w1c[:cmid] = w1.to(d)
    eye = torch.arange(cin, device=w1.device)
    w1c[cmid + eye, eye, 1, 1] = 1.0
    w1c[cmid + cin + eye, eye, 1, 1] = -1.0
    b1c = torch.zeros(width, dtype=d, device=w1.device)
    b1c[:cmid] = b1.to(d)
    w2c = torch.zeros(cout, width, 3, 3, dtype=d, device=w2.device)
    w2c[:, :cmid] = w2.to(d)
    wsd = ws.reshape(cout, cin).to(d)
    w2c[:, cmid:cmid + cin, 1, 1] = wsd
    w2c[:, cmid + cin:cmid + 2 * cin, 1, 1] = -wsd
    return w1c, b1c, w2c


def folded_copy(model: nn.Module) -> nn.Module:
    """A copy of eval-mode ``model`` with every BatchNorm folded into the conv before it (the
    conv gets the folded weight and a bias, the norm becomes the identity): the same
    function in standard ops only, for exporters (ONNX) that do not know the fused ops."""
    import copy

    if model.training:
        raise ValueError("fold BatchNorm only in eval mode (call model.eval() first)")
    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, ConvNormAct) and not isinstance(m.norm, nn.Identity):
            w, b = fold_conv_norm_act(m)
            conv = m.conv
            conv.weight = nn.Parameter(w.to(conv.weight.dtype), requires_grad=False)
            conv.bias = nn.Parameter(b.to(conv.weight.dtype), requires_grad=False)
            m.norm = nn.Identity()
    return out
