"""Folding BatchNorm into the conv op's parameters and the fused plain / residual blocks built on it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.conv_cases import randomize_bn
from helpers.numerics import (
    assert_close_report,
    tolerance,
)

from raunet_fast.blocks import PlainBlock, ResidualBlock
from raunet_fast.fold import fold_plain_block, fold_residual_block
from raunet_fast.ops.fused_blocks import FusedPlainBlock, FusedResidualBlock, fuse_block


# ------------------------------------------------------------------ folding
@pytest.mark.parametrize("cin,cout", [(8, 8), (5, 12)], ids=["identity", "projection"])
def test_fold_residual_block_equals_eval_block(cin, cout):
    block = ResidualBlock(cin, cout, dropout=0.2).double()
    randomize_bn(block)
    block.eval()
    x = torch.randn(2, cin, 7, 13, dtype=torch.float64)
    w1, b1, w2, b2, ws = fold_residual_block(block)
    assert (ws is None) == (cin == cout)
    h = torch.relu(F.conv2d(x, w1, b1, padding=1))
    sc = x if ws is None else torch.einsum("nchw,oc->nohw", x, ws)
    y = torch.relu(F.conv2d(h, w2, b2, padding=1) + sc)
    with torch.no_grad():
        assert_close_report(y, block(x), 1e-10, 1e-10, "folded residual block")


@pytest.mark.parametrize("cin,cout", [(3, 64), (5, 12)])
def test_carry_input_through_equals_eval_block(cin, cout):
    """The projection shortcut carried through conv1 as relu(x), relu(-x) channels: two plain
    conv + bias + ReLU layers equal the block (fp64), and the carried channels are x."""
    from raunet_fast.fold import carry_input_through

    block = ResidualBlock(cin, cout).double()
    randomize_bn(block)
    block.eval()
    x = torch.randn(2, cin, 7, 13, dtype=torch.float64)
    w1, b1, w2, b2, ws = fold_residual_block(block)
    w1c, b1c, w2c = carry_input_through(w1, b1, w2, ws)
    assert w1c.shape[0] % 8 == 0 and w1c.shape[0] >= cout + 2 * cin
    h = torch.relu(F.conv2d(x, w1c, b1c, padding=1))
    torch.testing.assert_close(h[:, cout:cout + cin] - h[:, cout + cin:cout + 2 * cin], x,
                               rtol=0, atol=0)
    assert (h[:, cout + 2 * cin:] == 0).all()
    y = torch.relu(F.conv2d(h, w2c, b2, padding=1))
    with torch.no_grad():
        assert_close_report(y, block(x), 1e-10, 1e-10, "carried-input block")


def test_fold_plain_block_equals_eval_block():
    block = PlainBlock(6, 10, dropout=0.3).double()
    randomize_bn(block)
    block.eval()
    x = torch.randn(3, 6, 5, 9, dtype=torch.float64)
    (w1, b1), (w2, b2) = fold_plain_block(block)
    y = torch.relu(F.conv2d(torch.relu(F.conv2d(x, w1, b1, padding=1)), w2, b2, padding=1))
    with torch.no_grad():
        assert_close_report(y, block(x), 1e-10, 1e-10, "folded plain block")


def test_fold_refuses_training_mode():
    with pytest.raises(ValueError, match="eval"):
        fold_residual_block(ResidualBlock(4, 8).train())


# ------------------------------------------------------------------ fused blocks
@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("kind", ["residual-identity", "residual-projection", "plain"])
def test_fused_block_equals_eval_block(backend, kind):
    cin, cout = (16, 16) if kind == "residual-identity" else (6, 16)
    block = (PlainBlock if kind == "plain" else ResidualBlock)(cin, cout)
    randomize_bn(block)
    block.eval()
    fused = fuse_block(block, dtype=torch.float32, backend=backend)
    assert isinstance(fused, FusedPlainBlock if kind == "plain" else FusedResidualBlock)
    x = torch.randn(2, cin, 9, 13).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = fused(x)
        want = block.double()(x.double())
    rtol, atol = tolerance(torch.float32, 9 * cout + cin)
    assert_close_report(got, want, rtol * 2, atol * 2, f"fused {kind} {backend}")
    assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_fused_block_carry_input(backend):
    """carry_input=True: the input carried through conv1, equal to the eval block; off by
    default; a candidate only for narrow inputs."""
    from raunet_fast.ops.fused_blocks import carry_candidate

    assert carry_candidate(3, 64) and carry_candidate(4, 64) and not carry_candidate(64, 128)
    block = ResidualBlock(3, 64)
    randomize_bn(block)
    block.eval()
    assert not FusedResidualBlock.from_block(block, torch.float32, backend).carry_input
    with pytest.raises(ValueError, match="projection"):
        FusedResidualBlock.from_block(ResidualBlock(8, 8).eval(), torch.float32, backend,
                                      carry_input=True)
    fused = FusedResidualBlock.from_block(block, torch.float32, backend, carry_input=True)
    assert fused.conv2.shortcut_weight is None and fused.conv1.out_channels == 72
    x = torch.randn(2, 3, 11, 14).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = fused(x)
        want = block.double()(x.double())
    rtol, atol = tolerance(torch.float32, 9 * 72)
    assert_close_report(got, want, rtol * 2, atol * 2, f"carried-input block {backend}")


def test_fused_block_built_in_inference_mode_holds_ordinary_buffers():
    block = ResidualBlock(4, 8)
    randomize_bn(block)
    with torch.inference_mode():
        fused = FusedResidualBlock.from_block(block.eval(), torch.float32, "cpp")
    assert not any(t.is_inference() for t in fused.buffers()), \
        "inference-mode buffers defeat the ops' weight caches (re-derived every call)"
