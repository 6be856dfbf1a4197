"""Solving cvxpy problems whose status the caller reads and reports."""
from __future__ import annotations

import warnings
from typing import Any

__all__ = ["solve_reporting_status"]


def solve_reporting_status(problem: Any, options: dict[str, Any], solver: str = "HIGHS") -> None:
    """``problem.solve(solver=solver, **options)``; the caller reads ``problem.status`` and reports it.

    cvxpy warns "Solution may be inaccurate" when a solver stops early (a time or iteration
    limit); every caller here puts that status in its result (``"time_limit (...)"``) or
    raises an error naming it, so the warning is not repeated.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Solution may be inaccurate", category=UserWarning)
        problem.solve(solver=solver, **options)
