"""The attention gate's backends and the order ``"auto"`` tries them in.

``"torch"`` (reference math, any device), ``"triton"`` (:mod:`.triton`), ``"cuda"``
(``csrc/attention_gate.cu``), ``"cpp"`` (``csrc/attention_gate_cpu.cpp``: the same
per-pixel header built for the CPU); ``"auto"``: triton then cuda then torch on CUDA
tensors, cpp then torch on CPU tensors. A backend that cannot run raises
:class:`~raunet_fast.ops.BackendUnavailable` when forced; ``"auto"`` warns and moves on.
"""
from __future__ import annotations

import torch

from .._backend import (BackendUnavailable, first_that_runs, load_extension,
                        triton_unavailable_reason)
from ..settings import settings
from .reference import empty_alpha, empty_concat, torch_impl

__all__ = ["EXTENSIONS", "extension", "triton_impl", "csrc_impl", "resolve", "run_backend",
           "as_image", "attention_gate_impl", "attention_gate_concat_impl"]

#: csrc extension per backend: (module name, sources, cuda)
EXTENSIONS = {"cuda": ("raunet_fast_attention_gate_cuda",
                       ["attention_gate_cuda.cpp", "attention_gate.cu"], True),
              "cpp": ("raunet_fast_attention_gate_cpu", ["attention_gate_cpu.cpp"], False)}
_ISA_SET: dict[int, str] = {}


def extension(kind: str):
    """The built csrc extension of backend ``kind``; the cpp one gets
    ``settings.gate_cpu_isa`` (``RAUNET_GATE_CPU_ISA``) as its micro-kernel choice."""
    name, sources, cuda = EXTENSIONS[kind]
    ext = load_extension(name, sources, cuda=cuda)
    if kind == "cpp" and hasattr(ext, "set_cpu_isa"):
        isa = settings.gate_cpu_isa
        if _ISA_SET.get(id(ext)) != isa:
            ext.set_cpu_isa(isa)
            _ISA_SET[id(ext)] = isa
    return ext


def triton_impl(x, g, w_x, w_g, bias, w_psi, b_psi, return_alpha, concat=False):
    from .triton.launch import attention_gate_forward

    out = empty_concat(x, g) if concat else torch.empty_like(x)
    alpha = empty_alpha(x, return_alpha)
    attention_gate_forward(x, g, w_x, w_g, bias, w_psi, b_psi, out,
                           alpha if return_alpha else None, concat=concat)
    return out, alpha


def csrc_impl(kind, x, g, w_x, w_g, bias, w_psi, b_psi, return_alpha, concat=False):
    """csrc kernels take dense NHWC (channels_last) x and g, every parameter contiguous in
    x's dtype (no-ops for parameters from :func:`cast_gate_params`): one launch per call.
    ``concat``: the cpp kernel writes ``[gated x, g]`` itself; the cuda kernel (not the GPU
    default) gates, then concatenates."""
    ext = extension(kind)
    cl = torch.channels_last
    xc = x.contiguous(memory_format=cl)
    gc = g.contiguous(memory_format=cl)
    w_x, w_g, bias, w_psi, b_psi = (t.to(x.dtype).contiguous()
                                    for t in (w_x, w_g, bias, w_psi, b_psi))
    if concat and kind == "cpp":
        out = empty_concat(x, g)
        ext.attention_gate_forward(xc, gc, w_x, w_g, bias, w_psi, b_psi, out,
                                   empty_alpha(x, False), False, True)
        return out, empty_alpha(x, False)
    if concat:
        gated, _ = csrc_impl(kind, xc, gc, w_x, w_g, bias, w_psi, b_psi, False)
        return torch.cat([gated, gc], dim=1).contiguous(memory_format=cl), empty_alpha(x, False)
    out = torch.empty_like(x)
    direct = out.is_contiguous(memory_format=cl)
    out_cl = out if direct else torch.empty_like(xc, memory_format=cl)
    alpha = empty_alpha(x, return_alpha)
    extra = (bool(settings.gate_cuda_tensor_cores),) if kind == "cuda" else (False,)
    ext.attention_gate_forward(xc, gc, w_x, w_g, bias, w_psi, b_psi, out_cl, alpha, return_alpha,
                               *extra)
    if not direct:
        out.copy_(out_cl)
    return out, alpha


def resolve(backend: str, device: torch.device) -> list[str]:
    """Backends to try, in order, for ``backend`` on ``device``."""
    if backend != "auto":
        return [backend]
    if device.type == "cuda":
        return ["triton", "cuda", "torch"]
    if device.type == "cpu":
        return ["cpp", "torch"]
    return ["torch"]


def run_backend(name, x, g, w_x, w_g, bias, w_psi, b_psi, return_alpha, concat=False):
    args = (x, g, w_x, w_g, bias, w_psi, b_psi, return_alpha, concat)
    if name == "torch":
        return torch_impl(*args)
    if name == "triton":
        why = triton_unavailable_reason(x.device)
        if why is not None:
            raise BackendUnavailable(f"attention_gate: backend 'triton' unavailable: {why}")
        return triton_impl(*args)
    if name == "cuda":
        if x.device.type != "cuda":
            raise BackendUnavailable("attention_gate: backend 'cuda' unavailable: the cuda "
                                     f"backend needs CUDA tensors (got {x.device.type} tensors)")
        return csrc_impl("cuda", *args)
    if name == "cpp":
        if x.device.type != "cpu":
            raise BackendUnavailable("attention_gate: backend 'cpp' unavailable: it runs CPU "
                                     f"tensors only (got {x.device.type} tensors)")
        return csrc_impl("cpp", *args)
    raise ValueError(f"unknown backend {name!r}")


def _first_that_runs(op: str, backend: str, x, args: tuple):
    return first_that_runs(op, resolve(backend, x.device), run_backend, args)


def as_image(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``(4-D tensor, copied)``: ``t`` itself when 4-D; a volume ``N x C x D x H x W`` as
    ``N x C x (D*H) x W`` with the same data (the gate is per voxel, so the kernels run it
    as one tall image). A view when that view is dense channels_last or NCHW (checked on
    its strides), else a channels_last_3d copy viewed."""
    if t.dim() == 4:
        return t, False
    n, c, d, h, w = t.shape
    try:
        v = t.view(n, c, d * h, w)
        if v.is_contiguous(memory_format=torch.channels_last) or v.is_contiguous():
            return v, False
    except RuntimeError:  # D and H not mergeable in t's strides
        pass
    return t.contiguous(memory_format=torch.channels_last_3d).view(n, c, d * h, w), True


def _as_volume(out: torch.Tensor, x: torch.Tensor, copied: bool, concat: bool) -> torch.Tensor:
    """The kernel's 4-D ``out`` back in x's 5-D shape with the strides the fake promises:
    x's (``empty_like(x)``; out was allocated like x's view, so its data is in x's order),
    copied only when x itself was not a dense view; the concatenated output (more
    channels) with canonical channels_last_3d strides. Strides are set on size-1
    dimensions too: a view leaves them arbitrary, and oneDNN reads the layout from them."""
    shape = (x.shape[0], out.shape[1], *x.shape[2:])
    if concat:
        n, c, d, h, w = shape
        return out.as_strided(shape, (c * d * h * w, 1, h * w * c, w * c, c))
    if copied:
        res = torch.empty_like(x)
        res.copy_(out.view(shape))
        return res
    return out.as_strided(shape, x.stride())


def _run_flat(op: str, backend: str, x, g, rest: tuple, return_alpha: bool, concat: bool):
    """Run the gate on 4-D views of 5-D inputs, outputs reshaped back (4-D: as is)."""
    x4, copied = as_image(x)
    g4, _ = as_image(g)
    out, alpha = _first_that_runs(op, backend, x4, (x4, g4, *rest, return_alpha, concat))
    if x.dim() == 4:
        return out, alpha
    if return_alpha:
        alpha = alpha.view(x.shape[0], 1, *x.shape[2:])
    return _as_volume(out, x, copied, concat), alpha


def attention_gate_impl(x: torch.Tensor, g: torch.Tensor, w_x: torch.Tensor, w_g: torch.Tensor,
                        bias: torch.Tensor, w_psi: torch.Tensor, b_psi: torch.Tensor,
                        return_alpha: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``raunet_fast::attention_gate`` op's implementation (4-D or 5-D x, g)."""
    return _run_flat("attention_gate", backend, x, g, (w_x, w_g, bias, w_psi, b_psi),
                     return_alpha, False)


def attention_gate_concat_impl(x: torch.Tensor, g: torch.Tensor, w_x: torch.Tensor,
                               w_g: torch.Tensor, bias: torch.Tensor, w_psi: torch.Tensor,
                               b_psi: torch.Tensor, backend: str) -> torch.Tensor:
    """The ``raunet_fast::attention_gate_concat`` op's implementation (4-D or 5-D x, g)."""
    return _run_flat("attention_gate_concat", backend, x, g, (w_x, w_g, bias, w_psi, b_psi),
                     False, True)[0]
