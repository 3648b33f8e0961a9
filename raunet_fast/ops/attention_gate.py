"""Fused additive attention gate: folding, the public op and its backends.

Math (DESIGN.md section 2), per pixel, with folded BatchNorms::

    a     = relu(w_x @ x + w_g @ g + bias)          # F values, fp32 accumulation
    alpha = sigmoid(w_psi . a + b_psi)               # one value
    out   = x * alpha                                # Cx values, in x's dtype

Bottom to top: :func:`fold_attention_gate` turns an eval-mode
:class:`~raunet_fast.blocks.AttentionGate` into these parameters (float64, exact);
:func:`cast_gate_params` casts them once for a dtype/device; :func:`attention_gate` is the
public op. It is registered with ``torch.library`` as ``raunet_fast::attention_gate``, an
opaque custom op whose body dispatches on the tensors' device and the chosen backend, so
``torch.compile(fullgraph=True)`` sees it whole on CPU and on CUDA.

Backends: ``"torch"`` (reference math, any device), ``"triton"``
(:mod:`raunet_fast.kernels.attention_gate`), ``"cuda"`` (``csrc/attention_gate.cu``),
``"cpp"`` (``csrc/attention_gate_cpu.cpp``: the same per-pixel header built for the CPU),
``"auto"``: triton then cuda then torch on CUDA tensors; cpp then torch on CPU tensors.
A backend that cannot run (not installed, build failed) raises
:class:`~raunet_fast.ops.BackendUnavailable` when forced; ``"auto"`` warns and moves on.

Knobs (environment): ``RAUNET_GATE_TRITON_CONFIG=<i>`` pins Triton config ``i`` of
:data:`raunet_fast.kernels.attention_gate.CONFIGS` (default: autotune);
``RAUNET_GATE_CUDA_TENSOR_CORES=0`` runs the cuda backend's CUDA-core kernel for half /
bf16 (default: WMMA on sm_80+); ``RAUNET_GATE_CPU_ISA=generic|avx2|avx512`` picks the
cpp micro kernel (default: the best the CPU has); ``MAX_JOBS`` / ``TORCH_EXTENSIONS_DIR``
steer the csrc builds (torch's own variables).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ._backend import (BackendUnavailable, check_backend_name, eager_direct, load_extension,
                       run_direct,
                       triton_unavailable_reason, warn_fallback)

__all__ = ["attention_gate", "attention_gate_concat", "fold_attention_gate",
           "cast_gate_params", "gate_bytes", "attention_gate_reference"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: The ``"cuda"`` backend runs half / bfloat16 GEMMs on tensor cores (WMMA, sm_80+); set
#: ``RAUNET_GATE_CUDA_TENSOR_CORES=0`` (or this flag to False) for the CUDA-core kernel.
CUDA_TENSOR_CORES: bool = os.environ.get("RAUNET_GATE_CUDA_TENSOR_CORES", "1") != "0"


# ------------------------------------------------------------------------------ folding
def fold_attention_gate(gate) -> dict[str, torch.Tensor]:
    """Fold an eval-mode :class:`~raunet_fast.blocks.AttentionGate` (BatchNorm) exactly.

    Returns float64 tensors on the gate's device: ``w_x`` (F x Cx), ``w_g`` (F x Cg),
    ``bias`` (F,) = folded bias of W_x + folded bias of W_g (both land in one accumulator),
    ``w_psi`` (F,), ``b_psi`` (1,). Raises ``ValueError`` for training mode or norms other
    than BatchNorm (see :func:`raunet_fast.fold.fold_conv_bn`).
    """
    from ..fold import fold_conv_norm_act

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
    n, _, h, w = x.shape
    return (2 * x.numel() + g.numel()) * x.element_size() + \
        (n * h * w * x.element_size() if return_alpha else 0)


# ------------------------------------------------------------------------ reference math
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


# ----------------------------------------------------------------------------- backends
def _empty_alpha(x: torch.Tensor, return_alpha: bool) -> torch.Tensor:
    n, _, h, w = x.shape
    return x.new_empty((n, 1, h, w) if return_alpha else (0,))


def _empty_concat(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The concatenated output ``[gated x, g]``: N x (Cx + Cg) x H x W, channels_last."""
    n, cx, h, w = x.shape
    return torch.empty((n, cx + g.shape[1], h, w), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


def _torch_impl(x, g, w_x, w_g, bias, w_psi, b_psi, return_alpha, concat=False):
    out32, alpha32 = attention_gate_reference(x, g, w_x, w_g, bias, w_psi, b_psi)
    if concat:
        out = _empty_concat(x, g)
        out[:, :x.shape[1]].copy_(out32)
        out[:, x.shape[1]:].copy_(g)
        return out, _empty_alpha(x, False)
    out = torch.empty_like(x)
    out.copy_(out32)
    alpha = _empty_alpha(x, return_alpha)
    if return_alpha:
        alpha.copy_(alpha32)
    return out, alpha


def _triton_impl(x, g, w_x, w_g, bias, w_psi, b_psi, return_alpha, concat=False):
    from raunet_fast.kernels.attention_gate import attention_gate_forward

    out = _empty_concat(x, g) if concat else torch.empty_like(x)
    alpha = _empty_alpha(x, return_alpha)
    attention_gate_forward(x, g, w_x, w_g, bias, w_psi, b_psi, out,
                           alpha if return_alpha else None, concat=concat)
    return out, alpha


_EXT = {"cuda": ("raunet_fast_attention_gate_cuda",
                 ["attention_gate_cuda.cpp", "attention_gate.cu"], True),
        "cpp": ("raunet_fast_attention_gate_cpu", ["attention_gate_cpu.cpp"], False)}


def _extension(kind: str):
    name, sources, cuda = _EXT[kind]
    return load_extension(name, sources, cuda=cuda)


def _csrc_impl(kind, x, g, w_x, w_g, bias, w_psi, b_psi, return_alpha, concat=False):
    """csrc kernels take dense NHWC (channels_last) x and g, every parameter contiguous in
    x's dtype (no-ops for parameters from :func:`cast_gate_params`): one launch per call.
    ``concat``: the cpp kernel writes ``[gated x, g]`` itself; the cuda kernel (not the GPU
    default) gates, then concatenates."""
    ext = _extension(kind)
    cl = torch.channels_last
    xc = x.contiguous(memory_format=cl)
    gc = g.contiguous(memory_format=cl)
    w_x, w_g, bias, w_psi, b_psi = (t.to(x.dtype).contiguous()
                                    for t in (w_x, w_g, bias, w_psi, b_psi))
    if concat and kind == "cpp":
        out = _empty_concat(x, g)
        ext.attention_gate_forward(xc, gc, w_x, w_g, bias, w_psi, b_psi, out,
                                   _empty_alpha(x, False), False, True)
        return out, _empty_alpha(x, False)
    if concat:
        gated, _ = _csrc_impl(kind, xc, gc, w_x, w_g, bias, w_psi, b_psi, False)
        return torch.cat([gated, gc], dim=1).contiguous(memory_format=cl), _empty_alpha(x, False)
    out = torch.empty_like(x)
    direct = out.is_contiguous(memory_format=cl)
    out_cl = out if direct else torch.empty_like(xc, memory_format=cl)
    alpha = _empty_alpha(x, return_alpha)
    extra = (CUDA_TENSOR_CORES,) if kind == "cuda" else (False,)
    ext.attention_gate_forward(xc, gc, w_x, w_g, bias, w_psi, b_psi, out_cl, alpha, return_alpha,
                               *extra)
    if not direct:
        out.copy_(out_cl)
    return out, alpha


def _cuda_unavailable_reason(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"the cuda backend needs CUDA tensors (got {device.type} tensors)"
    return None


def _resolve(backend: str, device: torch.device) -> list[str]:
    """Backends to try, in order, for ``backend`` on ``device``."""
    if backend != "auto":
        return [backend]
    if device.type == "cuda":
        return ["triton", "cuda", "torch"]
    if device.type == "cpu":
        return ["cpp", "torch"]
    return ["torch"]


def _run_backend(name, x, g, w_x, w_g, bias, w_psi, b_psi, return_alpha, concat=False):
    if name == "torch":
        return _torch_impl(x, g, w_x, w_g, bias, w_psi, b_psi, return_alpha, concat)
    if name == "triton":
        why = triton_unavailable_reason(x.device)
        if why is not None:
            raise BackendUnavailable(f"attention_gate: backend 'triton' unavailable: {why}")
        return _triton_impl(x, g, w_x, w_g, bias, w_psi, b_psi, return_alpha, concat)
    if name == "cuda":
        why = _cuda_unavailable_reason(x.device)
        if why is not None:
            raise BackendUnavailable(f"attention_gate: backend 'cuda' unavailable: {why}")
        return _csrc_impl("cuda", x, g, w_x, w_g, bias, w_psi, b_psi, return_alpha, concat)
    if name == "cpp":
        if x.device.type != "cpu":
            raise BackendUnavailable("attention_gate: backend 'cpp' unavailable: it runs CPU "
                                     f"tensors only (got {x.device.type} tensors)")
        return _csrc_impl("cpp", x, g, w_x, w_g, bias, w_psi, b_psi, return_alpha, concat)
    raise ValueError(f"unknown backend {name!r}")


# ------------------------------------------------------------------- torch.library op
def _attention_gate_impl(x: torch.Tensor, g: torch.Tensor, w_x: torch.Tensor, w_g: torch.Tensor,
                       bias: torch.Tensor, w_psi: torch.Tensor, b_psi: torch.Tensor,
                       return_alpha: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    chain = _resolve(backend, x.device)
    for i, name in enumerate(chain):
        try:
            return _run_backend(name, x, g, w_x, w_g, bias, w_psi, b_psi, return_alpha)
        except BackendUnavailable as e:
            if i + 1 == len(chain):
                raise
            warn_fallback("attention_gate", name, chain[i + 1], str(e))
    raise AssertionError("unreachable")


#: The opaque ``torch.ops.raunet_fast.attention_gate`` custom op.
_attention_gate_op = torch.library.custom_op("raunet_fast::attention_gate", _attention_gate_impl,
                                             mutates_args=())


@_attention_gate_op.register_fake
def _(x, g, w_x, w_g, bias, w_psi, b_psi, return_alpha, backend):
    return torch.empty_like(x), _empty_alpha(x, return_alpha)


def _attention_gate_concat_impl(x: torch.Tensor, g: torch.Tensor, w_x: torch.Tensor,
                                w_g: torch.Tensor, bias: torch.Tensor, w_psi: torch.Tensor,
                                b_psi: torch.Tensor, backend: str) -> torch.Tensor:
    chain = _resolve(backend, x.device)
    for i, name in enumerate(chain):
        try:
            return _run_backend(name, x, g, w_x, w_g, bias, w_psi, b_psi, False, True)[0]
        except BackendUnavailable as e:
            if i + 1 == len(chain):
                raise
            warn_fallback("attention_gate_concat", name, chain[i + 1], str(e))
    raise AssertionError("unreachable")


#: The opaque ``torch.ops.raunet_fast.attention_gate_concat`` custom op.
_attention_gate_concat_op = torch.library.custom_op(
    "raunet_fast::attention_gate_concat", _attention_gate_concat_impl, mutates_args=())


@_attention_gate_concat_op.register_fake
def _(x, g, w_x, w_g, bias, w_psi, b_psi, backend):
    return _empty_concat(x, g)


# ------------------------------------------------------------------------- public op
def _check_gate_args(x, g, w_x, w_g, bias, w_psi, b_psi) -> None:
    if x.dim() != 4 or g.dim() != 4:
        raise ValueError(f"x and g must be N x C x H x W, got {tuple(x.shape)} and {tuple(g.shape)}")
    n, cx, h, w = x.shape
    if g.shape[0] != n or g.shape[2:] != x.shape[2:]:
        raise ValueError(f"g must have x's batch and spatial size {n} x * x {h} x {w}, "
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
    _check_gate_args(x, g, w_x, w_g, bias, w_psi, b_psi)
    args = (x, g, w_x, w_g, bias, w_psi, b_psi.reshape(1), backend)
    if eager_direct(*args[:7]):
        return run_direct("attention_gate_concat", _attention_gate_concat_impl, args)
    return _attention_gate_concat_op(*args)


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
        backend: ``"auto"``, ``"torch"``, ``"triton"``, ``"cuda"`` or ``"cpp"``.

    Returns:
        ``out`` (``N x Cx x H x W``, x's dtype and memory format), or ``(out, alpha)``.

    Raises:
        BackendUnavailable: a forced backend cannot run here (the message says why).
        ValueError: shapes, dtypes or devices do not fit together.
    """
    check_backend_name(backend)
    _check_gate_args(x, g, w_x, w_g, bias, w_psi, b_psi)
    args = (x, g, w_x, w_g, bias, w_psi, b_psi.reshape(1), return_alpha, backend)
    # plain eager inference skips the custom op's dispatch cost (same implementation)
    if eager_direct(*args[:7]):
        out, alpha = run_direct("attention_gate", _attention_gate_impl, args)
    else:
        out, alpha = _attention_gate_op(*args)
    return (out, alpha) if return_alpha else out
