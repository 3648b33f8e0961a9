"""The implicit-GEMM 3x3 conv kernel (pointer-based): any layout, any channel count.

The GEMM view: ``M = N*H*W`` output pixels, ``N = Cout``, ``K = 9*Cin (+ Cs)``. The K loop
runs over 9 taps x ``ceil(Cin / BLOCK_K)`` channel chunks (one flattened loop, so Triton
software-pipelines it), then over the shortcut's ``Cs`` channels at the centre pixel, all
into one fp32 accumulator. Zero padding is done by load masks, never by a padded copy.
The launcher is :func:`raunet_fast.ops.conv3x3.triton.launch.conv3x3_fused_forward`.
"""
from __future__ import annotations

import triton
import triton.language as tl


_INT_ARGS = ["M", "H", "W", "CIN_A", "COUT_A", "CS_A",
             "sx_n", "sx_c", "sx_h", "sx_w", "sr_n", "sr_c", "sr_h", "sr_w",
             "ss_n", "ss_c", "ss_h", "ss_w", "sy_n", "sy_c", "sy_h", "sy_w"]


@triton.jit
def _tap_chunk(acc, it, k_chunks, x_img, xc, oh, ow, mask_m, offs_k, offs_n, mask_n, w_ptr,
               H, W, CIN, COUT, sx_c, sx_h, sx_w,
               CHANNELS_LAST: tl.constexpr, IEEE: tl.constexpr, BLOCK_K: tl.constexpr):
    """K step ``it`` of the 3x3 taps: tap ``it // k_chunks``, channel chunk ``it % k_chunks``.
    Loads the ``[BLOCK_M pixels, BLOCK_K channels]`` input tile shifted by the tap (rows
    outside the image masked to 0: the zero padding) and the matching ``[BLOCK_K, BLOCK_N]``
    rows of the packed weights; returns ``acc + A @ B`` (fp32)."""
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
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _shortcut_chunk(acc, it, s_pix, sc, mask_m, offs_k, offs_n, mask_n, w_ptr, CIN, CS, COUT,
                    ss_c, CHANNELS_LAST: tl.constexpr, IEEE: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    """K step ``it`` of the 1x1 shortcut: channels ``it*BLOCK_K ...`` of the shortcut input at
    the output pixel, times packed weight rows ``9*CIN + ...``; returns ``acc + A @ B``."""
    c0 = it * BLOCK_K
    ok_k = (c0 + offs_k) < CS
    if CHANNELS_LAST:
        ch = c0
    else:
        ch = c0 * ss_c
    a = tl.load(s_pix[:, None] + ch + sc[None, :], mask=mask_m[:, None] & ok_k[None, :],
                other=0.0)
    rows = 9 * CIN + c0 + offs_k
    b = tl.load(w_ptr + rows[:, None] * COUT + offs_n[None, :],
                mask=ok_k[:, None] & mask_n[None, :], other=0.0)
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


# Integer arguments are never specialised by value: alignment is stated explicitly through
# XA / SA / YA, so a launch compiles one of the variants the AOT test builds (up to the
# epilogue switches HAS_RES / HAS_SC / RELU, which the AOT build turns on together).
@triton.jit(do_not_specialize=_INT_ARGS)
def conv3x3_fused_kernel(
    x_ptr, w_ptr, b_ptr, r_ptr, s_ptr, y_ptr,
    M, H, W, CIN_A, COUT_A, CS_A,
    sx_n, sx_c, sx_h, sx_w,
    sr_n, sr_c, sr_h, sr_w,
    ss_n, ss_c, ss_h, ss_w,
    sy_n, sy_c, sy_h, sy_w,
    HAS_RES: tl.constexpr, HAS_SC: tl.constexpr, RELU: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, IEEE: tl.constexpr,
    XA: tl.constexpr, SA: tl.constexpr, YA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    K_ITERS: tl.constexpr = 0, SC_ITERS: tl.constexpr = 0,
):
    """One ``BLOCK_M`` pixels x ``BLOCK_N`` output channels tile of
    ``y = relu?(conv3x3(x, w) + b + (r | s @ ws))``, stride 1, zero padding 1.

    Args (element strides, so NCHW and NHWC tensors both work):
        x_ptr: input, logical ``N x CIN x H x W``; dtype of the GEMM.
        w_ptr: packed weights, contiguous ``[9*CIN + CS, COUT]`` (K-major): row
            ``t*CIN + c`` holds ``w[:, c, t // 3, t % 3]``; rows ``9*CIN + j`` hold the
            1x1 shortcut weights ``ws[:, j]``. Same dtype as x.
        b_ptr: bias, ``[COUT]`` (any float dtype; read as fp32).
        r_ptr: identity residual ``N x COUT x H x W``; read iff HAS_RES.
        s_ptr: shortcut input ``N x CS x H x W``; read iff HAS_SC (same dtype as x).
        y_ptr: output ``N x COUT x H x W``; written in its own dtype.
        M: ``N*H*W``.  H, W: image size.
        CIN_A, CS_A, COUT_A: channel counts divided by their alignment XA, SA, YA.
        sx_*, ss_*: strides of x, s; the n/h/w ones divided by XA (x) or SA (s);
        sr_*, sy_*: strides of r, y; the n/h/w ones divided by YA. The ``*_c`` channel
            strides are plain (used only when not CHANNELS_LAST).
        XA, SA, YA: 16 when the channel count and the n/h/w strides of (x), (s), (y and r)
            are multiples of 16 elements, else 1: lets the compiler prove 16-byte alignment
            (vector and asynchronous loads) from constants, not from the values at launch.
        CHANNELS_LAST: x, r, s, y all have channel stride 1.
        IEEE: fp32 inputs use exact fp32 products (``input_precision="ieee"``), else the
            default (TF32 on Ampere+ for fp32; ignored for fp16/bf16).
        K_ITERS, SC_ITERS: 0 on the GPU (trip counts computed at run time); the
            interpreter gets them as constants, because older interpreters (triton 3.6 with
            numpy >= 2.3) cannot ``range()`` over a run-time value.
    Grid: ``cdiv(M, BLOCK_M) * cdiv(COUT, BLOCK_N)``, output-channel tiles fastest so that
    programs sharing the same input pixels run together (L2 reuse).
    """
    CIN = CIN_A * XA
    CS = CS_A * SA
    COUT = COUT_A * YA
    sx_n = sx_n * XA
    sx_h = sx_h * XA
    sx_w = sx_w * XA
    ss_n = ss_n * SA
    ss_h = ss_h * SA
    ss_w = ss_w * SA
    sr_n = sr_n * YA
    sr_h = sr_h * YA
    sr_w = sr_w * YA
    sy_n = sy_n * YA
    sy_h = sy_h * YA
    sy_w = sy_w * YA

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
    if K_ITERS > 0:   # interpreter: constant trip count
        for it in range(0, K_ITERS):
            acc = _tap_chunk(acc, it, k_chunks, x_img, xc, oh, ow, mask_m, offs_k, offs_n,
                             mask_n, w_ptr, H, W, CIN, COUT, sx_c, sx_h, sx_w,
                             CHANNELS_LAST, IEEE, BLOCK_K)
    else:
        for it in range(0, 9 * k_chunks):
            acc = _tap_chunk(acc, it, k_chunks, x_img, xc, oh, ow, mask_m, offs_k, offs_n,
                             mask_n, w_ptr, H, W, CIN, COUT, sx_c, sx_h, sx_w,
                             CHANNELS_LAST, IEEE, BLOCK_K)

    if HAS_SC:
        if CHANNELS_LAST:
            sc = offs_k
        else:
            sc = offs_k * ss_c
        s_pix = s_ptr + img64 * ss_n + oh * ss_h + ow * ss_w
        if SC_ITERS > 0:
            for it in range(0, SC_ITERS):
                acc = _shortcut_chunk(acc, it, s_pix, sc, mask_m, offs_k, offs_n, mask_n,
                                      w_ptr, CIN, CS, COUT, ss_c, CHANNELS_LAST, IEEE, BLOCK_K)
        else:
            for it in range(0, tl.cdiv(CS, BLOCK_K)):
                acc = _shortcut_chunk(acc, it, s_pix, sc, mask_m, offs_k, offs_n, mask_n,
                                      w_ptr, CIN, CS, COUT, ss_c, CHANNELS_LAST, IEEE, BLOCK_K)

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
    if RELU:   # NaN kept, as torch.relu (plain tl.maximum may return the 0)
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)
    y = y_ptr + (img64 * sy_n + oh * sy_h + ow * sy_w)[:, None] + yc[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mask)
