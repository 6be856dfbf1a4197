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
  pairs of a layer) are solved together: every round solves the working-set problems of all
  pairs in one batched solve (block principal pivoting on batched Cholesky factors, module
  ``_hull_batched``) and scores every point for every pair in one matrix product; the few pairs
  that stall there (and single pairs, faster alone) continue with the one-pair rounds above
  (module ``_hull_native``). It stops when its certified gap is below ``tol`` and says so in
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
from typing import Any

import torch

from .._progress import progress_bar, wanted
from ..validation import check_choice, check_features, check_int, check_labels, check_positive, describe
from ._hull_batched import batched_rounds, finish_batch, states_left
from ._hull_native import PairState, finish_pair, initial_working_set, one_pair_rounds, take_rows
from ._hull_reference import check_solver, solve_reference
from ._hull_result import HullDistance, HullSolverError
from .options import check_option_names, options_from_signature
from .pointsets import centred, check_point_sets, class_pairs, joined_rows, power_of_two_scale

__all__ = ["HullDistance", "HullSolverError", "hull_distance", "pairwise_hull_distances"]
# internal API of the separability package: HullOptions, check_hull_options, hull_distance_core,
# solve_pairs, count_disjoint_overlaps

METHODS = ("auto", "native", "reference")
BATCH_MAX_ELEMENTS = 20_000_000  # batched rounds when pairs x points per pair x dimensions fit (float64: 160 MB)


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
        Points added per set and round by the native solver (at most; the batched rounds of
        :func:`pairwise_hull_distances` add at most the number of starting points per set,
        between 8 and 64 depending on the dimension, which keeps their problems small).

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
        check_solver(o.solver)
    if o.solver_options is not None and not isinstance(o.solver_options, dict):
        raise TypeError(f"solver_options: expected a dict of cvxpy solve options, got {describe(o.solver_options)}")
    return dataclasses.replace(o, tol=tol, zero_tol=zero_tol, max_iter=max_iter, working_set=working_set)


def hull_distance_core(A: torch.Tensor, B: torch.Tensor, options: Any,
                       warm_start: HullDistance | None = None) -> HullDistance:
    """:func:`hull_distance` of checked point sets with checked ``HullOptions`` (no checks here)."""
    n = A.shape[0]
    X = joined_rows(A, B).to(torch.float64)
    rows_a = torch.arange(n, device=X.device)
    rows_b = torch.arange(n, X.shape[0], device=X.device)
    return solve_pairs(X, [(rows_a, rows_b)], options, warm=[warm_start])[0]


def solve_pairs(X: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]], options: Any, *,
                progress: bool = False, warm: list | None = None) -> list[HullDistance]:
    """Hull distances of the pairs ``(rows_a, rows_b)`` of the checked pool ``X`` (no checks here).

    ``options`` is a checked ``HullOptions``: the native solver runs all pairs together, the
    reference solver one pair after the other. Both solve at unit scale: the pool is divided by
    a power of two (exactly) so that its largest coordinate lies in [1, 2) (for the native
    solver, in [1/2, 2): its arithmetic is exactly equivariant under powers of two, so a pool
    already in that range is solved as it is, without a copy), and each solver centres the
    points (a common shift); distances, bounds, scales and offsets are multiplied back, so
    results do not depend on the magnitude of the data (an ``OverflowError`` says when a
    distance does not fit in float64). Used by :func:`hull_distance`,
    :func:`pairwise_hull_distances`, the per-layer tables and the callback.
    """
    X64 = X.to(torch.float64)
    s = power_of_two_scale(X64)
    if s == 0.5 and options.method != "reference":
        s = 1.0     # largest coordinate in [1/2, 1): the native solver gives the same bits either way
    Xs = X64 / s if s != 1.0 else X64   # already at unit scale (e.g. md_lsm's standardised sets): no copy
    if options.method == "reference":
        results = [solve_reference(Xs[ra], Xs[rb], tol=options.tol, zero_tol=options.zero_tol, solver=options.solver,
                              solver_options=options.solver_options)
                   for ra, rb in progress_bar(pairs, progress=progress, desc="hull distance (reference)", leave=False)]
    else:
        results = solve_native(Xs, pairs, tol=options.tol, zero_tol=options.zero_tol, max_iter=options.max_iter,
                               add=options.working_set, warm=warm, progress=progress)
    return [_rescaled(r, s, X64, ra, rb) for r, (ra, rb) in zip(results, pairs)]


def _rescaled(r: HullDistance, s: float, X64: torch.Tensor, rows_a: torch.Tensor, rows_b: torch.Tensor
              ) -> HullDistance:
    """A unit-scale result for the sets ``X64[rows_a] / s`` and ``X64[rows_b] / s`` as a result for
    ``X64[rows_a]`` and ``X64[rows_b]``."""
    values = {name: getattr(r, name) * s for name in ("distance", "lower", "upper", "scale")}
    over = [name for name, v in values.items() if math.isinf(v) and math.isfinite(getattr(r, name))]
    if over:
        raise OverflowError(f"A, B: the hull {over[0]} of these point sets, {getattr(r, over[0])!r} x {s!r}, "
                            f"overflows float64 (largest {torch.finfo(torch.float64).max:.4g}); divide both sets "
                            f"by a common factor")
    offset = r.offset * s    # exact: the unit-scale scores times a power of two are the scores of the inputs
    if r.normal is not None and math.isinf(offset):
        A64, B64 = take_rows(X64, rows_a.to(X64.device)), take_rows(X64, rows_b.to(X64.device))
        offset = float((A64 @ r.normal).min() / 2 + (B64 @ r.normal).max() / 2)
    return dataclasses.replace(r, offset=offset, **values)


def solve_native(X: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]], *, tol: float, zero_tol: float,
                 max_iter: int, add: int, warm: list | None, progress: bool = False, k0: int | None = None,
                 batched: bool = True) -> list[HullDistance]:
    """Solve every pair ``(rows_a, rows_b)`` of the pool ``X`` (at unit scale) with the working-set method.

    With two pairs or more, no warm starts and a pool that fits (:data:`BATCH_MAX_ELEMENTS`),
    all pairs run their rounds in batched solves (:mod:`._hull_batched`) and the pairs that stall
    there continue one by one (:mod:`._hull_native`); a single pair (faster on its own: it adds
    ``add`` points per round where the batch adds at most ``k0``) and ``batched=False`` run the
    one-pair rounds only.
    """
    start = time.perf_counter()
    dev = X.device
    d = X.shape[1]
    X64 = X.to(torch.float64)
    Xw, mean = centred(X64)   # no copy of a large pool that is centred already (md_lsm's standardised sets)
    basis = None
    if d > 2 * Xw.shape[0]:          # work in the span of the points: same inner products, fewer columns
        basis, R = torch.linalg.qr(Xw.T)
        Xw = R.T.contiguous()
    if k0 is None:   # initial extreme points per set: more in wider spaces, where supports are larger
        k0 = min(64, max(8, Xw.shape[1] // 8))
    pairs = [(ra.to(dev), rb.to(dev)) for ra, rb in pairs]
    warm = warm or [None] * len(pairs)
    widest = max(ra.numel() + rb.numel() for ra, rb in pairs)
    batch = None
    if (batched and len(pairs) > 1 and all(w0 is None for w0 in warm)
            and len(pairs) * widest * Xw.shape[1] <= BATCH_MAX_ELEMENTS):
        # all pairs' rounds in batched solves; the pairs that stall there continue one by one
        batch = batched_rounds(pairs, Xw, tol=tol, zero_tol=zero_tol, max_iter=max_iter, add=add, k0=k0)
        states = states_left(batch, Xw)
    else:
        states = {}
        for k, ((ra, rb), w0) in enumerate(zip(pairs, warm)):
            if w0 is not None and basis is not None and w0.normal is not None:
                w0 = None
            st = states[k] = PairState(ra, rb, Xw)
            st.ws = initial_working_set(st, Xw, k0, w0)
    one_pair_rounds(states, Xw, tol=tol, zero_tol=zero_tol, max_iter=max_iter, add=add, progress=progress)
    seconds = time.perf_counter() - start
    results = {k: finish_pair(st, X64, mean, basis, tol, zero_tol, seconds) for k, st in states.items()}
    if batch is not None:
        results.update(finish_batch(batch, X64, basis, tol, zero_tol, seconds))
    return [results[k] for k in range(len(pairs))]


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
