"""What a claim's effect is measured against: :class:`Control`.

A control gives, for every unit of a claim (one seed and one ``within`` combination, in each
``by`` group), the value the claim's statistic takes under the null or the control condition:

* ``Control.rows(where, ...)``: the same statistic computed on other rows of the same table
  (the untrained network, shuffled labels, a linear model), paired with the claim's rows by
  seed, ``within`` and ``by`` columns;
* ``Control.from_column(column, ...)``: the same statistic computed with the claim's measured
  column replaced by ``column``, row by row (e.g. a permutation baseline stored beside the
  measure);
* ``Control.constant(value, ...)``: a fixed number (a chance level);
* ``Control.absent(reason)``: no meaningful control; the claims table says why and leaves the
  baseline empty.

With a control, the claim's effect is the statistic **relative to** the control's value,
``statistic - baseline`` (``relative="difference"``) or ``statistic / baseline`` (``"ratio"``),
per unit, averaged per seed; the interval over seeds and the claim's bound apply to that
relative effect. The claims table shows the control (``control``) and its value (``baseline``,
the mean over seeds).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..validation import check_choice, describe
from .rows import Where, describe_rows

RELATIVES = ("difference", "ratio")


@dataclass(frozen=True)
class Control:
    """A claim's control (see the module docstring); build it with one of the class methods.

    Parameters
    ----------
    description : str
        What the control is, in words (``"the same network at initialisation"``); for an absent
        control, why there is none.
    where : dict or callable, optional
        Control rows of the claim's table (applied to the whole table, not after the claim's
        own ``where``).
    column : str, optional
        A column holding the control's value of the claim's measured column.
    value : float, optional
        A fixed control value of the statistic.
    relative : {"difference", "ratio"}
        How the effect is taken relative to the control.

    Notes
    -----
    At most one of ``where``, ``column``, ``value``; none of them is an absent control.

    Examples
    --------
    >>> c = Control.rows({"state": "init"}, "the same network at initialisation")
    >>> c.source, c.text
    ('rows', 'the same network at initialisation (rows where state = init); effect = statistic - control')
    >>> Control.absent("an identity of the code, not a measurement").text
    'no control: an identity of the code, not a measurement'
    """

    description: str
    where: Where = None
    column: str | None = None
    value: float | None = None
    relative: str = "difference"

    def __post_init__(self) -> None:
        if not isinstance(self.description, str) or not self.description.strip():
            raise TypeError(f"description: expected a non-empty str saying what the control is, got "
                            f"{describe(self.description)}")
        given = [n for n in ("where", "column", "value") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"Control: expected at most one of where, column and value, got {given}")
        if self.where is not None and not (callable(self.where) or isinstance(self.where, Mapping)):
            raise TypeError(f"where: expected a dict of column -> value(s) or a callable, got {describe(self.where)}")
        if self.column is not None and (not isinstance(self.column, str) or not self.column):
            raise TypeError(f"column: expected a column name (non-empty str), got {describe(self.column)}")
        if self.value is not None:
            if isinstance(self.value, bool) or not isinstance(self.value, (int, float, np.integer, np.floating)):
                raise TypeError(f"value: expected a real number, got {describe(self.value)}")
            if not math.isfinite(float(self.value)):
                raise ValueError(f"value: expected a finite number, got {self.value!r}")
        check_choice(self.relative, "relative", RELATIVES)

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def rows(cls, where: Where, description: str, *, relative: str = "difference") -> "Control":
        """Control rows of the same table, chosen by ``where``, paired by seed, ``within`` and ``by``."""
        if where is None:
            raise ValueError("where: expected the rows of the control (a dict or a callable), got None")
        return cls(description, where=where, relative=relative)

    @classmethod
    def from_column(cls, column: str, description: str, *, relative: str = "difference") -> "Control":
        """The statistic computed on ``column`` in place of the claim's measured column."""
        return cls(description, column=column, relative=relative)

    @classmethod
    def constant(cls, value: float, description: str, *, relative: str = "difference") -> "Control":
        """A fixed control value of the statistic (e.g. chance accuracy)."""
        return cls(description, value=value, relative=relative)

    @classmethod
    def absent(cls, reason: str) -> "Control":
        """No meaningful control; ``reason`` says why (shown in the claims table)."""
        return cls(reason)

    # -- reading --------------------------------------------------------------------------
    @property
    def source(self) -> str:
        """``"rows"``, ``"column"``, ``"value"`` or ``"none"``."""
        if self.where is not None:
            return "rows"
        if self.column is not None:
            return "column"
        if self.value is not None:
            return "value"
        return "none"

    @property
    def text(self) -> str:
        """The ``control`` column of the claims table."""
        if self.source == "none":
            return f"no control: {self.description}"
        if self.source == "rows":
            where = f" (rows{describe_rows(self.where)})"
        elif self.source == "column":
            where = f" (column {self.column})"
        else:
            where = f" (value {float(self.value):.4g})"
        op = "-" if self.relative == "difference" else "/"
        return f"{self.description}{where}; effect = statistic {op} control"

    def relate(self, effect: float, baseline: float) -> float:
        """The effect relative to the control's value (``nan`` when either is undefined)."""
        if not (math.isfinite(effect) and math.isfinite(baseline)):
            return math.nan
        if self.relative == "difference":
            return effect - baseline
        return effect / baseline if baseline != 0 else math.nan

    def fingerprint_fields(self) -> dict[str, Any]:
        """The fields that decide a verdict, for :mod:`~sepmeasure.claims.registry`."""
        return {"source": self.source, "where": self.where, "column": self.column, "value": self.value,
                "relative": self.relative}
