"""Checks on a command's output folder, made before anything is computed."""
from __future__ import annotations

from pathlib import Path

__all__ = ["check_out"]


def check_out(out: Path, names: list[str], overwrite: bool) -> None:
    """Refuse to replace files of ``names`` that already exist in ``out`` unless
    ``overwrite`` (raises ValueError naming one of them and the way out)."""
    if overwrite or not out.is_dir():
        return
    existing = [n for n in names if (out / n).exists()]
    if existing:
        raise ValueError(f"--out {out} already holds {len(existing)} of the {len(names)} files "
                         f"this run would write (e.g. {existing[0]}); pass --overwrite to "
                         f"replace them, or choose another --out")
