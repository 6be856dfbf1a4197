"""Scale safety of the scale-invariant separability measures (hull distance, separable subsets).

The hull distance scales with the data and is invariant to a common shift; its separability
flag, the separable-subset fraction and its bounds are invariant to both. Each measure is run at
unit scale and on the same sets multiplied by ``s`` in 1e-200..1e200 (and shifted by ``s * t``):
the distances must be ``s`` times the unit-scale ones and the flags and fractions equal.

Tolerances. Multiplying by ``s`` rounds every coordinate (relative 1e-16), so the problems are
not bit-identical; both answers are certified to the relative gap ``tol = 1e-6``, so the
distances must agree to ``2e-6`` relative (or, where the hulls meet, both be below
``zero_tol * scale``). Certificates are checked across scales: each lower bound is at most the
other's attained upper bound (up to float64 rounding).
"""
from __future__ import annotations

import math

import pytest
import torch

from sepmeasure.separability import (hull_distance, pairwise_hull_distances, separable_subset_fraction,
                                     subset_fraction)

SCALES = [1e-200, 1e-155, 1e-100, 1e-30, 1e30, 1e100, 1e155, 1e200]
SHIFTS = [0.0, 7.0]          # offset of both sets, in units of the spread (times the scale)
REL = 2e-6                   # two certified answers at tol = 1e-6
ROUND = 1e-12


def sets(seed: int, shift: float, n: int = 30, m: int = 25, d: int = 5):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, generator=g, dtype=torch.float64)
    B = torch.randn(m, d, generator=g, dtype=torch.float64)
    A[:, 0] += shift
    B[:, 0] -= shift
    return A, B


def moved(X: torch.Tensor, s: float, t: float) -> torch.Tensor:
    offset = torch.linspace(-1.0, 1.0, X.shape[1], dtype=torch.float64) * t
    return (X + offset) * s


def check_hull_scaled(res, base, s):
    assert res.separable == base.separable
    if base.separable:
        assert abs(res.distance / s - base.distance) <= REL * base.distance
        # cross-scale certificates: lower bounds never above the other's attained value
        assert res.lower / s <= base.upper * (1 + ROUND)
        assert base.lower <= res.upper / s * (1 + ROUND)
        assert math.isfinite(res.offset)
    else:
        assert res.distance <= res.zero_tol * res.scale
    assert res.scale / s == pytest.approx(base.scale, rel=1e-9)
    assert float(res.weights_a.sum()) == pytest.approx(1.0) and float(res.weights_b.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("t", SHIFTS)
@pytest.mark.parametrize("s", SCALES)
@pytest.mark.parametrize("shift", [3.0, 0.3])   # separable, overlapping
def test_hull_distance_at_every_magnitude(s, t, shift):
    A, B = sets(1, shift)
    base = hull_distance(moved(A, 1.0, t), moved(B, 1.0, t))
    assert base.separable is (shift == 3.0)
    As, Bs = moved(A, s, t), moved(B, s, t)
    res = hull_distance(As, Bs)
    check_hull_scaled(res, base, s)
    if res.separable:
        # the normal and offset certify the margin on the inputs as given
        margin = float((As @ res.normal).min() - (Bs @ res.normal).max())
        assert margin >= res.lower * (1 - 1e-9) > 0
        assert float((As @ res.normal).min()) > res.offset > float((Bs @ res.normal).max())
    # the weights realise the distance on the inputs as given
    u, v = (As / s).T @ res.weights_a, (Bs / s).T @ res.weights_b
    assert float((u - v).norm()) == pytest.approx(res.distance / s, rel=1e-9, abs=1e-9 * base.scale)


@pytest.mark.parametrize("s", [1e-200, 1e200])
def test_reference_solver_at_extreme_magnitudes(s):
    A, B = sets(2, 3.0, n=20, m=20, d=4)
    base = hull_distance(A, B, method="reference")
    res = hull_distance(A * s, B * s, method="reference")
    assert res.separable is True and base.separable is True
    assert res.distance / s == pytest.approx(base.distance, rel=1e-6)
    native = hull_distance(A * s, B * s)
    assert native.lower / s <= res.upper / s * (1 + ROUND)


@pytest.mark.parametrize("s", [1e-200, 1e-100, 1e100, 1e200])
def test_pairwise_at_every_magnitude(s):
    g = torch.Generator().manual_seed(3)
    y = torch.arange(4).repeat_interleave(20)
    centres = torch.nn.functional.one_hot(y.clamp_max(2), 6).double()   # classes 2 and 3 overlap
    X = torch.randn(80, 6, generator=g, dtype=torch.float64) + 4.0 * centres
    base = pairwise_hull_distances(X, y, progress=False)
    res = pairwise_hull_distances(X * s, y, progress=False)
    assert {k: r.separable for k, r in base.items()} == {k: r.separable for k, r in res.items()}
    assert any(r.separable for r in base.values()) and any(r.separable is False for r in base.values())
    for k, r in res.items():
        check_hull_scaled(r, base[k], s)


def test_overflowing_distance_is_an_error_that_says_so():
    A = torch.tensor([[1.5e308, 0.0]], dtype=torch.float64)
    B = torch.tensor([[-1.5e308, 0.0]], dtype=torch.float64)
    with pytest.raises(OverflowError, match="overflows float64"):
        hull_distance(A, B)
    with pytest.raises(OverflowError, match="overflows float64"):
        pairwise_hull_distances(torch.cat([A, B]), torch.tensor([0, 1]), progress=False)
    # the same sets at half the magnitude are fine
    assert hull_distance(A / 4, B / 4).distance == pytest.approx(7.5e307, rel=1e-12)


@pytest.mark.parametrize("t", SHIFTS)
@pytest.mark.parametrize("s", SCALES)
@pytest.mark.parametrize("method", ["approx", "exact"])
def test_separable_subset_fraction_at_every_magnitude(s, t, method):
    n, m = (30, 25) if method == "approx" else (8, 7)
    A, B = sets(4, 0.6, n=n, m=m, d=3)
    base = separable_subset_fraction(moved(A, 1.0, t), moved(B, 1.0, t), method=method)
    As, Bs = moved(A, s, t), moved(B, s, t)
    res = separable_subset_fraction(As, Bs, method=method)
    assert (res.value, res.lower, res.upper, res.status) == (base.value, base.lower, base.upper, base.status)
    assert res.normal is not None
    # the classifier returned keeps that many points of the inputs as given
    kept = int((As @ res.normal > res.offset).sum() + (Bs @ res.normal < res.offset).sum())
    assert kept == round(res.value * (n + m))
    assert subset_fraction(As, Bs, res.normal) == res.value


@pytest.mark.parametrize("s", SCALES)
def test_subset_fraction_of_a_direction_at_every_magnitude(s):
    A, B = sets(5, 0.5, n=40, m=30, d=4)
    w = torch.tensor([1.0, -0.5, 0.25, 2.0], dtype=torch.float64)
    base = subset_fraction(A, B, w)
    assert subset_fraction(A * s, B * s, w) == base
    assert subset_fraction(A * s, B * s, w * s) == base      # products 1e-400 / 1e400 without the rescaling
    assert subset_fraction(A, B, w * s) == base


@pytest.mark.parametrize("seed", range(4))
def test_native_solver_is_exactly_equivariant_under_powers_of_two(seed):
    """The native solver's arithmetic only uses tolerances relative to the data, so the same pool
    times 2**k gives the same weights and rounds and 2**k times the distances and bounds, to the
    bit. ``solve_pairs`` relies on this to solve a pool whose largest coordinate is in [1/2, 1)
    as it is (no copy) instead of doubling it first."""
    from sepmeasure.separability.hull import solve_native

    g = torch.Generator().manual_seed(seed)
    k, n, d = [(5, 30, 16), (4, 80, 32), (6, 40, 64), (3, 25, 100)][seed]
    y = torch.arange(k).repeat_interleave(n)
    spread = [0.3, 1.0, 2.5, 0.6][seed]       # overlapping and separable pairs
    X = torch.randn(k * n, d, generator=g, dtype=torch.float64)
    X += spread * torch.randn(k, d, generator=g, dtype=torch.float64)[y]
    X *= 0.75 / float(X.abs().max())          # largest coordinate 0.75
    pairs = [(torch.nonzero(y == a).flatten(), torch.nonzero(y == b).flatten())
             for a in range(k) for b in range(a + 1, k)]
    kwargs = dict(tol=1e-6, zero_tol=1e-9, max_iter=1000, add=64, warm=None)
    for solve in (lambda Z: solve_native(Z, pairs, **kwargs), lambda Z: solve_native(Z, pairs[:1], **kwargs)):
        base = solve(X)
        for f in (2.0, 0.5):
            for r, b in zip(solve(X * f), base):
                assert (r.distance, r.lower, r.upper, r.scale) == (b.distance * f, b.lower * f, b.upper * f, b.scale * f)
                assert torch.equal(r.weights_a, b.weights_a) and torch.equal(r.weights_b, b.weights_b)
                assert r.iterations == b.iterations and r.status == b.status and r.separable == b.separable


def test_a_pool_below_unit_scale_is_solved_without_a_copy(monkeypatch):
    """With the largest coordinate in [1/2, 1) the native solver gets the pool itself (here two
    consecutive row blocks of one buffer); the result equals the one of the doubled pool halved,
    to the bit."""
    from sepmeasure.separability import hull

    A, B = sets(5, 0.3)
    X = torch.cat([A, B])
    X -= X.mean(0)
    X *= 0.75 / float(X.abs().max())
    A, B = X[:30], X[30:]
    seen = []
    solve = hull.solve_native
    monkeypatch.setattr(hull, "solve_native", lambda Z, *a, **k: seen.append(Z.data_ptr()) or solve(Z, *a, **k))
    r, r2 = hull_distance(A, B), hull_distance(2 * A, 2 * B)
    assert seen[0] == X.data_ptr()
    assert (r.distance * 2, r.lower * 2, r.upper * 2) == (r2.distance, r2.lower, r2.upper)
    assert torch.equal(r.weights_a, r2.weights_a)
