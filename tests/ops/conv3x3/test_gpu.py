"""conv3x3_fused on a CUDA device: every backend against fp64 references, the TMA route, compile, opcheck (``pytest -m gpu``)."""
from __future__ import annotations

import pytest
import torch
from helpers.conv_cases import (
    EPILOGUES,
    GPU_DTYPES,
    GPU_SHAPES,
    HAS_CUDA,
    check,
    make_case,
    need_backend,
    randomize_bn,
    use_backend,
)
from helpers.numerics import (
    assert_close_report,
    assert_parity,
    requires_cuda,
    tolerance,
)

from raunet_fast.blocks import ResidualBlock
from raunet_fast.ops import conv3x3_fused
from raunet_fast.ops.fused_blocks import FusedResidualBlock
from raunet_fast.ops.settings import settings

pytestmark = pytest.mark.gpu

@requires_cuda
@pytest.mark.parametrize("backend", ["triton", "cuda", "cuda-epilogue"])
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv_gpu(no_tf32, monkeypatch, backend, dtype, shape):
    """Correctness of the default config of each layer (autotuning, which compiles every
    candidate, is exercised by test_fused_block_gpu)."""
    backend = use_backend(backend, monkeypatch)
    monkeypatch.setattr(settings, "autotune", False)
    *dims, cs = shape
    for i, epilogue in enumerate(EPILOGUES):
        for relu in (True, False):
            cl = (i + relu) % 2 == 0
            args, kw, k = make_case(*dims, epilogue, dtype=dtype, device="cuda",
                                    channels_last=cl, cs=cs)
            check(backend, args, kw, k, relu, dtype,
                  f"{backend} {dtype} {shape} {epilogue} relu={relu} channels_last={cl}")


@requires_cuda
@pytest.mark.parametrize("backend", ["triton", "cuda", "cuda-epilogue"])
def test_conv_gpu_fp32_parity_with_cudnn(no_tf32, monkeypatch, backend):
    """fp32 with TF32 off: the fused op agrees with cuDNN to fp32 rounding."""
    backend = use_backend(backend, monkeypatch)
    args, kw, k = make_case(2, 64, 96, 17, 19, "shortcut", device="cuda", channels_last=True)
    y = conv3x3_fused(*args, backend=backend, **kw)
    want = conv3x3_fused(*args, backend="torch", **kw)
    assert_close_report(y, want, *tolerance(torch.float32, k), f"{backend} vs cuDNN fp32")


@requires_cuda
@pytest.mark.parametrize("backend", ["triton", "cuda", "cuda-epilogue", "auto"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_fused_block_gpu(monkeypatch, backend, dtype):
    backend = use_backend(backend, monkeypatch)
    for cin, cout in ((64, 128), (128, 128), (3, 64)):
        block = ResidualBlock(cin, cout)
        randomize_bn(block)
        block = block.eval().cuda()
        fused = FusedResidualBlock.from_block(block, dtype=dtype, backend=backend)
        x = torch.randn(2, cin, 40, 36, device="cuda").contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            want = block.double()(x.double())
            got = fused(x.to(dtype))
        assert got.is_contiguous(memory_format=torch.channels_last)
        # see test_fused_residual_block_triton_interpreter; cuDNN / the epilogue may add
        # roundings of the conv result and the projected shortcut: 16
        assert_parity(got, want, dtype, k=9 * cout + cin, roundings=16,
                      what=f"fused block {cin}->{cout} {backend}")


@requires_cuda
@pytest.mark.parametrize("mode", ["tune", "triton", "cudnn", "cudnn-pad"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_auto_pick_gpu(no_tf32, monkeypatch, mode, dtype):
    """"auto" where Triton contends with cuDNN (narrow first convs, Cin 3 / 4; on sm_90+
    TMA-aligned layers, with a projection and a residual): whichever backend the one-time
    timing (or RAUNET_CONV_AUTO) picks agrees with the fp64 reference, and the pick is
    remembered."""
    from raunet_fast.ops.conv3x3 import dispatch as op

    monkeypatch.setitem(op.AUTO_PICK, "mode", mode)
    monkeypatch.setattr(op, "_PICKED", {})
    monkeypatch.setattr(op, "PICK_TIMES", {})
    cases = [(3, 64, "none", 3), (4, 64, "residual", 3), (3, 64, "shortcut", 3),
             (64, 128, "shortcut", 64), (32, 64, "residual", 32)]
    for cin, cout, epilogue, cs in cases:
        args, kw, k = make_case(2, cin, cout, 9, 70, epilogue, dtype=dtype, device="cuda",
                                channels_last=True, cs=cs)
        check("auto", args, kw, k, True, dtype, f"auto {mode} {dtype} {cin} {epilogue}")
    hopper = torch.cuda.get_device_capability()[0] == 9
    if mode == "tune":   # fp32: no TMA contender (16-bit only)
        assert len(op._PICKED) == 3 + (2 if hopper and dtype != torch.float32 else 0)
        for key, times in op.PICK_TIMES.items():   # every candidate ran (none raised)
            assert set(times) == {*key[-1], "cudnn"}, (key, times)
            assert ("cudnn-pad" in key[-1]) == (key[0] % 8 != 0 or key[2] % 8 != 0), key
    else:
        assert not op._PICKED
    assert set(op._PICKED.values()) <= {"triton", "cudnn", "cudnn-pad"}


@requires_cuda
@pytest.mark.skipif(not HAS_CUDA or torch.cuda.get_device_capability()[0] != 9,
                    reason="the TMA kernel runs on sm_90 (Hopper) only")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_conv_gpu_tma(monkeypatch, dtype):
    """The Hopper TMA kernel on the GPU: partial row / channel tiles, Cin not a multiple of
    the K chunk, a shortcut through TMA and a gathered 3-channel one (level 1's conv2),
    every epilogue, against fp64; each launch took the TMA path."""
    from raunet_fast.ops.conv3x3.triton import launch as k

    monkeypatch.setattr(settings, "autotune", False)   # each layer's default config (fast)
    for shape in ((2, 24, 40, 5, 70, 8), (1, 96, 128, 6, 200, 64), (3, 64, 64, 4, 64, 32),
                  (2, 64, 64, 4, 96, 3)):
        *dims, cs = shape
        for i, epilogue in enumerate(EPILOGUES):
            monkeypatch.setattr(k, "_TUNED", {})
            args, kw, kk = make_case(*dims, epilogue, dtype=dtype, device="cuda",
                                     channels_last=True, cs=cs)
            check("triton", args, kw, kk, i != 1, dtype, f"TMA {dtype} {shape} {epilogue}")
            assert [key[0] for key in k._TUNED] == ["tma"], f"TMA kernel not used: {shape}"


@requires_cuda
def test_conv_gpu_compile_fullgraph():
    torch._dynamo.reset()
    block = ResidualBlock(32, 64)
    randomize_bn(block)
    fused = FusedResidualBlock.from_block(block.eval().cuda(), dtype=torch.bfloat16,
                                          backend="triton")
    x = torch.randn(2, 32, 24, 24, device="cuda", dtype=torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(fused, fullgraph=True)
    with torch.no_grad():
        assert_close_report(compiled(x), fused(x), 1e-2, 1e-2, "compiled fused block (GPU)")


@requires_cuda
def test_conv_gpu_opcheck():
    from raunet_fast.ops.conv3x3 import conv3x3_fused_op as _conv3x3_fused_op
    from raunet_fast.ops.conv3x3 import pack_weights

    for backend in ("triton", "cuda"):
        need_backend(backend)
        (x, w, b), kw, _ = make_case(1, 32, 48, 6, 7, "shortcut", dtype=torch.float16,
                                     device="cuda", channels_last=True)
        packed = pack_weights(w, kw["shortcut_weight"], x.dtype)
        torch.library.opcheck(_conv3x3_fused_op, (x, w, b, None, kw["shortcut_input"],
                                                  kw["shortcut_weight"], packed, True, backend))
