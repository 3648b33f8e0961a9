"""``raunet-fast summary``: per-level shapes, parameters, GFLOPs and activation memory."""
from __future__ import annotations

import argparse

from ..config import DTYPE_NAMES, parse_size


def run(args: argparse.Namespace) -> int:
    from ..inference import DTYPE_NAMES as DTYPES
    from ..models import build_model
    from ..summary import summarize

    volume = args.volume_size is not None
    model = build_model(args.model, in_channels=args.in_channels, out_channels=args.out_channels,
                        base_channels=args.base_channels, depth=args.depth, norm=args.norm,
                        spatial_dims=3 if volume else 2)
    size = args.volume_size if volume else args.image_size
    print(summarize(model, (args.batch_size, args.in_channels, *size), DTYPES[args.dtype]).format())
    return 0


def parse_volume_size(text: str) -> tuple[int, int, int]:
    """``"96"`` -> (96, 96, 96); ``"64x96x80"`` -> (64, 96, 80)."""
    try:
        dhw = tuple(int(p) for p in str(text).lower().split("x"))
    except ValueError:
        dhw = ()
    dhw = dhw * 3 if len(dhw) == 1 else dhw
    if len(dhw) != 3 or min(dhw) < 1:
        raise argparse.ArgumentTypeError(f"volume size must look like 96 or 64x96x80, got {text!r}")
    return dhw  # type: ignore[return-value]


def add_cli(sub) -> None:
    from . import add_model_args

    p = sub.add_parser("summary", help="per-level shapes, parameters, GFLOPs, activation memory",
                       description="Print a model's per-level tensor shapes, parameter count, "
                                   "GFLOPs per image and activation memory (no weights needed).")
    add_model_args(p)
    p.add_argument("--image-size", type=parse_size, default=(512, 512), metavar="S|HxW",
                   help="input size (default: 512x512)")
    p.add_argument("--volume-size", type=parse_volume_size, default=None, metavar="S|DxHxW",
                   help="summarise the 3-D model (spatial_dims=3) on a D x H x W volume instead")
    p.add_argument("--batch-size", type=int, default=1, help="images per batch (default: 1)")
    p.add_argument("--dtype", default="fp32", choices=DTYPE_NAMES,
                   help="activation dtype for the memory estimate (default: fp32)")
    p.set_defaults(func=run)
