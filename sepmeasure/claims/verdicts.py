"""The verdict of an interval against a bound, the bootstrap interval, and the combination of groups."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..validation import check_choice, describe

VERDICTS: tuple[str, ...] = ("supported", "partly supported", "not supported", "inconclusive")

COMBINATION_RULE: str = (
    "groups combine by majority: supported if every group is supported; partly supported if more than half "
    "of the groups are supported or partly supported; not supported if more than half of the groups are not "
    "supported; inconclusive otherwise (no groups, a tie, or no majority either way)")
"""The rule that combines per-group verdicts into a claim's verdict, as every report prints it."""


MAX_RESAMPLES = 10 ** 6
"""The most bootstrap resamples (``n_boot``) or permutations (``n_perm``) a claim may ask for: each
is held in memory at once (10**6 resamples of 10 seeds are 80 MB)."""


def bootstrap_interval(values: Sequence[float], *, n_boot: int = 2000, confidence: float = 0.95,
                       random_state: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement).

    Parameters
    ----------
    values : sequence of float
        One number per seed.
    n_boot : int, default 2000
        Bootstrap resamples.
    confidence : float, default 0.95
        Level of the two-sided interval, e.g. 0.95.
    random_state : int, default 0
        Seed of the resampling, so a verdict is reproducible.

    Returns
    -------
    (lower, upper) : tuple of float
        ``(v, v)`` for a single value; ``(nan, nan)`` for none.

    Examples
    --------
    >>> bootstrap_interval([1.0, 1.0, 1.0])
    (1.0, 1.0)
    >>> lo, hi = bootstrap_interval([0.0, 1.0, 2.0, 3.0]); lo < 1.5 < hi
    True
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(random_state)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def decide(lower: float, upper: float, n_seeds: int, *, direction: str, bound: float,
           partial: float | None = None, min_seeds: int = 2) -> tuple[str, str]:
    """The verdict of an interval against a bound (the rule in the module docstring).

    Parameters
    ----------
    lower, upper : float
        Confidence interval of the effect.
    n_seeds : int
        Number of seeds behind the interval.
    direction : {"above", "below"}
        ``"above"``: the claim predicts the effect exceeds ``bound``; ``"below"``: stays under it.
    bound : float
        What the claim must clear.
    partial : float, optional
        A weaker bound on the same side: clearing it but not ``bound`` gives
        ``partly supported``.
    min_seeds : int, default 2
        Fewer seeds give ``inconclusive``.

    Returns
    -------
    (verdict, reason) : tuple of str

    Raises
    ------
    ValueError
        ``direction`` is not ``"above"`` or ``"below"``.

    Examples
    --------
    >>> decide(0.6, 0.9, 3, direction="above", bound=0.5)[0]
    'supported'
    >>> decide(0.1, 0.3, 3, direction="above", bound=0.5, partial=0.0)[0]
    'partly supported'
    >>> decide(0.4, 0.7, 3, direction="above", bound=0.5)[0]
    'inconclusive'
    """
    check_choice(direction, "direction", ("above", "below"))
    interval = f"[{lower:.4g}, {upper:.4g}]"
    if n_seeds < min_seeds:
        return "inconclusive", f"only {n_seeds} seed(s) with a finite effect; the rule needs at least {min_seeds}"
    if not (math.isfinite(lower) and math.isfinite(upper)):
        return "inconclusive", "the interval is undefined (no finite effect)"
    above = direction == "above"
    beyond = lower > bound if above else upper < bound
    short = upper < bound if above else lower > bound
    side = ">" if above else "<"
    if beyond:
        return "supported", f"interval {interval} lies entirely {side} {bound:.4g}"
    if short:
        if partial is not None and (lower > partial if above else upper < partial):
            return ("partly supported", f"interval {interval} falls short of {bound:.4g} "
                                        f"but lies entirely {side} {partial:.4g}")
        return "not supported", f"interval {interval} lies entirely on the wrong side of {bound:.4g}"
    return "inconclusive", f"interval {interval} contains the bound {bound:.4g}"


def check_verdicts(verdicts: Sequence[str]) -> list[str]:
    """``verdicts`` as a list, each checked to be one of :data:`VERDICTS`."""
    if isinstance(verdicts, str) or not isinstance(verdicts, Sequence):
        raise TypeError(f"verdicts: expected a sequence of verdicts, got {describe(verdicts)}")
    for i, v in enumerate(verdicts):
        if v not in VERDICTS:
            raise ValueError(f"verdicts[{i}]: expected one of {list(VERDICTS)}, got {v!r}")
    return list(verdicts)


def combine_with_reason(vs: list[str]) -> tuple[str, str]:
    """(combined verdict, why) by :data:`COMBINATION_RULE`; ``vs`` already checked (:func:`check_verdicts`)."""
    n = len(vs)
    favourable = sum(v in ("supported", "partly supported") for v in vs)
    contrary = sum(v == "not supported" for v in vs)
    if n == 0:
        return "inconclusive", "no groups"
    if all(v == "supported" for v in vs):
        return "supported", "every group is supported"
    if 2 * favourable > n:
        return "partly supported", f"{favourable} of {n} groups, more than half, are supported or partly supported"
    if 2 * contrary > n:
        return "not supported", f"{contrary} of {n} groups, more than half, are not supported"
    return "inconclusive", (f"no majority: {favourable} of {n} groups supported or partly supported, "
                            f"{contrary} not supported")


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """Combine per-group verdicts by majority (:data:`COMBINATION_RULE`).

    Every group supported -> supported; more than half supported or partly supported ->
    partly supported; more than half not supported -> not supported; otherwise (no groups, a
    tie, no majority) inconclusive. One favourable group against several contrary ones is
    therefore never "partly supported".

    Parameters
    ----------
    verdicts : sequence of str
        Verdicts of the groups, each one of :data:`VERDICTS`.

    Returns
    -------
    str
        The combined verdict; ``"inconclusive"`` for no groups.

    Raises
    ------
    TypeError
        ``verdicts`` is not a sequence (a single string is refused).
    ValueError
        An entry is not one of :data:`VERDICTS`.

    Examples
    --------
    >>> combine_verdicts(["supported", "supported", "not supported"])
    'partly supported'
    >>> combine_verdicts(["supported", "not supported", "not supported"])
    'not supported'
    >>> combine_verdicts(["supported", "not supported"])
    'inconclusive'
    """
    return combine_with_reason(check_verdicts(verdicts))[0]


def verdict_split(verdicts: Sequence[str]) -> str:
    """How per-group verdicts split, in words: ``"1 of 3 groups supported, 2 not supported"``.

    Parameters
    ----------
    verdicts : sequence of str
        Verdicts of the groups, each one of :data:`VERDICTS`.

    Returns
    -------
    str
        ``"{k} of {n} groups supported"`` followed by the count of every other verdict that
        occurs, in the order of :data:`VERDICTS`; ``"no groups"`` for none.

    Raises
    ------
    TypeError, ValueError
        As :func:`combine_verdicts`.

    Examples
    --------
    >>> verdict_split(["not supported", "supported", "not supported"])
    '1 of 3 groups supported, 2 not supported'
    """
    vs = check_verdicts(verdicts)
    if not vs:
        return "no groups"
    parts = [f"{sum(v == 'supported' for v in vs)} of {len(vs)} groups supported"]
    parts += [f"{sum(v == verdict for v in vs)} {verdict}" for verdict in VERDICTS[1:] if verdict in vs]
    return ", ".join(parts)
