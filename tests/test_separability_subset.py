"""Separable-subset fraction: exact threshold search, MILP against brute force, bounds, invariances."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sepmeasure.separability import hull_distance, separable_subset_fraction, subset_fraction


def brute_kept(sa: np.ndarray, sb: np.ndarray) -> int:
    """Best of both orientations over every threshold between (or beyond) the sorted scores."""
    values = np.unique(np.concatenate([sa, sb]))
    cuts = [values[0] - 1.0, values[-1] + 1.0] + [(x + y) / 2 for x, y in zip(values[:-1], values[1:])]
    best = 0
    for c in cuts:
        best = max(best, int((sa > c).sum() + (sb < c).sum()), int((sa < c).sum() + (sb > c).sum()))
    return best


def brute_ssf_2d(A: np.ndarray, B: np.ndarray) -> float:
    """The order of the projections changes only at directions perpendicular to some x_i - x_j;
    one direction inside every sector between consecutive critical angles finds the maximum."""
    X = np.concatenate([A, B])
    diffs = [X[i] - X[j] for i in range(len(X)) for j in range(len(X)) if i < j and np.any(X[i] != X[j])]
    crit = sorted({(math.atan2(d[1], d[0]) + s * math.pi / 2) % (2 * math.pi) for d in diffs for s in (1, -1)})
    best = max(len(A), len(B))
    for k, lo in enumerate(crit or [0.0]):
        hi = crit[(k + 1) % len(crit)] + (2 * math.pi if k + 1 == len(crit) else 0.0) if crit else 2 * math.pi
        theta = (lo + hi) / 2
        w = np.array([math.cos(theta), math.sin(theta)])
        best = max(best, brute_kept(A @ w, B @ w))
    return best / (len(A) + len(B))


def random_sets(seed, n, m, d, shift=0.5):
    rng = np.random.default_rng(seed)
    return torch.tensor(rng.normal(size=(n, d))), torch.tensor(rng.normal(size=(m, d)) + shift)


@pytest.mark.parametrize("seed", range(5))
def test_subset_fraction_matches_brute_threshold_search(seed):
    rng = np.random.default_rng(seed)
    A = torch.tensor(rng.integers(-3, 4, size=(9, 2)).astype(float))
    B = torch.tensor(rng.integers(-3, 4, size=(7, 2)).astype(float))
    w = torch.tensor([1.0, 0.5], dtype=torch.float64)
    expected = brute_kept(A.numpy() @ w.numpy(), B.numpy() @ w.numpy()) / 16
    assert subset_fraction(A, B, w) == expected
    assert subset_fraction(A, B, -w) == expected     # both orientations are tried


@pytest.mark.parametrize("seed", range(6))
def test_exact_matches_brute_force_in_2d(seed):
    A, B = random_sets(seed, 4 + seed % 3, 3 + seed % 4, 2, shift=0.6)
    brute = brute_ssf_2d(A.numpy(), B.numpy())
    r = separable_subset_fraction(A, B, method="exact")
    assert r.value == pytest.approx(brute, abs=1e-12)
    assert r.lower <= brute + 1e-12 <= r.upper + 1e-12
    n, m = A.shape[0], B.shape[0]
    if r.normal is None:       # only a rule keeping one whole class has no hyperplane
        assert r.value == max(n, m) / (n + m)
    else:                      # the returned classifier keeps that many points
        kept = int((A.double() @ r.normal > r.offset).sum() + (B.double() @ r.normal < r.offset).sum())
        assert kept / (n + m) == r.value


def test_strict_program_runs_only_while_the_bound_is_open(record_solves):
    import sepmeasure.separability.subset as subset_module

    solves = record_solves(subset_module)
    counts = []
    for seed in range(8):
        A, B = random_sets(seed, 4 + seed % 3, 3 + seed % 4, 2, shift=0.6)
        solves.clear()
        r = separable_subset_fraction(A, B, method="exact")
        assert r.value == pytest.approx(brute_ssf_2d(A.numpy(), B.numpy()), abs=1e-12)
        assert r.status == "optimal" and r.lower == r.upper
        counts.append(len(solves))
    assert set(counts) <= {0, 1, 2} and 1 in counts, counts


@pytest.mark.parametrize("seed,d", [(0, 2), (1, 3), (2, 4)])
def test_approx_bounds_contain_exact(seed, d):
    A, B = random_sets(seed, 8, 7, d, shift=0.4)
    exact = separable_subset_fraction(A, B, method="exact")
    approx = separable_subset_fraction(A, B, method="approx")
    assert approx.lower <= exact.value + 1e-12 <= approx.upper + 1e-12
    assert max(8, 7) / 15 <= approx.value


def test_one_iff_separable_and_overlap_bound():
    A, B = random_sets(0, 50, 40, 4, shift=4.0)
    r = separable_subset_fraction(A, B)
    assert r.value == 1.0 and r.upper == 1.0
    A, B = random_sets(1, 80, 80, 3, shift=0.3)
    assert hull_distance(A, B).separable is False
    r = separable_subset_fraction(A, B)
    assert r.upper < 1.0 and r.lower <= r.upper
    kept = int((A.double() @ r.normal > r.offset).sum() + (B.double() @ r.normal < r.offset).sum())
    assert kept / 160 == r.value


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 100_000), n=st.integers(1, 5), m=st.integers(1, 5), shift=st.floats(-1, 1),
       t=st.lists(st.floats(-10, 10), min_size=2, max_size=2), angle=st.floats(0, 6.283), stretch=st.floats(0.2, 5))
def test_exact_invariant_under_affine_maps(seed, n, m, shift, t, angle, stretch):
    A, B = random_sets(seed, n, m, 2, shift=shift)
    c, s = math.cos(angle), math.sin(angle)
    L = torch.tensor([[c * stretch, -s], [s * stretch, c]], dtype=torch.float64)
    tv = torch.tensor(t, dtype=torch.float64)
    base = separable_subset_fraction(A, B, method="exact").value
    assert separable_subset_fraction(A @ L.T + tv, B @ L.T + tv, method="exact").value == pytest.approx(base, abs=1e-12)
    assert separable_subset_fraction(B, A, method="exact").value == pytest.approx(base, abs=1e-12)


def test_bad_inputs():
    A, B = torch.zeros(3, 2), torch.ones(2, 2)
    with pytest.raises(ValueError, match="w: expected a direction with 2 entries"):
        subset_fraction(A, B, torch.ones(5))
    with pytest.raises(ValueError, match="B: expected 2 features"):
        separable_subset_fraction(A, torch.ones(2, 4))
    with pytest.raises(ValueError, match="A: expected finite values"):
        separable_subset_fraction(torch.tensor([[math.inf, 0.0]]), B)
    with pytest.raises(ValueError, match="method: expected one of"):
        separable_subset_fraction(A, B, method="greedy")


def test_on_device(device):
    A, B = random_sets(4, 40, 30, 3, shift=0.5)
    r = separable_subset_fraction(A.to(device), B.to(device))
    cpu = separable_subset_fraction(A, B)
    assert r.normal is None or r.normal.device.type == device.type
    assert r.lower <= cpu.upper + 1e-12 and cpu.lower <= r.upper + 1e-12
    w = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    assert subset_fraction(A.to(device), B.to(device), w.to(device)) == subset_fraction(A, B, w)
