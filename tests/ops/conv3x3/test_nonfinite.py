"""conv3x3_fused on non-finite values: NaN and +-Inf in x, the weight, the bias, the residual
or the projected shortcut come out exactly where the fp64 reference and the ``torch`` backend
put them (``torch.relu`` keeps NaN, relu(-inf) = 0), on every backend that runs on the CPU:
``cpp`` (prepacked oneDNN, and at::conv2d + the csrc epilogue), ``auto`` and the three
Triton kernels under the interpreter.

One place is implementation-defined, in torch itself: a non-finite weight times the zero
padding. IEEE arithmetic gives 0 * inf = NaN there (the fp64 reference, at::conv2d for some
shapes, the Triton kernels); oneDNN's kernels leave padding taps out (torch's own fp32
``F.conv2d`` for other shapes, the prepacked ``cpp`` path). Outputs a non-finite weight
reaches through the padding may take either value; everywhere else there is one answer.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.conv_cases import interpreter_only, make_case, reference, use_backend
from helpers.numerics import assert_same_nonfinite, requires_cuda

from raunet_fast.ops import conv3x3_fused

SITES = ("x", "weight", "bias", "residual", "shortcut_input", "shortcut_weight")
VALUES = (float("nan"), float("inf"), float("-inf"))
EPILOGUE_OF = {"residual": "residual", "shortcut_input": "shortcut", "shortcut_weight": "shortcut"}
# x, weight and bias: a different epilogue for each value, so each meets all three
CYCLE = ("none", "residual", "shortcut")

# route -> (backend, dtype, (n, cin, cout, h, w, cs)): cin = 10 runs the implicit-GEMM
# Triton kernel, cin = 3 the flat-K one, a 64-pixel fp16 row the TMA one
ROUTES = {
    "torch": ("torch", torch.float32, (2, 10, 12, 5, 7, 4)),
    "cpp": ("cpp", torch.float32, (2, 10, 12, 5, 7, 4)),
    "cpp-aten": ("cpp", torch.float32, (2, 10, 12, 5, 7, 4)),
    "cpp-bf16": ("cpp", torch.bfloat16, (1, 10, 12, 5, 7, 4)),
    "auto": ("auto", torch.float32, (1, 10, 12, 5, 7, 4)),
    "triton": ("triton", torch.float32, (2, 10, 12, 5, 7, 4)),
    "triton-fp16": ("triton", torch.float16, (1, 10, 12, 5, 7, 4)),
    "triton-flat-k": ("triton", torch.float32, (2, 3, 12, 5, 7, 3)),
    "triton-tma": ("triton", torch.float16, (1, 16, 32, 2, 64, 8)),
}
TRITON_ROUTES = [r for r in ROUTES if r.startswith("triton")]
KERNEL_OF = {"triton": "gemm", "triton-fp16": "gemm", "triton-flat-k": "small",
             "triton-tma": "tma"}


def poison(t: torch.Tensor, value: float, count: int) -> torch.Tensor:
    """A copy of ``t`` (same layout) with ``value`` at ``count`` random positions."""
    t = t.clone()
    flat = torch.randperm(t.numel())[:count]
    t[torch.unravel_index(flat, t.shape)] = value
    return t


def poisoned_case(site, value, epilogue, dtype, shape, channels_last, device="cpu"):
    *dims, cs = shape
    (x, w, b), kw, k = make_case(*dims, epilogue, dtype=dtype, device=device,
                                 channels_last=channels_last, cs=cs)
    parts = {"x": x, "weight": w, "bias": b, **kw}
    count = 2 if site in ("x", "residual", "shortcut_input") else 1
    parts[site] = poison(parts[site], value, count)
    x, w, b = parts.pop("x"), parts.pop("weight"), parts.pop("bias")
    return (x, w, b), parts, k


def padding_left_out(x, weight, bias, residual=None, shortcut_input=None,
                     shortcut_weight=None, relu=True):
    """The fp64 reference with the products of non-finite weights and the zero padding left
    out (oneDNN's semantics) instead of 0 * w = NaN."""
    x64, w64 = x.cpu().double(), weight.cpu().double()
    bad = ~torch.isfinite(w64)
    y = F.conv2d(x64, torch.where(bad, 0.0, w64), bias.cpu().double(), padding=1)
    h, w = x.shape[2:]
    xp = F.pad(x64, (1, 1, 1, 1))
    inside = F.pad(torch.ones(h, w, dtype=torch.bool), (1, 1, 1, 1))
    for co, ci, i, j in bad.nonzero().tolist():
        term = w64[co, ci, i, j] * xp[:, ci, i:i + h, j:j + w]
        y[:, co] += torch.where(inside[i:i + h, j:j + w], term, 0.0)
    if residual is not None:
        y = y + residual.cpu().double()
    elif shortcut_input is not None:
        y = y + torch.einsum("nchw,oc->nohw", shortcut_input.cpu().double(),
                             shortcut_weight.cpu().double())
    return torch.relu(y) if relu else y


def nearer(got, a, b):
    """Per element, whichever of the references ``a`` / ``b`` ``got`` is (NaN, +Inf, -Inf or
    a finite value) and nearer to."""
    g = got.cpu().double()

    def kind(t):
        return torch.where(t.isnan(), 3, torch.where(t == float("inf"), 1,
                                                     torch.where(t == float("-inf"), 2, 0)))

    def err(ref):
        same = kind(g) == kind(ref)
        dist = torch.where(torch.isfinite(ref) & torch.isfinite(g), (g - ref).abs(), 0.0)
        return torch.where(same, dist, float("inf"))

    return torch.where(err(b) < err(a), b, a)


def run_site(backend, dtype, shape, site, layouts=(False, True), device="cpu"):
    """Every value x ReLU on / off at ``site``, the layouts over the sweep: the output's
    NaN / +Inf / -Inf positions and its finite values against the fp64 reference, and the
    reference's positions against the torch backend's."""
    for i, value in enumerate(VALUES):
        for relu in (True, False):
            epilogue = EPILOGUE_OF.get(site, CYCLE[i])
            cl = layouts[(i + relu) % len(layouts)]
            args, kw, k = poisoned_case(site, value, epilogue, dtype, shape, cl, device)
            what = f"{backend} {dtype} {site}={value} {epilogue} relu={relu} cl={cl}"
            want, mag = reference(*args, relu=relu, parts=True, **kw)
            if value != value:
                assert want.isnan().any(), f"{what}: the case makes no NaN"
            other = padding_left_out(*args, relu=relu, **kw) if site == "weight" else want
            for be in ("torch", backend):
                got = conv3x3_fused(*args, relu=relu, backend=be, **kw)
                assert_same_nonfinite(got, nearer(got, want, other), dtype, k=k, scale=mag,
                                      roundings=3, what=f"{what}: backend {be}")


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("route", [r for r in ROUTES if r not in TRITON_ROUTES])
def test_conv_nonfinite_cpu_backends(route, site, monkeypatch):
    backend, dtype, shape = ROUTES[route]
    if route == "cpp-aten":  # at::conv2d + the csrc epilogue (no prepacked oneDNN)
        from raunet_fast.ops.conv3x3 import backends as op_be

        monkeypatch.setitem(op_be.ONEDNN, "enabled", False)
    run_site(backend, dtype, shape, site)


@interpreter_only
@pytest.mark.filterwarnings("ignore:invalid value encountered")   # numpy, on each NaN made
@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("route", TRITON_ROUTES)
def test_conv_nonfinite_triton_interpreter(route, site, monkeypatch):
    from raunet_fast.ops.conv3x3.triton import launch as k

    backend, dtype, shape = ROUTES[route]
    layouts = (False, True)
    if route == "triton-tma":   # channels-last only
        monkeypatch.setitem(k.TMA, "mode", "interpret")
        layouts = (True,)
    monkeypatch.setattr(k, "_TUNED", {})
    run_site(backend, dtype, shape, site, layouts)
    assert {key[0] if key[0] in ("small", "tma") else "gemm" for key in k._TUNED} == \
        {KERNEL_OF[route]}, f"{route}: another kernel ran"


@requires_cuda
@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("backend", ["triton", "cuda-epilogue"])
def test_conv_nonfinite_gpu(no_tf32, monkeypatch, backend, site):
    """The compiled kernels: Triton, and cuDNN + the csrc epilogue kernel. (cuDNN's own
    fused ReLU, the "cuda" backend's default with ReLU on, is left out: torch builds it with
    CUDNN_NOT_PROPAGATE_NAN, docs/design.md.)"""
    backend = use_backend(backend, monkeypatch)
    for dtype, shape in ((torch.float32, (2, 10, 12, 5, 7, 4)),
                         (torch.float16, (1, 16, 32, 3, 70, 8)),
                         (torch.bfloat16, (2, 3, 16, 5, 7, 3))):
        run_site(backend, dtype, shape, site, device="cuda")
