"""attention_gate / attention_gate_concat as ops: errors, opcheck, torch.compile, imports."""
from __future__ import annotations

import pytest
import torch
from helpers.gate_cases import (
    _CONCAT_BACKENDS,
    AWKWARD,
    CL,
    H,
    N,
    W,
    _compile_check,
    _opcheck_backends,
    _require_cuda_extension,
    make_inputs,
    reference64,
)
from helpers.numerics import (
    assert_close_report,
    assert_parity,
    tolerance,
)

import raunet_fast.ops as ops
from raunet_fast.ops import BackendUnavailable
from raunet_fast.ops.attention_gate import dispatch as gate_dispatch
from raunet_fast.ops.attention_gate.op import attention_gate_op as _attention_gate_op


def test_gate_errors_say_why():
    x, g, p = make_inputs(8, 8, 4, torch.float32)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.attention_gate(x, g, **p, backend="nope")
    with pytest.raises(ValueError, match="w_g must be F x Cg"):
        ops.attention_gate(x, g, **{**p, "w_g": p["w_g"][:, :5]})
    with pytest.raises(ValueError, match="batch and spatial size"):
        ops.attention_gate(x, g[:, :, :3], **p)
    with pytest.raises(ValueError, match="one dtype"):
        ops.attention_gate(x, g.half(), **p)
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="needs CUDA tensors"):
            ops.attention_gate(x, g, **p, backend="cuda")


def test_gate_auto_falls_back_with_the_build_error(monkeypatch):
    """A csrc build that fails: 'auto' warns with the compiler's message and uses torch;
    forcing 'cpp' raises BackendUnavailable with it."""
    monkeypatch.setitem(gate_dispatch.EXTENSIONS, "cpp", ("raunet_fast_gate_broken_for_test",
                                               ["no_such_source.cpp"], False))
    x, g, p = make_inputs(8, 8, 4, torch.float32)
    with pytest.warns(RuntimeWarning, match="building the raunet_fast_gate_broken_for_test"):
        out = ops.attention_gate(x, g, **p, backend="auto")
    ref, _ = reference64(x, g, p)
    assert_close_report(out, ref, *tolerance(torch.float32, 16), "auto fallback to torch")
    with pytest.raises(BackendUnavailable, match="raunet_fast_gate_broken_for_test"):
        ops.attention_gate(x, g, **p, backend="cpp")


def test_gate_config_filters():
    """The autotuner's candidates: ``dtypes`` and ``max_channels`` keep a config off the
    inputs it spills registers on (the AOT test builds each config where it applies)."""
    pytest.importorskip("triton")
    from raunet_fast.ops.attention_gate.triton.configs import CONFIGS, configs_for

    capped = [c for c in CONFIGS if c.max_channels is not None]
    assert capped, "no capped config left: drop this test's premise"
    for c in capped:
        cap = c.max_channels
        assert c in configs_for(torch.bfloat16, cap, cap)
        assert c not in configs_for(torch.bfloat16, cap + 1, cap)
        assert c not in configs_for(torch.bfloat16, cap, cap + 16)
    for c in CONFIGS:
        assert (c in configs_for(torch.float32)) == ("float32" in c.get("dtypes", ("float32",)))
        use = c.get("concat", True)
        for dt, nm in ((torch.bfloat16, "bfloat16"), (torch.float32, "float32")):
            assert (c in configs_for(dt, 64, 64, concat=True)) == \
                (c in configs_for(dt, 64, 64) and (use is True or (use and nm in use)))
    assert any(not c.get("concat", True) for c in CONFIGS)  # the filter is exercised


@pytest.mark.parametrize("backend", _opcheck_backends())
@pytest.mark.parametrize("return_alpha", [False, True])
def test_gate_opcheck(backend, return_alpha):
    device = "cuda" if backend in ("triton", "cuda") else "cpu"
    if backend == "cuda":
        _require_cuda_extension()
    x, g, p = make_inputs(12, 20, 8, torch.float32, device, n=1, h=3, w=5)
    args = (x, g, p["w_x"], p["w_g"], p["bias"], p["w_psi"], p["b_psi"], return_alpha, backend)
    torch.library.opcheck(_attention_gate_op, args)


def test_gate_compile_fullgraph_cpu():
    _compile_check("cpu")


@pytest.mark.parametrize("backend", _CONCAT_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape,x_cl", [(AWKWARD, True), ((6, 10, 4), False), ((32, 16, 8), True)],
                         ids=["awkward", "nchw-small", "one-chunk"])
def test_gate_concat_equals_gate_then_cat(backend, dtype, shape, x_cl, monkeypatch):
    """attention_gate_concat == cat([gate(x, g), g]) against the fp64 reference (gated part)
    and bit-exact for the copied g; channels_last output whatever the input layout."""
    cx, cg, f = shape
    device = "cuda" if torch.cuda.is_available() and backend in ("triton", "cuda") else "cpu"
    if backend == "cuda":
        _require_cuda_extension()
    x, g, p = make_inputs(cx, cg, f, dtype, device, x_cl=x_cl, g_cl=x_cl)
    y = ops.attention_gate_concat(x, g, **p, backend=backend)
    assert y.shape == (N, cx + cg, H, W) and y.dtype == dtype and y.device == x.device
    assert y.is_contiguous(memory_format=CL)
    ref_out, _ = reference64(x, g, p)
    assert_parity(y[:, :cx], ref_out, dtype, k=cx + cg, roundings=2,
                  what=f"concat {backend} {dtype} gated part")
    assert torch.equal(y[:, cx:], g), "g must be copied unchanged"


def test_gate_concat_opcheck_and_errors():
    x, g, p = make_inputs(8, 12, 4, torch.float32)
    from raunet_fast.ops.attention_gate.op import (
        attention_gate_concat_op as _attention_gate_concat_op,
    )

    args = (x, g, p["w_x"], p["w_g"], p["bias"], p["w_psi"], p["b_psi"])
    torch.library.opcheck(_attention_gate_concat_op, (*args, "torch"))
    torch.library.opcheck(_attention_gate_concat_op, (*args, "cpp"))
    with pytest.raises(ValueError, match="w_g must be F x Cg"):
        ops.attention_gate_concat(x, g, **{**p, "w_g": p["w_g"][:, :5]})
    torch._dynamo.reset()
    fn = torch.compile(lambda a, b: ops.attention_gate_concat(a, b, **p, backend="cpp") * 2,
                       fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(fn(x, g), 2 * ops.attention_gate_concat(x, g, **p,
                                                                           backend="cpp"))
