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
