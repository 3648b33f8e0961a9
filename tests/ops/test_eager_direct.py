"""The eager fast path: in plain eager inference the ops run their implementation directly
(no custom-op dispatch); everywhere else they go through the registered op."""
from __future__ import annotations

import importlib

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from raunet_fast.ops import attention_gate, conv3x3_fused
from raunet_fast.ops._backend import eager_direct

# the package re-exports functions under the submodules' names: fetch the modules themselves
gate_mod = importlib.import_module("raunet_fast.ops.attention_gate.op")
conv_mod = importlib.import_module("raunet_fast.ops.conv3x3.op")


def _conv_args():
    return torch.randn(2, 5, 7, 9), torch.randn(6, 5, 3, 3), torch.randn(6)


def _gate_args():
    x, g = torch.randn(2, 6, 5, 7), torch.randn(2, 10, 5, 7)
    return x, g, torch.randn(4, 6), torch.randn(4, 10), torch.randn(4), torch.randn(4), \
        torch.randn(1)


def test_eager_direct_conditions():
    t = torch.randn(3)
    assert eager_direct(t, None)
    p = torch.randn(3, requires_grad=True)
    assert not eager_direct(t, p)  # autograd needed: the registered op decides
    with torch.no_grad():
        assert eager_direct(t, p)
    assert not eager_direct(torch.empty(3, device="meta"))
    with FakeTensorMode() as mode:
        f = mode.from_tensor(t)
        assert not eager_direct(f)


class _Called(Exception):
    pass


def _raise(*a, **k):
    raise _Called


@pytest.mark.parametrize("which", ["conv", "gate"])
def test_eager_inference_skips_the_custom_op(monkeypatch, which):
    # the op itself is replaced by a function that raises: plain eager inference must not
    # reach it, and must still compute the reference result
    if which == "conv":
        x, w, b = _conv_args()
        ref = torch.relu(torch.nn.functional.conv2d(x.double(), w.double(), b.double(),
                                                    padding=1))
        monkeypatch.setattr(conv_mod, "conv3x3_fused_op", _raise)
        with torch.no_grad():
            y = conv3x3_fused(x, w, b, backend="torch")
    else:
        x, g, wx, wg, bias, psi, bpsi = _gate_args()
        xd, gd = x.double(), g.double()
        a = torch.relu(torch.einsum("fc,nchw->nfhw", wx.double(), xd)
                       + torch.einsum("fc,nchw->nfhw", wg.double(), gd)
                       + bias.double()[:, None, None])
        s = torch.einsum("f,nfhw->nhw", psi.double(), a) + bpsi.double()
        ref = xd * torch.sigmoid(s)[:, None]
        monkeypatch.setattr(gate_mod, "attention_gate_op", _raise)
        with torch.no_grad():
            y = attention_gate(x, g, wx, wg, bias, psi, bpsi, backend="torch")
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", ["conv", "gate"])
def test_autograd_inputs_go_through_the_custom_op(monkeypatch, which):
    if which == "conv":
        x, w, b = _conv_args()
        monkeypatch.setattr(conv_mod, "conv3x3_fused_op", _raise)
        with pytest.raises(_Called):
            conv3x3_fused(x.requires_grad_(), w, b, backend="torch")
    else:
        args = _gate_args()
        monkeypatch.setattr(gate_mod, "attention_gate_op", _raise)
        with pytest.raises(_Called):
            attention_gate(args[0].requires_grad_(), *args[1:], backend="torch")


def test_eager_direct_steps_aside_for_transforms_and_modes():
    t = torch.randn(3)
    assert eager_direct(torch.nn.Parameter(torch.randn(3), requires_grad=False))
    with torch.device("cpu"):  # a TorchFunctionMode
        assert not eager_direct(t)
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        assert not eager_direct(t)
    seen = []
    torch.func.vmap(lambda v: seen.append(eager_direct(v)) or v)(torch.randn(2, 3))
    assert seen == [False]


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_ops_under_vmap_match_a_loop(backend):
    """vmap goes through the registered op (its fallback loops): the direct C++ path would
    see batched tensors it cannot handle."""
    x, w, b = torch.randn(3, 2, 5, 7, 9), torch.randn(6, 5, 3, 3), torch.randn(6)
    got = torch.func.vmap(lambda v: conv3x3_fused(v, w, b, backend=backend))(x)
    want = torch.stack([conv3x3_fused(v, w, b, backend=backend) for v in x])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    gx, g = torch.randn(3, 2, 6, 5, 7), torch.randn(3, 2, 10, 5, 7)
    _, _, wx, wg, bias, psi, bpsi = _gate_args()
    got = torch.func.vmap(lambda a, c: attention_gate(a, c, wx, wg, bias, psi, bpsi,
                                                      backend=backend))(gx, g)
    want = torch.stack([attention_gate(a, c, wx, wg, bias, psi, bpsi, backend=backend)
                        for a, c in zip(gx, g)])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_direct_calls_show_in_the_profiler():
    x, w, b = _conv_args()
    args = _gate_args()
    with torch.no_grad(), torch.profiler.profile() as prof:
        conv3x3_fused(x, w, b, backend="torch")
        attention_gate(*args, backend="torch")
    names = {e.name for e in prof.events()}
    assert {"raunet_fast::conv3x3_fused", "raunet_fast::attention_gate"} <= names
