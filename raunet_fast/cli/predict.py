"""``raunet-fast predict``: parse -> :class:`~raunet_fast.config.PredictConfig` -> PredictionRun."""
from __future__ import annotations

import sys
from contextlib import nullcontext

from ..config import PredictConfig
from ..io.lock import folder_lock
from .common import add_parser, resolve


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def run(args) -> int:
    cfg = resolve(args)
    if cfg is None:
        return 0
    from ..engine import PredictionRun
    from ..engine.distributed import env_rank

    main_rank = env_rank() == 0  # under torchrun, rank 0 holds the folder and reports
    with folder_lock(cfg.out, "predict") if main_rank else nullcontext():
        s = PredictionRun(cfg).run()
    if not main_rank:
        return 2 if s.get("errors") else 0
    n = len(s["files"])
    if s["kind"] == "volume":
        what = f"{_count(n, 'segmentation')} for {_count(s['cases'], 'volume')}"
        if s["skipped"]:
            what += f" ({_count(s['skipped'], 'volume')} already done, skipped)"
        rate = f"{s['images_per_s']:.2f} volumes/s"
    elif s["kind"] == "brats":
        what = f"{_count(n, 'segmentation')} for {_count(s['cases'], 'case')}"
        rate = (f"{s['cases'] / max(s['seconds'], 1e-9):.2f} cases/s, "
                f"{s['images_per_s']:.1f} slices/s")
    else:
        what = f"{_count(n, 'file')} for {_count(s['images'], 'image')}"
        if s["skipped"]:
            what += f" ({_count(s['skipped'], 'image')} already done, skipped)"
        rate = f"{s['images_per_s']:.1f} images/s"
    print(f"predict: wrote {what} to {cfg.out} in {s['seconds']:.2f}s ({rate}, {s['model']} "
          f"model)")
    for error in s.get("errors", ()):
        print(f"raunet-fast predict: skipped: {error}", file=sys.stderr)
    if s.get("errors"):
        print(f"raunet-fast predict: error: {_count(len(s['errors']), 'input')} could not be "
              f"read (listed above)", file=sys.stderr)
        return 2
    return 0


def add_cli(sub) -> None:
    p = add_parser(sub, "predict", PredictConfig,
                   help="write masks for new images or BraTS cases (no ground truth)",
                   description="Run a trained checkpoint on new data and write masks: for 2-D "
                               "checkpoints OUT/<stem>_mask.png (0/255, at each image's own "
                               "size; a label map for softmax checkpoints), for BraTS "
                               "OUT/<case>_pred_seg.nii.gz (labels 0/1/2/4, the flair's affine "
                               "and header), for 3-D NIfTI-folder checkpoints OUT/<case>.nii.gz "
                               "(whole volumes in 3-D windows). Preprocessing comes from the checkpoint; the "
                               "resolved configuration is written to OUT/predict_config.json.")
    p.set_defaults(func=run)
