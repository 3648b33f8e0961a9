"""conv3d_fused on a CUDA device: cuDNN's fused conv + bias + add + ReLU ("cuda") and the
plain path against fp64 references (``pytest -m gpu``; skipped without a GPU)."""
from __future__ import annotations

import pytest
import torch
from helpers.conv3d_cases import CL3, make_case, reference
from helpers.numerics import assert_parity, requires_cuda

from raunet_fast.ops import conv3d_fused

pytestmark = pytest.mark.gpu


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["cuda", "torch", "auto"])
@pytest.mark.parametrize("k,residual,relu", [(3, True, True), (3, False, True),
                                              (3, True, False), (1, False, False)])
def test_gpu_conv3d_fused_matches_fp64(no_tf32, backend, dtype, k, residual, relu):
    x, w, b, r = make_case(2, 12, 24, 5, 6, 7, k, residual, dtype, "cuda")
    y = conv3d_fused(x, w, b, r, relu=relu, backend=backend)
    want, mag = reference(x, w, b, r, relu)
    assert y.shape == want.shape and y.dtype == dtype and y.is_contiguous(memory_format=CL3)
    assert_parity(y, want, dtype, k=12 * k ** 3, scale=mag, roundings=3,
                  what=f"{backend} {dtype} k={k} residual={residual} relu={relu}")


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", ["cuda", "auto"])
def test_gpu_conv3d_fused_projection_shortcut(no_tf32, backend, dtype):
    x, w, b, _ = make_case(2, 12, 24, 5, 6, 7, dtype=dtype, device="cuda")
    s = torch.randn(2, 7, 5, 6, 7, device="cuda").to(dtype)
    sw = (torch.randn(24, 7, device="cuda") / 7 ** 0.5).to(dtype)
    y = conv3d_fused(x, w, b, shortcut_input=s, shortcut_weight=sw, backend=backend)
    proj = torch.einsum("ncdhw,oc->nodhw", s.double(), sw.double())
    want, mag = reference(x, w, b, proj)
    assert_parity(y, want, dtype, k=12 * 27 + 7, scale=mag, roundings=4,
                  what=f"{backend} {dtype}")
