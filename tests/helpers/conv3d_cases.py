"""Shared cases of the conv3d_fused tests: inputs and the fp64 reference (ATen's double
convolution, a different route from oneDNN / cuDNN)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

CL3 = torch.channels_last_3d


def make_case(n, cin, cout, d, h, w, k=3, residual=True, dtype=torch.float32, device="cpu"):
    x = torch.randn(n, cin, d, h, w, device=device).to(dtype).contiguous(memory_format=CL3)
    wt = (torch.randn(cout, cin, k, k, k, device=device) / (cin * k ** 3) ** 0.5).to(dtype)
    b = (0.5 * torch.randn(cout, device=device)).to(dtype)
    r = (torch.randn(n, cout, d, h, w, device=device).to(dtype).contiguous(memory_format=CL3)
         if residual else None)
    return x, wt, b, r


def reference(x, wt, b, r, relu=True):
    """fp64 ``relu?(conv3d(x) + b + r)`` and the magnitude of its summands (for the
    16-bit rounding model)."""
    d = torch.float64
    conv = F.conv3d(x.to(d), wt.to(d), padding=wt.shape[-1] // 2)
    mag = F.conv3d(x.to(d).abs(), wt.to(d).abs(), padding=wt.shape[-1] // 2)
    y = conv + b.to(d)[None, :, None, None, None]
    if r is not None:
        y = y + r.to(d)
        mag = mag + r.to(d).abs()
    return (torch.relu(y) if relu else y), mag
