"""The figures of a reproduce and of the demo, drawn with matplotlib (the ``plots`` extra).

Every figure is a grid of square panels of :data:`PANEL_IN` inches at :data:`DPI` dots per
inch, laid out by hand (no tight bounding box), so a figure of R x C panels is exactly
``C * PANEL_IN * DPI`` pixels wide and ``R * PANEL_IN * DPI`` high. Files are written
atomically."""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from ..errors import require
from ..hub import atomic_write_bytes

PANEL_IN = 2.6
DPI = 80
COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")
TRUTH_COLOUR, PRED_COLOUR = "#00e000", "#ff2020"


def plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def new_grid(rows: int, cols: int, margins=(0.04, 0.04, 0.04, 0.14)):
    """A figure of ``rows x cols`` square panels and their axes (row-major lists);
    ``margins``: left, right, bottom, top fraction of each panel left free."""
    require("matplotlib", "plots", "figures")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(cols * PANEL_IN, rows * PANEL_IN), dpi=DPI)
    left, right, bottom, top = margins
    axes = [[fig.add_axes(((c + left) / cols, (rows - 1 - r + bottom) / rows,
                           (1 - left - right) / cols, (1 - bottom - top) / rows))
             for c in range(cols)] for r in range(rows)]
    return fig, axes


def save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def bar_plot(summary: dict, columns: list[str], titles: list[str], path: Path,
             paper: dict | None = None) -> Path:
    """One panel (group) per metric, one bar per model: mean over seeds with the standard
    deviation as error bar; ``paper`` values, where given, as black markers."""
    labels = list(summary)
    fig, axes = new_grid(1, len(columns), margins=(0.2, 0.04, 0.22, 0.14))
    for ax, col, title in zip(axes[0], columns, titles):
        means = [summary[m][col]["mean"] for m in labels]
        stds = [0.0 if math.isnan(summary[m][col]["std"]) else summary[m][col]["std"]
                for m in labels]
        x = np.arange(len(labels))
        ax.bar(x, means, yerr=stds, capsize=3, color=COLOURS[:len(labels)])
        marks = [(i, paper[m][col]) for i, m in enumerate(labels)
                 if paper and col in paper.get(m, {})]
        if marks:
            ax.plot(*zip(*marks), "kx", label="paper")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
    return save(fig, path)


def curves(logs: dict[str, dict[int, tuple[list, list]]], path: Path) -> Path:
    """Validation Dice per epoch: one panel per model, one line per seed."""
    fig, axes = new_grid(1, len(logs), margins=(0.2, 0.04, 0.18, 0.14))
    for ax, (label, seeds) in zip(axes[0], logs.items()):
        for k, (seed, (epochs, dice)) in enumerate(sorted(seeds.items())):
            ax.plot(epochs, dice, marker="o", ms=2, color=COLOURS[k % len(COLOURS)],
                    label=f"seed {seed}")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("epoch", fontsize=7)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6, loc="lower right")
        ax.tick_params(labelsize=7)
    return save(fig, path)


def _show(ax, image) -> None:
    ax.imshow(image, cmap=None if np.ndim(image) == 3 else "gray")


def _contour(ax, mask, colour: str) -> None:
    if np.any(mask) and not np.all(mask):  # a contour needs both sides
        ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors=colour,
                   linewidths=1.2)


def draw_panel(ax, panel: dict) -> None:
    """``panel``: kind ``image`` (``image``), ``mask`` (``mask``), ``overlay`` (``image``
    with the ``truth`` contour in green and the ``pred`` contour in red) or ``heat``
    (``map`` in [0, 1] over a dimmed ``image``); ``note``: a line of text in a corner."""
    kind = panel["kind"]
    if kind == "mask":
        ax.imshow(panel["mask"], cmap="gray", vmin=0, vmax=1)
    elif kind == "heat":
        ax.imshow(np.asarray(panel["image"], dtype=float) * 0.4,
                  cmap=None if np.ndim(panel["image"]) == 3 else "gray", vmin=0, vmax=1)
        ax.imshow(panel["map"], cmap="jet", vmin=0, vmax=1, alpha=0.6)
    else:
        _show(ax, panel["image"])
        if kind == "overlay":
            _contour(ax, panel["truth"], TRUTH_COLOUR)
            _contour(ax, panel["pred"], PRED_COLOUR)
    if panel.get("note"):
        ax.text(0.02, 0.02, panel["note"], transform=ax.transAxes, fontsize=7,
                color="black", bbox={"facecolor": "white", "alpha": 0.7, "pad": 1})
    ax.set_xticks([])
    ax.set_yticks([])


def case_grid(rows: list[list[dict]], titles: list[str], row_labels: list[str],
              path: Path) -> Path:
    """Test cases as rows of panels (:func:`draw_panel`), a title per column."""
    fig, axes = new_grid(len(rows), len(titles), margins=(0.1, 0.02, 0.02, 0.12))
    for r, (panels, label) in enumerate(zip(rows, row_labels)):
        for c, (ax, panel) in enumerate(zip(axes[r], panels)):
            draw_panel(ax, panel)
            ax.set_title(titles[c] if r == 0 else "", fontsize=8)
        axes[r][0].set_ylabel(label, fontsize=7)
    return save(fig, path)
