"""raunet-fast: the RA-U-Net family for high-resolution medical image segmentation,
with fused Triton / CUDA inference kernels.

Importing this package is cheap: no kernel is compiled and no extension is built here.
Submodules (``ops``, ``inference``, ``metrics``, ``data``, ...) load on first access.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

from .hub import from_pretrained
from .models import (ARCHITECTURES, MODEL_NAMES, AttentionUNet, RAUNet, ResUNet,
                     SegmentationUNet, UNet, build_model)

__all__ = ["UNet", "AttentionUNet", "ResUNet", "RAUNet", "SegmentationUNet", "build_model",
           "from_pretrained", "ARCHITECTURES", "MODEL_NAMES", "__version__"]

_LAZY = {"ops", "inference", "metrics", "losses", "data", "train", "evaluate", "summary",
         "config", "engine", "io", "predict",
         "cli", "sliding_window", "tta", "benchmark", "export"}


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
