"""``attention_gate`` / ``attention_gate_concat``: the fused additive attention gate.

    out = x * sigmoid(w_psi . relu(w_x x + w_g g + bias) + b_psi)

Backends (``backend=``): ``"torch"`` (reference math, any device, :mod:`.reference`),
``"triton"`` (:mod:`.triton`: CUDA, or CPU under ``TRITON_INTERPRET=1``), ``"cuda"``
(``csrc/attention_gate.cu``), ``"cpp"`` (``csrc/attention_gate_cpu.cpp``), ``"auto"``:
triton then cuda then torch on CUDA tensors, cpp then torch on CPU tensors
(:mod:`.dispatch`). A backend that cannot run raises
:class:`~raunet_fast.ops.BackendUnavailable` when forced; ``"auto"`` warns and moves on.
Registered with ``torch.library`` as opaque custom ops, so
``torch.compile(fullgraph=True)`` sees them whole.

Layout: :mod:`.op` (public ops, custom ops, checks), :mod:`.params` (folding an
:class:`~raunet_fast.blocks.AttentionGate` into the op's parameters), :mod:`.reference`,
:mod:`.dispatch`, :mod:`.triton` (kernel, configs, launcher). Settings
(``RAUNET_GATE_*``): :mod:`raunet_fast.ops.settings`.
"""
from __future__ import annotations

from .op import attention_gate, attention_gate_concat, check_args
from .params import cast_gate_params, fold_attention_gate, gate_bytes
from .reference import attention_gate_reference

__all__ = ["attention_gate", "attention_gate_concat", "fold_attention_gate",
           "cast_gate_params", "gate_bytes", "attention_gate_reference", "check_args"]
