"""The public attention-gate ops: argument checks, the registered
``torch.ops.raunet_fast.attention_gate`` / ``attention_gate_concat`` custom ops with their
fakes, and the eager shortcut. Per pixel, with folded BatchNorms::

    a     = relu(w_x @ x + w_g @ g + bias)          # F values, fp32 accumulation
    alpha = sigmoid(w_psi . a + b_psi)               # one value
    out   = x * alpha                                # Cx values, in x's dtype

Volumes (``N x C x D x H x W``, channels_last_3d the fast layout) run the same kernels
over the D*H*W voxels.
"""
from __future__ import annotations

import torch

from .._backend import check_backend_name, eager_direct, run_direct
from .dispatch import attention_gate_concat_impl, attention_gate_impl
from .reference import empty_alpha, empty_concat

__all__ = ["attention_gate", "attention_gate_concat", "check_args"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: The opaque ``torch.ops.raunet_fast.attention_gate`` custom op.
attention_gate_op = torch.library.custom_op("raunet_fast::attention_gate", attention_gate_impl,
                                            mutates_args=())


@attention_gate_op.register_fake
def _(x, g, w_x, w_g, bias, w_psi, b_psi, return_alpha, backend):
    return torch.empty_like(x), empty_alpha(x, return_alpha)


#: The opaque ``torch.ops.raunet_fast.attention_gate_concat`` custom op.
attention_gate_concat_op = torch.library.custom_op(
    "raunet_fast::attention_gate_concat", attention_gate_concat_impl, mutates_args=())


@attention_gate_concat_op.register_fake
def _(x, g, w_x, w_g, bias, w_psi, b_psi, backend):
    return empty_concat(x, g)


def check_args(x, g, w_x, w_g, bias, w_psi, b_psi) -> None:
    if x.dim() not in (4, 5) or g.dim() != x.dim():
        raise ValueError(f"x and g must both be N x C x H x W (images) or N x C x D x H x W "
                         f"(volumes), got {tuple(x.shape)} and {tuple(g.shape)}")
    n, cx = x.shape[:2]
    if g.shape[0] != n or g.shape[2:] != x.shape[2:]:
        size = " x ".join(map(str, x.shape[2:]))
        raise ValueError(f"g must have x's batch and spatial size {n} x * x {size}, "
                         f"got {tuple(g.shape)} (resample g to the skip's resolution first)")
    cg = g.shape[1]
    if x.dtype not in _DTYPES or g.dtype != x.dtype:
        raise ValueError(f"x and g must share one dtype among {_DTYPES}, got {x.dtype} and {g.dtype}")
    if w_x.dim() != 2 or w_x.shape[1] != cx:
        raise ValueError(f"w_x must be F x Cx = F x {cx}, got {tuple(w_x.shape)}")
    f = w_x.shape[0]
    if tuple(w_g.shape) != (f, cg):
        raise ValueError(f"w_g must be F x Cg = {f} x {cg}, got {tuple(w_g.shape)}")
    if tuple(bias.shape) != (f,) or tuple(w_psi.shape) != (f,):
        raise ValueError(f"bias and w_psi must have shape ({f},), got {tuple(bias.shape)} "
                         f"and {tuple(w_psi.shape)}")
    if b_psi.numel() != 1:
        raise ValueError(f"b_psi must have one element (shape (1,)), got {tuple(b_psi.shape)}")
    for name, t in (("g", g), ("w_x", w_x), ("w_g", w_g), ("bias", bias), ("w_psi", w_psi),
                    ("b_psi", b_psi)):
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, x on {x.device}: put all on one device")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a float tensor, got {t.dtype}")


def attention_gate_concat(x: torch.Tensor, g: torch.Tensor, w_x: torch.Tensor,
                          w_g: torch.Tensor, bias: torch.Tensor, w_psi: torch.Tensor,
                          b_psi: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """``torch.cat([attention_gate(x, g, ...), g], dim=1)`` in one pass: the decoder's
    gate and concatenation. The gate reads g anyway, so writing it beside the gated x
    costs one write instead of the cat's reread of both halves (``triton`` and ``cpp`` do
    that in the kernel; ``cuda`` gates, then concatenates; ``torch`` is the reference).
    Arguments as for :func:`attention_gate`; returns ``N x (Cx + Cg) x H x W`` in x's
    dtype, channels_last."""
    check_backend_name(backend)
    check_args(x, g, w_x, w_g, bias, w_psi, b_psi)
    args = (x, g, w_x, w_g, bias, w_psi, b_psi.reshape(1), backend)
    if eager_direct(*args[:7]):
        return run_direct("attention_gate_concat", attention_gate_concat_impl, args)
    return attention_gate_concat_op(*args)


def attention_gate(x: torch.Tensor, g: torch.Tensor, w_x: torch.Tensor, w_g: torch.Tensor,
                   bias: torch.Tensor, w_psi: torch.Tensor, b_psi: torch.Tensor, *,
                   return_alpha: bool = False, backend: str = "auto"):
    """Fused additive attention gate: ``x * sigmoid(w_psi . relu(w_x x + w_g g + bias) + b_psi)``.

    Args:
        x: skip features, ``N x Cx x H x W`` (channels_last is the fast layout; contiguous
            NCHW works too). float32, float16 or bfloat16.
        g: gating features, ``N x Cg x H x W``, same dtype and device as ``x``.
        w_x: ``F x Cx``; w_g: ``F x Cg``; bias: ``(F,)``; w_psi: ``(F,)``; b_psi: ``(1,)``
            (from :func:`fold_attention_gate` / :func:`cast_gate_params`). Any float dtype;
            GEMM weights are used in x's dtype; bias / w_psi / b_psi are read as float32 by
            triton and torch, in x's dtype by cuda / cpp. Accumulation is float32.
        return_alpha: also return the attention map ``alpha`` (``N x 1 x H x W``).
        Volumes: ``x`` and ``g`` may be ``N x C x D x H x W`` (channels_last_3d or
        contiguous); ``out`` and ``alpha`` then have the volume's shape.
        backend: ``"auto"``, ``"torch"``, ``"triton"``, ``"cuda"`` or ``"cpp"``.

    Returns:
        ``out`` (``N x Cx x H x W``, x's dtype and memory format), or ``(out, alpha)``.

    Raises:
        BackendUnavailable: a forced backend cannot run here (the message says why).
        ValueError: shapes, dtypes or devices do not fit together.
    """
    check_backend_name(backend)
    check_args(x, g, w_x, w_g, bias, w_psi, b_psi)
    args = (x, g, w_x, w_g, bias, w_psi, b_psi.reshape(1), return_alpha, backend)
    # plain eager inference skips the custom op's dispatch cost (same implementation)
    if eager_direct(*args[:7]):
        out, alpha = run_direct("attention_gate", attention_gate_impl, args)
    else:
        out, alpha = attention_gate_op(*args)
    return (out, alpha) if return_alpha else out
