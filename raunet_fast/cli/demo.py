"""``raunet-fast demo``: its parser and handler live in :mod:`raunet_fast.demo`."""
from __future__ import annotations


def add_cli(sub) -> None:
    from ..demo import add_cli as add

    add(sub)
