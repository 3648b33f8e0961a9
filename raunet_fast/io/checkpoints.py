"""Checkpoint folders: atomic writes, completeness checks, crash recovery, training state.

A checkpoint folder holds ``config.json`` + ``model.safetensors`` (``save_pretrained``),
``preprocessing.json`` (what inference needs to feed the network), optionally
``training_state.pt``, and ``checkpoint.json`` (epoch, validation Dice, SHA-256 of the
weights), written last as the completeness marker. Folders are written to a temporary
sibling and swapped in with renames, so a crash at any moment leaves a complete one.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..hub import CONFIG_NAME, WEIGHTS_NAME, atomic_write_bytes, atomic_write_json

STATE_NAME = "training_state.pt"
CHECKPOINT_NAME = "checkpoint.json"
PREPROCESSING_NAME = "preprocessing.json"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_checkpoint(run: Path, name: str, model, info: dict[str, Any],
                     preprocessing: dict[str, Any], state: dict[str, Any] | None = None) -> Path:
    """Write a complete checkpoint folder ``run/name`` atomically (temp folder + renames)."""
    final, tmp, old = run / name, run / f".{name}.tmp", run / f".{name}.old"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        _fill_checkpoint(tmp, model, info, preprocessing, state)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk gets its space back
        raise
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(run)
    if old.exists():
        shutil.rmtree(old)
    return final


def _fill_checkpoint(tmp: Path, model, info: dict[str, Any], preprocessing: dict[str, Any],
                     state: dict[str, Any] | None) -> None:
    model.save_pretrained(tmp)
    atomic_write_json(tmp / PREPROCESSING_NAME, preprocessing)
    sha = sha256(tmp / WEIGHTS_NAME)
    if state is not None:
        buf = io.BytesIO()
        torch.save(dict(state, weights_sha256=sha), buf)
        atomic_write_bytes(tmp / STATE_NAME, buf.getvalue())
    atomic_write_json(tmp / CHECKPOINT_NAME, dict(info, weights_sha256=sha))  # completeness marker
    fsync_dir(tmp)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def checkpoint_problems(folder: Path, need_state: bool = False) -> list[str]:
    """Why ``folder`` is not a complete checkpoint (empty list: it is one: marker present,
    weights hash matches, training state present when ``need_state``)."""
    if not folder.is_dir():
        return [f"{folder} is missing"]
    marker, weights = folder / CHECKPOINT_NAME, folder / WEIGHTS_NAME
    try:
        info = json.loads(marker.read_text())
        expected = info["weights_sha256"]
    except FileNotFoundError:
        return [f"{marker} is missing"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"{marker} is corrupt ({type(e).__name__}: {e})"]
    try:
        if sha256(weights) != expected:
            return [f"{weights} does not match the SHA-256 in {marker} (truncated or replaced)"]
    except OSError as e:
        return [f"{weights} cannot be read ({e.strerror or e})"]
    if need_state and not (folder / STATE_NAME).is_file():
        return [f"{folder / STATE_NAME} is missing"]
    return []


def checkpoint_ok(folder: Path, need_state: bool = False) -> bool:
    """Whether ``folder`` is a complete checkpoint (marker present, weights hash matches)."""
    return not checkpoint_problems(folder, need_state)


def recover_checkpoint(run: Path, name: str, need_state: bool = False) -> Path | None:
    """After a crash: make ``run/name`` the newest complete checkpoint, drop leftovers.

    Returns None (and deletes nothing) when neither ``run/name`` nor a leftover
    ``.name.tmp`` / ``.name.old`` is complete."""
    final, tmp, old = run / name, run / f".{name}.tmp", run / f".{name}.old"
    if not checkpoint_ok(final, need_state):
        for cand in (tmp, old):  # tmp is newer than old
            if checkpoint_ok(cand, need_state):
                if final.exists():
                    shutil.rmtree(final)
                os.replace(cand, final)
                break
    if not checkpoint_ok(final, need_state):
        return None  # nothing usable: leave every file as it is for the user to inspect
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    return final


def load_training_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE_NAME
    try:
        state = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read training state {path}: {e}") from e
    if state.get("weights_sha256") != sha256(folder / WEIGHTS_NAME):
        raise ValueError(f"{path} does not belong to the weights in {folder / WEIGHTS_NAME}")
    return state


def read_preprocessing(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's ``preprocessing.json`` ({} when it has none)."""
    path = Path(checkpoint) / PREPROCESSING_NAME
    if not path.is_file():
        return {}
    try:
        prep = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(prep, dict):
        raise ValueError(f"{path} holds a JSON {type(prep).__name__}, not an object with the "
                         f"preprocessing settings (dataset, image_size, ...)")
    try:
        check_preprocessing(prep)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return prep


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_preprocessing(prep: dict[str, Any]) -> None:
    """The entries inference reads from ``preprocessing.json``, with the run configs' checks."""
    from ..config import DATASETS, check_size, check_threshold

    for key, lengths in (("image_size", (2,)), ("patch", (2, 3))):
        v = prep.get(key)
        if v is not None and not (isinstance(v, list) and all(_is_int(s) for s in v)):
            raise ValueError(f"{key} must be a list of integers (H, W or D, H, W) or null, "
                             f"got {v!r}")
        check_size(key, v, lengths)
    if prep.get("crop") is not None and not (_is_int(prep["crop"]) and prep["crop"] >= 1):
        raise ValueError(f"crop must be an integer >= 1 or null, got {prep['crop']!r}")
    if "threshold" in prep:
        v = prep["threshold"]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"threshold must be a number in (0, 1), got {v!r}")
        check_threshold(v)
    if prep.get("dataset") is not None and prep["dataset"] not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {prep['dataset']!r}")
    if "split_seed" in prep and not _is_int(prep["split_seed"]):
        raise ValueError(f"split_seed must be an integer, got {prep['split_seed']!r}")
    _check_volume_entries(prep)


def _check_spatial_dims(prep: dict[str, Any]) -> None:
    dims = prep["spatial_dims"]
    if dims not in (2, 3) or isinstance(dims, bool):
        raise ValueError(f"spatial_dims must be 2 or 3, got {dims!r}")
    patch = prep.get("patch")
    if patch is not None and len(patch) != dims:
        raise ValueError(f"patch {patch} has {len(patch)} sizes; a {dims}-D model takes "
                         f"{'H, W' if dims == 2 else 'D, H, W'}")
    if dims == 3 and prep.get("image_size") is not None:
        raise ValueError(f"image_size must be null for a 3-D model (volumes are read at "
                         f"their own resolution), got {prep['image_size']!r}")
    if prep.get("dataset") == "nifti-folder" and dims != 3:
        raise ValueError("dataset nifti-folder holds volumes: spatial_dims must be 3")


def _check_volume_entries(prep: dict[str, Any]) -> None:
    """``spatial_dims`` where given (written by 3-D runs), the patch and image size it
    allows, the NIfTI folder's ``labels`` (one positive integer per region) and
    ``foreground_ratio``."""
    if "spatial_dims" in prep:
        _check_spatial_dims(prep)
    labels = prep.get("labels")
    if labels is not None:
        if not (isinstance(labels, list) and labels and all(_is_int(v) and v >= 1
                                                            for v in labels)
                and len(set(labels)) == len(labels)):
            raise ValueError(f"labels must be a list of distinct integers >= 1 (the label "
                             f"value of each output channel) or null, got {labels!r}")
        regions = prep.get("regions")
        if isinstance(regions, list) and len(regions) != len(labels):
            raise ValueError(f"labels {labels} and regions {regions} must have one entry "
                             f"per output channel each")
    ratio = prep.get("foreground_ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float))
                              or not 0 <= ratio <= 1):
        raise ValueError(f"foreground_ratio must be a number in [0, 1] or null, got {ratio!r}")


def check_checkpoint_folder(checkpoint: Path) -> None:
    """A clear error when ``checkpoint`` is not a folder written by training / save_pretrained."""
    what = "a checkpoint folder written by training or save_pretrained (e.g. RUN_DIR/best)"
    if not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist; pass {what}")
    if not checkpoint.is_dir():
        raise ValueError(f"checkpoint {checkpoint} is a file, not a folder; pass {what}")
    if not (checkpoint / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} has no {CONFIG_NAME}; pass {what}")
