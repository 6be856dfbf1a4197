r"""Distance between the convex hulls of two point sets, with a certified interval.

Zhang et al. 2023 (*Understanding Deep Neural Networks via Linear Separability of Hidden
Layers*, arXiv 2307.13962) study two finite sets :math:`A=\{a_i\}_{i\le n}` and
:math:`B=\{b_j\}_{j\le m}` in :math:`\mathbb{R}^d` through their Minkowski difference
:math:`A\ominus B=\{a_i-b_j\}`: the sets are strictly linearly separable iff
:math:`0\notin\operatorname{conv}(A\ominus B)`. The hull distance

.. math::

    \operatorname{dist}(A, B) = \min_{u\in\operatorname{conv}A,\ v\in\operatorname{conv}B}\|u-v\|
    = \min_{\alpha\in\Delta_n,\ \beta\in\Delta_m}\|A^\top\alpha - B^\top\beta\|
    = \operatorname{dist}(0, \operatorname{conv}(A\ominus B))

is positive iff the sets are strictly separable, and half of it is the hard-margin SVM margin.

Every answer comes with a certified interval ``[lower, upper]``:

* **upper** — :math:`\|z\|` for an explicit point :math:`z = A^\top\alpha - B^\top\beta` of
  :math:`\operatorname{conv}(A\ominus B)` (the weights are returned);
* **lower** — the margin :math:`(\min_i a_i^\top z - \max_j b_j^\top z)/\|z\|` of the
  hyperplane with normal :math:`z`, when positive: every point of the hull then lies at least
  that far from the origin along :math:`z/\|z\|`.

Both bounds are evaluated in float64 from the input points (exact up to float64 rounding of the
dot products, about :math:`10^{-15}` of the data's scale). The two solvers are

* ``"native"`` — a working-set active-set method in torch, on any device: a small set of
  candidate support points is solved exactly (a primal active-set method on the working set:
  equality-constrained proximal steps on the Cholesky factor of its Gram matrix, weights that
  reach zero fixed through a Schur complement, and a QR refinement of the support that recovers
  the direction of the closest point accurately), then grown by the points that violate its
  optimality conditions most. Many pairs of sets drawn from one pool of points (all one-vs-one
  pairs of a layer) are solved together: the full passes over the data for all pairs are one
  matrix product per round. It stops when its certified gap is below ``tol`` and says so in
  ``status`` when it does not get there.
* ``"reference"`` — the same problem as a second-order cone program through cvxpy (Clarabel by
  default), checked with the same certificate.

Both solve at unit scale: the points are divided by a power of two (exactly) that brings their
largest coordinate into [1, 2) and centred, and the distances are multiplied back, so sets of
magnitude 1e-200 or 1e200 get the distances, flags and certificates of the same sets at 1
(a distance beyond float64's range is an ``OverflowError``).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from .._progress import progress_bar, wanted
from ..validation import check_choice, check_features, check_int, check_labels, check_positive, describe
from ._cvx import solve_reporting_status
from ._results import CertifiedResult
from .options import check_option_names, options_from_signature
from .pointsets import check_point_sets, class_pairs, power_of_two_scale

__all__ = ["HullDistance", "HullSolverError", "hull_distance", "pairwise_hull_distances"]
# internal API of the separability package: HullOptions, check_hull_options, hull_distance_core,
# solve_pairs, count_disjoint_overlaps

METHODS = ("auto", "native", "reference")
_QP_ONLY_SOLVERS = {"OSQP", "PIQP", "PROXQP", "QPALM", "DAQP", "QOCO"}
_RIDGE = 1e-10          # relative ridge of the working-set Gram matrix (float64)
_SEPARABLE_FLOOR = 1e-13  # lower bounds below this fraction of the scale are rounding noise


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


# ----------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------

def hull_distance(A: Any, B: Any, *, method: str = "auto", tol: float = 1e-6, zero_tol: float = 1e-9,
                  max_iter: int = 1000, solver: str = "CLARABEL", solver_options: dict | None = None,
                  warm_start: HullDistance | None = None, working_set: int = 64) -> HullDistance:
    r"""Distance between the convex hulls of ``A`` and ``B``, with a certified interval.

    Following Zhang et al. 2023 (arXiv 2307.13962), ``A`` and ``B`` are strictly linearly
    separable iff :math:`0\notin\operatorname{conv}(A\ominus B)`, and

    .. math:: \operatorname{dist}(A,B)=\min_{\alpha\in\Delta_n,\beta\in\Delta_m}
              \|A^\top\alpha-B^\top\beta\| = \operatorname{dist}(0,\operatorname{conv}(A\ominus B)),

    which is positive iff they are separable (twice the hard-margin SVM margin).

    Parameters
    ----------
    A, B : Tensor or array of shape (n, d) and (m, d)
        The two point sets (rows are points), on the same device. Any float dtype; the solver
        and the certificate run in float64.
    method : {"auto", "native", "reference"}, default "auto"
        ``"native"`` (and ``"auto"``): the working-set solver in torch on the input's device.
        ``"reference"``: a second-order cone program through cvxpy on the CPU.
    tol : float, default 1e-6
        Stop when ``upper - lower <= tol * upper``.
    zero_tol : float, default 1e-9
        The hulls count as meeting (``separable=False``) once a point of ``conv(A ⊖ B)`` with
        norm at most ``zero_tol * scale`` is found.
    max_iter : int, default 1000
        Rounds of the native working-set method.
    solver : str, default "CLARABEL"
        cvxpy solver for ``method="reference"``. QP-only solvers (e.g. ``"OSQP"``) get the
        squared-norm form of the problem.
    solver_options : dict, optional
        Passed to ``cvxpy.Problem.solve``.
    warm_start : HullDistance, optional
        A previous result for sets of the same sizes (for instance the same samples one epoch
        earlier): its support starts the working set.
    working_set : int, default 64
        Points added per set and round by the native solver.

    Returns
    -------
    HullDistance
        ``distance``, the certified ``lower`` and ``upper``, ``separable``, a unit ``normal``
        of shape ``(d,)``, the convex ``weights_a`` (n,) and ``weights_b`` (m,), ``status``.

    Raises
    ------
    TypeError
        ``A`` or ``B`` is not a tensor, array or nested list of real numbers; ``tol`` or ``zero_tol``
        is not a real number; ``max_iter`` or ``working_set`` is not an int (bools are refused);
        ``warm_start`` is not a :class:`HullDistance`; with ``method="reference"``, ``solver`` is not a
        string.
    ValueError
        ``A`` or ``B`` is not 2-D, has no rows or has NaN/inf entries; ``B`` has another number of
        columns than ``A`` or lies on another device; ``method`` is not one of ``"auto"``,
        ``"native"``, ``"reference"``; ``tol`` is not a finite number > 0 or ``zero_tol`` not a finite
        number >= 0; ``max_iter`` or ``working_set`` is < 1; ``warm_start`` is a result for sets of
        other sizes; with ``method="reference"``, ``solver`` is not an installed cvxpy solver.
    HullSolverError
        ``method="reference"`` and the cvxpy solver fails, ends with a status other than
        ``"optimal"``/``"optimal_inaccurate"`` or returns weights that are not a convex combination
        (no distance is returned then).

    Examples
    --------
    >>> import torch
    >>> A = torch.tensor([[2.0, 0.0], [3.0, 1.0]])
    >>> B = torch.tensor([[0.0, 0.0], [-1.0, 1.0]])
    >>> r = hull_distance(A, B)
    >>> round(r.distance, 6), r.separable, r.lower <= 2.0 <= r.upper
    (2.0, True, True)
    >>> hull_distance(A, torch.cat([B, A])).separable
    False
    """
    A, B = check_point_sets(A, B)
    options = check_hull_options(method=method, tol=tol, zero_tol=zero_tol, max_iter=max_iter, solver=solver,
                                 solver_options=solver_options, working_set=working_set)
    if warm_start is not None:
        if not isinstance(warm_start, HullDistance):
            raise TypeError(f"warm_start: expected a HullDistance, got {describe(warm_start)}")
        if (warm_start.n_a, warm_start.n_b) != (A.shape[0], B.shape[0]):
            raise ValueError(f"warm_start: expected a result for sets of sizes ({A.shape[0]}, {B.shape[0]}), "
                             f"got one for ({warm_start.n_a}, {warm_start.n_b})")
    return hull_distance_core(A, B, options, warm_start=warm_start)


HullOptions = options_from_signature("HullOptions", hull_distance, exclude=("A", "B", "warm_start"))


def check_hull_options(**given: Any) -> Any:
    """Check the options of :func:`hull_distance` (any subset, by name); return a ``HullOptions``.

    Unknown names are a ``TypeError``. ``solver`` is checked only for ``method="reference"``
    (where it is used).
    """
    check_option_names(given, HullOptions, "hull_distance")
    o = HullOptions(**given)
    check_choice(o.method, "method", METHODS)
    tol = check_positive(o.tol, "tol")
    zero_tol = check_positive(o.zero_tol, "zero_tol", strict=False)
    max_iter = check_int(o.max_iter, "max_iter", minimum=1)
    working_set = check_int(o.working_set, "working_set", minimum=1)
    if o.method == "reference":
        _check_solver(o.solver)
    if o.solver_options is not None and not isinstance(o.solver_options, dict):
        raise TypeError(f"solver_options: expected a dict of cvxpy solve options, got {describe(o.solver_options)}")
    return dataclasses.replace(o, tol=tol, zero_tol=zero_tol, max_iter=max_iter, working_set=working_set)


def hull_distance_core(A: torch.Tensor, B: torch.Tensor, options: Any,
                       warm_start: HullDistance | None = None) -> HullDistance:
    """:func:`hull_distance` of checked point sets with checked ``HullOptions`` (no checks here)."""
    n = A.shape[0]
    X = torch.cat([A, B]).to(torch.float64)
    rows_a = torch.arange(n, device=X.device)
    rows_b = torch.arange(n, X.shape[0], device=X.device)
    return solve_pairs(X, [(rows_a, rows_b)], options, warm=[warm_start])[0]


def solve_pairs(X: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]], options: Any, *,
                progress: bool = False, warm: list | None = None) -> list[HullDistance]:
    """Hull distances of the pairs ``(rows_a, rows_b)`` of the checked pool ``X`` (no checks here).

    ``options`` is a checked ``HullOptions``: the native solver runs all pairs together, the
    reference solver one pair after the other. Both solve at unit scale: the pool is divided by
    a power of two (exactly) so that its largest coordinate lies in [1, 2), and each solver
    centres the points (a common shift); distances, bounds, scales and offsets are multiplied
    back, so results do not depend on the magnitude of the data (an ``OverflowError`` says when
    a distance does not fit in float64). Used by :func:`hull_distance`,
    :func:`pairwise_hull_distances`, the per-layer tables and the callback.
    """
    X64 = X.to(torch.float64)
    s = power_of_two_scale(X64)
    Xs = X64 / s
    if options.method == "reference":
        results = [_reference(Xs[ra], Xs[rb], tol=options.tol, zero_tol=options.zero_tol, solver=options.solver,
                              solver_options=options.solver_options)
                   for ra, rb in progress_bar(pairs, progress=progress, desc="hull distance (reference)", leave=False)]
    else:
        results = _native_many(Xs, pairs, tol=options.tol, zero_tol=options.zero_tol, max_iter=options.max_iter,
                               add=options.working_set, warm=warm, progress=progress)
    return [_rescaled(r, s, X64[ra], X64[rb]) for r, (ra, rb) in zip(results, pairs)]


def _rescaled(r: HullDistance, s: float, A64: torch.Tensor, B64: torch.Tensor) -> HullDistance:
    """A unit-scale result for the sets ``A64 / s`` and ``B64 / s`` as a result for ``A64`` and ``B64``."""
    values = {name: getattr(r, name) * s for name in ("distance", "lower", "upper", "scale")}
    over = [name for name, v in values.items() if math.isinf(v) and math.isfinite(getattr(r, name))]
    if over:
        raise OverflowError(f"A, B: the hull {over[0]} of these point sets, {getattr(r, over[0])!r} x {s!r}, "
                            f"overflows float64 (largest {torch.finfo(torch.float64).max:.4g}); divide both sets "
                            f"by a common factor")
    offset = r.offset
    if r.normal is not None:
        offset = float((A64 @ r.normal).min() / 2 + (B64 @ r.normal).max() / 2)
    return dataclasses.replace(r, offset=offset, **values)


def pairwise_hull_distances(features: Any, labels: Any, pairs: Any = "ovo", *, classes: Any = None,
                            method: str = "auto", tol: float = 1e-6, zero_tol: float = 1e-9,
                            max_iter: int = 1000, solver: str = "CLARABEL", solver_options: dict | None = None,
                            working_set: int = 64, progress: bool = True) -> dict[tuple, HullDistance]:
    """Hull distances for many pairs of classes of one labelled point set, solved together.

    The native solver runs all pairs at once: in each round every pair solves its small
    working-set problem, then the scores of every point for every pair come from a single
    matrix product. Definitions, tolerances and certificates are those of :func:`hull_distance`
    (Zhang et al. 2023, arXiv 2307.13962).

    Parameters
    ----------
    features : Tensor or array of shape (N, d)
        The labelled points (rows), any float dtype; the solver runs in float64 on their device.
    labels : Tensor or array of shape (N,)
        Integer class labels, one per row of ``features``.
    pairs : "ovo", "ovr" or list of (class_a, class_b), default "ovo"
        One-vs-one (every pair ``a < b``), one-vs-rest (``class_b == "rest"``) or explicit pairs.
    classes : sequence of int, optional
        Restrict to these classes (default: every class in ``labels``).
    method, tol, zero_tol, max_iter, solver, solver_options, working_set
        As in :func:`hull_distance` (same defaults); ``"reference"`` solves the pairs one after the
        other.
    progress : bool, default True
        Progress bar over rounds (native) or pairs (reference), on a terminal or in a notebook
        after a second.

    Returns
    -------
    dict
        ``{(class_a, class_b): HullDistance}`` in the order of the pairs.

    Raises
    ------
    TypeError
        ``features`` or ``labels`` is not a tensor, array or nested list of numbers (``features``
        complex, ``labels`` boolean or complex); ``tol`` or ``zero_tol`` is not a real number;
        ``max_iter`` or ``working_set`` is not an int (bools are refused); ``progress`` is not a
        bool; with ``method="reference"``, ``solver`` is not a string.
    ValueError
        ``features`` is not 2-D, has no rows or has NaN/inf entries; ``labels`` is not 1-D, holds
        non-integer values or is not one label per row of ``features``; ``method``, ``tol``,
        ``zero_tol``, ``max_iter`` or ``working_set`` is out of range (as in :func:`hull_distance`);
        ``classes`` names a label absent from ``labels``; fewer than 2 classes are left; ``pairs``
        is not ``"ovo"``, ``"ovr"`` or a list of pairs, is an empty list, or has a pair with a class
        absent from the labels or the same class twice; with ``method="reference"``, ``solver`` is
        not an installed cvxpy solver.
    HullSolverError
        ``method="reference"`` and the cvxpy solver fails on a pair (see :func:`hull_distance`).

    Examples
    --------
    >>> import torch
    >>> X = torch.tensor([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0], [3.0, 1.0], [0.0, 5.0], [1.0, 6.0]])
    >>> y = torch.tensor([0, 0, 1, 1, 2, 2])
    >>> res = pairwise_hull_distances(X, y)
    >>> {k: round(v.distance, 4) for k, v in res.items()}
    {(0, 1): 3.0, (0, 2): 4.0, (1, 2): 5.0}
    """
    X = check_features(features, "features", ndim=2)
    y = check_labels(labels, "labels", n=X.shape[0], n_name="features", device=X.device)
    options = check_hull_options(method=method, tol=tol, zero_tol=zero_tol, max_iter=max_iter, solver=solver,
                                 solver_options=solver_options, working_set=working_set)
    wanted(progress)  # checks the argument before any work
    spec = class_pairs(y, pairs, classes=classes)
    results = solve_pairs(X, [(ra, rb) for _, _, ra, rb in spec], options, progress=progress)
    return {(a, b): r for (a, b, _, _), r in zip(spec, results)}


# ----------------------------------------------------------------------------
# Native solver: working set, active set, certificate
# ----------------------------------------------------------------------------

class _NumericalFailure(Exception):
    pass


class _WorkingSet:
    """The small problem of one pair: ``min |sum_k x_k y_k|`` over the working set ``F``.

    ``y_k = s_k (x_{F_k} - c)`` are the signed, centred points (``s = +1`` for A, ``-1`` for B),
    ``x`` lies on the product of the two simplices (one per set). ``H`` is the Gram matrix of
    the ``y_k``. The solve is a primal active-set method from the current feasible ``x``:
    equality-constrained proximal steps on the free variables, a ratio test when a weight
    would turn negative, and released constraints added through a Schur complement so that
    the Cholesky factor of ``H + eps I`` is reused until many constraints have changed.
    """

    def __init__(self, X: torch.Tensor, center: torch.Tensor, F: torch.Tensor, in_b: torch.Tensor,
                 x: torch.Tensor) -> None:
        self.X, self.center = X, center
        self.F, self.in_b, self.x = F, in_b, x
        Y = self.points(F, in_b)
        self.H = Y @ Y.T
        self.steps = 0

    def points(self, F: torch.Tensor, in_b: torch.Tensor) -> torch.Tensor:
        sign = 1.0 - 2.0 * in_b.to(self.X.dtype)
        return sign[:, None] * (self.X[F] - self.center)

    def add(self, F: torch.Tensor, in_b: torch.Tensor) -> None:
        Yn = self.points(F, in_b)
        Hn = Yn @ self.points(self.F, self.in_b).T
        self.H = torch.cat([torch.cat([self.H, Hn.T], 1), torch.cat([Hn, Yn @ Yn.T], 1)], 0)
        self.F = torch.cat([self.F, F])
        self.in_b = torch.cat([self.in_b, in_b])
        self.x = torch.cat([self.x, self.x.new_zeros(F.numel())])

    def keep(self, keep: torch.Tensor) -> None:
        self.F, self.in_b, self.x = self.F[keep], self.in_b[keep], self.x[keep]
        self.H = self.H[keep][:, keep]

    def z(self, x: torch.Tensor | None = None) -> torch.Tensor:
        return self.points(self.F, self.in_b).T @ (self.x if x is None else x)

    def normalise(self) -> None:
        x = self.x.clamp_min(0)
        sa = x[~self.in_b].sum()
        sb = x[self.in_b].sum()
        self.x = torch.where(self.in_b, x / sb, x / sa)

    def solve(self, n_prox: int = 30) -> torch.Tensor:
        """Minimise over the working set from the current feasible ``x``; return ``z``."""
        dev, dt = self.X.device, self.X.dtype
        for _refactor in range(10_000):
            K = self.F.numel()
            E = torch.stack([~self.in_b, self.in_b]).to(dt)
            scale = float(self.H.diagonal().mean())
            eye = torch.eye(K, dtype=dt, device=dev)
            eps = _RIDGE * scale if scale > 0 else 1.0
            for _ in range(6):
                L, info = torch.linalg.cholesky_ex(self.H + eps * eye)
                if int(info) == 0:
                    break
                eps *= 100.0
            else:
                raise _NumericalFailure("the working-set Gram matrix could not be factorised")
            Zc = torch.cholesky_solve(E.T.contiguous(), L)
            removed: list[int] = []
            x = self.x
            active = torch.ones(K, dtype=torch.bool, device=dev)
            refactor = False
            for _minor in range(20 * K + 100):
                S = torch.cat([E @ Zc, Zc[removed, :]], 0) if removed else E @ Zc
                Sfac, info = torch.linalg.cholesky_ex(S)
                if int(info) != 0:
                    raise _NumericalFailure("the working-set constraints became dependent")
                rhs_c = torch.zeros(S.shape[0], dtype=dt, device=dev)
                rhs_c[:2] = 1.0
                neg = None
                for _ in range(n_prox):
                    self.steps += 1
                    v = torch.cholesky_solve((eps * x)[:, None], L)[:, 0]
                    Cv = torch.cat([E @ v, v[removed]]) if removed else E @ v
                    kappa = torch.cholesky_solve((rhs_c - Cv)[:, None], Sfac)[:, 0]
                    y = v + Zc @ kappa
                    if removed:
                        y[removed] = 0.0
                    neg = active & (y <= 0)
                    if bool(neg.any()):
                        break
                    change = float((y - x).abs().max())
                    x = y
                    neg = None
                    if change <= 1e-15 * float(x.max()):
                        break
                if neg is None:
                    break
                ratios = torch.where(neg, x / (x - y).clamp_min(1e-300), torch.full_like(x, math.inf))
                j = int(ratios.argmin())
                t = ratios[j]
                x = (x + t * (y - x)).clamp_min(0)
                hit = torch.nonzero(neg & (x <= 0)).flatten().tolist()
                if j not in hit:
                    hit.append(j)
                x[hit] = 0.0
                active[hit] = False
                removed.extend(hit)
                if len(removed) > max(8, K // 8):
                    refactor = True
                    break
                e = torch.zeros(K, len(hit), dtype=dt, device=dev)
                e[hit, torch.arange(len(hit), device=dev)] = 1.0
                Zc = torch.cat([Zc, torch.cholesky_solve(e, L)], 1)
            else:
                raise _NumericalFailure("the active-set loop did not settle")
            self.x = x
            if removed:
                self.keep(active)
            if not refactor:
                break
        self.normalise()
        return self.z()

    def polish(self, max_steps: int = 20) -> bool:
        """Re-solve on the support by QR, dropping points that leave the simplex; True if ``x`` changed.

        The Gram matrix squares the condition number; the direction of ``z`` (which the lower
        bound needs) is recovered accurately from a QR factorisation of the support's affine
        differences, with a small proximal term towards the current weights. When the solution
        leaves the simplex, a ratio-test step is taken and the blocking points are dropped.
        """
        changed = False
        for _ in range(max_steps):
            x, in_b = self.x, self.in_b
            ia = torch.nonzero(~in_b).flatten()
            ib = torch.nonzero(in_b).flatten()
            a0 = ia[x[ia].argmax()]
            b0 = ib[x[ib].argmax()]
            oa, ob = ia[ia != a0], ib[ib != b0]
            if oa.numel() + ob.numel() == 0:
                return changed
            Y = self.points(self.F, in_b)
            D = torch.cat([Y[oa] - Y[a0], Y[ob] - Y[b0]], 0).T
            c0 = Y[a0] + Y[b0]
            t0 = torch.cat([x[oa], x[ob]])
            p = D.shape[1]
            s = float(D.norm(dim=0).max()) * 1e-7
            M = torch.cat([D, s * torch.eye(p, dtype=D.dtype, device=D.device)], 0)
            rhs = torch.cat([-c0, s * t0])
            Q, R = torch.linalg.qr(M)
            if not bool(R.diagonal().abs().min() > 0):
                return changed
            t = torch.linalg.solve_triangular(R, (Q.T @ rhs)[:, None], upper=True)[:, 0]
            y = torch.zeros_like(x)
            y[oa] = t[: oa.numel()]
            y[ob] = t[oa.numel():]
            y[a0] = 1 - y[oa].sum()
            y[b0] = 1 - y[ob].sum()
            if not bool(torch.isfinite(y).all()):
                return changed
            neg = y <= 0
            if not bool(neg.any()):
                self.x = y
                return True
            ratios = torch.where(neg, x / (x - y).clamp_min(1e-300), torch.full_like(x, math.inf))
            j = int(ratios.argmin())
            x = (x + ratios[j] * (y - x)).clamp_min(0)
            x[j] = 0.0
            self.x = x
            self.keep(x > 0)
            self.normalise()
            changed = True
        return changed


class _PairState:
    def __init__(self, rows_a: torch.Tensor, rows_b: torch.Tensor, X: torch.Tensor) -> None:
        self.rows_a, self.rows_b = rows_a, rows_b
        self.n, self.m = rows_a.numel(), rows_b.numel()
        pts = X[torch.cat([rows_a, rows_b])]
        self.center = pts.mean(0)
        self.scale = float((pts - self.center).norm(dim=1).max())
        self.lower, self.upper = 0.0, math.inf
        self.best_lower_z: torch.Tensor | None = None
        self.best_upper: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.prev_upper = math.inf
        self.idle = 0
        self.rounds = 0
        self.status = ""
        self.ws: _WorkingSet | None = None


def _initial_working_set(st: _PairState, X: torch.Tensor, k0: int, warm: HullDistance | None) -> _WorkingSet:
    dev = X.device
    Xa, Xb = X[st.rows_a], X[st.rows_b]
    w = Xa.mean(0) - Xb.mean(0)
    if warm is not None and warm.normal is not None and warm.normal.shape[0] == X.shape[1]:
        w = warm.normal.to(X)
    sa, sb = Xa @ w, Xb @ w
    ia = sa.topk(min(k0, st.n), largest=False).indices
    ib = sb.topk(min(k0, st.m), largest=True).indices
    if warm is not None:
        ia = torch.unique(torch.cat([ia, torch.nonzero(warm.weights_a.to(dev) > 0).flatten()]))
        ib = torch.unique(torch.cat([ib, torch.nonzero(warm.weights_b.to(dev) > 0).flatten()]))
    F = torch.cat([st.rows_a[ia], st.rows_b[ib]])
    in_b = torch.cat([torch.zeros(ia.numel(), dtype=torch.bool, device=dev),
                      torch.ones(ib.numel(), dtype=torch.bool, device=dev)])
    x = torch.cat([torch.full((ia.numel(),), 1.0 / ia.numel(), dtype=X.dtype, device=dev),
                   torch.full((ib.numel(),), 1.0 / ib.numel(), dtype=X.dtype, device=dev)])
    return _WorkingSet(X, st.center, F, in_b, x)


def _native_many(X: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]], *, tol: float, zero_tol: float,
                 max_iter: int, add: int, warm: list | None, progress: bool = False, k0: int | None = None
                 ) -> list[HullDistance]:
    """Solve every pair ``(rows_a, rows_b)`` of the pool ``X`` with the working-set method."""
    start = time.perf_counter()
    dev = X.device
    d = X.shape[1]
    X64 = X.to(torch.float64)
    mean = X64.mean(0)
    Xw = X64 - mean
    basis = None
    if d > 2 * Xw.shape[0]:          # work in the span of the points: same inner products, fewer columns
        basis, R = torch.linalg.qr(Xw.T)
        Xw = R.T.contiguous()
    if k0 is None:   # initial extreme points per set: more in wider spaces, where supports are larger
        k0 = min(64, max(8, Xw.shape[1] // 8))
    states = [_PairState(ra.to(dev), rb.to(dev), Xw) for ra, rb in pairs]
    warm = warm or [None] * len(states)
    for st, w0 in zip(states, warm):
        if w0 is not None and basis is not None and w0.normal is not None:
            w0 = None
        st.ws = _initial_working_set(st, Xw, k0, w0)
    todo = list(range(len(states)))
    bar = progress_bar(desc="hull distance", unit="round", progress=progress, total=None, leave=False)
    try:
        while todo:
            zs = []
            alive = []
            for k in todo:
                st = states[k]
                try:
                    zs.append(st.ws.solve())
                    alive.append(k)
                except _NumericalFailure:
                    st.status = "numerical_error"
                    st.ws.normalise()
                    z = st.ws.z()
                    _certify(st, z, Xw[st.rows_a] @ z, Xw[st.rows_b] @ z)
            if not alive:
                break
            S = Xw @ torch.stack(zs, 1)
            nxt = []
            for col, k in enumerate(alive):
                st = states[k]
                st.rounds += 1
                if _round(st, zs[col], S[:, col], Xw, tol=tol, zero_tol=zero_tol, add=add):
                    continue
                if st.rounds >= max_iter:
                    st.status = "max_iter"
                    continue
                nxt.append(k)
            todo = nxt
            bar.update(1)
            bar.set_postfix(pairs_left=len(todo))
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    return [_finish(st, X64, mean, basis, tol, zero_tol, seconds) for st in states]


def _certify(st: _PairState, z: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor) -> float:
    """Update the certified bounds with the point ``z`` and the hyperplane with normal ``z``."""
    nz = float(z.norm())
    if nz < st.upper:
        st.upper = nz
        ws = st.ws
        st.best_upper = (ws.F.clone(), ws.in_b.clone(), ws.x.clone(), z.clone())
    if nz > 0:
        lo = float(sa.min() - sb.max()) / nz
        if lo > st.lower:
            st.lower = lo
            st.best_lower_z = z.clone()
    return nz


def _done(st: _PairState, tol: float, zero_tol: float) -> bool:
    if st.upper <= zero_tol * st.scale:
        return True
    return st.lower > _SEPARABLE_FLOOR * st.scale and st.upper - st.lower <= tol * st.upper


def _round(st: _PairState, z: torch.Tensor, scores: torch.Tensor, Xw: torch.Tensor, *, tol: float,
           zero_tol: float, add: int) -> bool:
    """One round for one pair after its working-set solve; True when the pair is finished."""
    sa, sb = scores[st.rows_a], scores[st.rows_b]
    nz = _certify(st, z, sa, sb)
    if _done(st, tol, zero_tol):
        st.status = "converged"
        return True
    ws = st.ws
    stagnant = (st.prev_upper - nz) <= 1e-3 * tol * nz or st.idle > 0
    st.prev_upper = nz
    if stagnant and ws.polish():
        zp = ws.z()
        if float(zp.norm()) <= nz * (1 + 1e-12):
            z = zp
            sa, sb = Xw[st.rows_a] @ z, Xw[st.rows_b] @ z
            nz = _certify(st, z, sa, sb)
            if _done(st, tol, zero_tol):
                st.status = "converged"
                return True
    cz = float(st.center @ z)
    ua = sa - cz            # signed, centred scores; optimality: every score >= its set's level
    ub = -(sb - cz)
    uF = ws.points(ws.F, ws.in_b) @ z
    lam_a = float(uF[~ws.in_b].min())
    lam_b = float(uF[ws.in_b].min())
    tolv = 1e-13 * st.scale * max(nz, 1e-300)
    new_f, new_b = [], []
    for rows, u, lam, flag in ((st.rows_a, ua, lam_a, False), (st.rows_b, ub, lam_b, True)):
        mu = u - lam
        member = torch.isin(rows, ws.F[ws.in_b == flag])
        mu = mu.masked_fill(member, math.inf)
        vals, idx = mu.topk(min(add, rows.numel()), largest=False)
        idx = idx[vals < -tolv]
        new_f.append(rows[idx])
        new_b.append(torch.full((idx.numel(),), flag, dtype=torch.bool, device=rows.device))
    F_new = torch.cat(new_f)
    if F_new.numel():
        ws.add(F_new, torch.cat(new_b))
        st.idle = 0
    else:
        st.idle += 1
        if st.idle >= 3:
            st.status = "stalled"
            return True
    return False


def _finish(st: _PairState, X64: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor | None, tol: float,
            zero_tol: float, seconds: float) -> HullDistance:
    dev = X64.device
    n, m = st.n, st.m
    wa = torch.zeros(n, dtype=torch.float64, device=dev)
    wb = torch.zeros(m, dtype=torch.float64, device=dev)
    if st.best_upper is not None:
        F, in_b, x, _ = st.best_upper
        pos_a = torch.searchsorted(st.rows_a, F[~in_b]) if _sorted(st.rows_a) else _positions(st.rows_a, F[~in_b])
        pos_b = torch.searchsorted(st.rows_b, F[in_b]) if _sorted(st.rows_b) else _positions(st.rows_b, F[in_b])
        wa[pos_a] = x[~in_b]
        wb[pos_b] = x[in_b]
    upper = st.upper if math.isfinite(st.upper) else math.nan
    meets = st.upper <= zero_tol * st.scale
    lower = 0.0 if meets else max(st.lower, 0.0)
    separable = False if meets else (True if lower > _SEPARABLE_FLOOR * st.scale else None)
    if separable and st.best_lower_z is not None:
        zdir = st.best_lower_z
    else:
        zdir = st.best_upper[3] if st.best_upper is not None else None
    normal, offset = None, math.nan
    if zdir is not None and float(zdir.norm()) > 0:
        normal = zdir / zdir.norm()
        if basis is not None:
            normal = basis @ normal
            normal = normal / normal.norm()
        Xa, Xb = X64[st.rows_a], X64[st.rows_b]
        offset = float((Xa @ normal).min() + (Xb @ normal).max()) / 2
    status = st.status or "max_iter"
    if status == "converged" and not _done(st, tol, zero_tol):
        status = "stalled"
    return HullDistance(distance=upper, lower=lower, upper=upper, separable=separable, normal=normal, offset=offset,
                        weights_a=wa, weights_b=wb, iterations=st.rounds, method="native", status=status, tol=tol,
                        zero_tol=zero_tol, scale=st.scale, n_a=n, n_b=m, d=X64.shape[1], seconds=seconds)


def _sorted(rows: torch.Tensor) -> bool:
    return rows.numel() < 2 or bool((rows[1:] > rows[:-1]).all())


def _positions(rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(rows)
    return order[torch.searchsorted(rows[order], values)]


# ----------------------------------------------------------------------------
# Reference solver (cvxpy)
# ----------------------------------------------------------------------------

def _check_solver(solver: Any) -> None:
    import cvxpy as cp

    if not isinstance(solver, str):
        raise TypeError(f"solver: expected a cvxpy solver name, got {describe(solver)}")
    if solver.upper() not in cp.installed_solvers():
        raise ValueError(f"solver: expected one of the installed cvxpy solvers {cp.installed_solvers()}, "
                         f"got {solver!r}")


def _reference(A: torch.Tensor, B: torch.Tensor, *, tol: float, zero_tol: float, solver: str,
               solver_options: dict | None) -> HullDistance:
    """Solve the hull-distance SOCP with cvxpy and certify its answer like the native solver."""
    import cvxpy as cp
    import numpy as np

    name = solver.upper()
    start = time.perf_counter()
    A64, B64 = A.to(torch.float64), B.to(torch.float64)
    mean = torch.cat([A64, B64]).mean(0)
    Ac = (A64 - mean).cpu().numpy()
    Bc = (B64 - mean).cpu().numpy()
    n, m = Ac.shape[0], Bc.shape[0]
    a = cp.Variable(n, nonneg=True)
    b = cp.Variable(m, nonneg=True)
    diff = Ac.T @ a - Bc.T @ b
    objective = cp.sum_squares(diff) if name in _QP_ONLY_SOLVERS else cp.norm(diff, 2)
    problem = cp.Problem(cp.Minimize(objective), [cp.sum(a) == 1, cp.sum(b) == 1])
    try:
        solve_reporting_status(problem, solver_options or {}, solver=name)
    except cp.error.SolverError as exc:
        raise HullSolverError(f"solver {name} failed on the hull-distance problem: {exc}") from exc
    status = problem.status
    if status not in ("optimal", "optimal_inaccurate") or a.value is None or b.value is None:
        raise HullSolverError(f"solver {name} returned status {status!r}; no distance is reported")
    alpha = torch.as_tensor(np.clip(a.value, 0, None), dtype=torch.float64, device=A.device)
    beta = torch.as_tensor(np.clip(b.value, 0, None), dtype=torch.float64, device=A.device)
    if not (float(alpha.sum()) > 0 and float(beta.sum()) > 0):
        raise HullSolverError(f"solver {name} returned weights that are not a convex combination")
    alpha, beta = alpha / alpha.sum(), beta / beta.sum()
    Acd, Bcd = A64 - mean, B64 - mean
    z = Acd.T @ alpha - Bcd.T @ beta
    nz = float(z.norm())
    scale = float(torch.cat([Acd, Bcd]).norm(dim=1).max())
    meets = nz <= zero_tol * scale
    lower = 0.0
    normal, offset = None, math.nan
    if nz > 0:
        normal = z / nz
        lower = 0.0 if meets else max(0.0, float((Acd @ normal).min() - (Bcd @ normal).max()))
        offset = float((A64 @ normal).min() + (B64 @ normal).max()) / 2
    separable = False if meets else (True if lower > _SEPARABLE_FLOOR * scale else None)
    stats = problem.solver_stats
    iterations = int(stats.num_iters) if stats is not None and stats.num_iters is not None else 0
    return HullDistance(distance=nz, lower=lower, upper=nz, separable=separable, normal=normal, offset=offset,
                        weights_a=alpha, weights_b=beta, iterations=iterations, method=f"reference ({name})",
                        status=status, tol=tol, zero_tol=zero_tol, scale=scale, n_a=n, n_b=m, d=A.shape[1],
                        seconds=time.perf_counter() - start)


# ----------------------------------------------------------------------------
# Overlap certificates for upper bounds of the other measures
# ----------------------------------------------------------------------------

def count_disjoint_overlaps(A: torch.Tensor, B: torch.Tensor, first: HullDistance, max_count: int) -> int:
    """Count point-disjoint subsets ``(S_A, S_B)`` whose hulls meet, found greedily.

    Starts from ``first`` (a result for ``A`` and ``B`` with ``separable=False``): its support is
    one such subset; the support is removed and the hull distance of the remaining points is
    solved again, until the rest is not certified to overlap or ``max_count`` subsets are found.
    For every direction, each subset contains a pair ``(a, b)`` with ``w @ a <= w @ b``; so
    every linear classifier drops at least one point of each subset, and every direction leaves
    at least one pair of each subset uncounted. "Meet" is up to the hull tolerance ``zero_tol``.
    """
    if max_count <= 0 or first.separable is not False:
        return 0
    dev = A.device
    keep_a = torch.ones(A.shape[0], dtype=torch.bool, device=dev)
    keep_b = torch.ones(B.shape[0], dtype=torch.bool, device=dev)
    ia = torch.arange(A.shape[0], device=dev)
    ib = torch.arange(B.shape[0], device=dev)
    res, count = first, 0
    while True:
        count += 1
        keep_a[ia[res.weights_a.to(dev) > 0]] = False
        keep_b[ib[res.weights_b.to(dev) > 0]] = False
        if count >= max_count or not bool(keep_a.any()) or not bool(keep_b.any()):
            return count
        ia = torch.nonzero(keep_a).flatten()
        ib = torch.nonzero(keep_b).flatten()
        res = hull_distance_core(A[ia], B[ib], check_hull_options(tol=first.tol, zero_tol=first.zero_tol))
        if res.separable is not False:
            return count
