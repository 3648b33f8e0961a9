"""The attention gate launcher: :func:`attention_gate_forward` picks the config (pinned,
the interpreter's, or the fastest of :func:`~.configs.configs_for` timed once per gate
shape through :mod:`raunet_fast.ops._tuning`) and launches into caller-allocated outputs.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
import triton

from ... import _tuning
from ..._backend import triton_interpreting
from ...kernel_config import KernelConfig
from ...settings import settings
from . import configs
from .kernel import attention_gate_kernel, attention_gate_kernel_interpreted

#: One config to use instead of timing (tests pin each config in turn). ``None``: the one
#: ``settings.gate_triton_config`` (``RAUNET_GATE_TRITON_CONFIG``) names, else timing. A
#: pinned config is used as is: its ``dtypes`` / ``max_channels`` / ``concat`` filters do not
#: apply.
FORCE_CONFIG: KernelConfig | None = None

#: The config chosen per gate shape, batch, H*W and variant (timings in ``.times``).
_TUNED = _tuning.TuningCache("attention_gate")



def forced_config() -> KernelConfig | None:
    """:data:`FORCE_CONFIG`, else entry ``settings.gate_triton_config`` of ``CONFIGS``
    (an index out of range warns and is ignored)."""
    if FORCE_CONFIG is not None:
        return KernelConfig.coerce(FORCE_CONFIG)
    i = settings.gate_triton_config
    if i is None:
        return None
    if i >= len(configs.CONFIGS):
        warnings.warn(f"RAUNET_GATE_TRITON_CONFIG={i}: CONFIGS has {len(configs.CONFIGS)} "
                      "entries; timing them instead", stacklevel=3)
        settings.gate_triton_config = None
        return None
    return configs.CONFIGS[i]


def _layout(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(dense tensor, is_channels_last) with t's data: NHWC or NCHW, copied only if neither."""
    if t.is_contiguous(memory_format=torch.channels_last):
        return t, True
    if t.is_contiguous():
        return t, False
    return t.contiguous(memory_format=torch.channels_last), True


def _unique(cands: list[KernelConfig], cx, cg, f, dtype) -> list[KernelConfig]:
    """Candidates that launch differently for this shape (several reduce to one)."""
    seen, out = set(), []
    for cfg in cands:
        kw = configs.launch_meta(cfg, cx, cg, f, dtype)
        sig = (tuple(sorted(kw.items())), cfg.num_warps, cfg.num_stages)
        if sig not in seen:
            seen.add(sig)
            out.append(cfg)
    return out


def _launch(cfg: KernelConfig, args: tuple, common: dict, n: int, hw: int) -> None:
    kw = configs.launch_meta(cfg, common["CX"], common["CG"], common["F"], args[0].dtype)
    grid = (triton.cdiv(hw, cfg.block_m), n)
    kern = attention_gate_kernel_interpreted if triton_interpreting() else attention_gate_kernel
    kern[grid](*args, **common, **kw, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _pick(args: tuple, common: dict, n: int, hw: int, concat: bool) -> KernelConfig:
    """The config for this launch: pinned, the interpreter's, or the fastest candidate."""
    x = args[0]
    cfg = forced_config()
    if cfg is None and triton_interpreting():
        cfg = configs.INTERPRETER_CONFIG
    if cfg is not None:
        return cfg
    cx, cg, f = common["CX"], common["CG"], common["F"]
    cands = _unique(configs.configs_for(x.dtype, cx, cg, concat), cx, cg, f, x.dtype)
    if len(cands) == 1 or not settings.autotune:
        return cands[0]
    key = (cx, cg, f, x.dtype, n, concat, hw, common["X_CL"], common["G_CL"],
           common["WRITE_ALPHA"], common["DOT_PRECISION"], x.device.index)
    timed = {c: (lambda c=c: _launch(c, args, common, n, hw)) for c in cands}
    return _tuning.fastest(_TUNED, key, timed, lambda fn: _tuning.bench_ms(fn, 25, 100),
                           cands[0], remember_default=True, verbose=settings.autotune_verbose)


def _prepare_out(xd, x_cl, out, cx, cg, concat):
    """(x as launched, its layout, the tensor the kernel writes, whether that is ``out``)."""
    if concat:
        if not x_cl:
            xd, x_cl = xd.contiguous(memory_format=torch.channels_last), True
        if not out.is_contiguous(memory_format=torch.channels_last) or \
                out.shape[1] != cx + cg:
            raise ValueError("concat: out must be dense channels_last N x (Cx + Cg) x H x W")
        return xd, x_cl, out, True
    direct = out.stride() == xd.stride()
    return xd, x_cl, (out if direct else torch.empty_like(xd)), direct


def attention_gate_forward(x, g, w_x, w_g, bias, w_psi, b_psi, out, alpha=None, *,
                           allow_tf32: bool = False, config=None,
                           concat: bool = False) -> None:
    """Launch the gate: writes ``out`` (``empty_like(x)``) and ``alpha`` when given.

    ``x``/``g``: ``N x C x H x W``, channels_last or NCHW (other strides are copied to
    channels_last; ``out`` must then be allocated by the caller as ``empty_like(x)`` and is
    written through a temporary). Weights: see the kernel docstring; ``w_x``/``w_g`` are
    cast to x's dtype here if needed. ``allow_tf32``: fp32 GEMMs on tensor cores in tf32
    (faster, ~1e-3 relative error); default exact ``ieee`` fp32. ``config``: a
    :class:`~raunet_fast.ops.kernel_config.KernelConfig` (or a former config dict) to use
    as is; else :func:`forced_config`, else the interpreter's, else the fastest of the
    shipped configs for this shape. ``concat``: ``out`` is a dense channels_last
    ``N x (Cx + Cg) x H x W`` tensor that receives ``[x * alpha, g]``.
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
    xd, x_cl, o, direct = _prepare_out(xd, x_cl, out, cx, cg, concat)
    w_x, w_g = w_x.to(x.dtype).contiguous(), w_g.to(x.dtype).contiguous()
    bias, w_psi, b_psi = bias.contiguous(), w_psi.contiguous(), b_psi.contiguous()
    prec = "tf32" if (allow_tf32 and x.dtype == torch.float32) else "ieee"
    args = (xd, gd, w_x, w_g, bias, w_psi, b_psi, o, alpha if alpha is not None else o, hw)
    common = dict(CX=cx, CG=cg, F=f, X_CL=x_cl, G_CL=g_cl, OUT_C=cx + cg if concat else cx,
                  COPY_G=concat, WRITE_ALPHA=alpha is not None, DOT_PRECISION=prec)
    ctx = torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
    with ctx:
        cfg = KernelConfig.coerce(config) if config is not None else \
            _pick(args, common, n, hw, concat)
        _launch(cfg, args, common, n, hw)
    if not direct:
        out.copy_(o)
