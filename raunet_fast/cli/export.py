"""``raunet-fast export``: its parser and handler live in :mod:`raunet_fast.export`."""
from __future__ import annotations


def add_cli(sub) -> None:
    from ..export import add_cli as add

    add(sub)
