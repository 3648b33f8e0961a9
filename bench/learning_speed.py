"""Learning speed at the paper's recipe (Adam, lr 1e-4, Dice + focal, augmentation): which
default slows the first steps down?

Each run is the package's own training engine (:class:`raunet_fast.engine.trainer.Trainer`)
on generated BraTS-like volumes (``make_brats2021``, 64 x 64 x 32, slices cropped 64 x 64,
three sigmoid regions), a small U-Net (``--base`` 16, ``--depth`` 4), batch 8, ``--epochs``
epochs of ``--steps`` steps (3 x 30 = 90 steps), the validation Dice of the last epoch
reported. A *variant* changes one thing against the package defaults after the model is
built (or in the run's configuration):

* ``default``       - the package as it is (dropout 0.1, plateau scheduler, ...);
* ``dropout0``      - ``--dropout 0``;
* ``torch-init``    - every layer re-initialised by PyTorch's own ``reset_parameters``;
* ``head-init``     - only the 1 x 1 output convolution re-initialised by PyTorch;
* ``hidden-init``   - every layer but the output convolution re-initialised by PyTorch;
* ``bn-momentum``   - BatchNorm momentum 0.01 instead of 0.1;
* ``smooth``        - Dice smoothing 1e-5 instead of 1 (numerator and denominator);
* ``cosine`` / ``none`` - the other schedulers.

    python bench/learning_speed.py --models unet attention-unet --seeds 0 1 \\
        --variants default dropout0 torch-init --out bench/results/cpu-20261208/learning_speed.md

Each run prints one line (and is appended to ``--out`` as a table row when ``--out`` is
given); runs take about 20-40 s each on one CPU thread.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

VARIANTS = ("default", "dropout0", "torch-init", "head-init", "hidden-init", "bn-momentum",
            "smooth", "cosine", "none")


def torch_reset(model: nn.Module, which: str) -> None:
    """Re-initialise the model's layers with PyTorch's own defaults: ``which`` is ``all``,
    ``head`` (the output convolution only) or ``hidden`` (all but the output convolution)."""
    for name, m in model.named_modules():
        if m is model or not hasattr(m, "reset_parameters"):
            continue
        is_head = name == "head" or name.startswith("aux_heads.")
        if which == "all" or (which == "head") == is_head:
            m.reset_parameters()


def apply_variant(model: nn.Module, variant: str) -> None:
    if variant == "torch-init":
        torch_reset(model, "all")
    elif variant == "head-init":
        torch_reset(model, "head")
    elif variant == "hidden-init":
        torch_reset(model, "hidden")
    elif variant == "bn-momentum":
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.01


def run_one(data: Path, work: Path, model: str, variant: str, seed: int, args) -> dict:
    """One training run through the package's engine; returns its last log row."""
    from raunet_fast.config import TrainConfig
    from raunet_fast.engine.trainer import Trainer

    class VariantTrainer(Trainer):
        def build_model(self, last):
            super().build_model(last)
            apply_variant(self.model, variant)

        def setup(self):
            super().setup()
            if variant == "smooth":
                self.loss_fn.smooth = 1e-5

    cfg = TrainConfig(
        data_root=str(data), out=str(work / f"{model}-{variant}-{seed}"), model=model,
        dataset=args.kind, crop=64, image_size=None if args.kind == "brats2021" else (64, 64), epochs=args.epochs, max_steps_per_epoch=args.steps,
        batch_size=8, base_channels=args.base, depth=args.depth, lr=args.lr, seed=seed,
        dropout=0.0 if variant == "dropout0" else TrainConfig.dropout,
        scheduler=variant if variant in ("cosine", "none") else TrainConfig.scheduler,
        num_workers=0, progress=False, threads=args.threads, device="cpu")
    t0 = time.perf_counter()
    trainer = VariantTrainer(cfg)
    trainer.fit()
    row = dict(trainer.rows[-1])
    row["seconds"] = time.perf_counter() - t0
    row["curve"] = [round(r["val_dice"], 4) for r in trainer.rows]
    return row


def make_data(root: Path, kind: str, cases: int) -> Path:
    from raunet_fast.data.generate import make_brats2021, make_isic2018

    data = root / kind
    if not data.is_dir() and kind == "brats2021":
        make_brats2021(data, cases=cases, shape=(64, 64, 32), seed=0)
    elif not data.is_dir():
        make_isic2018(data, cases=cases, shape=(64, 64), seed=0)
    return data


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", default="brats2021", choices=("brats2021", "isic2018"),
                   help="generated data: BraTS-like volumes (3 regions) or ISIC-like lesions")
    p.add_argument("--models", nargs="+", default=["unet", "attention-unet"])
    p.add_argument("--variants", nargs="+", default=["default", "dropout0", "torch-init"],
                   choices=VARIANTS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=30, help="steps per epoch")
    p.add_argument("--base", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--cases", type=int, default=20, help="generated volumes (15%% val)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", type=Path, default=None,
                   help="folder for the generated data (kept; default: a temporary one)")
    p.add_argument("--out", type=Path, default=None, help="markdown file to append rows to")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(args.data or Path(tmp), args.kind, args.cases)
        for model in args.models:
            for variant in args.variants:
                for seed in args.seeds:
                    row = run_one(data, Path(tmp) / "runs", model, variant, seed, args)
                    line = (f"| {args.kind} | {model} | {variant} | {args.lr:g} | {seed} | "
                            f"{row['val_dice']:.4f} | {' / '.join(map(str, row['curve']))} | "
                            f"{row['seconds']:.0f} |")
                    print(line, flush=True)
                    if args.out is not None:
                        with open(args.out, "a") as f:
                            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
