"""Batched rounds of the native hull solver against the one-pair rounds and cvxpy + Clarabel.

All pairs of a pool are solved by one batched solve per round (``_hull_batched``); pairs that
stall there continue in the one-pair rounds. Each result is checked against the same pairs
solved with the batch switched off and against the reference solver, with the tolerances of
``test_separability_hull.py``: distances within 1e-5 relative for separable pairs (both solvers
certify 1e-6), both below 1e-6 of the scale where the hulls meet, and certificates that hold
without slack beyond float64 rounding.
"""
from __future__ import annotations

import pytest
import torch

import sepmeasure.separability._hull_batched as batched_module
import sepmeasure.separability.hull as hull_module
from sepmeasure.separability import hull_distance, pairwise_hull_distances

ROUND = 1e-12


def pool(sizes, d, spread, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    centres = spread * torch.randn(len(sizes), d, generator=g, dtype=torch.float64)
    X = torch.randn(y.numel(), d, generator=g, dtype=torch.float64) + centres[y]
    return X, y


@pytest.fixture
def batch_calls(monkeypatch):
    calls = []
    real = hull_module.batched_rounds

    def spy(pairs, *args, **kwargs):
        out = real(pairs, *args, **kwargs)
        calls.append((len(pairs), len(out.left)))
        return out

    monkeypatch.setattr(hull_module, "batched_rounds", spy)
    return calls


def serial(X, y, **kwargs):
    """The same pairs with the batch switched off (one-pair rounds only)."""
    real = hull_module.solve_native

    def one_by_one(*args, **kw):
        return real(*args, **kw, batched=False)

    hull_module.solve_native = one_by_one
    try:
        return pairwise_hull_distances(X, y, progress=False, **kwargs)
    finally:
        hull_module.solve_native = real


def check_against(res, other, ref):
    slack = ROUND * max(res.scale, 1.0)
    assert res.lower <= res.upper + slack
    assert res.lower <= ref.upper + slack
    assert ref.upper <= res.upper + ref.gap + slack
    assert res.separable == other.separable == ref.separable
    if ref.separable:
        assert abs(res.distance - ref.distance) <= 1e-5 * ref.distance
        assert abs(res.distance - other.distance) <= 2e-6 * other.distance
        assert res.gap <= res.tol * res.upper * (1 + 1e-9)
        margin = float((res.normal @ res.normal))
        assert margin == pytest.approx(1.0)
    else:
        assert res.distance <= res.zero_tol * res.scale and ref.distance <= 1e-6 * ref.scale
    assert float(res.weights_a.sum()) == pytest.approx(1.0) and float(res.weights_b.sum()) == pytest.approx(1.0)
    assert bool((res.weights_a >= 0).all()) and bool((res.weights_b >= 0).all())


@pytest.mark.parametrize("sizes,d,spread,seed", [
    ([30] * 6, 12, 0.4, 0),            # separable and overlapping pairs
    ([60] * 5, 64, 0.5, 1),            # the studies' shape: supports of dozens of points
    ([5, 17, 40, 2, 25], 6, 2.0, 2),   # unequal sizes, a class of two points
])
def test_batched_matches_one_by_one_and_reference(sizes, d, spread, seed, batch_calls):
    X, y = pool(sizes, d, spread, seed)
    res = pairwise_hull_distances(X, y, progress=False)
    assert batch_calls and batch_calls[0][0] == len(res)
    one = serial(X, y)
    assert all(r.method == "native" and r.converged for r in res.values())
    kinds = set()
    for (a, b), r in res.items():
        ref = hull_distance(X[y == a], X[y == b], method="reference")
        check_against(r, one[(a, b)], ref)
        kinds.add(r.separable)
        # the weights and the normal certify the distance on the points themselves
        u, v = X[y == a].T @ r.weights_a, X[y == b].T @ r.weights_b
        assert float((u - v).norm()) == pytest.approx(r.distance, rel=1e-9, abs=1e-12 * r.scale)
        if r.separable:
            margin = float((X[y == a] @ r.normal).min() - (X[y == b] @ r.normal).max())
            assert margin >= r.lower * (1 - 1e-9)
            assert float((X[y == a] @ r.normal).min()) > r.offset > float((X[y == b] @ r.normal).max())
    if seed == 0:
        assert kinds == {True, False}


def test_one_vs_rest_and_explicit_pairs_in_the_batch(batch_calls):
    X, y = pool([20, 35, 15, 30], 5, 2.5, 3)
    ovr = pairwise_hull_distances(X, y, "ovr", progress=False)
    for (a, _), r in ovr.items():
        single = hull_distance(X[y == a], X[y != a])
        assert (r.n_a, r.n_b) == (int((y == a).sum()), int((y != a).sum()))
        assert r.separable == single.separable
        assert r.distance == pytest.approx(single.distance, rel=2e-6, abs=1e-9 * r.scale)
    explicit = pairwise_hull_distances(X, y, [(3, 1), (0, 2)], progress=False)
    assert list(explicit) == [(3, 1), (0, 2)]
    assert explicit[(3, 1)].distance == pytest.approx(hull_distance(X[y == 3], X[y == 1]).distance, rel=2e-6,
                                                       abs=1e-9 * explicit[(3, 1)].scale)
    assert batch_calls[0][0] == 4 and (2, 0) in [(n, 0) for n, _ in batch_calls]


@pytest.mark.parametrize("limit", ["BATCH_MAX_WORKING_SET", "PIVOT_STEPS"])
def test_pairs_handed_on_finish_one_by_one(monkeypatch, batch_calls, limit):
    # a batch that cannot hold any working set, or whose pivoting stops after one step, hands pairs
    # to the one-pair rounds, which continue from where the batch left them
    monkeypatch.setattr(batched_module, limit, 1)
    X, y = pool([40] * 4, 10, 1.0, 4)
    res = pairwise_hull_distances(X, y, progress=False)
    assert batch_calls[0][1] > 0              # pairs were handed on
    one = serial(X, y)
    for key, r in res.items():
        ref = hull_distance(X[y == key[0]], X[y == key[1]], method="reference")
        check_against(r, one[key], ref)


def test_max_iter_in_the_batch_is_reported_and_certified():
    X, y = pool([150] * 3, 20, 0.7, 5)
    res = pairwise_hull_distances(X, y, max_iter=1, progress=False)
    for (a, b), r in res.items():
        ref = hull_distance(X[y == a], X[y == b], method="reference")
        assert r.iterations == 1
        assert r.status in ("max_iter", "converged")
        assert r.lower <= ref.upper + ROUND * r.scale
        assert ref.upper <= r.upper + ref.gap + ROUND * r.scale
    assert any(r.status == "max_iter" for r in res.values())


def test_wide_features_in_the_batch(batch_calls):
    # more dimensions than twice the points: the pool is solved in the span of its points
    X, y = pool([8, 10, 9], 300, 0.05, 6)
    res = pairwise_hull_distances(X, y, progress=False)
    assert batch_calls
    for (a, b), r in res.items():
        assert r.normal.shape == (300,)
        ref = hull_distance(X[y == a], X[y == b], method="reference")
        assert r.separable is True
        assert r.distance == pytest.approx(ref.distance, rel=1e-5)
        margin = float((X[y == a] @ r.normal).min() - (X[y == b] @ r.normal).max())
        assert margin >= r.lower * (1 - 1e-9)


def test_single_pairs_and_warm_starts_run_the_one_pair_rounds(batch_calls):
    X, y = pool([50, 50], 8, 1.5, 7)
    first = hull_distance(X[y == 0], X[y == 1])
    again = hull_distance(X[y == 0], X[y == 1], warm_start=first)
    assert batch_calls == []
    assert again.distance == pytest.approx(first.distance, rel=2e-6)
    batched = pairwise_hull_distances(X, y, progress=False)      # one pair of classes: one pair
    assert batch_calls == [] and batched[(0, 1)].distance == pytest.approx(first.distance, rel=2e-6)


@pytest.mark.parametrize("K,d,seed", [(10, 6, 10), (24, 40, 11), (40, 8, 12)])
def test_batched_pivoting_solves_the_working_set_problems(K, d, seed):
    # the pivoting on its own against a KKT check and cvxpy + Clarabel on the same ridge QPs,
    # for padded working sets with more points than dimensions (singular Gram matrices) and fewer
    cp = pytest.importorskip("cvxpy")
    import numpy as np

    g = torch.Generator().manual_seed(seed)
    P = 7
    Y = torch.randn(P, K, d, generator=g, dtype=torch.float64) + torch.randn(P, 1, d, generator=g, dtype=torch.float64)
    sizes = torch.randint(4, K + 1, (P,), generator=g)
    valid = torch.arange(K)[None, :] < sizes[:, None]
    in_b = torch.rand(P, K, generator=g) < 0.5
    in_b[:, 0], in_b[:, 1] = False, True                                  # both sets in every working set
    Y = Y * valid[:, :, None]
    H = Y @ Y.mT
    cnt_a = (valid & ~in_b).sum(1, keepdim=True)
    cnt_b = (valid & in_b).sum(1, keepdim=True)
    x0 = (torch.where(in_b, 1.0 / cnt_b, 1.0 / cnt_a) * valid).to(torch.float64)
    x, active, ok = batched_module._inner_solve(H, x0, valid, in_b, max_steps=batched_module.PIVOT_STEPS)
    assert bool(ok.all())
    for p in range(P):
        v = valid[p]
        Hp, xp, bp = H[p][v][:, v], x[p][v], in_b[p][v]
        eps = batched_module.RIDGE * float(Hp.diagonal().mean())
        Q = Hp + eps * torch.eye(int(v.sum()), dtype=torch.float64)
        assert bool((xp >= 0).all()) and bool((x[p][~v] == 0).all())
        # the sums hold to the conditioning of the ridge system (the rounds renormalise the weights)
        assert float(xp[~bp].sum()) == pytest.approx(1.0, abs=1e-6)
        assert float(xp[bp].sum()) == pytest.approx(1.0, abs=1e-6)
        xp = torch.where(bp, xp / xp[bp].sum(), xp / xp[~bp].sum())
        # KKT: on each set, every entry's gradient is at least the level of the free entries (to 1e-6
        # of the mean diagonal: a ridge of 1e-10 leaves systems conditioned up to 1e10 when K > d)
        grad = Q @ xp
        free = xp > 0
        slack = 1e-6 * float(Q.diagonal().mean())
        for side in (~bp, bp):
            level = float(grad[side & free].min())
            assert float(grad[side & free].max()) - level <= slack
            assert float(grad[side].min()) >= level - slack
        # the same QP through cvxpy + Clarabel (no better objective)
        w = cp.Variable(int(v.sum()), nonneg=True)
        Qn = Q.numpy()
        Qn = (Qn + Qn.T) / 2
        prob = cp.Problem(cp.Minimize(cp.quad_form(w, cp.psd_wrap(Qn))),
                          [cp.sum(w[np.nonzero(~bp.numpy())[0]]) == 1, cp.sum(w[np.nonzero(bp.numpy())[0]]) == 1])
        prob.solve(solver="CLARABEL")
        ours = float(xp @ Q @ xp)
        assert ours <= prob.value * (1 + 1e-7) + 1e-12 * float(Q.diagonal().mean())
