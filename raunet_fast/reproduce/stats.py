"""Statistics of a reproduce: per model the mean and standard deviation over seeds of the
runs' test-set means, and per case the paired comparison of RA-U-Net with each baseline
(mean difference, 95 % bootstrap interval, Wilcoxon signed-rank p-value)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..io.tables import read_csv

METRICS = ("dice", "jaccard", "hd", "hd95")
#: metrics shown in percent (the paper's Table 1); distances stay in their unit
PERCENT = ("dice", "jaccard")
BOOTSTRAP_SAMPLES = 10_000
BOOTSTRAP_SEED = 0


def metric_columns(regions: list[str] | None) -> list[str]:
    """The scored columns: ``dice`` ... (2-D), or per region and their mean (BraTS)."""
    if not regions:
        return list(METRICS)
    return [f"{m}_{r}" for r in (*regions, "mean") for m in METRICS]


def headline(regions: list[str] | None) -> list[str]:
    """The columns of the paper's table: the 2-D metrics, or the BraTS region means."""
    return [f"{m}_mean" if regions else m for m in METRICS]


def scale(column: str) -> float:
    return 100.0 if column.split("_")[0] in PERCENT else 1.0


def case_values(path, regions: list[str] | None) -> dict[str, dict[str, float]]:
    """``{case: {column: value}}`` from a run's ``cases.csv``, scaled for the table
    (percent for Dice / Jaccard); BraTS rows get the mean over regions per metric."""
    out = {}
    for row in read_csv(path):
        vals = {k: float(v) for k, v in row.items() if k != "case" and v not in ("", None)}
        if regions:
            for m in METRICS:
                vals[f"{m}_mean"] = float(np.mean([vals[f"{m}_{r}"] for r in regions]))
        out[row["case"]] = {c: vals[c] * scale(c) for c in metric_columns(regions)}
    return out


def run_mean(cases: dict[str, dict[str, float]], column: str) -> float:
    vals = [v[column] for v in cases.values() if math.isfinite(v[column])]
    return float(np.mean(vals)) if vals else math.nan


def seed_summary(per_seed: list[dict], columns: list[str]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (ddof 1; NaN for one seed) over seeds of each
    run's mean over its test cases."""
    out = {}
    for c in columns:
        means = np.array([run_mean(cases, c) for cases in per_seed])
        std = float(np.std(means, ddof=1)) if len(means) > 1 else math.nan
        out[c] = {"mean": float(np.mean(means)), "std": std, "seeds": len(means)}
    return out


def seed_average(per_seed: list[dict], column: str) -> dict[str, float]:
    """Per case the mean over seeds (cases scored in every seed, with finite values)."""
    names = set.intersection(*(set(c) for c in per_seed))
    out = {}
    for name in sorted(names):
        vals = [cases[name][column] for cases in per_seed]
        if all(math.isfinite(v) for v in vals):
            out[name] = float(np.mean(vals))
    return out


def bootstrap_interval(d: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``d`` (cases resampled)."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    idx = rng.integers(0, len(d), size=(BOOTSTRAP_SAMPLES, len(d)))
    means = d[idx].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the differences (1.0 when all are zero)."""
    from scipy.stats import wilcoxon

    if not np.any(d != 0):
        return 1.0
    try:
        return float(wilcoxon(d).pvalue)
    except ValueError:  # too few non-zero differences
        return math.nan


def paired(proposed: list[dict], baseline: list[dict], column: str) -> dict[str, Any]:
    """RA-U-Net minus a baseline on the same test cases (each case's value averaged over
    seeds first): mean difference, 95 % bootstrap interval, Wilcoxon p, cases."""
    a, b = seed_average(proposed, column), seed_average(baseline, column)
    names = sorted(set(a) & set(b))
    if not names:
        return {"mean_diff": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                "wilcoxon_p": math.nan, "cases": 0}
    d = np.array([a[n] - b[n] for n in names])
    lo, hi = bootstrap_interval(d)
    return {"mean_diff": float(d.mean()), "ci_low": lo, "ci_high": hi,
            "wilcoxon_p": wilcoxon_p(d), "cases": len(names)}
