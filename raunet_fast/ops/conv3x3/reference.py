"""The ``"torch"`` backend of ``conv3x3_fused``: the reference math, any device."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout import out_memory_format
from .weights import weight_as

__all__ = ["conv3x3_reference"]


def conv3x3_reference(x, weight, bias, residual, shortcut_input, shortcut_weight, relu):
    """``relu?(conv2d(x, weight, padding=1) + bias + shortcut)`` with ``F.conv2d``, in x's
    dtype (fp16 on CPU computed in fp32: CPU has no fp16 convolution everywhere)."""
    cdt = torch.float32 if (x.device.type == "cpu" and x.dtype == torch.float16) else x.dtype
    w = weight_as(weight, cdt, out_memory_format(x))
    y = F.conv2d(x.to(cdt), w, bias.to(cdt), padding=1)
    if residual is not None:
        y = y + residual.to(cdt)
    elif shortcut_input is not None:
        cout, cs = weight.shape[0], shortcut_input.shape[1]
        y = y + F.conv2d(shortcut_input.to(cdt), shortcut_weight.to(cdt).reshape(cout, cs, 1, 1))
    if relu:
        y = torch.relu(y)
    return y.to(x.dtype)
