"""Numerics helpers for parity tests.

Tolerances: one table per dtype (:data:`TOL`, fp32 results scaled with the reduction
length) and, for fp16 / bf16 kernel outputs, :func:`assert_parity`'s rounding model (the
rms check catches systematic errors that hide under a per-element bound).
:func:`assert_close_report` says how many elements mismatched and where, not just "not close".
"""
from __future__ import annotations

import pytest
import torch

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
                        what: str = "", allowed: torch.Tensor | None = None) -> None:
    """assert_close with a report of how many elements are off, and the worst ones.
    ``allowed``: an elementwise bound on ``|actual - expected|`` used instead of
    ``atol + rtol * |expected|``."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    assert torch.isfinite(a).all(), f"{what}: {(~torch.isfinite(a)).sum().item()} non-finite values"
    err = (a - e).abs()
    bad = err > (allowed if allowed is not None else atol + rtol * e.abs())
    if bad.any():
        n = int(bad.sum())
        worst = torch.topk(err.flatten(), min(5, err.numel()))
        places = [tuple(int(i) for i in torch.unravel_index(torch.tensor(j), a.shape))
                  for j in worst.indices.tolist()]
        details = ", ".join(f"{p}: got {a[p].item():.6g} want {e[p].item():.6g}" for p in places)
        raise AssertionError(f"{what}: {n}/{a.numel()} elements ({100 * n / a.numel():.3g}%) "
                             f"outside rtol={rtol:g} atol={atol:g}; max abs err "
                             f"{err.max().item():.3g}; worst at {details}")


#: Unit roundoff (half an ulp of 1.0) per dtype: rounding a value v to the dtype changes it
#: by at most UNIT * |v|.
UNIT = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11,
        torch.bfloat16: 2.0 ** -8}


def assert_parity(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, *,
                  k: int = 1, scale: torch.Tensor | None = None, roundings: int = 2,
                  what: str = "") -> None:
    """A kernel result against its fp64 reference computed from the same (already rounded)
    inputs, with an error model instead of a blanket tolerance.

    fp32 / fp64: :func:`tolerance` (fp32 accumulation error grows with the reduction
    length ``k``). fp16 / bf16: the kernels accumulate in fp32, so what is left is rounding
    to ``dtype``: at most ``roundings`` roundings (the output, and intermediates such as a
    conv result rounded before the shortcut is added) of values of size
    ``mag = |expected| + scale`` (``scale``: the intermediates' magnitudes, elementwise), not
    a growth with ``k``. Checked two ways:

    * every element: ``|err| <= roundings * u * (mag + rms(mag))`` (the rms term covers
      cancellation, where the intermediates are large and the result small);
    * the whole tensor: ``rms(err) <= 0.75 * sqrt(roundings) * u * rms(mag)``. Rounding
      errors are at most ``u|v|`` each and spread evenly (rms ``u|v|/sqrt(3)``), so this holds
      with margin for correct kernels, while a wrong weight, a dropped channel or bias
      shifts every element and fails it even where it hides below the elementwise bound.
    """
    if dtype in (torch.float32, torch.float64):
        rtol, atol = tolerance(dtype, k)
        assert_close_report(actual, expected, rtol, atol, what)
        return
    u = UNIT[dtype]
    e = expected.detach().to("cpu", torch.float64)
    mag = e.abs() if scale is None else e.abs() + scale.detach().to("cpu", torch.float64).abs()
    rms_mag = mag.pow(2).mean().sqrt().item()
    # fp32 accumulation of k products: negligible next to a 16-bit rounding, kept for honesty
    acc = 4 * k ** 0.5 * UNIT[torch.float32]
    allowed = (roundings * u + acc) * (mag + rms_mag)
    assert_close_report(actual, expected, 0.0, 0.0, what, allowed=allowed)
    err = actual.detach().to("cpu", torch.float64) - e
    rms_err = err.pow(2).mean().sqrt().item()
    bound = (0.75 * roundings ** 0.5 * u + acc) * rms_mag
    assert rms_err <= bound, (f"{what}: rms error {rms_err:.3g} > {bound:.3g} (= rounding "
                              f"model, {roundings} roundings of |values| rms {rms_mag:.3g}): "
                              f"a systematic error, not rounding")


def _positions(mask: torch.Tensor, limit: int = 4) -> list[tuple[int, ...]]:
    return [tuple(int(i) for i in idx) for idx in mask.nonzero()[:limit].tolist()]


def assert_same_nonfinite(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, *,
                          k: int = 1, scale: torch.Tensor | None = None, roundings: int = 2,
                          what: str = "") -> None:
    """NaN, +Inf and -Inf exactly where ``expected`` has them (IEEE semantics: a kernel may
    neither drop a NaN nor make one), and the finite rest as :func:`assert_parity`."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    inf = float("inf")
    for name, test in (("NaN", torch.isnan), ("+Inf", lambda t: t == inf),
                       ("-Inf", lambda t: t == -inf)):
        ma, me = test(a), test(e)
        if not torch.equal(ma, me):
            missing, extra = me & ~ma, ma & ~me
            raise AssertionError(
                f"{what}: {name} expected at {int(me.sum())} positions, got {int(ma.sum())}; "
                f"{int(missing.sum())} missing (e.g. {_positions(missing)}, got "
                f"{[a[p].item() for p in _positions(missing)]}), {int(extra.sum())} extra "
                f"(e.g. {_positions(extra)}, want {[e[p].item() for p in _positions(extra)]})")
    fin = torch.isfinite(e)
    if scale is not None:  # an infinite intermediate (relu(-inf) = 0) would void the bounds
        scale = scale.detach().to("cpu", torch.float64)
        scale = torch.where(torch.isfinite(scale), scale, 0.0)[fin]
    if fin.any():
        assert_parity(a[fin], e[fin], dtype, k=k, roundings=roundings, scale=scale,
                      what=f"{what} (finite values)")


_skip_without_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                        reason="needs a CUDA device (none present on this machine)")


def requires_cuda(test):
    """Skip ``test`` without a CUDA device and mark it ``gpu`` (``pytest -m gpu`` selects it)."""
    return pytest.mark.gpu(_skip_without_cuda(test))


def randomize_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial running statistics and affine parameters in every BatchNorm (2-D or 3-D),
    so that folding them matters; returns the model in eval mode."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()
