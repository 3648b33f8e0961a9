"""Shared cases and references of the conv3x3_fused tests (inputs, fp64
references, marks)."""
from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from helpers.numerics import (
    assert_parity,
)
from raunet_fast.ops import BackendUnavailable, conv3x3_fused

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


# ------------------------------------------------------------------ torch / cpp backends
AWKWARD = [  # n, cin, cout, h, w
    (3, 3, 40, 7, 13),
    (1, 24, 40, 7, 13),
    (2, 80, 16, 5, 6),
    (1, 1, 1, 1, 1),
]


# narrow inputs: the flat-K kernel (K = 9*Cin + Cs <= 64): BLOCK_K 16 / 32 / 64, partial
# M and N tiles, both layouts, an aligned channels-last output (Cout 64)
SMALL_K_CASES = [  # n, cin, cout, h, w, cs
    (3, 3, 40, 7, 13, 3),     # K 27 (+3): BLOCK_K 32, N tile masked
    (2, 1, 64, 5, 9, 6),      # K 9 (+6): BLOCK_K 16
    (1, 4, 64, 6, 11, 20),    # K 36 (+20 = 56): BLOCK_K 64
    (2, 7, 24, 3, 4, 1),      # K 63 (+1 = 64): the largest flat K
]


def _tma_variants():
    from raunet_fast.ops.conv3x3.triton import launch as k

    return k.configs.shipped_tma_configs()


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


def _unique_params(variants, key, name):
    """One pytest param per distinct ``key(v)`` of the shipped ``variants``, id ``name(v)``."""
    seen, out = set(), []
    for v in variants:
        if key(v) not in seen:
            seen.add(key(v))
            out.append(pytest.param(v, id=name(v)))
    return out


def _small_k_variants():
    from raunet_fast.ops.conv3x3.triton import launch as k

    return _unique_params(k.configs.shipped_small_k_configs(), lambda v: (v["config"], v["ieee"]),
                          lambda v: "{}x{}x{}-w{}{}".format(*v["config"].tile[:4],
                                                            "-ieee" if v["ieee"] else ""))


def _all_cuda_variants():
    from raunet_fast.ops.conv3x3.triton import launch as k

    return _unique_params(
        k.configs.shipped_configs(), lambda v: (v["config"], v["aligns"][0] == 1, v["ieee"]),
        lambda v: "{}x{}x{}-w{}s{}-{}{}".format(
            *v["config"].tile, "generic" if v["aligns"][0] == 1 else "aligned",
            "-ieee" if v["ieee"] else ""))


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
    from raunet_fast.ops.conv3x3.backends import CPU_EXT, CUDA_EXT, extension

    try:
        extension(CUDA_EXT if backend == "cuda" else CPU_EXT)
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
