"""raunet-fast: train, evaluate and run RA-U-Net segmentation models.

One module per subcommand in this package (``raunet_fast/cli/<command>.py``), each
``parse -> config -> engine``: it registers its parser in ``add_cli(subparsers)`` (options
generated from the command's dataclass in :mod:`raunet_fast.config`) and runs the engine.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..config import parse_size  # noqa: F401  (kept here for existing imports)

#: module that defines ``add_cli(subparsers)`` for each subcommand, in --help order
SUBCOMMANDS = [
    "raunet_fast.cli.summary",
    "raunet_fast.cli.make_data",
    "raunet_fast.cli.train",
    "raunet_fast.cli.evaluate",
    "raunet_fast.cli.predict",
    "raunet_fast.cli.stream",
    "raunet_fast.cli.demo",
    "raunet_fast.cli.reproduce",
    "raunet_fast.cli.benchmark",
    "raunet_fast.cli.export",
    "raunet_fast.cli.quantize",
    "raunet_fast.cli.build_extensions",
]


def add_model_args(p: argparse.ArgumentParser, default_model: str = "raunet") -> None:
    """Architecture options shared by every subcommand that builds a model."""
    from ..config import MODELS, NORMS

    p.add_argument("--model", default=default_model, choices=MODELS,
                   help="architecture (default: %(default)s)")
    p.add_argument("--in-channels", type=int, default=3, help="input channels (default: 3)")
    p.add_argument("--out-channels", type=int, default=1, help="output channels (default: 1)")
    p.add_argument("--base-channels", type=int, default=64,
                   help="channels of the first level (default: 64)")
    p.add_argument("--depth", type=int, default=5, help="levels of the U (default: 5)")
    p.add_argument("--norm", default="batch", choices=NORMS,
                   help="normalisation layer (default: batch)")


EPILOG = ("Errors in the input (bad paths, files, options) are reported in one line; set "
          "RAUNET_DEBUG=1 to see the full traceback of any error.")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

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
    needed, permissions, ...), the TypeErrors the package raises on purpose for wrong
    input types (:class:`~raunet_fast.errors.InputTypeError`) and missing optional
    dependencies (:class:`~raunet_fast.errors.MissingExtra`). Any other TypeError is a bug
    and shows its traceback."""
    from ..errors import InputTypeError, MissingExtra

    return (ValueError, OSError, InputTypeError, MissingExtra)


def debug_enabled() -> bool:
    """``RAUNET_DEBUG=1`` (any value but empty / 0): re-raise every error with its traceback."""
    return os.environ.get("RAUNET_DEBUG", "").strip() not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if os.environ.get("RAUNET_CPU_ALLOCATOR", "tuned") != "default":
        # large CPU activations reuse heap memory instead of fresh pages per call
        # (raunet_fast.runtime; RAUNET_CPU_ALLOCATOR=default keeps glibc's defaults)
        from ..runtime import tune_cpu_allocator

        tune_cpu_allocator()
    try:
        return int(args.func(args) or 0)
    except user_errors() as e:
        if debug_enabled():
            raise
        if getattr(e, "echo", False):  # another process of the job (torchrun) reported it
            return 2
        # user errors (bad paths, bad shapes, bad options): one clear line, no traceback
        print(f"raunet-fast {args.command}: error: {error_line(e)}", file=sys.stderr)
        if getattr(e, "exit_now", False):  # a broken process group aborts when torn down
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        return 2


def error_line(e: BaseException) -> str:
    """The message of ``e`` on one line. An error raised in a DataLoader worker arrives with
    the worker's whole traceback as its message: only the original error's line is kept."""
    msg = str(e)
    if msg.startswith("Caught ") and "Original Traceback" in msg:
        last = [line for line in msg.splitlines() if line.strip()][-1]
        name, sep, rest = last.partition(": ")
        msg = rest if sep and name.replace(".", "").isidentifier() else last
    return " ".join(msg.split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
