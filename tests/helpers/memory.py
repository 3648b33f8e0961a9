"""Allocation checks without timing: which large tensor storages an operation creates."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LargeStorages(TorchDispatchMode):
    """Records every tensor storage of at least ``limit`` bytes an operation returns (and
    the op that made it), so a test can list the image- or volume-sized allocations."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.seen = limit, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() >= self.limit:
                self.seen.setdefault(t.untyped_storage().data_ptr(), str(func))
        return out
