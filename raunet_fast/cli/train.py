"""``raunet-fast train``: parse -> :class:`~raunet_fast.config.TrainConfig` -> Trainer."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from ..config import TrainConfig
from ..io.lock import folder_lock
from .common import add_parser, resolve


def run(args) -> int:
    cfg = resolve(args)
    if cfg is None:
        return 0
    from ..engine import train
    from ..engine.distributed import env_rank

    main_rank = env_rank() == 0  # under torchrun, rank 0 holds the folder and reports
    with folder_lock(cfg.out, "train") if main_rank else nullcontext():
        result = train(cfg)
    if main_rank:
        print(f"best val Dice {result['best_val_dice']:.4f} at epoch {result['best_epoch']}; "
              f"weights in {result['best']} (best) and {result['last']} (last), log in "
              f"{Path(result['run_dir']) / 'log.csv'}")
    return 0


def add_cli(sub) -> None:
    p = add_parser(sub, "train", TrainConfig,
                   help="train a model on ISIC 2018, BraTS 2021, an image folder or (3-D) a "
                        "NIfTI folder",
                   description="Train a model of the family with Adam and Dice+Focal loss, "
                               "augmentation and early stopping on validation Dice. Writes "
                               "RUN_DIR/best/, RUN_DIR/last/, RUN_DIR/log.csv and the resolved "
                               "configuration RUN_DIR/run.json; --resume continues an "
                               "interrupted run.")
    p.set_defaults(func=run)
