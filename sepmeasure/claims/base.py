"""What every claim kind shares: :class:`Claim` (filters, groups, seeds, the interval and the verdict)."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ..validation import check_int, check_probability, describe
from .control import Control
from .results import ClaimResult
from .rows import Where, describe_rows, select_rows
from .verdicts import MAX_RESAMPLES, COMBINATION_RULE, bootstrap_interval, combine_with_reason, decide, verdict_split


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



def _key_tuple(key: Any) -> tuple:
    return key if isinstance(key, tuple) else (key,)


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
    control : Control, optional
        What the effect is measured against (:class:`~sepmeasure.claims.control.Control`):
        with one, the effect is the statistic relative to the control's value (difference or
        ratio, per unit, averaged per seed) and the bound applies to that; the claims table
        shows it in ``control`` and ``baseline``. Without one, ``control`` reads
        ``"none given"`` (or the kind's built-in baseline, e.g. side ``b`` of a
        :class:`Comparison`).
    not_supported_if : str
        The study author's sentence on what result would have made the claim "not supported";
        the rule's own condition is always appended.
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
    control: Control | None = None
    not_supported_if: str = ""

    kind: ClassVar[str] = "claim"
    #: The attribute a column control replaces (None: the kind takes no column control).
    control_field: ClassVar[str | None] = None

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
        check_int(self.n_boot, "n_boot", minimum=10, maximum=MAX_RESAMPLES,
                  why="each resample of the seeds is held in memory")
        check_int(self.random_state, "random_state", minimum=0)
        check_int(self.min_seeds, "min_seeds", minimum=1)
        if self.control is not None and not isinstance(self.control, Control):
            raise TypeError(f"control: expected a sepmeasure.claims.Control (Control.rows, .from_column, .constant "
                            f"or .absent), got {describe(self.control)}")
        if self.control is not None and self.control.source == "column" and self.control_field is None:
            raise ValueError(f"control: a {self.kind} claim takes no column control (Control.from_column); use "
                             f"Control.rows or Control.constant")
        if not isinstance(self.not_supported_if, str):
            raise TypeError(f"not_supported_if: expected a str, got {describe(self.not_supported_if)}")

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

    def _builtin_control(self) -> str | None:
        """What the kind's statistic is already relative to, when no control is given (None: nothing)."""
        return None

    def _builtin_baseline(self, details: Mapping[str, float]) -> float:
        """The built-in control's value in one unit, from that unit's details."""
        return math.nan

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
        if self._relative_control() is not None:
            extra += f"; against the control: {self.control.text}"
        return text + extra

    def _relative_control(self) -> Control | None:
        """The control the effect is taken relative to (None without one, or for an absent one)."""
        return self.control if self.control is not None and self.control.source != "none" else None

    @property
    def control_text(self) -> str:
        """The ``control`` column: the declared control, the kind's built-in baseline, or ``"none given"``."""
        if self.control is not None:
            return self.control.text
        return self._builtin_control() or "none given"

    @property
    def failure_condition(self) -> str:
        """The sentence on what result would have made the claim "not supported" (the ``not_supported_if`` column)."""
        direction, bound, partial = self._decision()
        side, wrong = (">", "<") if direction == "above" else ("<", ">")
        what = "the effect"
        control = self._relative_control()
        if control is not None:
            what += f" ({control.relative} from the control)"
        cond = f"the {self.confidence:.0%} interval over seeds of {what} had lain entirely {wrong} {bound:.4g}"
        if partial is not None:
            cond += f" and not entirely {side} {partial:.4g}"
        text = (f"Not supported if {cond}" if not self.by else
                f"Not supported if more than half of the groups had been, a group being not supported if {cond}")
        return f"{self.not_supported_if.rstrip('.')}. By the rule: {text[0].lower()}{text[1:]}." \
            if self.not_supported_if else text + "."

    @property
    def rule(self) -> str:
        """The written decision rule, with this claim's bounds filled in."""
        direction, bound, partial = self._decision()
        side, wrong = (">", "<") if direction == "above" else ("<", ">")
        level = f"{self.confidence:.0%}"
        what = "the effect"
        control = self._relative_control()
        if control is not None:
            what += f" (the statistic {'minus' if control.relative == 'difference' else 'divided by'} the control's)"
        text = (f"supported if the {level} bootstrap interval over seeds of {what} lies entirely {side} "
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
            ``within``, a column control's column); ``where`` (the claim's or its control's)
            filters on a column the table lacks, or its filter function does not return one
            boolean per row.
        """
        if not isinstance(table, pd.DataFrame):
            raise TypeError(f"table: expected a pandas DataFrame for claim '{self.name}', got {describe(table)}")
        control = self._relative_control()
        own = (control.column,) if control is not None and control.source == "column" else ()
        needed = (self.seed, *self._columns(), *own, *self.by, *self.within)
        missing = [c for c in dict.fromkeys(needed) if c not in table.columns]
        if missing:
            raise ValueError(f"table: claim '{self.name}' expected columns {list(dict.fromkeys(needed))}, "
                             f"missing {missing}; the table has {list(table.columns)}")
        rows = select_rows(table, self.where, f"claim '{self.name}'")
        control_rows = (select_rows(table, control.where, f"the control of claim '{self.name}'")
                        if control is not None and control.source == "rows" else None)
        if not self.by:
            per_seed, details, baselines = self._per_seed(rows, control_rows)
            return self._result(per_seed, details, group="all", baselines=baselines)
        groups: list[ClaimResult] = []
        seed_matrix: dict[Any, list[float]] = {}
        base_matrix: dict[Any, list[float]] = {}
        control_groups = ({_key_tuple(k): g for k, g in control_rows.groupby(list(self.by), sort=True, dropna=False)}
                          if control_rows is not None else {})
        for key, sub in rows.groupby(list(self.by), sort=True, dropna=False):
            ctrl = control_groups.get(_key_tuple(key), control_rows.iloc[:0]) if control_rows is not None else None
            per_seed, details, baselines = self._per_seed(sub, ctrl)
            groups.append(self._result(per_seed, details, group=_group_label(self.by, key), baselines=baselines))
            for s, v in per_seed.items():
                seed_matrix.setdefault(s, []).append(v)
            for s, v in baselines.items():
                base_matrix.setdefault(s, []).append(v)
        overall_seed = {s: float(np.mean(v)) for s, v in seed_matrix.items()}
        overall_base = {s: float(np.mean(v)) for s, v in base_matrix.items()}
        overall = self._result(overall_seed, self._overall_details(groups), group="all", baselines=overall_base)
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

    def _units(self, rows: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
        """The units of one seed's rows: one per ``within`` combination (one in all without ``within``)."""
        if not self.within:
            return {(): rows}
        return {_key_tuple(k): u for k, u in rows.groupby(list(self.within), sort=True, dropna=False)}

    def _per_seed(self, rows: pd.DataFrame, control_rows: pd.DataFrame | None = None
                  ) -> tuple[dict[Any, float], dict[str, Any], dict[Any, float]]:
        """Per-seed effects (relative to the control when there is one), details, per-seed baselines."""
        control = self._relative_control()
        twin = (dataclasses.replace(self, **{self.control_field: control.column}, control=None)
                if control is not None and control.source == "column" else None)
        control_seeds = dict(iter(control_rows.groupby(self.seed, sort=True))) if control_rows is not None else {}
        per_seed: dict[Any, float] = {}
        baselines: dict[Any, float] = {}
        raw_seed: dict[Any, float] = {}
        collected: dict[str, list[float]] = {}
        for seed, seed_rows in rows.groupby(self.seed, sort=True):
            control_units = self._units(control_seeds[seed]) if seed in control_seeds else {}
            effects, bases, raws = [], [], []
            for key, unit in self._units(seed_rows).items():
                effect, det = self._unit_effect(unit)
                for k, v in det.items():
                    collected.setdefault(k, []).append(v)
                if control is None:
                    base, value = self._builtin_baseline(det), effect
                else:
                    if control.source == "rows":
                        base = self._unit_effect(control_units[key])[0] if key in control_units else math.nan
                    elif control.source == "column":
                        base = twin._unit_effect(unit)[0]
                    else:
                        base = float(control.value)
                    value = control.relate(effect, base)
                if math.isfinite(value):
                    effects.append(value)
                    raws.append(effect)
                    if math.isfinite(base):
                        bases.append(base)
            if effects:
                per_seed[seed] = float(np.mean(effects))
                raw_seed[seed] = float(np.mean(raws))
                if bases:
                    baselines[seed] = float(np.mean(bases))
        details = {k: (float(np.nanmean(v)) if np.isfinite(v).any() else math.nan) for k, v in collected.items()}
        details.update(self._pooled_details(rows))
        if control is not None:
            details["effect_before_control"] = float(np.mean(list(raw_seed.values()))) if raw_seed else math.nan
        return per_seed, details, baselines

    def _pooled_details(self, rows: pd.DataFrame) -> dict[str, Any]:
        return {}

    def _result(self, per_seed: Mapping[Any, float], details: Mapping[str, Any], group: str,
                baselines: Mapping[Any, float] | None = None) -> ClaimResult:
        values = np.array(list(per_seed.values()), dtype=float)
        n = int(values.size)
        effect = float(values.mean()) if n else math.nan
        spread = _sample_std(values) if n > 1 else math.nan
        lower, upper = bootstrap_interval(values, n_boot=self.n_boot, confidence=self.confidence,
                                          random_state=self.random_state)
        direction, bound, partial = self._decision()
        if n == 0:
            verdict, reason = ("inconclusive", "no seed has a finite effect: no rows match the claim, or its "
                                               "statistic is undefined on them (e.g. a measure that does not vary)")
            if self._relative_control() is not None:
                reason += ", or the control has no value for the same seeds and units"
        else:
            verdict, reason = decide(lower, upper, n, direction=direction, bound=bound, partial=partial,
                                     min_seeds=self.min_seeds)
        return ClaimResult(
            claim=self.name, kind=self.kind, paper=self.paper, statement=self.statement,
            measured=self.description, rule=self.rule, verdict=verdict, reason=reason, effect=effect,
            lower=lower, upper=upper, spread=spread, confidence=self.confidence, n_seeds=n,
            per_seed=tuple((s, float(v)) for s, v in per_seed.items()), group=group, details=dict(details),
            caveat=self.caveat, control=self.control_text,
            baseline=float(np.mean(list(baselines.values()))) if baselines else math.nan,
            not_supported_if=self.failure_condition)


def _sample_std(values: np.ndarray) -> float:
    """The sample standard deviation (ddof=1), computed on deviations divided by the largest one so
    that effects of any magnitude (a relative error against a tiny reference, 1e299) do not
    overflow when squared."""
    dev = values - values.mean()
    top = float(np.abs(dev).max())
    if top == 0.0 or not math.isfinite(top):
        return float(values.std(ddof=1))
    return top * float((dev / top).std(ddof=1))


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
