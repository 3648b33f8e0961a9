"""conv3x3_fused's Triton kernels under the Triton interpreter on the CPU: every shipped config, the flat-K and TMA routes, odd sizes."""
from __future__ import annotations

import pytest
import torch
from helpers.conv_cases import (
    EPILOGUES,
    HAS_CUDA,
    SMALL_K_CASES,
    TMA_CASES,
    _all_cuda_variants,
    _small_k_variants,
    _tma_variants,
    check,
    interpreter_only,
    make_case,
    randomize_bn,
)
from helpers.numerics import (
    assert_parity,
)

from raunet_fast.blocks import ResidualBlock
from raunet_fast.ops.fused_blocks import FusedResidualBlock
from raunet_fast.ops.kernel_config import KernelConfig


# ------------------------------------------------------------------ Triton, interpreter
@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("epilogue", EPILOGUES)
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
def test_conv_triton_interpreter(dtype, epilogue, relu):
    cl = relu  # both layouts over the sweep
    args, kw, k = make_case(3, 24, 40, 7, 13, epilogue, dtype=dtype, channels_last=cl, cs=5)
    check("triton", args, kw, k, relu, dtype, f"triton-interp {dtype} {epilogue} relu={relu}")


@interpreter_only
@pytest.mark.parametrize("shape,cs", [((1, 3, 40, 5, 13), 3), ((2, 20, 24, 6, 7), 20)],
                         ids=["cin3", "multitile"])
def test_conv_triton_interpreter_small_tiles(monkeypatch, shape, cs):
    """Small tiles: several M/N tiles, several K chunks, partial tiles in every dimension."""
    from raunet_fast.ops.conv3x3.triton import launch as k

    monkeypatch.setattr(k.configs, "INTERPRET_CONFIG", KernelConfig(32, 16, 16, 4, 1))
    monkeypatch.setattr(k.configs, "SMALL_K_MAX", 0)   # the implicit-GEMM kernel even for Cin = 3
    monkeypatch.setattr(k, "_TUNED", {})
    args, kw, kk = make_case(*shape, "shortcut", cs=cs)
    check("triton", args, kw, kk, True, torch.float32, f"triton-interp small tiles {shape}")
    args, kw, kk = make_case(*shape, "residual", channels_last=True)
    check("triton", args, kw, kk, True, torch.float32, f"triton-interp small tiles {shape} res")


@interpreter_only
@pytest.mark.parametrize("cs", [16, 3], ids=["aligned-shortcut", "unaligned-shortcut"])
def test_conv_triton_interpreter_aligned(cs):
    """Channels-last with channel counts % 16 == 0: the XA/YA = 16 path (strides passed
    divided by 16); a Cs = 3 shortcut takes SA = 1, as in the first RAUNet block."""
    from raunet_fast.ops.conv3x3.triton import launch as k

    args, kw, kk = make_case(2, 16, 32, 5, 6, "shortcut", channels_last=True, cs=cs)
    assert k._align(args[0], True) == 16
    assert k._align(kw["shortcut_input"], True) == (16 if cs == 16 else 1)
    check("triton", args, kw, kk, True, torch.float32, f"triton-interp aligned cs={cs}")
    args, kw, kk = make_case(1, 32, 32, 4, 7, "residual", dtype=torch.float16,
                             channels_last=True)
    check("triton", args, kw, kk, False, torch.float16, "triton-interp aligned residual fp16")


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", SMALL_K_CASES, ids=lambda s: "x".join(map(str, s)))
def test_conv_triton_interpreter_small_k(monkeypatch, dtype, shape):
    """Narrow inputs run the flat-K kernel (asserted through its tuning key) and match the
    fp64 reference for every epilogue, ReLU on and off, both layouts."""
    from raunet_fast.ops.conv3x3.triton import launch as k

    *dims, cs = shape
    for i, epilogue in enumerate(EPILOGUES):
        for relu in (True, False):
            monkeypatch.setattr(k, "_TUNED", {})
            cl = (i + relu) % 2 == 0
            args, kw, kk = make_case(*dims, epilogue, dtype=dtype, channels_last=cl, cs=cs)
            if kk > k.configs.SMALL_K_MAX:   # 7 channels + a 1-channel shortcut is the edge
                continue
            check("triton", args, kw, kk, relu, dtype,
                  f"flat-K {dtype} {shape} {epilogue} relu={relu} channels_last={cl}")
            assert [key[0] for key in k._TUNED] == ["small"], "flat-K kernel not used"


@interpreter_only
def test_conv_triton_small_k_routing(monkeypatch):
    """K = 9*Cin + Cs <= SMALL_K_MAX takes the flat-K kernel, one more channel the
    implicit-GEMM kernel; both agree with the reference."""
    from raunet_fast.ops.conv3x3.triton import launch as k

    for cin, cs, small in ((7, 1, True), (7, 2, False), (3, 37, True), (3, 38, False)):
        monkeypatch.setattr(k, "_TUNED", {})
        args, kw, kk = make_case(1, cin, 16, 4, 5, "shortcut", cs=cs)
        check("triton", args, kw, kk, True, torch.float32, f"routing cin={cin} cs={cs}")
        assert (list(k._TUNED)[0][0] == "small") == small, (cin, cs)


@interpreter_only
@pytest.mark.parametrize("shape", TMA_CASES, ids=lambda s: "x".join(map(str, s)))
def test_conv_triton_interpreter_tma(monkeypatch, shape):
    """fp16 (the kernel is 16-bit only; the interpreter has no bf16 arithmetic)."""
    from raunet_fast.ops.conv3x3.triton import launch as k

    monkeypatch.setitem(k.TMA, "mode", "interpret")
    dtype = torch.float16
    *dims, cs = shape
    for i, epilogue in enumerate(EPILOGUES):
        relu = i != 1
        monkeypatch.setattr(k, "_TUNED", {})
        args, kw, kk = make_case(*dims, epilogue, dtype=dtype, channels_last=True, cs=cs)
        check("triton", args, kw, kk, relu, dtype, f"TMA {dtype} {shape} {epilogue} relu={relu}")
        assert [key[0] for key in k._TUNED] == ["tma"], "TMA kernel not used"


@interpreter_only
def test_conv_triton_tma_routing(monkeypatch):
    """The TMA kernel only where it applies; elsewhere the pointer kernel, same results."""
    from raunet_fast.ops.conv3x3.triton import launch as k

    monkeypatch.setitem(k.TMA, "mode", "interpret")
    cases = [((1, 16, 32, 2, 63), True, "narrower than TMA_MIN_WIDTH"),
             ((1, 16, 32, 2, 64), False, "NCHW"),
             ((1, 12, 32, 2, 64), True, "Cin 12: 24-byte pixels"),
             ((1, 16, 32, 2, 64), True, "fp32: 16-bit only")]
    for dims, cl, why in cases:
        monkeypatch.setattr(k, "_TUNED", {})
        dtype = torch.float32 if "fp32" in why else torch.float16
        args, kw, kk = make_case(*dims, "residual", dtype=dtype, channels_last=cl)
        if not cl:
            args = (args[0].contiguous(),) + args[1:]
        check("triton", args, kw, kk, True, dtype, why)
        assert [key[0] for key in k._TUNED] != ["tma"], why
    monkeypatch.setitem(k.TMA, "mode", "auto")   # the interpreter leaves it out by default
    monkeypatch.setattr(k, "_TUNED", {})
    args, kw, kk = make_case(1, 16, 32, 2, 64, "none", dtype=torch.float16, channels_last=True)
    check("triton", args, kw, kk, True, torch.float16, "auto mode, interpreter")
    assert [key[0] for key in k._TUNED] != ["tma"]
    monkeypatch.setitem(k.TMA, "mode", "interpret")   # the same call does take it when asked
    monkeypatch.setattr(k, "_TUNED", {})
    check("triton", args, kw, kk, True, torch.float16, "interpret mode")
    assert [key[0] for key in k._TUNED] == ["tma"]


@interpreter_only
@pytest.mark.parametrize("variant", [pytest.param(v, id="{}x{}x{}-w{}s{}-{}".format(
    *v["config"].tile, str(v["dtype"])[6:])) for v in _tma_variants() if v["sc_desc"]]
    if not HAS_CUDA else [])
def test_conv_triton_interpreter_tma_configs(monkeypatch, variant):
    """Every TMA config shipped for the GPU, in the interpreter (fp16): its tile sizes'
    partial tiles and chunking."""
    from raunet_fast.ops.conv3x3.triton import launch as k

    monkeypatch.setitem(k.TMA, "mode", "interpret")
    monkeypatch.setattr(k.configs, "tma_candidates", lambda *a, **kw: [variant["config"]])
    monkeypatch.setattr(k, "_TUNED", {})
    dtype = torch.float16
    bm, bn, bk = variant["config"].tile[:3]
    # a row and a half of tiles, Cin = 1.5 chunks, Cout = 1.5 output tiles; the shortcut
    # through TMA (Cs aligned) and gathered (Cs = 3)
    for cs in (bk // 2, 3):
        monkeypatch.setattr(k, "_TUNED", {})
        args, kw, kk = make_case(1, bk + bk // 2, bn + bn // 2, 2, bm + bm // 2, "shortcut",
                                 dtype=dtype, channels_last=True, cs=cs)
        check("triton", args, kw, kk, True, dtype, f"TMA config {variant['config']} cs={cs}")
        assert [key[0] for key in k._TUNED] == ["tma"]


@interpreter_only
@pytest.mark.parametrize("variant", _small_k_variants() if not HAS_CUDA else [])
def test_conv_triton_interpreter_small_k_configs(monkeypatch, variant):
    """Every flat-K tile config shipped for the GPU, in the interpreter, at each BLOCK_K."""
    from raunet_fast.ops.conv3x3.triton import launch as k

    monkeypatch.setattr(k.configs, "small_k_candidates", lambda *a, **kw: [variant["config"]])
    monkeypatch.setattr(k, "_TUNED", {})
    for (n, cin, cout, h, w, cs), epilogue, cl in zip(
            SMALL_K_CASES[:3], ("shortcut", "residual", "none"), (True, False, True)):
        args, kw, kk = make_case(n, cin, cout, h, w, epilogue, channels_last=cl, cs=cs)
        check("triton", args, kw, kk, True, torch.float32,
              f"flat-K config {variant['config']} cin={cin} {epilogue}")


@interpreter_only
@pytest.mark.parametrize("variant", _all_cuda_variants() if not HAS_CUDA else [])
def test_conv_triton_interpreter_shipped_configs(monkeypatch, variant):
    """Every tile config shipped for the GPU, run in the interpreter on a shape of its family
    (aligned: channels-last, channels % 16 == 0 with a Cs = 3 shortcut; generic: NCHW, odd
    channel counts): the masking logic of each tile size, checked without a GPU."""
    from raunet_fast.ops.conv3x3.triton import launch as k

    monkeypatch.setattr(k.configs, "candidate_configs", lambda *a, **kw: [variant["config"]])
    monkeypatch.setattr(k.configs, "SMALL_K_MAX", 0)   # narrow layers too: this kernel, not flat-K
    monkeypatch.setattr(k, "_TUNED", {})
    if variant["aligns"][0] == 1:
        cases = [make_case(1, 5, 20, 5, 7, "shortcut", cs=3),
                 # first layer: Cin = 3 but an aligned channels-last output (YA = 16)
                 make_case(2, 3, 32, 5, 7, "none", channels_last=True)]
    else:
        cases = [make_case(1, 16, 32, 5, 7, "shortcut", channels_last=True, cs=3)]
    for args, kw, kk in cases:
        check("triton", args, kw, kk, True, torch.float32, f"interp config {variant['config']}")


@interpreter_only
def test_fused_residual_block_triton_interpreter():
    block = ResidualBlock(8, 24)
    randomize_bn(block)
    block.eval()
    fused = FusedResidualBlock.from_block(block, dtype=torch.float16, backend="triton")
    assert fused.conv2.packed.shape == (9 * 24 + 8, 24)
    # other backends do not hold the Triton copy of the weights
    assert FusedResidualBlock.from_block(block, torch.float16, "auto").conv2.packed is None
    x = torch.randn(1, 8, 6, 7)
    with torch.no_grad():
        want = block.double()(x.double())
        got = fused(x.half())
    # rounded: input, both folded weights, conv1's output, conv2's and the output (~6
    # roundings, each of a size like the result's): generous 12
    assert_parity(got, want, torch.float16, k=9 * 24 + 8, roundings=12,
                  what="fused block triton fp16")


# ------------------------------------------------------------------ the GPU's run-time loops
def _run_or_skip_old_interpreter(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the known interpreter limitation only
        if "0-dimensional arrays" in repr(e):
            pytest.skip("this triton's interpreter cannot range() over runtime ints (numpy >= 2.3)")
        raise


@interpreter_only
@pytest.mark.parametrize("kernel", ["gemm", "small", "tma"])
def test_conv_triton_runtime_trip_counts_in_interpreter(monkeypatch, kernel):
    """The interpreter normally gets the K loops' trip counts as constants (K_ITERS,
    SC_ITERS, K_STEPS); the GPU counts them at run time, in a branch of its own. This runs
    that branch where the interpreter can (triton >= 3.7), with small K chunks so that every
    loop (taps x channel chunks, the shortcut's chunks, flat-K steps) runs several times and
    ends on a masked tail."""
    from raunet_fast.ops.conv3x3.triton import launch as k

    monkeypatch.setattr(k, "constant_trip_counts", lambda: False)
    monkeypatch.setattr(k.configs, "INTERPRET_CONFIG", KernelConfig(32, 16, 16, 4, 1))
    monkeypatch.setattr(k.configs, "SMALL_K_INTERPRET_CONFIG", KernelConfig(32, 16, 16, 4))
    dtype = torch.float16 if kernel == "tma" else torch.float32
    if kernel == "tma":
        monkeypatch.setitem(k.TMA, "mode", "interpret")
        cases = [((1, 24, 32, 2, 64), "shortcut", 24), ((1, 24, 32, 2, 64), "shortcut", 3),
                 ((1, 24, 32, 2, 64), "residual", None)]   # Cin 24: 2 chunks of 16
    elif kernel == "small":
        cases = [((2, 4, 24, 5, 7), "shortcut", 20), ((2, 3, 24, 5, 7), "residual", None)]
    else:
        cases = [((2, 20, 24, 5, 7), "shortcut", 20), ((1, 20, 24, 5, 7), "residual", None)]

    def run():
        for i, (dims, epilogue, cs) in enumerate(cases):
            monkeypatch.setattr(k, "_TUNED", {})
            cl = kernel == "tma" or i % 2 == 0
            args, kw, kk = make_case(*dims, epilogue, dtype=dtype, channels_last=cl, cs=cs)
            check("triton", args, kw, kk, True, dtype, f"run-time loops {kernel} {dims} "
                  f"{epilogue} cs={cs}")
            ran = {key[0] if key[0] in ("small", "tma") else "gemm" for key in k._TUNED}
            assert ran == {kernel}, f"{kernel} expected, {ran} ran"
    _run_or_skip_old_interpreter(run)


# ------------------------------------------------------------------ mixed layouts
@interpreter_only
@pytest.mark.parametrize("kernel", ["gemm", "small", "tma"])
def test_conv_triton_residual_and_shortcut_in_another_layout(monkeypatch, kernel):
    """x channels-last with the residual / shortcut input NCHW, and the other way round
    (and a strided view): the kernels read each operand through its own strides, so every
    mix matches the reference; the output keeps x's layout."""
    from raunet_fast.ops.conv3x3.triton import launch as k

    dtype = torch.float16 if kernel == "tma" else torch.float32
    if kernel == "tma":
        monkeypatch.setitem(k.TMA, "mode", "interpret")
    dims = {"gemm": (2, 16, 32, 5, 7), "small": (2, 3, 32, 5, 7), "tma": (1, 16, 32, 2, 64)}[kernel]
    cl, nchw = torch.channels_last, torch.contiguous_format
    for epilogue, name in (("residual", "residual"), ("shortcut", "shortcut_input")):
        for x_fmt, other_fmt in ((cl, nchw), (nchw, cl), (cl, "view")):
            monkeypatch.setattr(k, "_TUNED", {})
            args, kw, kk = make_case(*dims, epilogue, dtype=dtype, cs=16)
            x = args[0].contiguous(memory_format=x_fmt)
            t = kw[name]
            if other_fmt == "view":   # neither layout: every other column of a wider tensor
                wide = torch.randn(*t.shape[:3], 2 * t.shape[3]).to(dtype)
                wide[..., ::2] = t
                kw[name] = wide[..., ::2]
            else:
                kw[name] = t.contiguous(memory_format=other_fmt)
            y = check("triton", (x, *args[1:]), kw, kk, True, dtype,
                      f"{kernel}: x {x_fmt}, {name} {other_fmt}")
            assert y.is_contiguous(memory_format=x_fmt)
