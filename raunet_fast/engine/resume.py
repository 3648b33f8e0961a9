"""``--resume``: find the run's last complete checkpoint, refuse a run started otherwise,
record the resume in ``run.json``; the leftovers of interrupted writes."""
from __future__ import annotations

import dataclasses
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..io.checkpoints import (checkpoint_ok, checkpoint_problems, load_training_state,
                              recover_checkpoint)

#: options that fix the model or the data; a resumed run must be given the same values
FIXED = ("model", "dataset", "spatial_dims", "image_size", "patch", "patches_per_image", "crop",
         "base_channels", "depth", "norm", "deep_supervision", "seed", "split_seed")


#: what a training run writes into its folder
RUN_FILES = ("last", "best", "log.csv", "log.json", "run.json", "result.json")
#: what exists once the run's first epoch has ended
EPOCH_FILES = ("last", "log.csv", "log.json", "result.json")


def is_temporary(name: str) -> bool:
    """A leftover of an interrupted write: ``.last.tmp``, ``.best.old``, ``.log.csv.*.tmp``."""
    return name.startswith(tuple(f".{n}." for n in RUN_FILES))


def remove_temporaries(run: Path) -> None:
    """Delete the leftovers of interrupted writes (after recovery took any complete one)."""
    for p in run.iterdir():
        if is_temporary(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()


def holds_finished_epoch(run: Path) -> bool:
    """Whether an epoch of the run in ``run`` ended (a log, a ``last/`` or a complete
    leftover of one); a run that failed in its first epoch holds none."""
    if any((run / n).exists() for n in EPOCH_FILES):
        return True
    return any(checkpoint_ok(run / n, need_state=True) for n in (".last.tmp", ".last.old"))


def resume_point(run: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """``--resume``: the complete ``last/`` checkpoint of ``run`` and its training state, or
    (None, None) when ``run`` is missing, empty or holds a run that ended no epoch (it
    starts over). Anything else, a folder with finished epochs but no complete loadable
    checkpoint, is an error that names what is broken: a fresh start there would overwrite
    ``best/``, ``log.csv`` and ``run.json``."""
    if not run.exists() or not any(run.iterdir()):
        return None, None
    last = recover_checkpoint(run, "last", need_state=True)
    hint = f"; remove {run} to start over there, or pass a new --out"
    if last is None:
        if not any(p.name in RUN_FILES or is_temporary(p.name) for p in run.iterdir()):
            raise ValueError(f"--resume: {run} holds no training run (it contains "
                             f"{', '.join(sorted(p.name for p in run.iterdir())[:5])}){hint}")
        if not holds_finished_epoch(run):
            return None, None
        problems = checkpoint_problems(run / "last", need_state=True)
        for leftover in (run / ".last.tmp", run / ".last.old"):
            if leftover.exists():
                problems += checkpoint_problems(leftover, need_state=True)
        raise ValueError(f"--resume: {run} holds no complete checkpoint to continue from: "
                         f"{'; '.join(problems)}{hint}")
    try:
        from ..hub import read_config

        read_config(last)
        state = load_training_state(last)
    except (OSError, ValueError) as e:
        raise ValueError(f"--resume: the checkpoint {last} cannot be loaded: {e}{hint}") from e
    return last, state


def read_run_json(run: Path) -> dict[str, Any] | None:
    """The run's ``run.json`` (None when it has none)."""
    path = run / "run.json"
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(old, dict):
        raise ValueError(f"{path} holds a JSON {type(old).__name__}, not the run's options")
    return old


def _as_recorded(old: dict[str, Any], key: str):
    # options added later: a run.json without them ran with their defaults
    f = {f.name: f for f in dataclasses.fields(TrainConfig)}.get(key)
    default = None if f is None or f.default is dataclasses.MISSING else f.default
    return old.get(key, default)


def check_same_run(run: Path, cfg: TrainConfig) -> None:
    """Refuse to continue ``run`` with other :data:`FIXED` options than its ``run.json``."""
    old = read_run_json(run)
    if old is None:
        return
    new = cfg.to_dict()
    diff = [f"{k}: run has {_as_recorded(old, k)!r}, now {new[k]!r}" for k in FIXED
            if _as_recorded(old, k) != new[k]]
    if diff:
        raise ValueError(f"--resume: {run} was started with other settings ({'; '.join(diff)}); "
                         f"pass the same options to continue it")


def record_resume(run: Path, cfg: TrainConfig, epoch: int) -> None:
    """Append this resume to ``run.json``'s ``resumes`` (time, the epoch it continues
    from, the options that differ from the run's first configuration, as [first, now]);
    the first configuration itself stays as it was."""
    from ..hub import atomic_write_json

    new = cfg.to_dict()
    record = read_run_json(run) or dict(new)
    changed = {k: [_as_recorded(record, k), v] for k, v in new.items()
               if k != "resume" and _as_recorded(record, k) != v}
    entry = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "from_epoch": epoch, "changed": changed}
    record["resumes"] = list(record.get("resumes", [])) + [entry]
    atomic_write_json(run / "run.json", record)
