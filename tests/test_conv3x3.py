"""conv3x3_fused: every backend against an independent fp64 ``F.conv2d`` reference.

* folding: the folded weights reproduce the eval-mode ResidualBlock / PlainBlock;
* ``torch`` and ``cpp`` backends: awkward shapes (Cin 3/24/80, Cout 40, H 7, W 13, batch 3),
  every epilogue (none / identity residual / 1x1 shortcut, ReLU on/off), both layouts;
* ``triton`` in the interpreter (CPU only, fp32/fp16, tiny shapes; skipped where a GPU is);
* ``triton`` / ``cuda`` on a GPU (fp32 with TF32 off, fp16, bf16; skipped without CUDA);
* ``torch.library.opcheck`` and one ``torch.compile(fullgraph=True)``.

Tolerances: :func:`conftest.assert_parity`: fp32 by :func:`conftest.tolerance` with the
reduction length ``K = 9*Cin (+ Cs)``; fp16 / bf16 by a rounding model (a few roundings of
the output and the intermediates, elementwise and in rms; not growing with K, see
test_parity_model.py). Weights are scaled by ``1/sqrt(K)`` so outputs are O(1).
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from helpers.numerics import assert_close_report, assert_parity, requires_cuda, tolerance
from raunet_fast.blocks import PlainBlock, ResidualBlock
from raunet_fast.fold import fold_plain_block, fold_residual_block
from raunet_fast.ops import BackendUnavailable, conv3x3_fused
from raunet_fast.ops.fused_blocks import FusedPlainBlock, FusedResidualBlock, fuse_block

HAS_CUDA = torch.cuda.is_available()
interpreter_only = pytest.mark.skipif(
    HAS_CUDA, reason="Triton interpreter tests run on CPU-only machines; the GPU tests cover "
                     "the compiled kernel here")

EPILOGUES = ["none", "residual", "shortcut"]


# ------------------------------------------------------------------ helpers
def make_case(n, cin, cout, h, w, epilogue, dtype=torch.float32, device="cpu",
              channels_last=False, cs=None):
    """Random inputs for one call; returns (args, kwargs, K)."""
    cs = cs if cs is not None else max(1, cin // 2 + 1)
    k = 9 * cin + (cs if epilogue == "shortcut" else 0)
    x = torch.randn(n, cin, h, w, device=device)
    wt = torch.randn(cout, cin, 3, 3, device=device) / k ** 0.5
    b = torch.randn(cout, device=device) * 0.5
    kw = {}
    if epilogue == "residual":
        kw["residual"] = torch.randn(n, cout, h, w, device=device)
    elif epilogue == "shortcut":
        kw["shortcut_input"] = torch.randn(n, cs, h, w, device=device)
        kw["shortcut_weight"] = torch.randn(cout, cs, device=device) / k ** 0.5
    cast = {name: t.to(dtype) for name, t in kw.items()}
    x, wt = x.to(dtype), wt.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        for name in ("residual", "shortcut_input"):
            if name in cast:
                cast[name] = cast[name].contiguous(memory_format=torch.channels_last)
    return (x, wt, b), cast, k


def reference(x, weight, bias, residual=None, shortcut_input=None, shortcut_weight=None,
              relu=True, parts=False):
    """fp64 reference, written independently of the op. ``parts=True``: also the
    magnitude of the intermediates a kernel may round (|conv + bias| + |shortcut|)."""
    y = F.conv2d(x.double().cpu(), weight.double().cpu(), bias.double().cpu(), padding=1)
    sc = torch.zeros_like(y)
    if residual is not None:
        sc = residual.double().cpu()
    if shortcut_input is not None:
        ws = shortcut_weight.double().cpu()
        sc = torch.einsum("nchw,oc->nohw", shortcut_input.double().cpu(), ws)
    out = torch.relu(y + sc) if relu else y + sc
    return (out, y.abs() + sc.abs()) if parts else out


def check(backend, args, kw, k, relu, dtype, what):
    y = conv3x3_fused(*args, relu=relu, backend=backend, **kw)
    x = args[0]
    assert y.dtype == x.dtype and y.device == x.device
    assert y.shape == (x.shape[0], args[1].shape[0], *x.shape[2:])
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        assert y.is_contiguous(memory_format=torch.channels_last), f"{what}: layout not kept"
    else:
        assert y.is_contiguous(), f"{what}: layout not kept"
    want, mag = reference(*args, relu=relu, parts=True, **kw)
    # 16-bit: fp32 accumulation, then up to three roundings (conv result, sum, output; cuDNN
    # and oneDNN round the conv before the epilogue adds)
    assert_parity(y, want, dtype, k=k, scale=mag, roundings=3, what=what)
    return y


def randomize_bn(module: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine parameters (fresh BN folds trivially)."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.3)
                m.bias.normal_(0, 0.3)


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


# ------------------------------------------------------------------ torch / cpp backends
AWKWARD = [  # n, cin, cout, h, w
    (3, 3, 40, 7, 13),
    (1, 24, 40, 7, 13),
    (2, 80, 16, 5, 6),
    (1, 1, 1, 1, 1),
]


@pytest.mark.parametrize("backend", ["torch", "cpp", "cpp-epilogue"])
@pytest.mark.parametrize("shape", AWKWARD, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("epilogue", EPILOGUES)
def test_conv_cpu_backends_fp32(backend, shape, epilogue, monkeypatch):
    if backend == "cpp-epilogue":  # ReLU through the csrc epilogue, not oneDNN post-ops
        from raunet_fast.ops import conv3x3 as op

        monkeypatch.setitem(op.ONEDNN_POSTOPS, "enabled", False)
        backend = "cpp"
    for i, relu in enumerate((True, False)):
        cl = bool(i)  # both layouts, each epilogue
        args, kw, k = make_case(*shape, epilogue, channels_last=cl)
        check(backend, args, kw, k, relu, torch.float32,
              f"{backend} {shape} {epilogue} relu={relu} channels_last={cl}")


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_conv_cpp_fp32_uses_onednn_prepacking():
    from raunet_fast.ops import conv3x3 as op

    args, kw, k = make_case(2, 16, 32, 6, 7, "shortcut", channels_last=True)
    ext = op._ext(op._CPU_EXT)
    y = op._cpp_onednn(ext, *args, None, kw["shortcut_input"], kw["shortcut_weight"], True)
    assert y is not None and op._ONEDNN["enabled"], "prepacked oneDNN path not taken"
    assert op.ONEDNN_POSTOPS["enabled"], "oneDNN post-ops (bias + add + ReLU) not taken"
    assert_close_report(y, reference(*args, **kw), *tolerance(torch.float32, k), "oneDNN path")
    (x, w, b), _, k = make_case(2, 16, 32, 6, 7, "residual", channels_last=False)
    r = torch.randn(2, 32, 6, 7).contiguous(memory_format=torch.channels_last)  # other layout
    y = op._cpp_onednn(ext, x, w, b, r, None, None, True)
    assert op.ONEDNN_POSTOPS["enabled"]
    assert conv3x3_fused(x, w, b, residual=r, backend="cpp").is_contiguous()  # x's layout
    assert_close_report(y, reference(x, w, b, residual=r), *tolerance(torch.float32, k),
                        "oneDNN post-ops, residual in the other layout")


@pytest.mark.parametrize("epilogue", EPILOGUES)
def test_conv_cpp_fp32_without_onednn_prepacking(monkeypatch, epilogue):
    """fp32 "cpp" normally convolves with oneDNN-prepacked weights; the plain at::conv2d path
    (taken where this torch build lacks those ops) must agree too."""
    from raunet_fast.ops import conv3x3 as op

    monkeypatch.setitem(op._ONEDNN, "enabled", False)
    for cl in (False, True):
        args, kw, k = make_case(3, 24, 40, 7, 13, epilogue, channels_last=cl)
        check("cpp", args, kw, k, True, torch.float32, f"cpp at::conv2d {epilogue} cl={cl}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("epilogue", EPILOGUES)
def test_conv_cpp_low_precision(dtype, epilogue):
    args, kw, k = make_case(3, 24, 40, 7, 13, epilogue, dtype=dtype, channels_last=True)
    check("cpp", args, kw, k, True, dtype, f"cpp {dtype} {epilogue}")


def test_conv_cpp_aliasing_and_noncontiguous():
    """A residual that is a strided view, and x in neither layout (a slice)."""
    (x, w, b), _, k = make_case(2, 16, 16, 9, 11, "none")
    big = torch.randn(2, 16, 9, 22)
    residual = big[..., ::2]  # non-contiguous view
    xs = torch.randn(2, 32, 9, 11)[:, 8:24]
    for backend in ("torch", "cpp"):
        y = conv3x3_fused(xs, w, b, residual=residual, backend=backend)
        assert_close_report(y, reference(xs, w, b, residual=residual), *tolerance(torch.float32, k),
                            f"{backend} non-contiguous")


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
    from raunet_fast.kernels import conv3x3 as k

    monkeypatch.setattr(k, "INTERPRET_CONFIG", (32, 16, 16, 4, 1))
    monkeypatch.setattr(k, "SMALL_K_MAX", 0)   # the implicit-GEMM kernel even for Cin = 3
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
    from raunet_fast.kernels import conv3x3 as k

    args, kw, kk = make_case(2, 16, 32, 5, 6, "shortcut", channels_last=True, cs=cs)
    assert k._align(args[0], True) == 16
    assert k._align(kw["shortcut_input"], True) == (16 if cs == 16 else 1)
    check("triton", args, kw, kk, True, torch.float32, f"triton-interp aligned cs={cs}")
    args, kw, kk = make_case(1, 32, 32, 4, 7, "residual", dtype=torch.float16,
                             channels_last=True)
    check("triton", args, kw, kk, False, torch.float16, "triton-interp aligned residual fp16")


# narrow inputs: the flat-K kernel (K = 9*Cin + Cs <= 64): BLOCK_K 16 / 32 / 64, partial
# M and N tiles, both layouts, an aligned channels-last output (Cout 64)
SMALL_K_CASES = [  # n, cin, cout, h, w, cs
    (3, 3, 40, 7, 13, 3),     # K 27 (+3): BLOCK_K 32, N tile masked
    (2, 1, 64, 5, 9, 6),      # K 9 (+6): BLOCK_K 16
    (1, 4, 64, 6, 11, 20),    # K 36 (+20 = 56): BLOCK_K 64
    (2, 7, 24, 3, 4, 1),      # K 63 (+1 = 64): the largest flat K
]


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", SMALL_K_CASES, ids=lambda s: "x".join(map(str, s)))
def test_conv_triton_interpreter_small_k(monkeypatch, dtype, shape):
    """Narrow inputs run the flat-K kernel (asserted through its tuning key) and match the
    fp64 reference for every epilogue, ReLU on and off, both layouts."""
    from raunet_fast.kernels import conv3x3 as k

    *dims, cs = shape
    for i, epilogue in enumerate(EPILOGUES):
        for relu in (True, False):
            monkeypatch.setattr(k, "_TUNED", {})
            cl = (i + relu) % 2 == 0
            args, kw, kk = make_case(*dims, epilogue, dtype=dtype, channels_last=cl, cs=cs)
            if kk > k.SMALL_K_MAX:   # 7 channels + a 1-channel shortcut is the edge
                continue
            check("triton", args, kw, kk, relu, dtype,
                  f"flat-K {dtype} {shape} {epilogue} relu={relu} channels_last={cl}")
            assert [key[0] for key in k._TUNED] == ["small"], "flat-K kernel not used"


@interpreter_only
def test_conv_triton_small_k_routing(monkeypatch):
    """K = 9*Cin + Cs <= SMALL_K_MAX takes the flat-K kernel, one more channel the
    implicit-GEMM kernel; both agree with the reference."""
    from raunet_fast.kernels import conv3x3 as k

    for cin, cs, small in ((7, 1, True), (7, 2, False), (3, 37, True), (3, 38, False)):
        monkeypatch.setattr(k, "_TUNED", {})
        args, kw, kk = make_case(1, cin, 16, 4, 5, "shortcut", cs=cs)
        check("triton", args, kw, kk, True, torch.float32, f"routing cin={cin} cs={cs}")
        assert (list(k._TUNED)[0][0] == "small") == small, (cin, cs)


def _tma_variants():
    from raunet_fast.kernels import conv3x3 as k

    return k.shipped_tma_configs()


# the Hopper TMA kernel, run by the interpreter (which models descriptors, zero fill of
# out-of-bounds boxes included): rows at least TMA_MIN_WIDTH wide, partial row tiles, Cin
# not a multiple of BLOCK_K (chunks reaching into the next tap's weight rows), a partial
# output-channel tile; channels-last, 16-byte aligned channel counts
TMA_CASES = [  # n, cin, cout, h, w, cs
    (2, 24, 40, 3, 70, 8),
    (1, 16, 32, 2, 64, 24),
    (1, 8, 16, 4, 100, 16),
    (2, 16, 32, 3, 66, 3),    # a 3-channel shortcut (the first block): gathered, not TMA
]


@interpreter_only
@pytest.mark.parametrize("shape", TMA_CASES, ids=lambda s: "x".join(map(str, s)))
def test_conv_triton_interpreter_tma(monkeypatch, shape):
    """fp16 (the kernel is 16-bit only; the interpreter has no bf16 arithmetic)."""
    from raunet_fast.kernels import conv3x3 as k

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
    from raunet_fast.kernels import conv3x3 as k

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
    *v["config"], str(v["dtype"])[6:])) for v in _tma_variants() if v["sc_desc"]]
    if not HAS_CUDA else [])
def test_conv_triton_interpreter_tma_configs(monkeypatch, variant):
    """Every TMA config shipped for the GPU, in the interpreter (fp16): its tile sizes'
    partial tiles and chunking."""
    from raunet_fast.kernels import conv3x3 as k

    monkeypatch.setitem(k.TMA, "mode", "interpret")
    monkeypatch.setattr(k, "tma_candidates", lambda *a, **kw: [variant["config"]])
    monkeypatch.setattr(k, "_TUNED", {})
    dtype = torch.float16
    bm, bn, bk = variant["config"][:3]
    # a row and a half of tiles, Cin = 1.5 chunks, Cout = 1.5 output tiles; the shortcut
    # through TMA (Cs aligned) and gathered (Cs = 3)
    for cs in (bk // 2, 3):
        monkeypatch.setattr(k, "_TUNED", {})
        args, kw, kk = make_case(1, bk + bk // 2, bn + bn // 2, 2, bm + bm // 2, "shortcut",
                                 dtype=dtype, channels_last=True, cs=cs)
        check("triton", args, kw, kk, True, dtype, f"TMA config {variant['config']} cs={cs}")
        assert [key[0] for key in k._TUNED] == ["tma"]


def test_auto_pick_faster(monkeypatch):
    """The one-time backend choice on CUDA where Triton contends ("auto"): the faster
    candidate by the timer, remembered per key; a failing candidate is out; none left ->
    default."""
    from raunet_fast.ops import conv3x3 as op

    monkeypatch.setattr(op, "_PICKED", {})
    monkeypatch.setattr(op, "PICK_TIMES", {})
    calls = []
    cands = {"triton": lambda: calls.append("triton"), "cudnn": lambda: calls.append("cudnn")}
    ms = {"triton": 0.5, "cudnn": 0.9}

    def timer(fn):
        fn()
        return ms[calls[-1]]

    assert op.pick_faster(("a",), cands, timer, "cudnn") == "triton"
    n = len(calls)
    assert op.pick_faster(("a",), cands, timer, "cudnn") == "triton" and len(calls) == n
    ms.update(triton=2.0)
    assert op.pick_faster(("b",), cands, timer, "cudnn") == "cudnn"

    def boom():
        raise RuntimeError("no kernel image")
    assert op.pick_faster(("c",), {"triton": boom, "cudnn": cands["cudnn"]}, timer,
                          "triton") == "cudnn"
    assert op.pick_faster(("d",), {"triton": boom}, timer, "cudnn") == "cudnn"   # none ran
    assert op._PICKED == {("a",): "triton", ("b",): "cudnn", ("c",): "cudnn"}  # d: retried
    assert op.PICK_TIMES[("a",)] == {"triton": 0.5, "cudnn": 0.9}
    assert op.PICK_TIMES[("c",)] == {"cudnn": 0.9}
    # the report benchmark prints, for a key shaped like _auto_pick's
    key = (64, 128, 64, False, True, torch.bfloat16, torch.channels_last, True, 20, 0, True,
           True, True)
    monkeypatch.setattr(op, "PICK_TIMES", {key: {"triton": 0.21, "cudnn": 0.25}})
    op._PICKED[key] = "triton"
    (line,) = op.describe_picks()
    assert "64 -> 128" in line and "1x1 64" in line and "bfloat16" in line
    assert "cudnn 0.2500, triton 0.2100 ms -> triton" in line and str(2 ** 20) in line


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("cin", [1, 3, 4, 13, 16])
def test_pad_channels(channels_last, cin):
    """Zero channels up to a multiple of 8 ("cudnn-pad"): the same convolution (fp64, against
    the unpadded one), in the requested layout; the padded weight is made once per weight
    tensor and made again after an in-place update."""
    from raunet_fast.ops import conv3x3 as op

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, cin, 7, 13, dtype=torch.float64).contiguous(memory_format=fmt)
    w = torch.randn(5, cin, 3, 3, dtype=torch.float64)
    xp, wp = op.pad_channels(x, w, fmt)
    cp = -(-cin // 8) * 8
    assert xp.shape == (2, cp, 7, 13) and wp.shape == (5, cp, 3, 3)
    if cp == cin:
        assert xp is x and wp is w
        return
    assert xp.is_contiguous(memory_format=fmt) and wp.is_contiguous(memory_format=fmt)
    assert not xp[:, cin:].any() and not wp[:, cin:].any()
    torch.testing.assert_close(F.conv2d(xp, wp, padding=1), F.conv2d(x, w, padding=1),
                               rtol=1e-12, atol=1e-12)
    assert op.pad_channels(x, w, fmt)[1] is wp        # cached per weight tensor
    with torch.no_grad():
        w.mul_(2)
    wp2 = op.pad_channels(x, w, fmt)[1]
    assert wp2 is not wp and torch.equal(wp2[:, :cin], w)


def test_auto_candidates_pad():
    """"cudnn-pad" is a candidate exactly where the conv's or the projection's input is not
    a multiple of 8 channels (on a CPU tensor Triton never contends)."""
    from raunet_fast.ops import conv3x3 as op

    def cands(cin, cs=None):
        x = torch.randn(1, cin, 4, 4)
        s = None if cs is None else torch.randn(1, cs, 4, 4)
        return op.auto_candidates(x, torch.randn(8, cin, 3, 3), None, s)
    assert cands(3) == ["cudnn-pad"] and cands(4) == ["cudnn-pad"] and cands(1) == ["cudnn-pad"]
    assert cands(64) == [] and cands(64, 64) == [] and cands(24, 16) == []
    assert cands(64, 3) == ["cudnn-pad"]      # level 1's conv2: the 3-channel projection


@pytest.mark.parametrize("epilogue", EPILOGUES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_cudnn_fused_pad_plumbing(monkeypatch, epilogue, channels_last):
    """The "cudnn-pad" path on the CPU, with cuDNN's two fused ops replaced by plain
    ``F.conv2d`` stand-ins (which check that the channels reaching them were padded): the
    padding of the input, of the 3-channel projection and of their weights, and the output
    layout, against the fp64 reference."""
    from raunet_fast.ops import conv3x3 as op

    seen = []

    def conv_relu(x, w, b, stride, padding, dilation, groups):
        seen.append(x.shape[1])
        return torch.relu(F.conv2d(x, w, b, stride, padding, dilation, groups))

    def conv_add_relu(x, w, z, alpha, b, stride, padding, dilation, groups):
        seen.append(x.shape[1])
        return torch.relu(F.conv2d(x, w, b, stride, padding, dilation, groups) + alpha * z)

    class ProjectionSpy:   # the module's F: the 1x1 projection's input width
        @staticmethod
        def conv2d(x, w, *a, **kw):
            seen.append(("1x1", x.shape[1]))
            return F.conv2d(x, w, *a, **kw)

    monkeypatch.setattr(torch, "cudnn_convolution_relu", conv_relu)
    monkeypatch.setattr(torch, "cudnn_convolution_add_relu", conv_add_relu)
    monkeypatch.setattr(op, "F", ProjectionSpy)
    cin = 3 if epilogue != "shortcut" else 16
    args, kw, k = make_case(2, cin, 12, 7, 13, epilogue, dtype=torch.float64,
                            channels_last=channels_last, cs=3)
    got = op._cudnn_fused(*args, kw.get("residual"), kw.get("shortcut_input"),
                          kw.get("shortcut_weight"), pad=True)
    assert seen == ([("1x1", 8)] if epilogue == "shortcut" else []) + [8 if cin == 3 else 16]
    want = reference(*args, **kw)
    assert got.dtype == torch.float64 and got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last
                             else torch.contiguous_format)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def _unique_params(variants, key, name):
    """One pytest param per distinct ``key(v)`` of the shipped ``variants``, id ``name(v)``."""
    seen, out = set(), []
    for v in variants:
        if key(v) not in seen:
            seen.add(key(v))
            out.append(pytest.param(v, id=name(v)))
    return out


def _small_k_variants():
    from raunet_fast.kernels import conv3x3 as k

    return _unique_params(k.shipped_small_k_configs(), lambda v: (v["config"], v["ieee"]),
                          lambda v: "{}x{}x{}-w{}{}".format(*v["config"],
                                                            "-ieee" if v["ieee"] else ""))


@interpreter_only
@pytest.mark.parametrize("variant", _small_k_variants() if not HAS_CUDA else [])
def test_conv_triton_interpreter_small_k_configs(monkeypatch, variant):
    """Every flat-K tile config shipped for the GPU, in the interpreter, at each BLOCK_K."""
    from raunet_fast.kernels import conv3x3 as k

    monkeypatch.setattr(k, "small_k_candidates", lambda *a, **kw: [variant["config"]])
    monkeypatch.setattr(k, "_TUNED", {})
    for (n, cin, cout, h, w, cs), epilogue, cl in zip(
            SMALL_K_CASES[:3], ("shortcut", "residual", "none"), (True, False, True)):
        args, kw, kk = make_case(n, cin, cout, h, w, epilogue, channels_last=cl, cs=cs)
        check("triton", args, kw, kk, True, torch.float32,
              f"flat-K config {variant['config']} cin={cin} {epilogue}")


def _all_cuda_variants():
    from raunet_fast.kernels import conv3x3 as k

    return _unique_params(
        k.shipped_configs(), lambda v: (v["config"], v["aligns"][0] == 1, v["ieee"]),
        lambda v: "{}x{}x{}-w{}s{}-{}{}".format(
            *v["config"], "generic" if v["aligns"][0] == 1 else "aligned",
            "-ieee" if v["ieee"] else ""))


@interpreter_only
@pytest.mark.parametrize("variant", _all_cuda_variants() if not HAS_CUDA else [])
def test_conv_triton_interpreter_shipped_configs(monkeypatch, variant):
    """Every tile config shipped for the GPU, run in the interpreter on a shape of its family
    (aligned: channels-last, channels % 16 == 0 with a Cs = 3 shortcut; generic: NCHW, odd
    channel counts): the masking logic of each tile size, checked without a GPU."""
    from raunet_fast.kernels import conv3x3 as k

    monkeypatch.setattr(k, "candidate_configs", lambda *a, **kw: [variant["config"]])
    monkeypatch.setattr(k, "SMALL_K_MAX", 0)   # narrow layers too: this kernel, not flat-K
    monkeypatch.setattr(k, "_TUNED", {})
    if variant["aligns"][0] == 1:
        cases = [make_case(1, 5, 20, 5, 7, "shortcut", cs=3),
                 # first layer: Cin = 3 but an aligned channels-last output (YA = 16)
                 make_case(2, 3, 32, 5, 7, "none", channels_last=True)]
    else:
        cases = [make_case(1, 16, 32, 5, 7, "shortcut", channels_last=True, cs=3)]
    for args, kw, kk in cases:
        check("triton", args, kw, kk, True, torch.float32, f"interp config {variant['config']}")


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


# ------------------------------------------------------------------ CUDA epilogue on the CPU
def test_conv_cuda_epilogue_emulated_on_cpu(tmp_path):
    """The CUDA epilogue kernels (csrc/conv_epilogue.cuh) compiled by the host compiler against
    a small CUDA shim and run thread by thread: vector and scalar paths, grid-stride loops,
    alignment fallbacks, float / double / bfloat16 (tests/conv_epilogue_cuda_emu.cpp)."""
    import shutil

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to build the CUDA kernel emulation")
    here = os.path.dirname(os.path.abspath(__file__))
    exe = str(tmp_path / "conv_epilogue_emu")
    subprocess.run([cxx, "-O1", "-std=c++17", "-w",
                    f"-I{os.path.join(os.path.dirname(here), 'csrc')}",
                    os.path.join(here, "conv_epilogue_cuda_emu.cpp"), "-o", exe], check=True)
    seed = str(torch.randint(0, 2 ** 31, ()).item())  # fresh inputs, replayable
    r = subprocess.run([exe, seed], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "vec=8" in r.stdout and "vec=4" in r.stdout and "vec=1" in r.stdout


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
    from raunet_fast.ops.conv3x3 import _check, inputs_ok

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
    from raunet_fast.ops.conv3x3 import _conv3x3_fused_op, pack_weights

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


# ------------------------------------------------------------------ GPU
GPU_SHAPES = [  # n, cin, cout, h, w, cs
    (3, 3, 40, 7, 13, 3),
    (2, 4, 64, 33, 31, 4),    # narrow: the flat-K kernel, aligned channels-last output
    (2, 24, 40, 7, 13, 24),
    (1, 80, 40, 9, 13, 80),
    (2, 64, 128, 33, 31, 64),
    (1, 128, 256, 16, 16, 128),
]
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def need_backend(backend: str) -> None:
    """Skip (with the reason) when a csrc backend cannot be built for lack of a toolkit;
    a compile error is a failure."""
    if backend not in ("cuda", "cpp"):
        return
    from raunet_fast.ops.conv3x3 import _CPU_EXT, _CUDA_EXT, _ext

    try:
        _ext(_CUDA_EXT if backend == "cuda" else _CPU_EXT)
    except BackendUnavailable as e:
        if "no CUDA toolkit" in str(e):
            pytest.skip(str(e))
        raise


def use_backend(backend: str, monkeypatch) -> str:
    """``cuda-epilogue``: the ``cuda`` backend with cuDNN's fusion off, so cuDNN + the csrc
    epilogue kernel run even when ReLU is on; ``cuda`` then tests the cuDNN fusion path."""
    if backend == "cuda-epilogue":
        mod = importlib.import_module("raunet_fast.ops.conv3x3")
        monkeypatch.setitem(mod.CUDNN_FUSION, "enabled", False)
        backend = "cuda"
    need_backend(backend)
    return backend


@requires_cuda
@pytest.mark.parametrize("backend", ["triton", "cuda", "cuda-epilogue"])
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv_gpu(no_tf32, monkeypatch, backend, dtype, shape):
    """Correctness of the default config of each layer (autotuning, which compiles every
    candidate, is exercised by test_fused_block_gpu)."""
    backend = use_backend(backend, monkeypatch)
    monkeypatch.setenv("RAUNET_FAST_AUTOTUNE", "0")
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
    from raunet_fast.ops import conv3x3 as op

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
    from raunet_fast.kernels import conv3x3 as k

    monkeypatch.setenv("RAUNET_FAST_AUTOTUNE", "0")   # each layer's default config (fast)
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
    from raunet_fast.ops.conv3x3 import _conv3x3_fused_op, pack_weights

    for backend in ("triton", "cuda"):
        need_backend(backend)
        (x, w, b), kw, _ = make_case(1, 32, 48, 6, 7, "shortcut", dtype=torch.float16,
                                     device="cuda", channels_last=True)
        packed = pack_weights(w, kw["shortcut_weight"], x.dtype)
        torch.library.opcheck(_conv3x3_fused_op, (x, w, b, None, kw["shortcut_input"],
                                                  kw["shortcut_weight"], packed, True, backend))


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
    """A strided bias view (oneDNN post-ops read biases as dense: this was wrong by ~2) and a
    Cout x 1 bias; a call that fails does not switch the fast CPU paths off for good."""
    from raunet_fast.ops import conv3x3 as op

    (x, w, _), _, k = make_case(2, 5, 6, 7, 9, "none")
    for b in (torch.randn(12)[::2], torch.randn(6, 1)):
        y = conv3x3_fused(x, w, b, backend=backend)
        assert_close_report(y, reference(x, w, b.reshape(-1)), *tolerance(torch.float32, k),
                            f"{backend} bias of shape {tuple(b.shape)} strides {b.stride()}")
    with pytest.raises(ValueError, match="H, W >= 1"):
        conv3x3_fused(torch.randn(1, 5, 0, 4), w, torch.randn(6), backend=backend)
    if backend == "cpp":  # an input oneDNN refuses, below the public checks
        try:
            op._cpp_onednn(op._ext(op._CPU_EXT), torch.randn(1, 5, 0, 4), w, torch.randn(6),
                           None, None, None, True)
        except Exception:  # noqa: BLE001 - failing is fine; switching paths off is not
            pass
    assert op._ONEDNN["enabled"] and op.ONEDNN_POSTOPS["enabled"]


def test_fused_block_built_in_inference_mode_holds_ordinary_buffers():
    block = ResidualBlock(4, 8)
    randomize_bn(block)
    with torch.inference_mode():
        fused = FusedResidualBlock.from_block(block.eval(), torch.float32, "cpp")
    assert not any(t.is_inference() for t in fused.buffers()), \
        "inference-mode buffers defeat the ops' weight caches (re-derived every call)"
