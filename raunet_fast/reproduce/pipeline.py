"""The reproduce from start to end: runs, statistics, tables, figures, report."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..config import ReproduceConfig
from ..errors import require
from ..io.checkpoints import read_preprocessing
from ..io.tables import read_csv
from ..peers import monai_nets
from . import cases, figures, report, runs, stats


def reproduce(cfg: ReproduceConfig) -> dict[str, Any]:
    """Train, evaluate, compare and write every output of ``cfg.out``; returns the
    statistics and the paths written."""
    t0 = time.perf_counter()
    cfg = cfg.validate()
    require("matplotlib", "plots", "reproduce's figures")  # before hours of training
    if cfg.peers:
        monai_nets()
    runs.check_out(cfg)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    layout, root = runs.data_source(cfg)
    plan = runs.plan(cfg)
    done = runs.execute(cfg, plan, layout, root)
    runs.write_config(cfg, done)
    results = collect(plan, layout)
    cost = runs.costs(cfg, plan)
    paths = write_outputs(cfg, plan, results, cost, layout, root)
    info = run_info(cfg, plan, layout, root, done, time.perf_counter() - t0)
    paths["report"] = report.write_report(Path(cfg.out), info,
                                          (Path(cfg.out) / "table1.md").read_text(),
                                          results["lines"])
    return {**results, "cost": cost, "paths": paths, "done": done}


def collect(plan: list, layout: str) -> dict[str, Any]:
    """Per model the runs' cases, the summary over seeds and the paired comparisons."""
    first = plan[0].folder / "best"
    regions = read_preprocessing(first).get("regions") if layout == "brats2021" else None
    columns, head = stats.metric_columns(regions), stats.headline(regions)
    per_model: dict[str, list] = {}
    for run in plan:
        per_model.setdefault(run.model, []).append(stats.case_values(run.cases_csv, regions))
    summary = {m: stats.seed_summary(v, columns) for m, v in per_model.items()}
    paired, key = [], {}
    for m in per_model:
        if m == runs.PROPOSED:
            continue
        name = f"{runs.LABELS[runs.PROPOSED]} - {runs.LABELS[m]}"
        key[name] = m
        for c in head:
            paired.append({"comparison": name, "metric": c,
                           **stats.paired(per_model[runs.PROPOSED], per_model[m], c)})
    lines = report.conclusion(paired, summary, runs.PROPOSED, key)
    return {"per_model": per_model, "summary": summary, "paired": paired, "columns": columns,
            "headline": head, "lines": lines}


def write_outputs(cfg, plan, results, cost, layout: str, root: Path) -> dict[str, Path]:
    out, labels = Path(cfg.out), runs.LABELS
    summary, head = results["summary"], results["headline"]
    report.write_tables(out, summary, cost, results["paired"], labels, results["columns"],
                        head)
    shown = {labels[m]: s for m, s in summary.items()}
    paper = {labels[m]: {f"{k}_mean" if layout == "brats2021" else k: v
                         for k, v in p.items()} for m, p in report.PAPER_TABLE1.items()}
    paths = {"table": out / "table1.md"}
    paths["fig5"] = figures.bar_plot(shown, head, [report.title(c) for c in head],
                                     out / "fig5_metrics.png", paper)
    paths["fig6"] = case_figure(cfg, plan, results, layout, root, out / "fig6_cases.png")
    paths["curves"] = figures.curves(validation_curves(plan), out / "curves.png")
    return paths


def case_figure(cfg, plan, results, layout: str, root: Path, path: Path) -> Path:
    """Fig. 6: best, median and worst test case of RA-U-Net's first seed, every model's
    first-seed prediction, RA-U-Net's finest attention map."""
    seed = min(r.seed for r in plan)
    checkpoints = {r.model: r.folder / "best" for r in plan if r.seed == seed}
    column = results["headline"][0]  # Dice
    values = {n: v[column] for n, v in results["per_model"][runs.PROPOSED][0].items()}
    rows, titles, labels = cases.comparison_rows(
        checkpoints, runs.LABELS, runs.PROPOSED, cases.pick_cases(values), layout, root,
        cfg.convert_channels)
    return figures.case_grid(rows, titles, labels, path)


def validation_curves(plan: list) -> dict[str, dict[int, tuple[list, list]]]:
    out: dict[str, dict] = {}
    for run in plan:
        rows = read_csv(run.folder / "log.csv")
        out.setdefault(runs.LABELS[run.model], {})[run.seed] = (
            [int(r["epoch"]) for r in rows], [float(r["val_dice"]) for r in rows])
    return out


def split_counts(layout: str, root: Path, split_seed: int) -> str:
    from ..data import build_dataset

    counts = []
    for split in ("train", "val", "test"):
        kw = {"seed": split_seed} if layout in ("folder", "brats2021") else {}
        if layout == "brats2021":
            kw["index_slices"] = False
        counts.append(f"{split} {len(build_dataset(layout, root, split, **kw).names)}")
    return ", ".join(counts) + (" cases" if layout == "brats2021" else " images")


def run_info(cfg, plan, layout: str, root: Path, done: dict, wall_s: float) -> dict:
    prep = read_preprocessing(plan[0].folder / "best")
    size = prep.get("image_size") or [prep.get("crop")] * 2
    return {"config": cfg.to_dict(), "layout": layout, "root": str(root),
            "counts": split_counts(layout, root, cfg.split_seed),
            "labels": [runs.LABELS[m] for m in runs.model_names(cfg)],
            "input": "x".join(map(str, size)), "hardware": report.hardware(cfg.device),
            "train_s": sum(runs.training_seconds(r) for r in plan), "wall_s": wall_s,
            "done": done}
