"""Test cases as pictures: the input, the truth, each model's prediction and RA-U-Net's
finest attention map, for chosen cases (best, median and worst for RA-U-Net in a
reproduce; the first test images in the demo). 2-D data are shown at the decoded image's
resolution; a BraTS case as its axial slice with the largest whole tumour, FLAIR image,
WT region."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class CaseView:
    name: str
    image: np.ndarray          # H x W x 3 or H x W, in [0, 1]
    truth: np.ndarray          # H x W bool
    x: torch.Tensor            # C x h x w network input
    to_full: Callable          # N x K x h x w network-size maps -> N x K x H x W


def pick_cases(values: dict[str, float]) -> list[tuple[str, str]]:
    """(label, case) of the best, median and worst case by ``values`` (one per case;
    fewer when there are fewer cases)."""
    order = sorted(values, key=lambda n: (-values[n], n))
    picks = [("best", order[0]), ("median", order[(len(order) - 1) // 2]),
             ("worst", order[-1])]
    seen, out = set(), []
    for label, name in picks:
        if name not in seen:
            seen.add(name)
            out.append((label, name))
    return out


def load_views(dataset: str, root: Path, names: list[str], prep: dict, in_channels: int,
               convert_channels: bool = False) -> list[CaseView]:
    """The test-split cases ``names`` prepared as the checkpoint's ``prep`` says."""
    if dataset == "brats2021":
        return [_brats_view(root, n, prep) for n in names]
    from ..data import build_dataset
    from ..data.common import resize_pair

    kw = {"seed": prep.get("split_seed", 0), "channels": in_channels} \
        if dataset == "folder" else {}
    ds = build_dataset(dataset, root, "test", image_size=None, require_masks=True,
                       convert_channels=convert_channels, **kw)
    size = tuple(prep["image_size"])
    views = []
    for name in names:
        image, mask = ds.load_case(ds.names.index(name), draft_size=size)
        x, _ = resize_pair(image, None, size)
        hw = image.shape[:2]
        views.append(CaseView(name, image.astype(np.float32) / 255.0, mask, x,
                              lambda t, hw=hw: F.interpolate(t.float(), size=hw,
                                                             mode="bilinear")))
    return views


def _brats_view(root: Path, name: str, prep: dict) -> CaseView:
    from ..data.brats import BraTS2021, prepare_slices, restore_slices

    ds = BraTS2021(root, "test", crop=prep.get("crop"), image_size=prep.get("image_size"),
                   skip_empty=False, seed=prep.get("split_seed", 0), index_slices=False)
    case = ds.case(ds.names.index(name))
    wt = np.asarray(case["seg"]) > 0                                   # Z x X x Y
    z = int(np.argmax(wt.reshape(wt.shape[0], -1).sum(axis=1)))
    vol = torch.from_numpy(np.asarray(case["image"][z:z + 1], dtype=np.float32))
    flair = vol[0, 0].numpy()
    span = float(flair.max() - flair.min()) or 1.0
    full = tuple(vol.shape[-2:])
    return CaseView(f"{name} z={z}", (flair - flair.min()) / span, wt[z],
                    prepare_slices(vol, prep.get("crop"), prep.get("image_size"))[0],
                    lambda t: restore_slices(t, full, prep.get("crop")))


@torch.no_grad()
def predict_view(model, view: CaseView, threshold: float = 0.5):
    """(prediction H x W bool of the first channel, finest attention map H x W in [0, 1]
    or None for a model without gates)."""
    device = next(model.parameters()).device
    logits, alphas = model.eval()(view.x[None].to(device), return_attention=True)
    cut = math.log(threshold / (1 - threshold))
    pred = (view.to_full(logits.cpu())[0, 0] > cut).numpy()
    if not alphas:
        return pred, None
    alpha = view.to_full(alphas[0].cpu())[0, 0].clamp(0, 1).numpy()
    return pred, alpha


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    from ..metrics import dice as dice_score

    return dice_score(pred, truth)


def comparison_rows(checkpoints: dict[str, Path], labels: dict[str, str], proposed: str,
                    picks: list[tuple[str, str]], dataset: str, root: Path,
                    convert_channels: bool = False):
    """Rows of panels for :func:`~raunet_fast.reproduce.figures.case_grid`: per picked case
    the input, the truth, each model's prediction over the input (its Dice in a corner) and
    the proposed model's finest attention map; returns (rows, column titles, row labels)."""
    from ..hub import from_pretrained
    from ..io.checkpoints import read_preprocessing

    models = {m: from_pretrained(ck, map_location="cpu").eval() for m, ck in checkpoints.items()}
    prep = read_preprocessing(checkpoints[proposed])
    first = models[proposed]
    views = load_views(dataset, root, [n for _, n in picks], prep, first.in_channels,
                       convert_channels)
    rows = []
    for view in views:
        row = [{"kind": "image", "image": view.image}, {"kind": "mask", "mask": view.truth}]
        alpha = None
        for m, model in models.items():
            pred, a = predict_view(model, view, float(prep.get("threshold", 0.5)))
            alpha = a if m == proposed else alpha
            row.append({"kind": "overlay", "image": view.image, "truth": view.truth,
                        "pred": pred, "note": f"Dice {dice(pred, view.truth):.3f}"})
        row.append({"kind": "heat", "image": view.image,
                    "map": alpha if alpha is not None else np.zeros(view.truth.shape)})
        rows.append(row)
    titles = ["input", "ground truth", *(labels[m] for m in models),
              f"{labels[proposed]} attention"]
    row_labels = [f"{label}: {view.name}" for (label, _), view in zip(picks, views)]
    return rows, titles, row_labels
