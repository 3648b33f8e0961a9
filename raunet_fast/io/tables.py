"""CSV tables (training logs, per-case scores), written atomically."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ..hub import atomic_write_bytes


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file ([] when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict[str, Any]], fields: list[str] | None = None,
              float_format: str | None = None) -> None:
    """``rows`` under a header of ``fields`` (default: the first row's keys; keys outside
    ``fields`` are dropped); floats formatted with ``float_format`` when given."""
    buf = io.StringIO()
    fields = fields or (list(rows[0]) if rows else ["case"])
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        if float_format:
            r = {k: (format(v, float_format) if isinstance(v, float) else v) for k, v in r.items()}
        w.writerow(r)
    atomic_write_bytes(Path(path), buf.getvalue().encode())
