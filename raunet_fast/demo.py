"""``raunet-fast demo``: the whole pipeline on built-in data, on a CPU, in a few minutes.

1. writes a small synthetic data set in the ISIC 2018 task 1 layout (``make-data``),
2. scores an untrained RA-U-Net on its test split (the baseline),
3. trains a small RA-U-Net (``train``: Adam, Dice + Focal, augmentation, early stopping),
4. scores the best checkpoint on the test split (``evaluate``),
5. prints a results table and where every file is, draws ``cases.png`` (input, truth,
   prediction and attention map of a few test images; the ``plots`` extra) and prints the
   fused inference model's speed against the reference model's on this machine.

Everything lands in one folder (default ``./raunet-demo``); running the demo again
replaces what an earlier demo wrote there.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

MARKER = ".raunet-demo"


def _prepare_folder(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ValueError(f"{out} exists and was not written by raunet-fast demo; choose another "
                         f"--out (the demo replaces the contents of its folder)")
    for sub in ("data", "run", "untrained", "eval", "eval-untrained"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    (out / "cases.png").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("folder written by `raunet-fast demo`; safe to delete\n")


def run_demo(out: str | Path = "raunet-demo", cases: int = 160, epochs: int = 20,
             image_size: int = 64, base_channels: int = 8, depth: int = 4, batch_size: int = 8,
             lr: float = 2e-3, seed: int = 0, device: str = "cpu", progress: bool = True,
             threads: int | None = None) -> dict:
    """Run the demo; returns the untrained and trained test summaries and timings."""
    import torch

    from .config import TrainConfig
    from .data.generate import make_isic2018
    from .engine import evaluate

    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    t_start = time.perf_counter()
    _prepare_folder(out)
    print(f"[1/4] writing {cases} synthetic dermoscopy cases (ISIC 2018 layout) to {out / 'data'}")
    t0 = time.perf_counter()
    counts = make_isic2018(out / "data", cases, shape=(96, 128), seed=seed)
    t_data = time.perf_counter() - t0
    size = (image_size, image_size)
    print("[2/4] scoring an untrained RA-U-Net on the test split (baseline)")
    _save_untrained(out / "untrained", size, base_channels, depth, seed)
    before = evaluate(out / "untrained", "isic2018", out / "data", "test", out / "eval-untrained",
                      device=device, progress=False)
    t0 = time.perf_counter()
    result, after = _train_and_score(out, counts, TrainConfig(
        data_root=str(out / "data"), out=str(out / "run"), model="raunet", dataset="isic2018",
        epochs=epochs, batch_size=batch_size, image_size=size, base_channels=base_channels,
        depth=depth, dropout=0.0, lr=lr, patience=max(epochs, 1), seed=seed, num_workers=0,
        device=device, progress=progress, cache_images=True, scheduler="none"))
    t_train = time.perf_counter() - t0
    summary = {"untrained": before, "trained": after, "train": result,
               "pictures": _pictures(out, device)}
    summary["seconds"] = {"data": t_data, "train": t_train,
                          "total": time.perf_counter() - t_start}
    _report(out, counts, before, after, result, summary["seconds"])
    summary["speed"] = _speed(out / "run" / "best", size, batch_size, device)
    return summary


def _train_and_score(out: Path, counts: dict, cfg) -> tuple[dict, dict]:
    """Steps 3 and 4: train as ``cfg`` says, score the best checkpoint on the test split."""
    from .engine import evaluate, train

    print(f"[3/4] training RA-U-Net (base {cfg.base_channels}, depth {cfg.depth}, "
          f"{cfg.image_size[0]}x{cfg.image_size[1]}) for {cfg.epochs} epochs on "
          f"{counts['train']} images, validating on {counts['val']}")
    result = train(cfg)
    print(f"[4/4] scoring the best checkpoint (epoch {result['best_epoch']}) on the "
          f"{counts['test']} test images")
    after = evaluate(out / "run" / "best", "isic2018", out / "data", "test", out / "eval",
                     device=cfg.device, progress=False, save_predictions=True)
    return result, after


def _pictures(out: Path, device: str, count: int = 4) -> Path | None:
    """``cases.png``: the first ``count`` test images as rows of input, truth, prediction
    (with its Dice) and the finest attention map; None, with one line said, when the
    ``plots`` extra (matplotlib) is missing."""
    from .engine.device import resolve_device
    from .hub import from_pretrained
    from .io.checkpoints import read_preprocessing
    from .io.tables import read_csv
    from .reproduce import cases, figures

    if not figures.plots_available():
        print('pictures need the plots extra: pip install "raunet-fast[plots]"; skipping '
              'cases.png')
        return None
    best = out / "run" / "best"
    model = from_pretrained(best, map_location=resolve_device(device)).eval()
    names = [r["case"] for r in read_csv(out / "eval" / "cases.csv")][:count]
    views = cases.load_views("isic2018", out / "data", names, read_preprocessing(best), 3)
    rows, labels = [], []
    for view in views:
        pred, alpha = cases.predict_view(model, view)
        rows.append([{"kind": "image", "image": view.image},
                     {"kind": "mask", "mask": view.truth},
                     {"kind": "overlay", "image": view.image, "truth": view.truth,
                      "pred": pred, "note": f"Dice {cases.dice(pred, view.truth):.3f}"},
                     {"kind": "heat", "image": view.image, "map": alpha}])
        labels.append(view.name)
    titles = ["input", "ground truth", "prediction", "attention (finest gate)"]
    return figures.case_grid(rows, titles, labels, out / "cases.png")


def _speed(checkpoint: Path, size, batch_size: int, device: str) -> dict:
    """Images per second of the trained model, reference and fused, on this machine (one
    batch at the training size, median of timed calls); printed."""
    import torch

    from .bench_harness import Timer
    from .engine.device import resolve_device
    from .engine.predictor import build_forward
    from .hub import from_pretrained

    dev = resolve_device(device)
    model = from_pretrained(checkpoint, map_location=dev).eval()
    x = torch.rand(batch_size, model.in_channels, *size, device=dev)
    timer = Timer(dev, warmup=2, iters=10, head_start=False)
    speed = {}
    for fused in (False, True):
        forward, name = build_forward(model, dev, fused=fused, dtype=None)
        speed[name] = batch_size / (timer(lambda: forward(x)) / 1e3)
    (ref_name, ref), (fast_name, fast) = speed.items()
    print(f"\nspeed on this machine ({dev.type}, batches of {batch_size} at {size[0]}x{size[1]}): "
          f"{ref_name} model {ref:,.0f} images/s, {fast_name} model {fast:,.0f} images/s "
          f"({fast / ref:.2f}x)")
    return speed


def _save_untrained(folder: Path, size, base_channels: int, depth: int, seed: int) -> None:
    """An untrained RA-U-Net checkpoint with the demo's preprocessing (the baseline)."""
    import torch

    from .hub import atomic_write_json
    from .io.checkpoints import PREPROCESSING_NAME
    from .models import build_model

    torch.manual_seed(seed)
    model = build_model("raunet", in_channels=3, out_channels=1, base_channels=base_channels,
                        depth=depth)
    model.save_pretrained(folder)
    atomic_write_json(folder / PREPROCESSING_NAME,
                      {"dataset": "isic2018", "image_size": list(size), "threshold": 0.5})


def _report(out: Path, counts, before, after, result, seconds) -> None:
    rows = [("untrained RA-U-Net", before),
            (f"trained RA-U-Net (epoch {result['best_epoch']})", after)]
    print(f"\nResults on the synthetic ISIC-layout test split ({counts['test']} images, "
          f"distances in pixels)")
    header = f"{'model':30s} {'Dice':>7s} {'Jaccard':>8s} {'thr.Jacc':>9s} {'HD':>7s} {'HD95':>7s}"
    print(header)
    print("-" * len(header))
    for name, s in rows:
        m = s["metrics"]
        print(f"{name:30s} {m['dice']['mean']:7.3f} {m['jaccard']['mean']:8.3f} "
              f"{m['thresholded_jaccard']['mean']:9.3f} {m['hd']['mean']:7.1f} "
              f"{m['hd95']['mean']:7.1f}")
    print(f"\nbest validation Dice {result['best_val_dice']:.3f} at epoch {result['best_epoch']}; "
          f"data {seconds['data']:.0f}s, training {seconds['train']:.0f}s, total "
          f"{seconds['total']:.0f}s")
    print("files:")
    print(f"  data (ISIC 2018 layout)   {out / 'data'}")
    print(f"  training log              {out / 'run' / 'log.csv'}")
    print(f"  best / last checkpoints   {out / 'run' / 'best'}  {out / 'run' / 'last'}"
          f"   (raunet_fast.from_pretrained(...))")
    print(f"  test scores               {out / 'eval' / 'cases.csv'}  "
          f"{out / 'eval' / 'summary.json'}")
    print(f"  predicted masks           {out / 'eval' / 'predictions'}")
    if (out / "cases.png").is_file():
        print(f"  test cases as pictures    {out / 'cases.png'}")
    sys.stdout.flush()


def _cmd_demo(args: argparse.Namespace) -> int:
    run_demo(args.out, cases=args.cases, epochs=args.epochs, image_size=args.image_size,
             base_channels=args.base_channels, seed=args.seed, device=args.device,
             progress=args.progress)
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("demo", help="generate data, train and evaluate a small RA-U-Net on CPU (minutes)",
                       description="End-to-end demo on built-in synthetic data in the ISIC 2018 "
                                   "layout: make data, train a small RA-U-Net on the CPU, evaluate "
                                   "it against an untrained one, print the results and file locations.")
    p.add_argument("--out", type=Path, default=Path("raunet-demo"),
                   help="demo folder (replaced; default: raunet-demo)")
    p.add_argument("--cases", type=int, default=160, help="synthetic images (default: 160)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs (default: 20)")
    p.add_argument("--image-size", type=int, default=64, help="network input size (default: 64)")
    p.add_argument("--base-channels", type=int, default=8,
                   help="channels of the first level (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                   help="device (default: cpu)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars")
    p.set_defaults(func=_cmd_demo)
