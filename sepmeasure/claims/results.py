"""The outcome of a claim (:class:`ClaimResult`) and the claims table."""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..validation import describe


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
        One of :data:`~sepmeasure.claims.VERDICTS`.
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
    control : str
        What the effect is measured against (``"none given"`` when the claim declares nothing
        and its kind has no built-in baseline; ``"no control: why"`` for an absent one).
    baseline : float
        The control's value of the statistic, mean over seeds (``nan`` without one).
    not_supported_if : str
        What result would have made the claim "not supported".
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
    control: str = "none given"
    baseline: float = math.nan
    not_supported_if: str = ""

    @property
    def verdict_text(self) -> str:
        """The verdict with its split when groups were combined: ``"partly supported — 2 of 3 groups ..."``."""
        return f"{self.verdict} \u2014 {self.split}" if self.split else self.verdict

    def to_frame(self) -> pd.DataFrame:
        """One row for the overall result, then one per group (tidy; ``details`` as JSON).

        Examples
        --------
        >>> import pandas as pd
        >>> from sepmeasure.claims import Threshold
        >>> t = pd.DataFrame({"seed": [0, 1, 2], "acc": [0.91, 0.93, 0.92]})
        >>> r = Threshold(name="acc", paper="P", statement="s", value="acc", op=">=", bound=0.9).evaluate(t)
        >>> r.to_frame()[["claim", "group", "verdict"]].values.tolist()
        [['acc', 'all', 'supported']]
        """
        rows = [self._row()] + [g._row() for g in self.groups]
        return pd.DataFrame(rows, columns=list(FRAME_COLUMNS))

    def _row(self) -> dict[str, Any]:
        return {
            "claim": self.claim, "group": self.group, "kind": self.kind, "paper": self.paper,
            "statement": self.statement, "measured": self.measured, "control": self.control,
            "baseline": self.baseline, "effect": self.effect,
            "lower": self.lower, "upper": self.upper, "spread": self.spread,
            "confidence": self.confidence, "n_seeds": self.n_seeds, "verdict": self.verdict,
            "split": self.split, "reason": self.reason, "rule": self.rule,
            "not_supported_if": self.not_supported_if, "caveat": self.caveat,
            "per_seed": json.dumps([[_plain(s), _plain(v)] for s, v in self.per_seed]),
            "details": json.dumps({k: _plain(v) for k, v in self.details.items()}),
        }


#: Columns of the claims table, in order.
FRAME_COLUMNS = ("claim", "group", "kind", "paper", "statement", "measured", "control", "baseline", "effect",
                 "lower", "upper", "spread", "confidence", "n_seeds", "verdict", "split", "reason", "rule",
                 "not_supported_if", "caveat", "per_seed", "details")


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
        ``statement``, ``measured``, ``control``, ``baseline``, ``effect``, ``lower``, ``upper``, ``spread``, ``confidence``,
        ``n_seeds``, ``verdict``, ``split``, ``reason``, ``rule``, ``not_supported_if``, ``caveat``, ``per_seed``, ``details``).

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
        return pd.DataFrame(columns=list(FRAME_COLUMNS))
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
