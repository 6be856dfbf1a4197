"""Hull distance: native working-set solver against cvxpy, closed forms, invariances, bad input.

Tolerances. The native solver stops at a certified relative gap ``tol = 1e-6``; Clarabel's own
answers are accurate to about 1e-7 relative. Agreement is therefore asked at 1e-5 relative for
separable sets; for overlapping sets both must be below 1e-6 of the data's scale. The
certificates are checked without slack beyond float64 rounding: the native ``lower`` can never
exceed an attained reference value, and the reference value can exceed the native ``upper``
only by the reference's own certified gap.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sepmeasure.separability import HullDistance, HullSolverError, hull_distance, pairwise_hull_distances


ROUND = 1e-12  # float64 rounding slack, relative to the data's scale


def gaussians(n, m, d, shift, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, generator=g, dtype=torch.float64)
    B = torch.randn(m, d, generator=g, dtype=torch.float64)
    A[:, 0] += shift
    B[:, 0] -= shift
    return A.to(dtype), B.to(dtype)


def check_certificate(res: HullDistance, ref: HullDistance):
    slack = ROUND * max(res.scale, 1.0)
    assert res.lower <= res.upper + slack
    assert res.lower <= ref.upper + slack            # lower <= true distance <= any attained value
    assert ref.upper <= res.upper + ref.gap + slack  # the reference is optimal up to its own gap


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,m,d", [(12, 9, 2), (40, 60, 8), (120, 100, 30)])
@pytest.mark.parametrize("shift", [3.0, 0.0])
def test_native_matches_reference(n, m, d, shift, dtype):
    seed = 1000 * n + 10 * m + d + int(shift) + (dtype == torch.float32)
    A, B = gaussians(n, m, d, shift, seed, dtype)
    res = hull_distance(A, B)
    ref = hull_distance(A, B, method="reference")
    assert res.converged and res.method == "native"
    check_certificate(res, ref)
    scale = res.scale
    if ref.separable:
        assert res.separable is True
        assert abs(res.distance - ref.distance) <= 1e-5 * ref.distance
        assert res.gap <= 1e-6 * res.upper * (1 + 1e-9)
    else:
        assert ref.distance <= 1e-6 * scale
        assert res.separable is False
        assert res.distance <= res.zero_tol * scale


def test_near_boundary_and_float32_agree_with_reference():
    # a shift that leaves only a small margin relative to the spread of the points
    A, B = gaussians(150, 150, 10, 1.2, seed=11)
    res64 = hull_distance(A, B)
    res32 = hull_distance(A.float(), B.float())
    ref = hull_distance(A.float(), B.float(), method="reference")
    check_certificate(res32, ref)
    if ref.separable:
        assert abs(res32.distance - ref.distance) <= 1e-5 * ref.distance
    # float32 data are exactly representable in float64: same problem up to the cast
    assert abs(res32.distance - hull_distance(A.float().double(), B.float().double()).distance) <= 1e-12
    assert res64.converged


def test_two_points_and_segments_closed_form():
    a, b = torch.tensor([[1.0, 2.0, 2.0]]), torch.tensor([[0.0, 0.0, 0.0]])
    r = hull_distance(a, b)
    assert r.distance == pytest.approx(3.0, rel=1e-12)
    assert r.lower == pytest.approx(3.0, rel=1e-12)
    assert torch.allclose(r.normal, torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64) / 3)
    assert r.weights_a.tolist() == [1.0] and r.weights_b.tolist() == [1.0]
    # two parallel segments at distance 2 overlapping in their projection
    A = torch.tensor([[0.0, 2.0], [4.0, 2.0]])
    B = torch.tensor([[1.0, 0.0], [5.0, 0.0]])
    r = hull_distance(A, B)
    assert r.distance == pytest.approx(2.0, rel=1e-9)
    assert r.margin == pytest.approx(1.0, rel=1e-9)
    assert r.offset == pytest.approx(1.0, abs=10 * r.tol * r.scale)  # the normal is as exact as the gap
    # u = A.T @ weights_a and v = B.T @ weights_b realise the distance
    u = A.double().T @ r.weights_a
    v = B.double().T @ r.weights_b
    assert float((u - v).norm()) == pytest.approx(r.distance, rel=1e-12)


@pytest.mark.parametrize("d,n", [(3, 60), (6, 120)])
def test_degenerate_margin_plane_has_known_distance(d, n):
    """Half of each set lies on the planes x0 = ±0.025: the hull distance is exactly 0.05."""
    g = torch.Generator().manual_seed(d)
    A = torch.randn(n, d, generator=g, dtype=torch.float64)
    B = torch.randn(n, d, generator=g, dtype=torch.float64)
    A[:, 0] = 0.025 + A[:, 0].abs()
    B[:, 0] = -0.025 - B[:, 0].abs()
    A[: n // 2, 0] = 0.025
    B[: n // 2, 0] = -0.025
    # the on-plane parts overlap in the other coordinates (checked independently with cvxpy)
    inner = hull_distance(A[: n // 2, 1:], B[: n // 2, 1:], method="reference")
    assert inner.distance <= 1e-6
    r = hull_distance(A, B)
    assert r.converged and r.separable is True
    assert r.lower <= 0.05 + 1e-12 <= r.upper + 2e-12
    assert r.distance == pytest.approx(0.05, rel=1e-6)


def test_overlap_certificate_is_a_convex_combination():
    A, B = gaussians(50, 50, 5, 0.2, seed=3)
    r = hull_distance(A, B)
    assert r.separable is False and r.lower == 0.0
    assert float(r.weights_a.sum()) == pytest.approx(1.0) and float(r.weights_b.sum()) == pytest.approx(1.0)
    assert bool((r.weights_a >= 0).all()) and bool((r.weights_b >= 0).all())
    z = A.T @ r.weights_a - B.T @ r.weights_b
    assert float(z.norm()) <= r.zero_tol * r.scale


def test_identical_and_coincident_points():
    A = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    assert hull_distance(A, A.clone()).separable is False
    assert hull_distance([[0.0, 0.0]], [[0.0, 0.0]]).distance == 0.0
    r = hull_distance(torch.ones(3, 2), torch.zeros(2, 2))
    assert r.distance == pytest.approx(math.sqrt(2), rel=1e-12)


def test_not_converged_is_reported_and_still_certified():
    A, B = gaussians(300, 300, 40, 1.0, seed=5)
    r = hull_distance(A, B, max_iter=1)
    ref = hull_distance(A, B, method="reference")
    assert r.status == "max_iter" and not r.converged
    check_certificate(r, ref)
    assert r.lower <= ref.distance + ROUND * r.scale


def test_warm_start_reaches_the_same_answer():
    A, B = gaussians(200, 200, 20, 1.8, seed=9)
    cold = hull_distance(A, B)
    warm = hull_distance(A + 1e-3 * torch.randn_like(A), B, warm_start=cold)
    again = hull_distance(A, B, warm_start=cold)
    assert again.distance == pytest.approx(cold.distance, rel=1e-6)
    assert again.iterations <= cold.iterations
    assert warm.converged


def test_pairwise_matches_single_pairs_ovo_and_ovr():
    g = torch.Generator().manual_seed(1)
    y = torch.arange(4).repeat_interleave(25)
    X = torch.randn(100, 6, generator=g) + 2.5 * torch.nn.functional.one_hot(y, 6).float()
    ovo = pairwise_hull_distances(X, y)
    assert list(ovo) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    for (a, b), r in ovo.items():
        single = hull_distance(X[y == a], X[y == b])
        assert r.distance == pytest.approx(single.distance, rel=1e-6, abs=1e-9 * r.scale)
        assert r.separable == single.separable
        assert (r.n_a, r.n_b) == (25, 25)
    ovr = pairwise_hull_distances(X, y, "ovr")
    assert list(ovr) == [(0, "rest"), (1, "rest"), (2, "rest"), (3, "rest")]
    r = ovr[(2, "rest")]
    single = hull_distance(X[y == 2], X[y != 2])
    assert (r.n_a, r.n_b) == (25, 75)
    assert r.distance == pytest.approx(single.distance, rel=1e-6, abs=1e-9 * r.scale)
    explicit = pairwise_hull_distances(X, y, [(3, 1)])
    assert list(explicit) == [(3, 1)]


def test_wide_features_are_projected_to_the_span():
    g = torch.Generator().manual_seed(4)
    A = torch.randn(10, 300, generator=g, dtype=torch.float64) + 0.1
    B = torch.randn(12, 300, generator=g, dtype=torch.float64)
    r = hull_distance(A, B)
    ref = hull_distance(A, B, method="reference")
    check_certificate(r, ref)
    assert r.normal.shape == (300,)
    assert r.distance == pytest.approx(ref.distance, rel=1e-5)
    # the normal certifies the lower bound in the input coordinates
    margin = float((A @ r.normal).min() - (B @ r.normal).max())
    assert margin >= r.lower * (1 - 1e-9)


# ----------------------------------------------------------------------------
# Invariances (hypothesis)
# ----------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 15), m=st.integers(1, 15), d=st.integers(1, 5),
       shift=st.floats(0.0, 3.0), translate=st.floats(-50, 50), scale=st.floats(0.01, 100.0))
def test_translation_rotation_and_scale(seed, n, m, d, shift, translate, scale):
    A, B = gaussians(n, m, d, shift, seed)
    g = torch.Generator().manual_seed(seed + 1)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    t = translate * torch.randn(d, generator=g, dtype=torch.float64)
    base = hull_distance(A, B)
    moved = hull_distance(A @ Q.T + t, B @ Q.T + t)
    scaled = hull_distance(scale * A, scale * B)
    tol = 1e-5 * base.distance + 1e-8 * base.scale
    assert abs(moved.distance - base.distance) <= tol + 1e-9 * moved.scale
    assert abs(scaled.distance - scale * base.distance) <= scale * tol
    assert base.separable == moved.separable == scaled.separable


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("A,B,match", [
    (torch.zeros(3, 2), torch.zeros(3, 3), "B: expected 2 features"),
    (torch.zeros(0, 2), torch.zeros(3, 2), "A: expected at least 1 row"),
    (torch.zeros(3, 2), torch.zeros(0, 2), "B: expected at least 1 row"),
    (torch.tensor([[0.0, float("nan")]]), torch.zeros(1, 2), "A: expected finite values"),
    (torch.zeros(1, 2), torch.tensor([[float("inf"), 0.0]]), "B: expected finite values"),
    (torch.zeros(3), torch.zeros(3, 1), "A: expected a 2-dimensional tensor"),
    (torch.zeros(3, 1), torch.zeros(3, 1, 1), "B: expected a 2-dimensional tensor"),
])
def test_bad_point_sets(A, B, match):
    with pytest.raises(ValueError, match=match):
        hull_distance(A, B)


def test_bad_arguments():
    A, B = torch.zeros(2, 2), torch.ones(2, 2)
    with pytest.raises(ValueError, match="method: expected one of"):
        hull_distance(A, B, method="fast")
    with pytest.raises(ValueError, match="tol: expected a finite number > 0"):
        hull_distance(A, B, tol=0)
    with pytest.raises(ValueError, match="max_iter: expected an int >= 1"):
        hull_distance(A, B, max_iter=0)
    with pytest.raises(ValueError, match="solver: expected one of the installed cvxpy solvers"):
        hull_distance(A, B, method="reference", solver="NOPE")
    with pytest.raises(TypeError, match="warm_start: expected a HullDistance"):
        hull_distance(A, B, warm_start=3)
    with pytest.raises(ValueError, match="warm_start: expected a result for sets of sizes"):
        hull_distance(A, B, warm_start=hull_distance(A[:1], B))
    with pytest.raises(TypeError, match="A: expected a torch.Tensor or numpy array"):
        hull_distance("points", B)


def test_bad_labels_for_pairs():
    X = torch.randn(6, 2)
    with pytest.raises(ValueError, match="labels: expected 6 labels"):
        pairwise_hull_distances(X, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="labels: expected at least 2 distinct classes"):
        pairwise_hull_distances(X, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="pairs: expected classes present"):
        pairwise_hull_distances(X, torch.tensor([0, 1] * 3), [(0, 5)])
    with pytest.raises(ValueError, match="pairs: expected 'ovo', 'ovr'"):
        pairwise_hull_distances(X, torch.tensor([0, 1] * 3), "all")


def test_solver_failure_is_an_error_not_a_number():
    A, B = gaussians(60, 60, 10, 0.5, seed=2)
    with pytest.raises(HullSolverError, match="CLARABEL"):
        hull_distance(A, B, method="reference", solver_options={"max_iter": 1})


# ----------------------------------------------------------------------------
# Devices
# ----------------------------------------------------------------------------

def test_native_on_device(device):
    A, B = gaussians(80, 70, 12, 1.5, seed=8)
    cpu = hull_distance(A, B)
    r = hull_distance(A.to(device), B.to(device))
    assert r.normal.device.type == device.type
    assert r.weights_a.device.type == device.type
    assert r.distance == pytest.approx(cpu.distance, rel=1e-6)
    assert r.separable == cpu.separable
    res = pairwise_hull_distances(torch.cat([A, B]).to(device), torch.tensor([0] * 80 + [1] * 70, device=device))
    assert res[(0, 1)].distance == pytest.approx(cpu.distance, rel=1e-6)


def test_numpy_input():
    A, B = gaussians(10, 10, 3, 2.0, seed=0)
    r = hull_distance(A.numpy(), B.numpy())
    assert r.distance == pytest.approx(hull_distance(A, B).distance, rel=1e-12)
    # the normal (unit length) and the weights returned for arrays certify the distance on those arrays
    normal = np.asarray(r.normal, dtype=np.float64)
    assert np.linalg.norm(normal) == pytest.approx(1.0, abs=1e-12)
    An, Bn = A.numpy(), B.numpy()
    assert float((An @ normal).min() - (Bn @ normal).max()) >= r.lower * (1 - 1e-9) > 0
    u, v = An.T @ np.asarray(r.weights_a), Bn.T @ np.asarray(r.weights_b)
    assert float(np.linalg.norm(u - v)) == pytest.approx(r.distance, rel=1e-9)


def test_take_rows_is_a_view_exactly_when_rows_are_consecutive():
    from sepmeasure.separability._hull_native import take_rows

    X = torch.randn(12, 3, dtype=torch.float64)
    cases = {"consecutive": torch.arange(4, 9), "one": torch.tensor([7]), "gap": torch.tensor([1, 2, 4]),
             "unsorted": torch.tensor([3, 2, 4]), "same span, repeated": torch.tensor([2, 2, 4]),
             "empty": torch.zeros(0, dtype=torch.long)}
    for name, rows in cases.items():
        got = take_rows(X, rows)
        assert torch.equal(got, X[rows]), name
        shares = got.numel() > 0 and got.data_ptr() == X[int(rows[0]):].data_ptr()
        assert shares == (name in ("consecutive", "one")), name
