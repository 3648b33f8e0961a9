"""Gate parameters: folding an eval-mode gate exactly, casting once, traffic count."""
from __future__ import annotations

import math

import torch

__all__ = ["fold_attention_gate", "cast_gate_params", "gate_bytes"]


def fold_attention_gate(gate) -> dict[str, torch.Tensor]:
    """Fold an eval-mode :class:`~raunet_fast.blocks.AttentionGate` (BatchNorm) exactly.

    Returns float64 tensors on the gate's device: ``w_x`` (F x Cx), ``w_g`` (F x Cg),
    ``bias`` (F,) = folded bias of W_x + folded bias of W_g (both land in one accumulator),
    ``w_psi`` (F,), ``b_psi`` (1,). Raises ``ValueError`` for training mode or norms other
    than BatchNorm (see :func:`raunet_fast.fold.fold_conv_bn`).
    """
    from ...fold import fold_conv_norm_act

    wx, bx = fold_conv_norm_act(gate.w_x)
    wg, bg = fold_conv_norm_act(gate.w_g)
    wp, bp = fold_conv_norm_act(gate.psi)
    return {"w_x": wx.flatten(1), "w_g": wg.flatten(1), "bias": bx + bg,
            "w_psi": wp.flatten(), "b_psi": bp.reshape(1)}


def cast_gate_params(params: dict[str, torch.Tensor], dtype: torch.dtype,
                     device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Cast folded gate parameters once (contiguous, no grad) for :func:`attention_gate`."""
    return {k: v.detach().to(device=device if device is not None else v.device,
                             dtype=dtype).contiguous() for k, v in params.items()}


def gate_bytes(x: torch.Tensor, g: torch.Tensor, return_alpha: bool = False) -> int:
    """Minimum memory traffic of one gate call: x and g read once, out (and alpha) written once."""
    positions = math.prod((x.shape[0], *x.shape[2:]))  # N * H * W (N * D * H * W for volumes)
    return (2 * x.numel() + g.numel()) * x.element_size() + \
        (positions * x.element_size() if return_alpha else 0)
