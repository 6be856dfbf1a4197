"""The common bad-input test over the whole public API (see tests/catalogue).

Every name in ``sepmeasure.__all__`` is covered by a recipe or exempt with a reason; every
mutated call ends in a correct result or a clear error naming the argument, except the cases of
the known-failures table (defects owned elsewhere, each with its reason).
"""
from __future__ import annotations

import time

import pytest
import torch

import sepmeasure
from catalogue import EXEMPT, KNOWN_FAILURES, KNOWN_HANGS, RECIPES, counts, run_catalogue, unexpected
from catalogue.core import Arg, Recipe, classify_error, run_recipe


def test_every_public_name_is_covered_or_exempt():
    public = set(sepmeasure.__all__)
    covered = {recipe.name for recipe in RECIPES.values()}
    missing = sorted(public - covered - set(EXEMPT))
    both = sorted(covered & set(EXEMPT))
    unknown = sorted((covered | set(EXEMPT)) - public)
    assert not missing, f"names in sepmeasure.__all__ with neither a recipe nor an exemption: {missing}"
    assert not both, f"names with a recipe and an exemption: {both}"
    assert not unknown, f"recipes or exemptions for names not in sepmeasure.__all__: {unknown}"
    assert all(reason.strip() for reason in EXEMPT.values())
    assert set(KNOWN_HANGS) <= set(KNOWN_FAILURES)


def test_public_api_refuses_bad_inputs_clearly():
    t0 = time.perf_counter()
    outcomes = run_catalogue(skip_hangs=True)
    seconds = time.perf_counter() - t0
    by_case = {o.case: o for o in outcomes}
    bad = unexpected(outcomes)
    stale = sorted(case for case in KNOWN_FAILURES
                   if case not in KNOWN_HANGS and case in by_case and by_case[case].outcome != "other")
    absent = sorted(case for case in KNOWN_FAILURES if case not in by_case)
    lines = [f"{o.case}: {o.detail}" for o in bad]
    lines += [f"{case}: listed as a known failure but now {by_case[case].outcome}; remove its entry"
              for case in stale]
    lines += [f"{case}: listed as a known failure but no such case runs" for case in absent]
    assert not lines, (f"{len(lines)} bad case(s) of {counts(outcomes)}:\n" + "\n".join(lines))
    # every recipe's valid call returned a checked result
    assert all(o.outcome == "result" for o in outcomes if o.mutation == "valid")
    assert seconds < 120, f"the catalogue took {seconds:.1f} s (budget 30 s on one core)"


# ---------------------------------------------------------------------------------------------
# The classifier itself: each kind of bad outcome is caught


def _outcomes(fn, **args):
    return {o.mutation: o for o in run_recipe(Recipe("fake", args, call=fn))}


def test_classifier_catches_silent_nan_torch_tracebacks_and_unnamed_errors():
    def silent(x):
        return float(torch.as_tensor(x, dtype=torch.float64).sum())  # NaN in, NaN out; no check

    out = _outcomes(silent, x=Arg(lambda: torch.ones(3, 2), "features"))
    assert out["valid"].outcome == "result"
    assert out["nan"].outcome == "other" and "clear error was expected" in out["nan"].detail
    assert out["str"].outcome == "other"  # torch's own TypeError, raised outside sepmeasure

    def unnamed(x):
        return sepmeasure.kernel_alignment(x, torch.eye(3))  # errors name kernel1, not x

    out = _outcomes(unnamed, x=Arg(lambda: torch.eye(3), "kernel"))
    assert out["nan"].outcome == "other" and "does not name 'x'" in out["nan"].detail

    def named(kernel1):
        return sepmeasure.kernel_alignment(kernel1, torch.eye(3) + 1)

    out = _outcomes(named, kernel1=Arg(lambda: torch.eye(3) * 2 + 1, "kernel", invariant=frozenset({"scale"})))
    assert out["nan"].outcome == "error" and out["empty"].outcome == "error"
    assert out["x1e200"].outcome == "result" and out["float64"].outcome == "result"


def test_classifier_compares_invariant_results_with_the_valid_call():
    def scale_dependent(x):
        return float(torch.as_tensor(x, dtype=torch.float64).abs().max().clamp(max=1e6))

    out = _outcomes(scale_dependent, x=Arg(lambda: torch.ones(3, 2), "features", invariant=frozenset({"scale"})))
    assert out["x1e30"].outcome == "other" and "differs" in out["x1e30"].detail
    assert out["float64"].outcome == "result"  # same values, same result
    exc = ValueError("x: expected something")
    assert classify_error(exc, ("x",))[0] == "other"  # no traceback inside sepmeasure


def test_time_limit_stops_a_hang_and_keeps_an_enclosing_timer():
    import signal

    def hang(x):
        time.sleep(5)

    outer = signal.getitimer(signal.ITIMER_REAL)[0]
    if outer == 0:
        signal.setitimer(signal.ITIMER_REAL, 100.0)
    try:
        t0 = time.perf_counter()
        outcomes = run_recipe(Recipe("fake", {"x": Arg(lambda: 1, "fixed")}, call=hang, time_limit=0.2))
        assert outcomes[0].outcome == "other" and outcomes[0].detail.startswith("the valid call failed")
        assert time.perf_counter() - t0 < 2
        left = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 90 < left <= 100 or (outer and 0 < left <= outer)
    finally:
        if outer == 0:
            signal.setitimer(signal.ITIMER_REAL, 0)
