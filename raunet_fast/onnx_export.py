"""ONNX: a trained model as an ``.onnx`` file, and :class:`OnnxModel` to run one with ONNX
Runtime (``pip install "raunet-fast[onnx]"``).

:func:`export_onnx` writes the reference model, or with ``folded=True`` its BatchNorm-folded
copy (:func:`raunet_fast.fold.folded_copy`: standard ops, which any ONNX runtime knows;
the fused ops do not exist in ONNX), through ``torch.onnx.export`` (the dynamo exporter,
opset 18). 2-D models take ``N x C x H x W`` images, 3-D models (``spatial_dims=3``)
``N x C x D x H x W`` volumes. By default the batch and every spatial size are dynamic, the
sizes multiples of the model's ``size_multiple``; ``dynamic=False`` fixes the example shape,
which ONNX Runtime runs faster. The file carries in its metadata the model's channels, size
multiple and spatial dims and, when given, the checkpoint's ``preprocessing.json``, so
``predict --onnx`` preprocesses and thresholds as the checkpoint would (a 3-D file
predicts volumes in windows, as the checkpoint does).

:class:`OnnxModel` is a callable from ``N x C x H x W`` (3-D: ``N x C x D x H x W``) float32
tensors to logits: it pads other sizes up to the multiple (at the end of each axis, as the
eager model does) and crops the result, and splits batches for a static file.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .errors import require

__all__ = ["export_onnx", "OnnxModel", "OPSET"]

OPSET = 18
META_MODEL = "raunet_fast.model"
META_PREPROCESSING = "raunet_fast.preprocessing"


def export_onnx(model: torch.nn.Module, path: str | Path, size: tuple[int, ...] = (512, 512),
                batch: int = 1, dynamic: bool = True, folded: bool = False,
                preprocessing: dict[str, Any] | None = None) -> Path:
    """Write eval-mode ``model`` (fp32, CPU) to ``path`` as ONNX, atomically. ``size`` /
    ``batch``: the example shape, ``size`` one value per spatial axis of the model (the
    only shape with ``dynamic=False``; with ``dynamic`` the sizes must be multiples of
    ``model.size_multiple``, at least twice it)."""
    require("onnxscript", "onnx", "ONNX export")
    onnx = require("onnx", "onnx", "ONNX export")
    from .export import check_example_size, dynamic_shapes

    mult = int(model.size_multiple)
    dims = int(getattr(model, "spatial_dims", 2))
    check_example_size(size, batch, mult, dynamic, dims)
    module = model.eval().float().cpu()
    if folded:
        from .fold import folded_copy

        module = folded_copy(module)
    x = torch.randn(max(batch, 2) if dynamic else batch, model.in_channels, *size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp.onnx")
    os.close(fd)
    try:
        with torch.no_grad(), _quiet_exporter():
            torch.onnx.export(module, (x,), tmp, dynamo=True, opset_version=OPSET,
                              input_names=["image"], output_names=["logits"],
                              dynamic_shapes=dynamic_shapes(mult, dims) if dynamic else None,
                              external_data=False, verbose=False)
        proto = onnx.load(tmp)
        meta = {"in_channels": model.in_channels, "out_channels": model.out_channels,
                "size_multiple": mult, "spatial_dims": dims, "folded": folded,
                "dynamic": dynamic,
                "shape": None if dynamic else [batch, model.in_channels, *size]}
        _set_metadata(proto, {META_MODEL: meta, META_PREPROCESSING: preprocessing})
        onnx.save(proto, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def _quiet_exporter():
    """The exporter logs a warning per optional library it does not find (torchvision):
    kept out of the user's output."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _set_metadata(proto, values: dict[str, Any]) -> None:
    for key, value in values.items():
        if value is not None:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)


class OnnxModel:
    """An ``.onnx`` file written by :func:`export_onnx`, run by ONNX Runtime on the CPU.

    ``threads``: ONNX Runtime's intra-op threads (default: its own choice). Attributes:
    ``in_channels``, ``out_channels``, ``size_multiple``, ``spatial_dims`` (2: images, 3:
    volumes; files without it are 2-D), ``preprocessing`` (the checkpoint's
    ``preprocessing.json``, or ``{}``)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        ort = require("onnxruntime", "onnx", "running an ONNX model")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file {path} does not exist")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ValueError(f"cannot load ONNX file {path}: {e}") from e
        meta = self.session.get_modelmeta().custom_metadata_map
        if META_MODEL not in meta:
            raise ValueError(f"{path} was not written by raunet-fast export --format onnx "
                             f"(no {META_MODEL} metadata)")
        info = json.loads(meta[META_MODEL])
        self.path, self.shape = path, info.get("shape")
        self.in_channels, self.out_channels = info["in_channels"], info["out_channels"]
        self.size_multiple = int(info["size_multiple"])
        self.spatial_dims = int(info.get("spatial_dims", 2))
        self.preprocessing = json.loads(meta.get(META_PREPROCESSING, "{}"))
        self.input_name = self.session.get_inputs()[0].name

    def eval(self) -> "OnnxModel":
        return self

    def to(self, *args, **kwargs) -> "OnnxModel":
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 + self.spatial_dims or x.shape[1] != self.in_channels:
            axes = "H x W" if self.spatial_dims == 2 else "D x H x W"
            raise ValueError(f"{self.path} takes N x {self.in_channels} x {axes} input, got "
                             f"{tuple(x.shape)}")
        size = tuple(x.shape[2:])
        target = self._target_size(size)
        pads = [v for s, t in zip(reversed(size), reversed(target)) for v in (0, t - s)]
        xp = torch.nn.functional.pad(x.float().cpu(), pads)
        out = torch.cat([self._run(chunk) for chunk in self._chunks(xp)])[:x.shape[0]]
        return out[(..., *(slice(0, s) for s in size))].to(x.device)

    def _target_size(self, size: tuple[int, ...]) -> tuple[int, ...]:
        m = self.size_multiple
        if self.shape is None:
            return tuple(max(2 * m, -(-s // m) * m) for s in size)
        fixed = tuple(self.shape[2:])
        if any(s > f for s, f in zip(size, fixed)):
            fixed_text = "x".join(map(str, fixed))
            raise ValueError(f"{self.path} has the fixed input size {fixed_text}; got "
                             f"{'x'.join(map(str, size))} (use --window {fixed_text}, or "
                             f"export without --static)")
        return fixed

    def _chunks(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.shape is None:
            return [x]
        b = self.shape[0]
        pad = -x.shape[0] % b  # the last chunk is filled with repeats of its last image
        x = torch.cat([x, x[-1:].expand(pad, *x.shape[1:])]) if pad else x
        return list(x.split(b))

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.contiguous().numpy()})[0]
        return torch.from_numpy(out)
