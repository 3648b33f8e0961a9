"""The attention gate kernel's configs as data
(:class:`~raunet_fast.ops.kernel_config.KernelConfig`) and how one maps to launch arguments.

For the gate a config reads: ``block_m`` pixels per program (the GEMM's M tile),
``block_k`` the largest channel chunk of x / g per ``tl.dot``, ``block_n`` the largest chunk
of the F intermediate channels held in the fp32 accumulator (both halved for fp32 inputs);
``dtypes``, ``max_channels`` and ``concat`` say where it is used, ``stream`` turns on
streaming cache hints (:func:`cache_hints`). Channel chunks are powers of two >= 16
(``tl.dot``'s minimum), masked. Every entry must build for sm_80 and sm_90 without register
spills (tests/ops/attention_gate/test_aot.py).
"""
from __future__ import annotations

import torch
import triton

from ...kernel_config import KernelConfig as C

_16BIT = ("float16", "bfloat16")

#: Shipped tuning space (on CUDA the launcher times the entries that apply).
CONFIGS: list[C] = [
    # spills on sm_80 in the concatenating variant: not used there
    C(64, 64, 32, 4, 2, concat=False),
    C(64, 64, 32, 4, 3),
    C(128, 64, 64, 8, 2),
    # these two spill in fp32: 16-bit only
    C(64, 64, 64, 8, 2, dtypes=_16BIT),
    C(256, 32, 64, 8, 2, dtypes=_16BIT),
    # Deep decoder levels (C = 256, 512; F = C/2): all of F = 256 in one accumulator, so x
    # and g are streamed once (F chunks of <= 64 re-run the K loops over x and g per chunk);
    # the first with 32-pixel tiles for twice the programs at small batch.
    C(32, 256, 64, 8, 3),
    # its fp32 concatenating variant spills on sm_80: 16-bit concat only
    C(64, 256, 32, 8, 3, concat=_16BIT),
    # Streaming cache hints: the output stored .cs, and x / g loaded evict_first where they
    # fit one channel chunk (C <= 64 in 16-bit; wider gates loop over K and re-read x, so
    # their loads keep the default policy).
    C(128, 64, 64, 8, 2, stream=True),
    # 128 pixels on 4 warps: spills on sm_80 with K loops (wider gates, or fp32's halved
    # chunks): 16-bit, C <= 64 only.
    C(128, 64, 64, 4, 2, dtypes=_16BIT, max_channels=64),
    C(64, 64, 64, 4, 2, stream=True),
]
#: The one config used in the interpreter: small tiles, and F chunks of 16 so that tests
#: with F > 16 run the multi-chunk path.
INTERPRETER_CONFIG = C(16, 16, 32, 1, 1)


def applies(cfg: C, dtype: torch.dtype, cx: int | None = None, cg: int | None = None,
            concat: bool = False) -> bool:
    """Whether config ``cfg`` is used for inputs of ``dtype`` (and ``cx``/``cg`` channels;
    ``concat``: for the concatenating variant)."""
    cfg = C.coerce(cfg)
    name = str(dtype).replace("torch.", "")
    if not cfg.uses_dtype(name):
        return False
    use = cfg.concat
    if concat and (use is False or (isinstance(use, tuple) and name not in use)):
        return False
    cap = cfg.max_channels
    return cap is None or cx is None or max(cx, cg if cg is not None else cx) <= cap


def configs_for(dtype: torch.dtype, cx: int | None = None, cg: int | None = None,
                concat: bool = False) -> list[C]:
    """The entries of :data:`CONFIGS` used for inputs of ``dtype`` (and, when given, a gate
    of ``cx`` / ``cg`` channels; ``concat``: the concatenating variant's candidates)."""
    return [c for c in CONFIGS if applies(c, dtype, cx, cg, concat)]


def _pow2_block(c: int, cap: int) -> int:
    """Channel chunk for ``c`` channels: a power of two, >= 16, <= ``cap``."""
    return max(16, min(cap, triton.next_power_of_2(c)))


def channel_blocks(cfg: C, cx: int, cg: int, f: int, dtype: torch.dtype) -> dict:
    """The constexpr channel chunks of config ``cfg`` for one gate shape and dtype."""
    cfg = C.coerce(cfg)
    div = 2 if dtype == torch.float32 else 1   # fp32 operands take twice the registers
    kcap = max(16, cfg.block_k // div)
    fcap = max(16, cfg.block_n // div)
    return {"BLOCK_KX": _pow2_block(cx, kcap), "BLOCK_KG": _pow2_block(cg, kcap),
            "BLOCK_F": _pow2_block(f, fcap)}


def cache_hints(cfg: C) -> dict:
    """The cache-hint constexprs of config ``cfg``: with ``stream`` the x / g tiles that are
    read once (one chunk) are loaded ``evict_first`` and the output is stored ``.cs``
    (streaming: L2 keeps neither)."""
    if C.coerce(cfg).stream:
        return {"LOAD_POLICY": "evict_first", "STORE_CACHE": ".cs"}
    return {"LOAD_POLICY": "", "STORE_CACHE": ""}


def launch_meta(cfg: C, cx: int, cg: int, f: int, dtype: torch.dtype) -> dict:
    """Kernel keyword arguments of config ``cfg``: ``BLOCK_P``, the channel chunks, and
    the loop trip counts (runtime ints of the compiled kernel, see its docstring)."""
    cfg = C.coerce(cfg)
    b = channel_blocks(cfg, cx, cg, f, dtype)
    return {"BLOCK_P": cfg.block_m, **b, "KX_STEPS": triton.cdiv(cx, b["BLOCK_KX"]),
            "KG_STEPS": triton.cdiv(cg, b["BLOCK_KG"]), "F_STEPS": triton.cdiv(f, b["BLOCK_F"]),
            **cache_hints(cfg)}
