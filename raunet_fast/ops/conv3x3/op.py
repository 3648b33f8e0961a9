"""The public op ``conv3x3_fused``: argument checks, the registered
``torch.ops.raunet_fast.conv3x3_fused`` custom op with its fake, and the eager shortcut."""
from __future__ import annotations

from typing import Optional

import torch

from .._backend import check_backend_name, eager_direct, run_direct
from .dispatch import conv3x3_fused_impl
from .layout import empty_out

__all__ = ["conv3x3_fused", "conv3x3_call", "inputs_ok", "check_args"]

#: The opaque ``torch.ops.raunet_fast.conv3x3_fused`` custom op.
conv3x3_fused_op = torch.library.custom_op("raunet_fast::conv3x3_fused", conv3x3_fused_impl,
                                           mutates_args=())


@conv3x3_fused_op.register_fake
def _(x, weight, bias, residual, shortcut_input, shortcut_weight, packed, relu, backend):
    return empty_out(x, weight.shape[0])


def conv3x3_call(x, weight, bias, residual, shortcut_input, shortcut_weight, packed, relu,
                 backend) -> torch.Tensor:
    """Run the op on checked arguments: its implementation directly in plain eager inference
    (no custom-op dispatch cost, :func:`~raunet_fast.ops._backend.eager_direct`), else the
    registered op (compile, export, autograd, fake tensors)."""
    args = (x, weight, bias, residual, shortcut_input, shortcut_weight, packed, relu, backend)
    if eager_direct(x, weight, bias, residual, shortcut_input, shortcut_weight, packed):
        return run_direct("conv3x3_fused", conv3x3_fused_impl, args)
    return conv3x3_fused_op(*args)


_X_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def inputs_ok(x, weight, residual, shortcut_input, shortcut_weight) -> bool:
    """A fast test that :func:`check_args` passes, for callers whose weights were checked
    when they were built (the inference modules): the activations against the weights'
    shapes and device, nothing else. False: run :func:`check_args` for the error message."""
    if x.dim() != 4 or x.dtype not in _X_DTYPES:
        return False
    n, cin, h, w = x.shape
    if cin != weight.shape[1] or h == 0 or w == 0 or x.device != weight.device:
        return False
    if residual is not None and (shortcut_input is not None or residual.device != x.device
                                 or residual.shape != (n, weight.shape[0], h, w)):
        return False
    if (shortcut_input is None) != (shortcut_weight is None):
        return False
    return shortcut_input is None or (
        shortcut_input.dim() == 4 and shortcut_input.device == x.device
        and shortcut_input.shape == (n, shortcut_weight.shape[1], h, w))


def _check_x_weight_bias(x, weight, bias) -> None:
    if x.dim() != 4:
        raise ValueError(f"conv3x3_fused: x must be N x Cin x H x W, got shape {tuple(x.shape)}")
    n, cin, h, w = x.shape
    if h == 0 or w == 0:
        raise ValueError(f"conv3x3_fused: x must have H, W >= 1, got shape {tuple(x.shape)}")
    if weight.dim() != 4 or tuple(weight.shape[1:]) != (cin, 3, 3):
        raise ValueError(f"conv3x3_fused: weight must be Cout x {cin} x 3 x 3 for x of shape "
                         f"{tuple(x.shape)}, got {tuple(weight.shape)}")
    cout = weight.shape[0]
    if bias.numel() != cout:
        raise ValueError(f"conv3x3_fused: bias must have Cout={cout} elements, got {bias.numel()}")
    if x.dtype not in _X_DTYPES:
        raise TypeError(f"conv3x3_fused: x must be float32/float16/bfloat16, got {x.dtype}")


def _check_shortcut(x, weight, residual, shortcut_input, shortcut_weight) -> None:
    n, _, h, w = x.shape
    cout = weight.shape[0]
    if residual is not None and shortcut_input is not None:
        raise ValueError("conv3x3_fused: give residual (identity shortcut) or shortcut_input + "
                         "shortcut_weight (projection), not both")
    if residual is not None and tuple(residual.shape) != (n, cout, h, w):
        raise ValueError(f"conv3x3_fused: residual must have shape {(n, cout, h, w)}, "
                         f"got {tuple(residual.shape)}")
    if (shortcut_input is None) != (shortcut_weight is None):
        raise ValueError("conv3x3_fused: shortcut_input and shortcut_weight go together")
    if shortcut_input is None:
        return
    if shortcut_input.dim() != 4 or shortcut_input.shape[0] != n or \
            tuple(shortcut_input.shape[2:]) != (h, w):
        raise ValueError(f"conv3x3_fused: shortcut_input must be {n} x Cs x {h} x {w}, "
                         f"got {tuple(shortcut_input.shape)}")
    cs = shortcut_input.shape[1]
    if shortcut_weight.numel() != cout * cs or shortcut_weight.shape[0] != cout:
        raise ValueError(f"conv3x3_fused: shortcut_weight must be {cout} x {cs} (or "
                         f"{cout} x {cs} x 1 x 1), got {tuple(shortcut_weight.shape)}")


def check_args(x, weight, bias, residual, shortcut_input, shortcut_weight) -> None:
    """Raise ``ValueError`` / ``TypeError`` with a message for arguments the op rejects."""
    _check_x_weight_bias(x, weight, bias)
    _check_shortcut(x, weight, residual, shortcut_input, shortcut_weight)
    for name, t in (("weight", weight), ("bias", bias), ("residual", residual),
                    ("shortcut_input", shortcut_input), ("shortcut_weight", shortcut_weight)):
        if t is not None and t.device != x.device:
            raise ValueError(f"conv3x3_fused: {name} is on {t.device}, x on {x.device}")


def conv3x3_fused(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *,
                  residual: Optional[torch.Tensor] = None,
                  shortcut_input: Optional[torch.Tensor] = None,
                  shortcut_weight: Optional[torch.Tensor] = None,
                  relu: bool = True, backend: str = "auto") -> torch.Tensor:
    """``relu?(conv3x3(x, weight, padding=1) + bias + shortcut)`` in one fused op.

    Args:
        x: ``N x Cin x H x W`` (contiguous or channels_last, the fast layout), fp32/fp16/bf16.
        weight: ``Cout x Cin x 3 x 3`` (BatchNorm already folded in); cast to ``x.dtype``.
        bias: ``Cout`` (added in fp32).
        residual: ``N x Cout x H x W`` identity shortcut added before the ReLU; or
        shortcut_input: ``N x Cs x H x W`` with shortcut_weight ``Cout x Cs`` (a 1x1 conv,
            ``Cout x Cs x 1 x 1`` accepted), computed inside the same kernel. Not both.
        relu: apply ReLU last.
        backend: ``"auto"``, ``"torch"``, ``"triton"``, ``"cuda"`` or ``"cpp"``
            (:mod:`raunet_fast.ops.conv3x3`). An explicitly named backend that cannot run
            raises :class:`~raunet_fast.ops.BackendUnavailable`.

    Returns ``N x Cout x H x W`` in ``x.dtype``, accumulated in fp32; channels_last iff ``x`` is.
    """
    check_backend_name(backend)
    check_args(x, weight, bias, residual, shortcut_input, shortcut_weight)
    if shortcut_weight is not None:
        shortcut_weight = shortcut_weight.reshape(weight.shape[0], shortcut_input.shape[1])
    return conv3x3_call(x, weight, bias, residual, shortcut_input, shortcut_weight, None, relu,
                        backend)
