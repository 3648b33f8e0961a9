"""Inference modules: a folded PlainBlock / ResidualBlock as two :func:`conv3x3_fused` calls.

BatchNorm is folded into the convolutions once (float64, :mod:`raunet_fast.fold`), and the
weights are cast and packed once, at construction, into buffers (moved by ``.to(device)``):

* ``weight`` ``Cout x Cin x 3 x 3`` (channels_last) and ``shortcut_weight`` ``Cout x Cs`` in
  the compute dtype (cuDNN / oneDNN backends), ``bias`` in fp32,
* ``packed`` ``[9*Cin + Cs, Cout]`` (K-major) in the compute dtype, held when the backend is
  ``"triton"`` (``None`` otherwise: other backends do not read it).

Nothing is re-folded or re-packed per call, and forward is plain tensor code (no caches
mutated), so the modules trace cleanly under ``torch.compile(fullgraph=True)``.

Volumes: the same block classes hold :class:`FusedConv3d` layers (one
:func:`conv3d_fused` call each: oneDNN / cuDNN's fused conv + bias + add (+ ReLU); the
1x1x1 projection shortcut runs inside conv2's call, its output receiving conv2's sum);
:func:`fused_conv` picks the layer class by the folded weight's rank.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..blocks import PlainBlock, ResidualBlock
from ..fold import carry_input_through, fold_plain_block, fold_residual_block
from .conv3d import conv3d_fused
from .conv3d.dispatch import as_cl3
from .conv3x3 import check_args, inputs_ok, pack_weights
from .conv3x3.op import conv3x3_call
from ._backend import check_backend_name

__all__ = ["FusedConv3x3", "FusedConv3d", "fused_conv", "FusedPlainBlock",
           "FusedResidualBlock", "fuse_block"]


def _owned(t: torch.Tensor) -> torch.Tensor:
    """``t``, or an ordinary (non-inference) copy of it; call outside inference mode."""
    return t.clone() if t.is_inference() else t


def _conv_repr(self) -> str:
    """``extra_repr`` of the fused conv layers: channels, shortcut, ReLU, dtype, backend."""
    cs = "" if self.shortcut_weight is None else f", shortcut={self.shortcut_weight.shape[1]}"
    return (f"{self.in_channels}, {self.out_channels}{cs}, relu={self.relu}, "
            f"dtype={self.weight.dtype}, backend={self.backend!r}")


class FusedConv3x3(nn.Module):
    """``relu?(conv3x3(x) + bias + (residual | conv1x1(shortcut_input)))`` with packed weights.

    Args:
        weight: ``Cout x Cin x 3 x 3`` (folded), bias: ``Cout``,
        shortcut_weight: ``Cout x Cs`` 1x1 projection run inside the same kernel, or None.
        relu: apply ReLU last. dtype: compute dtype of the weights (activations must match).
        backend: as for :func:`~raunet_fast.ops.conv3x3_fused`.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor,
                 shortcut_weight: Optional[torch.Tensor] = None, relu: bool = True,
                 dtype: torch.dtype = torch.float16, backend: str = "auto"):
        super().__init__()
        check_backend_name(backend)
        self.relu, self.backend = relu, backend
        self.in_channels, self.out_channels = weight.shape[1], weight.shape[0]
        # channels_last: the layout of the fast path (oneDNN / cuDNN take it as is). Buffers
        # are ordinary tensors even when built under torch.inference_mode: inference tensors
        # keep no version counter, so the ops could not cache what they derive from them
        # (prepacked oneDNN weights, cast biases) and would redo it on every call.
        with torch.inference_mode(False):
            self.register_buffer("weight", _owned(weight.detach().to(dtype).contiguous(
                memory_format=torch.channels_last)))
            self.register_buffer("bias", _owned(bias.detach().to(torch.float32).contiguous()))
            sw = None if shortcut_weight is None else _owned(
                shortcut_weight.detach().reshape(weight.shape[0], -1).to(dtype).contiguous())
        self.register_buffer("shortcut_weight", sw)
        # the Triton layout is held only where Triton is asked for by name: "auto" runs
        # cuDNN / oneDNN on the network's layers (and packs once, cached, if it ever picks
        # Triton), so a second copy of every weight would be dead memory
        self.register_buffer("packed", pack_weights(weight, shortcut_weight, dtype)
                             if backend == "triton" else None)

    extra_repr = _conv_repr

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                shortcut_input: Optional[torch.Tensor] = None) -> torch.Tensor:
        # buffers straight from the dict (nn.Module.__getattr__ costs ~0.6 us a lookup, and
        # eager batch-1 inference on a GPU is host-bound), the full checks only when the
        # fast one fails (for their message): the weights were checked when built
        bufs = self._buffers
        weight, bias, sw = bufs["weight"], bufs["bias"], bufs["shortcut_weight"]
        if (shortcut_input is None) != (sw is None):
            raise ValueError("FusedConv3x3: pass shortcut_input iff the layer has a shortcut_weight")
        if not inputs_ok(x, weight, residual, shortcut_input, sw):
            check_args(x, weight, bias, residual, shortcut_input, sw)
        return conv3x3_call(x, weight, bias, residual, shortcut_input, sw, bufs["packed"],
                            self.relu, self.backend)


class FusedConv3d(nn.Module):
    """``relu?(conv3d(x) + bias + (residual | conv1x1x1(shortcut_input)))`` for volumes:
    :class:`FusedConv3x3`'s interface over :func:`~raunet_fast.ops.conv3d_fused`.

    Weights are held channels_last_3d and the bias in the compute dtype (oneDNN / cuDNN
    take them as is). ``backend="triton"`` runs ``"auto"`` here: there is no Triton 3-D
    convolution (the gates of a 3-D model still run in Triton).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor,
                 shortcut_weight: Optional[torch.Tensor] = None, relu: bool = True,
                 dtype: torch.dtype = torch.float16, backend: str = "auto"):
        super().__init__()
        check_backend_name(backend)
        self.relu, self.backend = relu, "auto" if backend == "triton" else backend
        self.in_channels, self.out_channels = weight.shape[1], weight.shape[0]
        with torch.inference_mode(False):
            self.register_buffer("weight", _owned(as_cl3(weight.detach().to(dtype))))
            self.register_buffer("bias", _owned(bias.detach().to(dtype).contiguous()))
            sw = None if shortcut_weight is None else _owned(as_cl3(
                shortcut_weight.detach().reshape(*shortcut_weight.shape[:2], 1, 1, 1)
                .to(dtype)))
        self.register_buffer("shortcut_weight", sw)

    extra_repr = _conv_repr

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                shortcut_input: Optional[torch.Tensor] = None) -> torch.Tensor:
        sw = self.shortcut_weight
        if (shortcut_input is None) != (sw is None):
            raise ValueError("FusedConv3d: pass shortcut_input iff the layer has a shortcut_weight")
        # the projection's bias is already in self.bias
        return conv3d_fused(x, self.weight, self.bias, residual, shortcut_input=shortcut_input,
                            shortcut_weight=sw, relu=self.relu, backend=self.backend)


def fused_conv(weight: torch.Tensor, bias: torch.Tensor,
               shortcut_weight: Optional[torch.Tensor] = None, relu: bool = True,
               dtype: torch.dtype = torch.float16, backend: str = "auto") -> nn.Module:
    """:class:`FusedConv3x3` for a 2-D (4-D) folded weight, :class:`FusedConv3d` for a
    3-D (5-D) one; same arguments."""
    cls = FusedConv3d if weight.dim() == 5 else FusedConv3x3
    return cls(weight, bias, shortcut_weight, relu, dtype, backend)


class FusedPlainBlock(nn.Module):
    """Folded :class:`~raunet_fast.blocks.PlainBlock`: two launches, each conv + bias + ReLU."""

    def __init__(self, conv1: nn.Module, conv2: nn.Module):
        super().__init__()
        self.conv1, self.conv2 = conv1, conv2

    @classmethod
    def from_block(cls, block: PlainBlock, dtype: torch.dtype = torch.float16,
                   backend: str = "auto") -> "FusedPlainBlock":
        (w1, b1), (w2, b2) = fold_plain_block(block)
        dev = block.conv1.conv.weight.device
        return cls(fused_conv(w1, b1, None, True, dtype, backend),
                   fused_conv(w2, b2, None, True, dtype, backend)).to(dev)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


def carry_candidate(cin: int, cmid: int) -> bool:
    """Whether carrying the input through conv1 (``carry_input``) is worth timing: the
    carried channels (2 Cin, padded to 8) add at most a quarter to conv2's width, i.e.
    RA-U-Net's first block (3 or 4 -> 64). Off by default: on 2 CPU cores (cpp, fp32,
    1 x 3 x 256 x 256 -> 64) it was no faster than projection + epilogue (conv2's extra K
    costs what the skipped 1x1 conv saves); on a GPU, where level 1 is memory-bound, it is
    benchmarked (bench/bench_conv.py, ``fused-<be>-carry``) but not yet measured."""
    return 4 * (-(-2 * cin // 8) * 8) <= cmid


class FusedResidualBlock(nn.Module):
    """Folded :class:`~raunet_fast.blocks.ResidualBlock`: two launches.

    conv1: conv3x3 + bias + ReLU. conv2: conv3x3 whose K loop also runs the 1x1 projection
    shortcut on the block input (or adds the identity residual), + summed bias, + ReLU.
    With ``carry_input`` (a projection block whose input is narrow) conv1 also passes the
    input on as ``relu(x), relu(-x)`` channels and conv2's weights apply the projection to
    them (:func:`~raunet_fast.fold.carry_input_through`): two plain conv + bias + ReLU
    layers, no separate shortcut.
    """

    def __init__(self, conv1: nn.Module, conv2: nn.Module, carry_input: bool = False):
        super().__init__()
        self.conv1, self.conv2 = conv1, conv2
        self.carry_input = carry_input
        self.identity = conv2.shortcut_weight is None and not carry_input

    @classmethod
    def from_block(cls, block: ResidualBlock, dtype: torch.dtype = torch.float16,
                   backend: str = "auto", carry_input: bool = False
                   ) -> "FusedResidualBlock":
        """``carry_input=True`` (projection blocks only): see the class doc and
        :func:`carry_candidate`."""
        w1, b1, w2, b2, ws = fold_residual_block(block)
        dev = block.conv1.conv.weight.device
        if carry_input:
            if w1.dim() != 4:
                raise ValueError("carry_input exists for 2-D blocks only")
            if ws is None:
                raise ValueError("carry_input needs a block with a 1x1 projection shortcut")
            w1, b1, w2 = carry_input_through(w1, b1, w2, ws)
            return cls(FusedConv3x3(w1, b1, None, True, dtype, backend),
                       FusedConv3x3(w2, b2, None, True, dtype, backend), True).to(dev)
        return cls(fused_conv(w1, b1, None, True, dtype, backend),
                   fused_conv(w2, b2, ws, True, dtype, backend)).to(dev)

    def extra_repr(self) -> str:
        return "carry_input=True" if self.carry_input else ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        if self.carry_input:
            return self.conv2(h)
        if self.identity:
            return self.conv2(h, residual=x)
        return self.conv2(h, shortcut_input=x)


def fuse_block(block: nn.Module, dtype: torch.dtype = torch.float16,
               backend: str = "auto", carry_input: bool = False) -> nn.Module:
    """:class:`FusedResidualBlock` or :class:`FusedPlainBlock` for an eval-mode block.
    ``carry_input``: carry the input through conv1 in projection blocks where
    :func:`carry_candidate` holds (the narrow first block; 2-D blocks only, ignored for
    3-D ones)."""
    if isinstance(block, ResidualBlock):
        carry = (carry_input and block.conv1.conv.weight.dim() == 4
                 and not isinstance(block.shortcut, nn.Identity)
                 and carry_candidate(block.conv1.conv.in_channels, block.conv1.conv.out_channels))
        return FusedResidualBlock.from_block(block, dtype, backend, carry_input=carry)
    if isinstance(block, PlainBlock):
        return FusedPlainBlock.from_block(block, dtype, backend)
    raise TypeError(f"fuse_block: expected PlainBlock or ResidualBlock, got {type(block).__name__}")
