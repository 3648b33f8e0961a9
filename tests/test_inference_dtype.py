"""``dtype="auto"``: bf16 where the hardware has bf16 matrix units (the ISA faked), fp32
elsewhere, and it says which it picked; the CPU features parser."""
from __future__ import annotations

import warnings

import pytest
import torch

from raunet_fast import runtime
from raunet_fast.inference import InferenceDtypeNotice, build_inference_model, inference_dtype
from raunet_fast.models import build_model


@pytest.mark.parametrize("flags, isa, picked", [
    ({"amx_bf16", "amx_tile", "avx512f", "avx512_bf16", "avx2"}, "AMX", torch.bfloat16),
    ({"avx512f", "avx512_bf16", "avx2"}, "AVX-512", torch.bfloat16),
    ({"avx512f", "avx2"}, "AVX-512", torch.float32),
    ({"avx2"}, "AVX2", torch.float32),
    (set(), "other", torch.float32),
])
def test_auto_dtype_follows_the_cpu(monkeypatch, flags, isa, picked):
    monkeypatch.setattr(runtime, "cpu_features", lambda: frozenset(flags))
    assert runtime.cpu_isa() == isa
    with pytest.warns(InferenceDtypeNotice, match=f"picked {'bf16' if picked == torch.bfloat16 else 'fp32'} on this CPU \\({isa}\\)"):
        assert inference_dtype("auto", "cpu", announce=True) == picked
    assert inference_dtype(None, "cpu") == torch.float32  # the default stays exact
    assert inference_dtype("auto", "cuda") == torch.bfloat16


def test_build_inference_model_says_what_auto_picked(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_features", lambda: frozenset({"avx2"}))
    model = build_model("raunet", base_channels=4, depth=2).eval()
    with pytest.warns(InferenceDtypeNotice, match="picked fp32"):
        fast = build_inference_model(model, dtype="auto", backend="torch")
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert fast(x).dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error", InferenceDtypeNotice)
        build_inference_model(model, backend="torch")  # the default says nothing


def test_cpu_features_reads_proc_cpuinfo(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile sse\n")
    real_open = open
    monkeypatch.setattr("builtins.open",
                        lambda path, *a, **k: real_open(info if path == "/proc/cpuinfo" else path, *a, **k))
    runtime.cpu_features.cache_clear()
    try:
        assert runtime.cpu_features() == {"avx2", "avx512f", "amx_bf16", "amx_tile"}
        assert runtime.cpu_has_fast_bf16()
    finally:
        runtime.cpu_features.cache_clear()
