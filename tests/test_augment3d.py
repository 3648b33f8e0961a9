"""3-D augmentation (Augment on N x C x D x H x W batches) against torch.flip / torch.rot90,
a coordinate pattern that says where each voxel came from, and seeds; the patch margin."""
from __future__ import annotations

import pytest
import torch

from raunet_fast.data import Augment

STRONG = dict(hflip=0.5, vflip=0.5, dflip=0.5, rotate=1.0, max_angle=40.0, max_tilt=15.0,
              elastic=1.0, elastic_magnitude=0.04, padding_mode="zeros")
OFF = dict(hflip=0.0, vflip=0.0, dflip=0.0, rotate=0.0, elastic=0.0)


def coordinate_volume(n: int, d: int, h: int, w: int):
    """Channels hold each voxel's own (z, y, x); the mask is a 3-D checkerboard of 8 labels
    of blocks of 4 computed from the same coordinates."""
    z, y, x = torch.meshgrid(*(torch.arange(s, dtype=torch.float32) for s in (d, h, w)),
                             indexing="ij")
    image = torch.stack([z, y, x])[None].repeat(n, 1, 1, 1, 1)
    return image, label_of(image)


def label_of(image: torch.Tensor, block: int = 4) -> torch.Tensor:
    bits = [torch.div(image[:, c].round(), block, rounding_mode="floor") % 2 for c in range(3)]
    return (bits[0] * 4 + bits[1] * 2 + bits[2]).long()


def test_identity_parameters_give_the_input():
    image = torch.randn(2, 3, 5, 7, 9)
    mask = (torch.rand(2, 2, 5, 7, 9) > 0.5).float()
    out_img, out_mask = Augment(**OFF)(image, mask, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out_img, image, atol=1e-5, rtol=0)
    assert torch.equal(out_mask, mask)


@pytest.mark.parametrize("flags, dims", [
    (dict(hflip=1.0), (-1,)), (dict(vflip=1.0), (-2,)), (dict(dflip=1.0), (-3,)),
    (dict(hflip=1.0, vflip=1.0, dflip=1.0), (-3, -2, -1)),
])
def test_flips_equal_torch_flip(flags, dims):
    image = torch.randn(2, 2, 5, 7, 9)
    mask = torch.randint(0, 2, (2, 5, 7, 9))
    out_img, out_mask = Augment(**{**OFF, **flags})(image, mask)
    torch.testing.assert_close(out_img, image.flip(dims), atol=1e-5, rtol=0)
    assert torch.equal(out_mask, mask.flip(dims))


# 90 degrees about each axis, derived by hand from the rotation matrices in (x, y, z) =
# (W, H, D): rot90(t, 1, (a, b)) gives out[i, j] = t[j, n - 1 - i] over the axes (a, b)
@pytest.mark.parametrize("angle, tilt, dims, shape", [
    (90.0, (0.0, 0.0), (-2, -1), (5, 8, 8)),   # in-plane, about D: as the 2-D rotation
    (0.0, (0.0, 90.0), (-3, -2), (6, 6, 7)),   # about W (x): mixes D and H
    (0.0, (90.0, 0.0), (-1, -3), (6, 5, 6)),   # about H (y): mixes W and D
])
def test_rotations_by_90_degrees_equal_rot90(angle, tilt, dims, shape):
    image = torch.randn(2, 2, *shape)
    mask = torch.randint(0, 5, (2, 1, *shape))
    aug = Augment(**{**OFF, "rotate": 1.0})
    params = aug.sample(2, spatial_dims=3)
    params["angle"][:] = angle
    params["tilt"][:] = torch.tensor(tilt, dtype=torch.float64)
    out_img, out_mask = aug.apply(image, mask, params)
    torch.testing.assert_close(out_img, torch.rot90(image, 1, dims), atol=1e-5, rtol=0)
    assert torch.equal(out_mask, torch.rot90(mask, 1, dims))


def test_image_and_mask_stay_aligned_and_masks_keep_their_labels():
    image, mask = coordinate_volume(3, 12, 14, 13)
    aug = Augment(**{**STRONG, "padding_mode": "border"})
    out_img, out_mask = aug(image, mask, torch.Generator().manual_seed(3))
    assert out_mask.dtype == torch.long and set(out_mask.unique().tolist()) <= set(range(8))
    agree = (label_of(out_img) == out_mask).float().mean().item()
    assert agree > 0.97, f"image and mask disagree on {100 * (1 - agree):.1f}% of voxels"
    assert (out_mask != mask).float().mean() > 0.3  # it really moved things
    _, other = aug(image, mask, torch.Generator().manual_seed(4))
    assert (label_of(out_img) == other).float().mean() < 0.6  # the check has power


def test_seeded_and_binary_masks_stay_binary_and_nested():
    image = torch.randn(3, 2, 10, 12, 11)
    wt = torch.zeros(3, 10, 12, 11)
    wt[:, 2:8, 3:10, 2:9] = 1
    tc = torch.zeros_like(wt)
    tc[:, 4:7, 5:8, 4:7] = 1
    mask = torch.stack([wt, tc], 1)
    aug = Augment(**STRONG)
    a = aug(image, mask, torch.Generator().manual_seed(11))
    b = aug(image, mask, torch.Generator().manual_seed(11))
    c = aug(image, mask, torch.Generator().manual_seed(12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1][0], a[1][1])
    assert set(a[1].unique().tolist()) <= {0.0, 1.0}
    assert bool((a[1][:, 1] <= a[1][:, 0]).all()), "nested regions must stay nested"


def test_2d_draws_are_unchanged_by_the_3d_parameters():
    g2, g3 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    p2, p3 = Augment().sample(4, g2), Augment().sample(4, g3, spatial_dims=3)
    for k in ("hflip", "vflip", "angle", "elastic"):
        assert torch.equal(p2[k], p3[k]), k
    assert "tilt" not in p2 and p3["tilt"].shape == (4, 2) and p3["field"].shape[1] == 3


@pytest.mark.parametrize("elastic", [0.0, 1.0])
def test_margin_keeps_the_patch_on_real_voxels(elastic):
    patch = (6, 10, 9)
    aug = Augment(**{**STRONG, "elastic": elastic, "elastic_magnitude": 0.02})
    m = aug.margin(patch)
    block = tuple(p + 2 * k for p, k in zip(patch, m))
    ones = torch.ones(16, 1, *block)
    out, _ = aug(ones, None, torch.Generator().manual_seed(1))
    centre = out[(..., *(slice(k, k + p) for k, p in zip(m, patch)))]
    # zeros padding: any read from outside the enlarged block would pull values below 1
    inside = (centre > 1 - 1e-4).float().mean().item()
    assert inside == 1.0 if elastic == 0 else inside > 0.999, inside
    # and the margin is not trivially huge: a rotation-free transform needs none
    assert Augment(**OFF).margin(patch) == (0, 0, 0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="probability"):
        Augment(dflip=2.0)
    with pytest.raises(ValueError, match="max_tilt"):
        Augment(max_tilt=60.0)
    aug = Augment()
    with pytest.raises(ValueError, match="does not match"):
        aug(torch.zeros(2, 1, 4, 4, 4), torch.zeros(2, 1, 4, 4, 5))
    with pytest.raises(ValueError, match="spatial_dims=3"):
        aug.apply(torch.zeros(2, 1, 4, 4, 4), None, aug.sample(2))
