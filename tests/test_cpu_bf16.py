"""The fused model in bf16 on the CPU (the cpp backend: oneDNN bf16 convolutions, the gate
in bf16 with fp32 accumulation) against an fp64 reference, with the tolerance of a
rounding model: rounding every stored activation and weight to bf16 (unit roundoff
u = 2**-8) is what the eager model run in bf16 does too, so the fused model's error must
be of that size, not larger."""
from __future__ import annotations

import pytest
import torch

from raunet_fast.inference import build_inference_model
from raunet_fast.models import RAUNet, UNet

U_BF16 = 2.0 ** -8


def _trained_like(cls, **kw):
    torch.manual_seed(3)
    model = cls(**{**dict(in_channels=3, out_channels=2, base_channels=6, depth=3), **kw})
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 20, 20) * 2 + 0.5)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("cls", [UNet, RAUNet])
@pytest.mark.parametrize("backend", ["cpp", "auto"])
def test_cpu_bf16_fused_model_error_is_bf16_rounding(cls, backend):
    model = _trained_like(cls, base_channels=10)  # 10, 20, 40 channels: not powers of two
    x = torch.randn(2, 3, 37, 50)
    with torch.no_grad():
        ref = model.double()(x.double())
        eager16 = model.float().bfloat16()(x.bfloat16())
        model.float()
        fast = build_inference_model(model, dtype=torch.bfloat16, backend=backend)
        out = fast(x)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    err, eager_err = _rel(out, ref), _rel(eager16, ref)
    # the same rounding as eager bf16 (measured: 1.02-1.1x its error; slack for another
    # order of the roundings), far below what a wrong kernel gives (order 1)
    assert err <= 1.5 * eager_err + U_BF16, (err, eager_err)
