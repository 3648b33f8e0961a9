"""The fast backends of ``conv3x3_fused``: Triton, cuDNN's runtime fusion, oneDNN with
prepacked weights, and the ``csrc/conv_epilogue*`` extensions (``"cuda"`` / ``"cpp"``)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._backend import BackendUnavailable, load_extension, triton_unavailable_reason
from ..settings import SettingsView, settings
from .layout import as_out, empty_out, out_memory_format
from .weights import cached, pad_channels, packed_for, weight_as

__all__ = ["CPU_EXT", "CUDA_EXT", "extension", "triton_impl", "cudnn_fusion_applies",
           "cudnn_fused", "csrc_impl", "onednn_probe", "ONEDNN", "CUDNN_FUSION"]

CPU_EXT = ("raunet_conv_epilogue_cpu", ["conv_epilogue_cpu.cpp"], False)
CUDA_EXT = ("raunet_conv_epilogue_cuda", ["conv_epilogue.cu", "conv_epilogue_binding.cpp"], True)


def extension(spec):
    return load_extension(*spec)


# ------------------------------------------------------------------ triton
def triton_impl(x, weight, bias, residual, shortcut_input, shortcut_weight, packed, relu):
    why = triton_unavailable_reason(x.device)
    if why is None and x.dtype == torch.float64:
        why = "float64 is not supported by the Triton kernel (fp32/fp16/bf16)"
    if why is not None:
        raise BackendUnavailable(f"conv3x3_fused: backend 'triton' unavailable: {why}")
    from .triton.launch import conv3x3_fused_forward

    if packed is None:
        packed = packed_for(weight, shortcut_weight, x.dtype)
    elif packed.dtype != x.dtype:
        packed = packed.to(x.dtype)
    if shortcut_input is not None and shortcut_input.dtype != x.dtype:
        shortcut_input = shortcut_input.to(x.dtype)
    out = empty_out(x, weight.shape[0])
    return conv3x3_fused_forward(x, packed, bias, residual, shortcut_input, relu, out)


# ------------------------------------------------------------------ oneDNN ("cpp", fp32)
# fp32 "cpp" convolutions run through oneDNN with weights reordered once into its blocked
# layout (per weight and input shape): eager at::conv2d reorders them on every call. Off
# (the at::conv2d path used) where this torch build lacks the ops: probed once on a tiny
# known-good input (onednn_probe); a call that fails for its own inputs falls back for
# that call only. Bias, shortcut and ReLU then run in the csrc epilogue, never as oneDNN
# post-ops: oneDNN's ReLU (a max with 0) turns NaN into 0, torch.relu keeps it.
ONEDNN = {"enabled": True}

_PROBE: dict[str, bool] = {}
_ONE = [1, 1]


def _probe_call() -> None:
    x = torch.randn(1, 2, 3, 3)
    w = torch._C._nn.mkldnn_reorder_conv2d_weight(
        torch.randn(2, 2, 3, 3).to_mkldnn(), _ONE, _ONE, _ONE, 1, list(x.shape))
    torch.ops.mkldnn._convolution_pointwise(x, w, None, _ONE, _ONE, _ONE, 1, "none", [], "")


def onednn_probe() -> bool:
    """Whether this torch build runs the prepacked oneDNN conv: tried once on a tiny input,
    then remembered."""
    if "conv" not in _PROBE:
        try:
            _probe_call()
            _PROBE["conv"] = True
        except Exception:  # noqa: BLE001 - ops missing or refusing in this build
            _PROBE["conv"] = False
    return _PROBE["conv"]


def _onednn_weight(weight: torch.Tensor, x: torch.Tensor) -> Optional[torch.Tensor]:
    if not (ONEDNN["enabled"] and x.dtype == torch.float32 and x.device.type == "cpu"
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and onednn_probe()):
        return None

    def make():
        w = weight.detach().to(torch.float32).contiguous().to_mkldnn()
        return torch._C._nn.mkldnn_reorder_conv2d_weight(w, _ONE, _ONE, _ONE, 1, list(x.shape))
    try:
        return cached("onednn", make, weight, None, tuple(x.shape))
    except Exception:  # noqa: BLE001 - refused for these inputs: plain path, this call only
        return None


def cpp_onednn(ext, x, weight, bias, residual, shortcut_input, shortcut_weight, relu):
    """Prepacked oneDNN convolution, then the fused csrc epilogue (bias + shortcut + ReLU)
    in one pass; None when the prepacked path is not available."""
    pw = _onednn_weight(weight, x)
    if pw is None:
        return None
    fmt = out_memory_format(x)
    sc = residual
    if shortcut_input is not None:
        cout, cs = weight.shape[0], shortcut_input.shape[1]
        sw = weight_as(shortcut_weight.reshape(cout, cs, 1, 1), x.dtype, fmt)
        sc = F.conv2d(shortcut_input.to(x.dtype), sw)
    xc = x.contiguous(memory_format=fmt)
    try:
        y = torch.ops.mkldnn._convolution_pointwise(xc, pw, None, _ONE, _ONE, _ONE, 1, "none",
                                                    [], "")
    except Exception:  # noqa: BLE001 - refused for these inputs: at::conv2d, this call only
        return None
    return ext.conv_epilogue(y, bias, sc, relu)


# ------------------------------------------------------------------ cuDNN fusion
#: cuDNN's runtime-fused conv + bias (+ add) + ReLU kernels: the "cuda" backend uses them
#: whenever ReLU is on; relu=False, or ``settings.conv_cudnn_fusion`` off
#: (``RAUNET_CONV_CUDNN_FUSION=0``), runs cuDNN + the csrc epilogue.
CUDNN_FUSION = SettingsView("enabled", "conv_cudnn_fusion")


def cudnn_fusion_applies(x: torch.Tensor, relu: bool) -> bool:
    return (settings.conv_cudnn_fusion and relu and x.is_cuda
            and x.dtype in (torch.float32, torch.float16, torch.bfloat16)
            and torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled)


def cudnn_fused(x, weight, bias, residual, shortcut_input, shortcut_weight, pad=False):
    """cuDNN's runtime-fused conv + bias (+ add) + ReLU; ``pad``: narrow inputs (the conv's
    and the projection's) zero-padded to ``CUDNN_CHANNEL_MULTIPLE`` channels first."""
    x0 = x
    fmt = out_memory_format(x)
    w = weight_as(weight, x.dtype, fmt)
    b = bias if bias.dtype == x.dtype else cached("bias", lambda: bias.detach().to(x.dtype),
                                                  bias, None, x.dtype)
    b = b.contiguous()  # cuDNN reads the bias as dense (a no-op for the modules' buffers)
    one = (1, 1)
    if pad:
        x, w = pad_channels(x, w, fmt, key=weight)
    if shortcut_input is not None:
        cout, cs = weight.shape[0], shortcut_input.shape[1]
        sw = weight_as(shortcut_weight.reshape(cout, cs, 1, 1), x.dtype, fmt)
        s = shortcut_input.to(x.dtype)
        if pad:
            s, sw = pad_channels(s, sw, fmt, key=shortcut_weight)
        residual = F.conv2d(s, sw)
    if residual is None:
        y = torch.cudnn_convolution_relu(x, w, b, one, one, one, 1)
    else:
        y = torch.cudnn_convolution_add_relu(x, w, residual.to(x.dtype), 1.0, b, one, one, one, 1)
    return as_out(y, x0)


# ------------------------------------------------------------------ csrc epilogue
def csrc_impl(spec, x, weight, bias, residual, shortcut_input, shortcut_weight, relu):
    """cuDNN / oneDNN convolution + the fused csrc epilogue (``spec``: :data:`CPU_EXT` or
    :data:`CUDA_EXT`); fp32 on CPU first tries the prepacked oneDNN path."""
    ext = extension(spec)
    if spec is CPU_EXT:
        y = cpp_onednn(ext, x, weight, bias, residual, shortcut_input, shortcut_weight, relu)
        if y is not None:
            return as_out(y, x)
    # weight in x's layout: cuDNN / oneDNN otherwise reorder it (or the output) per call
    w = weight_as(weight, x.dtype, out_memory_format(x))
    sw = shortcut_weight.to(x.dtype) if shortcut_weight is not None else None
    s = shortcut_input.to(x.dtype) if shortcut_input is not None else None
    y = ext.conv3x3_fused(x, w, bias, residual, s, sw, relu)
    return as_out(y, x)
