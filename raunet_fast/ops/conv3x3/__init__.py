"""``conv3x3_fused``: 3x3 conv (stride 1, padding 1) + bias + (identity residual | 1x1 shortcut)
+ ReLU, as one op with several backends.

    y = relu?(conv3x3(x, weight) + bias + residual)                          # identity shortcut
    y = relu?(conv3x3(x, weight) + bias + conv1x1(shortcut_input, shortcut_weight))  # projection

Backends (``backend=``):

* ``"torch"``  - reference math (``F.conv2d`` + add + ReLU), any device (:mod:`.reference`).
* ``"triton"`` - implicit-GEMM kernels (:mod:`.triton`) with the shortcut GEMM in the same
  K loop and the epilogue in registers: a flat-K one for narrow inputs, a TMA + wgmma one on
  sm_90 for fp16 / bf16 TMA-aligned channels-last layers, a pointer-based one for the rest;
  CUDA, or CPU under ``TRITON_INTERPRET=1`` (tests).
* ``"cuda"``   - with ReLU on: cuDNN's runtime-fused conv + bias (+ add) + ReLU (the 1x1
  projection as one cuDNN conv feeding the add). With ReLU off (or
  ``RAUNET_CONV_CUDNN_FUSION=0``): cuDNN convolution + one fused vectorised epilogue kernel
  (``csrc/conv_epilogue*``), built with ninja at first use. The fused ReLU is the one that
  need not keep NaN (torch builds it with ``CUDNN_NOT_PROPAGATE_NAN``); every other path
  follows IEEE semantics like the reference.
* ``"cpp"``    - a oneDNN convolution (fp32: weights prepacked once; else at::conv2d), then
  the same csrc epilogue math built for the CPU (bias + shortcut + ReLU in one pass; not
  oneDNN post-ops, whose ReLU turns NaN into 0).
* ``"auto"``   - on CUDA the cuDNN fusion when ReLU is on, or where a Triton kernel contends
  the faster of the two by a one-time timing per layer shape (:mod:`.dispatch`), else
  ``"triton"`` (``"cuda"``, then ``"torch"`` if Triton is missing); ``"cpp"`` on CPU
  (``"torch"`` if it cannot be built; a warning says why).

Registered as the opaque ``torch.ops.raunet_fast.conv3x3_fused`` custom op with a fake
(meta) implementation, so ``torch.compile(fullgraph=True)`` traces it without a break.
Output: ``x``'s dtype, channels_last iff ``x`` is channels_last (and not also contiguous).

Weights passed to the public op are packed / cast once per weight tensor (a weak-reference
cache that follows in-place updates, :mod:`.weights`); :mod:`raunet_fast.ops.fused_blocks`
holds them packed. On CUDA the Triton backend times its configs once per layer shape on
first use (``RAUNET_FAST_AUTOTUNE=0``: the default config only); fp32 follows
``torch.backends.cudnn.allow_tf32`` (TF32 products when on, exact fp32 when off).

Layout: :mod:`.op` (public op, custom op, checks), :mod:`.dispatch` (backend choice),
:mod:`.reference`, :mod:`.backends`, :mod:`.weights`, :mod:`.layout`, :mod:`.triton`.
"""
from __future__ import annotations

from .dispatch import conv3x3_fused_impl, describe_picks, resolve_backend
from .op import check_args, conv3x3_fused, conv3x3_fused_op, inputs_ok
from .reference import conv3x3_reference
from .weights import pack_weights, packed_for, pad_channels

__all__ = ["conv3x3_fused", "resolve_backend", "pack_weights", "packed_for", "pad_channels",
           "conv3x3_reference", "check_args", "inputs_ok", "describe_picks",
           "conv3x3_fused_impl", "conv3x3_fused_op"]
