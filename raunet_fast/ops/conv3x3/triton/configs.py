"""The conv kernels' configs as data (:class:`~raunet_fast.ops.kernel_config.KernelConfig`)
and the rules that pick the candidates for one layer.

Two families per kernel and dtype kind (``"16bit"``: fp16 / bf16, ``"fp32"``): ALIGNED for
channels-last layers whose x / y (and residual) channel counts and strides are multiples of
16 (every RAUNet layer but the first conv): big tiles, vector + async loads; GENERIC for
anything else (Cin = 3, Cout = 40, NCHW, odd views): smaller tiles, masked scalar loads.
The first config of a family that suits a layer is its default; on CUDA the others are
timed once per layer shape (``RAUNET_FAST_AUTOTUNE=0``: the default only). Every config
must build for sm_80 and sm_90 without register spills (tests/ops/conv3x3/test_aot.py).
"""
from __future__ import annotations

import torch

from ...kernel_config import KernelConfig as C
from ..._backend import triton_interpreting as interpreting

# ------------------------------------------------------------------ implicit GEMM
ALIGNED_CONFIGS = {
    "16bit": [C(128, 128, 64, 8, 3), C(128, 64, 64, 8, 3), C(128, 64, 32, 4, 4),
              C(64, 64, 64, 4, 3)],
    # fp32 128 x 64 tiles spill on sm_80 at 8 warps: 4 warps
    "fp32": [C(128, 64, 32, 4, 3), C(64, 64, 32, 4, 3)],
}
GENERIC_CONFIGS = {   # 2-D pointer math in registers: more warps, shallow pipelines
    "16bit": [C(64, 64, 32, 8, 2)],
    "fp32": [C(64, 64, 32, 8, 2)],
}
# exact fp32 products (IEEE: fp32 with torch.backends.cudnn.allow_tf32 off) run as FMAs in
# registers: small tiles, or they spill
IEEE_CONFIGS = [C(64, 32, 16, 4, 2)]
# the interpreter runs each program in numpy: big tiles mean few programs (fast), and it
# has no shared memory or registers to respect
INTERPRET_CONFIG = C(128, 64, 32, 4, 1)

# ------------------------------------------------------------------ flat K (narrow inputs)
# K = 9*Cin + Cs <= SMALL_K_MAX (the first conv: RGB or 4 MRI modalities), K in
# cdiv(K, block_k) steps, num_stages 1. Few MMA steps, then the output store: wide M tiles
# where the output is channels-last and 16-aligned (vector stores), small ones for any other
# output, whose per-element addresses live in registers. Registers are the constraint:
# 16-wide K steps keep the defaults at 2+ blocks per SM; 32-wide steps need far more.
SMALL_K_MAX = 64
SMALL_K_CONFIGS = {
    "16bit": [C(128, 64, 16, 8), C(256, 64, 16, 16), C(64, 64, 16, 4), C(128, 64, 32, 8),
              C(128, 128, 16, 8)],
    "fp32": [C(128, 64, 16, 8), C(64, 64, 16, 4)],
}
SMALL_K_GENERIC_CONFIGS = {"16bit": [C(64, 32, 16, 4)], "fp32": [C(64, 32, 16, 4)]}
SMALL_K_IEEE_CONFIGS = [C(64, 32, 16, 4)]   # exact fp32: FMAs in registers
SMALL_K_INTERPRET_CONFIG = C(64, 64, 32, 4)   # the interpreter: any tile works

# ------------------------------------------------------------------ TMA (sm_90)
# block_m pixels of one image row, so only layers at least TMA_MIN_WIDTH wide take it.
# Every config's K loop must compile to TMA copies + asynchronous wgmma from shared memory
# (AOT-checked); a box of several rows would be reshaped through registers, so none is
# shipped. fp16 / bf16 only: fp32 (TF32) wgmma wants K-contiguous B tiles, which the
# packed [K, N] weights are not. Checked for sm_90 only (shared memory up to 147 KB).
TMA_MIN_WIDTH = 64
TMA_CONFIGS = [C(128, 128, 64, 8, 3), C(128, 128, 64, 8, 4), C(128, 64, 64, 4, 4),
               C(64, 128, 64, 4, 4), C(64, 64, 64, 4, 4), C(128, 256, 64, 8, 3),
               C(64, 256, 64, 8, 3)]
TMA_INTERPRET_CONFIG = C(64, 32, 16, 4, 1)   # the interpreter: small tiles, several K steps




def kind(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else "16bit"


def uses_small_k(cin: int, cs: int) -> bool:
    """Whether a layer with ``cin`` input and ``cs`` shortcut channels runs the flat-K
    kernel."""
    return 9 * cin + cs <= SMALL_K_MAX


def candidate_configs(cin: int, cout: int, cs: int, dtype: torch.dtype, ieee: bool = False,
                      aligned: bool = True) -> list[C]:
    """Implicit-GEMM configs worth trying for one layer shape (the default first)."""
    if interpreting():
        return [INTERPRET_CONFIG]
    if ieee:
        return list(IEEE_CONFIGS)
    if not aligned:
        return list(GENERIC_CONFIGS[kind(dtype)])
    out = []
    for cfg in ALIGNED_CONFIGS[kind(dtype)]:
        if cout <= 64 and cfg.block_n > 64:    # half the tile would be masked off
            continue
        if cin <= 32 and cfg.block_k > 32:
            continue
        if cin >= 256 and cfg.block_k < 64 and dtype != torch.float32:  # long K: wide chunks
            continue
        out.append(cfg)
    return out or [ALIGNED_CONFIGS[kind(dtype)][-1]]


def small_k_candidates(cout: int, dtype: torch.dtype, ieee: bool, aligned: bool) -> list[C]:
    """Flat-K configs worth trying for one layer (the default first). ``aligned``: the
    output is channels-last with 16-aligned channels and strides."""
    if interpreting():
        return [SMALL_K_INTERPRET_CONFIG]
    if ieee:
        return list(SMALL_K_IEEE_CONFIGS)
    if not aligned:
        return list(SMALL_K_GENERIC_CONFIGS[kind(dtype)])
    cfgs = SMALL_K_CONFIGS[kind(dtype)]
    return [c for c in cfgs if not (cout <= 64 and c.block_n > 64)] or [cfgs[0]]


def tma_candidates(cout: int, w: int, dtype: torch.dtype) -> list[C]:
    """TMA configs worth trying for one layer (the default first)."""
    if interpreting():
        return [TMA_INTERPRET_CONFIG]
    fit = [c for c in TMA_CONFIGS if c.block_m <= max(w, 64)]   # no tile wider than the row
    out = [c for c in fit
           if not (cout <= 64 and c.block_n > 64) and not (cout < 256 and c.block_n > 128)]
    # none left: the least wasteful tile (narrowest output tile, then shortest row tile)
    return out or [min(fit, key=lambda c: (c.block_n, c.block_m))]


# ------------------------------------------------------------------ shipped variants
def shipped_configs() -> list[dict]:
    """Every implicit-GEMM variant a CUDA launch may compile, as the AOT test builds them:
    dtype, ieee, alignment (XA, SA, YA) and config; channels-last unless fully unaligned
    (the launcher runs those with strided channels). The AOT build enables the shortcut K
    loop and the residual epilogue at once (a launch has one or the other), so its
    register count bounds both. fp16 compiles to the bf16 code but for the conversions,
    so only bf16 is listed."""
    out = []
    for dtype in (torch.bfloat16, torch.float32):
        k = kind(dtype)
        for cfg in ALIGNED_CONFIGS[k]:
            out.append(dict(dtype=dtype, ieee=False, aligns=(16, 16, 16), config=cfg))
            # SA = 1: an unaligned shortcut input (the first block: Cs = 3)
            out.append(dict(dtype=dtype, ieee=False, aligns=(16, 1, 16), config=cfg))
        for cfg in GENERIC_CONFIGS[k]:
            for ya in (1, 16):  # 16: an aligned output (the first layer: Cin = 3, Cout = 64)
                out.append(dict(dtype=dtype, ieee=False, aligns=(1, 1, ya), config=cfg))
    for cfg in IEEE_CONFIGS:
        out.append(dict(dtype=torch.float32, ieee=True, aligns=(1, 1, 1), config=cfg))
    return out


def shipped_small_k_configs() -> list[dict]:
    """Every flat-K variant a CUDA launch may compile: dtype, ieee, output alignment
    (Y_CL, YA) and config (one build per variant serves every narrow K: the K loop counts
    its steps at run time). fp16 shares the bf16 configs; the AOT build enables the
    shortcut and the residual together."""
    out = []
    for dtype, ieee, k in ((torch.bfloat16, False, "16bit"), (torch.float32, False, "fp32"),
                           (torch.float32, True, "ieee")):
        fams = ([(SMALL_K_IEEE_CONFIGS, (True, 16)), (SMALL_K_IEEE_CONFIGS, (True, 1)),
                 (SMALL_K_IEEE_CONFIGS, (False, 1))]
                if ieee else [(SMALL_K_CONFIGS[k], (True, 16)),
                              (SMALL_K_GENERIC_CONFIGS[k], (True, 1)),
                              (SMALL_K_GENERIC_CONFIGS[k], (False, 1))])
        for cfgs, (y_cl, ya) in fams:
            for cfg in cfgs:
                out.append(dict(dtype=dtype, ieee=ieee, y_cl=y_cl, ya=ya, config=cfg))
    return out


def shipped_tma_configs() -> list[dict]:
    """Every TMA variant a launch may compile (sm_90 only): dtype, config and the
    shortcut's path (``sc_desc``: TMA, else gathered); fp16 shares the bf16 configs."""
    return [dict(dtype=torch.bfloat16, config=cfg, sc_desc=sc_desc)
            for cfg in TMA_CONFIGS for sc_desc in (True, False)]
