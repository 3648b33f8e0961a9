"""Devices, threads and precision for the engine: ``--device``, ``--threads`` and ``--amp``
resolved once where a command starts."""
from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when torch sees a device, else CPU; ``cuda`` without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device "
                         f"(torch {torch.__version__}); use --device cpu")
    return torch.device(name)


def set_threads(n: int | None) -> None:
    """``--threads N``: torch's CPU threads in this process (None: torch's default, all
    cores or ``OMP_NUM_THREADS``). DataLoader worker processes run one thread each (torch
    sets that in every worker)."""
    if n is not None:
        torch.set_num_threads(n)


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` (None: no autocast)."""
    if amp == "none":
        return None
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp must be none, bf16 or fp16, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device; on CPU use --amp bf16 or none")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` in ``dtype`` on ``device``, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
