"""Fused additive attention gate in Triton (installed as ``raunet_fast.kernels.attention_gate``).

Bottom to top: :func:`_gate_tile` (the gate for one tile of pixels of one image), the
kernels :func:`_attention_gate_kernel` (compiled for the GPU) and
:func:`_attention_gate_kernel_interpreted` (its twin for ``TRITON_INTERPRET=1``), then
:func:`attention_gate_forward`, the plain launcher that picks the config and launches
into caller-allocated outputs. The torch-facing op is :func:`raunet_fast.ops.attention_gate`.

Autotune configs are data (:data:`CONFIGS`); on CUDA the launcher autotunes over them
(or uses :data:`FORCE_CONFIG`), under ``TRITON_INTERPRET=1`` it uses
:data:`INTERPRETER_CONFIG` without autotuning.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# ----------------------------------------------------------------------------- configs
#: Shipped tuning space. ``BLOCK_P``: pixels per program (the GEMM's M tile);
#: ``MAX_BLOCK_K``: largest channel chunk of x / g per tl.dot; ``MAX_BLOCK_F``: largest
#: chunk of the F intermediate channels held in the fp32 accumulator (both halved for
#: fp32 inputs); optional ``dtypes``: the input dtypes a config is used for (default all);
#: optional ``max_channels``: used only for gates with ``Cx, Cg <= max_channels``;
#: optional ``stream``: streaming cache hints (:func:`cache_hints`); optional ``concat``
#: (default True): whether the concatenating variant autotunes over it (False, or the
#: dtype names it does for).
#: Channel chunks are powers of two >= 16 (tl.dot's minimum), masked. Every entry builds
#: for sm_80 and sm_90 without register spills (tests/test_attention_gate_aot.py).
CONFIGS: list[dict] = [
    # not for the concatenating variant: with triton 3.6 (torch 2.11's) it spills 8 bytes
    # on sm_80 there (3.9 does not), and it is the slowest 16-bit tile at C = 64 anyway
    {"BLOCK_P": 64, "MAX_BLOCK_K": 32, "MAX_BLOCK_F": 64, "num_warps": 4, "num_stages": 2,
     "concat": False},
    {"BLOCK_P": 64, "MAX_BLOCK_K": 32, "MAX_BLOCK_F": 64, "num_warps": 4, "num_stages": 3},
    {"BLOCK_P": 128, "MAX_BLOCK_K": 64, "MAX_BLOCK_F": 64, "num_warps": 8, "num_stages": 2},
    # these two spill a few bytes in fp32 with triton 3.6's code generation: 16-bit only
    {"BLOCK_P": 64, "MAX_BLOCK_K": 64, "MAX_BLOCK_F": 64, "num_warps": 8, "num_stages": 2,
     "dtypes": ("float16", "bfloat16")},
    {"BLOCK_P": 256, "MAX_BLOCK_K": 64, "MAX_BLOCK_F": 32, "num_warps": 8, "num_stages": 2,
     "dtypes": ("float16", "bfloat16")},
    # Deep decoder levels (C = 256, 512; F = C/2): with F chunks of <= 64 every F chunk
    # re-ran the K loops over x and g, and batch 1 at 64x64 gave only 64 programs of 64
    # pixels (H200: 9.8% of copy bandwidth at 8x512x64x64). These hold all of F = 256 in
    # one accumulator (x and g streamed once, the K loop software-pipelined), the first
    # with 32-pixel tiles for twice the programs.
    {"BLOCK_P": 32, "MAX_BLOCK_K": 64, "MAX_BLOCK_F": 256, "num_warps": 8, "num_stages": 3},
    # (its fp32 concatenating variant spills 8 bytes on sm_80: 16-bit concat only)
    {"BLOCK_P": 64, "MAX_BLOCK_K": 32, "MAX_BLOCK_F": 256, "num_warps": 8, "num_stages": 3,
     "concat": ("float16", "bfloat16")},
    # (A 512-pixel / 16-warp tile for level 1 was dropped: 65.8 % of copy bandwidth in the
    # H200 sweep, never picked, and its concatenating variant spills on sm_80.)
    # Streaming cache hints (``stream``, see :func:`cache_hints`): the output stored .cs, and
    # x / g loaded evict_first where they fit one channel chunk (C <= 64 in 16-bit; wider
    # gates loop over K and re-read x, so their loads keep the default policy). The
    # autotuner picked this one for the C = 128 level on the H200.
    {"BLOCK_P": 128, "MAX_BLOCK_K": 64, "MAX_BLOCK_F": 64, "num_warps": 8, "num_stages": 2,
     "stream": True},
    # From bench/gate_sweep.py on the H200 (bench/results/h200-20261126/run2_gate_sweep.txt,
    # each config pinned, bf16, one run; identical configs timed twice there differ by ~1 %):
    # 128 pixels on 4 warps, the best at level 1 (8 x 64 x 512²: 96.3 % of copy bandwidth,
    # against 91.3 % for the 8-warp tile above; second at batch 1, 0.3 % behind); 64 pixels
    # on 4 warps with the hints, the best at level 2 (8 x 128 x 256²: 82.3 %, 81.1 % without
    # the hints - within noise). Added after the GPU runs: the autotuner decides; not yet
    # run by the GPU parity tests (interpreter and AOT builds only).
    # The 4-warp 128-pixel tile spills on sm_80 with K loops (wider gates, or fp32's halved
    # chunks): 16-bit, C <= 64 only.
    {"BLOCK_P": 128, "MAX_BLOCK_K": 64, "MAX_BLOCK_F": 64, "num_warps": 4, "num_stages": 2,
     "dtypes": ("float16", "bfloat16"), "max_channels": 64},
    {"BLOCK_P": 64, "MAX_BLOCK_K": 64, "MAX_BLOCK_F": 64, "num_warps": 4, "num_stages": 2,
     "stream": True},
]
#: The one config used in the interpreter: small tiles, and F chunks of 16 so that tests
#: with F > 16 run the multi-chunk path.
INTERPRETER_CONFIG: dict = {"BLOCK_P": 16, "MAX_BLOCK_K": 32, "MAX_BLOCK_F": 16,
                            "num_warps": 1, "num_stages": 1}


def _config_from_env() -> dict | None:
    import os

    idx = os.environ.get("RAUNET_GATE_TRITON_CONFIG")
    return CONFIGS[int(idx)] if idx not in (None, "") else None


#: One config to use instead of autotuning (tests pin each config in turn; users may
#: pin one with ``RAUNET_GATE_TRITON_CONFIG=<index into CONFIGS>``). ``None``: autotune.
#: A pinned config is used as is: its ``dtypes`` / ``max_channels`` / ``concat`` keys
#: (the autotuner's filters) do not apply.
FORCE_CONFIG: dict | None = _config_from_env()


def applies(cfg: dict, dtype: torch.dtype, cx: int | None = None, cg: int | None = None,
            concat: bool = False) -> bool:
    """Whether config ``cfg`` is used for inputs of ``dtype`` (and ``cx``/``cg`` channels;
    ``concat``: for the concatenating variant)."""
    name = str(dtype).replace("torch.", "")
    if name not in cfg.get("dtypes", (name,)):
        return False
    use = cfg.get("concat", True)
    if concat and (use is False or (isinstance(use, tuple) and name not in use)):
        return False
    cap = cfg.get("max_channels")
    return cap is None or cx is None or max(cx, cg if cg is not None else cx) <= cap


def configs_for(dtype: torch.dtype, cx: int | None = None, cg: int | None = None,
                concat: bool = False) -> list[dict]:
    """The entries of :data:`CONFIGS` used for inputs of ``dtype`` (and, when given, a gate
    of ``cx`` / ``cg`` channels; ``concat``: the concatenating variant's candidates)."""
    return [c for c in CONFIGS if applies(c, dtype, cx, cg, concat)]


def _pow2_block(c: int, cap: int) -> int:
    """Channel chunk for ``c`` channels: a power of two, >= 16, <= ``cap``."""
    return max(16, min(cap, triton.next_power_of_2(c)))


def channel_blocks(cfg: dict, cx: int, cg: int, f: int, dtype: torch.dtype) -> dict:
    """The constexpr channel chunks of config ``cfg`` for one gate shape and dtype."""
    # fp32 operands take twice the registers: halve the chunks
    div = 2 if dtype == torch.float32 else 1
    kcap = max(16, cfg["MAX_BLOCK_K"] // div)
    fcap = max(16, cfg["MAX_BLOCK_F"] // div)
    return {"BLOCK_KX": _pow2_block(cx, kcap), "BLOCK_KG": _pow2_block(cg, kcap),
            "BLOCK_F": _pow2_block(f, fcap)}


def launch_meta(cfg: dict, cx: int, cg: int, f: int, dtype: torch.dtype) -> dict:
    """Kernel keyword arguments of config ``cfg``: ``BLOCK_P``, the channel chunks, and
    the loop trip counts (runtime ints of the compiled kernel, see its docstring)."""
    b = channel_blocks(cfg, cx, cg, f, dtype)
    return {"BLOCK_P": cfg["BLOCK_P"], **b, "KX_STEPS": triton.cdiv(cx, b["BLOCK_KX"]),
            "KG_STEPS": triton.cdiv(cg, b["BLOCK_KG"]), "F_STEPS": triton.cdiv(f, b["BLOCK_F"]),
            **cache_hints(cfg)}


def cache_hints(cfg: dict) -> dict:
    """The cache-hint constexprs of config ``cfg``: with ``"stream": True`` the x / g tiles
    that are read once (one chunk) are loaded ``evict_first`` and the output is stored
    ``.cs`` (streaming: L2 keeps neither)."""
    if cfg.get("stream"):
        return {"LOAD_POLICY": "evict_first", "STORE_CACHE": ".cs"}
    return {"LOAD_POLICY": "", "STORE_CACHE": ""}


# ------------------------------------------------------------------------------ kernel
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

    Called by :func:`_attention_gate_kernel` (compiled; loop trip counts ``KX_STEPS``,
    ``KG_STEPS``, ``F_STEPS`` = cdiv(CX, BLOCK_KX), cdiv(CG, BLOCK_KG), cdiv(F, BLOCK_F)
    are runtime ints) and :func:`_attention_gate_kernel_interpreted` (the same with
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
        # ---- bias, ReLU, psi dot (masked F columns have bias 0 and psi 0: no effect)
        b = tl.load(b_ptr + offs_f, mask=mask_f, other=0.0).to(tl.float32)
        psi = tl.load(psi_ptr + offs_f, mask=mask_f, other=0.0).to(tl.float32)
        a = tl.maximum(acc + b[None, :], 0.0)
        s += tl.sum(a * psi[None, :], axis=1)

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
def _attention_gate_kernel(
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
def _attention_gate_kernel_interpreted(
    x_ptr, g_ptr, wx_ptr, wg_ptr, b_ptr, psi_ptr, bpsi_ptr, out_ptr, alpha_ptr,
    HW, KX_STEPS: tl.constexpr, KG_STEPS: tl.constexpr, F_STEPS: tl.constexpr,
    CX: tl.constexpr, CG: tl.constexpr, F: tl.constexpr,
    X_CL: tl.constexpr, G_CL: tl.constexpr, OUT_C: tl.constexpr, COPY_G: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_KX: tl.constexpr, BLOCK_KG: tl.constexpr,
    BLOCK_F: tl.constexpr, WRITE_ALPHA: tl.constexpr, DOT_PRECISION: tl.constexpr,
    LOAD_POLICY: tl.constexpr = "", STORE_CACHE: tl.constexpr = "",
):
    """:func:`_attention_gate_kernel` for ``TRITON_INTERPRET=1``: constexpr trip counts,
    because older interpreters (triton 3.6 with numpy >= 2.3) cannot ``range()`` over a
    runtime int argument."""
    _gate_tile(x_ptr, g_ptr, wx_ptr, wg_ptr, b_ptr, psi_ptr, bpsi_ptr, out_ptr, alpha_ptr,
               HW, KX_STEPS, KG_STEPS, F_STEPS, CX, CG, F, X_CL, G_CL, OUT_C, COPY_G, BLOCK_P,
               BLOCK_KX,
               BLOCK_KG, BLOCK_F, WRITE_ALPHA, DOT_PRECISION, LOAD_POLICY, STORE_CACHE)


# ---------------------------------------------------------------------------- launcher
def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _layout(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(dense tensor, is_channels_last) with t's data: NHWC or NCHW, copied only if neither."""
    if t.is_contiguous(memory_format=torch.channels_last):
        return t, True
    if t.is_contiguous():
        return t, False
    return t.contiguous(memory_format=torch.channels_last), True


_autotuned: dict[tuple, object] = {}


def _autotuned_kernel(cx: int, cg: int, f: int, dtype: torch.dtype, n: int,
                      concat: bool = False):
    """An autotuner over :data:`CONFIGS` for one channel shape (its chunks are fixed), batch
    size (the grid's second axis) and output kind; it re-tunes for each new H*W."""
    key = (cx, cg, f, dtype, n, concat)
    if key not in _autotuned:
        seen, configs = set(), []
        for cfg in configs_for(dtype, cx, cg, concat):
            kw = launch_meta(cfg, cx, cg, f, dtype)
            sig = (tuple(sorted(kw.items())), cfg["num_warps"], cfg["num_stages"])
            if sig not in seen:
                seen.add(sig)
                configs.append(triton.Config(kw, num_warps=cfg["num_warps"],
                                             num_stages=cfg["num_stages"]))
        _autotuned[key] = triton.autotune(configs=configs, key=["HW"])(_attention_gate_kernel)
    return _autotuned[key]


def attention_gate_forward(x, g, w_x, w_g, bias, w_psi, b_psi, out, alpha=None, *,
                           allow_tf32: bool = False, config: dict | None = None,
                           concat: bool = False) -> None:
    """Launch the gate: writes ``out`` (``empty_like(x)``) and ``alpha`` when given.

    ``x``/``g``: ``N x C x H x W``, channels_last or NCHW (other strides are copied to
    channels_last; ``out`` must then be allocated by the caller as ``empty_like(x)`` and is
    written through a temporary). Weights: see the kernel docstring; ``w_x``/``w_g`` are
    cast to x's dtype here if needed. ``allow_tf32``: fp32 GEMMs on tensor cores in tf32
    (faster, ~1e-3 relative error); default exact ``ieee`` fp32. ``config``: one entry like
    those of :data:`CONFIGS` to skip autotuning; else :data:`FORCE_CONFIG` when set, else
    :data:`INTERPRETER_CONFIG` in the interpreter, else autotuning over :data:`CONFIGS`.
    ``concat``: ``out`` is a dense channels_last ``N x (Cx + Cg) x H x W`` tensor that
    receives ``[x * alpha, g]`` (the decoder's concatenation in the same pass).
    """
    n, cx, h, w = x.shape
    cg, f = g.shape[1], w_x.shape[0]
    hw = h * w
    if n * hw == 0:
        return  # nothing to write (a launch with an empty grid is an error)
    if max(cx, cg) * hw >= 2 ** 31:
        raise ValueError(f"one image of {max(cx, cg)} x {h} x {w} exceeds 2**31 elements")
    xd, x_cl = _layout(x)
    gd, g_cl = _layout(g)
    if concat:
        if not x_cl:
            xd, x_cl = xd.contiguous(memory_format=torch.channels_last), True
        if not out.is_contiguous(memory_format=torch.channels_last) or \
                out.shape[1] != cx + cg:
            raise ValueError("concat: out must be dense channels_last N x (Cx + Cg) x H x W")
        direct, o = True, out
    else:
        direct = out.stride() == xd.stride()
        o = out if direct else torch.empty_like(xd)
    w_x = w_x.to(x.dtype).contiguous()
    w_g = w_g.to(x.dtype).contiguous()
    bias, w_psi, b_psi = bias.contiguous(), w_psi.contiguous(), b_psi.contiguous()
    write_alpha = alpha is not None
    a = alpha if write_alpha else o
    prec = "tf32" if (allow_tf32 and x.dtype == torch.float32) else "ieee"
    args = (xd, gd, w_x, w_g, bias, w_psi, b_psi, o, a, hw)
    common = dict(CX=cx, CG=cg, F=f, X_CL=x_cl, G_CL=g_cl, OUT_C=cx + cg if concat else cx,
                  COPY_G=concat, WRITE_ALPHA=write_alpha, DOT_PRECISION=prec)
    if config is None:
        config = FORCE_CONFIG
    if config is None and _interpreting():
        config = INTERPRETER_CONFIG
    import contextlib

    ctx = torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
    if config is not None:
        kw = launch_meta(config, cx, cg, f, x.dtype)
        grid = (triton.cdiv(hw, config["BLOCK_P"]), n)
        kern = _attention_gate_kernel_interpreted if _interpreting() else _attention_gate_kernel
        with ctx:
            kern[grid](*args, **common, **kw, num_warps=config["num_warps"],
                       num_stages=config["num_stages"])
    else:
        kern = _autotuned_kernel(cx, cg, f, x.dtype, n, concat)
        grid = lambda meta: (triton.cdiv(hw, meta["BLOCK_P"]), n)  # noqa: E731
        with ctx:
            kern[grid](*args, **common)
    if not direct:
        out.copy_(o)
