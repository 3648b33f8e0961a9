"""``raunet-fast evaluate``: parse -> :class:`~raunet_fast.config.EvaluateConfig` -> Evaluator."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from ..config import EvaluateConfig
from ..io.lock import folder_lock
from .common import add_parser, resolve


def run(args) -> int:
    cfg = resolve(args)
    if cfg is None:
        return 0
    from ..engine import Evaluator, format_summary
    from ..engine.distributed import env_rank

    main_rank = env_rank() == 0  # under torchrun, rank 0 holds the folder and reports
    with folder_lock(cfg.out, "evaluate") if cfg.out is not None and main_rank else nullcontext():
        summary = Evaluator(cfg).run()
    if not main_rank:
        return 0
    print(format_summary(summary))
    if cfg.fused or cfg.tta:
        print(f"scored with the {summary['model']} model")
    if cfg.out is not None:
        out = Path(cfg.out)
        print(f"per-case scores in {out / 'cases.csv'}, summary in {out / 'summary.json'}")
    return 0


def add_cli(sub) -> None:
    p = add_parser(sub, "evaluate", EvaluateConfig,
                   help="score a checkpoint on a data split (cases.csv, summary.json)",
                   description="Score a trained checkpoint on a split: Dice, Jaccard, Hausdorff "
                               "and HD95 per case (BraTS: per region WT/TC/ET on 3-D volumes; "
                               "3-D checkpoints: whole volumes in 3-D windows, per region in "
                               "mm), "
                               "written to OUT/cases.csv and OUT/summary.json with the resolved "
                               "configuration in OUT/config.json.")
    p.set_defaults(func=run)
