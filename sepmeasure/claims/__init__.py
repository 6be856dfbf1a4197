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

The package, by concern:

* :mod:`~sepmeasure.claims.rows`: the one ``where`` row filter (also used by report figures);
* :mod:`~sepmeasure.claims.verdicts`: the interval, the decision rule and the combination of groups;
* :mod:`~sepmeasure.claims.results`: :class:`ClaimResult` and the claims table;
* :mod:`~sepmeasure.claims.control`: :class:`Control`, what an effect is measured against;
* :mod:`~sepmeasure.claims.base`: :class:`Claim`, what every kind shares;
* :mod:`~sepmeasure.claims.registry`: :class:`ClaimRegistry`, a study's claims, thresholds and
  reasons declared in one place and pinned by a fingerprint tied to the study version;
* :mod:`~sepmeasure.claims.kinds` and :mod:`~sepmeasure.claims.comovement`: the kinds.
"""
from __future__ import annotations

from .base import Claim
from .comovement import CoMovement, sign_agreement
from .control import Control
from .kinds import ClosedForm, Comparison, MonotoneTrend, Threshold
from .registry import ClaimRegistry, Decision
from .results import ClaimResult, claims_frame
from .rows import Where, describe_rows, select_rows
from .verdicts import COMBINATION_RULE, VERDICTS, bootstrap_interval, combine_verdicts, decide, verdict_split

__all__ = [
    "VERDICTS",
    "Claim",
    "Control",
    "ClaimRegistry",
    "Decision",
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
    "Where",
    "select_rows",
    "describe_rows",
]

