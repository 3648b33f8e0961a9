"""The inference builder: a trained model of the family -> a fused, folded inference model.

This is the small layer that joins models and kernels. :func:`build_inference_model`
takes an eval-mode model (BatchNorm; instance/group norms cannot be folded), folds every
BatchNorm into its conv once (float64 algebra, then cast), packs the weights once, and
returns an ``nn.Module`` whose forward runs

* each plain/residual block as two :func:`raunet_fast.ops.conv3x3_fused` calls
  (bias, ReLU, identity residual or 1x1 projection shortcut fused into the second),
* each attention gate and the concatenation after it as one
  :func:`raunet_fast.ops.attention_gate_concat` call,
* max-pool, up-conv and head as cuDNN/ATen ops,

on channels_last activations in fp32, fp16 or bf16. Output: logits like the reference
model (``N x out_channels x H x W``, in the inference dtype).

A 3-D model (``spatial_dims=3``) gets the same form from the same code: each conv of a
block is one :func:`raunet_fast.ops.conv3d_fused` call (oneDNN / cuDNN fused conv + bias
+ add, ReLU), gates run the same op on ``N x C x D x H x W``, max-pool, up-conv and head
are their 3-D ATen ops, activations channels_last_3d; each axis is padded to the size
multiple and cropped back. The result can itself be
wrapped in ``torch.compile`` (the fused ops are opaque custom ops: no graph breaks).
"""
from __future__ import annotations

import warnings
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import layer
from .models import SegmentationUNet, crop_to, pad_to_multiple
from .ops import attention_gate, attention_gate_concat
from .ops.attention_gate import cast_gate_params, fold_attention_gate
from .ops.fused_blocks import fuse_block


class FusedGate(nn.Module):
    """A folded AttentionGate as one fused launch (parameters cast once)."""

    def __init__(self, gate, dtype: torch.dtype, backend: str):
        super().__init__()
        self.backend = backend
        params = cast_gate_params(fold_attention_gate(gate), dtype)
        for name, t in params.items():
            self.register_buffer(name, t)

    def forward(self, x: torch.Tensor, g: torch.Tensor, return_alpha: bool = False):
        return attention_gate(x, g, self.w_x, self.w_g, self.bias, self.w_psi, self.b_psi,
                              return_alpha=return_alpha, backend=self.backend)

    def concat(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``cat([self(x, g), g], dim=1)`` in one pass (the decoder's next input)."""
        return attention_gate_concat(x, g, self.w_x, self.w_g, self.bias, self.w_psi,
                                     self.b_psi, backend=self.backend)


class InferenceUNet(nn.Module):
    """Folded, fused, channels_last inference form of a :class:`SegmentationUNet`."""

    def __init__(self, model: SegmentationUNet, dtype: torch.dtype = torch.float16,
                 backend: str = "auto", carry_input: bool = False):
        super().__init__()
        if not isinstance(model, SegmentationUNet):
            raise ValueError(f"a {type(model).__name__} has no fused inference form (only the "
                             f"U-Net family does): run it without --fused")
        if model.training:
            raise ValueError("build the inference model from an eval-mode model (call model.eval())")
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"inference dtype must be torch.float32, torch.float16 or "
                             f"torch.bfloat16, got {dtype}")
        if model.norm != "batch":
            raise ValueError(f"only norm='batch' folds into the convolutions; this model uses "
                             f"norm={model.norm!r}: run it as is (optionally under torch.compile)")
        self.config = model.config
        self.in_channels, self.depth = model.in_channels, model.depth
        self.size_multiple = model.size_multiple
        self.spatial_dims = sd = model.spatial_dims
        self.memory_format = torch.channels_last if sd == 2 else torch.channels_last_3d
        self.dtype = dtype
        self.encoder = nn.ModuleList(fuse_block(b, dtype, backend, carry_input)
                                     for b in model.encoder)
        self.ups = nn.ModuleList()
        self.gates = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for level in model.decoder:
            up = layer("up", sd)(level.up.in_channels, level.up.out_channels, 2, stride=2)
            self.ups.append(self._frozen_copy(up, level.up))
            self.gates.append(FusedGate(level.gate, dtype, backend) if level.gate is not None
                              else nn.Identity())
            self.blocks.append(fuse_block(level.block, dtype, backend))
        head = layer("conv", sd)(model.head.in_channels, model.head.out_channels, 1)
        self.head = self._frozen_copy(head, model.head)
        self.attention = model.attention
        self.to(next(model.parameters()).device)

    def _frozen_copy(self, new: nn.Module, old: nn.Module) -> nn.Module:
        """``new`` with ``old``'s weights, in the inference dtype and the activations'
        layout (else the conv converts its weights on every call), without gradients."""
        new.load_state_dict(old.state_dict())
        return new.to(self.dtype, memory_format=self.memory_format).requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the reference model's input checks and messages (shape, channels, integer dtype,
        # empty): an image batch that is wrong for one is wrong for the other
        SegmentationUNet.check_input(self, x)
        size, fmt = tuple(x.shape[2:]), self.memory_format
        x = pad_to_multiple(x.to(self.dtype), self.size_multiple).contiguous(memory_format=fmt)
        pool = F.max_pool2d if self.spatial_dims == 2 else F.max_pool3d
        skips = []
        for i, enc in enumerate(self.encoder):
            x = enc(x if i == 0 else pool(x, 2))
            skips.append(x)
        x = skips[-1]
        for i in range(self.depth - 2, -1, -1):
            up = self.ups[i](x)
            if self.attention:  # gate and concatenation in one pass
                x = self.blocks[i](self.gates[i].concat(skips[i], up))
            else:
                x = self.blocks[i](torch.cat([skips[i], up], dim=1))
        return crop_to(self.head(x), size)


class CUDAGraphRunner(nn.Module):
    """Replays one captured CUDA graph per input shape (the network has ~60 launches: at
    batch 1 it is launch-bound, and a graph removes the launch gaps).

    The first calls of a new shape run eagerly (warm-up: autotuning, cuDNN plans), then the
    forward is captured into a graph with a static input buffer; later calls copy the input
    in, replay, and return a clone of the static output. CPU inputs run the module directly.
    Each graph keeps its activations' memory, so at most ``max_graphs`` are kept (the least
    recently used one is dropped, its memory freed, when another shape is captured). Inputs
    cycling through more shapes than that are re-captured on every new visit (slower than
    plain eager calls): raise ``max_graphs`` or fix the shapes (sliding windows).
    """

    def __init__(self, module: nn.Module, warmup: int = 2, max_graphs: int = 8):
        super().__init__()
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.module = module
        self.warmup = warmup
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple, tuple] = OrderedDict()
        self._seen: dict[tuple, int] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda:
            return self.module(x)
        key = (tuple(x.shape), x.dtype, x.device)
        hit = self._graphs.get(key)
        if hit is None:
            n = self._seen.get(key, 0)
            if n < self.warmup:
                self._seen[key] = n + 1
                return self.module(x)
            while len(self._graphs) >= self.max_graphs:  # least recently used goes
                self._graphs.popitem(last=False)
            static_in = x.clone()
            side = torch.cuda.Stream(x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):  # one more run on the capture stream
                self.module(static_in)
            torch.cuda.current_stream(x.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.module(static_in)
            hit = self._graphs[key] = (graph, static_in, static_out)
        self._graphs.move_to_end(key)
        graph, static_in, static_out = hit
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()


def build_inference_model(model: SegmentationUNet, dtype: torch.dtype | str | None = None,
                          backend: str = "auto", compile: bool = False,
                          cuda_graphs: bool = False, carry_input: bool = False) -> nn.Module:
    """Fold, pack and fuse ``model`` (eval mode, BatchNorm) for fast inference.

    ``dtype``: a torch dtype or a name (``"fp32"``, ``"bf16"``, ``"fp16"``); None or
    ``"auto"``: fp32 on CPU (exact), bf16 on CUDA (lossy: about 1e-2 relative error).

    ``backend``: ``"auto"`` (fastest measured per device), ``"triton"``, ``"cuda"``,
    ``"cpp"`` or ``"torch"`` (reference math, for checking).
    ``compile=True`` wraps the result in ``torch.compile``. ``cuda_graphs=True`` captures
    one CUDA graph per input shape and replays it (for real-time, small-batch inference;
    call it under ``torch.no_grad()``). ``carry_input=True``: the narrow first block carries
    its input through conv1 instead of a separate 1x1 projection
    (:class:`~raunet_fast.ops.fused_blocks.FusedResidualBlock`; experimental, exact).
    """
    if compile and cuda_graphs:
        raise ValueError("choose compile=True or cuda_graphs=True, not both")
    device = next(model.parameters()).device
    if dtype is None or isinstance(dtype, str):
        dtype = inference_dtype(dtype, device, announce=dtype == "auto")
    if device.type == "cpu":
        from .runtime import tune_cpu_allocator_unless_disabled

        tune_cpu_allocator_unless_disabled()
    fast = InferenceUNet(model, dtype=dtype, backend=backend, carry_input=carry_input).eval()
    if cuda_graphs:
        return CUDAGraphRunner(fast).eval()
    return torch.compile(fast) if compile else fast


#: names of the inference dtypes on the command line
DTYPE_NAMES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def inference_dtype(name: str | None, device: torch.device | str,
                    announce: bool = False) -> torch.dtype:
    """The fused model's dtype for a name: ``fp32`` / ``bf16`` / ``fp16``; ``None``: fp32 on
    CPU (exact), bf16 on CUDA (fast, no overflow); ``"auto"``: bf16 on CUDA and on a CPU
    with bf16 matrix hardware (AMX-BF16 or AVX512-BF16), fp32 on other CPUs. ``announce``:
    say what ``"auto"`` picked (an :class:`InferenceDtypeNotice` warning)."""
    device = torch.device(device)
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name == "auto":
        from .runtime import cpu_has_fast_bf16, cpu_isa

        fast = device.type == "cuda" or cpu_has_fast_bf16()
        if announce:
            where = "CUDA" if device.type == "cuda" else f"this CPU ({cpu_isa()})"
            warnings.warn(f"dtype='auto' picked {'bf16' if fast else 'fp32'} on {where}"
                          + (": about 1e-2 relative error, pass dtype=torch.float32 for exact "
                             "results" if fast else ""), InferenceDtypeNotice, stacklevel=3)
        return torch.bfloat16 if fast else torch.float32
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype must be auto, {', '.join(DTYPE_NAMES)}, got {name!r}")
    return DTYPE_NAMES[name]


class InferenceDtypeNotice(UserWarning):
    """What ``dtype="auto"`` picked for the fused model."""
