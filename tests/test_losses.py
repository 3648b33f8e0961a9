"""Dice + Focal loss: against hand-written float64 references, deep supervision, autocast."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raunet_fast.losses import DiceFocalLoss


def ref_sigmoid(logits, target, alpha, gamma, smooth, ld, lf):
    x, t = logits.double(), target.double()
    p = 1 / (1 + torch.exp(-x))
    dims = (0, 2, 3)
    dice = 1 - ((2 * (p * t).sum(dims) + smooth) / (p.sum(dims) + t.sum(dims) + smooth)).mean()
    p_t = p * t + (1 - p) * (1 - t)
    a_t = alpha * t + (1 - alpha) * (1 - t)
    focal = (-a_t * (1 - p_t) ** gamma * torch.log(p_t)).mean()
    return ld * dice + lf * focal


def ref_softmax(logits, target, gamma, smooth, ld, lf):
    x = logits.double()
    p = torch.softmax(x, 1)
    onehot = F.one_hot(target, x.shape[1]).permute(0, 3, 1, 2).double()
    dims = (0, 2, 3)
    pd, od = p[:, 1:], onehot[:, 1:]
    dice = 1 - ((2 * (pd * od).sum(dims) + smooth) / (pd.sum(dims) + od.sum(dims) + smooth)).mean()
    p_t = (p * onehot).sum(1)
    focal = (-(1 - p_t) ** gamma * torch.log(p_t)).mean()
    return ld * dice + lf * focal


@pytest.mark.parametrize("alpha,gamma,ld,lf", [(0.25, 2.0, 1.0, 1.0), (0.6, 0.0, 0.3, 2.0),
                                                (0.5, 1.5, 0.0, 1.0), (0.25, 2.0, 1.0, 0.0)])
def test_sigmoid_matches_reference(alpha, gamma, ld, lf):
    logits = torch.randn(3, 2, 9, 11) * 3
    target = (torch.rand(3, 2, 9, 11) > 0.7).float()
    loss = DiceFocalLoss("sigmoid", ld, lf, alpha=alpha, gamma=gamma, smooth=1.0)(logits, target)
    ref = ref_sigmoid(logits, target, alpha, gamma, 1.0, ld, lf)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)


def test_softmax_matches_reference_and_cross_entropy():
    logits = torch.randn(2, 4, 7, 6) * 2
    target = torch.randint(0, 4, (2, 7, 6))
    loss = DiceFocalLoss("softmax", 1.0, 1.0, alpha=None, gamma=2.0)(logits, target)
    assert loss.item() == pytest.approx(ref_softmax(logits, target, 2.0, 1.0, 1, 1).item(), rel=1e-5)
    # gamma 0, no alpha, no Dice: plain cross-entropy; N x 1 x H x W targets accepted
    ce = DiceFocalLoss("softmax", 0.0, 1.0, alpha=None, gamma=0.0)(logits, target[:, None])
    assert ce.item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    # per-class alpha weights each pixel by its class weight
    w = [0.1, 1.0, 2.0, 0.5]
    got = DiceFocalLoss("softmax", 0.0, 1.0, alpha=w, gamma=0.0)(logits, target)
    ref = (F.cross_entropy(logits, target, reduction="none") * torch.tensor(w)[target]).mean()
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)


def test_perfect_prediction_is_near_zero_and_gradients_flow():
    target = (torch.rand(2, 1, 16, 16) > 0.5).float()
    good = (target * 2 - 1) * 20
    assert DiceFocalLoss()(good, target).item() < 1e-4
    logits = torch.zeros(2, 1, 16, 16, requires_grad=True)
    DiceFocalLoss()(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # pushing logits toward the target lowers the loss
    step = logits.detach() - 10 * logits.grad
    assert DiceFocalLoss()(step, target) < DiceFocalLoss()(logits.detach(), target)


def test_fp32_under_autocast():
    logits = (torch.randn(2, 3, 8, 8) * 4).bfloat16()
    target = (torch.rand(2, 3, 8, 8) > 0.5).float()
    fn = DiceFocalLoss()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fn(logits, target)
    assert loss.dtype == torch.float32
    ref = ref_sigmoid(logits.float(), target, 0.25, 2.0, 1.0, 1, 1)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_deep_supervision_downsamples_targets():
    target = (torch.rand(2, 3, 13, 10) > 0.5).float()
    outs = (torch.randn(2, 3, 13, 10), torch.randn(2, 3, 7, 5), torch.randn(2, 3, 4, 3))
    fn = DiceFocalLoss()
    got = fn(outs, target)
    w = [1.0, 0.5, 0.25]
    def nearest(t, h, w):  # by hand: output pixel i takes input floor(i * H_in / H_out)
        rows = torch.arange(h) * t.shape[-2] // h
        cols = torch.arange(w) * t.shape[-1] // w
        return t[..., rows[:, None], cols[None, :]]

    parts = [fn(o, nearest(target, *o.shape[2:])) for o in outs]
    assert got.item() == pytest.approx((sum(a * b for a, b in zip(w, parts)) / sum(w)).item(), rel=1e-6)
    # integer class targets are downsampled as labels
    cls = torch.randint(0, 3, (2, 13, 10))
    sm = DiceFocalLoss("softmax")
    assert torch.isfinite(sm(outs, cls))
    # works on the model's real deep-supervision output
    from raunet_fast import RAUNet

    model = RAUNet(3, 3, base_channels=4, depth=4, deep_supervision=True).train()
    out = model(torch.randn(2, 3, 21, 18))
    assert isinstance(out, tuple) and len(out) == 3
    loss = fn(out, (torch.rand(2, 3, 21, 18) > 0.5).float())
    loss.backward()
    assert torch.isfinite(loss)


def test_bad_targets():
    fn = DiceFocalLoss()
    with pytest.raises(ValueError, match="shape"):
        fn(torch.randn(2, 1, 8, 8), torch.zeros(2, 1, 8, 9))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        DiceFocalLoss("softmax")(torch.randn(1, 3, 4, 4), torch.full((1, 4, 4), 3))
    with pytest.raises(ValueError, match="mode"):
        DiceFocalLoss("tanh")


def ref_focal(logits, target, mode, alpha, gamma):
    """Focal loss pixel by pixel in float64: -alpha_t (1 - p_t)^gamma log p_t, averaged."""
    x = logits.double()
    if mode == "sigmoid":
        p = 1 / (1 + torch.exp(-x))
        t = target.double()
        p_t = torch.where(t > 0.5, p, 1 - p)
        a_t = torch.ones_like(p) if alpha is None else torch.where(t > 0.5, alpha, 1 - alpha)
    else:
        e = torch.exp(x - x.max(1, keepdim=True).values)
        p = e / e.sum(1, keepdim=True)
        p_t = p.gather(1, target[:, None])[:, 0]
        if alpha is None:
            a_t = torch.ones_like(p_t)
        elif isinstance(alpha, float):
            a_t = torch.full_like(p_t, alpha)
        else:
            a_t = torch.tensor(alpha, dtype=torch.float64)[target]
    return (-a_t * (1 - p_t) ** gamma * torch.log(p_t)).mean()


def test_focal_by_hand():
    # two classes, logits (0, ln 3): p = (1/4, 3/4); the pixel's class is 1, so p_t = 3/4
    logits = torch.tensor([0.0, float(torch.log(torch.tensor(3.0)))]).view(1, 2, 1, 1)
    target = torch.ones(1, 1, 1, dtype=torch.long)
    by_hand = -0.25 * (1 - 0.75) ** 2 * torch.log(torch.tensor(0.75, dtype=torch.float64))
    for alpha in (0.25, [0.9, 0.25]):  # a number for all classes; one weight per class
        fn = DiceFocalLoss("softmax", 0.0, 1.0, alpha=alpha, gamma=2.0)
        assert fn(logits, target).item() == pytest.approx(by_hand.item(), rel=1e-6), alpha
    # sigmoid: logit ln 3 gives p = 3/4; a positive pixel is weighted alpha, a negative 1 - alpha
    x = torch.full((1, 1, 1, 1), float(torch.log(torch.tensor(3.0))))
    fn = DiceFocalLoss("sigmoid", 0.0, 1.0, alpha=0.25, gamma=2.0)
    assert fn(x, torch.ones_like(x)).item() == pytest.approx(by_hand.item(), rel=1e-6)
    neg = -0.75 * 0.75 ** 2 * torch.log(torch.tensor(0.25, dtype=torch.float64))
    assert fn(x, torch.zeros_like(x)).item() == pytest.approx(neg.item(), rel=1e-6)


@pytest.mark.parametrize("mode, alpha, gamma", [
    ("softmax", 0.25, 2.0), ("softmax", 3.0, 1.5), ("softmax", [0.1, 1.0, 2.0, 0.5], 2.0),
    ("softmax", None, 2.0), ("sigmoid", 0.25, 2.0), ("sigmoid", 0.8, 0.5),
    ("sigmoid", None, 2.0)])
def test_focal_alpha_matches_reference(mode, alpha, gamma):
    logits = torch.randn(2, 4, 7, 6) * 3
    if mode == "softmax":
        target = torch.randint(0, 4, (2, 7, 6))
    else:
        target = (torch.rand(2, 4, 7, 6) > 0.6).float()
    got = DiceFocalLoss(mode, 0.0, 1.0, alpha=alpha, gamma=gamma)(logits, target)
    ref = ref_focal(logits, target, mode, alpha, gamma)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-7)


def test_batch_dice_by_hand():
    # logits 0: every probability 1/2; sample A is all foreground, sample B all background
    logits = torch.zeros(2, 1, 1, 2)
    target = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(2, 1, 1, 2)
    # per sample (smooth 1): A (2*1 + 1) / (1 + 2 + 1) = 3/4, B (0 + 1) / (1 + 0 + 1) = 1/2
    per_sample = DiceFocalLoss("sigmoid", 1.0, 0.0, smooth=1.0, batch_dice=False)
    assert per_sample(logits, target).item() == pytest.approx(1 - (0.75 + 0.5) / 2, rel=1e-6)
    # over the batch: (2*1 + 1) / (2 + 2 + 1) = 3/5
    batch = DiceFocalLoss("sigmoid", 1.0, 0.0, smooth=1.0, batch_dice=True)
    assert batch(logits, target).item() == pytest.approx(1 - 0.6, rel=1e-6)


@pytest.mark.parametrize("mode", ["sigmoid", "softmax"])
def test_per_sample_dice_matches_reference(mode):
    logits = torch.randn(3, 3, 5, 4) * 2
    if mode == "sigmoid":
        target = (torch.rand(3, 3, 5, 4) > 0.5).float()
        p, t = torch.sigmoid(logits.double()), target.double()
    else:
        target = torch.randint(0, 3, (3, 5, 4))
        p = torch.softmax(logits.double(), 1)[:, 1:]
        t = F.one_hot(target, 3).permute(0, 3, 1, 2).double()[:, 1:]
    scores = [(2 * (p[n, c] * t[n, c]).sum() + 1) / (p[n, c].sum() + t[n, c].sum() + 1)
              for n in range(p.shape[0]) for c in range(p.shape[1])]
    got = DiceFocalLoss(mode, 1.0, 0.0, batch_dice=False)(logits, target)
    assert got.item() == pytest.approx(1 - torch.stack(scores).mean().item(), rel=1e-5)


def _ref_sigmoid_nd(logits, target, alpha=0.25, gamma=2.0, smooth=1.0):
    """The sigmoid Dice + Focal of any number of spatial axes, float64."""
    x, t = logits.double(), target.double()
    p = 1 / (1 + torch.exp(-x))
    dims = (0, *range(2, x.dim()))
    dice = 1 - ((2 * (p * t).sum(dims) + smooth) / (p.sum(dims) + t.sum(dims) + smooth)).mean()
    p_t = p * t + (1 - p) * (1 - t)
    a_t = alpha * t + (1 - alpha) * (1 - t)
    return dice + (-a_t * (1 - p_t) ** gamma * torch.log(p_t)).mean()


def test_deep_supervision_in_3d_by_hand():
    """5-D outputs at full, 1/2 and 1/4 size: each level scores the target's first voxel
    of every 2 x 2 x 2 (4 x 4 x 4) block, weighted 1, 1/2, 1/4 over their sum."""
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(2, 3, 8, 12, 16, generator=g) > 0.6).float()
    outs = [torch.randn(2, 3, 8 // s, 12 // s, 16 // s, generator=g) for s in (1, 2, 4)]
    want = sum(w * _ref_sigmoid_nd(o, target[..., ::s, ::s, ::s])
               for w, o, s in zip((1.0, 0.5, 0.25), outs, (1, 2, 4))) / 1.75
    got = DiceFocalLoss("sigmoid")(tuple(outs), target)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    # class-index targets N x D x H x W take the same voxels
    classes = torch.randint(0, 3, (2, 8, 12, 16), generator=g)
    loss = DiceFocalLoss("softmax", alpha=None)
    levels = [loss.single(o, classes[:, ::s, ::s, ::s]) for o, s in zip(outs, (1, 2, 4))]
    want = (levels[0] + 0.5 * levels[1] + 0.25 * levels[2]) / 1.75
    torch.testing.assert_close(loss(tuple(outs), classes), want)
