"""Training-patch loading speed: random native-resolution patches from large JPEGs (ISIC 2018
images are up to 6688 x 4459), without an image cache, for several ``patches_per_image``
K (``train --patches-per-image``): an image's K patches come one after another
(GroupedSampler), so it is decoded once per K patches instead of once per patch.

    python bench/patch_loading.py [--images 8] [--size 4000x3000] [--patch 256] [--k 1 4 8] [--out F]

Writes the JPEGs to a temporary folder (the ImageMaskFolder layout), then times one pass
over ``--images`` x K patches per K in the main process (a DataLoader worker does the same
work), reporting patches/s and ms per patch.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from raunet_fast.bench_harness import Stats, environment, script_rows_written, set_ratios
from raunet_fast.data import ImageMaskFolder
from raunet_fast.data.isic import GroupedSampler


def make_images(root: Path, n: int, h: int, w: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        # smooth colour fields plus noise: JPEG-compressible like a photograph, not flat
        base = np.stack([(np.sin(xx / (90 + 13 * c) + i) + np.cos(yy / (70 + 7 * c))) * 60 + 128
                         for c in range(3)], -1)
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"img{i:03d}.jpg", quality=90)
        mask = ((xx - w / 2) ** 2 / (w / 3) ** 2 + (yy - h / 2) ** 2 / (h / 3) ** 2) < 1
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / "masks" / f"img{i:03d}.png")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--size", default="4000x3000", help="W x H of the generated JPEGs")
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--k", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--out", default=None,
                   help="append harness CSV rows (suite patch_loading; ms per patch)")
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    print(f"# {platform.processor() or 'cpu'}  torch {torch.__version__}  threads "
          f"{torch.get_num_threads()}  {args.images} JPEGs {w}x{h}  patch {args.patch}  "
          f"context 0.21 (as train --patch)")
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        make_images(root, args.images, h, w)
        ctx = (int(np.ceil(0.21 * args.patch)),) * 2
        base, rows = None, []
        print(f"{'K':>3} {'patches':>8} {'s':>8} {'patches/s':>10} {'ms/patch':>9} {'speed-up':>9}")
        for k in args.k:
            ds = ImageMaskFolder(root, "all", patch=(args.patch, args.patch), random_patches=True,
                                 context=ctx, patches_per_image=k)
            order = list(GroupedSampler(len(ds), k, torch.Generator().manual_seed(0)))
            per_patch = []
            for j in order:
                t0 = time.perf_counter()
                item = ds[j]
                per_patch.append((time.perf_counter() - t0) * 1e3)
                assert item["image"].shape[-1] == args.patch + 2 * ctx[1]
            dt = sum(per_patch) / 1e3
            rows.append(patch_row(args, k, (h, w), per_patch))
            per = dt / len(order)
            base = base or per
            print(f"{k:>3} {len(order):>8} {dt:>8.2f} {len(order) / dt:>10.1f} {per * 1e3:>9.1f} "
                  f"{base / per:>9.2f}", flush=True)
    set_ratios(rows, "K=1")   # of the medians; the mean's speed-up is the table's
    script_rows_written(args.out, rows)


def patch_row(args, k: int, hw: tuple, per_patch_ms: list):
    """A harness row: the per-patch times of one pass with K patches per image. With K > 1
    the median is a patch cut from an already decoded image; ``extra["mean_ms"]`` (the
    table's ms/patch) counts the decodes."""
    return environment("cpu").row(
        suite="patch_loading", case=f"patch {args.patch}", shape=f"1x3x{hw[0]}x{hw[1]}",
        dtype="uint8", variant=f"K={k}", stats=Stats.of(per_patch_ms),
        extra={"images": args.images, "patches": len(per_patch_ms),
               "mean_ms": sum(per_patch_ms) / len(per_patch_ms)})


if __name__ == "__main__":
    main()
