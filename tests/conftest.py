"""Shared fixtures and helpers for the test suite.

Tolerances live in one table per dtype (:data:`TOL`); :func:`assert_close_report` says
how many elements mismatched and where, not just "not close".
"""
from __future__ import annotations

import os

import pytest
import torch

# Without a GPU, Triton kernels run in the interpreter on CPU tensors. The variable must be
# set before triton is first imported, so it is set here, before any test module loads.
# On a CUDA machine it is left alone: there the kernels run compiled.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# rtol, atol per dtype for outputs compared with an fp64 reference; kernels whose
# reduction length K is large scale atol by sqrt(K) through `tolerance(dtype, k)`.
TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1e-2),
}


def tolerance(dtype: torch.dtype, k: int = 1) -> tuple[float, float]:
    """(rtol, atol) for a result of reduction length ``k`` computed in ``dtype``."""
    rtol, atol = TOL[dtype]
    scale = max(1.0, k ** 0.5)
    return rtol * scale, atol * scale


def assert_close_report(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float,
                        what: str = "") -> None:
    """assert_close with a report of how many elements are off, and the worst ones."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    assert torch.isfinite(a).all(), f"{what}: {(~torch.isfinite(a)).sum().item()} non-finite values"
    err = (a - e).abs()
    bad = err > atol + rtol * e.abs()
    if bad.any():
        n = int(bad.sum())
        worst = torch.topk(err.flatten(), min(5, err.numel()))
        places = [tuple(int(i) for i in torch.unravel_index(torch.tensor(j), a.shape))
                  for j in worst.indices.tolist()]
        details = ", ".join(f"{p}: got {a[p].item():.6g} want {e[p].item():.6g}" for p in places)
        raise AssertionError(f"{what}: {n}/{a.numel()} elements ({100 * n / a.numel():.3g}%) "
                             f"outside rtol={rtol:g} atol={atol:g}; max abs err "
                             f"{err.max().item():.3g}; worst at {details}")


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                   reason="needs a CUDA device (none present on this machine)")


@pytest.fixture
def no_tf32():
    """Exact fp32 in cuDNN and cuBLAS for the test (TF32 off), restored afterwards."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Fresh random inputs on every run; RAUNET_TEST_SEED=N replays a failing run."""
    seed = int(os.environ.get("RAUNET_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    torch.manual_seed(seed)
    request.node.add_report_section("setup", "seed", f"RAUNET_TEST_SEED={seed}")
    yield
