"""The Hopper (sm_90) TMA + wgmma 3x3 conv kernel: fp16 / bf16, channels-last,
TMA-aligned layers whose rows are at least ``TMA_MIN_WIDTH`` pixels wide.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tma_tap(acc, it, k_chunks, x_desc, w_desc, n, h, w0, n0, CIN, BLOCK_M: tl.constexpr,
             BLOCK_K: tl.constexpr):
    """K step ``it`` of the TMA kernel: tap ``it // k_chunks``, channel chunk
    ``it % k_chunks``: the ``[1, 1, BLOCK_M, BLOCK_K]`` box of x one row / column off
    (outside the image: zeros, by the TMA unit), times packed weight rows
    ``tap*CIN + c0 ...`` (rows of the next tap where ``CIN % BLOCK_K != 0`` meet zero
    channels of the box, so they add nothing)."""
    tap = it // k_chunks
    c0 = (it - tap * k_chunks) * BLOCK_K
    a = x_desc.load([n, h + tap // 3 - 1, w0 + tap % 3 - 1, c0]).reshape(BLOCK_M, BLOCK_K)
    b = w_desc.load([tap * CIN + c0, n0])
    return tl.dot(a, b, acc)


@triton.jit
def _tma_shortcut(acc, it, s_desc, w_desc, n, h, w0, n0, CIN, BLOCK_M: tl.constexpr,
                  BLOCK_K: tl.constexpr):
    """K step ``it`` of the 1x1 shortcut: shortcut channels ``it*BLOCK_K ...`` at the tile's
    own pixels, times packed weight rows ``9*CIN + ...``."""
    a = s_desc.load([n, h, w0, it * BLOCK_K]).reshape(BLOCK_M, BLOCK_K)
    b = w_desc.load([9 * CIN + it * BLOCK_K, n0])
    return tl.dot(a, b, acc)


@triton.jit
def _tma_shortcut_gather(acc, it, s_ptr, w_ptr, n, h, w0, offs_n, W, CIN, CS, COUT,
                         ss_n, ss_c, ss_h, ss_w, BLOCK_M: tl.constexpr, SC_K: tl.constexpr):
    """K step ``it`` of a shortcut input TMA cannot describe (e.g. Cs = 3: 6-byte pixels):
    its ``[BLOCK_M, SC_K]`` tile and the matching packed weight rows ``9*CIN + ...`` loaded
    with masks (zeros beyond CS and the row) - narrow steps, few registers."""
    offs_m = w0 + tl.arange(0, BLOCK_M)
    offs_k = it * SC_K + tl.arange(0, SC_K)
    base = s_ptr + n.to(tl.int64) * ss_n + h * ss_h
    a = tl.load(base + (offs_m * ss_w)[:, None] + (offs_k * ss_c)[None, :],
                mask=(offs_m < W)[:, None] & (offs_k < CS)[None, :], other=0.0)
    b = tl.load(w_ptr + (9 * CIN + offs_k)[:, None] * COUT + offs_n[None, :],
                mask=(offs_k < CS)[:, None] & (offs_n < COUT)[None, :], other=0.0)
    return tl.dot(a, b, acc)


@triton.jit(do_not_specialize=["H", "W", "CIN", "CS", "COUT", "ss_n", "ss_c", "ss_h", "ss_w"])
def conv3x3_tma_kernel(
    x_desc, w_desc, s_desc, r_desc, y_desc, b_ptr, s_ptr, w_ptr,
    H, W, CIN, CS, COUT, ss_n, ss_c, ss_h, ss_w,
    HAS_RES: tl.constexpr, HAS_SC: tl.constexpr, SC_DESC: tl.constexpr, RELU: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SC_K: tl.constexpr = 16, K_ITERS: tl.constexpr = 0, SC_ITERS: tl.constexpr = 0,
):
    """The op of :func:`conv3x3_fused_kernel` on Hopper: every operand moved by the TMA
    unit (tensor descriptors), multiply-accumulate by ``wgmma`` straight from shared memory.
    fp16 / bf16 (fp32 would be TF32 wgmma, which wants K-contiguous weight tiles: Triton
    copied each through registers, so the launcher keeps fp32 on the pointer kernel).

    A program computes ``BLOCK_M`` consecutive pixels of one image row (``[1, 1, BLOCK_M,
    C]`` boxes of channels-last 4-D descriptors ``[N, H, W, C]``) x ``BLOCK_N`` output
    channels. Tap (dy, dx) of the 3x3 kernel is the same box moved by one row / column;
    where it leaves the image the TMA unit fills zeros - the convolution's padding, with no
    address arithmetic or masks in the K loop, so Triton pipelines it as a plain GEMM
    (asynchronous copies into a ``num_stages`` ring, asynchronous ``wgmma``). The 1x1
    shortcut follows in the same accumulator; the epilogue (bias, residual box, ReLU, cast)
    is stored by TMA too, which clips the partial tiles at the right edge.

    Args:
        x_desc / s_desc: ``[N, H, W, CIN|CS]`` descriptors of x / the shortcut input,
            block ``[1, 1, BLOCK_M, BLOCK_K]`` (s_desc: any such descriptor unless HAS_SC
            and SC_DESC).
        s_ptr, ss_*, w_ptr: the shortcut input, its element strides and the packed
            weights (contiguous) when not SC_DESC (a shortcut TMA cannot describe, e.g.
            the first block's 3-channel input: gathered with masked loads in ``SC_K``-wide
            steps, the rest of the kernel unchanged).
        w_desc: ``[9*CIN + CS, COUT]`` descriptor of the packed weights, block
            ``[BLOCK_K, BLOCK_N]`` (:func:`raunet_fast.ops.conv3x3.pack_weights`).
        r_desc / y_desc: ``[N, H, W, COUT]`` descriptors of the residual / output, block
            ``[1, 1, BLOCK_M, BLOCK_N]`` (r_desc: any such when not HAS_RES).
        b_ptr: fp32 bias ``[COUT]``.
        K_ITERS, SC_ITERS: 0 on the GPU; trip counts as constants for the interpreter.
    Grid: ``cdiv(COUT, BLOCK_N) * cdiv(W, BLOCK_M) * N * H``, output-channel tiles fastest,
    then along the row, then rows: programs running together share input rows in L2.
    """
    pid = tl.program_id(0)
    num_n = tl.cdiv(COUT, BLOCK_N)
    tiles_w = tl.cdiv(W, BLOCK_M)
    pid_n = pid % num_n
    t = pid // num_n
    w0 = (t % tiles_w) * BLOCK_M
    row = t // tiles_w
    n = row // H
    h = row % H
    n0 = pid_n * BLOCK_N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_chunks = tl.cdiv(CIN, BLOCK_K)
    if K_ITERS > 0:   # interpreter: constant trip count
        for it in range(0, K_ITERS):
            acc = _tma_tap(acc, it, k_chunks, x_desc, w_desc, n, h, w0, n0, CIN, BLOCK_M,
                           BLOCK_K)
    else:
        for it in range(0, 9 * k_chunks):
            acc = _tma_tap(acc, it, k_chunks, x_desc, w_desc, n, h, w0, n0, CIN, BLOCK_M,
                           BLOCK_K)
    if HAS_SC:
        if SC_DESC:
            if SC_ITERS > 0:
                for it in range(0, SC_ITERS):
                    acc = _tma_shortcut(acc, it, s_desc, w_desc, n, h, w0, n0, CIN, BLOCK_M,
                                        BLOCK_K)
            else:
                for it in range(0, tl.cdiv(CS, BLOCK_K)):
                    acc = _tma_shortcut(acc, it, s_desc, w_desc, n, h, w0, n0, CIN, BLOCK_M,
                                        BLOCK_K)
        else:
            offs_sn = n0 + tl.arange(0, BLOCK_N)
            if SC_ITERS > 0:
                for it in range(0, SC_ITERS):
                    acc = _tma_shortcut_gather(acc, it, s_ptr, w_ptr, n, h, w0, offs_sn, W,
                                               CIN, CS, COUT, ss_n, ss_c, ss_h, ss_w, BLOCK_M,
                                               SC_K)
            else:
                for it in range(0, tl.cdiv(CS, SC_K)):
                    acc = _tma_shortcut_gather(acc, it, s_ptr, w_ptr, n, h, w0, offs_sn, W,
                                               CIN, CS, COUT, ss_n, ss_c, ss_h, ss_w, BLOCK_M,
                                               SC_K)

    # ---- epilogue: bias, residual, ReLU, cast; stored by TMA (partial tiles clipped)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    bias = tl.load(b_ptr + offs_n, mask=offs_n < COUT, other=0.0)
    acc = acc + bias[None, :]
    if HAS_RES:
        acc = acc + r_desc.load([n, h, w0, n0]).reshape(BLOCK_M, BLOCK_N).to(tl.float32)
    if RELU:   # NaN kept, as torch.relu (plain tl.maximum may return the 0)
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)
    y_desc.store([n, h, w0, n0], acc.to(y_desc.dtype).reshape(1, 1, BLOCK_M, BLOCK_N))
