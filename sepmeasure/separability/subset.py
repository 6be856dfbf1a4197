r"""Separable-subset fraction: how much of ``A ∪ B`` one hyperplane can keep strictly separated.

For finite point sets :math:`A` (n points) and :math:`B` (m points) in :math:`\mathbb{R}^d`,

.. math::

    \operatorname{SSF}(A,B)=\frac{1}{n+m}\max_{w,\,c}\ \Big(\#\{i: w^\top a_i>c\}+\#\{j: w^\top b_j<c\}\Big),

the largest fraction of the points that can be kept so that the kept parts of ``A`` and ``B``
are strictly linearly separable (with bias) — the training accuracy of the best linear
classifier when points on the hyperplane count as errors. It is 1 iff the sets are strictly
separable (the setting of Zhang et al. 2023, arXiv 2307.13962, who measure separability through
the Minkowski difference :math:`A\ominus B`), at least :math:`\max(n,m)/(n+m)`, and invariant under
invertible affine maps of both sets. For a fixed ``w`` the best threshold and orientation are
found exactly by sorting: :func:`subset_fraction`.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..validation import check_int
from ._results import CertifiedResult
from ._cvx import solve_reporting_status
from ._search import (certified_search, check_bound_options, check_hull_argument, check_search_options,
                      failure_status, highs_options, proven_bound, start_directions, unit_sup_norm)
from .pointsets import check_direction as _check_direction
from .hull import HullDistance
from .options import check_option_names, options_from_signature
from .pointsets import check_point_sets, power_of_two_scale, span_coordinates, standardise

__all__ = ["SubsetFraction", "separable_subset_fraction", "subset_fraction"]
# internal API of the separability package: SubsetOptions, check_subset_options, separable_subset_core


@dataclass(frozen=True, eq=False, repr=False)
class SubsetFraction(CertifiedResult):
    """Separable-subset fraction with certified bounds.

    Attributes
    ----------
    value : float
        Fraction kept by the classifier ``(normal, offset)`` (equal to ``lower``).
    lower, upper : float
        Certified bounds. ``upper`` comes from the MILP bound (exact) or from disjoint overlap
        certificates of the hull solver (each overlapping subset loses at least one point),
        otherwise 1.
    normal : Tensor of shape (d,) or None
        Unit normal (float64); ``A`` is kept where ``x @ normal > offset``, ``B`` where
        ``x @ normal < offset``. ``None`` when the best rule keeps one whole class only.
    offset : float
    method, status : str
        As in :class:`~sepmeasure.separability.mdlsm.MDLSM`.
    n_a, n_b, d : int
    seconds : float
    """

    value: float
    lower: float
    upper: float
    normal: torch.Tensor | None
    offset: float
    method: str
    status: str
    n_a: int
    n_b: int
    d: int
    seconds: float

    _repr_fields = ("value", "lower", "upper", "method", "status")


def _best_threshold(sa: torch.Tensor, sb: torch.Tensor) -> tuple[int, float]:
    """Most points kept by ``sa > c`` and ``sb < c`` over all thresholds ``c``; returns (kept, c)."""
    sa_s = torch.sort(sa).values
    sb_s = torch.sort(sb).values
    cand = torch.unique(torch.cat([sa_s, sb_s]))
    # threshold just above a candidate value t: A kept if > t, B kept if <= t
    kept = (sa_s.numel() - torch.searchsorted(sa_s, cand, right=True)) + torch.searchsorted(sb_s, cand, right=True)
    below_all = sa_s.numel()          # threshold below every score: all of A, none of B
    k = int(kept.argmax())
    best = int(kept[k])
    if below_all >= best:
        return below_all, float(cand[0]) - 1.0
    upper_val = cand[k + 1] if k + 1 < cand.numel() else cand[k] + 1.0
    return best, float((cand[k] + upper_val) / 2)


def subset_fraction(A: Any, B: Any, w: Any) -> float:
    """Largest fraction of ``A ∪ B`` kept strictly separated by a hyperplane with normal ``±w``.

    Scores ``x @ w`` are computed in float64 and sorted; every threshold between consecutive
    scores is tried for both orientations (points on the threshold are dropped). Exact for the
    given direction, in :math:`O((n+m)\\log(n+m))`.

    Parameters
    ----------
    A, B : Tensor or array of shape (n, d) and (m, d)
        The two point sets (rows are points), on the same device.
    w : Tensor or array of shape (d,)
        The normal direction (either orientation), on the device of the points.

    Returns
    -------
    float
        The largest fraction of the ``n + m`` points kept, in ``[max(n, m) / (n + m), 1]``.

    Raises
    ------
    TypeError
        ``A``, ``B`` or ``w`` is not a tensor, array or nested list of real numbers.
    ValueError
        ``A`` or ``B`` is not 2-D, has no rows or has NaN/inf entries; ``B`` has another number of
        columns than ``A`` or lies on another device; ``w`` is not 1-D, is empty, has NaN/inf
        entries, does not have ``d`` entries or lies on another device than the points.

    Examples
    --------
    >>> import torch
    >>> A = torch.tensor([[2.0], [3.0], [0.5]]); B = torch.tensor([[0.0], [1.0]])
    >>> subset_fraction(A, B, torch.tensor([1.0]))   # drop the A point at 0.5
    0.8
    """
    A, B = check_point_sets(A, B)
    v = _check_direction(w, A.shape[1], A.device)
    A64, B64 = A.to(torch.float64), B.to(torch.float64)
    # scores at unit scale: dividing by powers of two is exact and keeps their order (no overflow, no underflow)
    s = power_of_two_scale(A64, B64)
    v = v / power_of_two_scale(v)
    kept, _, _ = _best_signed_threshold((A64 / s) @ v, (B64 / s) @ v)
    return kept / (A.shape[0] + B.shape[0])


def _best_signed_threshold(sa: torch.Tensor, sb: torch.Tensor) -> tuple[int, float, float]:
    """Best of both orientations: returns (kept, sign, threshold along sign * w)."""
    k1, c1 = _best_threshold(sa, sb)
    k2, c2 = _best_threshold(-sa, -sb)
    return (k1, 1.0, c1) if k1 >= k2 else (k2, -1.0, c2)


def separable_subset_fraction(A: Any, B: Any, method: str = "auto", *, seed: int = 0, n_starts: int = 2,
                              steps: int = 100, exact_max_points: int = 24, time_limit: float = 30.0,
                              margin: float = 1e-5, hull: HullDistance | None = None,
                              witnesses: int = 8) -> SubsetFraction:
    r"""Largest fraction of ``A ∪ B`` that stays strictly linearly separable, with certified bounds.

    .. math:: \operatorname{SSF}(A,B)=\frac{1}{n+m}\max_{w,c}\big(\#\{i: w^\top a_i>c\}+\#\{j: w^\top b_j<c\}\big)

    Parameters
    ----------
    A, B : Tensor or array of shape (n, d) and (m, d)
        The two point sets (rows are points), on the same device.
    method : {"auto", "exact", "approx"}, default "auto"
        ``"exact"``: a big-M mixed-integer program through cvxpy + HiGHS (one binary per point)
        keeping points with :math:`y_i(w^\top x_i - c)\ge\delta` over :math:`\|w\|_\infty\le1`
        in whitened coordinates (``margin`` is :math:`\delta`); its non-strict relaxation over
        :math:`\|w\|_\infty=1` proves the upper bound (first; the strict program is skipped when
        the approximate search has reached it, else capped at it). ``"approx"``: the best exact threshold
        (:func:`subset_fraction`) along the hull normal, a logistic-probe normal, Fisher's
        discriminant, the mean difference, ``n_starts`` random directions and the iterates of a
        smooth surrogate (sigmoid of the signed margin with a learned threshold); its training
        accuracy is a certified lower bound. ``"auto"`` is exact when ``n + m <=
        exact_max_points``.
    seed, n_starts, steps : int, default 0, 2 and 100
        Seed (>= 0) of the random starts, their number (>= 0) and the surrogate steps (>= 0) of
        ``"approx"``.
    exact_max_points : int, default 24
        Largest ``n + m`` for which ``"auto"`` picks the exact method (>= 0).
    time_limit : float, default 30.0
        Seconds per mixed-integer program (> 0).
    margin : float, default 1e-5
        :math:`\delta` of the exact method, in whitened coordinates scaled so that the largest
        point has unit L1 norm (> 0).
    hull : HullDistance, optional
        A hull-distance result for the same sets (default:
        :func:`~sepmeasure.separability.hull.hull_distance` of ``A`` and ``B``).
    witnesses : int, default 8
        Point-disjoint overlap certificates to look for (upper bound of ``"approx"``; >= 0).

    Returns
    -------
    SubsetFraction
        ``value`` (kept by the classifier ``(normal, offset)``), certified ``lower``/``upper``,
        ``normal`` of shape ``(d,)``, ``offset``, ``method``, ``status``.

    Raises
    ------
    TypeError
        ``A`` or ``B`` is not a tensor, array or nested list of real numbers; ``seed``,
        ``n_starts``, ``steps``, ``exact_max_points`` or ``witnesses`` is not an int (bools are
        refused); ``time_limit`` or ``margin`` is not a real number; ``hull`` is not a
        :class:`~sepmeasure.separability.hull.HullDistance`.
    ValueError
        ``A`` or ``B`` is not 2-D, has no rows or has NaN/inf entries; ``B`` has another number of
        columns than ``A`` or lies on another device; ``method`` is not one of ``"auto"``,
        ``"exact"``, ``"approx"``; ``seed``, ``n_starts``, ``steps``, ``exact_max_points`` or
        ``witnesses`` is negative; ``time_limit`` or ``margin`` is not a finite number > 0.

    Examples
    --------
    >>> import torch
    >>> A = torch.tensor([[0.0], [2.0], [4.0]]); B = torch.tensor([[1.0], [3.0]])
    >>> r = separable_subset_fraction(A, B, method="exact")
    >>> r.value, r.upper
    (0.6, 0.6)
    """
    start = time.perf_counter()
    A, B = check_point_sets(A, B)
    options = check_subset_options(method=method, seed=seed, n_starts=n_starts, steps=steps,
                                   exact_max_points=exact_max_points, time_limit=time_limit, margin=margin,
                                   witnesses=witnesses)
    check_hull_argument(hull, A, B)
    return separable_subset_core(A, B, options, hull=hull, start=start)


SubsetOptions = options_from_signature("SubsetOptions", separable_subset_fraction, exclude=("A", "B", "hull"))


def check_subset_options(**given: Any) -> Any:
    """Check the options of :func:`separable_subset_fraction` (any subset, by name); return a ``SubsetOptions``."""
    check_option_names(given, SubsetOptions, "separable_subset_fraction")
    o = SubsetOptions(**given)
    method, seed, n_starts, steps = check_search_options(o.method, o.seed, o.n_starts, o.steps)
    time_limit, margin, witnesses = check_bound_options(o.time_limit, o.margin, o.witnesses)
    return dataclasses.replace(o, method=method, seed=seed, n_starts=n_starts, steps=steps,
                               exact_max_points=check_int(o.exact_max_points, "exact_max_points", minimum=0),
                               time_limit=time_limit, margin=margin, witnesses=witnesses)


def separable_subset_core(A: torch.Tensor, B: torch.Tensor, options: Any, hull: HullDistance | None = None,
                          start: float | None = None) -> SubsetFraction:
    """:func:`separable_subset_fraction` of checked sets with checked ``SubsetOptions`` and a matching ``hull``."""
    start = time.perf_counter() if start is None else start
    o = options
    given = (A, B)
    unit = standardise(A, B)   # the fraction is invariant to translation and scale: solve at unit scale
    A, B = unit.a, unit.b
    n, m = A.shape[0], B.shape[0]
    total = n + m
    method = o.method
    if method == "auto":
        method = "exact" if total <= o.exact_max_points else "approx"
    best, (normal, offset), upper, status = certified_search(
        A, B, method, hull, total=total, witnesses=o.witnesses,
        approx=lambda h: _approx_subset(A, B, h, seed=o.seed, n_starts=o.n_starts, steps=o.steps),
        exact=lambda known: _exact_subset_milp(A, B, known, time_limit=o.time_limit, margin=o.margin))
    if normal is not None:
        offset = _offset_on_inputs(*given, normal, offset, unit, best)
    return SubsetFraction(value=best / total, lower=best / total, upper=upper / total, normal=normal,
                          offset=offset, method=method, status=status, n_a=n, n_b=m, d=A.shape[1],
                          seconds=time.perf_counter() - start)


def _offset_on_inputs(A: torch.Tensor, B: torch.Tensor, normal: torch.Tensor, offset: float, unit: Any,
                      kept: int) -> float:
    """The threshold on ``x @ normal`` of the inputs that keeps ``kept`` points, from one at unit scale.

    The unit-scale threshold ``c'`` maps to ``scale * (c' + centre @ normal)``; where rounding at
    the inputs' magnitude changes the count it keeps, the best threshold along ``normal`` (same
    orientation) on the inputs' own scores is used.
    """
    A64, B64 = A.to(torch.float64), B.to(torch.float64)
    sa, sb = A64 @ normal, B64 @ normal
    if not (bool(torch.isfinite(sa).all()) and bool(torch.isfinite(sb).all())):
        raise OverflowError("A, B: the scores x @ normal of these point sets overflow float64; divide both sets "
                            "by a common factor")
    mapped = unit.scale * offset + unit.scale * float(unit.centre.to(normal) @ normal)
    if math.isfinite(mapped) and int((sa > mapped).sum() + (sb < mapped).sum()) == kept:
        return mapped
    count, c = _best_threshold(sa, sb)
    if count != kept or not math.isfinite(c):
        raise OverflowError(f"A, B: the threshold of the separating hyperplane does not fit in float64 at the "
                            f"magnitude of these point sets (largest {torch.finfo(torch.float64).max:.4g})")
    return c


def _evaluate(A64: torch.Tensor, B64: torch.Tensor, W: torch.Tensor) -> tuple[int, torch.Tensor | None, float]:
    """Best exact kept count over the columns of ``W`` in input coordinates."""
    n, m = A64.shape[0], B64.shape[0]
    best, normal, offset = max(n, m), None, math.nan
    for k in range(W.shape[1]):
        w = W[:, k]
        nw = float(w.norm())
        if not nw > 0 or not math.isfinite(nw):
            continue
        w = w / nw
        kept, sign, c = _best_signed_threshold(A64 @ w, B64 @ w)
        if kept > best:
            best, normal, offset = kept, sign * w, c
    return best, normal, offset


def _approx_subset(A: torch.Tensor, B: torch.Tensor, hull: HullDistance, *, seed: int, n_starts: int,
                   steps: int) -> tuple[int, tuple[torch.Tensor | None, float]]:
    """Best exact kept count found from the start directions and the surrogate's iterates."""
    A64, B64 = A.to(torch.float64), B.to(torch.float64)
    n, m = A.shape[0], B.shape[0]
    if hull.normal is not None:
        best, normal, offset = _evaluate(A64, B64, hull.normal.to(A64)[:, None])
        if best == n + m:
            return best, (normal, offset)
    coords = span_coordinates(A, B)
    if coords.a.shape[1] == 0:
        return max(n, m), (None, math.nan)
    gen = torch.Generator().manual_seed(seed)
    W = start_directions(coords, hull, n_starts, gen)
    cands = [W]
    if steps and W.shape[1]:
        cands.extend(_subset_climb(coords.a, coords.b, W, steps=steps))
    Win = torch.cat(cands, 1).T @ coords.from_span
    best, normal, offset = _evaluate(A64, B64, Win.T)
    return best, (normal, offset)


def _subset_climb(Ar: torch.Tensor, Br: torch.Tensor, W0: torch.Tensor, *, steps: int):
    """Adam on the mean sigmoid of the signed margins, one threshold per column; yields iterates."""
    X = torch.cat([Ar, Br])
    y = torch.cat([torch.ones(Ar.shape[0]), -torch.ones(Br.shape[0])]).to(X)
    W = (W0 / W0.norm(dim=0)).clone().requires_grad_(True)
    with torch.no_grad():
        s = X @ W
        c0 = (s[: Ar.shape[0]].mean(0) + s[Ar.shape[0]:].mean(0)) / 2
    c = c0.clone().requires_grad_(True)
    opt = torch.optim.Adam([W, c], lr=0.05)
    taus = torch.logspace(math.log10(0.3), math.log10(0.005), max(steps, 1)).tolist()
    with torch.enable_grad():
        for step in range(steps):
            Wn = W / W.norm(dim=0)
            s = X @ Wn - c
            spread = s.std(0).detach().clamp_min(1e-12)
            loss = -torch.sigmoid(y[:, None] * s / (taus[step] * spread)).mean(0).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if (step + 1) % 25 == 0 or step == steps - 1:
                yield (W / W.norm(dim=0)).detach()


def _exact_subset_milp(A: torch.Tensor, B: torch.Tensor, known: int, *, time_limit: float, margin: float
                       ) -> tuple[int, tuple[torch.Tensor | None, float], int | None, str]:
    """Strict big-M MILP (lower) and its non-strict relaxation (upper); counts of kept points."""
    import cvxpy as cp

    n, m = A.shape[0], B.shape[0]
    coords = span_coordinates(A, B)
    r = coords.a.shape[1]
    if r == 0:
        return max(n, m), (None, math.nan), max(n, m), "optimal"
    X = torch.cat([coords.a, coords.b]).cpu().numpy()
    X = X / np.abs(X).sum(1).max()
    y = np.concatenate([np.ones(n), -np.ones(m)])
    l1 = np.abs(X).sum(1)
    C = 1.0 + margin
    opts = highs_options(time_limit)
    kept, normal, offset, bound, status = max(n, m), None, math.nan, None, ""
    A64, B64 = A.to(torch.float64), B.to(torch.float64)
    try:
        # the upper bound first: once it meets the count already found, no strict program is needed
        w2 = cp.Variable(r)
        c2 = cp.Variable()
        k2 = cp.Variable(n + m, boolean=True)
        unit = unit_sup_norm(w2)
        relaxed = cp.Problem(cp.Maximize(cp.sum(k2)),
                             [cp.multiply(y, X @ w2 - c2) >= -cp.multiply(l1 + C, 1 - k2),
                              w2 <= 1, w2 >= -1, c2 <= C, c2 >= -C, *unit,
                              cp.sum(k2) >= known])
        solve_reporting_status(relaxed, opts)
        bound, status = proven_bound(relaxed)
        if bound is not None:
            bound = max(bound, max(n, m))   # w = 0 keeps one whole class
            if known >= bound:
                return kept, (normal, offset), bound, status
        # no strict count exceeds the relaxed one: the cap lets HiGHS stop as soon as it reaches it
        w = cp.Variable(r)
        c = cp.Variable()
        k = cp.Variable(n + m, boolean=True)
        big = l1 + C + margin
        strict = cp.Problem(cp.Maximize(cp.sum(k)),
                            [cp.multiply(y, X @ w - c) >= margin - cp.multiply(big, 1 - k),
                             w <= 1, w >= -1, c <= C, c >= -C]
                            + ([cp.sum(k) <= bound] if bound is not None else []))
        solve_reporting_status(strict, opts)
        status = status or failure_status(strict)
        if w.value is not None:
            v = torch.as_tensor(w.value, dtype=torch.float64, device=A.device) @ coords.from_span
            kept, normal, offset = _evaluate(A64, B64, v[:, None])
    except cp.error.SolverError as exc:
        status = f"solver_error: {exc}"
    return kept, (normal, offset), bound, status
