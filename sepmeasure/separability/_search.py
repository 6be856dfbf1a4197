"""The search machinery that :func:`~sepmeasure.separability.mdlsm.md_lsm` and
:func:`~sepmeasure.separability.subset.separable_subset_fraction` share.

Both measures maximise a count over hyperplanes (pairs of ``A ⊖ B`` for MD-LSM, points of
``A ∪ B`` for the separable subset) and report it with a certified interval: a lower bound
attained by an explicit direction (from an approximate search started from the same candidate
directions), an upper bound from the hull solver's overlap certificates and, for
``method="exact"``, a mixed-integer program through cvxpy + HiGHS. The objectives, surrogates
and programs differ and stay in their modules; the checks, the start directions, the
bookkeeping of the bounds and the reading of HiGHS's answers are here.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from ..validation import check_choice, check_int, check_positive, check_seed, describe
from .hull import HullDistance, HullOptions, count_disjoint_overlaps, hull_distance_core
from .pointsets import SpanCoordinates, joined_rows, to_span_direction
from .probe import logistic_core

METHODS = ("auto", "exact", "approx")

T = TypeVar("T")


# ----------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------

#: Largest ``n_starts`` and ``steps`` of the approximate search (far beyond any useful value; they
#: keep a typo such as ``10**12`` from allocating terabytes).
MAX_STARTS = 10_000
MAX_STEPS = 1_000_000


def check_search_options(method: Any, seed: Any, n_starts: Any, steps: Any,
                         methods: tuple[str, ...] = METHODS) -> tuple[str, int, int, int]:
    """Check ``method`` (one of ``methods``) and the arguments of the approximate search."""
    check_choice(method, "method", methods)
    seed = check_seed(seed)
    n_starts = check_int(n_starts, "n_starts", minimum=0, maximum=MAX_STARTS,
                         why="each start is a direction held and climbed at once")
    steps = check_int(steps, "steps", minimum=0, maximum=MAX_STEPS, why="the climb's schedule is held in memory")
    return method, seed, n_starts, steps


def check_bound_options(time_limit: Any, margin: Any, witnesses: Any) -> tuple[float, float, int]:
    """Check the arguments of the exact program and of the upper bound."""
    time_limit = check_positive(time_limit, "time_limit")
    margin = check_positive(margin, "margin")
    witnesses = check_int(witnesses, "witnesses", minimum=0)
    return time_limit, margin, witnesses


def check_hull_argument(hull: Any, A: torch.Tensor, B: torch.Tensor) -> None:
    """``hull`` is None or a :class:`HullDistance` of sets of the sizes of ``A`` and ``B``."""
    if hull is None:
        return
    if not isinstance(hull, HullDistance):
        raise TypeError(f"hull: expected a HullDistance, got {describe(hull)}")
    if (hull.n_a, hull.n_b, hull.d) != (A.shape[0], B.shape[0], A.shape[1]):
        raise ValueError(f"hull: expected the hull distance of these sets ({A.shape[0]} and {B.shape[0]} points in "
                         f"{A.shape[1]} dimensions), got one of {hull.n_a} and {hull.n_b} points in {hull.d}")


# ----------------------------------------------------------------------------
# Bounds
# ----------------------------------------------------------------------------

def certified_search(A: torch.Tensor, B: torch.Tensor, method: str, hull: HullDistance | None, *, total: int,
                     witnesses: int, approx: Callable[[HullDistance], tuple[int, T]],
                     exact: Callable[[int], tuple[int, T, int | None, str]],
                     certain_loss: int = 0) -> tuple[int, T, int, str]:
    """Best count found with a certified upper bound; returns ``(count, found, upper, status)``.

    ``approx(hull)`` returns an attained count and what attains it (``found``). The count is at
    most ``total`` less the larger of ``certain_loss`` (what no hyperplane can count) and the
    number of point-disjoint overlapping subsets found from ``hull`` (each loses at least one).
    With ``method="exact"`` and the interval still open, ``exact(count)`` returns ``(count,
    found, bound, status)`` of the mixed-integer programs, ``bound`` ``None`` when none was
    proven. ``status`` is ``"optimal"`` once the bounds meet (also when a program stopped at
    its time limit on the way), otherwise the programs' ``"time_limit (...)"`` /
    ``"solver_error: ..."``, or ``"gap"`` (exact) / ``"bounded"`` (approx).
    """
    if hull is None:
        hull = hull_distance_core(A, B, HullOptions())
    best, found = approx(hull)
    # each certificate lowers the bound by one count: looked for only where that can show (>= 1e-5)
    witnesses = witnesses if total <= 100_000 * witnesses else 0
    upper = total - max(certain_loss, count_disjoint_overlaps(A, B, hull, witnesses))
    status = "bounded"
    if method == "exact" and best < upper:
        count, solution, bound, status = exact(best)
        if count > best:
            best, found = count, solution
        if bound is not None:
            upper = min(upper, bound)
    if best >= upper:
        status = "optimal"   # the bounds met: certified whatever stopped a program on the way
    elif not status.startswith(("solver_error", "time_limit")):
        status = "gap" if method == "exact" else "bounded"
    return best, found, max(upper, best), status


# ----------------------------------------------------------------------------
# Approximate search: start directions
# ----------------------------------------------------------------------------

def classifier_directions(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Normals of scikit-learn's ``LogisticRegression()`` and ``LinearSVC()`` (default settings)
    fitted to ``A`` (1) against ``B`` (0) in the input coordinates, as the columns of a (d x k)
    float64 matrix on the points' device (fitted on the CPU; columns that are not finite are
    dropped).

    These are the linear classifiers a user compares a separability measure with, so the measures
    start from exactly them: the value found is never below their in-sample score. Fisher's
    discriminant (LDA) needs no fit: it is the mean difference in whitened span coordinates (see
    :func:`lda_direction`).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC
    from threadpoolctl import threadpool_limits

    X = joined_rows(A, B).to(torch.float64).cpu().numpy()
    y = np.r_[np.ones(A.shape[0]), np.zeros(B.shape[0])]
    # one BLAS thread: the fits are small, and two idle OpenBLAS threads left spinning after them
    # slowed the torch work that follows by up to 2x on two cores (measured: md_lsm at 1000 x 1000
    # points in 128-D)
    with threadpool_limits(limits=1, user_api="blas"):
        fits = [_fit_direction(model, X, y) for model in (LogisticRegression(), LinearSVC())]
    cols = [w for w in fits if w is not None]
    if not cols:
        return torch.zeros(A.shape[1], 0, dtype=torch.float64, device=A.device)
    W = torch.stack(cols, 1).to(A.device)
    return W[:, torch.isfinite(W).all(0) & (W.norm(dim=0) > 0)]


def _fit_direction(model: Any, X: np.ndarray, y: np.ndarray) -> torch.Tensor | None:
    """The normal of a scikit-learn linear classifier fitted to ``X``, ``y`` (None if the fit fails)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # convergence and collinearity warnings: the fit is only a start
        try:
            return torch.as_tensor(model.fit(X, y).coef_.reshape(-1), dtype=torch.float64)
        except (np.linalg.LinAlgError, ValueError):
            return None


def lda_direction(coords: SpanCoordinates) -> torch.Tensor:
    r"""Fisher's discriminant (LDA) of the two sets, in (whitened) span coordinates: the mean difference.

    In coordinates with identity total covariance (``span_coordinates(..., whiten=True)``) the
    pooled within-class covariance is :math:`I - p_a p_b\Delta\Delta^\top` (``Delta`` the
    difference of the class means, ``p`` the class fractions), which maps ``Delta`` onto a
    positive multiple of itself; so LDA's :math:`S_w^{-1}\Delta` is ``Delta``, exactly, with no
    covariance to estimate or system to solve. In the input coordinates (``v @ from_span``) it is
    :math:`\Sigma^{-1}\Delta` restricted to the span, scikit-learn's
    ``LinearDiscriminantAnalysis`` direction when the points span all dimensions.
    """
    A, B = coords.points
    return (A.to(torch.float64).mean(0) - B.to(torch.float64).mean(0)) @ coords.to_span


def start_directions(coords: SpanCoordinates, hull: HullDistance, n_starts: int,
                     gen: torch.Generator, extra: torch.Tensor | None = None) -> torch.Tensor:
    """Candidate directions in (whitened) span coordinates, as the columns of an (r x k) matrix.

    Fisher's discriminant (:func:`lda_direction`, the mean difference of the whitened
    coordinates), a logistic-probe normal, the hull normal, the input-coordinate
    directions ``extra`` (d x k'; e.g. :func:`classifier_directions`) and ``n_starts`` random
    directions; columns that are not finite or are zero are dropped.
    """
    r = coords.rank
    dev = coords.to_span.device
    cols = [lda_direction(coords)]
    # the probe in float32: whitened coordinates are well conditioned, and the normal is only a start
    n_a = coords.points[0].shape[0]
    X = coords.coordinates_in(torch.float32)
    y = torch.cat([torch.ones(n_a, device=dev), torch.zeros(X.shape[0] - n_a, device=dev)])
    w_probe, _ = logistic_core(X, y, l2=1e-4, max_iter=50, dtype=torch.float32)
    cols.append(w_probe.to(torch.float64))
    if hull.normal is not None:
        cols.append(to_span_direction(hull.normal.to(dev), coords))
    if extra is not None:
        cols.extend(to_span_direction(extra.to(dev), coords).T)
    if n_starts:
        cols.extend(torch.randn(r, n_starts, generator=gen, dtype=torch.float64).to(dev).T)
    W = torch.stack(cols, 1)
    W = W[:, torch.isfinite(W).all(0) & (W.norm(dim=0) > 0)]
    return W


# ----------------------------------------------------------------------------
# Exact: reading the mixed-integer programs
# ----------------------------------------------------------------------------

_SOLVED = ("optimal", "optimal_inaccurate")


def highs_options(time_limit: float) -> dict[str, float]:
    """Options of every HiGHS solve: the time limit and a zero relative MIP gap."""
    return {"time_limit": float(time_limit), "mip_rel_gap": 0.0}


def failure_status(problem) -> str:
    """``""`` when cvxpy solved ``problem``, else ``"time_limit (...)"`` or ``"solver_error: ..."``."""
    if problem.status in _SOLVED:
        return ""
    return _unsolved_status(problem)


def _unsolved_status(problem) -> str:
    return f"time_limit ({problem.status})" if problem.status == "user_limit" else f"solver_error: {problem.status}"


def _highs_bound(problem) -> float | None:
    """HiGHS's proven bound on a maximisation solved through cvxpy (None if unavailable)."""
    stats = getattr(problem, "solver_stats", None)
    extra = getattr(stats, "extra_stats", None) if stats is not None else None
    bound = getattr(extra, "mip_dual_bound", None) if extra is not None else None
    if bound is None or not np.isfinite(bound):
        return None
    return -float(bound)


def proven_bound(problem) -> tuple[int | None, str]:
    """Upper bound on the integer count a maximisation can reach, and the failure status.

    The optimum (rounded down) when it was solved, otherwise HiGHS's proven dual bound
    (``None`` if there is none) with ``"time_limit (...)"`` or ``"solver_error: ..."``.
    """
    if problem.status in _SOLVED and problem.value is not None:
        return int(math.floor(float(problem.value) + 1e-6)), ""
    hb = _highs_bound(problem)
    return (int(math.floor(hb + 1e-6)) if hb is not None else None), _unsolved_status(problem)


def unit_sup_norm(w) -> list:
    """Constraints that, with ``-1 <= w <= 1``, make ``max_k |w_k| = 1`` (two binaries per entry)."""
    import cvxpy as cp

    p = cp.Variable(w.shape[0], boolean=True)
    q = cp.Variable(w.shape[0], boolean=True)
    return [w >= 1 - 2 * (1 - p), w <= -1 + 2 * (1 - q), cp.sum(p) + cp.sum(q) >= 1]
