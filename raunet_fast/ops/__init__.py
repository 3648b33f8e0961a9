"""Fused operations: the one layer that joins kernels (each op's ``triton/``, ``csrc/``)
to the network. Each op has a reference ``"torch"`` backend and fast backends, and is
registered with ``torch.library`` so ``torch.compile(fullgraph=True)`` sees it whole.

Public ops (loaded on first access):

* :func:`attention_gate` - fused additive attention gate
* :func:`attention_gate_concat` - the gate and the decoder's ``cat([gated x, g])`` in one pass
* :func:`conv3x3_fused`  - 3x3 conv + bias + (residual | 1x1 shortcut) + ReLU
* :func:`conv3d_fused`   - 3-D conv + bias + residual + ReLU (oneDNN / cuDNN fusions)
"""
from __future__ import annotations

import importlib

from ._backend import BACKENDS, BackendUnavailable

_OPS = {
    "attention_gate": ".attention_gate",
    "attention_gate_concat": ".attention_gate",
    "conv3x3_fused": ".conv3x3",
    "conv3d_fused": ".conv3d",
}

__all__ = ["BACKENDS", "BackendUnavailable", *_OPS]

# ``attention_gate`` names both a submodule and the op it defines. Importing the submodule
# (e.g. ``from raunet_fast.ops.attention_gate import fold_attention_gate``) binds the module
# on this package, where the op should be; so it is imported now, which is cheap (torch
# only: no triton, nothing built) and leaves the op bound for good.
from .attention_gate import attention_gate, attention_gate_concat  # noqa: E402, F401

# Every op is registered with torch.library once this package is imported (the conv op too,
# as cheaply): programs exported from the fused model (raunet_fast.export) resolve their
# ``raunet_fast::`` ops after ``import raunet_fast.ops``.
from .conv3x3 import conv3x3_fused  # noqa: E402, F401
from .conv3d import conv3d_fused  # noqa: E402, F401


def __getattr__(name: str):
    if name in _OPS:
        op = getattr(importlib.import_module(_OPS[name], __name__), name)
        # importing a submodule binds its name on this package (``attention_gate`` the
        # module shadows ``attention_gate`` the op): bind the op itself, once.
        globals()[name] = op
        return op
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
