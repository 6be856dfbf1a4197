"""Span coordinates (the whitened affine span both sets live in) against direct computations."""
from __future__ import annotations

import pytest
import torch

from sepmeasure.separability.pointsets import GRAM_MIN_ELEMENTS, span_coordinates, to_span_direction


def _sets(n, d, rank=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, d, dtype=torch.float64)
    B = torch.randn(n + 7, d, generator=g, dtype=torch.float64) + 0.3
    if rank is not None:   # the points span only `rank` directions (an affine subspace)
        M = torch.randn(d, d, generator=g, dtype=torch.float64)
        M[:, rank:] = 0
        A, B = A @ M.T + 1.0, B @ M.T + 1.0
    return A, B


@pytest.mark.parametrize("n, d, rank", [(40, 6, None), (30, 9, 4), (700, 64, None), (1100, 64, None),
                                         (2100, 256, None), (2100, 256, 200)])
@pytest.mark.parametrize("whiten", [True, False])
def test_span_coordinates_against_a_direct_computation(n, d, rank, whiten, monkeypatch):
    """Large sets with many more points than dimensions take the Gram-eigenvector path, the others
    and rank-deficient ones the SVD; each is checked against the definitions: the coordinates
    reproduce the centred points' inner products (whitened: identity covariance, rank = the
    data's), and to_span_direction scores like the input direction (from_input = pinv(to_span))."""
    A, B = _sets(n, d, rank)
    calls = []
    svd = torch.linalg.svd
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: calls.append(1) or svd(*a, **k))
    c = span_coordinates(A, B, whiten=whiten)
    # the SVD only for small sets (or few points per dimension) and rank-deficient ones
    small = (2 * n + 7) * d < GRAM_MIN_ELEMENTS or 2 * n + 7 < 4 * d
    assert bool(calls) == (small or rank is not None)
    X = torch.cat([A, B])
    Xc = X - X.mean(0)
    Z = torch.cat([c.a, c.b])
    r = Z.shape[1]
    assert r == (rank or d) == int(torch.linalg.matrix_rank(Xc))
    torch.testing.assert_close(Xc @ c.to_span, Z, rtol=0, atol=1e-9 * float(Z.abs().max()))
    if whiten:
        torch.testing.assert_close(Z.T @ Z / X.shape[0], torch.eye(r, dtype=Z.dtype), rtol=0, atol=1e-8)
    else:
        torch.testing.assert_close(Z @ Z.T, Xc @ Xc.T, rtol=0, atol=1e-9 * float((Xc @ Xc.T).abs().max()))
    torch.testing.assert_close(c.from_input, torch.linalg.pinv(c.to_span), rtol=0,
                               atol=1e-8 * float(c.from_input.abs().max()))
    W = torch.randn(d, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    V = to_span_direction(W, c)
    torch.testing.assert_close(Z @ V, Xc @ W, rtol=0, atol=1e-8 * float((Xc @ W).abs().max()))
    torch.testing.assert_close(to_span_direction(W[:, 0], c), V[:, 0])


def test_coincident_points_have_an_empty_span():
    A = torch.ones(5, 3, dtype=torch.float64)
    c = span_coordinates(A, A.clone())
    assert c.a.shape == (5, 0) and c.from_input.shape == (0, 3)
    assert to_span_direction(torch.ones(3, dtype=torch.float64), c).shape == (0,)


def test_joined_rows_is_a_view_exactly_when_the_rows_are_consecutive():
    from sepmeasure.separability.pointsets import joined_rows, standardise

    g = torch.Generator().manual_seed(2)
    X = torch.randn(9, 4, generator=g, dtype=torch.float64)
    A, B = X[:5], X[5:]
    J = joined_rows(A, B)
    assert torch.equal(J, torch.cat([A, B])) and J.data_ptr() == X.data_ptr()
    # not consecutive (a gap, the other order, another buffer, a column slice, another dtype): a copy,
    # equal to cat
    for a, b in [(X[:3], X[5:]), (X[5:], X[:5]), (A, B.clone()), (X[:5, :3], X[5:, :3]), (A, B.float())]:
        J = joined_rows(a, b)
        assert torch.equal(J, torch.cat([a, b]))
        assert J.untyped_storage().data_ptr() not in (a.untyped_storage().data_ptr(),
                                                      b.untyped_storage().data_ptr())
    # one-row sets whose row stride is not the row length (contiguous all the same): still cat's rows
    buf = torch.arange(8, dtype=torch.float64)
    a1, b1 = buf[:4].view(4, 1).T, buf[4:].view(1, 4)
    assert a1.stride() == (1, 1) and a1.is_contiguous()
    assert torch.equal(joined_rows(a1, b1), torch.cat([a1, b1]))
    # the standardised sets are one buffer: A's rows then B's
    u = standardise(A * 7.0 + 3.0, B * 7.0 + 3.0)
    assert joined_rows(u.a, u.b).data_ptr() == u.a.data_ptr()
    torch.testing.assert_close(torch.cat([u.a, u.b]), (X * 7.0 + 3.0) / u.scale - u.centre, rtol=0, atol=1e-15)


def test_centred_copies_unless_a_large_pool_is_centred_already(monkeypatch):
    from sepmeasure.separability import pointsets

    g = torch.Generator().manual_seed(6)
    X = torch.randn(300, 8, generator=g, dtype=torch.float64) + 2.0
    Xc, mean = pointsets.centred(X)           # not centred: a copy
    torch.testing.assert_close(mean, X.mean(0), rtol=0, atol=0)
    torch.testing.assert_close(Xc, X - X.mean(0), rtol=0, atol=0)
    X0 = X - X.mean(0)
    Xc, mean = pointsets.centred(X0)          # centred, but small: still the centred arithmetic
    assert Xc.data_ptr() != X0.data_ptr() and torch.equal(mean, X0.mean(0))
    monkeypatch.setattr(pointsets, "CENTRED_MIN_ELEMENTS", X0.numel())
    Xc, mean = pointsets.centred(X0)          # centred and large enough: the pool itself, mean 0
    assert Xc.data_ptr() == X0.data_ptr() and float(mean.abs().max()) == 0.0
    Xc, mean = pointsets.centred(X)           # large enough but not centred: a copy
    assert Xc.data_ptr() != X.data_ptr() and torch.equal(mean, X.mean(0))


def test_span_of_centred_sets_shares_their_memory_and_leaves_them_unchanged(monkeypatch):
    """Large standardised sets are centred already: the span is computed on their pool as it is (no
    copy, centre 0), and agrees with the definitions like the general path."""
    from sepmeasure.separability import pointsets
    from sepmeasure.separability.pointsets import standardise

    monkeypatch.setattr(pointsets, "CENTRED_MIN_ELEMENTS", 0)
    A0, B0 = _sets(1100, 64)
    u = standardise(A0, B0)
    before = torch.cat([u.a, u.b]).clone()
    c = span_coordinates(u.a, u.b)
    assert torch.equal(torch.cat([u.a, u.b]), before)
    assert float(c.center.abs().max()) == 0.0
    Xc = before - before.mean(0)
    Z = torch.cat([c.a, c.b])
    torch.testing.assert_close(Xc @ c.to_span, Z, rtol=0, atol=1e-9 * float(Z.abs().max()))
    torch.testing.assert_close(Z.T @ Z / Z.shape[0], torch.eye(Z.shape[1], dtype=Z.dtype), rtol=0, atol=1e-8)


@pytest.mark.parametrize("large", [False, True])
def test_measures_on_views_of_one_centred_buffer_leave_it_unchanged(large, monkeypatch):
    """Two sets that are consecutive rows of one centred buffer are solved in that buffer (no copy;
    ``large``: as a pool above CENTRED_MIN_ELEMENTS would be): the results equal those on separate
    copies and the buffer is unchanged."""
    from sepmeasure.separability import hull_distance, md_lsm, pointsets

    if large:
        monkeypatch.setattr(pointsets, "CENTRED_MIN_ELEMENTS", 0)
    g = torch.Generator().manual_seed(4)
    X = torch.randn(140, 6, generator=g, dtype=torch.float64)
    X[:60, 0] += 0.8
    X -= X.mean(0)
    before = X.clone()
    A, B = X[:60], X[60:]
    shared, separate = hull_distance(A, B), hull_distance(A.clone(), B.clone())
    assert torch.equal(X, before)
    assert (shared.distance, shared.lower, shared.upper) == (separate.distance, separate.lower, separate.upper)
    shared, separate = md_lsm(A, B, method="approx"), md_lsm(A.clone(), B.clone(), method="approx")
    assert torch.equal(X, before)
    assert (shared.value, shared.lower, shared.upper) == (separate.value, separate.lower, separate.upper)
