"""Saving and loading models: ``config.json`` plus ``model.safetensors`` (no pickle).

Writes are atomic (temporary file in the same folder, then ``os.replace``), so a crash
mid-save never leaves a half-written checkpoint behind under the final name.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_state_dict(state: dict[str, torch.Tensor], path: str | os.PathLike,
                    metadata: dict[str, str] | None = None) -> None:
    """Atomically write a state dict as safetensors."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file, with an error that names the file when it is corrupt."""
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        return load(path.read_bytes())
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from e


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory; expected a folder written by "
                                f"save_pretrained() holding {CONFIG_NAME} and {WEIGHTS_NAME}")
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; {directory} was not written by save_pretrained()")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(config, dict) or "architecture" not in config:
        raise ValueError(f"{path} has no 'architecture' entry; not a raunet-fast config")
    return config


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for the model family."""

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created)."""
        from . import __version__

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = dict(self.config, format_version=FORMAT_VERSION, raunet_fast_version=__version__)
        save_state_dict(self.state_dict(), directory / WEIGHTS_NAME,
                        metadata={"architecture": config["architecture"]})
        atomic_write_json(directory / CONFIG_NAME, config)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu",
                        **overrides: Any):
        """Rebuild a model saved with :meth:`save_pretrained`, in eval mode (call
        ``.train()`` to fine-tune it).

        Called on a concrete class (``RAUNet.from_pretrained``) the folder must hold that
        architecture; called on :func:`raunet_fast.from_pretrained` any architecture loads.
        ``overrides`` replace config entries that do not change the weights' shapes
        (``dropout``, ``deep_supervision``).
        """
        directory = Path(directory)
        target, kwargs = _model_arguments(cls, directory, overrides)
        weights = directory / WEIGHTS_NAME
        _check_recorded_hash(directory)
        _check_file_size(target, kwargs, weights)
        model = target(**kwargs)
        state = load_state_dict(weights)
        if not model.deep_supervision:  # weights trained with aux heads load without them
            state = {k: v for k, v in state.items() if not k.startswith("aux_heads.")}
        aux_missing = _check_state(state, model.state_dict(), weights, target.__name__)
        if aux_missing:
            warnings.warn(f"{directory} has no deep-supervision heads; they start from random "
                          f"initialisation", stacklevel=2)
        model.load_state_dict(state, strict=not aux_missing)
        return model.to(map_location).eval()


#: ranges of the architecture entries of config.json (beyond them a model is no longer a
#: sane segmentation network, and building it could exhaust memory)
MODEL_LIMITS = {"in_channels": (1, 1024), "out_channels": (1, 1024), "base_channels": (2, 1024),
                "depth": (2, 10)}


def check_model_config(config: dict[str, Any], path: Path) -> None:
    """Types and ranges of a model config (``config.json``), one line naming the entry."""
    from .blocks import NORMS, SPATIAL_DIMS

    for key, (low, high) in MODEL_LIMITS.items():
        v = config.get(key, low)
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise ValueError(f"{path}: {key} must be an integer in [{low}, {high}], got {v!r}")
    dropout = config.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or \
            not 0.0 <= dropout < 1.0:
        raise ValueError(f"{path}: dropout must be a number in [0, 1), got {dropout!r}")
    if config.get("norm", "batch") not in NORMS:
        raise ValueError(f"{path}: norm must be one of {', '.join(NORMS)}, got "
                         f"{config.get('norm')!r}")
    if not isinstance(config.get("deep_supervision", False), bool):
        raise ValueError(f"{path}: deep_supervision must be true or false, got "
                         f"{config['deep_supervision']!r}")
    # a config.json written before volumes were supported has no entry: 2-D
    dims = config.get("spatial_dims", 2)
    if type(dims) is not int or dims not in SPATIAL_DIMS:
        raise ValueError(f"{path}: spatial_dims must be 2 (images) or 3 (volumes), got {dims!r}")


def _model_arguments(cls, directory: Path, overrides: dict[str, Any]):
    """The class and constructor arguments a checkpoint folder describes, checked."""
    from .models import ARCHITECTURES, SegmentationUNet

    config = read_config(directory)
    arch = config["architecture"]
    if arch not in ARCHITECTURES:
        raise ValueError(f"{directory / CONFIG_NAME} names architecture {arch!r}; "
                         f"known: {sorted(ARCHITECTURES)}")
    target = ARCHITECTURES[arch]
    if cls is not SegmentationUNet and cls is not target:
        raise ValueError(f"{directory} holds a {arch}, not a {cls.__name__}; load it with "
                         f"raunet_fast.from_pretrained() or {arch}.from_pretrained()")
    allowed = {"dropout", "deep_supervision"}
    bad = set(overrides) - allowed
    if bad:
        raise ValueError(f"cannot override {sorted(bad)} when loading; only {sorted(allowed)}")
    kwargs = {k: config[k] for k in ("in_channels", "out_channels", "base_channels", "depth",
                                     "dropout", "norm", "deep_supervision", "spatial_dims")
              if k in config}
    check_model_config(kwargs, directory / CONFIG_NAME)
    kwargs.update(overrides)
    return target, kwargs


def _check_file_size(target, kwargs: dict[str, Any], weights: Path) -> None:
    """The weights file must be large enough for the model its config describes (built on
    the meta device: no memory), before the real model is built."""
    if not weights.is_file():
        raise FileNotFoundError(f"weights file {weights} does not exist")
    with torch.device("meta"):
        shapes = target(**dict(kwargs, deep_supervision=False)).state_dict()
    need = sum(v.numel() for v in shapes.values())  # a byte a value at the very least
    have = weights.stat().st_size
    if have < need:
        raise ValueError(f"{weights} holds {have:,} bytes, but the model its config describes "
                         f"needs at least {need:,} (one byte for each of its {need:,} values): "
                         f"the config or the weights are wrong")


def _check_recorded_hash(directory: Path) -> None:
    """When the folder records its weights' SHA-256 (``checkpoint.json``), it must match."""
    from .io.checkpoints import CHECKPOINT_NAME, sha256

    marker = directory / CHECKPOINT_NAME
    if not marker.is_file():
        return
    try:
        expected = json.loads(marker.read_text()).get("weights_sha256")
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{marker} is corrupt ({e})") from e
    weights = directory / WEIGHTS_NAME
    if expected and weights.is_file() and sha256(weights) != expected:
        raise ValueError(f"{weights} does not match the SHA-256 recorded in {marker} "
                         f"(damaged, truncated or replaced)")


def _check_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                 weights: Path, arch: str) -> list[str]:
    """Keys, shapes, dtypes and finiteness of loaded weights; returns the missing aux keys."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    aux_missing = [k for k in missing if k.startswith("aux_heads.")]
    missing = [k for k in missing if not k.startswith("aux_heads.")]
    if missing or unexpected:
        raise ValueError(f"{weights} does not match a {arch} built from its config: "
                         f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} "
                         f"unexpected keys {unexpected[:5]}")
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{weights} has tensors of the wrong shape for its config: {wrong[:5]}")
    for k, v in expected.items():
        got = state.get(k)
        if got is None:
            continue
        if got.is_floating_point() != v.is_floating_point():
            raise ValueError(f"{weights}: {k} is {got.dtype}, a model needs {v.dtype}")
        if got.is_floating_point() and not torch.isfinite(got).all():
            bad = int((~torch.isfinite(got)).sum())
            raise ValueError(f"{weights}: {k} holds {bad} NaN / Inf values (damaged weights)")
    return aux_missing


def from_pretrained(directory: str | os.PathLike, map_location: str | torch.device = "cpu",
                    **overrides: Any):
    """Load any model of the family saved with ``save_pretrained``."""
    from .models import SegmentationUNet

    return SegmentationUNet.from_pretrained(directory, map_location=map_location, **overrides)
