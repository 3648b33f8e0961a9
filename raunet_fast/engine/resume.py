"""``--resume``: find the run's last complete checkpoint, refuse a run started otherwise."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..io.checkpoints import checkpoint_problems, load_training_state, recover_checkpoint

#: options that fix the model or the data; a resumed run must be given the same values
FIXED = ("model", "dataset", "image_size", "patch", "patches_per_image", "crop",
         "base_channels", "depth", "norm", "deep_supervision", "seed", "split_seed")


#: what a training run writes into its folder (besides the .last.* / .best.* temporaries)
RUN_FILES = ("last", "best", "log.csv", "log.json", "run.json", "result.json")


def resume_point(run: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """``--resume``: the complete ``last/`` checkpoint of ``run`` and its training state, or
    (None, None) when ``run`` is missing or empty (a new run starts). Anything else, a
    folder with run files but no complete loadable checkpoint, is an error that names what
    is broken: a fresh start there would overwrite ``best/``, ``log.csv`` and ``run.json``."""
    if not run.exists() or not any(run.iterdir()):
        return None, None
    last = recover_checkpoint(run, "last", need_state=True)
    hint = f"; remove {run} to start over there, or pass a new --out"
    if last is None:
        problems = checkpoint_problems(run / "last", need_state=True)
        for leftover in (run / ".last.tmp", run / ".last.old"):
            if leftover.exists():
                problems += checkpoint_problems(leftover, need_state=True)
        found = sorted(p.name for p in run.iterdir()
                       if p.name in RUN_FILES or p.name.startswith((".last.", ".best.")))
        if not found:
            raise ValueError(f"--resume: {run} holds no training run (it contains "
                             f"{', '.join(sorted(p.name for p in run.iterdir())[:5])}){hint}")
        if not (run / "last").exists() and not any(n.startswith(".last.") for n in found):
            problems = [f"{run / 'last'} is missing (found {', '.join(found)}; did the run stop "
                        f"before its first epoch ended?)"]
        raise ValueError(f"--resume: {run} holds no complete checkpoint to continue from: "
                         f"{'; '.join(problems)}{hint}")
    try:
        from ..hub import read_config

        read_config(last)
        state = load_training_state(last)
    except (OSError, ValueError) as e:
        raise ValueError(f"--resume: the checkpoint {last} cannot be loaded: {e}{hint}") from e
    return last, state


def check_same_run(run: Path, cfg: TrainConfig) -> None:
    path = run / "run.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e
    new = cfg.to_dict()
    # options added later: a run.json without them ran with their defaults
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                if f.default is not dataclasses.MISSING}
    diff = [f"{k}: run has {old.get(k, defaults.get(k))!r}, now {new[k]!r}" for k in FIXED
            if old.get(k, defaults.get(k)) != new[k]]
    if diff:
        raise ValueError(f"--resume: {run} was started with other settings ({'; '.join(diff)}); "
                         f"pass the same options to continue it")
