"""Two measures that move together over training: :class:`CoMovement` and :func:`sign_agreement`."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy import stats

from ..validation import check_choice, check_int, check_positive
from .base import Claim, check_column_name, check_real_number
from .verdicts import MAX_RESAMPLES


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
    control_field: ClassVar[str | None] = "a"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_column_name(self.a, "a")
        check_column_name(self.b, "b")
        check_column_name(self.time, "time")
        check_choice(self.statistic, "statistic", ("excess_agreement", "sign_agreement", "spearman"))
        check_real_number(self.min_effect, "min_effect")
        if self.partial is not None:
            check_real_number(self.partial, "partial")
        check_positive(self.tol, "tol", strict=False)
        check_int(self.n_perm, "n_perm", minimum=0, maximum=MAX_RESAMPLES,
                  why="every permutation of a series is held in memory")

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

    def _builtin_control(self) -> str | None:
        if self.statistic == "excess_agreement":
            return ("exact permutation baseline of the sign agreement (changes re-paired at random); "
                    "effect = agreement - baseline")
        if self.statistic == "sign_agreement":
            return ("exact permutation baseline of the sign agreement (changes re-paired at random), reported "
                    "beside: the rule reads the raw agreement, not its excess over the baseline")
        return "permutation baseline 0 (the rank correlation of re-paired changes); effect = the correlation"

    def _builtin_baseline(self, details: Mapping[str, float]) -> float:
        return 0.0 if self.statistic == "spearman" else float(details.get("baseline", math.nan))

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
