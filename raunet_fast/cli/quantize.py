"""``raunet-fast quantize``: int8 post-training quantization of a checkpoint for the CPU
(:mod:`raunet_fast.quantize`; the cpu-int8 extra)."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch


def calibration_batches(folder: Path, in_channels: int, size, count: int, batch: int,
                        convert: bool = False):
    """Up to ``count`` images of ``folder`` decoded and resized as for the network, in
    batches of ``batch``."""
    from ..data.common import resize_pair
    from ..io.images import list_images, read_image

    paths = list_images(folder)[:count]
    mode = "RGB" if in_channels == 3 else "L"
    images = [resize_pair(read_image(p, mode, convert=convert)[0], None, size)[0] for p in paths]
    return [torch.stack(images[i:i + batch]) for i in range(0, len(images), batch)]


def run(args: argparse.Namespace) -> int:
    from ..hub import from_pretrained
    from ..io.checkpoints import check_checkpoint_folder, read_preprocessing
    from ..io.lock import folder_lock
    from ..quantize import (Int8Model, check_quantizable, quantize_model, save_quantized,
                            write_report)

    check_checkpoint_folder(args.checkpoint)
    model = from_pretrained(args.checkpoint).eval()
    check_quantizable(model, str(args.checkpoint))
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise ValueError(f"--out {args.out} is not empty; pass --overwrite to replace it")
    prep = read_preprocessing(args.checkpoint)
    size = tuple(prep.get("image_size") or prep.get("patch") or ())
    if not size:
        raise ValueError(f"{args.checkpoint} records no image size or patch to calibrate at")
    batches = calibration_batches(args.calibration, model.in_channels, size, args.images,
                                  args.batch_size, args.convert_channels)
    with folder_lock(args.out, "quantize"):
        q = quantize_model(model, batches, batches[0][:1].repeat(2, 1, 1, 1))
        report = {"calibration": str(args.calibration), "calibration_images": sum(
            len(b) for b in batches), "size": list(size), "scheme": "torchao PT2E, "
            "X86InductorQuantizer default config (int8, per-channel weights)"}
        save_quantized(args.out, q, batches[0][:1].repeat(2, 1, 1, 1), args.checkpoint, report,
                       model.size_multiple)
        if args.dataset:
            report.update(compare(args, model, Int8Model(args.out)),
                          source=str(args.checkpoint))
            write_report(args.out, report)
    print(f"quantize: wrote {args.out} (int8, calibrated on {report['calibration_images']} "
          f"images){_change_text(report)}")
    return 0


def compare(args: argparse.Namespace, fp32, int8) -> dict:
    """Mean Dice and HD95 of both models on ``--split`` of ``--data-root``."""
    from ..config import EvaluateConfig
    from ..engine.evaluator import Evaluator

    scores = {}
    for name, model in (("fp32", fp32), ("int8", int8)):
        cfg = EvaluateConfig(checkpoint=str(args.checkpoint), dataset=args.dataset,
                             data_root=str(args.data_root), split=args.split, device="cpu",
                             progress=False)
        metrics = Evaluator(cfg, model=model).run()["metrics"]
        metrics = metrics.get("mean", metrics)
        scores[name] = {k: metrics[k]["mean"] for k in ("dice", "hd95") if k in metrics}
    return {"validation": {"split": args.split, **scores,
                           "change": {k: scores["int8"][k] - scores["fp32"][k]
                                      for k in scores["fp32"]}}}


def _change_text(report: dict) -> str:
    v = report.get("validation")
    if not v:
        return ""
    parts = [f"{k} {v['fp32'][k]:.4f} -> {v['int8'][k]:.4f} ({d:+.4f})"
             for k, d in v["change"].items() if not math.isnan(d)]
    return f"; {v['split']} split: " + ", ".join(parts)


def add_cli(sub) -> None:
    from ..config import IMAGE_DATASETS, SPLITS

    p = sub.add_parser("quantize", help="int8 post-training quantization for the CPU "
                                        "(torchao; the cpu-int8 extra)",
                       description="Calibrate and convert a checkpoint to int8 with torchao's "
                                   "PT2E flow (X86InductorQuantizer). The folder written is "
                                   "accepted by predict, evaluate and benchmark --checkpoint. "
                                   "With --dataset / --data-root the Dice and HD95 of fp32 and "
                                   "int8 on --split are reported and stored in "
                                   "quantization.json.")
    p.add_argument("--checkpoint", required=True, type=Path, help="the fp32 checkpoint folder")
    p.add_argument("--calibration", required=True, type=Path,
                   help="a folder of images like the training images (or the training "
                        "images themselves)")
    p.add_argument("--out", required=True, type=Path, help="the int8 model folder to write")
    p.add_argument("--images", type=int, default=32, help="calibration images (default: 32)")
    p.add_argument("--batch-size", type=int, default=4, help="default: 4")
    p.add_argument("--dataset", choices=IMAGE_DATASETS, default=None,
                   help="score fp32 and int8 on this data set's --split")
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--split", choices=SPLITS, default="val", help="default: val")
    p.add_argument("--convert-channels", action="store_true",
                   help="convert gray / RGB calibration images to the model's channels")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=run)
