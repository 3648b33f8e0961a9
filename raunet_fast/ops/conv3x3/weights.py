"""Weights derived once per weight tensor: the Triton packing, casts / layouts, cuDNN's
zero-padded narrow inputs; cached while the source tensor lives unmodified."""
from __future__ import annotations

import weakref
from typing import Callable, Optional

import torch

__all__ = ["pack_weights", "packed_for", "cached", "weight_as", "pad_channels",
           "padded_channels", "CUDNN_CHANNEL_MULTIPLE"]

#: The channel multiple cuDNN's tensor-core convolutions are built for (16 bytes of fp16 /
#: bf16): a narrow input (RGB: 3, MRI: 4, grayscale: 1) is otherwise left to slower kernels.
CUDNN_CHANNEL_MULTIPLE = 8

_CACHE: dict[tuple, tuple] = {}


def pack_weights(weight: torch.Tensor, shortcut_weight: Optional[torch.Tensor],
                 dtype: torch.dtype) -> torch.Tensor:
    """Triton layout ``[9*Cin + Cs, Cout]`` (K-major); pure torch, importable without triton."""
    cout, cin = weight.shape[:2]
    w = weight.detach().to(dtype).permute(2, 3, 1, 0).reshape(9 * cin, cout)
    if shortcut_weight is not None:
        w = torch.cat([w, shortcut_weight.detach().reshape(cout, -1).to(dtype).t()], dim=0)
    return w.contiguous()


def cached(kind: str, make: Callable[[], torch.Tensor], a: torch.Tensor,
           b: Optional[torch.Tensor], *key) -> torch.Tensor:
    """``make()`` for these exact tensors ``a`` (and ``b``), cached while they live unmodified
    (weak references + version counters; inference-mode tensors have none and are not
    cached)."""
    if a.is_inference() or (b is not None and b.is_inference()):
        # no version counter: an in-place update could not be seen, derive afresh
        return make()
    full = (kind, id(a), id(b), *key)
    ver = (a._version, None if b is None else b._version)
    hit = _CACHE.get(full)
    if hit is not None:
        aref, bref, hver, value = hit
        if aref() is a and hver == ver and (bref() if bref is not None else None) is b:
            return value
    value = make()
    if len(_CACHE) >= 256:
        _CACHE.clear()

    def drop(_, k=full):  # a key tensor died: free its derived copy now
        _CACHE.pop(k, None)

    _CACHE[full] = (weakref.ref(a, drop), None if b is None else weakref.ref(b, drop), ver,
                    value)
    return value


def packed_for(weight: torch.Tensor, shortcut_weight: Optional[torch.Tensor],
               dtype: torch.dtype) -> torch.Tensor:
    """:func:`pack_weights` of these exact tensors, cached while they live unmodified:
    callers passing plain weights every call (the public op) pack once. Inference modules
    hold their packed weights instead."""
    return cached("pack", lambda: pack_weights(weight, shortcut_weight, dtype), weight,
                  shortcut_weight, dtype)


def weight_as(weight: torch.Tensor, dtype: torch.dtype,
              fmt: torch.memory_format) -> torch.Tensor:
    """``weight`` in ``dtype`` and layout ``fmt`` (cached unless it already is)."""
    if weight.dtype == dtype and weight.is_contiguous(memory_format=fmt):
        return weight
    return cached("as", lambda: weight.detach().to(dtype).contiguous(memory_format=fmt),
                  weight, None, dtype, fmt)


def padded_channels(c: int) -> int:
    m = CUDNN_CHANNEL_MULTIPLE
    return -(-c // m) * m


def pad_channels(x: torch.Tensor, weight: torch.Tensor, fmt: torch.memory_format,
                 key: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (``N x C x H x W``) and ``weight`` (``Cout x C x kh x kw``) with zero channels
    appended up to a multiple of :data:`CUDNN_CHANNEL_MULTIPLE`, in layout ``fmt``: the
    same convolution exactly (the added products are zeros). The padded weight is cached
    per ``key`` tensor (the caller's weight, ``weight`` itself by default: a view made per
    call would miss); ``x`` is copied once per call (a narrow tensor)."""
    n, c, h, w = x.shape
    cp = padded_channels(c)
    if cp == c:
        return x, weight

    def make():
        wp = weight.new_zeros((weight.shape[0], cp, *weight.shape[2:]), dtype=x.dtype)
        wp[:, :c] = weight.detach()
        return wp.contiguous(memory_format=fmt)
    xp = torch.empty((n, cp, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
    xp[:, :c].copy_(x)
    xp[:, c:].zero_()
    return xp, cached("pad", make, weight if key is None else key, None, x.dtype, fmt, cp)
