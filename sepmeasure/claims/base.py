"""What every claim kind shares: :class:`Claim` (filters, groups, seeds, the interval and the verdict)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ..validation import check_int, check_probability, describe
from .results import ClaimResult
from .rows import Where, describe_rows, select_rows
from .verdicts import COMBINATION_RULE, bootstrap_interval, combine_with_reason, decide, verdict_split


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
        extra = describe_rows(self.where)
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
        rows = select_rows(table, self.where, f"claim '{self.name}'")
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
        verdict, why = combine_with_reason(verdicts)
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


def check_column_name(value: Any, name: str) -> str:
    """``value`` as a column name (a non-empty str), else a TypeError naming ``name``."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name}: expected a column name (non-empty str), got {describe(value)}")
    return value


def check_real_number(value: Any, name: str) -> float:
    """``value`` as a finite float (bools refused), else an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a real number, got {describe(value)}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return float(value)
