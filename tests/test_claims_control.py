"""Claims against a control: the effect relative to the control, its baseline, and the failure sentence.

Every expected number is recomputed here with pandas from the raw rows."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sepmeasure.claims import (ClaimResult, CoMovement, Comparison, Control, MonotoneTrend, Threshold,
                               bootstrap_interval, claims_frame, sign_agreement)


def trained_vs_init(gain=0.02, seeds=4, models=("mlp", "cnn")):
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(seeds):
        for model in models:
            init = 0.85 + rng.normal(0, 0.01)
            rows.append({"seed": seed, "model": model, "state": "init", "acc": init})
            rows.append({"seed": seed, "model": model, "state": "trained", "acc": init + gain + rng.normal(0, 0.002)})
    return pd.DataFrame(rows)


def per_seed_by_hand(table, op):
    t = table.pivot_table(index=["seed", "model"], columns="state", values="acc")
    rel = t["trained"] - t["init"] if op == "difference" else t["trained"] / t["init"]
    return rel.groupby("seed").mean(), t["init"].groupby("seed").mean()


def threshold(**kw):
    base = dict(name="gain", paper="P", statement="training helps", value="acc", op=">=", bound=0.05,
                where={"state": "trained"}, within="model")
    return Threshold(**{**base, **kw})


@pytest.mark.parametrize("relative, bound", [("difference", 0.01), ("ratio", 1.01)])
def test_rows_control_effect_is_relative_to_the_paired_control_rows(relative, bound):
    table = trained_vs_init(gain=0.02)
    c = threshold(bound=bound, control=Control.rows({"state": "init"}, "the same network at initialisation",
                                                   relative=relative))
    r = c.evaluate(table)
    rel, init = per_seed_by_hand(table, relative)
    assert [s for s, _ in r.per_seed] == rel.index.tolist()
    assert [v for _, v in r.per_seed] == pytest.approx(rel.tolist(), abs=1e-12)
    assert r.effect == pytest.approx(rel.mean(), abs=1e-12)
    assert (r.lower, r.upper) == pytest.approx(bootstrap_interval(rel.tolist()), abs=1e-12)
    assert r.baseline == pytest.approx(init.mean(), abs=1e-12)
    raw = table[table.state == "trained"].groupby(["seed", "model"]).acc.mean().groupby("seed").mean().mean()
    assert r.details["effect_before_control"] == pytest.approx(raw)
    assert r.verdict == "supported"
    assert r.control.startswith("the same network at initialisation (rows where state = init)")
    assert ("minus" if relative == "difference" else "divided by") in r.rule


def test_a_high_raw_value_does_not_pass_a_rule_written_on_the_gain():
    """The S1 lesson: a raw value that clears its bound while the control sits just as high."""
    table = trained_vs_init(gain=0.002)
    assert threshold(bound=0.5).evaluate(table).verdict == "supported"  # raw accuracy >= 0.5
    r = threshold(bound=0.05, control=Control.rows({"state": "init"}, "untrained")).evaluate(table)
    assert r.verdict == "not supported" and r.upper < 0.05


def test_column_and_constant_controls():
    rows = [{"seed": s, "layer": layer, "agreement": 0.6 + 0.01 * s, "perm": 0.55 + 0.02 * layer}
            for s in range(3) for layer in range(3)]
    table = pd.DataFrame(rows)
    c = Threshold(name="excess", paper="P", statement="s", value="agreement", op=">=", bound=0.0,
                  control=Control.from_column("perm", "permutation baseline"))
    r = c.evaluate(table)
    by_seed = table.groupby("seed").agreement.mean() - table.groupby("seed").perm.mean()
    assert [v for _, v in r.per_seed] == pytest.approx(by_seed.tolist())
    assert r.baseline == pytest.approx(table.perm.mean())
    chance = Threshold(name="chance", paper="P", statement="s", value="agreement", op=">=", bound=0.0,
                       control=Control.constant(0.5, "chance", relative="ratio")).evaluate(table)
    assert [v for _, v in chance.per_seed] == pytest.approx((table.groupby("seed").agreement.mean() / 0.5).tolist())
    assert chance.baseline == 0.5 and chance.control == "chance (value 0.5); effect = statistic / control"
    with pytest.raises(ValueError, match=r"missing \['perm_missing'\]"):
        Threshold(name="x", paper="P", statement="s", value="agreement", op=">=", bound=0.0,
                  control=Control.from_column("perm_missing", "p")).evaluate(table)


def test_trend_against_the_initialisation():
    rows = []
    for seed in range(3):
        for layer in range(4):
            rows.append({"seed": seed, "state": "init", "layer": layer, "sep": [0.5, 0.7, 0.6, 0.8][layer]})
            rows.append({"seed": seed, "state": "trained", "layer": layer, "sep": 0.5 + 0.1 * layer + 0.01 * seed})
    table = pd.DataFrame(rows)
    c = MonotoneTrend(name="t", paper="P", statement="s", x="layer", y="sep", where={"state": "trained"},
                      min_effect=0.1, control=Control.rows({"state": "init"}, "the untrained network"))
    r = c.evaluate(table)
    init_rho = table[table.state == "init"].groupby("seed")[["layer", "sep"]].corr(method="spearman").xs(
        "layer", level=1)["sep"]
    assert r.baseline == pytest.approx(init_rho.mean())
    assert r.effect == pytest.approx(1.0 - init_rho.mean())


def test_control_rows_pair_by_group_and_missing_pairs_are_dropped():
    table = trained_vs_init(gain=0.03, seeds=3)
    table["dataset"] = "d1"
    other = trained_vs_init(gain=0.03, seeds=3).assign(dataset="d2")
    other = other[~((other.state == "init") & (other.seed == 2))]  # no control for seed 2 of d2
    third = trained_vs_init(gain=0.03, seeds=3).assign(dataset="d3")
    third = third[third.state == "trained"]  # no control at all for d3
    full = pd.concat([table, other, third], ignore_index=True)
    r = threshold(bound=0.01, by="dataset", control=Control.rows({"state": "init"}, "untrained")).evaluate(full)
    groups = {g.group: g for g in r.groups}
    assert groups["dataset=d1"].n_seeds == 3 and groups["dataset=d2"].n_seeds == 2
    assert groups["dataset=d3"].n_seeds == 0 and groups["dataset=d3"].verdict == "inconclusive"
    assert "the control has no value" in groups["dataset=d3"].reason
    rel, _ = per_seed_by_hand(other, "difference")
    assert [v for _, v in groups["dataset=d2"].per_seed] == pytest.approx(rel.dropna().tolist())
    assert r.verdict == "partly supported" and r.split == "2 of 3 groups supported, 1 inconclusive"


def test_built_in_baselines_and_none_given():
    t = pd.DataFrame({"seed": [0, 0, 1, 1, 2, 2], "model": ["X", "Y"] * 3, "accuracy": [0.9, 0.8, 0.92, 0.81, 0.88, 0.8]})
    r = Comparison(name="c", paper="P", statement="s", value="accuracy", a={"model": "X"}, b={"model": "Y"}).evaluate(t)
    assert r.baseline == pytest.approx(t[t.model == "Y"].accuracy.mean())
    assert r.control.startswith("side b, the rows where model = Y")
    plain = Threshold(name="t", paper="P", statement="s", value="accuracy", op=">=", bound=0.5).evaluate(t)
    assert plain.control == "none given" and math.isnan(plain.baseline)
    absent = Threshold(name="t", paper="P", statement="s", value="accuracy", op=">=", bound=0.5,
                       control=Control.absent("a unit test of the code")).evaluate(t)
    assert absent.control == "no control: a unit test of the code" and math.isnan(absent.baseline)
    assert absent.effect == plain.effect
    rows = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        a, b = np.cumsum(rng.normal(0, 1, 10)), np.cumsum(rng.normal(0, 1, 10))
        rows += [{"seed": seed, "step": i, "a": a[i], "b": b[i]} for i in range(10)]
    comove = pd.DataFrame(rows)
    r = CoMovement(name="m", paper="P", statement="s", a="a", b="b", time="step").evaluate(comove)
    base = [sign_agreement(np.diff(g.a), np.diff(g.b))[1] for _, g in comove.groupby("seed")]
    assert r.baseline == pytest.approx(np.mean(base))
    assert r.control.startswith("exact permutation baseline")


def test_failure_sentence_and_table_columns():
    c = threshold(bound=0.05, control=Control.rows({"state": "init"}, "untrained"),
                  not_supported_if="Training would not have raised accuracy over the untrained network")
    r = c.evaluate(trained_vs_init())
    assert r.not_supported_if == ("Training would not have raised accuracy over the untrained network. By the rule: "
                                  "not supported if the 95% interval over seeds of the effect (difference from the "
                                  "control) had lain entirely < 0.05.")
    grouped = MonotoneTrend(name="t", paper="P", statement="s", x="layer", y="acc", by="model", min_effect=0.5)
    assert grouped.failure_condition == (
        "Not supported if more than half of the groups had been, a group being not supported if the 95% interval "
        "over seeds of the effect had lain entirely < 0.5 and not entirely > 0.")
    frame = claims_frame([r])
    for col in ("control", "baseline", "not_supported_if"):
        assert col in frame.columns
    assert frame.baseline.iloc[0] == pytest.approx(r.baseline)
    assert isinstance(r, ClaimResult)


def test_control_bad_input():
    with pytest.raises(ValueError, match="at most one of where, column and value"):
        Control("x", where={"a": 1}, value=0.5)
    with pytest.raises(TypeError, match="description: expected a non-empty str"):
        Control.constant(0.1, "")
    with pytest.raises(ValueError, match="relative"):
        Control.constant(0.1, "chance", relative="log")
    with pytest.raises(ValueError, match="value: expected a finite number"):
        Control.constant(float("nan"), "chance")
    with pytest.raises(ValueError, match="where: expected the rows of the control"):
        Control.rows(None, "untrained")
    with pytest.raises(TypeError, match="control: expected a sepmeasure.claims.Control"):
        threshold(control={"state": "init"})
    with pytest.raises(ValueError, match="where: the control of claim 'gain' filters on column 'nope'"):
        threshold(control=Control.rows({"nope": 1}, "x")).evaluate(trained_vs_init())
