"""Folding an AttentionGate module into the op's parameters."""
from __future__ import annotations

import pytest
import torch
from helpers.gate_cases import AWKWARD, CL, H, N, W, random_eval_gate, reference64
from helpers.numerics import (
    assert_close_report,
    tolerance,
)

import raunet_fast.ops as ops
from raunet_fast.blocks import AttentionGate
from raunet_fast.ops.attention_gate import cast_gate_params, fold_attention_gate


def test_gate_folding_equals_eval_module():
    gate = random_eval_gate(*AWKWARD)
    x = torch.randn(N, AWKWARD[0], H, W, dtype=torch.float64)
    g = torch.randn(N, AWKWARD[1], H, W, dtype=torch.float64)
    with torch.no_grad():
        want_out, want_alpha = gate(x, g)
    folded = fold_attention_gate(gate)
    assert {k: tuple(v.shape) for k, v in folded.items()} == {
        "w_x": (24, 48), "w_g": (24, 80), "bias": (24,), "w_psi": (24,), "b_psi": (1,)}
    assert all(v.dtype == torch.float64 for v in folded.values())
    got_out, got_alpha = reference64(x, g, folded)
    assert_close_report(got_out, want_out, 1e-12, 1e-12, "folded fp64 vs module fp64")
    assert_close_report(got_alpha, want_alpha, 1e-12, 1e-12, "folded alpha")
    # cast once to fp32, run the op: matches the fp64 module to fp32 rounding
    p32 = cast_gate_params(folded, torch.float32)
    out, alpha = ops.attention_gate(x.float().contiguous(memory_format=CL),
                                    g.float().contiguous(memory_format=CL), **p32,
                                    return_alpha=True, backend="torch")
    rtol, atol = tolerance(torch.float32, 128)
    assert_close_report(out, want_out, rtol, atol, "op(folded fp32) vs module")
    assert_close_report(alpha, want_alpha, rtol, atol, "op(folded fp32) alpha vs module")


def test_gate_folding_rejects_training_and_other_norms():
    with pytest.raises(ValueError, match="eval mode"):
        fold_attention_gate(AttentionGate(8, 8, 4).train())
    with pytest.raises(ValueError, match="only BatchNorm2d"):
        fold_attention_gate(AttentionGate(8, 8, 4, norm="group").eval())
