"""Tables and the written report of a reproduce: ``table1.md`` / ``table1.csv`` (per model
mean ± std over seeds, size and speed, the paper's Table 1 beside), ``table1_paired.csv``
(RA-U-Net against each baseline per case) and ``report.md``. No number is taken from the
paper except in the columns labelled as the paper's."""
from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any

from ..hub import atomic_write_bytes
from ..io.tables import write_csv
from .stats import METRICS

#: the paper's Table 1 (Dice and Jaccard in %, HD in pixels), shown only as its own columns
PAPER_TABLE1 = {"unet": {"dice": 86.1, "jaccard": 78.4, "hd": 7.6},
                "attention-unet": {"dice": 88.7, "jaccard": 81.1, "hd": 6.2},
                "raunet": {"dice": 91.4, "jaccard": 84.9, "hd": 4.8}}
NAMES = {"dice": "Dice (%)", "jaccard": "Jaccard (%)", "hd": "HD", "hd95": "HD95"}


def title(column: str) -> str:
    """Table / figure heading of a headline column: distances in mm for BraTS (region
    columns), in pixels for 2-D data."""
    metric = column.split("_")[0]
    unit = " (mm)" if "_" in column else " (px)"
    return NAMES[metric] + (unit if metric in LOWER_IS_BETTER else "")
LOWER_IS_BETTER = ("hd", "hd95")


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def pm(s: dict[str, float]) -> str:
    return f"{fmt(s['mean'])} ± {fmt(s['std'])}"


def table_rows(summary: dict, cost: dict, labels: dict, columns: list[str]) -> list[dict]:
    """table1.csv: our rows (``source`` ours) then the paper's (``source`` paper)."""
    rows = []
    for m, s in summary.items():
        row: dict[str, Any] = {"model": labels[m], "source": "ours",
                               "seeds": s[columns[0]]["seeds"]}
        for c in columns:
            row[f"{c}_mean"], row[f"{c}_std"] = s[c]["mean"], s[c]["std"]
        row.update({k: cost[m][k] for k in ("params", "gflop_per_image", "images_per_s")})
        rows.append(row)
    for m, paper in PAPER_TABLE1.items():
        if m in summary:
            rows.append({"model": labels[m], "source": "paper (Table 1)",
                         **{f"{k}_paper": v for k, v in paper.items()}})
    return rows


def write_tables(out: Path, summary: dict, cost: dict, paired: list[dict], labels: dict,
                 columns: list[str], headline: list[str]) -> None:
    rows = table_rows(summary, cost, labels, columns)
    fields = ["model", "source", "seeds", *(f"{c}_{k}" for c in columns for k in ("mean", "std")),
              "params", "gflop_per_image", "images_per_s", "dice_paper", "jaccard_paper",
              "hd_paper"]
    write_csv(out / "table1.csv", rows, fields, float_format=".10g")
    write_csv(out / "table1_paired.csv", paired, float_format=".10g")
    text = markdown_table(summary, cost, labels, headline)
    if columns != headline:  # BraTS: every region
        text += "\n" + region_table(summary, labels, columns)
    text += "\n" + paired_table(paired)
    atomic_write_bytes(out / "table1.md", text.encode())


def markdown_table(summary: dict, cost: dict, labels: dict, headline: list[str]) -> str:
    head = ["model", *(title(c) for c in headline), "params", "GFLOP / image",
            "images / s", "paper Dice (%)", "paper Jaccard (%)", "paper HD (px)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, s in summary.items():
        paper = PAPER_TABLE1.get(m, {})
        cells = [labels[m], *(pm(s[c]) for c in headline), f"{cost[m]['params']:,}",
                 f"{cost[m]['gflop_per_image']:.4g}" if cost[m]["gflop_per_image"] else "n/a",
                 fmt(cost[m]["images_per_s"], 1),
                 *(fmt(paper.get(k), 1) for k in ("dice", "jaccard", "hd"))]
        lines.append("| " + " | ".join(cells) + " |")
    return ("Mean ± standard deviation over seeds of each run's mean over the test cases. "
            "The paper columns are copied from its Table 1.\n\n" + "\n".join(lines) + "\n")


def region_table(summary: dict, labels: dict, columns: list[str]) -> str:
    head = ["model", *columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, s in summary.items():
        lines.append("| " + " | ".join([labels[m], *(pm(s[c]) for c in columns)]) + " |")
    return "Per region:\n\n" + "\n".join(lines) + "\n"


def paired_table(paired: list[dict]) -> str:
    head = ["comparison", "metric", "mean difference", "95 % bootstrap CI", "Wilcoxon p",
            "cases"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in paired:
        lines.append(f"| {p['comparison']} | {p['metric']} | {fmt(p['mean_diff'])} | "
                     f"[{fmt(p['ci_low'])}, {fmt(p['ci_high'])}] | {fmt(p['wilcoxon_p'], 4)} "
                     f"| {p['cases']} |")
    return ("Paired per test case (each case's score averaged over seeds first), RA-U-Net "
            "minus the baseline:\n\n" + "\n".join(lines) + "\n")


def verdict(p: dict, s_prop: dict, s_base: dict) -> str:
    """One plain sentence on one comparison of one metric."""
    metric = p["metric"].split("_")[0]
    better = p["mean_diff"] < 0 if metric in LOWER_IS_BETTER else p["mean_diff"] > 0
    gap = abs(s_prop["mean"] - s_base["mean"])
    noise = max(s_prop["std"], s_base["std"])
    head = (f"{p['comparison']}, {p['metric']}: mean difference {fmt(p['mean_diff'])} "
            f"(95 % CI [{fmt(p['ci_low'])}, {fmt(p['ci_high'])}], Wilcoxon p "
            f"{fmt(p['wilcoxon_p'], 4)})")
    if math.isnan(p["ci_low"]) or p["ci_low"] <= 0 <= p["ci_high"]:
        return head + ": the interval includes zero, so these cases show no difference."
    if not p["wilcoxon_p"] < 0.05:
        return head + (": the interval excludes zero but the signed-rank test does not "
                       "reject equality at the 5 % level, so no difference is shown.")
    if math.isnan(noise):
        return head + (f": RA-U-Net {'better' if better else 'worse'} on these cases; with "
                       f"one seed the seed-to-seed noise is unknown.")
    if gap <= noise:
        return head + (f": the gap between the models' means ({fmt(gap)}) is within the "
                       f"seed-to-seed standard deviation ({fmt(noise)}), so the models do "
                       f"not differ beyond seed noise.")
    return head + f": RA-U-Net {'better' if better else 'worse'}, beyond seed noise."


def hardware(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    text = (f"{platform.platform()}, {os.cpu_count()} CPU cores ({cpu}), torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads")
    if device != "cpu" and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def conclusion(paired: list[dict], summary: dict, proposed: str, key: dict) -> list[str]:
    """The verdict lines of the headline metrics, then one overall sentence on Dice."""
    lines, dice_ok = [], []
    for p in paired:
        s_base = summary[key[p["comparison"]]][p["metric"]]
        line = verdict(p, summary[proposed][p["metric"]], s_base)
        lines.append(f"- {line}")
        if p["metric"].split("_")[0] == "dice":
            dice_ok.append(line.endswith("better, beyond seed noise."))
    if dice_ok and all(dice_ok):
        lines.append("\nOverall: on these data RA-U-Net has a higher Dice than every baseline, "
                     "beyond seed noise and with intervals that exclude zero.")
    else:
        lines.append("\nOverall: this run does not show RA-U-Net ahead of every baseline in "
                     "Dice beyond seed noise with intervals excluding zero (see above).")
    return lines


def write_report(out: Path, info: dict, table_md: str, lines: list[str]) -> Path:
    """``report.md``: data, split, budget, seeds, hardware, time, the table, the verdict."""
    c = info["config"]
    text = [
        "# RA-U-Net against its baselines, rerun", "",
        "## Data", "",
        f"- data set: {c['dataset']} (read as {info['layout']}) from `{info['root']}`"
        + (" - synthetic lesions, not patient images: the result says nothing about ISIC "
           "or BraTS" if c["dataset"] == "generated" else ""),
        f"- split: {info['counts']} (the same for every run; split seed {c['split_seed']})",
        "", "## Budget (the same for every model)", "",
        f"- models: {', '.join(info['labels'])}; seeds {list(range(c['seeds']))}",
        f"- epochs: {c['epochs']} (early stopping after {c['patience']} without "
        f"improvement), batch {c['batch_size']}, steps per epoch: "
        f"{c['max_steps_per_epoch'] or 'all'}, "
        f"Adam lr {c['lr']}, Dice + Focal loss, flips / rotations / elastic augmentation",
        f"- network: base channels {c['base_channels']}, depth {c['depth']}, input "
        f"{info['input']}",
        "", "## Hardware and time", "",
        f"- {info['hardware']}",
        f"- training: {info['train_s']:.0f} s over all runs (their logged epochs); this "
        f"invocation: {info['wall_s']:.0f} s wall time, runs trained now: "
        f"{len(info['done']['trained'])}, kept from before: {len(info['done']['kept'])}",
        "", "## Results", "", table_md,
        "## What this run shows", "", *lines, "",
        "## Files", "",
        "table1.md, table1.csv, table1_paired.csv, fig5_metrics.png, fig6_cases.png, "
        "curves.png; per run `runs/<model>-seed<k>/`: run.json (config), log.csv (log), "
        "best/, last/, test/cases.csv and test/summary.json (results).", ""]
    atomic_write_bytes(out / "report.md", "\n".join(text).encode())
    return out / "report.md"
