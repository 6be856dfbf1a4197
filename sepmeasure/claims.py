"""A paper's statement as an object: what it predicts about a tidy table, and whether that holds.

A claim names its paper, quotes the statement, and says what it predicts about a table of
results (one row per measurement, with a ``seed`` column). Evaluating it gives

* the **effect size**: one number per seed (the claim's statistic, averaged over the
  ``within`` units of that seed), and their mean;
* a **confidence interval** over seeds: a seeded percentile bootstrap of the mean over seeds;
* the **verdict** ``supported`` / ``partly supported`` / ``not supported`` / ``inconclusive``,
  decided by the claim's own written rule (:attr:`Claim.rule`) from the interval alone.

The decision rule is the same for every kind. With a bound ``b`` the claim must clear and an
optional weaker bound ``p`` (the "no effect" side for a claim that states a size)::

    fewer than ``min_seeds`` seeds                 -> inconclusive
    interval entirely beyond b                      -> supported
    interval entirely short of b, but beyond p      -> partly supported
    interval entirely short of b (and not beyond p) -> not supported
    otherwise (the interval contains b)             -> inconclusive

With the percentile bootstrap and 3 seeds the interval reaches the smallest and largest
per-seed value, so "supported" then means: every seed is beyond the bound.

A claim evaluated ``by`` some columns (per layer, per dataset, ...) is decided in each group,
and the groups combine by majority (:data:`COMBINATION_RULE`, applied by
:func:`combine_verdicts`)::

    no groups                                                      -> inconclusive
    every group supported                                          -> supported
    more than half of the groups supported or partly supported    -> partly supported
    more than half of the groups not supported                     -> not supported
    otherwise (a tie, or no majority either way)                   -> inconclusive

so one favourable group never outweighs several contrary ones, and the combined result
carries its split (``"1 of 3 groups supported, 2 not supported"``, :func:`verdict_split`).

Kinds: :class:`MonotoneTrend`, :class:`Comparison`, :class:`CoMovement`,
:class:`ClosedForm`, :class:`Threshold`.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy import stats

from .validation import check_choice, check_int, check_positive, check_probability, describe

__all__ = [
    "VERDICTS",
    "Claim",
    "ClaimResult",
    "MonotoneTrend",
    "Comparison",
    "CoMovement",
    "ClosedForm",
    "Threshold",
    "claims_frame",
    "decide",
    "combine_verdicts",
    "verdict_split",
    "COMBINATION_RULE",
    "bootstrap_interval",
    "sign_agreement",
]

VERDICTS: tuple[str, ...] = ("supported", "partly supported", "not supported", "inconclusive")

COMBINATION_RULE: str = (
    "groups combine by majority: supported if every group is supported; partly supported if more than half "
    "of the groups are supported or partly supported; not supported if more than half of the groups are not "
    "supported; inconclusive otherwise (no groups, a tie, or no majority either way)")
"""The rule that combines per-group verdicts into a claim's verdict, as every report prints it."""

Where = Mapping[str, Any] | Callable[[pd.DataFrame], Any] | None


# --------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class ClaimResult:
    """The outcome of evaluating one claim on one table.

    Attributes
    ----------
    claim, kind, paper, statement : str
        Which claim (short name), its kind, the paper and the quoted statement.
    measured : str
        What was measured, in words.
    rule : str
        The written rule that decided the verdict.
    verdict : str
        One of :data:`VERDICTS`.
    reason : str
        One line: why the rule gave this verdict (the interval against the bound).
    effect : float
        Mean over seeds of the per-seed effect.
    lower, upper : float
        Bootstrap confidence interval of ``effect`` over seeds.
    spread : float
        Standard deviation of the per-seed effects (``nan`` with one seed).
    confidence : float
        Level of the interval.
    n_seeds : int
        Seeds that contributed a finite effect.
    per_seed : tuple of (seed, effect)
        The per-seed effects.
    group : str
        ``"all"`` for the overall result, else the group (``"layer=2"``).
    split : str
        For a claim decided ``by`` groups, how the groups' verdicts split
        (``"1 of 3 groups supported, 2 not supported"``); empty otherwise.
    details : dict
        Kind-specific numbers (for :class:`CoMovement`: raw agreement, chance baseline,
        permutation p-value, ...).
    groups : tuple of ClaimResult
        Per-group results when the claim was evaluated ``by`` columns.
    caveat : str
        The study author's note on why a result may differ from the paper (shown when the
        verdict is not ``supported``).
    """

    claim: str
    kind: str
    paper: str
    statement: str
    measured: str
    rule: str
    verdict: str
    reason: str
    effect: float
    lower: float
    upper: float
    spread: float
    confidence: float
    n_seeds: int
    per_seed: tuple[tuple[Any, float], ...] = ()
    group: str = "all"
    details: Mapping[str, Any] = field(default_factory=dict)
    groups: tuple["ClaimResult", ...] = ()
    caveat: str = ""
    split: str = ""

    @property
    def verdict_text(self) -> str:
        """The verdict with its split when groups were combined: ``"partly supported — 2 of 3 groups ..."``."""
        return f"{self.verdict} \u2014 {self.split}" if self.split else self.verdict

    def to_frame(self) -> pd.DataFrame:
        """One row for the overall result, then one per group (tidy; ``details`` as JSON).

        Examples
        --------
        >>> import pandas as pd
        >>> t = pd.DataFrame({"seed": [0, 1, 2], "acc": [0.91, 0.93, 0.92]})
        >>> r = Threshold(name="acc", paper="P", statement="s", value="acc", op=">=", bound=0.9).evaluate(t)
        >>> r.to_frame()[["claim", "group", "verdict"]].values.tolist()
        [['acc', 'all', 'supported']]
        """
        rows = [self._row()] + [g._row() for g in self.groups]
        return pd.DataFrame(rows, columns=list(_FRAME_COLUMNS))

    def _row(self) -> dict[str, Any]:
        return {
            "claim": self.claim, "group": self.group, "kind": self.kind, "paper": self.paper,
            "statement": self.statement, "measured": self.measured, "effect": self.effect,
            "lower": self.lower, "upper": self.upper, "spread": self.spread,
            "confidence": self.confidence, "n_seeds": self.n_seeds, "verdict": self.verdict,
            "split": self.split, "reason": self.reason, "rule": self.rule, "caveat": self.caveat,
            "per_seed": json.dumps([[_plain(s), _plain(v)] for s, v in self.per_seed]),
            "details": json.dumps({k: _plain(v) for k, v in self.details.items()}),
        }


_FRAME_COLUMNS = ("claim", "group", "kind", "paper", "statement", "measured", "effect", "lower", "upper",
                  "spread", "confidence", "n_seeds", "verdict", "split", "reason", "rule", "caveat", "per_seed",
                  "details")


def claims_frame(results: Sequence[ClaimResult]) -> pd.DataFrame:
    """All results in one tidy table (the overall row of each claim, then its groups).

    Parameters
    ----------
    results : sequence of ClaimResult
        Results of :meth:`Claim.evaluate`, in the order their rows should appear.

    Returns
    -------
    pandas.DataFrame
        The rows of :meth:`ClaimResult.to_frame` of every result, one after the other; with no
        results, an empty table with the same columns (``claim``, ``group``, ``kind``, ``paper``,
        ``statement``, ``measured``, ``effect``, ``lower``, ``upper``, ``spread``, ``confidence``,
        ``n_seeds``, ``verdict``, ``split``, ``reason``, ``rule``, ``caveat``, ``per_seed``, ``details``).

    Raises
    ------
    TypeError
        ``results`` is not a sequence of :class:`ClaimResult`.

    Examples
    --------
    >>> claims_frame([]).columns[:3].tolist()
    ['claim', 'group', 'kind']
    """
    if isinstance(results, ClaimResult) or not isinstance(results, Sequence):
        raise TypeError(f"results: expected a sequence of ClaimResult, got {describe(results)}")
    for i, r in enumerate(results):
        if not isinstance(r, ClaimResult):
            raise TypeError(f"results[{i}]: expected a ClaimResult (from Claim.evaluate), got {describe(r)}")
    frames = [r.to_frame() for r in results]
    if not frames:
        return pd.DataFrame(columns=list(_FRAME_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def _plain(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        v = float(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


# --------------------------------------------------------------------------------------------
# the rule


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


def _check_verdicts(verdicts: Sequence[str]) -> list[str]:
    if isinstance(verdicts, str) or not isinstance(verdicts, Sequence):
        raise TypeError(f"verdicts: expected a sequence of verdicts, got {describe(verdicts)}")
    for i, v in enumerate(verdicts):
        if v not in VERDICTS:
            raise ValueError(f"verdicts[{i}]: expected one of {list(VERDICTS)}, got {v!r}")
    return list(verdicts)


def _combine(vs: list[str]) -> tuple[str, str]:
    """(combined verdict, why) by :data:`COMBINATION_RULE`; ``vs`` already checked."""
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
    return _combine(_check_verdicts(verdicts))[0]


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
    vs = _check_verdicts(verdicts)
    if not vs:
        return "no groups"
    parts = [f"{sum(v == 'supported' for v in vs)} of {len(vs)} groups supported"]
    parts += [f"{sum(v == verdict for v in vs)} {verdict}" for verdict in VERDICTS[1:] if verdict in vs]
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------
# claims


def _as_tuple(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        out = tuple(value)
    except TypeError:
        raise TypeError(f"{name}: expected a column name or a sequence of column names, got {describe(value)}")
    for v in out:
        if not isinstance(v, str):
            raise TypeError(f"{name}: expected column names (str), got {describe(v)}")
    return out


def _describe_where(where: Where) -> str:
    if where is None:
        return ""
    if callable(where):
        return " (rows chosen by a filter function)"
    parts = []
    for k, v in where.items():
        if isinstance(v, (list, tuple, set, frozenset)):
            parts.append(f"{k} in {sorted(v, key=str)}")
        else:
            parts.append(f"{k} = {v}")
    return " where " + ", ".join(parts)


def _apply_where(table: pd.DataFrame, where: Where, claim: str) -> pd.DataFrame:
    if where is None:
        return table
    if callable(where):
        mask = np.asarray(where(table), dtype=bool)
        if mask.shape != (len(table),):
            raise ValueError(f"where: expected a boolean mask of length {len(table)} for claim '{claim}', "
                             f"got shape {mask.shape}")
        return table[mask]
    mask = np.ones(len(table), dtype=bool)
    for col, val in where.items():
        if col not in table.columns:
            raise ValueError(f"where: claim '{claim}' filters on column '{col}', which the table lacks; "
                             f"columns: {list(table.columns)}")
        if isinstance(val, (list, tuple, set, frozenset)):
            mask &= table[col].isin(list(val)).to_numpy()
        else:
            mask &= (table[col] == val).to_numpy()
    return table[mask]


def _group_label(keys: tuple[str, ...], values: Any) -> str:
    if not isinstance(values, tuple):
        values = (values,)
    return ", ".join(f"{k}={v}" for k, v in zip(keys, values))


@dataclass(frozen=True, kw_only=True)
class Claim:
    """Base of every claim kind: a paper's statement and what it predicts about a table.

    Parameters (shared by every kind)
    ---------------------------------
    name : str
        Short identifier, unique within a study (``"deeper-more-separable"``).
    paper : str
        The paper, e.g. ``"Zhang et al. 2023, arXiv 2307.13962"``.
    statement : str
        The paper's words, quoted.
    table : str
        Name of the study table the claim is evaluated on (default ``"results"``).
    where : dict or callable, optional
        Row filter: ``{column: value or list of values}``, or ``f(table) -> bool mask``.
    by : str or sequence of str
        Columns whose groups are decided separately and then combined.
    within : str or sequence of str
        Columns whose units get one statistic each, averaged into one effect per seed
        (e.g. ``("model", "dataset")``).
    seed : str
        The seed column (the unit of replication for the interval).
    confidence, n_boot, random_state
        Bootstrap interval settings (seeded).
    min_seeds : int
        Fewer seeds than this give ``inconclusive``.
    measured : str, optional
        What was measured, in words (default: generated from the parameters).
    caveat : str
        Why a result may differ from the paper (scale, data, optimiser); shown in the report
        when the verdict is not ``supported``.
    """

    name: str
    paper: str
    statement: str
    table: str = "results"
    where: Where = None
    by: Sequence[str] | str = ()
    within: Sequence[str] | str = ()
    seed: str = "seed"
    confidence: float = 0.95
    n_boot: int = 2000
    random_state: int = 0
    min_seeds: int = 2
    measured: str | None = None
    caveat: str = ""

    kind: ClassVar[str] = "claim"

    def __post_init__(self) -> None:
        for attr in ("name", "paper", "statement", "table", "seed"):
            value = getattr(self, attr)
            if not isinstance(value, str) or not value:
                raise TypeError(f"{attr}: expected a non-empty str, got {describe(value)}")
        object.__setattr__(self, "by", _as_tuple(self.by, "by"))
        object.__setattr__(self, "within", _as_tuple(self.within, "within"))
        if self.where is not None and not (callable(self.where) or isinstance(self.where, Mapping)):
            raise TypeError(f"where: expected a dict of column -> value(s) or a callable, got {describe(self.where)}")
        check_probability(self.confidence, "confidence")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence: expected a number strictly between 0 and 1, got {self.confidence!r}")
        check_int(self.n_boot, "n_boot", minimum=10)
        check_int(self.random_state, "random_state", minimum=0)
        check_int(self.min_seeds, "min_seeds", minimum=1)

    # -- what every kind supplies ---------------------------------------------------------
    def _columns(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _unit_effect(self, rows: pd.DataFrame) -> tuple[float, dict[str, float]]:
        """The statistic of one unit (one seed and one ``within`` combination)."""
        raise NotImplementedError

    def _decision(self) -> tuple[str, float, float | None]:
        """(direction, bound, partial) of the rule."""
        raise NotImplementedError

    def _default_measured(self) -> str:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    @property
    def description(self) -> str:
        """What is measured, in words."""
        text = self.measured or self._default_measured()
        extra = _describe_where(self.where)
        if self.within:
            extra += f"; one value per {', '.join(self.within)} and seed, averaged per seed"
        if self.by:
            extra += f"; decided separately for each {', '.join(self.by)}"
        return text + extra

    @property
    def rule(self) -> str:
        """The written decision rule, with this claim's bounds filled in."""
        direction, bound, partial = self._decision()
        side, wrong = (">", "<") if direction == "above" else ("<", ">")
        level = f"{self.confidence:.0%}"
        text = (f"supported if the {level} bootstrap interval over seeds of the effect lies entirely {side} "
                f"{bound:.4g}")
        if partial is not None:
            text += (f"; partly supported if it lies entirely {wrong} {bound:.4g} but entirely {side} "
                     f"{partial:.4g}")
        text += (f"; not supported if it lies entirely {wrong} {bound:.4g}; inconclusive if it contains "
                 f"{bound:.4g} or fewer than {self.min_seeds} seeds have an effect")
        if self.by:
            text += "; decided per group, then " + COMBINATION_RULE
        return text

    def evaluate(self, table: pd.DataFrame) -> ClaimResult:
        """Evaluate the claim on ``table``: effect, interval over seeds, verdict by :attr:`rule`.

        Parameters
        ----------
        table : pandas.DataFrame
            Tidy results with the claim's columns and the seed column.

        Returns
        -------
        ClaimResult

        Raises
        ------
        TypeError
            ``table`` is not a pandas DataFrame.
        ValueError
            ``table`` lacks the seed column or a column the claim reads (its own, ``by``,
            ``within``); ``where`` filters on a column the table lacks, or its filter function does
            not return one boolean per row.
        """
        if not isinstance(table, pd.DataFrame):
            raise TypeError(f"table: expected a pandas DataFrame for claim '{self.name}', got {describe(table)}")
        needed = (self.seed, *self._columns(), *self.by, *self.within)
        missing = [c for c in dict.fromkeys(needed) if c not in table.columns]
        if missing:
            raise ValueError(f"table: claim '{self.name}' expected columns {list(dict.fromkeys(needed))}, "
                             f"missing {missing}; the table has {list(table.columns)}")
        rows = _apply_where(table, self.where, self.name)
        if not self.by:
            per_seed, details = self._per_seed(rows)
            return self._result(per_seed, details, group="all")
        groups: list[ClaimResult] = []
        seed_matrix: dict[Any, list[float]] = {}
        for key, sub in rows.groupby(list(self.by), sort=True, dropna=False):
            per_seed, details = self._per_seed(sub)
            groups.append(self._result(per_seed, details, group=_group_label(self.by, key)))
            for s, v in per_seed.items():
                seed_matrix.setdefault(s, []).append(v)
        overall_seed = {s: float(np.mean(v)) for s, v in seed_matrix.items()}
        overall = self._result(overall_seed, self._overall_details(groups), group="all")
        verdicts = [g.verdict for g in groups]
        verdict, why = _combine(verdicts)
        split = verdict_split(verdicts)
        reason = f"{split}: {why}" if groups else "no rows match the claim's filter"
        return ClaimResult(**{**overall.__dict__, "verdict": verdict, "reason": reason, "groups": tuple(groups),
                              "split": split if groups else ""})

    def _overall_details(self, groups: Sequence[ClaimResult]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        keys = {k for g in groups for k in g.details}
        for k in sorted(keys):
            vals = [g.details[k] for g in groups if isinstance(g.details.get(k), (int, float))]
            if vals:
                out[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
        return out

    def _per_seed(self, rows: pd.DataFrame) -> tuple[dict[Any, float], dict[str, Any]]:
        per_seed: dict[Any, float] = {}
        collected: dict[str, list[float]] = {}
        for seed, seed_rows in rows.groupby(self.seed, sort=True):
            units = [seed_rows] if not self.within else [u for _, u in seed_rows.groupby(list(self.within),
                                                                                          sort=True, dropna=False)]
            effects = []
            for unit in units:
                effect, det = self._unit_effect(unit)
                if math.isfinite(effect):
                    effects.append(effect)
                for k, v in det.items():
                    collected.setdefault(k, []).append(v)
            if effects:
                per_seed[seed] = float(np.mean(effects))
        details = {k: (float(np.nanmean(v)) if np.isfinite(v).any() else math.nan) for k, v in collected.items()}
        details.update(self._pooled_details(rows))
        return per_seed, details

    def _pooled_details(self, rows: pd.DataFrame) -> dict[str, Any]:
        return {}

    def _result(self, per_seed: Mapping[Any, float], details: Mapping[str, Any], group: str) -> ClaimResult:
        values = np.array(list(per_seed.values()), dtype=float)
        n = int(values.size)
        effect = float(values.mean()) if n else math.nan
        spread = float(values.std(ddof=1)) if n > 1 else math.nan
        lower, upper = bootstrap_interval(values, n_boot=self.n_boot, confidence=self.confidence,
                                          random_state=self.random_state)
        direction, bound, partial = self._decision()
        if n == 0:
            verdict, reason = ("inconclusive", "no seed has a finite effect: no rows match the claim, or its "
                                               "statistic is undefined on them (e.g. a measure that does not vary)")
        else:
            verdict, reason = decide(lower, upper, n, direction=direction, bound=bound, partial=partial,
                                     min_seeds=self.min_seeds)
        return ClaimResult(
            claim=self.name, kind=self.kind, paper=self.paper, statement=self.statement,
            measured=self.description, rule=self.rule, verdict=verdict, reason=reason, effect=effect,
            lower=lower, upper=upper, spread=spread, confidence=self.confidence, n_seeds=n,
            per_seed=tuple((s, float(v)) for s, v in per_seed.items()), group=group, details=dict(details),
            caveat=self.caveat)


def _check_column(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name}: expected a column name (non-empty str), got {describe(value)}")
    return value


def _check_real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a real number, got {describe(value)}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True, kw_only=True)
class MonotoneTrend(Claim):
    """A measure increases (or decreases) with an ordered factor, e.g. layer depth.

    Effect: the Spearman rank correlation between ``x`` and ``y`` within each unit (one seed and
    one ``within`` combination), averaged per seed; for ``"decreasing"`` the claim predicts a
    negative correlation.

    Parameters
    ----------
    x : str
        The ordered factor (numeric or ordered values, e.g. ``"layer_index"``).
    y : str
        The measure.
    direction : {"increasing", "decreasing"}
    min_effect : float
        The rank correlation the claim must clear (in absolute value), default 0.5; a
        correlation with the right sign but below it is ``partly supported``.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"seed": [0]*3 + [1]*3 + [2]*3, "layer": [1, 2, 3]*3,
    ...                   "md_lsm": [0.7, 0.8, 0.9, 0.6, 0.8, 0.95, 0.7, 0.75, 0.9]})
    >>> c = MonotoneTrend(name="depth", paper="Zhang et al. 2023", statement="deeper is more separable",
    ...                   x="layer", y="md_lsm")
    >>> r = c.evaluate(t); r.verdict, round(r.effect, 3)
    ('supported', 1.0)
    """

    x: str
    y: str
    direction: str = "increasing"
    min_effect: float = 0.5

    kind: ClassVar[str] = "monotone trend"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_column(self.x, "x")
        _check_column(self.y, "y")
        check_choice(self.direction, "direction", ("increasing", "decreasing"))
        v = _check_real(self.min_effect, "min_effect")
        if not 0 <= v < 1:
            raise ValueError(f"min_effect: expected a rank correlation in [0, 1), got {self.min_effect!r}")

    def _columns(self) -> tuple[str, ...]:
        return (self.x, self.y)

    def _decision(self) -> tuple[str, float, float | None]:
        partial = 0.0 if self.min_effect > 0 else None
        if self.direction == "increasing":
            return "above", float(self.min_effect), partial
        return "below", -float(self.min_effect), partial

    def _default_measured(self) -> str:
        return f"Spearman rank correlation between {self.x} and {self.y} (claim: {self.direction})"

    def _unit_effect(self, rows: pd.DataFrame) -> tuple[float, dict[str, float]]:
        x = pd.to_numeric(rows[self.x], errors="coerce").to_numpy(dtype=float)
        y = pd.to_numeric(rows[self.y], errors="coerce").to_numpy(dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
            return math.nan, {}
        return float(stats.spearmanr(x, y).statistic), {}


@dataclass(frozen=True, kw_only=True)
class Comparison(Claim):
    """Rows ``a`` beat rows ``b`` by at least a margin (paired by seed and ``within``).

    Effect: ``mean(value | a) - mean(value | b)`` in each unit (``statistic="difference"``) or
    their ratio (``"ratio"``); with ``higher_is_better=False`` the sides swap, so the effect is
    always the advantage of ``a``.

    Parameters
    ----------
    value : str
        The compared quantity (e.g. ``"accuracy"``).
    a, b : dict
        Filters ``{column: value or list}`` choosing the two sides.
    at_least : float, optional
        What the advantage must clear: default 0 for a difference, 1 for a ratio.
    partial : float, optional
        A weaker bound; default 0 for a difference with ``at_least > 0`` (``a`` better but
        by less than claimed -> partly supported), none for a ratio.
    statistic : {"difference", "ratio"}
    higher_is_better : bool

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"seed": [0, 0, 1, 1, 2, 2], "model": ["X", "Y"] * 3,
    ...                   "accuracy": [0.9, 0.8, 0.92, 0.81, 0.88, 0.8]})
    >>> c = Comparison(name="x>y", paper="P", statement="X beats Y", value="accuracy",
    ...                a={"model": "X"}, b={"model": "Y"}, at_least=0.05)
    >>> c.evaluate(t).verdict
    'supported'
    """

    value: str
    a: Mapping[str, Any]
    b: Mapping[str, Any]
    at_least: float | None = None
    partial: float | None = None
    statistic: str = "difference"
    higher_is_better: bool = True

    kind: ClassVar[str] = "comparison"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_column(self.value, "value")
        for side in ("a", "b"):
            f = getattr(self, side)
            if not isinstance(f, Mapping) or not f:
                raise TypeError(f"{side}: expected a non-empty dict of column -> value(s), got {describe(f)}")
        check_choice(self.statistic, "statistic", ("difference", "ratio"))
        if self.at_least is not None:
            _check_real(self.at_least, "at_least")
        if self.partial is not None:
            _check_real(self.partial, "partial")
        if not isinstance(self.higher_is_better, bool):
            raise TypeError(f"higher_is_better: expected a bool, got {describe(self.higher_is_better)}")

    def _columns(self) -> tuple[str, ...]:
        return (self.value, *self.a, *self.b)

    def _decision(self) -> tuple[str, float, float | None]:
        default = 0.0 if self.statistic == "difference" else 1.0
        bound = float(self.at_least) if self.at_least is not None else default
        partial = self.partial
        if partial is None and self.statistic == "difference" and bound > 0:
            partial = 0.0
        return "above", bound, partial

    def _default_measured(self) -> str:
        op = "-" if self.statistic == "difference" else "/"
        first, second = (self.a, self.b) if self.higher_is_better else (self.b, self.a)
        return (f"{self.statistic} of mean {self.value}: [{_describe_where(first)[7:]}] {op} "
                f"[{_describe_where(second)[7:]}], paired by seed")

    def _unit_effect(self, rows: pd.DataFrame) -> tuple[float, dict[str, float]]:
        va = pd.to_numeric(_apply_where(rows, self.a, self.name)[self.value], errors="coerce").mean()
        vb = pd.to_numeric(_apply_where(rows, self.b, self.name)[self.value], errors="coerce").mean()
        if not (np.isfinite(va) and np.isfinite(vb)):
            return math.nan, {}
        first, second = (va, vb) if self.higher_is_better else (vb, va)
        if self.statistic == "difference":
            return float(first - second), {"mean_a": float(va), "mean_b": float(vb)}
        if second == 0:
            return math.nan, {}
        return float(first / second), {"mean_a": float(va), "mean_b": float(vb)}


def sign_agreement(da: np.ndarray, db: np.ndarray, tol: float = 0.0) -> tuple[float, float, int]:
    """Share of intervals where two changes have the same sign, and its chance level.

    Intervals where either change is within ``tol`` of zero are dropped. The chance level is
    the exact mean agreement over all re-pairings of the intervals (a permutation baseline):
    ``(n_a+ n_b+ + n_a- n_b-) / n**2``.

    Parameters
    ----------
    da, db : array of shape (T,)
        Changes of the two measures over the same ``T`` intervals (anything ``numpy.asarray``
        turns into floats); intervals where either is NaN/inf are dropped too.
    tol : float, default 0.0
        Changes with ``|change| <= tol`` count as no change.

    Returns
    -------
    (agreement, baseline, n) : tuple
        ``nan`` values when no interval is left.

    Examples
    --------
    >>> import numpy as np
    >>> sign_agreement(np.array([1., -1, 2, 3]), np.array([2., -1, 1, 1]))
    (1.0, 0.625, 4)
    """
    da = np.asarray(da, dtype=float)
    db = np.asarray(db, dtype=float)
    keep = (np.abs(da) > tol) & (np.abs(db) > tol) & np.isfinite(da) & np.isfinite(db)
    sa, sb = np.sign(da[keep]), np.sign(db[keep])
    n = int(sa.size)
    if n == 0:
        return math.nan, math.nan, 0
    agreement = float(np.mean(sa == sb))
    baseline = float(((sa > 0).sum() * (sb > 0).sum() + (sa < 0).sum() * (sb < 0).sum()) / n**2)
    return agreement, baseline, n


@dataclass(frozen=True, kw_only=True)
class CoMovement(Claim):
    """Two measures move together over training (e.g. layer separability and training accuracy).

    Each unit is one time series (one seed and one ``within`` combination, sorted by ``time``;
    duplicate times are averaged). Over consecutive times the per-interval changes ``da`` and
    ``db`` are compared:

    * ``statistic="excess_agreement"`` (default): effect = share of intervals where the two
      changes have the same sign **minus** its exact permutation baseline (the agreement
      expected if the changes were paired at random; see :func:`sign_agreement`), so 0 means
      chance and the claim predicts a positive excess. Two series that both only rise agree
      on every interval, but so would any re-pairing: their excess is 0;
    * ``statistic="sign_agreement"``: effect = the raw share of intervals with the same sign
      (the literal reading of "when one rises, the other rises"); compare it with the
      baseline in ``details``;
    * ``statistic="spearman"``: effect = Spearman correlation of ``da`` and ``db`` (its
      permutation baseline is 0): larger changes of one go with larger changes of the other.

    ``details`` also gives the raw agreement, the baseline, the Spearman correlation and a
    Monte-Carlo permutation p-value of the pooled statistic (changes re-paired within each
    series, ``n_perm`` times, seeded).

    Parameters
    ----------
    a, b : str
        The two measure columns (a wide table: one row per time point and unit).
    time : str
        Ordering column (``"step"`` or ``"epoch"``).
    min_effect : float
        What the effect must clear (default 0: better than chance).
    partial : float, optional
        A weaker bound (e.g. 0 when ``min_effect`` > 0).
    tol : float
        Changes within ``tol`` of zero are treated as no change and their interval dropped.
    n_perm : int
        Permutations for the p-value in ``details``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rows = []
    >>> for seed in range(3):
    ...     rng = np.random.default_rng(seed)
    ...     acc = np.cumsum(rng.normal(0, 1, 12))
    ...     for t in range(12):
    ...         rows.append({"seed": seed, "step": t, "acc": acc[t], "sep": 2 * acc[t] + 1})
    >>> c = CoMovement(name="sync", paper="P", statement="s", a="sep", b="acc", time="step")
    >>> r = c.evaluate(pd.DataFrame(rows)); r.verdict, r.details["agreement"]
    ('supported', 1.0)
    """

    a: str
    b: str
    time: str = "epoch"
    statistic: str = "excess_agreement"
    min_effect: float = 0.0
    partial: float | None = None
    tol: float = 0.0
    n_perm: int = 1000

    kind: ClassVar[str] = "co-movement"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_column(self.a, "a")
        _check_column(self.b, "b")
        _check_column(self.time, "time")
        check_choice(self.statistic, "statistic", ("excess_agreement", "sign_agreement", "spearman"))
        _check_real(self.min_effect, "min_effect")
        if self.partial is not None:
            _check_real(self.partial, "partial")
        check_positive(self.tol, "tol", strict=False)
        check_int(self.n_perm, "n_perm", minimum=0)

    def _columns(self) -> tuple[str, ...]:
        return (self.a, self.b, self.time)

    def _decision(self) -> tuple[str, float, float | None]:
        return "above", float(self.min_effect), self.partial

    def _default_measured(self) -> str:
        if self.statistic == "excess_agreement":
            return (f"share of {self.time} intervals in which {self.a} and {self.b} change in the same "
                    f"direction, minus its permutation (chance) baseline")
        if self.statistic == "sign_agreement":
            return f"share of {self.time} intervals in which {self.a} and {self.b} change in the same direction"
        return f"Spearman correlation of the per-interval changes of {self.a} and {self.b} over {self.time}"

    def _changes(self, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        series = (rows[[self.time, self.a, self.b]].apply(pd.to_numeric, errors="coerce")
                  .groupby(self.time, sort=True).mean())
        return np.diff(series[self.a].to_numpy(dtype=float)), np.diff(series[self.b].to_numpy(dtype=float))

    def _unit_effect(self, rows: pd.DataFrame) -> tuple[float, dict[str, float]]:
        da, db = self._changes(rows)
        agreement, baseline, n = sign_agreement(da, db, self.tol)
        rho = _spearman(da, db)
        details = {"agreement": agreement, "baseline": baseline, "spearman": rho, "intervals": float(n)}
        effect = {"excess_agreement": agreement - baseline, "sign_agreement": agreement, "spearman": rho}
        return effect[self.statistic], details

    def _pooled_details(self, rows: pd.DataFrame) -> dict[str, Any]:
        """Monte-Carlo permutation p-value of the statistic averaged over every series: the changes of
        ``b`` are re-paired at random within each series (intervals without a change dropped first)."""
        if self.n_perm == 0:
            return {}
        rng = np.random.default_rng(self.random_state)
        observed, null = [], []
        for _, unit in rows.groupby([self.seed, *self.within], sort=True, dropna=False):
            da, db = self._changes(unit)
            if self.statistic == "spearman":
                ok = np.isfinite(da) & np.isfinite(db)
                da, db = da[ok], db[ok]
                if da.size < 3 or np.ptp(da) == 0 or np.ptp(db) == 0:
                    continue
                ra = stats.rankdata(da) - (da.size + 1) / 2
                rb = stats.rankdata(db) - (db.size + 1) / 2
                scale = np.sqrt((ra @ ra) * (rb @ rb))
                observed.append(float(ra @ rb / scale))
                shuffled = rng.permuted(np.tile(rb, (self.n_perm, 1)), axis=1)
                null.append(shuffled @ ra / scale)
            else:
                keep = (np.abs(da) > self.tol) & (np.abs(db) > self.tol) & np.isfinite(da) & np.isfinite(db)
                sa, sb = np.sign(da[keep]), np.sign(db[keep])
                if sa.size == 0:
                    continue
                observed.append(float(np.mean(sa == sb)))
                shuffled = rng.permuted(np.tile(sb, (self.n_perm, 1)), axis=1)
                null.append((shuffled == sa).mean(axis=1))
        if not observed:
            return {"p_value": math.nan}
        stat = float(np.mean(observed))
        null_stat = np.mean(np.stack(null), axis=0)
        p = (1 + int((null_stat >= stat - 1e-12).sum())) / (1 + self.n_perm)
        return {"p_value": float(p)}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(stats.spearmanr(a, b).statistic)


@dataclass(frozen=True, kw_only=True)
class ClosedForm(Claim):
    """A measured quantity equals a reference (a closed form, a theoretical constant) within a tolerance.

    Effect: the mean error ``|value - reference|``, relative to ``|reference|`` when
    ``relative`` (default), per unit; the claim predicts it stays below ``tolerance``.

    Parameters
    ----------
    value : str
        The measured column.
    reference : str or float
        A column holding the reference, or one number.
    tolerance : float
        The largest error the claim allows.
    partial : float, optional
        A looser tolerance: an error below it but above ``tolerance`` is ``partly supported``.
    relative : bool

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"seed": [0, 1, 2], "c": [0.499, 0.502, 0.5], "theory": [0.5] * 3})
    >>> ClosedForm(name="c", paper="P", statement="c = 1/2", value="c", reference="theory",
    ...            tolerance=0.01).evaluate(t).verdict
    'supported'
    """

    value: str
    reference: str | float
    tolerance: float
    partial: float | None = None
    relative: bool = True

    kind: ClassVar[str] = "closed form"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_column(self.value, "value")
        if isinstance(self.reference, str):
            _check_column(self.reference, "reference")
        else:
            _check_real(self.reference, "reference")
        check_positive(self.tolerance, "tolerance")
        if self.partial is not None:
            p = check_positive(self.partial, "partial")
            if p <= self.tolerance:
                raise ValueError(f"partial: expected a looser tolerance > tolerance ({self.tolerance}), got {p}")

    def _columns(self) -> tuple[str, ...]:
        return (self.value, self.reference) if isinstance(self.reference, str) else (self.value,)

    def _decision(self) -> tuple[str, float, float | None]:
        return "below", float(self.tolerance), self.partial

    def _default_measured(self) -> str:
        ref = self.reference if isinstance(self.reference, str) else f"{self.reference:.6g}"
        kind = "relative error |v - r| / |r|" if self.relative else "absolute error |v - r|"
        return f"{kind} of {self.value} (v) against {ref} (r)"

    def _unit_effect(self, rows: pd.DataFrame) -> tuple[float, dict[str, float]]:
        v = pd.to_numeric(rows[self.value], errors="coerce").to_numpy(dtype=float)
        if isinstance(self.reference, str):
            r = pd.to_numeric(rows[self.reference], errors="coerce").to_numpy(dtype=float)
        else:
            r = np.full_like(v, float(self.reference))
        err = np.abs(v - r)
        if self.relative:
            with np.errstate(divide="ignore", invalid="ignore"):
                err = err / np.abs(r)
        err = err[np.isfinite(err)]
        if err.size == 0:
            return math.nan, {}
        return float(err.mean()), {"mean_value": float(np.nanmean(v)), "mean_reference": float(np.nanmean(r))}


@dataclass(frozen=True, kw_only=True)
class Threshold(Claim):
    """A quantity reaches a value: ``mean(value) >= bound`` (or ``<=``).

    Parameters
    ----------
    value : str
        The column (averaged within each unit).
    op : {">=", "<="}
    bound : float
    partial : float, optional
        A weaker bound on the same side.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"seed": [0, 1, 2], "loss_points": [0.4, 0.7, 0.5]})
    >>> Threshold(name="small loss", paper="P", statement="at most one point lost", value="loss_points",
    ...           op="<=", bound=1.0).evaluate(t).verdict
    'supported'
    """

    value: str
    op: str
    bound: float
    partial: float | None = None

    kind: ClassVar[str] = "threshold"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_column(self.value, "value")
        check_choice(self.op, "op", (">=", "<="))
        _check_real(self.bound, "bound")
        if self.partial is not None:
            p = _check_real(self.partial, "partial")
            if (self.op == ">=" and p >= self.bound) or (self.op == "<=" and p <= self.bound):
                raise ValueError(f"partial: expected a weaker bound than bound={self.bound} for op '{self.op}', "
                                 f"got {p}")

    def _columns(self) -> tuple[str, ...]:
        return (self.value,)

    def _decision(self) -> tuple[str, float, float | None]:
        return ("above" if self.op == ">=" else "below"), float(self.bound), self.partial

    def _default_measured(self) -> str:
        return f"mean {self.value} (claim: {self.op} {self.bound:.4g})"

    def _unit_effect(self, rows: pd.DataFrame) -> tuple[float, dict[str, float]]:
        v = pd.to_numeric(rows[self.value], errors="coerce").to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        return (float(v.mean()) if v.size else math.nan), {}
