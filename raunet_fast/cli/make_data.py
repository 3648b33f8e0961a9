"""``raunet-fast make-data``: its parser and handler live in :mod:`raunet_fast.data.generate`."""
from __future__ import annotations


def add_cli(sub) -> None:
    from ..data.generate import add_cli as add

    add(sub)
