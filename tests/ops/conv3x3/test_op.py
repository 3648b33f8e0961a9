"""conv3x3_fused as an op: argument errors, opcheck, torch.compile, imports, weight caches."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers.conv_cases import HAS_CUDA, make_case, randomize_bn, reference
from helpers.numerics import (
    assert_close_report,
    tolerance,
)

from raunet_fast.blocks import ResidualBlock
from raunet_fast.ops import BackendUnavailable, conv3x3_fused
from raunet_fast.ops.fused_blocks import FusedResidualBlock


def test_conv_packed_cache_follows_in_place_updates():
    from raunet_fast.ops.conv3x3 import pack_weights, packed_for

    w, ws = torch.randn(8, 4, 3, 3), torch.randn(8, 2)
    p1 = packed_for(w, ws, torch.float32)
    assert packed_for(w, ws, torch.float32) is p1          # cached
    assert p1.shape == (9 * 4 + 2, 8)
    assert torch.equal(p1[9 * 4:], ws.t())
    assert torch.equal(p1[(1 * 3 + 2) * 4 + 3], w[:, 3, 1, 2])  # row t*Cin + c, t = 3*kh + kw
    w.mul_(2)                                              # in place: version changes
    p2 = packed_for(w, ws, torch.float32)
    assert p2 is not p1 and torch.equal(p2, pack_weights(w, ws, torch.float32))


# ------------------------------------------------------------------ errors, registration
def test_conv_argument_errors():
    (x, w, b), kw, _ = make_case(1, 4, 8, 5, 5, "shortcut")
    r = torch.randn(1, 8, 5, 5)
    with pytest.raises(ValueError, match="not both"):
        conv3x3_fused(x, w, b, residual=r, **kw)
    with pytest.raises(ValueError, match="weight must be Cout x 4 x 3 x 3"):
        conv3x3_fused(x, w[:, :2], b)
    with pytest.raises(ValueError, match="residual must have shape"):
        conv3x3_fused(x, w, b, residual=r[:, :4])
    with pytest.raises(ValueError, match="go together"):
        conv3x3_fused(x, w, b, shortcut_input=kw["shortcut_input"])
    with pytest.raises(ValueError, match="backend must be one of"):
        conv3x3_fused(x, w, b, backend="cudnn")
    with pytest.raises(BackendUnavailable):
        conv3x3_fused(x, w, b, backend="cuda")


def test_module_fast_check_agrees_with_check():
    """FusedConv3x3 runs the full checks only when its fast one fails: on valid and broken
    activations alike, the fast check never passes what the full one refuses, and passes
    every valid call (so the fast path is the one taken); the module's errors are the
    full check's."""
    from raunet_fast.ops.conv3x3 import check_args as _check
    from raunet_fast.ops.conv3x3 import inputs_ok

    n, cin, cout, cs, h, w = 2, 5, 6, 3, 7, 9
    wt, b, sw = torch.randn(cout, cin, 3, 3), torch.randn(cout), torch.randn(cout, cs)
    x = torch.randn(n, cin, h, w)
    good = [(x, None, None, None), (x, torch.randn(n, cout, h, w), None, None),
            (x, None, torch.randn(n, cs, h, w), sw),
            (x.contiguous(memory_format=torch.channels_last), None, torch.randn(n, cs, h, w), sw),
            (x.half(), torch.randn(n, cout, h, w).half(), None, None)]
    bad = [(x[0], None, None, None), (x[:, :4], None, None, None), (x[:, :, :0], None, None, None),
           (x.int(), None, None, None), (x, torch.randn(n, cout, h, w - 1), None, None),
           (x, torch.randn(n, cout, h, w), torch.randn(n, cs, h, w), sw),
           (x, None, torch.randn(n, cs, h, w), None), (x, None, None, sw),
           (x, None, torch.randn(n, cs + 1, h, w), sw), (x, None, torch.randn(n + 1, cs, h, w), sw),
           (x, None, torch.randn(n, cs, h + 1, w), sw), (x, None, torch.randn(n, cs, h), sw),
           (x, torch.randn(n, cout, h, w, device="meta"), None, None),
           (x.to("meta"), None, None, None)]
    for xi, r, s, swi in good:
        assert inputs_ok(xi, wt, r, s, swi)
        _check(xi, wt, b, r, s, swi)
    for i, (xi, r, s, swi) in enumerate(bad):
        assert not inputs_ok(xi, wt, r, s, swi), f"bad case {i} passed the fast check"
        with pytest.raises((ValueError, TypeError)):
            _check(xi, wt, b, r, s, swi)
    block = ResidualBlock(cin, cout)
    fused = FusedResidualBlock.from_block(block.eval(), dtype=torch.float32, backend="torch")
    with pytest.raises(ValueError, match=r"weight must be Cout x 4 x 3 x 3"):
        fused.conv1(x[:, :4])
    with pytest.raises(ValueError, match="shortcut_input must be"):
        fused.conv2(torch.randn(n, cout, h, w), shortcut_input=torch.randn(n, cin, h, w + 1))
    with pytest.raises(ValueError, match="pass shortcut_input iff"):
        fused.conv2(torch.randn(n, cout, h, w))


@pytest.mark.parametrize("backend", ["torch", "cpp"] + ([] if HAS_CUDA else ["triton"]))
def test_conv_opcheck(backend):
    from raunet_fast.ops.conv3x3 import conv3x3_fused_op as _conv3x3_fused_op
    from raunet_fast.ops.conv3x3 import pack_weights

    (x, w, b), kw, _ = make_case(1, 16, 16, 4, 5, "shortcut", channels_last=True)
    s, ws = kw["shortcut_input"], kw["shortcut_weight"]
    packed = pack_weights(w, ws, x.dtype)
    torch.library.opcheck(_conv3x3_fused_op, (x, w, b, None, s, ws, packed, True, backend))
    r = torch.randn(1, 16, 4, 5)
    torch.library.opcheck(_conv3x3_fused_op, (x.contiguous(), w, b, r, None, None, None, False,
                                              backend))


def test_conv_compile_fullgraph():
    """The fused block traces whole: one opaque op per conv, no graph break."""
    torch._dynamo.reset()
    block = ResidualBlock(4, 16)
    randomize_bn(block)
    block.eval()
    fused = FusedResidualBlock.from_block(block, dtype=torch.float32, backend="cpp")
    x = torch.randn(1, 4, 6, 8).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert_close_report(compiled(x), fused(x), 1e-6, 1e-6, "compiled fused block")


def test_conv_import_does_not_import_triton():
    code = ("import sys, raunet_fast.ops as o; o.conv3x3_fused; import raunet_fast.ops.fused_blocks;"
            "assert 'triton' not in sys.modules, 'triton imported'")
    env = {k: v for k, v in os.environ.items()}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_conv_weights_made_in_inference_mode():
    """Inference-mode tensors have no version counter: the weight caches must not need one
    (this raised 'Inference tensors do not track version counter')."""
    with torch.inference_mode():
        args, kw, k = make_case(1, 5, 6, 4, 7, "shortcut")
        x, w, b = args
        w64 = w.double()  # a dtype the op must cast (through the cache)
        for backend in ("torch", "cpp"):
            y = conv3x3_fused(x, w64, b, backend=backend, **kw)
            assert_close_report(y, reference(x, w64.float(), b, **kw),
                                *tolerance(torch.float32, k), f"inference mode {backend}")


@pytest.mark.parametrize("backend", ["cpp", "auto", "torch"])
def test_conv_bias_views_and_shapes(backend):
    """A strided bias view (a kernel reading it as dense is wrong by ~2) and a Cout x 1
    bias; a call that fails does not switch the fast CPU paths off for good."""
    from raunet_fast.ops.conv3x3 import backends as op_be

    (x, w, _), _, k = make_case(2, 5, 6, 7, 9, "none")
    for b in (torch.randn(12)[::2], torch.randn(6, 1)):
        y = conv3x3_fused(x, w, b, backend=backend)
        assert_close_report(y, reference(x, w, b.reshape(-1)), *tolerance(torch.float32, k),
                            f"{backend} bias of shape {tuple(b.shape)} strides {b.stride()}")
    with pytest.raises(ValueError, match="H, W >= 1"):
        conv3x3_fused(torch.randn(1, 5, 0, 4), w, torch.randn(6), backend=backend)
    if backend == "cpp":  # an input oneDNN refuses, below the public checks
        try:
            op_be.cpp_onednn(op_be.extension(op_be.CPU_EXT), torch.randn(1, 5, 0, 4), w, torch.randn(6),
                           None, None, None, True)
        except Exception:  # noqa: BLE001 - failing is fine; switching paths off is not
            pass
    assert op_be.ONEDNN["enabled"]
