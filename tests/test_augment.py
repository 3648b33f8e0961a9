"""Augmentation keeps image and mask aligned, masks label-valued, and is seeded."""
from __future__ import annotations

import pytest
import torch

from raunet_fast.data import Augment
from helpers.numerics import requires_cuda

STRONG = dict(hflip=0.5, vflip=0.5, rotate=1.0, max_angle=40.0, elastic=1.0,
              elastic_magnitude=0.04, padding_mode="reflection")


def coordinate_pattern(n: int, h: int, w: int, block: int = 6):
    """Image channels hold each pixel's own (y, x); the mask labels blocks of a checkerboard
    with 4 values computed from the same coordinates."""
    y = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    x = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    image = torch.stack([y, x])[None].repeat(n, 1, 1, 1)
    return image, label_of(image)


def label_of(image: torch.Tensor, block: int = 6) -> torch.Tensor:
    y, x = image[:, 0].round(), image[:, 1].round()
    return ((torch.div(y, block, rounding_mode="floor") % 2) * 2
            + torch.div(x, block, rounding_mode="floor") % 2).long()


@pytest.mark.parametrize("hw", [(48, 48), (40, 57)])
def test_known_pattern_stays_aligned(hw):
    image, mask = coordinate_pattern(6, *hw)
    aug = Augment(**STRONG)
    g = torch.Generator().manual_seed(3)
    out_img, out_mask = aug(image, mask, g)
    assert out_mask.dtype == torch.long and out_mask.shape == mask.shape
    assert set(out_mask.unique().tolist()) <= {0, 1, 2, 3}
    # the image says where each output pixel came from; the mask must carry that pixel's label
    expected = label_of(out_img)
    agree = (expected == out_mask).float().mean().item()
    assert agree > 0.98, f"image and mask disagree on {100 * (1 - agree):.1f}% of pixels"
    # the transform really moved things
    assert (out_mask != mask).float().mean() > 0.3
    # and the check has power: a mask transformed with other random numbers does not agree
    _, other = aug(image, mask, torch.Generator().manual_seed(4))
    assert (expected == other).float().mean().item() < 0.6


def test_flips_are_exact():
    image = torch.randn(2, 3, 7, 9)
    mask = (torch.rand(2, 1, 7, 9) > 0.5).float()
    for kw, dims in ((dict(hflip=1.0, vflip=0.0), (-1,)), (dict(hflip=0.0, vflip=1.0), (-2,)),
                     (dict(hflip=1.0, vflip=1.0), (-2, -1))):
        aug = Augment(rotate=0.0, elastic=0.0, **kw)
        out_img, out_mask = aug(image, mask)
        torch.testing.assert_close(out_img, image.flip(dims), atol=1e-5, rtol=0)
        assert torch.equal(out_mask, mask.flip(dims))


def test_rotation_by_90_degrees_is_exact():
    image = torch.randn(2, 2, 8, 8)
    mask = torch.randint(0, 5, (2, 8, 8))
    aug = Augment(hflip=0.0, vflip=0.0, rotate=1.0, elastic=0.0)
    params = aug.sample(2)
    params["angle"][:] = 90.0
    out_img, out_mask = aug.apply(image, mask, params)
    torch.testing.assert_close(out_img, torch.rot90(image, 1, (-2, -1)), atol=1e-5, rtol=0)
    assert torch.equal(out_mask, torch.rot90(mask, 1, (-2, -1)))


def test_identity_when_everything_is_off():
    image = torch.randn(3, 4, 10, 13)
    mask = (torch.rand(3, 3, 10, 13) > 0.5).float()
    out_img, out_mask = Augment(hflip=0, vflip=0, rotate=0, elastic=0)(image, mask)
    torch.testing.assert_close(out_img, image, atol=1e-5, rtol=0)
    assert torch.equal(out_mask, mask)


def test_seeded_and_reproducible():
    image, mask = coordinate_pattern(4, 32, 32)
    aug = Augment(**STRONG)
    a = aug(image, mask, torch.Generator().manual_seed(11))
    b = aug(image, mask, torch.Generator().manual_seed(11))
    c = aug(image, mask, torch.Generator().manual_seed(12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    # samples of one batch get different transforms
    assert not torch.equal(a[1][0], a[1][1])


def test_binary_float_masks_stay_binary_and_multichannel_masks_move_together():
    image = torch.rand(3, 4, 24, 20)
    wt = torch.zeros(3, 24, 20)
    wt[:, 5:18, 4:15] = 1
    tc = torch.zeros_like(wt)
    tc[:, 8:14, 6:12] = 1
    mask = torch.stack([wt, tc], 1)
    _, out = Augment(**{**STRONG, "padding_mode": "zeros"})(image, mask, torch.Generator().manual_seed(0))
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert bool((out[:, 1] <= out[:, 0]).all()), "nested regions must stay nested"


def test_bad_inputs():
    with pytest.raises(ValueError, match="probability"):
        Augment(hflip=1.5)
    with pytest.raises(ValueError, match="padding_mode"):
        Augment(padding_mode="wrap")
    aug = Augment()
    with pytest.raises(ValueError, match="floating"):
        aug(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="does not match"):
        aug(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))


@requires_cuda
def test_same_transform_on_gpu():
    image, mask = coordinate_pattern(3, 32, 40)
    aug = Augment(**STRONG)
    cpu = aug(image, mask, torch.Generator().manual_seed(5))
    gpu = aug(image.cuda(), mask.cuda(), torch.Generator().manual_seed(5))
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], atol=1e-3, rtol=0)
    assert (gpu[1].cpu() == cpu[1]).float().mean() > 0.99
