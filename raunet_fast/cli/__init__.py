"""The ``raunet-fast`` command line.

Each subcommand lives next to the code it drives and registers itself through an
``add_cli(subparsers)`` function listed in :data:`SUBCOMMANDS` (module path), so this
file stays a table of contents.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

#: module that defines ``add_cli(subparsers)`` for each group of subcommands
SUBCOMMANDS = [
    "raunet_fast.cli",            # summary
    "raunet_fast.data.generate",  # make-data
    "raunet_fast.train",          # train
    "raunet_fast.evaluate",       # evaluate
    "raunet_fast.predict",        # predict
    "raunet_fast.demo",           # demo
    "raunet_fast.benchmark",      # benchmark
    "raunet_fast.export",         # export
]


def parse_size(text: str) -> tuple[int, int]:
    """``"512"`` -> (512, 512); ``"480x640"`` -> (480, 640)."""
    parts = text.lower().split("x")
    try:
        hw = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512 or 480x640, got {text!r}")
    if len(hw) == 1:
        hw = hw * 2
    if len(hw) != 2 or min(hw) < 1:
        raise argparse.ArgumentTypeError(f"size must look like 512 or 480x640, got {text!r}")
    return hw  # type: ignore[return-value]


def _cmd_summary(args: argparse.Namespace) -> int:
    import torch

    from .models import build_model
    from .summary import summarize

    model = build_model(args.model, in_channels=args.in_channels, out_channels=args.out_channels,
                        base_channels=args.base_channels, depth=args.depth, norm=args.norm)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    h, w = args.image_size
    print(summarize(model, (args.batch_size, args.in_channels, h, w), dtype).format())
    return 0


def add_model_args(p: argparse.ArgumentParser, default_model: str = "raunet") -> None:
    """Architecture options shared by every subcommand that builds a model."""
    p.add_argument("--model", default=default_model,
                   choices=["raunet", "attention-unet", "unet", "resunet"])
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--out-channels", type=int, default=1)
    p.add_argument("--base-channels", type=int, default=64)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--norm", default="batch", choices=["batch", "instance", "group"])


def add_cli(sub) -> None:
    p = sub.add_parser("summary", help="per-level shapes, parameters, GFLOPs, activation memory",
                       description="Print a model's per-level tensor shapes, parameter count, "
                                   "GFLOPs per image and activation memory (no weights needed).")
    add_model_args(p)
    p.add_argument("--image-size", type=parse_size, default=(512, 512), metavar="S|HxW")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.set_defaults(func=_cmd_summary)


EPILOG = ("Errors in the input (bad paths, files, options) are reported in one line; set "
          "RAUNET_DEBUG=1 to see the full traceback of any error.")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="raunet-fast", description=__doc__.splitlines()[0],
                                     epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"raunet-fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in SUBCOMMANDS:
        importlib.import_module(module).add_cli(sub)
    for p in sub.choices.values():
        if p.epilog is None:
            p.epilog = EPILOG
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean a mistake in the input, printed as one line by :func:`main`.

    ValueError (bad values, corrupt files), OSError (missing files, a file where a folder is
    needed, permissions, ...) and the TypeErrors the package raises on purpose for wrong
    input types (:class:`~raunet_fast.errors.InputTypeError`). Any other TypeError is a bug
    and shows its traceback."""
    from .errors import InputTypeError

    return (ValueError, OSError, InputTypeError)


def debug_enabled() -> bool:
    """``RAUNET_DEBUG=1`` (any value but empty / 0): re-raise every error with its traceback."""
    return os.environ.get("RAUNET_DEBUG", "").strip() not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if os.environ.get("RAUNET_CPU_ALLOCATOR", "tuned") != "default":
        # large CPU activations reuse heap memory instead of fresh pages per call
        # (raunet_fast.runtime; RAUNET_CPU_ALLOCATOR=default keeps glibc's defaults)
        from .runtime import tune_cpu_allocator

        tune_cpu_allocator()
    try:
        return int(args.func(args) or 0)
    except user_errors() as e:
        if debug_enabled():
            raise
        # user errors (bad paths, bad shapes, bad options): one clear line, no traceback
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"raunet-fast {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
