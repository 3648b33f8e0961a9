"""Reading a reproduce folder back in the tests: tables and the runs' own per-case scores."""
from __future__ import annotations

import csv
from pathlib import Path

METRICS = ("dice", "jaccard", "hd", "hd95")


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def case_scores(out: Path, model: str, seed: int) -> dict[str, dict[str, float]]:
    """{case: {metric: value}} with Dice and Jaccard in percent, as the table shows them."""
    rows = read(out / "runs" / f"{model}-seed{seed}" / "test" / "cases.csv")
    return {r["case"]: {m: float(r[m]) * (100 if m in ("dice", "jaccard") else 1)
                        for m in METRICS} for r in rows}
