"""attention_gate's Triton kernel under the Triton interpreter on the CPU: every shipped config, its filters, the GPU variant."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers.gate_cases import (
    AWKWARD,
    check,
    check_concat,
    make_inputs,
    no_cuda_interpreter,
)

import raunet_fast.ops as ops
from raunet_fast.ops import BackendUnavailable


# --------------------------------------------------------------------------- interface
def test_gate_import_does_not_import_triton():
    code = ("import sys, raunet_fast, raunet_fast.ops as o; f = o.attention_gate; "
            "import raunet_fast.ops.attention_gate; "
            "assert callable(f) and callable(o.attention_gate), 'op shadowed by module'; "
            "assert 'triton' not in sys.modules, 'importing the op imported triton'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


# ------------------------------------------------------------------ triton, interpreter
@no_cuda_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("cx,cg,f,x_cl,g_cl", [
    (*AWKWARD, True, True),      # K chunks with masked tails, two F chunks
    (*AWKWARD, False, False),    # NCHW loads / stores
    (16, 24, 16, True, False),   # x in one chunk (kept in registers), mixed layouts
])
def test_gate_triton_interpreter(dtype, cx, cg, f, x_cl, g_cl):
    pytest.importorskip("triton")
    check("triton", cx, cg, f, dtype, x_cl=x_cl, g_cl=g_cl)


@no_cuda_interpreter
@pytest.mark.parametrize("index", range(10))
def test_gate_triton_every_shipped_config_interpreted(index, monkeypatch):
    """Each GPU config's tiling (x in one chunk or looped, F chunks) in the interpreter."""
    pytest.importorskip("triton")
    from raunet_fast.ops.attention_gate.triton import configs as gcfg
    from raunet_fast.ops.attention_gate.triton import launch as kmod

    assert len(gcfg.CONFIGS) == 10, "update the parametrisation"
    monkeypatch.setattr(kmod, "FORCE_CONFIG", gcfg.CONFIGS[index])
    check("triton", 40, 72, 80, torch.float16, n=1, h=5, w=7)
    check_concat("triton", 24, 40, 16, torch.float16, n=1, h=5, w=7)


@no_cuda_interpreter
def test_gate_triton_gpu_kernel_variant_in_interpreter(monkeypatch):
    """The interpreter normally runs the constexpr-trip-count twin; this runs the kernel
    the GPU compiles (runtime trip counts) where the interpreter can (triton >= 3.7)."""
    pytest.importorskip("triton")
    from raunet_fast.ops.attention_gate.triton import launch as kmod

    monkeypatch.setattr(kmod, "attention_gate_kernel_interpreted", kmod.attention_gate_kernel)
    try:
        check("triton", *AWKWARD, torch.float32)
    except Exception as e:  # noqa: BLE001 - the known interpreter limitation only
        if "0-dimensional arrays" in repr(e):
            pytest.skip("this triton's interpreter cannot range() over runtime ints (numpy >= 2.3)")
        raise


def test_gate_triton_unavailable_says_why(monkeypatch):
    pytest.importorskip("triton")
    from raunet_fast.ops import _backend

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if torch.cuda.is_available():
        pytest.skip("with a GPU, CPU tensors are simply not triton's: checked by the message")
    x, g, p = make_inputs(8, 8, 4, torch.float32)
    assert "TRITON_INTERPRET=1" in _backend.triton_unavailable_reason(x.device)
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET=1"):
        ops.attention_gate(x, g, **p, backend="triton")
