"""``conv3x3_fused``: 3x3 conv (stride 1, padding 1) + bias + (identity residual | 1x1 shortcut)
+ ReLU, as one op with several backends.

    y = relu?(conv3x3(x, weight) + bias + residual)                          # identity shortcut
    y = relu?(conv3x3(x, weight) + bias + conv1x1(shortcut_input, shortcut_weight))  # projection

Backends (``backend=``):

* ``"torch"``  - reference math (``F.conv2d`` + add + ReLU), any device.
* ``"triton"`` - implicit-GEMM kernels (:mod:`raunet_fast.kernels.conv3x3`) with the shortcut
  GEMM in the same K loop and the epilogue in registers: a flat-K one for narrow inputs,
  a TMA + wgmma one on sm_90 for fp16 / bf16 TMA-aligned channels-last layers, a pointer-based one
  for the rest; CUDA, or CPU under ``TRITON_INTERPRET=1`` (tests).
* ``"cuda"``   - with ReLU on: cuDNN's runtime-fused conv + bias (+ add) + ReLU (the 1x1
  projection as one cuDNN conv feeding the add). With ReLU off (or
  ``RAUNET_CONV_CUDNN_FUSION=0``): cuDNN convolution + one fused vectorised epilogue kernel
  (``csrc/conv_epilogue*``), built with ninja at first use.
* ``"cpp"``    - fp32: a oneDNN convolution with weights prepacked once, bias (+ add) +
  ReLU as oneDNN post-ops when ReLU is on; otherwise (ReLU off, fp16/bf16,
  ``RAUNET_CPP_ONEDNN_POSTOPS=0``) the same csrc epilogue math built for the CPU.
* ``"auto"``   - on CUDA the cuDNN fusion when ReLU is on (fastest measured; where a Triton
  kernel was built to beat it - narrow inputs, or sm_90 16-bit TMA-aligned layers - or the
  input is narrow (cuDNN on zero-padded channels), whichever a one-time timing per layer
  shape finds fastest: :data:`AUTO_PICK`), else ``"triton"``
  (``"cuda"``, then ``"torch"`` if Triton is missing),
  ``"cpp"`` on CPU (``"torch"`` if it cannot be built; a warning says why).

Registered as the opaque ``torch.ops.raunet_fast.conv3x3_fused`` custom op with a fake
(meta) implementation, so ``torch.compile(fullgraph=True)`` traces it without a break.
Output: ``x``'s dtype, channels_last iff ``x`` is channels_last (and not also contiguous).

Weights passed to the public op are packed / cast once per weight tensor (a weak-reference
cache that follows in-place updates); :mod:`raunet_fast.ops.fused_blocks` holds them packed.
On CUDA the Triton backend autotunes its configs once per layer shape on first use
(``RAUNET_FAST_AUTOTUNE=0``: the default config only); fp32 follows
``torch.backends.cudnn.allow_tf32`` (TF32 products when on, exact fp32 when off).
"""
from __future__ import annotations

import os
import weakref
from typing import Optional

import torch
import torch.nn.functional as F

from ._backend import (BackendUnavailable, check_backend_name, eager_direct, load_extension,
                       run_direct,
                       triton_unavailable_reason, warn_fallback)

__all__ = ["conv3x3_fused", "resolve_backend", "pack_weights"]

_CPU_EXT = ("raunet_conv_epilogue_cpu", ["conv_epilogue_cpu.cpp"], False)
_CUDA_EXT = ("raunet_conv_epilogue_cuda", ["conv_epilogue.cu", "conv_epilogue_binding.cpp"], True)


# ------------------------------------------------------------------ helpers
def out_memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last iff ``x`` is channels_last and not plainly contiguous (ambiguous
    shapes, e.g. C == 1, count as contiguous): the real and the fake op agree on it."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _empty_out(x: torch.Tensor, cout: int) -> torch.Tensor:
    n, _, h, w = x.shape
    return torch.empty((n, cout, h, w), dtype=x.dtype, device=x.device,
                       memory_format=out_memory_format(x))


def _out_strides(x: torch.Tensor, cout: int) -> tuple[int, ...]:
    n, _, h, w = x.shape
    if out_memory_format(x) == torch.channels_last:
        return (h * w * cout, 1, w * cout, cout)
    return (cout * h * w, h * w, w, 1)


def _as_out(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y`` with exactly the strides the fake implementation promises (copied only if not)."""
    if y.dtype == x.dtype and y.stride() == _out_strides(x, y.shape[1]):
        return y
    return _empty_out(x, y.shape[1]).copy_(y)


def pack_weights(weight: torch.Tensor, shortcut_weight: Optional[torch.Tensor],
                 dtype: torch.dtype) -> torch.Tensor:
    """Triton layout ``[9*Cin + Cs, Cout]`` (K-major); pure torch, importable without triton."""
    cout, cin = weight.shape[:2]
    w = weight.detach().to(dtype).permute(2, 3, 1, 0).reshape(9 * cin, cout)
    if shortcut_weight is not None:
        w = torch.cat([w, shortcut_weight.detach().reshape(cout, -1).to(dtype).t()], dim=0)
    return w.contiguous()


_CACHE: dict[tuple, tuple] = {}


def _cached(kind: str, make, a: torch.Tensor, b: Optional[torch.Tensor], *key) -> torch.Tensor:
    """``make()`` for these exact tensors ``a`` (and ``b``), cached while they live unmodified
    (weak references + version counters; inference-mode tensors have none and are not
    cached)."""
    if a.is_inference() or (b is not None and b.is_inference()):
        # inference-mode tensors keep no version counter, so an in-place update could not
        # be seen: derive afresh on every call
        return make()
    full = (kind, id(a), id(b), *key)
    ver = (a._version, None if b is None else b._version)
    hit = _CACHE.get(full)
    if hit is not None:
        aref, bref, hver, value = hit
        if aref() is a and hver == ver and (bref() if bref is not None else None) is b:
            return value
    value = make()
    if len(_CACHE) >= 256:
        _CACHE.clear()

    def drop(_, k=full):  # a key tensor died: free its derived copy now
        _CACHE.pop(k, None)

    _CACHE[full] = (weakref.ref(a, drop), None if b is None else weakref.ref(b, drop), ver,
                    value)
    return value


def packed_for(weight: torch.Tensor, shortcut_weight: Optional[torch.Tensor],
               dtype: torch.dtype) -> torch.Tensor:
    """:func:`pack_weights` of these exact tensors, cached while they live unmodified:
    callers passing plain weights every call (the public op) pack once. Inference modules
    hold their packed weights instead."""
    return _cached("pack", lambda: pack_weights(weight, shortcut_weight, dtype), weight,
                   shortcut_weight, dtype)


def _weight_as(weight: torch.Tensor, dtype: torch.dtype,
               fmt: torch.memory_format) -> torch.Tensor:
    """``weight`` in ``dtype`` and layout ``fmt`` (cached unless it already is)."""
    if weight.dtype == dtype and weight.is_contiguous(memory_format=fmt):
        return weight
    return _cached("as", lambda: weight.detach().to(dtype).contiguous(memory_format=fmt),
                   weight, None, dtype, fmt)


_ext_failed: set[str] = set()


def _ext(spec):
    return load_extension(*spec)


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend ``backend`` means for tensors on ``device`` (may build the csrc
    extension for ``"auto"`` on CPU, once; failures fall back with a warning)."""
    check_backend_name(backend)
    if backend != "auto":
        return backend
    if device.type == "cuda":
        if triton_unavailable_reason(device) is None:
            return "triton"
        for name, spec in (("cuda", _CUDA_EXT),):
            if name not in _ext_failed:
                try:
                    _ext(spec)
                    return name
                except BackendUnavailable as e:
                    _ext_failed.add(name)
                    warn_fallback("conv3x3_fused", "auto", "torch", str(e)[:300])
        return "torch"
    if device.type == "cpu" and "cpp" not in _ext_failed:
        try:
            _ext(_CPU_EXT)
            return "cpp"
        except BackendUnavailable as e:
            _ext_failed.add("cpp")
            warn_fallback("conv3x3_fused", "auto", "torch", str(e)[:300])
    return "torch"


# ------------------------------------------------------------------ backends
def _torch_impl(x, weight, bias, residual, shortcut_input, shortcut_weight, relu):
    # CPU has no fp16 convolution everywhere: compute half inputs in fp32 there
    cdt = torch.float32 if (x.device.type == "cpu" and x.dtype == torch.float16) else x.dtype
    w = _weight_as(weight, cdt, out_memory_format(x))
    y = F.conv2d(x.to(cdt), w, bias.to(cdt), padding=1)
    if residual is not None:
        y = y + residual.to(cdt)
    elif shortcut_input is not None:
        cout, cs = weight.shape[0], shortcut_input.shape[1]
        y = y + F.conv2d(shortcut_input.to(cdt), shortcut_weight.to(cdt).reshape(cout, cs, 1, 1))
    if relu:
        y = torch.relu(y)
    return y.to(x.dtype)


def _triton_impl(x, weight, bias, residual, shortcut_input, shortcut_weight, packed, relu):
    why = triton_unavailable_reason(x.device)
    if why is None and x.dtype == torch.float64:
        why = "float64 is not supported by the Triton kernel (fp32/fp16/bf16)"
    if why is not None:
        raise BackendUnavailable(f"conv3x3_fused: backend 'triton' unavailable: {why}")
    from raunet_fast.kernels import conv3x3 as k

    if packed is None:
        packed = packed_for(weight, shortcut_weight, x.dtype)
    elif packed.dtype != x.dtype:
        packed = packed.to(x.dtype)
    if shortcut_input is not None and shortcut_input.dtype != x.dtype:
        shortcut_input = shortcut_input.to(x.dtype)
    out = _empty_out(x, weight.shape[0])
    return k.conv3x3_fused_forward(x, packed, bias, residual, shortcut_input, relu, out)


# fp32 "cpp" convolutions run through oneDNN with weights reordered once into its blocked
# layout (per weight and input shape): eager at::conv2d reorders them on every call, which
# dominates the low-resolution, many-channel levels. Off (the at::conv2d path used) where
# this torch build lacks the ops: probed once on a tiny known-good input (_onednn_probe);
# a call that fails for its own inputs falls back for that call only.
_ONEDNN = {"enabled": True}

# With ReLU on, oneDNN's own post-ops fuse bias (+ the shortcut add) + ReLU into the
# convolution (the CPU twin of the cuDNN fusion below): measured on 2 cores, fp32, the conv
# then runs at the bare convolution's speed, 5-18% faster than conv + the csrc epilogue
# pass. ReLU off (or RAUNET_CPP_ONEDNN_POSTOPS=0) keeps the csrc epilogue.
ONEDNN_POSTOPS = {"enabled": os.environ.get("RAUNET_CPP_ONEDNN_POSTOPS", "1") != "0"}

_PROBE: dict[str, bool] = {}


def _onednn_probe(what: str) -> bool:
    """Whether this torch build runs the prepacked oneDNN conv (``"conv"``) and its
    bias + add + ReLU post-ops (``"postops"``): tried once on a tiny input, then remembered."""
    if what not in _PROBE:
        one = [1, 1]
        x = torch.randn(1, 2, 3, 3)
        try:
            w = torch._C._nn.mkldnn_reorder_conv2d_weight(
                torch.randn(2, 2, 3, 3).to_mkldnn(), one, one, one, 1, list(x.shape))
            if what == "conv":
                torch.ops.mkldnn._convolution_pointwise(x, w, None, one, one, one, 1, "none",
                                                        [], "")
            else:
                torch.ops.mkldnn._convolution_pointwise.binary(
                    x, torch.randn(1, 2, 3, 3), w, torch.randn(2), one, one, one, 1, "add", 1.0,
                    "relu", [], "")
            _PROBE[what] = True
        except Exception:  # noqa: BLE001 - ops missing or refusing in this build
            _PROBE[what] = False
    return _PROBE[what]


def _onednn_weight(weight: torch.Tensor, x: torch.Tensor) -> Optional[torch.Tensor]:
    if not (_ONEDNN["enabled"] and x.dtype == torch.float32 and x.device.type == "cpu"
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and _onednn_probe("conv")):
        return None

    def make():
        w = weight.detach().to(torch.float32).contiguous().to_mkldnn()
        return torch._C._nn.mkldnn_reorder_conv2d_weight(w, [1, 1], [1, 1], [1, 1], 1,
                                                         list(x.shape))
    try:
        return _cached("onednn", make, weight, None, tuple(x.shape))
    except Exception:  # noqa: BLE001 - refused for these inputs: plain path, this call only
        return None


def _cpp_onednn(ext, x, weight, bias, residual, shortcut_input, shortcut_weight, relu):
    """Prepacked oneDNN convolution with the epilogue as oneDNN post-ops (ReLU on) or the
    fused csrc epilogue in one pass; None when the prepacked path is not available."""
    pw = _onednn_weight(weight, x)
    if pw is None:
        return None
    fmt = out_memory_format(x)
    one = [1, 1]
    sc = residual
    if shortcut_input is not None:
        cout, cs = weight.shape[0], shortcut_input.shape[1]
        sw = _weight_as(shortcut_weight.reshape(cout, cs, 1, 1), x.dtype, fmt)
        sc = F.conv2d(shortcut_input.to(x.dtype), sw)
    xc = x.contiguous(memory_format=fmt)
    if relu and ONEDNN_POSTOPS["enabled"] and _onednn_probe("postops"):
        # oneDNN reads the bias as dense fp32 whatever its strides: give it exactly that
        b = bias.detach().to(torch.float32).contiguous()
        try:
            if sc is None:
                return torch.ops.mkldnn._convolution_pointwise(xc, pw, b, one, one, one, 1,
                                                               "relu", [], "")
            return torch.ops.mkldnn._convolution_pointwise.binary(
                xc, sc.to(x.dtype).contiguous(memory_format=fmt), pw, b, one, one, one, 1,
                "add", 1.0, "relu", [], "")
        except Exception:  # noqa: BLE001 - refused for these inputs: the epilogue path
            pass
    try:
        y = torch.ops.mkldnn._convolution_pointwise(xc, pw, None, one, one, one, 1, "none", [],
                                                    "")
    except Exception:  # noqa: BLE001 - refused for these inputs: at::conv2d, this call only
        return None
    return ext.conv_epilogue(y, bias, sc, relu)


# cuDNN's runtime-fused conv + bias (+ add) + ReLU kernels. Measured on an H200 (bf16,
# channels_last, batch 8, bench/results): the block runs at 1.09-1.17x its two bare cuDNN
# convolutions this way, against 1.7x for cuDNN + the csrc epilogue pass and 2.5x for the
# Triton implicit GEMM. So the "cuda" backend uses it whenever ReLU is on (the network
# always); relu=False, or RAUNET_CONV_CUDNN_FUSION=0, runs cuDNN + the csrc epilogue.
CUDNN_FUSION = {"enabled": os.environ.get("RAUNET_CONV_CUDNN_FUSION", "1") != "0"}


def cudnn_fusion_applies(x: torch.Tensor, relu: bool) -> bool:
    return (CUDNN_FUSION["enabled"] and relu and x.is_cuda
            and x.dtype in (torch.float32, torch.float16, torch.bfloat16)
            and torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled)


#: The channel multiple cuDNN's tensor-core convolutions are built for (16 bytes of fp16 /
#: bf16): a narrow input (RGB: 3, MRI: 4, grayscale: 1) is otherwise left to slower kernels.
CUDNN_CHANNEL_MULTIPLE = 8


def _padded_channels(c: int) -> int:
    m = CUDNN_CHANNEL_MULTIPLE
    return -(-c // m) * m


def pad_channels(x: torch.Tensor, weight: torch.Tensor, fmt: torch.memory_format,
                 key: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (``N x C x H x W``) and ``weight`` (``Cout x C x kh x kw``) with zero channels
    appended up to a multiple of :data:`CUDNN_CHANNEL_MULTIPLE`, in layout ``fmt``: the
    same convolution exactly (the added products are zeros). The padded weight is cached
    per ``key`` tensor (the caller's weight, ``weight`` itself by default: a view made per
    call would miss); ``x`` is copied once per call (a narrow tensor: a few percent of the
    layer's output traffic)."""
    n, c, h, w = x.shape
    cp = _padded_channels(c)
    if cp == c:
        return x, weight

    def make():
        wp = weight.new_zeros((weight.shape[0], cp, *weight.shape[2:]), dtype=x.dtype)
        wp[:, :c] = weight.detach()
        return wp.contiguous(memory_format=fmt)
    xp = torch.empty((n, cp, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
    xp[:, :c].copy_(x)
    xp[:, c:].zero_()
    return xp, _cached("pad", make, weight if key is None else key, None, x.dtype, fmt, cp)


def _cudnn_fused(x, weight, bias, residual, shortcut_input, shortcut_weight, pad=False):
    """cuDNN's runtime-fused conv + bias (+ add) + ReLU; ``pad``: narrow inputs (the conv's
    and the projection's) zero-padded to :data:`CUDNN_CHANNEL_MULTIPLE` channels first."""
    x0 = x
    fmt = out_memory_format(x)
    w = _weight_as(weight, x.dtype, fmt)
    b = bias if bias.dtype == x.dtype else _cached("bias", lambda: bias.detach().to(x.dtype),
                                                   bias, None, x.dtype)
    b = b.contiguous()  # cuDNN reads the bias as dense (a no-op for the modules' buffers)
    one = (1, 1)
    if pad:
        x, w = pad_channels(x, w, fmt, key=weight)
    if shortcut_input is not None:
        cout, cs = weight.shape[0], shortcut_input.shape[1]
        sw = _weight_as(shortcut_weight.reshape(cout, cs, 1, 1), x.dtype, fmt)
        s = shortcut_input.to(x.dtype)
        if pad:
            s, sw = pad_channels(s, sw, fmt, key=shortcut_weight)
        residual = F.conv2d(s, sw)
    if residual is None:
        y = torch.cudnn_convolution_relu(x, w, b, one, one, one, 1)
    else:
        y = torch.cudnn_convolution_add_relu(x, w, residual.to(x.dtype), 1.0, b, one, one, one, 1)
    return _as_out(y, x0)


# "auto" on CUDA with ReLU on runs cuDNN's fusion - except where a Triton kernel was built
# to beat it, and then the faster of the two for that layer, timed once:
# * narrow inputs (9*Cin + Cs <= 64: the first conv, RGB or 4 MRI modalities): the flat-K
#   kernel. cuDNN runs the level-1 convolutions of a 512 x 512 RA-U-Net at 0.68 ms for batch
#   8 on an H200 (bench/results/h200-20261126/run1_conv.txt, bf16) while the 64 -> 64 conv
#   alone should take ~0.25 ms at the level-2 convs' 660 TFLOP/s: the 3-channel conv, which
#   only has to write its 64-channel output (~0.07 ms of traffic), appears to take ~0.4 ms;
# * sm_90, fp16 / bf16, channels-last, 16-byte-aligned channels, rows >= 64 wide: the TMA kernel, a
#   Hopper GEMM pipeline (TMA -> shared memory -> wgmma) with the 1x1 projection shortcut
#   in its K loop: no projection tensor written and read back (level 2's 1.20x over its
#   bare convolutions with cuDNN).
# * narrow inputs also run through cuDNN on zero-padded channels (a multiple of 8, the
#   width its tensor-core kernels take; ``"cudnn-pad"``): the same convolution for the price
#   of a copy of the narrow input.
# None of these is timed on a GPU yet, so the first call of such a layer shape (size class)
# times the candidates on the real inputs and keeps the fastest, like cudnn.benchmark
# (device time, from calls replayed in a CUDA graph: the host's launch cost is not what
# decides). Never during CUDA graph capture (cuDNN then, not remembered).
# RAUNET_CONV_AUTO=triton|cudnn|cudnn-pad: that one where it applies (else cuDNN), no timing.
AUTO_MODES = ("tune", "triton", "cudnn", "cudnn-pad")
AUTO_PICK = {"mode": os.environ.get("RAUNET_CONV_AUTO", "tune")}
if AUTO_PICK["mode"] not in AUTO_MODES:
    import warnings

    warnings.warn(f"RAUNET_CONV_AUTO={AUTO_PICK['mode']!r} is not one of "
                  f"{', '.join(AUTO_MODES)}: using tune", stacklevel=2)
    AUTO_PICK["mode"] = "tune"
_PICKED: dict[tuple, str] = {}
#: the timings behind each pick (ms per candidate that ran), for reports and tests
PICK_TIMES: dict[tuple, dict[str, float]] = {}


def _triton_contends(x: torch.Tensor, weight: torch.Tensor, residual: Optional[torch.Tensor],
                     shortcut_input: Optional[torch.Tensor]) -> bool:
    """Whether a Triton kernel built to beat cuDNN applies to this CUDA layer (see
    :data:`AUTO_PICK`)."""
    if not x.is_cuda or x.dtype == torch.float64 or triton_unavailable_reason(x.device):
        return False
    from raunet_fast.kernels import conv3x3 as k

    if k.uses_small_k(weight.shape[1], shortcut_input.shape[1] if shortcut_input is not None
                      else 0):
        return True
    if out_memory_format(x) != torch.channels_last:   # the output the op will allocate
        return False
    ieee = x.dtype == torch.float32 and not torch.backends.cudnn.allow_tf32
    return k.tma_applies(x, residual, shortcut_input, weight.shape[0], ieee)


def auto_candidates(x: torch.Tensor, weight: torch.Tensor, residual: Optional[torch.Tensor],
                    shortcut_input: Optional[torch.Tensor]) -> list[str]:
    """What "auto" times against plain cuDNN fusion for this CUDA layer (:data:`AUTO_PICK`):
    ``"triton"`` where a Triton kernel built to beat it applies, ``"cudnn-pad"`` where the
    conv's or the projection's input channels are not a multiple of
    :data:`CUDNN_CHANNEL_MULTIPLE`; empty: cuDNN, no timing."""
    out = ["triton"] if _triton_contends(x, weight, residual, shortcut_input) else []
    cs = shortcut_input.shape[1] if shortcut_input is not None else 0
    if x.dtype != torch.float64 and (_padded_channels(weight.shape[1]) != weight.shape[1]
                                     or _padded_channels(cs) != cs):
        out.append("cudnn-pad")
    return out


def pick_faster(key: tuple, candidates: dict, timer, default: str) -> str:
    """The name of the fastest of ``candidates`` (name -> zero-argument callable) by
    ``timer(fn) -> ms``, remembered under ``key`` (the timings in :data:`PICK_TIMES`);
    ``default`` while a CUDA graph is being captured, or when no candidate ran (neither
    remembered). A candidate that raises is out of the running."""
    pick = _PICKED.get(key)
    if pick is not None:
        return pick
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return default
    times = {}
    for name, fn in candidates.items():
        try:
            fn()                   # first use: Triton autotuning, cuDNN plan, csrc build
            times[name] = timer(fn)
        except Exception:  # noqa: BLE001 - this candidate cannot run these inputs
            continue
    if not times:   # e.g. out of memory while timing: try again next call
        return default
    pick = min(times, key=times.get)
    _PICKED[key] = pick
    PICK_TIMES[key] = times
    return pick


def _bench_ms(fn, reps: int = 10) -> float:
    """Device milliseconds per call of ``fn``: ``reps`` calls captured in a CUDA graph and
    the replay timed (``triton.testing.do_bench``, L2 flushed between replays), so the host's
    launch cost - which differs between a Triton launch and a cuDNN call, and which CUDA
    graphs remove in deployment - does not decide. Falls back to timing plain calls if the
    capture fails."""
    from triton.testing import do_bench

    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()   # warm on the capture stream (workspaces, plans)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                fn()
        ms = do_bench(graph.replay, warmup=5, rep=20) / reps
        del graph
        return ms
    except Exception:  # noqa: BLE001 - not capturable here: time plain calls
        torch.cuda.synchronize()
        return do_bench(fn, warmup=5, rep=20)


def describe_picks() -> list[str]:
    """One line per layer shape "auto" has timed (:data:`PICK_TIMES`): the layer, each
    candidate's device milliseconds and the pick."""
    lines = []
    for key, times in PICK_TIMES.items():
        cin, cout, cs, has_res, _, dtype, _, _, size_class = key[:9]
        extra = f" + 1x1 {cs}" if cs else (" + residual" if has_res else "")
        t = ", ".join(f"{name} {ms:.4f}" for name, ms in sorted(times.items()))
        lines.append(f"{cin:>5} -> {cout:<5}{extra:<14} {str(dtype)[6:]:<9} "
                     f"<{2 ** size_class:>9} px: {t} ms -> {_PICKED.get(key, '?')}")
    return lines


def _auto_pick(x, weight, bias, residual, shortcut_input, shortcut_weight, packed,
               relu, candidates: list[str]) -> str:
    """One of ``candidates`` (:func:`auto_candidates`) or ``"cudnn"`` for this layer."""
    mode = AUTO_PICK["mode"]
    if mode != "tune":
        return mode if mode in candidates else "cudnn"
    n, cin, h, w = x.shape
    key = (cin, weight.shape[0], shortcut_input.shape[1] if shortcut_input is not None else 0,
           residual is not None, relu, x.dtype, out_memory_format(x), w >= 128,
           (n * h * w).bit_length(), x.device.index, torch.backends.cudnn.allow_tf32,
           x.is_contiguous(memory_format=torch.channels_last),
           None if shortcut_input is None else shortcut_input.stride(1) == 1,
           tuple(candidates))
    pick = _PICKED.get(key)
    if pick is not None:
        return pick
    run = {
        "triton": lambda: _triton_impl(x, weight, bias, residual, shortcut_input,
                                       shortcut_weight, packed, relu),
        "cudnn": lambda: _cudnn_fused(x, weight, bias, residual, shortcut_input,
                                      shortcut_weight),
        "cudnn-pad": lambda: _cudnn_fused(x, weight, bias, residual, shortcut_input,
                                          shortcut_weight, pad=True)}
    with torch.cuda.device(x.device):   # do_bench times (and syncs) the current device
        return pick_faster(key, {name: run[name] for name in [*candidates, "cudnn"]},
                           _bench_ms, "cudnn")


def _csrc_impl(spec, x, weight, bias, residual, shortcut_input, shortcut_weight, relu):
    ext = _ext(spec)
    if spec is _CPU_EXT:
        y = _cpp_onednn(ext, x, weight, bias, residual, shortcut_input, shortcut_weight, relu)
        if y is not None:
            return _as_out(y, x)
    # weight in x's layout: cuDNN / oneDNN otherwise reorder it (or the output) per call
    w = _weight_as(weight, x.dtype, out_memory_format(x))
    sw = shortcut_weight.to(x.dtype) if shortcut_weight is not None else None
    s = shortcut_input.to(x.dtype) if shortcut_input is not None else None
    y = ext.conv3x3_fused(x, w, bias, residual, s, sw, relu)
    return _as_out(y, x)


def _conv3x3_fused_impl(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      residual: Optional[torch.Tensor], shortcut_input: Optional[torch.Tensor],
                      shortcut_weight: Optional[torch.Tensor], packed: Optional[torch.Tensor],
                      relu: bool, backend: str) -> torch.Tensor:
    """The op's implementation; ``packed`` is the optional pre-packed Triton weight
    (inference modules). Called through :data:`_conv3x3_fused_op` (or directly in plain
    eager inference, see :func:`conv3x3_call`)."""
    if bias.dim() != 1 or not bias.is_contiguous():  # e.g. a strided view or Cout x 1
        bias = bias.reshape(-1).contiguous()
    if backend == "auto" and cudnn_fusion_applies(x, relu):
        cands = auto_candidates(x, weight, residual, shortcut_input)
        pick = _auto_pick(x, weight, bias, residual, shortcut_input, shortcut_weight, packed,
                          relu, cands) if cands else "cudnn"
        if pick == "triton":
            return _triton_impl(x, weight, bias, residual, shortcut_input, shortcut_weight,
                                packed, relu)
        return _cudnn_fused(x, weight, bias, residual, shortcut_input, shortcut_weight,
                            pad=pick == "cudnn-pad")
    be = resolve_backend(backend, x.device)
    if be == "triton" and backend == "auto" and x.dtype == torch.float64:
        be = "torch"
    if be == "torch":
        return _as_out(_torch_impl(x, weight, bias, residual, shortcut_input, shortcut_weight,
                                   relu), x)
    if be == "triton":
        return _triton_impl(x, weight, bias, residual, shortcut_input, shortcut_weight, packed,
                            relu)
    if be == "cuda":
        if not x.is_cuda:
            raise BackendUnavailable("conv3x3_fused: backend 'cuda' needs CUDA tensors")
        if cudnn_fusion_applies(x, relu):
            return _cudnn_fused(x, weight, bias, residual, shortcut_input, shortcut_weight)
        return _csrc_impl(_CUDA_EXT, x, weight, bias, residual, shortcut_input, shortcut_weight,
                          relu)
    if x.device.type != "cpu":
        raise BackendUnavailable("conv3x3_fused: backend 'cpp' needs CPU tensors")
    return _csrc_impl(_CPU_EXT, x, weight, bias, residual, shortcut_input, shortcut_weight, relu)


#: The opaque ``torch.ops.raunet_fast.conv3x3_fused`` custom op.
_conv3x3_fused_op = torch.library.custom_op("raunet_fast::conv3x3_fused", _conv3x3_fused_impl,
                                            mutates_args=())


@_conv3x3_fused_op.register_fake
def _(x, weight, bias, residual, shortcut_input, shortcut_weight, packed, relu, backend):
    return _empty_out(x, weight.shape[0])


def conv3x3_call(x, weight, bias, residual, shortcut_input, shortcut_weight, packed, relu,
                 backend) -> torch.Tensor:
    """Run the op on checked arguments: its implementation directly in plain eager inference
    (no custom-op dispatch cost, :func:`~raunet_fast.ops._backend.eager_direct`), else the
    registered op (compile, export, autograd, fake tensors)."""
    args = (x, weight, bias, residual, shortcut_input, shortcut_weight, packed, relu, backend)
    if eager_direct(x, weight, bias, residual, shortcut_input, shortcut_weight, packed):
        return run_direct("conv3x3_fused", _conv3x3_fused_impl, args)
    return _conv3x3_fused_op(*args)


# ------------------------------------------------------------------ public op
_X_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def inputs_ok(x, weight, residual, shortcut_input, shortcut_weight) -> bool:
    """A fast test that :func:`_check` passes, for callers whose weights were checked when
    they were built (the inference modules): the activations against the weights' shapes and
    device, nothing else. False: run :func:`_check` for the error message."""
    if x.dim() != 4 or x.dtype not in _X_DTYPES:
        return False
    n, cin, h, w = x.shape
    if cin != weight.shape[1] or h == 0 or w == 0 or x.device != weight.device:
        return False
    if residual is not None and (shortcut_input is not None or residual.device != x.device
                                 or residual.shape != (n, weight.shape[0], h, w)):
        return False
    if (shortcut_input is None) != (shortcut_weight is None):
        return False
    return shortcut_input is None or (
        shortcut_input.dim() == 4 and shortcut_input.device == x.device
        and shortcut_input.shape == (n, shortcut_weight.shape[1], h, w))


def _check(x, weight, bias, residual, shortcut_input, shortcut_weight):
    if x.dim() != 4:
        raise ValueError(f"conv3x3_fused: x must be N x Cin x H x W, got shape {tuple(x.shape)}")
    n, cin, h, w = x.shape
    if h == 0 or w == 0:
        raise ValueError(f"conv3x3_fused: x must have H, W >= 1, got shape {tuple(x.shape)}")
    if weight.dim() != 4 or tuple(weight.shape[1:]) != (cin, 3, 3):
        raise ValueError(f"conv3x3_fused: weight must be Cout x {cin} x 3 x 3 for x of shape "
                         f"{tuple(x.shape)}, got {tuple(weight.shape)}")
    cout = weight.shape[0]
    if bias.numel() != cout:
        raise ValueError(f"conv3x3_fused: bias must have Cout={cout} elements, got {bias.numel()}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"conv3x3_fused: x must be float32/float16/bfloat16, got {x.dtype}")
    if residual is not None and shortcut_input is not None:
        raise ValueError("conv3x3_fused: give residual (identity shortcut) or shortcut_input + "
                         "shortcut_weight (projection), not both")
    if residual is not None and tuple(residual.shape) != (n, cout, h, w):
        raise ValueError(f"conv3x3_fused: residual must have shape {(n, cout, h, w)}, "
                         f"got {tuple(residual.shape)}")
    if (shortcut_input is None) != (shortcut_weight is None):
        raise ValueError("conv3x3_fused: shortcut_input and shortcut_weight go together")
    if shortcut_input is not None:
        if shortcut_input.dim() != 4 or shortcut_input.shape[0] != n or \
                tuple(shortcut_input.shape[2:]) != (h, w):
            raise ValueError(f"conv3x3_fused: shortcut_input must be {n} x Cs x {h} x {w}, "
                             f"got {tuple(shortcut_input.shape)}")
        cs = shortcut_input.shape[1]
        if shortcut_weight.numel() != cout * cs or shortcut_weight.shape[0] != cout:
            raise ValueError(f"conv3x3_fused: shortcut_weight must be {cout} x {cs} (or "
                             f"{cout} x {cs} x 1 x 1), got {tuple(shortcut_weight.shape)}")
    for name, t in (("weight", weight), ("bias", bias), ("residual", residual),
                    ("shortcut_input", shortcut_input), ("shortcut_weight", shortcut_weight)):
        if t is not None and t.device != x.device:
            raise ValueError(f"conv3x3_fused: {name} is on {t.device}, x on {x.device}")


def conv3x3_fused(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *,
                  residual: Optional[torch.Tensor] = None,
                  shortcut_input: Optional[torch.Tensor] = None,
                  shortcut_weight: Optional[torch.Tensor] = None,
                  relu: bool = True, backend: str = "auto") -> torch.Tensor:
    """``relu?(conv3x3(x, weight, padding=1) + bias + shortcut)`` in one fused op.

    Args:
        x: ``N x Cin x H x W`` (contiguous or channels_last, the fast layout), fp32/fp16/bf16.
        weight: ``Cout x Cin x 3 x 3`` (BatchNorm already folded in); cast to ``x.dtype``.
        bias: ``Cout`` (added in fp32).
        residual: ``N x Cout x H x W`` identity shortcut added before the ReLU; or
        shortcut_input: ``N x Cs x H x W`` with shortcut_weight ``Cout x Cs`` (a 1x1 conv,
            ``Cout x Cs x 1 x 1`` accepted), computed inside the same kernel. Not both.
        relu: apply ReLU last.
        backend: ``"auto"``, ``"torch"``, ``"triton"``, ``"cuda"`` or ``"cpp"`` (module doc).
            An explicitly named backend that cannot run raises
            :class:`~raunet_fast.ops.BackendUnavailable`.

    Returns ``N x Cout x H x W`` in ``x.dtype``, accumulated in fp32; channels_last iff ``x`` is.
    """
    check_backend_name(backend)
    _check(x, weight, bias, residual, shortcut_input, shortcut_weight)
    if shortcut_weight is not None:
        shortcut_weight = shortcut_weight.reshape(weight.shape[0], shortcut_input.shape[1])
    return conv3x3_call(x, weight, bias, residual, shortcut_input, shortcut_weight, None, relu,
                        backend)
