"""A study's claims, thresholds and reasons in one registry, pinned by its fingerprint."""
from __future__ import annotations

import dataclasses

import pytest

from sepmeasure.claims import ClaimRegistry, Comparison, Control, Decision, Threshold


def make_claims(bound=0.9):
    acc = Threshold(name="acc", paper="P", statement="s", value="acc", op=">=", bound=bound)
    gain = Comparison(name="gain", paper="P", statement="s", value="acc", a={"state": "trained"},
                      b={"state": "init"}, control=Control.absent("side b is the control"))
    return [(acc, "the paper's 90% bound, fixed before any run"), Decision(gain, "training must help at all")]


def test_fingerprint_is_stable_and_moves_with_every_decision_but_not_with_prose():
    reg = ClaimRegistry("2", make_claims(), changes={"1": "first", "2": "bound from the paper"})
    same = ClaimRegistry(2, make_claims(), changes={"2": "bound from the paper"})
    assert reg.fingerprint() == same.fingerprint() and len(reg.fingerprint()) == 16
    assert reg.study_version == "2" and [c.name for c in reg.claims] == ["acc", "gain"]
    moved = ClaimRegistry("2", make_claims(bound=0.85), changes={"2": "x"})
    assert moved.fingerprint() != reg.fingerprint()
    acc, reason = make_claims()[0]
    for change in ({"min_seeds": 3}, {"where": {"model": "a"}}, {"by": "dataset"}, {"op": "<="},
                   {"control": Control.constant(0.1, "chance")}):
        other = ClaimRegistry("2", [(dataclasses.replace(acc, **change), reason)], changes={"2": "x"})
        base = ClaimRegistry("2", [(acc, reason)], changes={"2": "x"})
        assert other.fingerprint() != base.fingerprint(), change
    prose = ClaimRegistry("2", [(dataclasses.replace(acc, statement="other words", caveat="c"), "another reason")],
                          changes={"2": "x"})
    assert prose.fingerprint() == ClaimRegistry("2", [(acc, reason)], changes={"2": "x"}).fingerprint()


def test_verify_against_pins():
    reg = ClaimRegistry("2", make_claims(), changes={"2": "bound from the paper"})
    pins = {"1": "0" * 16, "2": reg.fingerprint()}
    reg.verify(pins)
    changed = ClaimRegistry("2", make_claims(bound=0.8), changes={"2": "bound from the paper"})
    with pytest.raises(ValueError, match="claims of study version '2' changed.*bump study_version"):
        changed.verify(pins)
    bumped = ClaimRegistry("3", make_claims(bound=0.8), changes={"2": "x", "3": "the pilot showed 0.8 is the paper's"})
    with pytest.raises(ValueError, match="pins: expected a fingerprint for study version '3'"):
        bumped.verify(pins)
    bumped.verify({**pins, "3": bumped.fingerprint()})
    assert "version 3: the pilot" in bumped.changes_text()
    table = reg.to_frame()
    assert table.columns.tolist() == ["claim", "kind", "table", "rule", "control", "reason", "study_version"]
    assert table.control.tolist()[1] == "no control: side b is the control"


def test_registry_bad_input():
    with pytest.raises(ValueError, match="changes: expected a line saying what changed and why for study version '2'"):
        ClaimRegistry("2", make_claims(), changes={"1": "first"})
    with pytest.raises(ValueError, match="duplicates"):
        ClaimRegistry("1", make_claims() + make_claims(), changes={"1": "x"})
    with pytest.raises(TypeError, match="reason: expected a non-empty str"):
        ClaimRegistry("1", [(make_claims()[0][0], "")], changes={"1": "x"})
    with pytest.raises(TypeError, match=r"decisions\[0\]: expected a Decision"):
        ClaimRegistry("1", ["acc"], changes={"1": "x"})
