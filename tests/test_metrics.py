"""raunet_fast.metrics against medpy (external reference) on random masks and spacings."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raunet_fast import metrics as M
from raunet_fast.errors import InputTypeError

medpy_binary = pytest.importorskip("medpy.metric.binary")


def _blobs(rng: np.random.Generator, shape, n: int = 3) -> np.ndarray:
    """Random union of ellipsoids plus speckle: several components, holes, edge contact."""
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    mask = np.zeros(shape, dtype=bool)
    for _ in range(n):
        c = [rng.uniform(0, s) for s in shape]
        r = [rng.uniform(1.5, max(2.0, s / 3)) for s in shape]
        mask |= sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grids, c, r)) < 1
    mask ^= rng.random(shape) < 0.02
    if not mask.any():
        mask[tuple(s // 2 for s in shape)] = True
    return mask


def _rng(*salt: int) -> np.random.Generator:
    """A numpy generator seeded from torch's RNG, which conftest seeds freshly for every test
    (RAUNET_TEST_SEED=N replays a failing run): fresh inputs on every run, reproducible.
    ``salt`` keeps parametrized trials apart when a replay gives every test the same seed."""
    return np.random.default_rng([torch.randint(0, 2**31, ()).item(), *salt])


CASES = [((40, 37), None), ((40, 37), (0.5, 2.0)), ((23, 31, 17), None),
         ((23, 31, 17), (1.0, 1.0, 2.5)), ((12, 40, 9), (0.7, 1.3, 3.1)), ((64,), (0.25,))]


@pytest.mark.parametrize("shape,spacing", CASES)
@pytest.mark.parametrize("trial", range(4))
def test_against_medpy(shape, spacing, trial):
    rng = _rng(trial, len(shape))
    pred, truth = _blobs(rng, shape), _blobs(rng, shape)
    assert M.dice(pred, truth) == pytest.approx(medpy_binary.dc(pred, truth), abs=1e-12)
    assert M.jaccard(pred, truth) == pytest.approx(medpy_binary.jc(pred, truth), abs=1e-12)
    ref_hd = medpy_binary.hd(pred, truth, voxelspacing=spacing)
    ref_hd95 = medpy_binary.hd95(pred, truth, voxelspacing=spacing)
    assert M.hausdorff(pred, truth, spacing) == pytest.approx(ref_hd, rel=1e-9, abs=1e-9)
    assert M.hd95(pred, truth, spacing) == pytest.approx(ref_hd95, rel=1e-9, abs=1e-9)
    both = M.all_metrics(pred, truth, spacing)
    assert both["hd"] == pytest.approx(ref_hd) and both["hd95"] == pytest.approx(ref_hd95)
    # the two exact distance paths agree with each other and with medpy
    for method in ("edt", "kdtree"):
        a, b = M.surface_distances(pred, truth, spacing, _method=method)
        assert max(a.max(), b.max()) == pytest.approx(ref_hd)
        assert np.percentile(np.concatenate([a, b]), 95) == pytest.approx(ref_hd95)


def test_hd95_pools_both_directions_like_medpy():
    # one direction is all zeros, the other has a far outlier: pooling matters
    truth = np.zeros((50, 50), dtype=bool)
    truth[10:30, 10:30] = True
    pred = truth.copy()
    pred[45:47, 45:47] = True
    ref = medpy_binary.hd95(pred, truth)
    assert M.hd95(pred, truth) == pytest.approx(ref)
    assert M.hd95(pred, truth) != pytest.approx(
        max(np.percentile(d, 95) for d in M.surface_distances(pred, truth)))


def test_torch_inputs_and_dtypes():
    rng = _rng()
    p, t = _blobs(rng, (20, 21, 7)), _blobs(rng, (20, 21, 7))
    ref = M.all_metrics(p, t, (1, 2, 3))
    for conv in (torch.from_numpy, lambda a: torch.from_numpy(a).float(),
                 lambda a: torch.from_numpy(a.astype(np.uint8))):
        got = M.all_metrics(conv(p), conv(t), (1, 2, 3))
        assert got == pytest.approx(ref)
    assert M.dice(p.astype(np.int64) * 7, t) == pytest.approx(ref["dice"])


def test_empty_rules():
    z = np.zeros((8, 9, 5), dtype=bool)
    one = z.copy()
    one[2, 3, 1] = True
    assert M.dice(z, z) == 1.0 and M.jaccard(z, z) == 1.0
    assert M.hd95(z, z) == 0.0 and M.hausdorff(z, z) == 0.0
    assert M.dice(one, z) == 0.0 and M.jaccard(z, one) == 0.0
    assert math.isinf(M.hd95(one, z))
    assert M.hd95(one, z, empty_distance=M.BRATS_EMPTY_DISTANCE) == 373.13
    assert M.all_metrics(z, one, empty_distance=5.0) == {"dice": 0.0, "jaccard": 0.0,
                                                         "hd": 5.0, "hd95": 5.0}
    # the BraTS constant is the diagonal of the 240 x 240 x 155 mm volume
    assert M.diagonal((240, 240, 155), 1.0) == pytest.approx(373.13, abs=5e-3)
    with pytest.raises(ValueError, match="non-empty"):
        M.surface_distances(one, z)


def test_thresholded_jaccard():
    t = np.zeros((10, 10), dtype=bool)
    t[:, :5] = True
    p = t.copy()
    p[:, 5:7] = True                # J = 50/70 = 0.714 -> kept
    assert M.thresholded_jaccard(p, t) == pytest.approx(50 / 70)
    p[:, 7:9] = True                # J = 50/90 = 0.556 -> 0
    assert M.thresholded_jaccard(p, t) == 0.0


def test_bad_inputs():
    a = np.zeros((4, 4), dtype=bool)
    with pytest.raises(ValueError, match="same shape"):
        M.dice(a, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="spacing"):
        M.hd95(a, a, spacing=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="spacing"):
        M.hd95(a, a, spacing=(1.0, -2.0))
    with pytest.raises(InputTypeError):  # a user error for the CLI, not a bug
        M.dice(np.array([["a"]]), np.array([["b"]]))
