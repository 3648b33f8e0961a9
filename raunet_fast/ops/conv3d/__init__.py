"""``conv3d_fused``: a 3-D convolution (odd cubic kernel, stride 1, same padding) with its
bias, an optional residual added and an optional ReLU, for volumes in channels_last_3d.

    y = relu?(conv3d(x, W) + b + residual)

Vendor convolutions only (no kernel of its own): ``"cpp"`` runs oneDNN's fused
convolution + bias + add (``torch.ops.mkldnn._convolution_pointwise``) on CPU tensors,
``"cuda"`` cuDNN's fused conv + bias + add + ReLU (``torch.cudnn_convolution_add_relu``)
on CUDA tensors, ``"torch"`` is ``F.conv3d`` + in-place add and ReLU (the reference, and
the fallback of both when torch refuses the fused call). ``"auto"``: cuda then torch on
CUDA tensors, cpp then torch on CPU tensors. There is no Triton 3-D convolution:
``"triton"`` raises :class:`~raunet_fast.ops.BackendUnavailable`.

Layout: :mod:`.op` (public op, checks, the custom op and its fake), :mod:`.dispatch`
(backends).
"""
from __future__ import annotations

from .op import check_args, conv3d_fused

__all__ = ["conv3d_fused", "check_args"]
