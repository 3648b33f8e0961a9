"""``raunet-fast benchmark``: its parser and handler live in :mod:`raunet_fast.benchmark`."""
from __future__ import annotations


def add_cli(sub) -> None:
    from ..benchmark import add_cli as add

    add(sub)
