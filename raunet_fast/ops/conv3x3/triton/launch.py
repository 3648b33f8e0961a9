"""Launchers of the conv kernels: :func:`conv3x3_fused_forward` picks the kernel and its
config for one call and launches it into a caller-allocated output.

Three kernels, one op:

* :mod:`.small_k` (flat K) for narrow inputs, ``9*Cin + Cs <= SMALL_K_MAX``;
* :mod:`.tma` on Hopper (sm_90) for fp16 / bf16 channels-last layers whose rows are at
  least ``TMA_MIN_WIDTH`` pixels and channel counts TMA-aligned;
* :mod:`.implicit_gemm` (pointer-based) for everything else.

Configs come from :mod:`.configs`; on CUDA the candidates of a layer shape are timed once
(:data:`_TUNED`, a :class:`~raunet_fast.ops._tuning.TuningCache`). Kernels know nothing of
models; :mod:`raunet_fast.ops.conv3x3` is the op.
"""
from __future__ import annotations

import torch
import triton

from ... import _tuning
from ...kernel_config import KernelConfig
from ...settings import SettingsView, settings
from . import configs
from .implicit_gemm import conv3x3_fused_kernel
from .small_k import conv3x3_small_k_kernel
from .tma import conv3x3_tma_kernel

#: ``TMA["mode"]`` is ``settings.conv_tma``: ``"auto"`` (the TMA kernel where it applies on
#: sm_90 GPUs), ``"off"`` (never), ``"interpret"`` (also under the Triton interpreter, for
#: tests; there ``"auto"`` leaves it out).
TMA = SettingsView("mode", "conv_tma")

#: The config chosen per layer key (timings in ``_TUNED.times``).
_TUNED = _tuning.TuningCache("conv3x3")


# ------------------------------------------------------------------ predicates
def tma_aligned(t: torch.Tensor) -> bool:
    """``t`` (N x C x H x W) is channels-last with 16-byte-aligned base and strides: a valid
    4-D ``[N, H, W, C]`` TMA descriptor."""
    item = t.element_size()
    return (t.stride(1) == 1 and t.data_ptr() % 16 == 0
            and all((st * item) % 16 == 0 for st in (t.stride(0), t.stride(2), t.stride(3))))


_tma_aligned = tma_aligned   # former name


def tma_applies(x: torch.Tensor, residual: torch.Tensor | None,
                shortcut_input: torch.Tensor | None, out: torch.Tensor | int,
                ieee: bool) -> bool:
    """Whether a launch takes the TMA kernel: sm_90 (or the interpreter when
    ``TMA["mode"] == "interpret"``), fp16 / bf16 operands of one dtype, x / residual /
    output channels-last and TMA-aligned (channel counts a multiple of 16 bytes; the
    shortcut input may be anything), and the image at least ``TMA_MIN_WIDTH`` wide.
    ``out``: the output tensor, or its channel count for an output the launcher will
    allocate in x's layout."""
    mode = TMA["mode"]
    if mode == "off" or ieee or x.shape[3] < configs.TMA_MIN_WIDTH:
        return False
    if configs.interpreting():
        if mode != "interpret":
            return False
    elif not (x.is_cuda and torch.cuda.get_device_capability(x.device)[0] == 9):
        return False
    if x.dtype not in (torch.float16, torch.bfloat16):
        return False
    cout = out if isinstance(out, int) else out.shape[1]
    ts = [t for t in (x, residual, None if isinstance(out, int) else out) if t is not None]
    if shortcut_input is not None and shortcut_input.dtype != x.dtype:
        return False   # (any layout: gathered when TMA cannot describe it)
    return all(t.dtype == x.dtype and tma_aligned(t) for t in ts) and \
        (cout * x.element_size()) % 16 == 0


def _channel_stride_one(t: torch.Tensor) -> bool:
    return t.shape[1] == 1 or t.stride(1) == 1


def _align(t: torch.Tensor | None, channels_last: bool) -> int:
    """16 when ``t``'s channel count and n/h/w strides are multiples of 16 elements (and it is
    channels-last), else 1. None (an absent operand) counts as aligned."""
    if t is None:
        return 16
    if not channels_last:
        return 1
    n, c, h, w = t.shape
    ok = c % 16 == 0 and all(st % 16 == 0 for st, size in
                             zip((t.stride(0), t.stride(2), t.stride(3)), (n, h, w)) if size > 1)
    return 16 if ok else 1


def _strides(t: torch.Tensor, a: int) -> tuple[int, int, int, int]:
    """``t``'s element strides, the n/h/w ones divided by the alignment ``a``."""
    st = t.stride()
    return st[0] // a, st[1], st[2] // a, st[3] // a


# ------------------------------------------------------------------ launchers
def constant_trip_counts() -> bool:
    """Whether launches pass the K loops' trip counts as constants (``K_ITERS``,
    ``SC_ITERS``, ``K_STEPS``): under the interpreter, because older ones (triton 3.6 with
    numpy >= 2.3) cannot ``range()`` over a run-time value. Else 0, and the kernels count
    their steps at run time (the GPU code; a test forces it in the interpreter)."""
    return configs.interpreting()


def _launch(cfg: KernelConfig, x, packed, bias, residual, shortcut_input, y, relu,
            channels_last, ieee, aligns):
    xa, sa, ya = aligns
    n, cin, h, w = x.shape
    cout, m = y.shape[1], n * h * w
    r = residual if residual is not None else y
    s = shortcut_input if shortcut_input is not None else x
    cs = shortcut_input.shape[1] if shortcut_input is not None else 0
    bk = cfg.block_k
    interp = constant_trip_counts()
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(cout, cfg.block_n),)
    conv3x3_fused_kernel[grid](
        x, packed, bias, r, s, y,
        m, h, w, cin // xa, cout // ya, cs // sa,
        *_strides(x, xa), *_strides(r, ya), *_strides(s, sa), *_strides(y, ya),
        HAS_RES=residual is not None, HAS_SC=shortcut_input is not None, RELU=relu,
        CHANNELS_LAST=channels_last, IEEE=ieee, XA=xa, SA=sa, YA=ya,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=bk,
        K_ITERS=9 * triton.cdiv(cin, bk) if interp else 0,
        SC_ITERS=triton.cdiv(cs, bk) if interp and cs else 0,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _launch_small(cfg: KernelConfig, x, packed, bias, residual, shortcut_input, y, relu,
                  y_cl, ieee, ya):
    n, cin, h, w = x.shape
    cout, m = y.shape[1], n * h * w
    r = residual if residual is not None else y
    s = shortcut_input if shortcut_input is not None else x
    cs = shortcut_input.shape[1] if shortcut_input is not None else 0
    grid = (triton.cdiv(h * w, cfg.block_m) * triton.cdiv(cout, cfg.block_n), n)
    conv3x3_small_k_kernel[grid](
        x, packed, bias, r, s, y,
        m, h, w, cin, cout // ya, cs,
        *_strides(x, 1), *_strides(r, ya), *_strides(s, 1), *_strides(y, ya),
        HAS_RES=residual is not None, HAS_SC=shortcut_input is not None, RELU=relu,
        IEEE=ieee, Y_CL=y_cl, YA=ya, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        K_STEPS=triton.cdiv(9 * cin + cs, cfg.block_k) if constant_trip_counts() else 0,
        num_warps=cfg.num_warps, num_stages=1)


def _launch_tma(cfg: KernelConfig, x, packed, bias, residual, shortcut_input, y, relu):
    from triton.tools.tensor_descriptor import TensorDescriptor

    bm, bn, bk = cfg.block_m, cfg.block_n, cfg.block_k
    n, cin, h, w = x.shape
    cout = y.shape[1]
    cs = shortcut_input.shape[1] if shortcut_input is not None else 0

    def nhwc(t, block_c):
        st = t.stride()
        return TensorDescriptor(t, [t.shape[0], t.shape[2], t.shape[3], t.shape[1]],
                                [st[0], st[2], st[3], st[1]], [1, 1, bm, block_c])

    x_desc, y_desc = nhwc(x, bk), nhwc(y, bn)
    w_desc = TensorDescriptor(packed, list(packed.shape), list(packed.stride()), [bk, bn])
    sc_desc = shortcut_input is not None and tma_aligned(shortcut_input)
    s_desc = nhwc(shortcut_input, bk) if sc_desc else x_desc
    s = shortcut_input if shortcut_input is not None else x
    r_desc = nhwc(residual, bn) if residual is not None else y_desc
    interp = constant_trip_counts()
    grid = (triton.cdiv(cout, bn) * triton.cdiv(w, bm) * n * h,)
    conv3x3_tma_kernel[grid](
        x_desc, w_desc, s_desc, r_desc, y_desc, bias, s, packed, h, w, cin, cs, cout,
        s.stride(0), s.stride(1), s.stride(2), s.stride(3),
        HAS_RES=residual is not None, HAS_SC=shortcut_input is not None, SC_DESC=sc_desc,
        RELU=relu, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
        K_ITERS=9 * triton.cdiv(cin, bk) if interp else 0,
        SC_ITERS=triton.cdiv(cs, bk if sc_desc else 16) if interp and cs else 0,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _tuned(key: tuple, cands: list[KernelConfig], launch, x) -> KernelConfig:
    """The config for ``key``: the first candidate, or on CUDA (several candidates,
    ``settings.autotune`` on, not capturing a CUDA graph) the fastest of them, timed once
    per key (:func:`~raunet_fast.ops._tuning.fastest`)."""
    tune = len(cands) > 1 and x.is_cuda and settings.autotune
    key = (*key, tune)
    if not tune:
        return _TUNED.setdefault(key, cands[0])
    return _tuning.fastest(_TUNED, key, {c: (lambda c=c: launch(c)) for c in cands},
                           _tuning.bench_ms, cands[0], remember_default=True,
                           verbose=settings.autotune_verbose)


# ------------------------------------------------------------------ entry point
def _forward_small(x, packed, bias, residual, shortcut_input, out, relu, ieee, size_class):
    n, cin, h, w = x.shape
    cout = out.shape[1]
    cs = shortcut_input.shape[1] if shortcut_input is not None else 0
    y_cl = all(_channel_stride_one(t) for t in (out, residual) if t is not None)
    ya = 16 if y_cl and min(_align(out, True), _align(residual, True)) == 16 else 1
    key = ("small", cin, cout, cs, x.dtype, ieee, residual is not None, y_cl, ya,
           size_class, x.device.index)
    cfg = _tuned(key, configs.small_k_candidates(cout, x.dtype, ieee, ya == 16),
                 lambda c: _launch_small(c, x, packed, bias, residual, shortcut_input, out,
                                         relu, y_cl, ieee, ya), x)
    _launch_small(cfg, x, packed, bias, residual, shortcut_input, out, relu, y_cl, ieee, ya)


def _forward_tma(x, packed, bias, residual, shortcut_input, out, relu, size_class):
    n, cin, h, w = x.shape
    cout = out.shape[1]
    cs = shortcut_input.shape[1] if shortcut_input is not None else 0
    b32 = bias.float().contiguous()   # no copy for the op layer's fp32 biases
    key = ("tma", cin, cout, cs, x.dtype, residual is not None, w >= 128, size_class,
           x.device.index, shortcut_input is not None and tma_aligned(shortcut_input))
    cfg = _tuned(key, configs.tma_candidates(cout, w, x.dtype),
                 lambda c: _launch_tma(c, x, packed, b32, residual, shortcut_input, out,
                                       relu), x)
    _launch_tma(cfg, x, packed, b32, residual, shortcut_input, out, relu)


def _gemm_layout(x, residual, shortcut_input, out, ieee):
    """(channels_last, (XA, SA, YA), aligned) of an implicit-GEMM launch: only the variants
    the AOT test builds - IEEE unaligned, generic with or without an aligned y; fully
    unaligned runs the strided-channel code (no vector loads to lose)."""
    tensors = [t for t in (x, residual, shortcut_input, out) if t is not None]
    channels_last = all(_channel_stride_one(t) for t in tensors)
    aligns = (_align(x, channels_last),
              _align(shortcut_input, channels_last) if shortcut_input is not None else 1,
              min(_align(out, channels_last), _align(residual, channels_last)))
    aligned = not ieee and aligns[0] == 16 and aligns[2] == 16
    if ieee:
        aligns = (1, 1, 1)
    elif not aligned:
        aligns = (1, 1, aligns[2])
    if aligns == (1, 1, 1):
        channels_last = False
    return channels_last, aligns, aligned


def _forward_gemm(x, packed, bias, residual, shortcut_input, out, relu, ieee, size_class):
    n, cin, h, w = x.shape
    cout = out.shape[1]
    cs = shortcut_input.shape[1] if shortcut_input is not None else 0
    channels_last, aligns, aligned = _gemm_layout(x, residual, shortcut_input, out, ieee)
    cands = configs.candidate_configs(cin, cout, cs, x.dtype, ieee, aligned)
    key = (cin, cout, cs, x.dtype, ieee, residual is not None, channels_last, aligns,
           size_class, x.device.index)
    cfg = _tuned(key, cands, lambda c: _launch(c, x, packed, bias, residual, shortcut_input,
                                               out, relu, channels_last, ieee, aligns), x)
    _launch(cfg, x, packed, bias, residual, shortcut_input, out, relu, channels_last, ieee,
            aligns)


def _conv3x3_fused_forward(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor,
                           residual: torch.Tensor | None, shortcut_input: torch.Tensor | None,
                           relu: bool, out: torch.Tensor) -> torch.Tensor:
    n, cin, h, w = x.shape
    cs = shortcut_input.shape[1] if shortcut_input is not None else 0
    if out.numel() == 0:
        return out
    ieee = x.dtype == torch.float32 and not torch.backends.cudnn.allow_tf32
    size_class = (n * h * w).bit_length()   # batch 1 and batch 8 may want other tiles
    if configs.uses_small_k(cin, cs) and n <= 65535:   # (images are grid axis 1: <= 65535)
        _forward_small(x, packed, bias, residual, shortcut_input, out, relu, ieee, size_class)
    elif tma_applies(x, residual, shortcut_input, out, ieee):
        _forward_tma(x, packed, bias, residual, shortcut_input, out, relu, size_class)
    else:
        _forward_gemm(x, packed, bias, residual, shortcut_input, out, relu, ieee, size_class)
    return out


def conv3x3_fused_forward(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor,
                          residual: torch.Tensor | None, shortcut_input: torch.Tensor | None,
                          relu: bool, out: torch.Tensor) -> torch.Tensor:
    """Launch the kernel writing into ``out`` (``N x Cout x H x W``, allocated by the caller
    in the layout it wants), with x's CUDA device current. ``packed``: ``[9*Cin + Cs,
    Cout]`` contiguous in ``x.dtype`` (:func:`raunet_fast.ops.conv3x3.pack_weights`).
    ``shortcut_input`` must have ``x.dtype``; ``residual`` and ``bias`` any float dtype."""
    args = (x, packed, bias, residual, shortcut_input, relu, out)
    if x.is_cuda and x.device.index != torch.cuda.current_device():
        with torch.cuda.device(x.device):
            return _conv3x3_fused_forward(*args)
    return _conv3x3_fused_forward(*args)
