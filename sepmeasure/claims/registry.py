"""Decisions before data: a study's claims, thresholds and reasons in one registry.

A study declares, at the top of its script, every claim with the reason for its reading and its
thresholds, the study version they belong to, and one line per version saying what changed and
why. :meth:`ClaimRegistry.fingerprint` hashes everything that decides a verdict (the kind, the
table, the filters, groups, seeds, bounds, the control, the interval settings; not the prose), so
a test can pin it: ``registry.verify({"1": "3f2a..."})`` fails when a threshold changes without a
new study version and a new pinned fingerprint.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..validation import describe
from .base import Claim
from .control import Control

#: Claim fields that are prose, not decisions: they do not enter the fingerprint.
PROSE_FIELDS = ("paper", "statement", "measured", "caveat", "not_supported_if")


def _canonical(value: Any) -> Any:
    if isinstance(value, Control):
        return {"control": _canonical(value.fingerprint_fields())}
    if callable(value):
        return f"callable {getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (set, frozenset)):
        return sorted((_canonical(v) for v in value), key=repr)
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return repr(value)


def claim_decisions(claim: Claim) -> dict[str, Any]:
    """Everything of ``claim`` that decides its verdict, as plain JSON-able values."""
    out = {"kind": claim.kind}
    for f in dataclasses.fields(claim):
        if f.name not in PROSE_FIELDS:
            out[f.name] = _canonical(getattr(claim, f.name))
    return out


@dataclass(frozen=True)
class Decision:
    """One claim of a study and why it is read and bounded as it is."""

    claim: Claim
    reason: str

    def __post_init__(self) -> None:
        if not isinstance(self.claim, Claim):
            raise TypeError(f"claim: expected a sepmeasure.claims.Claim, got {describe(self.claim)}")
        if not isinstance(self.reason, str) or not self.reason.strip():
            raise TypeError(f"reason: expected a non-empty str saying why claim '{self.claim.name}' is read and "
                            f"bounded this way, got {describe(self.reason)}")


class ClaimRegistry:
    """A study's claims, thresholds and reasons, tied to its version.

    Parameters
    ----------
    study_version : str or int
        The study's version (pass ``registry.study_version`` to ``Study(version=...)``).
    decisions : sequence of Decision or (Claim, reason) pairs
        Every claim of the study with the reason for its reading and thresholds.
    changes : dict of version -> str
        One line per study version: what changed in the claims and why. The current version
        must have one.

    Examples
    --------
    >>> from sepmeasure.claims import Threshold
    >>> acc = Threshold(name="acc", paper="P", statement="s", value="acc", op=">=", bound=0.9)
    >>> reg = ClaimRegistry("1", [(acc, "the paper's 90% bound")], changes={"1": "first thresholds"})
    >>> [c.name for c in reg.claims], len(reg.fingerprint())
    (['acc'], 16)
    >>> reg.verify({"1": reg.fingerprint()})
    >>> reg.to_frame()[["claim", "reason"]].values.tolist()
    [['acc', "the paper's 90% bound"]]
    """

    def __init__(self, study_version: str | int, decisions: Sequence[Decision | tuple[Claim, str]],
                 changes: Mapping[str | int, str]) -> None:
        if isinstance(study_version, bool) or not isinstance(study_version, (str, int)) or not str(study_version):
            raise TypeError(f"study_version: expected a str or int, got {describe(study_version)}")
        self.study_version = str(study_version)
        if isinstance(decisions, (str, Decision)) or not isinstance(decisions, Sequence):
            raise TypeError(f"decisions: expected a sequence of Decision or (claim, reason) pairs, got "
                            f"{describe(decisions)}")
        made = []
        for i, d in enumerate(decisions):
            if isinstance(d, tuple) and len(d) == 2:
                d = Decision(*d)
            if not isinstance(d, Decision):
                raise TypeError(f"decisions[{i}]: expected a Decision or a (claim, reason) pair, got {describe(d)}")
            made.append(d)
        names = [d.claim.name for d in made]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"decisions: expected unique claim names, got duplicates {dupes}")
        self.decisions: tuple[Decision, ...] = tuple(made)
        if not isinstance(changes, Mapping):
            raise TypeError(f"changes: expected a dict of version -> why, got {describe(changes)}")
        self.changes = {str(k): v for k, v in changes.items()}
        why = self.changes.get(self.study_version)
        if not isinstance(why, str) or not why.strip():
            raise ValueError(f"changes: expected a line saying what changed and why for study version "
                             f"{self.study_version!r}, got {describe(why)}")

    @property
    def claims(self) -> tuple[Claim, ...]:
        """The claims, for ``Study(claims=...)``."""
        return tuple(d.claim for d in self.decisions)

    def fingerprint(self) -> str:
        """16 hex digits of the SHA-256 of every claim's decisions (:func:`claim_decisions`), in order."""
        payload = json.dumps([claim_decisions(c) for c in self.claims], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def verify(self, pins: Mapping[str | int, str]) -> None:
        """Check the fingerprint against the one pinned for this study version.

        Raises
        ------
        ValueError
            No fingerprint is pinned for this version, or the claims' decisions changed since it
            was pinned (bump ``study_version``, add its line to ``changes``, pin the new one).
        """
        pinned = {str(k): v for k, v in pins.items()}.get(self.study_version)
        now = self.fingerprint()
        if pinned is None:
            raise ValueError(f"pins: expected a fingerprint for study version {self.study_version!r}, got versions "
                             f"{sorted(map(str, pins))}; pin {now!r} with a line in changes saying why")
        if pinned != now:
            raise ValueError(f"the claims of study version {self.study_version!r} changed (fingerprint {now!r}, "
                             f"pinned {pinned!r}): bump study_version, add a line to changes saying what changed "
                             f"and why, and pin the new fingerprint")

    def to_frame(self) -> pd.DataFrame:
        """One row per claim: name, kind, table, the rule with its bounds, the control, the reason."""
        return pd.DataFrame([{"claim": d.claim.name, "kind": d.claim.kind, "table": d.claim.table,
                              "rule": d.claim.rule, "control": d.claim.control_text, "reason": d.reason,
                              "study_version": self.study_version} for d in self.decisions])

    def changes_text(self) -> str:
        """The version history, one line per version, for a report."""
        return "\n".join(f"version {v}: {why}" for v, why in self.changes.items())
