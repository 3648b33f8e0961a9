"""Suite-wide set-up and fixtures. Importable helpers live in ``tests/helpers/``
(``from helpers.numerics import assert_parity``); ``pyproject.toml`` puts ``tests/`` on
``sys.path``, so pytest runs from the repository root or from ``tests/``.
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
