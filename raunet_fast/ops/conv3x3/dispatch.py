"""Which backend runs a ``conv3x3_fused`` call: :func:`resolve_backend`, and ``"auto"``'s
one-time pick on CUDA (:func:`auto_candidates`, :func:`pick_faster`), then the op's
implementation :func:`conv3x3_fused_impl`.

``"auto"`` on CUDA with ReLU on runs cuDNN's fusion, except where a Triton kernel was built
to beat it, or the input is narrow; then the faster for that layer, timed once on the real
inputs (device time from calls replayed in a CUDA graph, so the host's launch cost does not
decide; never during CUDA graph capture: cuDNN then, not remembered). The contenders:

* narrow inputs (``9*Cin + Cs <= 64``: the first conv, RGB or 4 MRI modalities): the
  Triton flat-K kernel;
* sm_90, fp16 / bf16, channels-last, 16-byte-aligned channels, rows >= 64 wide: the Triton
  TMA kernel, with the 1x1 projection in its K loop (no projection tensor written and read
  back);
* narrow inputs also through cuDNN on zero-padded channels (``"cudnn-pad"``, a multiple of
  ``CUDNN_CHANNEL_MULTIPLE``): the same convolution for the price of a copy of the input.

``settings.conv_auto`` (``RAUNET_CONV_AUTO``) = ``triton`` / ``cudnn`` / ``cudnn-pad``: that
one where it applies (else cuDNN), no timing.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _tuning
from .._backend import (BackendUnavailable, check_backend_name, triton_unavailable_reason,
                        warn_fallback)
from ..settings import SettingsView
from . import backends as be
from .layout import as_out, out_memory_format
from .reference import conv3x3_reference
from .weights import padded_channels

__all__ = ["resolve_backend", "auto_candidates", "pick_faster", "describe_picks",
           "conv3x3_fused_impl", "AUTO_MODES", "AUTO_PICK", "PICK_TIMES"]

AUTO_MODES = ("tune", "triton", "cudnn", "cudnn-pad")
#: ``AUTO_PICK["mode"]`` is ``settings.conv_auto``, one of :data:`AUTO_MODES`.
AUTO_PICK = SettingsView("mode", "conv_auto")
_PICKED = _tuning.TuningCache("conv3x3 auto")
#: the timings behind each pick (ms per candidate that ran), for reports and tests
PICK_TIMES: dict[tuple, dict[str, float]] = _PICKED.times

_ext_failed: set[str] = set()


def _try_extension(name: str, spec) -> bool:
    """Whether extension ``spec`` builds (a failure warns once and is remembered)."""
    if name in _ext_failed:
        return False
    try:
        be.extension(spec)
        return True
    except BackendUnavailable as e:
        _ext_failed.add(name)
        warn_fallback("conv3x3_fused", "auto", "torch", str(e)[:300])
        return False


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend ``backend`` means for tensors on ``device`` (may build the csrc
    extension for ``"auto"`` on CPU, once; failures fall back with a warning)."""
    check_backend_name(backend)
    if backend != "auto":
        return backend
    if device.type == "cuda":
        if triton_unavailable_reason(device) is None:
            return "triton"
        return "cuda" if _try_extension("cuda", be.CUDA_EXT) else "torch"
    if device.type == "cpu" and _try_extension("cpp", be.CPU_EXT):
        return "cpp"
    return "torch"


# ------------------------------------------------------------------ "auto" on CUDA
def _triton_contends(x: torch.Tensor, weight: torch.Tensor, residual: Optional[torch.Tensor],
                     shortcut_input: Optional[torch.Tensor]) -> bool:
    """Whether a Triton kernel built to beat cuDNN applies to this CUDA layer."""
    if not x.is_cuda or x.dtype == torch.float64 or triton_unavailable_reason(x.device):
        return False
    from .triton import configs, launch

    cs = shortcut_input.shape[1] if shortcut_input is not None else 0
    if configs.uses_small_k(weight.shape[1], cs):
        return True
    if out_memory_format(x) != torch.channels_last:   # the output the op will allocate
        return False
    ieee = x.dtype == torch.float32 and not torch.backends.cudnn.allow_tf32
    return launch.tma_applies(x, residual, shortcut_input, weight.shape[0], ieee)


def auto_candidates(x: torch.Tensor, weight: torch.Tensor, residual: Optional[torch.Tensor],
                    shortcut_input: Optional[torch.Tensor]) -> list[str]:
    """What "auto" times against plain cuDNN fusion for this CUDA layer: ``"triton"``
    where a Triton kernel built to beat it applies, ``"cudnn-pad"`` where the conv's or the
    projection's input channels are not a multiple of ``CUDNN_CHANNEL_MULTIPLE``; empty:
    cuDNN, no timing."""
    out = ["triton"] if _triton_contends(x, weight, residual, shortcut_input) else []
    cs = shortcut_input.shape[1] if shortcut_input is not None else 0
    if x.dtype != torch.float64 and (padded_channels(weight.shape[1]) != weight.shape[1]
                                     or padded_channels(cs) != cs):
        out.append("cudnn-pad")
    return out


def pick_faster(key: tuple, candidates: dict, timer, default: str) -> str:
    """The name of the fastest of ``candidates`` (name -> zero-argument callable) by
    ``timer(fn) -> ms``, remembered under ``key`` (the timings in :data:`PICK_TIMES`);
    ``default`` while a CUDA graph is being captured, or when no candidate ran (neither
    remembered). A candidate that raises is out of the running. Each candidate is called
    once before it is timed (Triton autotuning, cuDNN plan, csrc build)."""
    return _tuning.fastest(_PICKED, key, candidates, timer, default, warm=True,
                           times=PICK_TIMES)


def _pick_label(key: tuple) -> str:
    cin, cout, cs, has_res, _, dtype, _, _, size_class = key[:9]
    extra = f" + 1x1 {cs}" if cs else (" + residual" if has_res else "")
    return f"{cin:>5} -> {cout:<5}{extra:<14} {str(dtype)[6:]:<9} <{2 ** size_class:>9} px"


def describe_picks() -> list[str]:
    """One line per layer shape "auto" has timed (:data:`PICK_TIMES`): the layer, each
    candidate's device milliseconds and the pick."""
    return _tuning.describe(PICK_TIMES, _PICKED, _pick_label)


def _pick_key(x, weight, residual, shortcut_input, relu, candidates) -> tuple:
    n, cin, h, w = x.shape
    return (cin, weight.shape[0], shortcut_input.shape[1] if shortcut_input is not None else 0,
            residual is not None, relu, x.dtype, out_memory_format(x), w >= 128,
            (n * h * w).bit_length(), x.device.index, torch.backends.cudnn.allow_tf32,
            x.is_contiguous(memory_format=torch.channels_last),
            None if shortcut_input is None else shortcut_input.stride(1) == 1,
            tuple(candidates))


def auto_pick(x, weight, bias, residual, shortcut_input, shortcut_weight, packed,
              relu, candidates: list[str]) -> str:
    """One of ``candidates`` (:func:`auto_candidates`) or ``"cudnn"`` for this layer."""
    mode = AUTO_PICK["mode"]
    if mode != "tune":
        return mode if mode in candidates else "cudnn"
    key = _pick_key(x, weight, residual, shortcut_input, relu, candidates)
    pick = _PICKED.get(key)
    if pick is not None:
        return pick
    args = (x, weight, bias, residual, shortcut_input, shortcut_weight)
    run = {"triton": lambda: be.triton_impl(*args, packed, relu),
           "cudnn": lambda: be.cudnn_fused(*args),
           "cudnn-pad": lambda: be.cudnn_fused(*args, pad=True)}
    with torch.cuda.device(x.device):   # do_bench times (and syncs) the current device
        return pick_faster(key, {name: run[name] for name in [*candidates, "cudnn"]},
                           _tuning.graph_bench_ms, "cudnn")


# ------------------------------------------------------------------ the implementation
def _run_auto_cuda(x, weight, bias, residual, shortcut_input, shortcut_weight, packed, relu):
    cands = auto_candidates(x, weight, residual, shortcut_input)
    pick = auto_pick(x, weight, bias, residual, shortcut_input, shortcut_weight, packed,
                     relu, cands) if cands else "cudnn"
    if pick == "triton":
        return be.triton_impl(x, weight, bias, residual, shortcut_input, shortcut_weight,
                              packed, relu)
    return be.cudnn_fused(x, weight, bias, residual, shortcut_input, shortcut_weight,
                          pad=pick == "cudnn-pad")


def conv3x3_fused_impl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       residual: Optional[torch.Tensor], shortcut_input: Optional[torch.Tensor],
                       shortcut_weight: Optional[torch.Tensor], packed: Optional[torch.Tensor],
                       relu: bool, backend: str) -> torch.Tensor:
    """The op's implementation; ``packed`` is the optional pre-packed Triton weight
    (inference modules). Called through the registered custom op, or directly in plain
    eager inference (:func:`raunet_fast.ops.conv3x3.conv3x3_call`)."""
    if bias.dim() != 1 or not bias.is_contiguous():  # e.g. a strided view or Cout x 1
        bias = bias.reshape(-1).contiguous()
    args = (x, weight, bias, residual, shortcut_input, shortcut_weight)
    if backend == "auto" and be.cudnn_fusion_applies(x, relu):
        return _run_auto_cuda(*args, packed, relu)
    name = resolve_backend(backend, x.device)
    if name == "triton" and backend == "auto" and x.dtype == torch.float64:
        name = "torch"
    if name == "torch":
        return as_out(conv3x3_reference(*args, relu), x)
    if name == "triton":
        return be.triton_impl(*args, packed, relu)
    if name == "cuda":
        if not x.is_cuda:
            raise BackendUnavailable("conv3x3_fused: backend 'cuda' needs CUDA tensors")
        if be.cudnn_fusion_applies(x, relu):
            return be.cudnn_fused(*args)
        return be.csrc_impl(be.CUDA_EXT, *args, relu)
    if x.device.type != "cpu":
        raise BackendUnavailable("conv3x3_fused: backend 'cpp' needs CPU tensors")
    return be.csrc_impl(be.CPU_EXT, *args, relu)
