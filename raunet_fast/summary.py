"""Model summary: per-level tensor shapes, parameters, FLOPs and activation memory.

Everything is computed on the ``meta`` device, so a 1024 x 1024 summary of the full
64-channel network costs no memory and runs in well under a second. Volumes
(``spatial_dims=3`` models, ``N x C x D x H x W`` inputs) are summarised the same way; the
header names the dimension.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .models import SegmentationUNet


@dataclass
class LevelRow:
    stage: str
    shape: tuple[int, ...]
    params: int


@dataclass
class ModelSummary:
    name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    flops: int                       # multiply-add counted as 2
    activation_bytes: int            # sum of every layer's output (what training keeps)
    largest_activation_bytes: int
    dtype: torch.dtype
    rows: list[LevelRow] = field(default_factory=list)

    @property
    def gflops_per_image(self) -> float:
        return self.flops / self.input_shape[0] / 1e9

    @property
    def spatial_dims(self) -> int:
        return len(self.input_shape) - 2

    def format(self) -> str:
        volume = self.spatial_dims == 3
        layout = "N x C x D x H x W" if volume else "N x C x H x W"
        width = 32 if volume else 26
        lines = [f"{self.name}{' (3-D)' if volume else ''}  input "
                 f"{'x'.join(map(str, self.input_shape))}  ->  "
                 f"output {'x'.join(map(str, self.output_shape))}  ({self.dtype})",
                 f"{'stage':<22}{f'output ({layout})':<{width}}{'params':>14}"]
        for r in self.rows:
            lines.append(f"{r.stage:<22}{' x '.join(map(str, r.shape)):<{width}}{r.params:>14,}")
        lines += [
            f"parameters:            {self.params:,}",
            f"GFLOP per image:       {self.gflops_per_image:.2f}  (multiply-add = 2)",
            f"activation memory:     {self.activation_bytes / 2**20:,.1f} MiB for the batch "
            f"(sum of layer outputs kept for backward)",
            f"largest activation:    {self.largest_activation_bytes / 2**20:,.1f} MiB",
        ]
        return "\n".join(lines)


def _params(m: nn.Module | None) -> int:
    return 0 if m is None else sum(p.numel() for p in m.parameters())


def summarize(model: SegmentationUNet, input_shape: tuple[int, ...],
              dtype: torch.dtype = torch.float32) -> ModelSummary:
    """Trace ``model`` on a meta tensor of ``input_shape`` (``N x C x H x W``, or
    ``N x C x D x H x W`` for a ``spatial_dims=3`` model) and collect the summary."""
    if not isinstance(model, SegmentationUNet):
        raise ValueError(f"a {type(model).__name__} has no per-level summary (only the U-Net "
                         f"family has)")
    model.check_input(torch.empty(input_shape, device="meta"))
    kwargs = {k: v for k, v in model.config.items() if k != "architecture"}
    with torch.device("meta"):
        meta = type(model)(**kwargs).to(dtype).eval()  # the caller's model is left untouched
    rows: list[LevelRow] = []
    leaf_bytes: list[int] = []
    hooks = []

    def row_hook(stage: str, mod: nn.Module):
        def hook(_m, _inp, out):
            t = out[0] if isinstance(out, tuple) else out
            rows.append(LevelRow(stage, tuple(t.shape), _params(mod)))
        return hook

    def leaf_hook(_m, _inp, out):
        for t in (out if isinstance(out, tuple) else (out,)):
            if isinstance(t, torch.Tensor):
                leaf_bytes.append(t.numel() * t.element_size())

    for i, enc in enumerate(meta.encoder):
        hooks.append(enc.register_forward_hook(row_hook(f"encoder {i}", enc)))
    for i in range(meta.depth - 2, -1, -1):
        level = meta.decoder[i]
        hooks.append(level.up.register_forward_hook(row_hook(f"decoder {i} up-conv", level.up)))
        if level.gate is not None:
            hooks.append(level.gate.register_forward_hook(row_hook(f"decoder {i} gate", level.gate)))
        hooks.append(level.block.register_forward_hook(row_hook(f"decoder {i} block", level.block)))
    hooks.append(meta.head.register_forward_hook(row_hook("head", meta.head)))
    for m in meta.modules():
        if not list(m.children()):
            hooks.append(m.register_forward_hook(leaf_hook))

    x = torch.empty(input_shape, device="meta", dtype=dtype)
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            out = meta(x)
    finally:
        for h in hooks:
            h.remove()
    return ModelSummary(
        name=type(model).__name__, input_shape=tuple(input_shape), output_shape=tuple(out.shape),
        params=_params(model), flops=counter.get_total_flops(),
        activation_bytes=sum(leaf_bytes), largest_activation_bytes=max(leaf_bytes), dtype=dtype,
        rows=rows)
