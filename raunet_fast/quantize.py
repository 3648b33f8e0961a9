"""int8 post-training quantization for CPU inference, with torchao's PT2E flow
(``pip install "raunet-fast[cpu-int8]"``).

:func:`quantize_model` exports the eval-mode model (``torch.export``, dynamic batch and
H / W multiples of the size multiple), annotates it with ``X86InductorQuantizer``
(int8 activations and weights, per-channel weights: oneDNN's VNNI / AMX int8 kernels),
runs the calibration images through it to set the activation ranges and converts it. The
result is saved as a folder (:func:`save_quantized`): ``model_int8.pt2`` (the converted
program), ``config.json`` and ``preprocessing.json`` of the checkpoint, and
``quantization.json`` (calibration and, when measured, the Dice / HD95 change against
fp32). :class:`Int8Model` loads such a folder and runs it through ``torch.compile`` with
freezing, which lowers the quantized convolutions to int8 kernels (the first call
compiles: tens of seconds).

2-D models only: ``X86InductorQuantizer`` annotates 2-D convolutions, and a 3-D model
(``spatial_dims=3``) would come back unquantized, so it is refused
(:func:`check_quantizable`).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F

from .errors import require

__all__ = ["quantize_model", "check_quantizable", "pad_to_multiple", "save_quantized",
           "is_quantized", "Int8Model", "PROGRAM_NAME", "write_report"]

PROGRAM_NAME = "model_int8.pt2"
REPORT_NAME = "quantization.json"
EXTRA = "cpu-int8"


def _dynamic(mult: int) -> dict:
    d = torch.export.Dim
    return {"x": {0: d("batch", min=1, max=1024),
                  2: mult * d("h_blocks", min=2, max=65536 // mult),
                  3: mult * d("w_blocks", min=2, max=65536 // mult)}}


def check_quantizable(model, name: str = "the model") -> None:
    """A one-line error for a model int8 does not apply to: a 3-D (volume) model."""
    if getattr(model, "spatial_dims", 2) != 2:
        raise ValueError(f"{name} is a 3-D (volume) model; int8 quantization is for 2-D models "
                         f"(torchao's X86InductorQuantizer quantizes 2-D convolutions only)")


def quantize_model(model: torch.nn.Module, calibration: Iterable[torch.Tensor],
                   example: torch.Tensor) -> torch.nn.Module:
    """The int8 form of eval-mode ``model`` (CPU, fp32), calibrated on the batches of
    ``calibration`` (``N x C x H x W`` float32, preprocessed as in training). ``example``: a
    batch of the shapes to export with (H, W multiples of ``model.size_multiple``)."""
    check_quantizable(model)
    require("torchao", EXTRA, "int8 quantization")
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    model = model.eval().float().cpu()
    mult = int(model.size_multiple)
    with torch.no_grad():
        graph = torch.export.export(model, (example,), dynamic_shapes=_dynamic(mult)).module()
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(graph, quantizer)
        seen = 0
        for batch in calibration:
            prepared(pad_to_multiple(batch.float(), mult))
            seen += batch.shape[0]
        if not seen:
            raise ValueError("int8 calibration needs at least one image")
        return convert_pt2e(prepared)


def pad_to_multiple(x: torch.Tensor, mult: int) -> torch.Tensor:
    """Pad H and W (bottom / right) up to multiples of ``mult``, at least ``2 * mult``."""
    h, w = x.shape[-2:]
    th, tw = max(2 * mult, -(-h // mult) * mult), max(2 * mult, -(-w // mult) * mult)
    return F.pad(x, (0, tw - w, 0, th - h)) if (th, tw) != (h, w) else x


def save_quantized(folder: str | Path, quantized: torch.nn.Module, example: torch.Tensor,
                   checkpoint: str | Path, report: dict[str, Any], size_multiple: int) -> Path:
    """Write the quantized model as a folder (see the module docstring); ``checkpoint``:
    the fp32 checkpoint it came from (its config and preprocessing are copied)."""
    from .hub import CONFIG_NAME
    from .io.checkpoints import PREPROCESSING_NAME

    folder, checkpoint = Path(folder), Path(checkpoint)
    program = torch.export.export(quantized, (example,), dynamic_shapes=_dynamic(size_multiple))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{PROGRAM_NAME}.tmp.pt2"
    torch.export.save(program, tmp)
    tmp.replace(folder / PROGRAM_NAME)
    for name in (CONFIG_NAME, PREPROCESSING_NAME):
        if (checkpoint / name).is_file():
            shutil.copyfile(checkpoint / name, folder / name)
    write_report(folder, dict(report, source=str(checkpoint)))
    return folder


def write_report(folder: str | Path, report: dict[str, Any]) -> None:
    from .hub import atomic_write_json

    atomic_write_json(Path(folder) / REPORT_NAME, report)


def is_quantized(folder: str | Path) -> bool:
    """Whether ``folder`` holds a model written by :func:`save_quantized`."""
    return (Path(folder) / PROGRAM_NAME).is_file()


class Int8Model:
    """A folder written by :func:`save_quantized`, ready to run on the CPU: a callable from
    ``N x C x H x W`` float32 to logits (other sizes are padded to the size multiple and
    the result cropped). ``compile=False`` runs the converted graph without lowering
    (slow: int8 arithmetic emulated; for checking)."""

    def __init__(self, folder: str | Path, compile: bool = True):
        from .hub import CONFIG_NAME

        require("torchao", EXTRA, "running an int8 model")
        folder = Path(folder)
        if not is_quantized(folder):
            raise FileNotFoundError(f"{folder} holds no {PROGRAM_NAME}; write one with "
                                    f"raunet-fast quantize")
        config = json.loads((folder / CONFIG_NAME).read_text())
        self.folder = folder
        self.in_channels = int(config.get("in_channels", 3))
        self.out_channels = int(config.get("out_channels", 1))
        self.size_multiple = 2 ** (int(config.get("depth", 5)) - 1)
        self.module = torch.export.load(str(folder / PROGRAM_NAME)).module()
        from .runtime import compile_frozen

        self.forward = compile_frozen(self.module) if compile else self.module

    def eval(self) -> "Int8Model":
        return self

    def to(self, *args, **kwargs) -> "Int8Model":
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{self.folder} takes N x {self.in_channels} x H x W input, got "
                             f"{tuple(x.shape)}")
        h, w = x.shape[-2:]
        with torch.no_grad():
            out = self.forward(pad_to_multiple(x.float().cpu(), self.size_multiple))
        return out[:, :, :h, :w].to(x.device)
