"""MD-LSM as the best in-sample AUC of a linear score, and the exact sweep in one and two dimensions."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.svm import LinearSVC

from sepmeasure.separability import md_lsm, pair_fraction


def strict_auc(sa: np.ndarray, sb: np.ndarray) -> float:
    """AUC of scores with ties counted for neither side, by the double loop."""
    return float(np.mean(sa[:, None] > sb[None, :]))


def brute_best_auc_2d(A: np.ndarray, B: np.ndarray) -> tuple[float, float]:
    """(max strict AUC, min fraction of mis-ordered pairs incl. ties) over all directions in 2-D:
    both are constant on the open sectors between critical angles, so one direction inside each
    sector and each critical direction itself are enough."""
    diffs = [a - b for a in A for b in B if np.any(a != b)]
    crit = sorted({(math.atan2(d[1], d[0]) + s * math.pi / 2) % (2 * math.pi) for d in diffs for s in (-1, 1)})
    if not crit:
        crit = [0.0]
    best, worst_err = 0.0, 1.0
    for k, lo in enumerate(crit):
        hi = crit[(k + 1) % len(crit)] + (2 * math.pi if k + 1 == len(crit) else 0.0)
        for theta in ((lo + hi) / 2, lo):
            w = np.array([math.cos(theta), math.sin(theta)])
            sa, sb = A @ w, B @ w
            best = max(best, strict_auc(sa, sb))
            worst_err = min(worst_err, float(np.mean(sa[:, None] <= sb[None, :])))
    return best, worst_err


def degenerate_sets(kind: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    n, m = 5 + seed % 4, 4 + seed % 3
    if kind == "random":
        A, B = rng.normal(size=(n, 2)), rng.normal(size=(m, 2)) + 0.4
    elif kind == "integer":            # many exact ties and parallel differences
        A, B = rng.integers(-2, 3, size=(n, 2)).astype(float), rng.integers(-2, 3, size=(m, 2)).astype(float)
    elif kind == "collinear":          # every point on one line: the points span 1 dimension
        t = rng.integers(-4, 5, size=n + m).astype(float)
        P = np.stack([t, 2 * t + 1], 1)
        A, B = P[:n], P[n:]
    elif kind == "duplicated":         # each point twice, and a point of A repeated in B
        A, B = rng.normal(size=(n, 2)), rng.normal(size=(m, 2)) + 0.3
        A, B = np.concatenate([A, A]), np.concatenate([B, B, A[:1]])
    elif kind == "coincident":         # A and B share most of their points
        P = rng.normal(size=(n, 2))
        A, B = P, np.concatenate([P[: n - 1], rng.normal(size=(1, 2))])
    else:
        raise AssertionError(kind)
    return torch.tensor(A), torch.tensor(B)


KINDS = ("random", "integer", "collinear", "duplicated", "coincident")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(4))
def test_sweep_equals_brute_force_over_directions(kind, seed):
    A, B = degenerate_sets(kind, seed)
    best, min_err = brute_best_auc_2d(A.numpy(), B.numpy())
    r = md_lsm(A, B)                                   # "auto" sweeps in 2-D
    assert r.method == "sweep" and r.status == "optimal" and r.lower == r.upper == r.value
    assert r.value == pytest.approx(best, abs=1e-12)
    assert 1 - r.value == pytest.approx(min_err, abs=1e-12)      # complement: fewest mis-ordered pairs
    if r.normal is not None:
        assert pair_fraction(A, B, r.normal) == r.value             # attained by the returned normal


@pytest.mark.parametrize("kind", KINDS)
def test_sweep_equals_the_milp(kind):
    A, B = degenerate_sets(kind, 1)
    A, B = A[:4], B[:4]
    exact = md_lsm(A, B, method="exact")
    sweep = md_lsm(A, B, method="sweep")
    assert exact.status == "optimal"
    assert sweep.value == exact.value and sweep.upper == exact.upper


def test_sweep_in_one_dimension_and_in_a_plane_of_a_wider_space():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(30, 1, generator=g, dtype=torch.float64), torch.randn(25, 1, generator=g, dtype=torch.float64)
    r = md_lsm(a, b)
    auc = roc_auc_score(np.r_[np.ones(30), np.zeros(25)], np.r_[a[:, 0], b[:, 0]])
    assert r.value == pytest.approx(max(auc, 1 - auc), abs=1e-12) and r.status == "optimal"
    # 2-D points embedded in 5-D by a random linear map: the sweep applies, the value is the planar one
    A2, B2 = degenerate_sets("random", 2)
    M = torch.randn(2, 5, generator=g, dtype=torch.float64)
    lifted = md_lsm(A2 @ M, B2 @ M, method="sweep")
    assert lifted.value == pytest.approx(md_lsm(A2, B2).value, abs=1e-12) and lifted.status == "optimal"
    with pytest.raises(ValueError, match="method: 'sweep' expects points spanning at most 2 dimensions"):
        md_lsm(torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g), method="sweep")


def test_sweep_matches_a_fine_brute_force_at_a_realistic_size():
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(100, 2)), rng.normal(size=(120, 2)) + 0.5
    r = md_lsm(torch.tensor(A), torch.tensor(B))
    best, _ = brute_best_auc_2d(A, B)
    assert r.value == pytest.approx(best, abs=1e-12) and r.lower == r.upper


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 6), m=st.integers(2, 6), d=st.integers(2, 3),
       shift=st.floats(0.0, 1.5))
def test_exact_md_lsm_is_the_best_linear_auc(seed, n, m, d, shift):
    """MD-LSM (exact) is the strict AUC of its normal, and at least the AUC (sklearn's, ties as 1/2)
    of logistic regression, a linear SVM and LDA fitted to the same points."""
    rng = np.random.default_rng(seed)
    A, B = rng.normal(size=(n, d)), rng.normal(size=(m, d)) + shift
    r = md_lsm(torch.tensor(A), torch.tensor(B), method="exact" if d == 3 else "auto")
    assert r.status == "optimal"
    X, y = np.r_[A, B], np.r_[np.ones(n), np.zeros(m)]
    if r.normal is not None:
        s = X @ r.normal.numpy()
        assert strict_auc(s[:n], s[n:]) == r.value
        assert roc_auc_score(y, s) == pytest.approx(r.value, abs=1e-12)      # no ties: the same AUC
    for model in (LogisticRegression(), LinearSVC(), LinearDiscriminantAnalysis()):
        auc = roc_auc_score(y, model.fit(X, y).decision_function(X))
        assert r.value >= auc - 1e-12, type(model).__name__


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 100_000), n=st.integers(5, 40), m=st.integers(5, 40), d=st.integers(3, 8),
       shift=st.floats(0.0, 1.5), scale=st.floats(0.2, 3.0))
def test_approx_is_never_below_the_baselines(seed, n, m, d, shift, scale):
    """The approximate MD-LSM is at least the in-sample AUC of scikit-learn's logistic regression,
    linear SVM and LDA (default settings, fitted here independently), of the mean difference and of
    the hull normal."""
    from sepmeasure.separability import hull_distance

    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, d)) * rng.uniform(0.2, 2.0, size=d)
    B = rng.normal(size=(m, d)) * scale + shift
    r = md_lsm(torch.tensor(A), torch.tensor(B), method="approx", steps=20)
    X, y = np.r_[A, B], np.r_[np.ones(n), np.zeros(m)]
    aucs = {type(model).__name__: roc_auc_score(y, model.fit(X, y).decision_function(X))
            for model in (LogisticRegression(), LinearSVC(), LinearDiscriminantAnalysis())}
    aucs["mean difference"] = roc_auc_score(y, X @ (A.mean(0) - B.mean(0)))
    h = hull_distance(torch.tensor(A), torch.tensor(B))
    if h.normal is not None:
        aucs["hull normal"] = roc_auc_score(y, X @ h.normal.numpy())
    # LDA here uses the SVD solver, the measure the same direction by least squares: they may
    # differ by float64 rounding of the direction, which can flip one pair at most
    slack = {"LinearDiscriminantAnalysis": 1 / (n * m) + 1e-12}
    for name, auc in aucs.items():
        assert r.value >= auc - slack.get(name, 1e-12), (name, r.value, auc)
    assert r.lower == r.value <= r.upper
