"""A common bad-input test over the whole public API (scikit-learn's ``check_estimator`` habit).

Every name in ``sepmeasure.__all__`` has a recipe (a small valid call, see :mod:`.recipes`) or an
exemption with its reason; each argument of each recipe is mutated (wrong types, shapes, empty,
one class, NaN/inf, extreme magnitudes, dtypes, non-contiguous, requires_grad, huge sizes) and
every outcome classified as a correct result, a clear error, or anything else (see :mod:`.core`).

``python -m tests.catalogue`` prints the counts and every case classified ``other``.
"""
from __future__ import annotations

import time
from collections import Counter

from .core import Outcome, run_recipe
from .known import KNOWN_FAILURES, KNOWN_HANGS
from .recipes import EXEMPT, RECIPES

__all__ = ["EXEMPT", "KNOWN_FAILURES", "KNOWN_HANGS", "RECIPES", "Outcome", "counts", "run_catalogue"]


def run_catalogue(names: list[str] | None = None, *, skip_hangs: bool = False) -> list[Outcome]:
    """Run every recipe (or those of ``names``) and return one :class:`Outcome` per call.

    ``skip_hangs`` leaves the cases of :data:`KNOWN_HANGS` unrun (each costs its time limit or
    more); they are reported as ``other`` with the reason.
    """
    skip = (lambda case: KNOWN_HANGS.get(case)) if skip_hangs else (lambda case: None)
    out: list[Outcome] = []
    chosen = [r for r in RECIPES.values() if not names or r.name in names or r.id in names]
    for recipe in chosen:
        out += run_recipe(recipe, skip)
    return out


def counts(outcomes: list[Outcome]) -> dict[str, int]:
    c = Counter(o.outcome for o in outcomes)
    return {"calls": len(outcomes), "clear errors": c["error"], "correct results": c["result"],
            "other": c["other"]}


def unexpected(outcomes: list[Outcome]) -> list[Outcome]:
    """The ``other`` outcomes not listed in :data:`KNOWN_FAILURES`."""
    return [o for o in outcomes if o.outcome == "other" and o.case not in KNOWN_FAILURES]


def timed_run(names: list[str] | None = None, *, skip_hangs: bool = False) -> tuple[list[Outcome], float]:
    t0 = time.perf_counter()
    out = run_catalogue(names, skip_hangs=skip_hangs)
    return out, time.perf_counter() - t0
