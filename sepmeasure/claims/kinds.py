"""Claim kinds read off one table: :class:`MonotoneTrend`, :class:`Comparison`, :class:`ClosedForm`, :class:`Threshold`."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy import stats

from ..validation import check_choice, check_positive, describe
from .base import Claim, check_column_name, check_real_number
from .rows import describe_rows, select_rows


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
    control_field: ClassVar[str | None] = "y"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_column_name(self.x, "x")
        check_column_name(self.y, "y")
        check_choice(self.direction, "direction", ("increasing", "decreasing"))
        v = check_real_number(self.min_effect, "min_effect")
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
    control_field: ClassVar[str | None] = "value"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_column_name(self.value, "value")
        for side in ("a", "b"):
            f = getattr(self, side)
            if not isinstance(f, Mapping) or not f:
                raise TypeError(f"{side}: expected a non-empty dict of column -> value(s), got {describe(f)}")
        check_choice(self.statistic, "statistic", ("difference", "ratio"))
        if self.at_least is not None:
            check_real_number(self.at_least, "at_least")
        if self.partial is not None:
            check_real_number(self.partial, "partial")
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
        return (f"{self.statistic} of mean {self.value}: [{describe_rows(first)[7:]}] {op} "
                f"[{describe_rows(second)[7:]}], paired by seed")

    def _builtin_control(self) -> str | None:
        op = "-" if self.statistic == "difference" else "/"
        return (f"side b, the rows{describe_rows(self.b)}: baseline = their mean {self.value}; "
                f"effect = a {op} b" + ("" if self.higher_is_better else " with the sides swapped (lower is better)"))

    def _builtin_baseline(self, details: Mapping[str, float]) -> float:
        return float(details.get("mean_b", math.nan))

    def _unit_effect(self, rows: pd.DataFrame) -> tuple[float, dict[str, float]]:
        va = pd.to_numeric(select_rows(rows, self.a, f"claim '{self.name}'")[self.value], errors="coerce").mean()
        vb = pd.to_numeric(select_rows(rows, self.b, f"claim '{self.name}'")[self.value], errors="coerce").mean()
        if not (np.isfinite(va) and np.isfinite(vb)):
            return math.nan, {}
        first, second = (va, vb) if self.higher_is_better else (vb, va)
        if self.statistic == "difference":
            return float(first - second), {"mean_a": float(va), "mean_b": float(vb)}
        if second == 0:
            return math.nan, {}
        return float(first / second), {"mean_a": float(va), "mean_b": float(vb)}


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
    control_field: ClassVar[str | None] = "value"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_column_name(self.value, "value")
        if isinstance(self.reference, str):
            check_column_name(self.reference, "reference")
        else:
            check_real_number(self.reference, "reference")
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
    control_field: ClassVar[str | None] = "value"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_column_name(self.value, "value")
        check_choice(self.op, "op", (">=", "<="))
        check_real_number(self.bound, "bound")
        if self.partial is not None:
            p = check_real_number(self.partial, "partial")
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
