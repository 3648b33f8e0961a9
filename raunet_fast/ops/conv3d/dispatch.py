"""The backends of ``conv3d_fused`` and the order ``"auto"`` tries them in.

NaN: oneDNN's ReLU post-op is a max with 0 that turns NaN into 0 (measured on torch 2.13),
so the ``cpp`` path fuses only bias and residual into oneDNN and applies ``relu_`` in
torch, which keeps NaN. cuDNN's fused ReLU is built with ``CUDNN_NOT_PROPAGATE_NAN``
(the documented exception of the ``cuda`` conv3x3 path applies here too).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._backend import BackendUnavailable, first_that_runs

__all__ = ["resolve", "run_backend", "conv3d_fused_impl", "torch_impl", "onednn_impl",
           "cudnn_impl", "as_cl3", "ONEDNN"]

CL3 = torch.channels_last_3d

#: ``ONEDNN["enabled"] = False`` sends ``"cpp"`` to the plain path (tests compare both)
ONEDNN = {"enabled": True}


def _same(k: int) -> list[int]:
    return [k // 2] * 3


def as_cl3(t: torch.Tensor) -> torch.Tensor:
    """``t`` as dense channels_last_3d with the canonical strides on size-1 dimensions too.

    oneDNN reads the layout from the strides: a channels_last_3d input of batch 1 whose
    batch stride is not ``C*D*H*W`` (a view of a 4-D tensor) with a 1x1x1 weight (whose
    strides fit NCDHW and NDHWC alike) made torch 2.13 copy the input to NCDHW and compute
    there. Size-1 strides address nothing, so restriding is free."""
    t = t.contiguous(memory_format=CL3)
    n, c, d, h, w = t.shape
    strides = (c * d * h * w, 1, h * w * c, w * c, c)
    return t if t.stride() == strides else t.as_strided(t.shape, strides)


def torch_impl(x, weight, bias, residual, relu, owned=False):
    """``F.conv3d`` + in-place add and ReLU, channels_last_3d: the reference (any device).
    ``owned``: the residual is the op's own tensor (unused here)."""
    xc = x.contiguous(memory_format=CL3)
    w = weight.to(x.dtype)
    b = bias.to(x.dtype) if bias is not None else None
    y = F.conv3d(xc, w, b, padding=_same(weight.shape[-1])).contiguous(memory_format=CL3)
    if residual is not None:
        y.add_(residual)
    return y.relu_() if relu else y


def _onednn_available() -> bool:
    return (ONEDNN["enabled"] and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled
            and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))


def onednn_impl(x, weight, bias, residual, relu, owned=False):
    """oneDNN conv + bias (+ residual as its binary add post-op) in one call, then ReLU;
    ``owned``: the residual is the op's own tensor (the projection shortcut) and receives
    the result in place (one full-size buffer less)."""
    if x.device.type != "cpu":
        raise BackendUnavailable("conv3d_fused: backend 'cpp' unavailable: it runs CPU "
                                 f"tensors only (got {x.device.type} tensors)")
    if not _onednn_available():
        return torch_impl(x, weight, bias, residual, relu)
    xc, w = as_cl3(x), as_cl3(weight.to(x.dtype))
    b = bias.to(x.dtype) if bias is not None else None
    one, pad = [1, 1, 1], _same(weight.shape[-1])
    op = torch.ops.mkldnn._convolution_pointwise
    try:
        if residual is None:
            y = op(xc, w, b, pad, one, one, 1, "none", [], "")
        elif owned:
            y = torch.ops.mkldnn._convolution_pointwise_.binary(
                as_cl3(residual), xc, w, b, pad, one, one, 1, "add", None, None, [], None)
        else:
            y = op.binary(xc, as_cl3(residual), w, b, pad, one, one, 1,
                          "add", None, None, [], None)
    except RuntimeError:  # refused for these inputs: the plain path, this call only
        return torch_impl(x, weight, bias, residual, relu)
    y = y.contiguous(memory_format=CL3)
    return y.relu_() if relu else y


def cudnn_impl(x, weight, bias, residual, relu, owned=False):
    """cuDNN's fused conv + bias (+ add) + ReLU; ReLU off: the plain path."""
    if x.device.type != "cuda":
        raise BackendUnavailable("conv3d_fused: backend 'cuda' unavailable: it needs CUDA "
                                 f"tensors (got {x.device.type} tensors)")
    if not (relu and torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled):
        return torch_impl(x, weight, bias, residual, relu)
    xc, w = as_cl3(x), as_cl3(weight.to(x.dtype))
    b = bias.to(x.dtype).contiguous() if bias is not None else None
    one, pad = (1, 1, 1), tuple(_same(weight.shape[-1]))
    try:
        if residual is None:
            y = torch.cudnn_convolution_relu(xc, w, b, one, pad, one, 1)
        else:
            y = torch.cudnn_convolution_add_relu(xc, w, residual.to(x.dtype), 1.0, b, one,
                                                 pad, one, 1)
    except RuntimeError:  # this torch / cuDNN refuses the fused 3-D call: the plain path
        return torch_impl(x, weight, bias, residual, relu)
    return y.contiguous(memory_format=CL3)


_BACKENDS = {"torch": torch_impl, "cpp": onednn_impl, "cuda": cudnn_impl}


def resolve(backend: str, device: torch.device) -> list[str]:
    """Backends to try, in order, for ``backend`` on ``device``."""
    if backend != "auto":
        return [backend]
    return {"cuda": ["cuda", "torch"], "cpu": ["cpp", "torch"]}.get(device.type, ["torch"])


def run_backend(name: str, x, weight, bias, residual, shortcut_input, shortcut_weight, relu):
    """Backend ``name``; a projection shortcut runs first on the same backend (a 1x1x1
    conv, no bias: its folded bias is in ``bias``) and becomes the residual."""
    if name == "triton":
        raise BackendUnavailable("conv3d_fused: backend 'triton' unavailable: there is no "
                                 "Triton 3-D convolution (use 'auto', 'cuda', 'cpp' or 'torch')")
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}")
    impl = _BACKENDS[name]
    if shortcut_input is None:
        return impl(x, weight, bias, residual, relu)
    sw = shortcut_weight.reshape(weight.shape[0], -1, 1, 1, 1)
    residual = impl(shortcut_input, sw, None, None, False)
    return impl(x, weight, bias, residual, relu, owned=True)


def conv3d_fused_impl(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      residual: Optional[torch.Tensor], shortcut_input: Optional[torch.Tensor],
                      shortcut_weight: Optional[torch.Tensor], relu: bool,
                      backend: str) -> torch.Tensor:
    """The ``raunet_fast::conv3d_fused`` op's implementation."""
    args = (x, weight, bias, residual, shortcut_input, shortcut_weight, relu)
    return first_that_runs("conv3d_fused", resolve(backend, x.device), run_backend, args)
