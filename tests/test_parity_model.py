"""The parity checker itself (conftest.assert_parity) must fail on wrong kernels.

A correct kernel's 16-bit output (here the reference math run in fp32 and rounded, the
"torch" backends) passes; the same output against a reference with a small deliberate bug
(a weight 10% off, input channels dropped, a bias off by 0.1) must not, at the shapes where
a sqrt(K)-scaled tolerance let such bugs through in bf16.
"""
from __future__ import annotations

import pytest
import torch

from helpers.numerics import assert_parity
from raunet_fast import ops
from helpers.gate_cases import make_inputs, reference64
from helpers.conv_cases import make_case, reference

BF16 = torch.bfloat16


def _gate_mutations(p, cx):
    def w_g_off(q):
        return {**q, "w_g": q["w_g"] * 0.9}

    def drop_x_channels(q):  # a masked-tail bug: the last channel(s) of x ignored
        w = q["w_x"].clone()
        w[:, cx - (1 if cx <= 64 else 4):] = 0  # one channel of 64; 4 of 512 (1 is noise)
        return {**q, "w_x": w}

    def b_psi_off(q):
        return {**q, "b_psi": q["b_psi"] + 0.1}

    return [w_g_off, drop_x_channels, b_psi_off]


@pytest.mark.parametrize("shape", [(64, 64, 32), (512, 512, 256)], ids=["K128", "K1024"])
def test_gate_parity_catches_small_bugs_in_bf16(shape):
    cx, cg, f = shape
    x, g, p = make_inputs(cx, cg, f, BF16, n=2, h=9, w=11)
    out, alpha = ops.attention_gate(x, g, **p, return_alpha=True, backend="torch")
    ref_out, ref_alpha = reference64(x, g, p)
    assert_parity(out, ref_out, BF16, k=cx + cg, roundings=2, what="correct out")
    assert_parity(alpha, ref_alpha, BF16, k=cx + cg, roundings=2, what="correct alpha")
    for mutate in _gate_mutations(p, cx):
        bad_out, bad_alpha = reference64(x, g, mutate(p))
        with pytest.raises(AssertionError):
            assert_parity(alpha, bad_alpha, BF16, k=cx + cg, roundings=2, what=mutate.__name__)
        with pytest.raises(AssertionError):
            assert_parity(out, bad_out, BF16, k=cx + cg, roundings=2, what=mutate.__name__)


@pytest.mark.parametrize("epilogue", ["residual", "shortcut"])
def test_conv_parity_catches_a_dropped_channel_in_bf16(epilogue):
    # K = 9 * 128 (+ 65): the GPU tests' deepest shapes
    args, kw, k = make_case(2, 128, 40, 9, 11, epilogue, dtype=BF16, channels_last=True)
    y = ops.conv3x3_fused(*args, backend="torch", **kw)
    want, mag = reference(*args, parts=True, **kw)
    assert_parity(y, want, BF16, k=k, scale=mag, roundings=3, what="correct")
    x, w, b = args
    w_bad = w.clone()
    w_bad[:, -1] = 0  # the last input channel dropped
    bad, _ = reference(x, w_bad, b, parts=True, **kw)
    with pytest.raises(AssertionError):
        assert_parity(y, bad, BF16, k=k, scale=mag, roundings=3, what="dropped channel")
    bad_bias, _ = reference(x, w, b * 0.9, parts=True, **kw)
    with pytest.raises(AssertionError):
        assert_parity(y, bad_bias, BF16, k=k, scale=mag, roundings=3, what="bias 10% off")


def test_parity_catches_an_error_in_one_pixel_in_bf16():
    """A bug confined to a few pixels (a tap missed at the image corner, the last partial
    tile) moves one output by a fraction of the typical value: the elementwise bound
    (a few roundings, ~1-3% of the values in bf16) must catch it."""
    args, kw, k = make_case(2, 128, 40, 9, 11, "residual", dtype=BF16, channels_last=True)
    y = ops.conv3x3_fused(*args, backend="torch", **kw)
    want, mag = reference(*args, parts=True, **kw)
    x, w, b = args
    corner = corner_tap(x, w)  # what the corner output loses without its (0, 0) tap
    bad = want.clone()
    bad[:, :, -1, -1] = torch.relu(want[:, :, -1, -1] - corner)  # relu'd like the output
    assert (bad != want).any()
    with pytest.raises(AssertionError):
        assert_parity(y, bad, BF16, k=k, scale=mag, roundings=3, what="corner tap missing")


def corner_tap(x, w):
    """fp64 contribution of tap (0, 0) (up-left neighbour) to the bottom-right output pixel."""
    xd, wd = x.double(), w.double()
    return torch.einsum("nc,oc->no", xd[:, :, -2, -2], wd[:, :, 0, 0])
