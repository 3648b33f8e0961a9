"""The public ``conv3d_fused`` op: argument checks, the registered
``torch.ops.raunet_fast.conv3d_fused`` custom op with its fake, and the eager shortcut."""
from __future__ import annotations

from typing import Optional

import torch

from .._backend import check_backend_name, eager_direct, run_direct
from .dispatch import conv3d_fused_impl

__all__ = ["conv3d_fused", "check_args"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: The opaque ``torch.ops.raunet_fast.conv3d_fused`` custom op.
conv3d_fused_op = torch.library.custom_op("raunet_fast::conv3d_fused", conv3d_fused_impl,
                                          mutates_args=())


@conv3d_fused_op.register_fake
def _(x, weight, bias, residual, shortcut_input, shortcut_weight, relu, backend):
    return torch.empty((x.shape[0], weight.shape[0], *x.shape[2:]), dtype=x.dtype,
                       device=x.device, memory_format=torch.channels_last_3d)


def check_args(x, weight, bias=None, residual=None, shortcut_input=None,
               shortcut_weight=None) -> None:
    if x.dim() != 5:
        raise ValueError(f"x must be N x C x D x H x W, got shape {tuple(x.shape)}")
    k = weight.shape[-1] if weight.dim() == 5 else 0
    if weight.dim() != 5 or tuple(weight.shape[2:]) != (k, k, k) or k % 2 == 0 \
            or weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight must be Cout x {x.shape[1]} x k x k x k with an odd k, got "
                         f"{tuple(weight.shape)}")
    cout = weight.shape[0]
    if bias is not None and tuple(bias.shape) != (cout,):
        raise ValueError(f"bias must have shape ({cout},), got {tuple(bias.shape)}")
    want = (x.shape[0], cout, *x.shape[2:])
    if residual is not None and tuple(residual.shape) != want:
        raise ValueError(f"residual must have the output's shape {want}, got "
                         f"{tuple(residual.shape)}")
    _check_shortcut(x, cout, residual, shortcut_input, shortcut_weight)
    if x.dtype not in _DTYPES:
        raise ValueError(f"x must be one of {_DTYPES}, got {x.dtype}")
    for name, t in (("weight", weight), ("bias", bias), ("residual", residual),
                    ("shortcut_input", shortcut_input), ("shortcut_weight", shortcut_weight)):
        if t is None:
            continue
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, x on {x.device}: put all on one device")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a float tensor, got {t.dtype}")
    for name, t in (("residual", residual), ("shortcut_input", shortcut_input)):
        if t is not None and t.dtype != x.dtype:
            raise ValueError(f"{name} must have x's dtype {x.dtype}, got {t.dtype}")


def _check_shortcut(x, cout, residual, shortcut_input, shortcut_weight) -> None:
    if (shortcut_input is None) != (shortcut_weight is None):
        raise ValueError("pass shortcut_input and shortcut_weight together")
    if shortcut_input is None:
        return
    if residual is not None:
        raise ValueError("pass a residual or a shortcut (shortcut_input, shortcut_weight), "
                         "not both")
    if shortcut_input.dim() != 5 or shortcut_input.shape[0] != x.shape[0] \
            or shortcut_input.shape[2:] != x.shape[2:]:
        raise ValueError(f"shortcut_input must be N x Cs x D x H x W with x's N, D, H, W, "
                         f"got {tuple(shortcut_input.shape)}")
    cs = shortcut_input.shape[1]
    if shortcut_weight.numel() != cout * cs or shortcut_weight.shape[:2] != (cout, cs):
        raise ValueError(f"shortcut_weight must be Cout x Cs = {cout} x {cs} (or "
                         f"{cout} x {cs} x 1 x 1 x 1), got {tuple(shortcut_weight.shape)}")


def conv3d_fused(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 residual: Optional[torch.Tensor] = None, *,
                 shortcut_input: Optional[torch.Tensor] = None,
                 shortcut_weight: Optional[torch.Tensor] = None, relu: bool = True,
                 backend: str = "auto") -> torch.Tensor:
    """``relu?(conv3d(x, weight, padding=k // 2) + bias + (residual | conv1x1x1(shortcut)))``
    for volumes.

    Args:
        x: ``N x Cin x D x H x W``, float32 / float16 / bfloat16 (channels_last_3d is the
            fast layout; others are converted).
        weight: ``Cout x Cin x k x k x k``, k odd (stride 1, same padding); used in x's
            dtype. bias: ``(Cout,)`` or None.
        residual: ``N x Cout x D x H x W`` in x's dtype, added before the ReLU, or None.
        shortcut_input, shortcut_weight: instead of a residual, a 1x1x1 projection
            ``conv3d(shortcut_input, shortcut_weight)`` (``N x Cs x D x H x W`` in x's
            dtype; ``Cout x Cs``, no bias of its own: fold it into ``bias``) is added; the
            ``cpp`` backend accumulates the convolution into it in place.
        relu: apply ReLU last (NaN kept on the CPU backends).
        backend: ``"auto"``, ``"torch"``, ``"cpp"``, ``"cuda"`` (``"triton"``: none exists).

    Returns ``N x Cout x D x H x W`` in x's dtype, channels_last_3d.
    """
    check_backend_name(backend)
    check_args(x, weight, bias, residual, shortcut_input, shortcut_weight)
    args = (x, weight, bias, residual, shortcut_input, shortcut_weight, relu, backend)
    if eager_direct(x, weight, bias, residual, shortcut_input, shortcut_weight):
        return run_direct("conv3d_fused", conv3d_fused_impl, args)
    return conv3d_fused_op(*args)
