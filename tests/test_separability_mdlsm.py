"""MD-LSM (Zhang et al. 2023): exact pair counts, exact MILP against brute force, bounds, invariances."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sepmeasure.separability import hull_distance, md_lsm, pair_fraction


def brute_pair_count(A: np.ndarray, B: np.ndarray, w: np.ndarray) -> int:
    """Pairs with w.a > w.b, by the double loop."""
    return sum(1 for a in A for b in B if float(w @ a) > float(w @ b))


def brute_mdlsm_2d(A: np.ndarray, B: np.ndarray) -> float:
    """Exact MD-LSM in 2-D: the count is constant on the open sectors between the critical angles
    (directions perpendicular to some a_i - b_j), so evaluating one direction inside every sector
    (the bisector of consecutive critical angles) finds the maximum."""
    diffs = [a - b for a in A for b in B if np.any(a != b)]
    if not diffs:
        return 0.0
    crit = sorted({(math.atan2(d[1], d[0]) + math.pi / 2) % (2 * math.pi) for d in diffs}
                  | {(math.atan2(d[1], d[0]) - math.pi / 2) % (2 * math.pi) for d in diffs})
    best = 0
    for k, lo in enumerate(crit):
        hi = crit[(k + 1) % len(crit)] + (2 * math.pi if k + 1 == len(crit) else 0.0)
        for theta in ((lo + hi) / 2, lo):        # inside the sector, and on the boundary itself
            w = np.array([math.cos(theta), math.sin(theta)])
            best = max(best, brute_pair_count(A, B, w))
    return best / (len(A) * len(B))


def random_sets(seed, n, m, d, shift=0.5, integer=False):
    rng = np.random.default_rng(seed)
    if integer:
        A = rng.integers(-2, 3, size=(n, d)).astype(float)
        B = rng.integers(-2, 3, size=(m, d)).astype(float)
    else:
        A = rng.normal(size=(n, d))
        B = rng.normal(size=(m, d)) + shift
    return torch.tensor(A), torch.tensor(B)


# ----------------------------------------------------------------------------
# pair_fraction: exact sorting count
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("integer", [False, True])
def test_pair_fraction_matches_double_loop_including_ties(seed, integer):
    A, B = random_sets(seed, 7 + seed, 5 + 2 * seed, 3, integer=integer)
    w = torch.tensor([1.0, 0.0, 1.0]) if integer else torch.randn(3, generator=torch.Generator().manual_seed(seed))
    w = w.double()
    n, m = A.shape[0], B.shape[0]
    up = brute_pair_count(A.numpy(), B.numpy(), w.numpy())
    down = brute_pair_count(A.numpy(), B.numpy(), -w.numpy())
    assert pair_fraction(A, B, w) == up / (n * m)
    assert pair_fraction(A, B, -w) == down / (n * m)
    ties = sum(1 for a in A.numpy() for b in B.numpy() if float(w.numpy() @ a) == float(w.numpy() @ b))
    assert up + down + ties == n * m
    if integer:
        assert ties > 0   # the integer grid makes ties, which count for neither side


def test_pair_fraction_counts_only_strict_order():
    A = torch.tensor([[1.0], [3.0]])
    B = torch.tensor([[2.0], [3.0]])
    assert pair_fraction(A, B, torch.tensor([1.0])) == 0.25
    assert pair_fraction(A, B, torch.tensor([-1.0])) == 0.5


# ----------------------------------------------------------------------------
# md_lsm exact against brute force
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(8))
def test_exact_matches_brute_force_in_2d(seed):
    n, m = 3 + seed % 3, 3 + (seed // 3) % 3
    A, B = random_sets(seed, n, m, 2, shift=0.4)
    brute = brute_mdlsm_2d(A.numpy(), B.numpy())
    r = md_lsm(A, B, method="exact")
    assert r.method == "exact"
    assert r.value == pytest.approx(brute, abs=1e-12)
    assert r.lower <= brute + 1e-12 <= r.upper + 2e-12
    assert r.status == "optimal"
    assert pair_fraction(A, B, r.normal) == r.value     # attained by the returned normal


@pytest.mark.parametrize("seed", range(4))
def test_exact_matches_brute_force_with_ties_and_shared_points(seed):
    A, B = random_sets(seed, 4, 4, 2, integer=True)
    B[0] = A[0]                                          # one shared point: a coincident pair
    brute = brute_mdlsm_2d(A.numpy(), B.numpy())
    r = md_lsm(A, B, method="exact")
    assert r.value == pytest.approx(brute, abs=1e-12)
    assert r.lower <= brute + 1e-12 <= r.upper + 1e-12
    assert r.coincident_pairs >= 1


@pytest.mark.parametrize("seed,d", [(0, 2), (1, 3), (2, 3), (3, 4)])
def test_approx_bounds_contain_exact(seed, d):
    A, B = random_sets(seed, 5, 6, d, shift=0.3)
    exact = md_lsm(A, B, method="exact")
    approx = md_lsm(A, B, method="approx")
    assert approx.method == "approx"
    assert approx.lower <= exact.value + 1e-12 <= approx.upper + 1e-12
    assert exact.lower <= exact.value <= exact.upper
    assert approx.value == pair_fraction(A, B, approx.normal)


def test_value_is_one_exactly_iff_separable():
    A, B = random_sets(0, 40, 50, 5, shift=4.0)
    assert hull_distance(A, B).separable is True
    for method in ("approx", "exact"):
        r = md_lsm(A[:6], B[:6], method=method) if method == "exact" else md_lsm(A, B, method=method)
        assert r.value == 1.0 and r.lower == 1.0 and r.upper == 1.0
    A, B = random_sets(1, 60, 60, 3, shift=0.2)
    h = hull_distance(A, B)
    assert h.separable is False
    r = md_lsm(A, B)
    assert 0.5 <= r.value < 1.0
    assert r.upper < 1.0            # the overlap certificate proves some pair is always lost


def test_range_with_shared_points():
    """A = B: every generic direction counts exactly half of the non-coincident pairs."""
    A = torch.tensor([[0.0, 0.0], [1.0, 0.3], [0.2, 2.0], [-1.0, 0.5]])
    k = A.shape[0]
    expected = (1 - 1 / k) / 2          # (1 - t0) / 2 with t0 = k / k^2
    r = md_lsm(A, A.clone(), method="exact")
    assert r.value == pytest.approx(expected, abs=1e-12)
    assert r.upper == pytest.approx(expected, abs=1e-12)
    assert md_lsm(A, A.clone(), method="approx").value == pytest.approx(expected, abs=1e-12)
    one = torch.tensor([[1.0, 2.0]])
    assert md_lsm(one, one.clone()).value == 0.0


def test_large_sets_use_approx_and_stay_above_half():
    A, B = random_sets(3, 300, 250, 10, shift=0.15)
    r = md_lsm(A, B)
    assert r.method == "approx" and r.n_pairs == 300 * 250
    assert 0.5 <= r.lower == r.value <= r.upper <= 1.0
    assert r.value == pair_fraction(A, B, r.normal)


def test_strict_program_runs_only_while_the_bound_is_open(record_solves):
    import sepmeasure.separability.mdlsm as mdlsm_module

    solves = record_solves(mdlsm_module)
    counts = []
    for seed in range(8):
        A, B = random_sets(seed, 4 + seed % 3, 4, 2, shift=0.4)
        solves.clear()
        r = md_lsm(A, B, method="exact")
        assert r.value == pytest.approx(brute_mdlsm_2d(A.numpy(), B.numpy()), abs=1e-12)
        assert r.status == "optimal" and r.lower == r.upper
        counts.append(len(solves))
    # 0: the hull certificates closed the interval; 1: the relaxation proved what the
    # approximate search had found; 2: the strict program was needed
    assert set(counts) <= {0, 1, 2} and 1 in counts, counts


def test_bounds_that_meet_are_optimal_even_after_a_time_limit():
    # the strict program of this instance alone used to run into the 30 s limit
    A, B = random_sets(5, 11, 11, 2, shift=0.3)
    r = md_lsm(A, B, method="exact")
    assert r.value == pytest.approx(brute_mdlsm_2d(A.numpy(), B.numpy()), abs=1e-12)
    assert r.lower == r.upper and r.status == "optimal"


def test_time_limit_is_reported_with_valid_bounds():
    A, B = random_sets(5, 11, 11, 2, shift=0.3)
    r = md_lsm(A, B, method="exact", time_limit=1e-3)
    assert r.status.startswith(("time_limit", "optimal", "gap"))
    assert r.lower <= r.upper
    assert r.value == pair_fraction(A, B, r.normal)


# ----------------------------------------------------------------------------
# Invariances (hypothesis, exact method on small sets)
# ----------------------------------------------------------------------------

small = dict(seed=st.integers(0, 100_000), n=st.integers(1, 4), m=st.integers(1, 4),
             shift=st.floats(-1.0, 1.0))


@settings(max_examples=20, deadline=None)
@given(**small, entries=st.lists(st.floats(-2, 2), min_size=4, max_size=4), t=st.lists(st.floats(-10, 10),
                                                                                      min_size=2, max_size=2))
def test_invariant_under_linear_maps_and_translation(seed, n, m, shift, entries, t):
    L = torch.tensor(entries, dtype=torch.float64).reshape(2, 2)
    # keep the map invertible and well conditioned: raise its small singular values, keeping its
    # rotations and reflections (adding a multiple of the identity can make it singular instead)
    U, s, Vh = torch.linalg.svd(L)
    s = s.clamp_min(max(0.1 * float(s[0]), 1e-2))
    L = U @ torch.diag(s) @ Vh
    A, B = random_sets(seed, n, m, 2, shift=shift)
    tv = torch.tensor(t, dtype=torch.float64)
    base = md_lsm(A, B, method="exact").value
    assert md_lsm(A @ L.T, B @ L.T, method="exact").value == pytest.approx(base, abs=1e-12)
    assert md_lsm(A + tv, B + tv, method="exact").value == pytest.approx(base, abs=1e-12)


@settings(max_examples=15, deadline=None)
@given(**small)
def test_invariant_under_swap_and_duplication(seed, n, m, shift):
    A, B = random_sets(seed, n, m, 2, shift=shift)
    base = md_lsm(A, B, method="exact").value
    assert md_lsm(B, A, method="exact").value == pytest.approx(base, abs=1e-12)
    dup = md_lsm(torch.cat([A, A]), torch.cat([B, B]), method="exact", exact_max_pairs=64)
    assert dup.value == pytest.approx(base, abs=1e-12)


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------

def test_bad_inputs():
    A, B = torch.zeros(3, 2), torch.ones(2, 2)
    with pytest.raises(ValueError, match="w: expected a direction with 2 entries"):
        pair_fraction(A, B, torch.ones(3))
    with pytest.raises(ValueError, match="w: expected a 1-dimensional tensor"):
        pair_fraction(A, B, torch.ones(2, 1))
    with pytest.raises(ValueError, match="B: expected 2 features"):
        md_lsm(A, torch.ones(2, 3))
    with pytest.raises(ValueError, match="A: expected at least 1 row"):
        md_lsm(torch.zeros(0, 2), B)
    with pytest.raises(ValueError, match="A: expected finite values"):
        md_lsm(torch.tensor([[float("nan"), 0.0]]), B)
    with pytest.raises(ValueError, match="B: expected a 2-dimensional tensor"):
        md_lsm(A, torch.ones(2))
    with pytest.raises(ValueError, match="method: expected one of"):
        md_lsm(A, B, method="milp")
    with pytest.raises(TypeError, match="hull: expected a HullDistance"):
        md_lsm(A, B, hull="x")
    with pytest.raises(ValueError, match="time_limit: expected a finite number > 0"):
        md_lsm(A, B, time_limit=-1)


# ----------------------------------------------------------------------------
# Devices
# ----------------------------------------------------------------------------

def test_on_device(device):
    A, B = random_sets(7, 60, 50, 4, shift=0.4)
    w = torch.randn(4, dtype=torch.float64)
    assert pair_fraction(A.to(device), B.to(device), w.to(device)) == pair_fraction(A, B, w)
    r = md_lsm(A.to(device), B.to(device))
    assert r.normal.device.type == device.type
    assert r.value == pair_fraction(A, B, r.normal.cpu())
    small_a, small_b = A[:4].to(device), B[:4].to(device)
    assert md_lsm(small_a, small_b, method="exact").value == md_lsm(A[:4], B[:4], method="exact").value


def test_a_hull_of_other_sets_is_refused():
    A, B = random_sets(0, 5, 4, 3)
    other = hull_distance(*random_sets(1, 6, 4, 3))
    with pytest.raises(ValueError, match=r"hull: expected the hull distance of these sets \(5 and 4 points in 3"):
        md_lsm(A, B, hull=other)
    assert md_lsm(A, B, hull=hull_distance(A, B)).value == md_lsm(A, B).value


@pytest.mark.parametrize("method", ["auto", "approx", "exact"])
def test_md_lsm_does_not_depend_on_magnitude_or_offset(method):
    """MD-LSM is invariant to translation and positive scaling; the solvers work at unit scale,
    so sets of magnitude 1e200 or 1e-200 (which once hung or returned a false 'optimal' 1.0)
    give the value of the unit-scale sets, with the same certificate."""
    g = torch.Generator().manual_seed(7)
    n = 6 if method == "exact" else 25
    A = torch.randn(n, 4, generator=g, dtype=torch.float64)
    B = torch.randn(n, 4, generator=g, dtype=torch.float64) + 0.7
    base = md_lsm(A, B, method=method)
    for scale, offset in ((1e200, 0.0), (1e-200, 0.0), (1.0, 1e6), (3e5, -2e5)):
        r = md_lsm(A * scale + offset * scale, B * scale + offset * scale, method=method)
        got = (r.value, r.lower, r.upper, r.status)
        assert got == (base.value, base.lower, base.upper, base.status), (scale, offset)
        assert pair_fraction(A, B, r.normal) == pytest.approx(r.value, abs=1e-12)  # a direction for the inputs too


def test_sampled_climb_stops_early_and_never_below_the_fitted_classifiers(monkeypatch):
    """With more pairs than max_pairs the climb stops after CLIMB_PATIENCE checkpoints without a
    better count, well before all steps; the value is still at least the strict in-sample AUC of
    scikit-learn's logistic regression, linear SVM and LDA fitted independently here."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    import sepmeasure.separability.mdlsm as mod

    checkpoints = []
    climb = mod._surrogate_climb

    def counting(*args, **kwargs):
        for W in climb(*args, **kwargs):
            checkpoints.append(1)
            yield W

    monkeypatch.setattr(mod, "_surrogate_climb", counting)
    g = torch.Generator().manual_seed(4)
    A = torch.randn(60, 12, generator=g, dtype=torch.float64) + 0.3
    B = torch.randn(70, 12, generator=g, dtype=torch.float64) - 0.3
    r = md_lsm(A, B, method="approx", steps=2000, max_pairs=500)
    assert 1 <= len(checkpoints) < 2000 // 25            # stopped early (all steps: 80 checkpoints)
    X = torch.cat([A, B]).numpy()
    y = np.r_[np.ones(60), np.zeros(70)]
    for model in (LogisticRegression(max_iter=1000), LinearSVC(max_iter=5000), LinearDiscriminantAnalysis()):
        s = model.fit(X, y).decision_function(X)
        strict = float((s[:60, None] > s[None, 60:]).mean())
        assert r.value >= strict - 1e-12, type(model).__name__
    before = len(checkpoints)
    md_lsm(A, B, method="approx", steps=2000, max_pairs=10**6)   # all pairs: the climb runs every step
    assert len(checkpoints) - before == 2000 // 25


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 4), na=st.integers(2, 9), nb=st.integers(2, 9),
       d=st.integers(2, 7), tau=st.floats(0.01, 1.0))
def test_surrogate_gradient_matches_autograd(seed, k, na, nb, d, tau):
    """The written-out gradient of the climb's loss equals autograd's of the same loss (float64
    throughout, the spread held constant), through the span basis and the normalisation."""
    from sepmeasure.separability.mdlsm import surrogate_gradient
    from sepmeasure.separability.pointsets import span_coordinates

    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    A = torch.randn(na, d, generator=g, dtype=f64) @ torch.randn(d, d, generator=g, dtype=f64)
    B = torch.randn(nb, d, generator=g, dtype=f64) + 0.3
    coords = span_coordinates(A, B)
    W = torch.randn(k, coords.rank, generator=g, dtype=f64)
    got = surrogate_gradient(A, B, coords, W, tau, pair_dtype=f64)
    Wv = W.clone().requires_grad_(True)
    M = (Wv / Wv.norm(dim=1, keepdim=True)) @ coords.from_span
    sa, sb = A @ M.T, B @ M.T
    spread = torch.cat([sa, sb]).std(0).detach()
    loss = -torch.sigmoid((sa.T[:, :, None] - sb.T[:, None, :]) / (tau * spread)[:, None, None]).mean((1, 2)).sum()
    loss.backward()
    torch.testing.assert_close(got, Wv.grad, rtol=1e-9, atol=1e-12)
    # in float32 pairs (the climb's setting) the gradient is the same to float32 accuracy
    torch.testing.assert_close(surrogate_gradient(A, B, coords, W, tau), Wv.grad, rtol=2e-4, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 30), m=st.integers(1, 30), d=st.integers(1, 12),
       shared=st.integers(0, 5), discrete=st.booleans())
def test_coincident_pairs_screen_matches_unique(seed, n, m, d, shared, discrete):
    """The column screen of _coincident_pairs counts what torch.unique over all rows counts, on
    continuous points, points on a small integer grid (most values shared) and copied rows,
    including -0.0 against 0.0 (equal coordinates)."""
    from sepmeasure.separability.mdlsm import _coincident_pairs, _coincident_pairs_unique

    rng = np.random.default_rng(seed)
    draw = (lambda *s: rng.integers(-1, 2, size=s).astype(float)) if discrete else (lambda *s: rng.normal(size=s))
    A, B = draw(n, d), draw(m, d)
    for _ in range(shared):
        B[rng.integers(m)] = A[rng.integers(n)]
    A[A == 0] = -0.0 if seed % 2 else 0.0
    A, B = torch.tensor(A), torch.tensor(B)
    expected = sum(int((A[i] == B[j]).all()) for i in range(n) for j in range(m))
    assert _coincident_pairs(A, B) == _coincident_pairs_unique(A, B) == expected
    assert _coincident_pairs(A, B, screen_columns=1) == expected


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lda_direction_is_scikit_learns(seed):
    """The mean difference in whitened span coordinates, mapped to the input, is the direction of
    scikit-learn's LinearDiscriminantAnalysis (SVD and least-squares solvers) on correlated,
    unequal classes spanning all dimensions."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from sepmeasure.separability._search import lda_direction
    from sepmeasure.separability.pointsets import span_coordinates

    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(6, 6))
    A = rng.normal(size=(80, 6)) @ mix + rng.normal(size=6)
    B = rng.normal(size=(50, 6)) @ mix * 1.5
    coords = span_coordinates(torch.tensor(A), torch.tensor(B))
    w = (lda_direction(coords) @ coords.from_span).numpy()
    X, y = np.r_[A, B], np.r_[np.ones(80), np.zeros(50)]
    for solver in ("svd", "lsqr"):
        ref = LinearDiscriminantAnalysis(solver=solver).fit(X, y).coef_.ravel()
        cos = w @ ref / (np.linalg.norm(w) * np.linalg.norm(ref))
        assert cos == pytest.approx(1.0, abs=1e-10), solver
