"""The flat-K 3x3 conv kernel for narrow inputs (``9*Cin + Cs <= SMALL_K_MAX``).

Same op as :mod:`.implicit_gemm`, with the reduction ``K = 9*Cin + Cs`` flattened into one
im2col axis (:func:`conv3x3_small_k_kernel`).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _flat_k_step(acc, step, x_row, s_row, oh, ow, mask_m, offs_n, mask_n, w_ptr,
                 H, W, CIN, CS, COUT, sx_c, sx_h, sx_w, ss_c, ss_h, ss_w,
                 HAS_SC: tl.constexpr, IEEE: tl.constexpr, BLOCK_K: tl.constexpr):
    """K step ``step`` of the flat-K kernel: columns ``step*BLOCK_K ...`` of the im2col A
    tile (taps x channels, then shortcut channels, then zeros), times the matching packed
    weight rows; returns ``acc + A @ B`` (fp32). ``x_row`` / ``s_row``: the image's first
    element of x / s (scalar pointers)."""
    K_CONV = 9 * CIN
    offs_k = step * BLOCK_K + tl.arange(0, BLOCK_K)
    # A, built transposed ([BLOCK_K, BLOCK_M], pixels along the fast axis: each thread then
    # keeps the per-pixel row state of a few pixels, not of a dozen)
    tap = offs_k // CIN
    ch = offs_k - tap * CIN
    ih = oh[None, :] + (tap // 3 - 1)[:, None]
    iw = ow[None, :] + (tap % 3 - 1)[:, None]
    ok = (mask_m[None, :] & (offs_k < K_CONV)[:, None] & (ih >= 0) & (ih < H)
          & (iw >= 0) & (iw < W))
    a_t = tl.load(x_row + (ih * sx_h + iw * sx_w + (ch * sx_c)[:, None]), mask=ok, other=0.0)
    if HAS_SC:
        j = offs_k - K_CONV
        ok_s = mask_m[None, :] & ((j >= 0) & (j < CS))[:, None]
        a_t += tl.load(s_row + ((oh * ss_h + ow * ss_w)[None, :] + (j * ss_c)[:, None]),
                       mask=ok_s, other=0.0)
    a = tl.trans(a_t)
    b = tl.load(w_ptr + offs_k[:, None] * COUT + offs_n[None, :],
                mask=(offs_k < K_CONV + CS)[:, None] & mask_n[None, :], other=0.0)
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


_SMALL_INT_ARGS = ["M", "H", "W", "CIN", "COUT_A", "CS",
                   "sx_n", "sx_c", "sx_h", "sx_w", "sr_n", "sr_c", "sr_h", "sr_w",
                   "ss_n", "ss_c", "ss_h", "ss_w", "sy_n", "sy_c", "sy_h", "sy_w"]


@triton.jit(do_not_specialize=_SMALL_INT_ARGS)
def conv3x3_small_k_kernel(
    x_ptr, w_ptr, b_ptr, r_ptr, s_ptr, y_ptr,
    M, H, W, CIN, COUT_A, CS,
    sx_n, sx_c, sx_h, sx_w,
    sr_n, sr_c, sr_h, sr_w,
    ss_n, ss_c, ss_h, ss_w,
    sy_n, sy_c, sy_h, sy_w,
    HAS_RES: tl.constexpr, HAS_SC: tl.constexpr, RELU: tl.constexpr, IEEE: tl.constexpr,
    Y_CL: tl.constexpr, YA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, K_STEPS: tl.constexpr,
):
    """The same op as :func:`conv3x3_fused_kernel` for narrow inputs (RA-U-Net's first conv:
    Cin = 1-4), with the reduction ``K = 9*CIN + CS`` flattened.

    The implicit-GEMM kernel walks K as 9 taps x ``BLOCK_K``-channel chunks, so with 3
    input channels 29 of every 32 K lanes are masked zeros, in 9 MMA steps. Here column
    ``k < 9*CIN`` of the A tile is input channel ``k % CIN`` at tap ``k // CIN`` (an im2col
    gather into registers; the taps of neighbouring pixels hit the same cache lines),
    columns ``9*CIN + j`` are shortcut channel ``j`` at the pixel itself, the rest zero: K
    padded only to a multiple of ``BLOCK_K`` (27 -> 32 in one step for RGB, 36 -> 48 in
    three 16-wide steps for 4 channels), each step one ``tl.dot`` with the packed weights
    (rows in exactly that order: :func:`raunet_fast.ops.conv3x3.pack_weights`). The layer
    is then bound by writing its ``COUT``-channel output, stored vectorised when
    channels-last and 16-aligned (``YA = 16``).

    Args as for :func:`conv3x3_fused_kernel`, except: channel counts ``CIN``, ``CS``
    and every x / s stride are plain (the gather needs no alignment);
    ``COUT_A`` and the n/h/w strides of r and y are divided by ``YA``; ``Y_CL``: y and r
    have channel stride 1 (their ``*_c`` strides are then not read); ``K_STEPS``: 0 on
    the GPU (the ``cdiv(9*CIN + CS, BLOCK_K)`` steps counted at run time: a constant trip
    count gets unrolled, and the unrolled steps' gathers spilled registers in AOT builds);
    the interpreter gets it as a constant (triton 3.6's cannot ``range()`` over a run-time
    value).
    Grid: ``(cdiv(H*W, BLOCK_M) * cdiv(COUT, BLOCK_N), N)``: one image per program (its
    offsets are then scalars; ``M`` is unused), output-channel tiles fastest.
    """
    COUT = COUT_A * YA
    sr_n = sr_n * YA
    sr_h = sr_h * YA
    sr_w = sr_w * YA
    sy_n = sy_n * YA
    sy_h = sy_h * YA
    sy_w = sy_w * YA

    # one image per program (axis 1): image offsets are scalars, per-pixel state is two ints
    pid = tl.program_id(0)
    img64 = tl.program_id(1).to(tl.int64)
    num_n = tl.cdiv(COUT, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid % num_n
    hw = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = hw < H * W
    mask_n = offs_n < COUT
    oh = hw // W
    ow = hw % W
    x_row = x_ptr + img64 * sx_n     # a scalar
    s_row = s_ptr + img64 * ss_n     # a scalar

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if K_STEPS > 0:   # interpreter: a constant trip count
        for step in range(0, K_STEPS):
            acc = _flat_k_step(acc, step, x_row, s_row, oh, ow, mask_m, offs_n, mask_n, w_ptr,
                               H, W, CIN, CS, COUT, sx_c, sx_h, sx_w, ss_c, ss_h, ss_w,
                               HAS_SC, IEEE, BLOCK_K)
    else:             # GPU: a run-time loop (a constant one is unrolled: registers)
        for step in range(0, tl.cdiv(9 * CIN + CS, BLOCK_K)):
            acc = _flat_k_step(acc, step, x_row, s_row, oh, ow, mask_m, offs_n, mask_n, w_ptr,
                               H, W, CIN, CS, COUT, sx_c, sx_h, sx_w, ss_c, ss_h, ss_w,
                               HAS_SC, IEEE, BLOCK_K)

    # ---- epilogue, in registers: bias, residual, ReLU, cast
    bias = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    acc = acc + bias[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if Y_CL:
        yc = offs_n
        rc = offs_n
    else:
        yc = offs_n * sy_c
        rc = offs_n * sr_c
    if HAS_RES:
        r = tl.load(r_ptr + img64 * sr_n + (oh * sr_h + ow * sr_w)[:, None] + rc[None, :],
                    mask=mask, other=0.0)
        acc = acc + r.to(tl.float32)
    if RELU:   # NaN kept, as torch.relu (plain tl.maximum may return the 0)
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)
    y = y_ptr + img64 * sy_n + (oh * sy_h + ow * sy_w)[:, None] + yc[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mask)
