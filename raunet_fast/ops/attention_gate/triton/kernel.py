"""The fused additive attention gate in Triton: :func:`_gate_tile` (the gate for one tile
of pixels of one image), the kernels :func:`attention_gate_kernel` (compiled for the GPU)
and :func:`attention_gate_kernel_interpreted` (its twin for ``TRITON_INTERPRET=1``). The
launcher is :func:`raunet_fast.ops.attention_gate.triton.launch.attention_gate_forward`.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tile_offsets(offs_p, offs_k, C: tl.constexpr, HW, CL: tl.constexpr):
    """Element offsets of the ``[pixels, channels]`` tile ``offs_p x offs_k`` inside one image
    of ``C`` channels: channels_last (``p*C + c``) when ``CL``, else NCHW (``c*HW + p``)."""
    if CL:
        return offs_p[:, None] * C + offs_k[None, :]
    else:
        return offs_k[None, :] * HW + offs_p[:, None]


@triton.jit
def _gate_tile(
    x_ptr, g_ptr, wx_ptr, wg_ptr, b_ptr, psi_ptr, bpsi_ptr, out_ptr, alpha_ptr,
    HW, KX_STEPS, KG_STEPS, F_STEPS,
    CX: tl.constexpr, CG: tl.constexpr, F: tl.constexpr,
    X_CL: tl.constexpr, G_CL: tl.constexpr, OUT_C: tl.constexpr, COPY_G: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_KX: tl.constexpr, BLOCK_KG: tl.constexpr,
    BLOCK_F: tl.constexpr, WRITE_ALPHA: tl.constexpr, DOT_PRECISION: tl.constexpr,
    LOAD_POLICY: tl.constexpr = "", STORE_CACHE: tl.constexpr = "",
):
    """The gate for one program: ``BLOCK_P`` pixels of image ``program_id(1)``.

    Called by :func:`attention_gate_kernel` (compiled; loop trip counts ``KX_STEPS``,
    ``KG_STEPS``, ``F_STEPS`` = cdiv(CX, BLOCK_KX), cdiv(CG, BLOCK_KG), cdiv(F, BLOCK_F)
    are runtime ints) and :func:`attention_gate_kernel_interpreted` (the same with
    constexpr trip counts, for the interpreter).

    Pointers (all dense; T = float32, float16 or bfloat16):

    * ``x_ptr``   - x, ``N x CX x H x W`` of T; ``X_CL``: channels_last (element
      ``(n, c, p)`` at ``n*HW*CX + p*CX + c``), else NCHW (``n*CX*HW + c*HW + p``);
      ``p = h*W + w`` and ``HW = H*W``.
    * ``g_ptr``   - g, ``N x CG x H x W`` of T, layout by ``G_CL`` as for x.
    * ``wx_ptr``  - W_x, ``F x CX`` row-major, T.  ``wg_ptr``: W_g, ``F x CG`` row-major, T.
    * ``b_ptr``   - summed folded bias, ``(F,)``, any float dtype (read as fp32).
    * ``psi_ptr`` - psi weights ``(F,)``; ``bpsi_ptr``: psi bias, one element (fp32 math).
    * ``out_ptr`` - output, x's shape, dtype and layout (``X_CL``); channels_last with
      ``OUT_C`` channels per pixel (``OUT_C = CX``, or ``CX + CG`` with ``COPY_G``: then
      channels ``CX..CX+CG`` receive g unchanged - the decoder's concatenation, written
      while g is loaded anyway). NCHW output needs ``OUT_C == CX`` and no ``COPY_G``.
    * ``alpha_ptr`` - attention map ``N x 1 x H x W`` contiguous, T; written only when
      ``WRITE_ALPHA``.

    Per pixel: ``acc = x @ W_x^T + g @ W_g^T + b`` (both GEMMs into one fp32 accumulator
    with ``tl.dot``; channels in chunks ``BLOCK_KX``/``BLOCK_KG``, F in chunks ``BLOCK_F``,
    all masked), ``s = relu(acc) . psi + b_psi``, ``alpha = sigmoid(s)``,
    ``out = x * alpha``. When x fits one chunk (``CX <= BLOCK_KX``) its tile is loaded
    once and reused for the output; otherwise the output pass re-reads x (an L2 hit).
    """
    pid_p = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < HW
    x_img = x_ptr + n * HW * CX
    g_img = g_ptr + n * HW * CG
    o_img = out_ptr + n * HW * OUT_C
    ak_x = tl.arange(0, BLOCK_KX)
    ak_g = tl.arange(0, BLOCK_KG)
    X_ONE: tl.constexpr = CX <= BLOCK_KX
    G_ONE: tl.constexpr = CG <= BLOCK_KG

    if X_ONE:  # the whole x tile, loaded once: GEMM operand and output source
        mk = ak_x < CX
        xo1 = _tile_offsets(offs_p, ak_x, CX, HW, X_CL)
        x_tile = tl.load(x_img + xo1, mask=mask_p[:, None] & mk[None, :], other=0.0,
                         eviction_policy=LOAD_POLICY)
    if G_ONE:
        mk = ak_g < CG
        go1 = _tile_offsets(offs_p, ak_g, CG, HW, G_CL)
        g_tile = tl.load(g_img + go1, mask=mask_p[:, None] & mk[None, :], other=0.0,
                         eviction_policy=LOAD_POLICY)

    s = tl.zeros([BLOCK_P], dtype=tl.float32)
    for fi in range(0, F_STEPS):
        offs_f = fi * BLOCK_F + tl.arange(0, BLOCK_F)
        mask_f = offs_f < F
        acc = tl.zeros([BLOCK_P, BLOCK_F], dtype=tl.float32)
        # ---- x @ W_x^T
        if X_ONE:
            mk = ak_x < CX
            w = tl.load(wx_ptr + offs_f[None, :] * CX + ak_x[:, None],
                        mask=mk[:, None] & mask_f[None, :], other=0.0)
            acc = tl.dot(x_tile, w, acc, input_precision=DOT_PRECISION)
        else:
            for ki in range(0, KX_STEPS):
                offs_k = ki * BLOCK_KX + ak_x
                mk = offs_k < CX
                xo = _tile_offsets(offs_p, offs_k, CX, HW, X_CL)
                xt = tl.load(x_img + xo, mask=mask_p[:, None] & mk[None, :], other=0.0)
                w = tl.load(wx_ptr + offs_f[None, :] * CX + offs_k[:, None],
                            mask=mk[:, None] & mask_f[None, :], other=0.0)
                acc = tl.dot(xt, w, acc, input_precision=DOT_PRECISION)
        # ---- g @ W_g^T, same accumulator
        if G_ONE:
            mk = ak_g < CG
            w = tl.load(wg_ptr + offs_f[None, :] * CG + ak_g[:, None],
                        mask=mk[:, None] & mask_f[None, :], other=0.0)
            acc = tl.dot(g_tile, w, acc, input_precision=DOT_PRECISION)
        else:
            for ki in range(0, KG_STEPS):
                offs_k = ki * BLOCK_KG + ak_g
                mk = offs_k < CG
                go = _tile_offsets(offs_p, offs_k, CG, HW, G_CL)
                gt = tl.load(g_img + go, mask=mask_p[:, None] & mk[None, :], other=0.0)
                w = tl.load(wg_ptr + offs_f[None, :] * CG + offs_k[:, None],
                            mask=mk[:, None] & mask_f[None, :], other=0.0)
                acc = tl.dot(gt, w, acc, input_precision=DOT_PRECISION)
        # ---- bias, ReLU (NaN kept, as torch.relu), psi dot over the real F columns: a
        #      masked column's accumulator may be 0 * inf = NaN, which psi = 0 would keep
        b = tl.load(b_ptr + offs_f, mask=mask_f, other=0.0).to(tl.float32)
        psi = tl.load(psi_ptr + offs_f, mask=mask_f, other=0.0).to(tl.float32)
        a = tl.maximum(acc + b[None, :], 0.0, propagate_nan=tl.PropagateNan.ALL)
        s += tl.sum(tl.where(mask_f[None, :], a * psi[None, :], 0.0), axis=1)

    s += tl.load(bpsi_ptr).to(tl.float32)
    alpha = 1.0 / (1.0 + tl.exp(-s))
    if WRITE_ALPHA:
        tl.store(alpha_ptr + n * HW + offs_p, alpha.to(alpha_ptr.dtype.element_ty), mask=mask_p)

    # ---- out = x * alpha, in x's layout (OUT_C channels per pixel when channels_last)
    if X_ONE:
        y = x_tile.to(tl.float32) * alpha[:, None]
        mk = ak_x < CX
        oo1 = _tile_offsets(offs_p, ak_x, OUT_C, HW, X_CL)  # NCHW: OUT_C == CX
        tl.store(o_img + oo1, y.to(out_ptr.dtype.element_ty), mask=mask_p[:, None] & mk[None, :],
                 cache_modifier=STORE_CACHE)
    else:
        for ki in range(0, KX_STEPS):
            offs_k = ki * BLOCK_KX + ak_x
            mk = offs_k < CX
            xo = _tile_offsets(offs_p, offs_k, CX, HW, X_CL)
            oo = _tile_offsets(offs_p, offs_k, OUT_C, HW, X_CL)  # NCHW: OUT_C == CX
            m2 = mask_p[:, None] & mk[None, :]
            xt = tl.load(x_img + xo, mask=m2, other=0.0)
            y = xt.to(tl.float32) * alpha[:, None]
            tl.store(o_img + oo, y.to(out_ptr.dtype.element_ty), mask=m2,
                     cache_modifier=STORE_CACHE)
    # ---- g, unchanged, into channels CX.. of a concatenated output
    if COPY_G:
        if G_ONE:
            mk = ak_g < CG
            tl.store(o_img + offs_p[:, None] * OUT_C + CX + ak_g[None, :],
                     g_tile.to(out_ptr.dtype.element_ty), mask=mask_p[:, None] & mk[None, :],
                     cache_modifier=STORE_CACHE)
        else:
            for ki in range(0, KG_STEPS):
                offs_k = ki * BLOCK_KG + ak_g
                mk = offs_k < CG
                go = _tile_offsets(offs_p, offs_k, CG, HW, G_CL)
                m2 = mask_p[:, None] & mk[None, :]
                gt = tl.load(g_img + go, mask=m2, other=0.0)
                tl.store(o_img + offs_p[:, None] * OUT_C + CX + offs_k[None, :],
                         gt.to(out_ptr.dtype.element_ty), mask=m2, cache_modifier=STORE_CACHE)


@triton.jit
def attention_gate_kernel(
    x_ptr, g_ptr, wx_ptr, wg_ptr, b_ptr, psi_ptr, bpsi_ptr, out_ptr, alpha_ptr,
    HW, KX_STEPS, KG_STEPS, F_STEPS,
    CX: tl.constexpr, CG: tl.constexpr, F: tl.constexpr,
    X_CL: tl.constexpr, G_CL: tl.constexpr, OUT_C: tl.constexpr, COPY_G: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_KX: tl.constexpr, BLOCK_KG: tl.constexpr,
    BLOCK_F: tl.constexpr, WRITE_ALPHA: tl.constexpr, DOT_PRECISION: tl.constexpr,
    LOAD_POLICY: tl.constexpr = "", STORE_CACHE: tl.constexpr = "",
):
    """The compiled kernel; grid ``(cdiv(HW, BLOCK_P), N)``; arguments as in
    :func:`_gate_tile`. The trip counts are runtime ints on purpose: with constexpr
    bounds the compiler unrolls the K loops and hoists every chunk's loads at once
    (hundreds of registers, spills)."""
    _gate_tile(x_ptr, g_ptr, wx_ptr, wg_ptr, b_ptr, psi_ptr, bpsi_ptr, out_ptr, alpha_ptr,
               HW, KX_STEPS, KG_STEPS, F_STEPS, CX, CG, F, X_CL, G_CL, OUT_C, COPY_G, BLOCK_P,
               BLOCK_KX,
               BLOCK_KG, BLOCK_F, WRITE_ALPHA, DOT_PRECISION, LOAD_POLICY, STORE_CACHE)


@triton.jit
def attention_gate_kernel_interpreted(
    x_ptr, g_ptr, wx_ptr, wg_ptr, b_ptr, psi_ptr, bpsi_ptr, out_ptr, alpha_ptr,
    HW, KX_STEPS: tl.constexpr, KG_STEPS: tl.constexpr, F_STEPS: tl.constexpr,
    CX: tl.constexpr, CG: tl.constexpr, F: tl.constexpr,
    X_CL: tl.constexpr, G_CL: tl.constexpr, OUT_C: tl.constexpr, COPY_G: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_KX: tl.constexpr, BLOCK_KG: tl.constexpr,
    BLOCK_F: tl.constexpr, WRITE_ALPHA: tl.constexpr, DOT_PRECISION: tl.constexpr,
    LOAD_POLICY: tl.constexpr = "", STORE_CACHE: tl.constexpr = "",
):
    """:func:`attention_gate_kernel` for ``TRITON_INTERPRET=1``: constexpr trip counts,
    because older interpreters (triton 3.6 with numpy >= 2.3) cannot ``range()`` over a
    runtime int argument."""
    _gate_tile(x_ptr, g_ptr, wx_ptr, wg_ptr, b_ptr, psi_ptr, bpsi_ptr, out_ptr, alpha_ptr,
               HW, KX_STEPS, KG_STEPS, F_STEPS, CX, CG, F, X_CL, G_CL, OUT_C, COPY_G, BLOCK_P,
               BLOCK_KX,
               BLOCK_KG, BLOCK_F, WRITE_ALPHA, DOT_PRECISION, LOAD_POLICY, STORE_CACHE)
