"""Checks and coordinate changes shared by the separability measures.

Every measure takes two finite point sets ``A`` (n x d) and ``B`` (m x d) on the same device.
They are checked once here, at the boundary, with messages that name the argument.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch

from ..validation import check_features, check_int, describe

__all__ = ["check_point_sets", "check_direction", "class_pairs", "span_coordinates", "SpanCoordinates",
           "to_span_direction", "standardised", "standardise", "Standardised", "power_of_two_scale", "centred",
           "joined_rows"]


def check_point_sets(A: Any, B: Any, names: tuple[str, str] = ("A", "B")) -> tuple[torch.Tensor, torch.Tensor]:
    """Check two point sets and return them as tensors of one floating dtype on one device.

    Both must be 2-D (rows are points), non-empty, finite, with the same number of columns and
    on the same device. Integer inputs become floats; the result dtype is the wider of the two.

    Examples
    --------
    >>> A, B = check_point_sets([[0.0, 1.0]], [[1.0, 0.0], [2.0, 2.0]])
    >>> A.shape, B.shape
    (torch.Size([1, 2]), torch.Size([2, 2]))
    """
    na, nb = names
    a = check_features(A, na, ndim=2)
    b = check_features(B, nb, ndim=2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{nb}: expected {a.shape[1]} features (columns) like {na}, got {describe(b)}")
    if a.device != b.device:
        raise ValueError(f"{nb}: expected a tensor on the device of {na} ({a.device}), got {describe(b)}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(dtype)


class Standardised(NamedTuple):
    """Two point sets at unit scale (see :func:`standardise`): ``x = scale * (x' + centre)``."""

    a: torch.Tensor
    b: torch.Tensor
    scale: float
    centre: torch.Tensor


def standardise(A: torch.Tensor, B: torch.Tensor) -> Standardised:
    """``A`` and ``B`` divided by their largest absolute coordinate, then centred on their joint mean.

    A measure invariant to translation and positive scaling (MD-LSM, separability itself) sees
    the same sets at every magnitude, so its tolerances and solvers work at unit scale: sets of
    magnitude 1e200 or 1e-200 give the value they give at 1. A direction found for the result is
    a direction for the inputs too (``w @ x`` keeps its order); a threshold ``c'`` on ``x' @ w``
    is the threshold ``scale * (c' + centre @ w)`` on ``x @ w``. The two sets returned are
    consecutive row blocks of one new tensor (``A``'s rows, then ``B``'s), which
    :func:`joined_rows` reads as one pool without copying. All-zero sets are returned as they
    are (scale 1, centre 0).
    """
    (low_a, high_a), (low_b, high_b) = torch.aminmax(A), torch.aminmax(B)   # no |x| temporaries
    scale = torch.stack([-low_a, high_a, -low_b, high_b]).max()
    if not bool(scale > 0):
        return Standardised(A, B, 1.0, torch.zeros(A.shape[1], dtype=A.dtype, device=A.device))
    # both sets in one buffer, A's rows then B's: the solvers see them as one pool without a copy
    # (joined_rows), which at 10 000 x 512 float64 points saves a 41 MB allocation per use
    n = A.shape[0]
    pool = torch.empty((n + B.shape[0], A.shape[1]), dtype=torch.promote_types(A.dtype, B.dtype), device=A.device)
    torch.div(A, scale, out=pool[:n])
    torch.div(B, scale, out=pool[n:])
    centre = (pool[:n].sum(0) + pool[n:].sum(0)) / pool.shape[0]
    pool.sub_(centre)
    return Standardised(pool[:n], pool[n:], float(scale), centre)


#: Entries from which a pool whose mean is negligible (below 1e-13 of its largest entry: the
#: standardised sets) is used as it is rather than centred into a copy. A copy of 10 000 x 512
#: float64 points (41 MB, a fresh allocation each time) costs 15-20 ms here; below this size it
#: costs next to nothing, and smaller sets keep the results of the centred arithmetic exactly.
CENTRED_MIN_ELEMENTS = 2**20


def centred(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X - mean, mean)`` of the rows of ``X``; ``(X, 0)`` itself (no copy) for a pool of at least
    :data:`CENTRED_MIN_ELEMENTS` entries whose mean is below 1e-13 of its largest entry (the
    difference is a rounding-level shift). The result may share memory with ``X``."""
    mean = X.mean(0)
    if X.numel() >= CENTRED_MIN_ELEMENTS:
        low, high = torch.aminmax(X)
        if float(mean.abs().max()) <= 1e-13 * max(-float(low), float(high)):
            return X, torch.zeros_like(mean)
    return X - mean, mean


def standardised(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two sets of :func:`standardise` (unit scale, centred on their joint mean).

    Examples
    --------
    >>> f64 = torch.float64
    >>> a, b = standardised(torch.tensor([[1e200, 0.0]], dtype=f64), torch.tensor([[-1e200, 2e200]], dtype=f64))
    >>> a.tolist(), b.tolist()
    ([[0.5, -0.5]], [[-0.5, 0.5]])
    """
    s = standardise(A, B)
    return s.a, s.b


def power_of_two_scale(*tensors: torch.Tensor) -> float:
    """A power of two ``s`` with ``max |x| / s`` in ``[1, 2)`` over the entries of ``tensors`` (1 if all are 0).

    Dividing by ``s`` is exact in binary floating point (unless a result is subnormal), so a
    solver run on ``x / s`` solves exactly the problem of ``x`` at unit scale, and results
    multiplied back by ``s`` lose nothing unless they overflow.

    Examples
    --------
    >>> power_of_two_scale(torch.tensor([3.0, -5.0])), power_of_two_scale(torch.zeros(2))
    (4.0, 1.0)
    """
    m = max((max(-float(lo), float(hi)) for lo, hi in (torch.aminmax(t) for t in tensors if t.numel())),
            default=0.0)   # aminmax: no |x| temporary
    if not m > 0:
        return 1.0
    _, e = math.frexp(m)            # m = f * 2**e with 0.5 <= f < 1
    return math.ldexp(1.0, e - 1)   # 2**(e-1) <= m < 2**e; e - 1 <= 1023, never inf


def joined_rows(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``torch.cat([A, B])``, as a view (no copy) when ``B``'s rows follow ``A``'s in one buffer
    (the two sets of :func:`standardise`); the result may share memory with the inputs."""
    if (A.ndim == B.ndim == 2 and A.shape[1] == B.shape[1] and A.dtype == B.dtype and A.device == B.device
            and A.is_contiguous() and B.is_contiguous() and A.shape[0] and B.shape[0]
            and A.untyped_storage().data_ptr() == B.untyped_storage().data_ptr()
            and B.storage_offset() == A.storage_offset() + A.numel()):
        # row-major strides written out: a contiguous one-row tensor may carry any row stride
        return A.as_strided((A.shape[0] + B.shape[0], A.shape[1]), (A.shape[1], 1), A.storage_offset())
    return torch.cat([A, B])


def check_direction(w: Any, d: int, device: torch.device, name: str = "w") -> torch.Tensor:
    """Check a direction of ``d`` entries on ``device``; return it in float64."""
    v = check_features(w, name, ndim=1)
    if v.shape[0] != d:
        raise ValueError(f"{name}: expected a direction with {d} entries (the number of features), got {describe(v)}")
    if v.device != device:
        raise ValueError(f"{name}: expected a tensor on the device of the points ({device}), got {describe(v)}")
    return v.to(torch.float64)


class SpanCoordinates:
    """Both sets in coordinates of their affine span (see :func:`span_coordinates`).

    ``points`` are the sets ``(A, B)`` as given; ``a`` (n, r) and ``b`` (m, r) their
    coordinates, computed on first use (one
    (n + m) x d x r product, which a caller that only needs the basis does not pay);
    ``to_span`` (d, r) maps centred input points to coordinates, ``from_span`` (r, d) maps a
    direction ``v`` in span coordinates to ``v @ from_span`` in the input, ``center`` (d,) is
    the mean of all points and ``from_input`` (r, d) = ``pinv(to_span)``: an input direction
    ``w`` scores like ``from_input @ w``.
    """

    __slots__ = ("points", "_a", "_b", "to_span", "from_span", "center", "from_input")

    def __init__(self, A: torch.Tensor, B: torch.Tensor, to_span: torch.Tensor, from_span: torch.Tensor,
                 center: torch.Tensor, from_input: torch.Tensor) -> None:
        self.points = (A, B)
        self._a = self._b = None
        self.to_span, self.from_span, self.center, self.from_input = to_span, from_span, center, from_input

    def _coordinates(self) -> None:
        A, B = self.points
        Z = (torch.cat([A, B]).to(torch.float64) - self.center) @ self.to_span
        self._a, self._b = Z[: A.shape[0]], Z[A.shape[0]:]

    @property
    def a(self) -> torch.Tensor:
        if self._a is None:
            self._coordinates()
        return self._a

    @property
    def b(self) -> torch.Tensor:
        if self._b is None:
            self._coordinates()
        return self._b

    def coordinates_in(self, dtype: torch.dtype) -> torch.Tensor:
        """The coordinates of all points (``a`` then ``b``), computed in ``dtype`` (not cached)."""
        A, B = self.points
        X = torch.cat([A.to(dtype), B.to(dtype)])   # converted before the copy: 6x faster than after
        return X.sub_(self.center.to(dtype)) @ self.to_span.to(dtype)

    @property
    def rank(self) -> int:
        """``r``, the dimension of the span (0 when all points coincide)."""
        return self.to_span.shape[1]


#: Points x dimensions from which :func:`span_coordinates` takes the basis from the eigenvectors of
#: the d x d Gram matrix (when there are at least 4 times more points than dimensions) rather
#: than from the SVD of the points. Measured here (float64, 2 threads): 1000 x 64 points 0.7 ms
#: against 2.0 ms, 2000 x 128 3.3 ms against 11 ms, 4000 x 256 14 ms against 63 ms; the Gram
#: path is about 3x faster at every size, but smaller sets (a study's class pairs, at most a
#: few hundred points in up to 128 dimensions) keep the SVD's basis, in which their random starts
#: are drawn, so that their results stay those of the committed reports.
GRAM_MIN_ELEMENTS = 2**17


def span_coordinates(A: torch.Tensor, B: torch.Tensor, *, whiten: bool = True,
                     rcond: float = 1e-10) -> SpanCoordinates:
    """Express both sets in float64 coordinates of the affine span of ``A`` and ``B``.

    The coordinates are ``(x - c) @ to_span`` with ``c`` the mean of all points and
    ``to_span`` (d x r) mapping onto the r-dimensional span of the centred points; with
    ``whiten`` they have identity covariance. Every quantity that is invariant under invertible
    affine maps of both sets (MD-LSM, the separable-subset fraction) is unchanged. A direction
    ``v`` in span coordinates scores points as ``x @ (v @ from_span)`` up to a constant, so
    ``v @ from_span`` is the same direction in the input coordinates. ``r`` is 0 when all points
    coincide.
    """
    X = joined_rows(A, B).to(torch.float64)   # may share memory with A and B: never modified
    Xc, center = centred(X)
    n, d = X.shape
    low, high = torch.aminmax(Xc)
    size = max(-float(low), float(high))
    if not size > 0:
        T = torch.zeros(d, 0, dtype=torch.float64, device=X.device)
        return SpanCoordinates(A, B, T, T.T.clone(), center, T.T.clone())
    V = S = None
    if n >= 4 * d and n * d >= GRAM_MIN_ELEMENTS:
        # many more points than dimensions: the eigenvectors of the d x d Gram matrix are the right
        # singular vectors, at a fraction of the SVD's cost; used only when the spectrum is far from
        # rank-deficient (singular values within 1e-4 of the largest, squared 1e-8, and above rcond:
        # every direction is kept and the eigenvectors are accurate), otherwise the SVD decides the
        # rank. The basis (and so the random starts drawn in it) may differ from the SVD's by signs
        # and rotations within equal singular values; every invariant quantity is unchanged
        # (at unit scale only where the squares could leave the float64 range)
        scale = 1.0 if 1e-100 <= size <= 1e100 else size
        Y = Xc if scale == 1.0 else Xc / scale
        evals, evecs = torch.linalg.eigh(Y.T @ Y)
        if bool(evals[0] > max(1e-8, rcond ** 2) * evals[-1]):   # also every S > rcond * S[0]
            S = evals.flip(0).clamp_min(0).sqrt() * scale
            V = evecs.flip(1)
    if V is None:
        _, S, Vh = torch.linalg.svd(Xc, full_matrices=False)
        keep = S > rcond * S[0]
        S, V = S[keep], Vh[keep].T
    spread = S / (n ** 0.5)
    T = V / spread if whiten else V
    # pinv(T): V has orthonormal columns, so pinv(V diag(1/s)) = diag(s) V^T
    from_input = (V * spread).T.contiguous() if whiten else V.T.contiguous()
    # a direction v in span coordinates scores x as (x - c) @ T @ v, i.e. x @ (T @ v) up to a constant
    return SpanCoordinates(A, B, T, T.T.contiguous(), center, from_input)


def to_span_direction(w: torch.Tensor, coords: SpanCoordinates) -> torch.Tensor:
    """The span-coordinate direction that scores points like the input direction ``w``.

    ``w`` is one direction (d,) or the columns of a (d x k) matrix."""
    # (x - c) @ w = (x - c) @ P @ w for x in the span, and (x - c) = z @ pinv(T); so v = pinv(T) @ w
    return coords.from_input @ w.to(coords.from_input)


def class_pairs(labels: torch.Tensor, pairs: Any, name: str = "pairs",
                classes: Any = None) -> list[tuple[Any, Any, torch.Tensor, torch.Tensor]]:
    """Resolve a pair specification into ``(class_a, class_b, rows_a, rows_b)`` tuples.

    ``pairs`` is ``"ovo"`` (every pair of distinct classes, ``class_a < class_b``), ``"ovr"``
    (each class against the rows of all other classes considered; ``class_b`` is the string
    ``"rest"``) or a list of
    ``(class_a, class_b)`` label pairs. ``rows_*`` index rows of the labelled tensor.

    Examples
    --------
    >>> import torch
    >>> [(a, b) for a, b, _, _ in class_pairs(torch.tensor([0, 1, 2, 1]), "ovo")]
    [(0, 1), (0, 2), (1, 2)]
    """
    present = [int(c) for c in torch.unique(labels).tolist()]
    if classes is not None:
        if isinstance(classes, (torch.Tensor, np.ndarray)):
            classes = classes.tolist()
        if isinstance(classes, (str, bytes)) or not isinstance(classes, (list, tuple, range)):
            raise TypeError(f"classes: expected a sequence of int labels, got {describe(classes)}")
        wanted = [check_int(c, f"classes[{i}]") for i, c in enumerate(classes)]
        missing = [c for c in wanted if c not in present]
        if missing:
            raise ValueError(f"classes: expected labels present in the data {present}, got {missing}")
        present = wanted
    if len(present) < 2:
        raise ValueError(f"labels: expected at least 2 distinct classes, got {len(present)} ({present})")
    rows = {c: torch.nonzero(labels == c).flatten() for c in present}
    if isinstance(pairs, str):
        if pairs == "ovo":
            return [(a, b, rows[a], rows[b]) for i, a in enumerate(present) for b in present[i + 1:]]
        if pairs == "ovr":
            out = []
            for a in present:
                rest = torch.sort(torch.cat([rows[c] for c in present if c != a])).values
                out.append((a, "rest", rows[a], rest))
            return out
        raise ValueError(f"{name}: expected 'ovo', 'ovr' or a list of (class_a, class_b), got {pairs!r}")
    try:
        spec = [(int(a), int(b)) for a, b in pairs]
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected 'ovo', 'ovr' or a list of (class_a, class_b), "
                         f"got {describe(pairs)}") from None
    if not spec:
        raise ValueError(f"{name}: expected at least one pair of classes, got an empty list")
    out = []
    for a, b in spec:
        for c in (a, b):
            if c not in rows:
                raise ValueError(f"{name}: expected classes present in the labels {present}, got {c}")
        if a == b:
            raise ValueError(f"{name}: expected two different classes in each pair, got ({a}, {b})")
        out.append((a, b, rows[a], rows[b]))
    return out
