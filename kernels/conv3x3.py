"""Fused 3x3 convolution (implicit GEMM) with bias + residual / 1x1 shortcut + ReLU epilogue.

Bottom to top: the ``@triton.jit`` kernel, the config table (data, not code), and the
launcher :func:`conv3x3_fused_forward` that allocates the output and picks
a config. Kernels know nothing of models; :mod:`raunet_fast.ops.conv3x3` is the op.

The GEMM view: ``M = N*H*W`` output pixels, ``N = Cout``, ``K = 9*Cin (+ Cs)``. The K loop
runs over 9 taps x ``ceil(Cin / BLOCK_K)`` channel chunks (one flattened loop, so Triton
software-pipelines it), then over the shortcut's ``Cs`` channels at the centre pixel, all
into one fp32 accumulator. Zero padding is done by load masks, never by a padded copy.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _conv3x3_fused_kernel(
    x_ptr, w_ptr, b_ptr, r_ptr, s_ptr, y_ptr,
    M, H, W, CIN, COUT, CS,
    sx_n, sx_c, sx_h, sx_w,
    sr_n, sr_c, sr_h, sr_w,
    ss_n, ss_c, ss_h, ss_w,
    sy_n, sy_c, sy_h, sy_w,
    HAS_RES: tl.constexpr, HAS_SC: tl.constexpr, RELU: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One ``BLOCK_M`` pixels x ``BLOCK_N`` output channels tile of
    ``y = relu?(conv3x3(x, w) + b + (r | s @ ws))``, stride 1, zero padding 1.

    Args (element strides everywhere, so NCHW and NHWC tensors both work):
        x_ptr: input, logical ``N x CIN x H x W``, strides ``sx_*``; dtype of the GEMM.
        w_ptr: packed weights, contiguous ``[9*CIN + CS, COUT]`` (K-major): row
            ``t*CIN + c`` holds ``w[:, c, t // 3, t % 3]``; rows ``9*CIN + j`` hold the
            1x1 shortcut weights ``ws[:, j]``. Same dtype as x.
        b_ptr: bias, ``[COUT]`` (any float dtype; read as fp32).
        r_ptr: identity residual ``N x COUT x H x W`` (strides ``sr_*``); read iff HAS_RES.
        s_ptr: shortcut input ``N x CS x H x W`` (strides ``ss_*``); read iff HAS_SC.
        y_ptr: output ``N x COUT x H x W`` (strides ``sy_*``); written in its own dtype.
        M: ``N*H*W``.  CHANNELS_LAST: x, r, s, y all have channel stride 1 (lets the
            compiler vectorise the channel-contiguous loads and stores).
        IEEE: fp32 inputs use exact fp32 products (``input_precision="ieee"``), else the
            default (TF32 on Ampere+ for fp32; ignored for fp16/bf16).
    Grid: ``cdiv(M, BLOCK_M) * cdiv(COUT, BLOCK_N)``, output-channel tiles fastest so that
    programs sharing the same input pixels run together (L2 reuse).
    """
    pid = tl.program_id(0)
    num_n = tl.cdiv(COUT, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < COUT

    hw_size = H * W
    img = offs_m // hw_size
    hw = offs_m % hw_size
    oh = hw // W
    ow = hw % W
    img64 = img.to(tl.int64)

    if CHANNELS_LAST:
        xc = offs_k
    else:
        xc = offs_k * sx_c
    x_img = x_ptr + img64 * sx_n

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_chunks = tl.cdiv(CIN, BLOCK_K)
    for it in range(0, 9 * k_chunks):
        tap = it // k_chunks
        c0 = (it - tap * k_chunks) * BLOCK_K
        ih = oh + (tap // 3 - 1)
        iw = ow + (tap % 3 - 1)
        ok_m = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        ok_k = (c0 + offs_k) < CIN
        if CHANNELS_LAST:
            ch = c0
        else:
            ch = c0 * sx_c
        a = tl.load(x_img[:, None] + (ih * sx_h + iw * sx_w + ch)[:, None] + xc[None, :],
                    mask=ok_m[:, None] & ok_k[None, :], other=0.0)
        rows = tap * CIN + c0 + offs_k
        b = tl.load(w_ptr + rows[:, None] * COUT + offs_n[None, :],
                    mask=ok_k[:, None] & mask_n[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)

    if HAS_SC:
        if CHANNELS_LAST:
            sc = offs_k
        else:
            sc = offs_k * ss_c
        s_pix = s_ptr + img64 * ss_n + oh * ss_h + ow * ss_w
        for c0 in range(0, CS, BLOCK_K):
            ok_k = (c0 + offs_k) < CS
            if CHANNELS_LAST:
                ch = c0
            else:
                ch = c0 * ss_c
            a = tl.load(s_pix[:, None] + ch + sc[None, :],
                        mask=mask_m[:, None] & ok_k[None, :], other=0.0)
            rows = 9 * CIN + c0 + offs_k
            b = tl.load(w_ptr + rows[:, None] * COUT + offs_n[None, :],
                        mask=ok_k[:, None] & mask_n[None, :], other=0.0)
            if IEEE:
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)

    # ---- epilogue, in registers: bias, residual, ReLU, cast
    bias = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    acc = acc + bias[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if CHANNELS_LAST:
        yc = offs_n
        rc = offs_n
    else:
        yc = offs_n * sy_c
        rc = offs_n * sr_c
    if HAS_RES:
        r = tl.load((r_ptr + img64 * sr_n + oh * sr_h + ow * sr_w)[:, None] + rc[None, :],
                    mask=mask, other=0.0)
        acc = acc + r.to(tl.float32)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    y = y_ptr + (img64 * sy_n + oh * sy_h + ow * sy_w)[:, None] + yc[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------ configs (data)
# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). CUDA_CONFIGS are every config shipped
# for the GPU (each is built for sm_80 and sm_90 without spills by the AOT test); the first
# one that fits a layer is the default, the others are autotuned over (once per layer shape)
# unless RAUNET_FAST_AUTOTUNE=0.
CUDA_CONFIGS_16BIT = [
    (128, 128, 64, 8, 3),
    (128, 64, 64, 4, 4),
    (128, 128, 32, 4, 4),
    (64, 64, 64, 4, 4),
    (128, 64, 16, 4, 3),   # tiny Cin (first layer: 1-4 channels), K chunk = tl.dot minimum
]
CUDA_CONFIGS_FP32 = [
    (128, 64, 32, 8, 3),
    (128, 128, 32, 8, 3),
    (64, 64, 32, 4, 3),
    (128, 64, 16, 4, 3),
]
# exact fp32 products (IEEE, when torch.backends.cudnn.allow_tf32 is False) run as FMAs in
# registers: small tiles, or they spill
CUDA_CONFIGS_IEEE = [
    (64, 32, 16, 4, 2),
]
# the interpreter runs each program in numpy: big tiles mean few programs (fast), and it
# has no shared memory or registers to respect
INTERPRET_CONFIG = (128, 64, 32, 4, 1)


def shipped_configs() -> list[tuple[torch.dtype, bool, tuple]]:
    """Every (dtype, ieee, config) a CUDA launch may use (what the AOT test builds)."""
    out = [(d, False, c) for d in (torch.bfloat16, torch.float16) for c in CUDA_CONFIGS_16BIT]
    out += [(torch.float32, False, c) for c in CUDA_CONFIGS_FP32]
    out += [(torch.float32, True, c) for c in CUDA_CONFIGS_IEEE]
    return out


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def candidate_configs(cin: int, cout: int, cs: int, dtype: torch.dtype,
                      ieee: bool = False) -> list[tuple]:
    """Configs worth trying for one layer shape (the default first)."""
    if _interpreting():
        return [INTERPRET_CONFIG]
    if ieee:
        return list(CUDA_CONFIGS_IEEE)
    table = CUDA_CONFIGS_FP32 if dtype == torch.float32 else CUDA_CONFIGS_16BIT
    if max(cin, cs) <= 16:          # first layer: only the K=16 config wastes little
        return [c for c in table if c[2] == 16]
    out = []
    for cfg in table:
        bm, bn, bk, _, _ = cfg
        if bk == 16:
            continue
        if cout <= 64 and bn > 64:    # half the tile would be masked off
            continue
        if cin <= 32 and bk > 32:
            continue
        out.append(cfg)
    return out or [table[-1]]


# ------------------------------------------------------------------ launcher
_TUNED: dict[tuple, tuple] = {}


def _launch(cfg, x, packed, bias, residual, shortcut_input, y, relu, channels_last, ieee):
    bm, bn, bk, warps, stages = cfg
    n, cin, h, w = x.shape
    cout = y.shape[1]
    m = n * h * w
    r = residual if residual is not None else y
    s = shortcut_input if shortcut_input is not None else x
    cs = shortcut_input.shape[1] if shortcut_input is not None else 0
    grid = (triton.cdiv(m, bm) * triton.cdiv(cout, bn),)
    _conv3x3_fused_kernel[grid](
        x, packed, bias, r, s, y,
        m, h, w, cin, cout, cs,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        r.stride(0), r.stride(1), r.stride(2), r.stride(3),
        s.stride(0), s.stride(1), s.stride(2), s.stride(3),
        y.stride(0), y.stride(1), y.stride(2), y.stride(3),
        HAS_RES=residual is not None, HAS_SC=shortcut_input is not None, RELU=relu,
        CHANNELS_LAST=channels_last, IEEE=ieee,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)


def _channel_stride_one(t: torch.Tensor) -> bool:
    return t.shape[1] == 1 or t.stride(1) == 1


def conv3x3_fused_forward(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor,
                          residual: torch.Tensor | None, shortcut_input: torch.Tensor | None,
                          relu: bool, out: torch.Tensor) -> torch.Tensor:
    """Launch the kernel writing into ``out`` (``N x Cout x H x W``, allocated by the caller
    in the layout it wants). ``packed``: ``[9*Cin + Cs, Cout]`` contiguous in ``x.dtype``
    (see the kernel docstring; :func:`raunet_fast.ops.conv3x3.pack_weights` makes it)."""
    n, cin, h, w = x.shape
    cout = out.shape[1]
    cs = shortcut_input.shape[1] if shortcut_input is not None else 0
    if out.numel() == 0:
        return out
    tensors = [t for t in (x, residual, shortcut_input, out) if t is not None]
    channels_last = all(_channel_stride_one(t) for t in tensors)
    ieee = x.dtype == torch.float32 and not torch.backends.cudnn.allow_tf32
    cands = candidate_configs(cin, cout, cs, x.dtype, ieee)
    key = (cin, cout, cs, x.dtype, ieee, residual is not None, channels_last, x.device.index)
    cfg = _TUNED.get(key)
    if cfg is None:
        cfg = cands[0]
        if len(cands) > 1 and x.is_cuda and os.environ.get("RAUNET_FAST_AUTOTUNE", "1") != "0":
            from triton.testing import do_bench

            best = None
            for c in cands:
                try:
                    t = do_bench(lambda c=c: _launch(c, x, packed, bias, residual,
                                                     shortcut_input, out, relu, channels_last,
                                                     ieee), warmup=3, rep=15)
                except Exception:  # e.g. out of shared memory on a smaller GPU
                    continue
                if best is None or t < best[0]:
                    best = (t, c)
            if best is not None:
                cfg = best[1]
        _TUNED[key] = cfg
    _launch(cfg, x, packed, bias, residual, shortcut_input, out, relu, channels_last, ieee)
    return out
