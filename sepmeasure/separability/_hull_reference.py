"""Reference hull-distance solver: the second-order cone program through cvxpy, certified like the native one.

Internal module of :mod:`sepmeasure.separability.hull`.
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch

from ..validation import describe
from ._cvx import solve_reporting_status
from ._hull_result import SEPARABLE_FLOOR, HullDistance, HullSolverError

__all__ = ["check_solver", "solve_reference", "QP_ONLY_SOLVERS"]

QP_ONLY_SOLVERS = {"OSQP", "PIQP", "PROXQP", "QPALM", "DAQP", "QOCO"}


def check_solver(solver: Any) -> None:
    import cvxpy as cp

    if not isinstance(solver, str):
        raise TypeError(f"solver: expected a cvxpy solver name, got {describe(solver)}")
    if solver.upper() not in cp.installed_solvers():
        raise ValueError(f"solver: expected one of the installed cvxpy solvers {cp.installed_solvers()}, "
                         f"got {solver!r}")


def solve_reference(A: torch.Tensor, B: torch.Tensor, *, tol: float, zero_tol: float, solver: str,
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
    objective = cp.sum_squares(diff) if name in QP_ONLY_SOLVERS else cp.norm(diff, 2)
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
    separable = False if meets else (True if lower > SEPARABLE_FLOOR * scale else None)
    stats = problem.solver_stats
    iterations = int(stats.num_iters) if stats is not None and stats.num_iters is not None else 0
    return HullDistance(distance=nz, lower=lower, upper=nz, separable=separable, normal=normal, offset=offset,
                        weights_a=alpha, weights_b=beta, iterations=iterations, method=f"reference ({name})",
                        status=status, tol=tol, zero_tol=zero_tol, scale=scale, n_a=n, n_b=m, d=A.shape[1],
                        seconds=time.perf_counter() - start)


# ----------------------------------------------------------------------------
