"""Flip test-time augmentation (raunet_fast.tta.FlipTTA) against the flips written out."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from raunet_fast.tta import FLIPS, FlipTTA


def _asymmetric_model() -> nn.Module:
    """Random 3x3 and 5x5 convs: no flip symmetry, so each flip gives another prediction."""
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(6, 2, 5, padding=2)).double().eval()


def test_mean_over_the_four_flips():
    model = _asymmetric_model()
    x = torch.randn(2, 3, 13, 22, dtype=torch.float64)
    with torch.no_grad():
        plain = model(x)
        expect = (plain
                  + model(x.flip(2)).flip(2)
                  + model(x.flip(3)).flip(3)
                  + model(x.flip(2).flip(3)).flip(3).flip(2)) / 4
        got = FlipTTA(model)(x)
    assert got.dtype == torch.float32 and got.shape == plain.shape
    torch.testing.assert_close(got.double(), expect, rtol=1e-6, atol=1e-6)
    assert (got.double() - plain).abs().max() > 1e-3  # the flips did change the prediction
    with torch.no_grad():
        torch.testing.assert_close(FlipTTA(model, flips=[()])(x).double(), plain,
                                   rtol=1e-6, atol=1e-6)
    assert FLIPS[0] == ()


def test_wraps_the_fused_model():
    import raunet_fast
    from raunet_fast.inference import build_inference_model

    model = raunet_fast.build_model("raunet", in_channels=3, out_channels=1, base_channels=4,
                                    depth=2)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding matters
        model(torch.randn(2, 3, 16, 16) * 3 + 1)
    model.eval()
    fused = build_inference_model(model, dtype=torch.float32)
    x = torch.randn(1, 3, 19, 24)
    with torch.no_grad():
        torch.testing.assert_close(FlipTTA(fused)(x), FlipTTA(model)(x), rtol=1e-4, atol=1e-4)


def test_bad_flips_and_outputs():
    with pytest.raises(ValueError, match="spatial dims"):
        FlipTTA(nn.Identity(), flips=[(1,)])
    with pytest.raises(ValueError, match="at least one"):
        FlipTTA(nn.Identity(), flips=[])
    with pytest.raises(ValueError, match="N x C x H x W"):
        FlipTTA(nn.Identity())(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="input's size"):
        FlipTTA(nn.MaxPool2d(2))(torch.zeros(1, 1, 4, 4))


def test_ensemble_is_the_mean_of_its_members():
    from raunet_fast.tta import Ensemble

    a, b, c = _asymmetric_model(), _asymmetric_model(), _asymmetric_model()
    x = torch.randn(2, 3, 9, 14, dtype=torch.float64)
    with torch.no_grad():
        expect = (a(x) + b(x) + c(x)) / 3
        got = Ensemble([a, b, c])(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expect, rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # one member: that model
        torch.testing.assert_close(Ensemble([a])(x).double(), a(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        Ensemble([])
    with pytest.raises(ValueError, match="output shape"):
        Ensemble([a, nn.Conv2d(3, 1, 1).double()])(x)
