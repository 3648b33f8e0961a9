"""What every config-driven subcommand does before it runs: build the config, print it."""
from __future__ import annotations

import argparse

from ..config import RunConfig, from_args, print_config


def resolve(args: argparse.Namespace) -> RunConfig | None:
    """The validated config of ``args``; None after ``--print-config`` printed it."""
    cfg = from_args(args)
    if getattr(args, "print_config", False):
        print_config(cfg)
        return None
    return cfg


def add_parser(sub, name: str, cls, help: str, description: str):
    """A subparser whose options are generated from the config class ``cls``."""
    from ..config import add_options

    p = sub.add_parser(name, help=help, description=description)
    add_options(p, cls)
    return p
