"""``raunet-fast summary``: per-level shapes, parameters, GFLOPs and activation memory."""
from __future__ import annotations

import argparse

from ..config import DTYPE_NAMES, parse_size


def run(args: argparse.Namespace) -> int:
    from ..inference import DTYPE_NAMES as DTYPES
    from ..models import build_model
    from ..summary import summarize

    model = build_model(args.model, in_channels=args.in_channels, out_channels=args.out_channels,
                        base_channels=args.base_channels, depth=args.depth, norm=args.norm)
    h, w = args.image_size
    print(summarize(model, (args.batch_size, args.in_channels, h, w), DTYPES[args.dtype]).format())
    return 0


def add_cli(sub) -> None:
    from . import add_model_args

    p = sub.add_parser("summary", help="per-level shapes, parameters, GFLOPs, activation memory",
                       description="Print a model's per-level tensor shapes, parameter count, "
                                   "GFLOPs per image and activation memory (no weights needed).")
    add_model_args(p)
    p.add_argument("--image-size", type=parse_size, default=(512, 512), metavar="S|HxW",
                   help="input size (default: 512x512)")
    p.add_argument("--batch-size", type=int, default=1, help="images per batch (default: 1)")
    p.add_argument("--dtype", default="fp32", choices=DTYPE_NAMES,
                   help="activation dtype for the memory estimate (default: fp32)")
    p.set_defaults(func=run)
