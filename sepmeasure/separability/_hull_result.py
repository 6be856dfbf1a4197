"""The result and error of the hull-distance solvers (internal: re-exported by :mod:`.hull`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._results import CertifiedResult

__all__ = ["HullDistance", "HullSolverError", "SEPARABLE_FLOOR"]

SEPARABLE_FLOOR = 1e-13  # lower bounds below this fraction of the scale are rounding noise


class HullSolverError(RuntimeError):
    """A solver failed and no certified distance could be formed."""


@dataclass(frozen=True, eq=False, repr=False)
class HullDistance(CertifiedResult):
    """Distance between ``conv(A)`` and ``conv(B)`` with a certified interval.

    Attributes
    ----------
    distance : float
        The best attained value, equal to ``upper``: the length of an explicit point
        ``z = A.T @ weights_a - B.T @ weights_b`` of ``conv(A ⊖ B)``.
    lower, upper : float
        Certified bounds on the true distance (see the module notes). ``lower`` is 0 unless a
        separating hyperplane with a positive margin was found.
    separable : bool or None
        ``True`` when ``lower > 0`` (a strictly separating hyperplane is exhibited; margins below
        ``1e-13 * scale``, float64 rounding level, do not count), ``False`` when ``upper <=
        zero_tol * scale`` (a convex combination of the points of ``A ⊖ B`` lies that close to
        the origin: the hulls meet up to that tolerance), ``None`` when neither was established.
    normal : Tensor of shape (d,) or None
        Unit normal (float64, on the input device) pointing from ``B`` to ``A``: of the
        hyperplane that certifies ``lower`` when the sets are separable, otherwise ``z/|z|``;
        ``None`` when ``z = 0``.
    offset : float
        Threshold midway between the two sets along ``normal``: ``A`` lies on ``x @ normal >
        offset`` when separable.
    weights_a, weights_b : Tensor of shape (n,) and (m,)
        Convex weights (float64, on the input device) of the closest points
        ``u = A.T @ weights_a`` and ``v = B.T @ weights_b``.
    iterations : int
        Rounds of the working-set method (native) or solver iterations (reference).
    method : str
        ``"native"`` or ``"reference (SOLVER)"``.
    status : str
        ``"converged"`` (gap within tolerance, or the hulls meet), ``"max_iter"``,
        ``"stalled"`` or ``"numerical_error"`` (native: the interval is still certified but
        wider than asked), or the cvxpy status for the reference (``"optimal"``,
        ``"optimal_inaccurate"``).
    tol, zero_tol, scale : float
        Relative gap asked for, the tolerance for "the hulls meet" and the scale it is
        relative to (largest distance of a point from the mean of ``A ∪ B``).
    n_a, n_b, d : int
    seconds : float
    """

    distance: float
    lower: float
    upper: float
    separable: bool | None
    normal: torch.Tensor | None
    offset: float
    weights_a: torch.Tensor
    weights_b: torch.Tensor
    iterations: int
    method: str
    status: str
    tol: float
    zero_tol: float
    scale: float
    n_a: int
    n_b: int
    d: int
    seconds: float

    _tensor_fields = ("normal", "weights_a", "weights_b")
    _repr_fields = ("distance", "lower", "upper", "separable", "method", "status", "iterations", "n_a", "n_b", "d")

    @property
    def margin(self) -> float:
        """Hard-margin SVM margin, half of ``distance``."""
        return self.distance / 2

    @property
    def converged(self) -> bool:
        """Whether the solver reached its tolerance."""
        return self.status in ("converged", "optimal")
