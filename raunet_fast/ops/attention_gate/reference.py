"""The ``"torch"`` backend of the attention gate: the reference math in PyTorch."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["attention_gate_reference", "empty_alpha", "empty_concat", "torch_impl"]


def attention_gate_reference(x, g, w_x, w_g, bias, w_psi, b_psi, *,
                             compute_dtype: torch.dtype = torch.float32):
    """The gate in plain PyTorch, computed in ``compute_dtype``; returns (out, alpha)
    in ``compute_dtype``. Used by the ``"torch"`` backend (fp32) and by tests (fp64)."""
    cd = compute_dtype
    xf, gf = x.to(cd), g.to(cd)
    f = w_x.shape[0]
    acc = (F.conv2d(xf, w_x.to(cd).reshape(f, -1, 1, 1))
           + F.conv2d(gf, w_g.to(cd).reshape(f, -1, 1, 1))
           + bias.to(cd).reshape(1, f, 1, 1))
    s = F.conv2d(torch.relu(acc), w_psi.to(cd).reshape(1, f, 1, 1), b_psi.to(cd).reshape(1))
    alpha = torch.sigmoid(s)
    return xf * alpha, alpha


def empty_alpha(x: torch.Tensor, return_alpha: bool) -> torch.Tensor:
    return x.new_empty((x.shape[0], 1, *x.shape[2:]) if return_alpha else (0,))


def empty_concat(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The concatenated output ``[gated x, g]``: N x (Cx + Cg) x H x W, channels_last
    (N x (Cx + Cg) x D x H x W, channels_last_3d, for volumes)."""
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return torch.empty((x.shape[0], x.shape[1] + g.shape[1], *x.shape[2:]), dtype=x.dtype,
                       device=x.device, memory_format=fmt)


def torch_impl(x, g, w_x, w_g, bias, w_psi, b_psi, return_alpha, concat=False):
    """The ``"torch"`` backend: (out, alpha) in x's dtype and layout (``concat``: the
    concatenated output, channels_last)."""
    out32, alpha32 = attention_gate_reference(x, g, w_x, w_g, bias, w_psi, b_psi)
    if concat:
        out = empty_concat(x, g)
        out[:, :x.shape[1]].copy_(out32)
        out[:, x.shape[1]:].copy_(g)
        return out, empty_alpha(x, False)
    out = torch.empty_like(x)
    out.copy_(out32)
    alpha = empty_alpha(x, return_alpha)
    if return_alpha:
        alpha.copy_(alpha32)
    return out, alpha
