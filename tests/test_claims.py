"""Claims on synthetic tables whose truth is known: a claim that holds, one that does not, one too
noisy to tell (and one that holds only weakly), for every kind; the rule; bad input."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sepmeasure.claims import (COMBINATION_RULE, VERDICTS, ClaimResult, ClosedForm, CoMovement, Comparison,
                               MonotoneTrend, Threshold, bootstrap_interval, claims_frame, combine_verdicts, decide,
                               sign_agreement, verdict_split)

P = "Zhang et al. 2023, arXiv 2307.13962"


def trend_table(per_seed_y: list[list[float]], x=(1, 2, 3, 4, 5), **extra) -> pd.DataFrame:
    rows = []
    for seed, ys in enumerate(per_seed_y):
        for xi, yi in zip(x, ys):
            rows.append({"seed": seed, "layer": xi, "md_lsm": yi, **extra})
    return pd.DataFrame(rows)


def trend(**kw) -> MonotoneTrend:
    return MonotoneTrend(name="depth", paper=P, statement="layers closer to the output are more separable",
                         x="layer", y="md_lsm", **kw)


# --------------------------------------------------------------------------------------------
# the rule and the interval


def test_bootstrap_interval_of_two_values_is_their_range():
    # resampling 2 values: means a, (a+b)/2, b with probabilities 1/4, 1/2, 1/4, so the
    # 2.5% and 97.5% quantiles are exactly a and b
    assert bootstrap_interval([0.2, 0.8], n_boot=4000) == (0.2, 0.8)


def test_bootstrap_interval_matches_normal_approximation_for_many_seeds():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, size=400)
    lo, hi = bootstrap_interval(x, n_boot=4000, random_state=3)
    half = 1.959964 * x.std(ddof=1) / math.sqrt(x.size)
    assert lo == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert hi == pytest.approx(x.mean() + half, abs=0.1 * half)


def test_bootstrap_interval_is_seeded_and_handles_degenerate_inputs():
    x = [0.1, 0.5, 0.3, 0.9]
    assert bootstrap_interval(x, random_state=5) == bootstrap_interval(x, random_state=5)
    assert bootstrap_interval([2.0]) == (2.0, 2.0)
    assert all(math.isnan(v) for v in bootstrap_interval([]))
    assert bootstrap_interval([1.0, math.nan, 1.0]) == (1.0, 1.0)


@pytest.mark.parametrize("lower, upper, n, direction, bound, partial, expected", [
    (0.6, 0.9, 3, "above", 0.5, None, "supported"),
    (0.1, 0.3, 3, "above", 0.5, 0.0, "partly supported"),
    (-0.2, 0.3, 3, "above", 0.5, 0.0, "not supported"),
    (0.1, 0.3, 3, "above", 0.5, None, "not supported"),
    (0.4, 0.6, 3, "above", 0.5, 0.0, "inconclusive"),
    (0.6, 0.9, 1, "above", 0.5, None, "inconclusive"),
    (0.01, 0.02, 3, "below", 0.05, None, "supported"),
    (0.06, 0.08, 3, "below", 0.05, 0.1, "partly supported"),
    (0.2, 0.3, 3, "below", 0.05, 0.1, "not supported"),
    (0.04, 0.07, 3, "below", 0.05, None, "inconclusive"),
    (math.nan, math.nan, 3, "above", 0.0, None, "inconclusive"),
])
def test_decide(lower, upper, n, direction, bound, partial, expected):
    verdict, reason = decide(lower, upper, n, direction=direction, bound=bound, partial=partial)
    assert verdict == expected
    assert reason


def test_combine_verdicts():
    assert combine_verdicts(["supported"] * 3) == "supported"
    assert combine_verdicts(["not supported"] * 2) == "not supported"
    assert combine_verdicts(["supported", "inconclusive"]) == "inconclusive"  # a tie
    assert combine_verdicts(["supported", "supported", "inconclusive"]) == "partly supported"
    assert combine_verdicts(["partly supported", "not supported"]) == "inconclusive"
    assert combine_verdicts(["supported", "not supported", "not supported"]) == "not supported"
    assert combine_verdicts(["not supported", "inconclusive"]) == "inconclusive"
    assert combine_verdicts([]) == "inconclusive"


def _rule_written_again(verdicts):
    """COMBINATION_RULE, written independently from its text: shares of the groups."""
    from fractions import Fraction
    if not verdicts:
        return "inconclusive"
    share = {v: Fraction(verdicts.count(v), len(verdicts)) for v in VERDICTS}
    if share["supported"] == 1:
        return "supported"
    if share["supported"] + share["partly supported"] > Fraction(1, 2):
        return "partly supported"
    if share["not supported"] > Fraction(1, 2):
        return "not supported"
    return "inconclusive"


def _every_split(max_groups):
    import itertools
    for n in range(max_groups + 1):
        yield from itertools.combinations_with_replacement(VERDICTS, n)


def test_combine_verdicts_over_every_split_of_up_to_six_groups():
    import random
    splits = list(_every_split(6))
    assert len(splits) == 210  # C(n + 3, 3) summed over n = 0..6
    rng = random.Random(0)
    for split in splits:
        verdicts = list(split)
        expected = _rule_written_again(verdicts)
        assert combine_verdicts(verdicts) == expected, verdicts
        rng.shuffle(verdicts)  # the order of the groups does not matter
        assert combine_verdicts(verdicts) == expected, verdicts
        favourable = sum(v in ("supported", "partly supported") for v in verdicts)
        if expected in ("supported", "partly supported"):  # never one favourable group against several
            assert 2 * favourable > len(verdicts)
        text = verdict_split(verdicts)
        if verdicts:
            assert text.startswith(f"{verdicts.count('supported')} of {len(verdicts)} groups supported")
            for v in VERDICTS[1:]:
                assert (f"{verdicts.count(v)} {v}" in text) == (v in verdicts)


def test_combination_rule_text_and_bad_verdicts():
    for words in ("every group is supported", "more than half", "partly supported", "inconclusive otherwise"):
        assert words in COMBINATION_RULE
    with pytest.raises(ValueError, match=r"verdicts\[1\]: expected one of"):
        combine_verdicts(["supported", "fine"])
    with pytest.raises(TypeError, match="verdicts: expected a sequence"):
        combine_verdicts("supported")


def test_a_grouped_claim_reports_its_split():
    rows = []
    for seed in range(3):
        for dataset, acc in (("a", 0.95), ("b", 0.5), ("c", 0.4)):
            rows.append({"seed": seed, "dataset": dataset, "acc": acc + 0.01 * seed})
    c = Threshold(name="t", paper="P", statement="s", value="acc", op=">=", bound=0.9, by="dataset")
    r = c.evaluate(pd.DataFrame(rows))
    assert [g.verdict for g in r.groups] == ["supported", "not supported", "not supported"]
    assert r.verdict == "not supported"  # one favourable group against two contrary ones
    assert r.split == "1 of 3 groups supported, 2 not supported"
    assert r.verdict_text == "not supported \u2014 1 of 3 groups supported, 2 not supported"
    assert r.reason.startswith(r.split) and "more than half" in r.reason
    frame = r.to_frame()
    assert frame.loc[frame.group == "all", "split"].item() == r.split
    assert (frame.loc[frame.group != "all", "split"] == "").all()
    assert COMBINATION_RULE in c.rule


# --------------------------------------------------------------------------------------------
# monotone trend


def test_trend_that_holds_is_supported_and_effect_is_the_mean_spearman():
    rng = np.random.default_rng(0)
    ys = [list(np.arange(5) * 0.1 + rng.normal(0, 0.03, 5)) for _ in range(5)]
    table = trend_table(ys)
    r = trend().evaluate(table)
    expected = np.mean([g[["layer", "md_lsm"]].corr(method="spearman").iloc[0, 1] for _, g in table.groupby("seed")])
    assert r.effect == pytest.approx(expected)
    assert r.verdict == "supported"
    assert r.n_seeds == 5
    assert r.lower <= r.effect <= r.upper


def test_trend_that_does_not_hold_is_not_supported():
    table = trend_table([[0.9, 0.8, 0.7, 0.6, 0.5]] * 3)
    r = trend().evaluate(table)
    assert r.effect == pytest.approx(-1.0)
    assert r.verdict == "not supported"


def test_trend_too_noisy_to_tell_is_inconclusive():
    up, down = [0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.4, 0.3, 0.2, 0.1]
    r = trend().evaluate(trend_table([up, down, up, down, up, up]))
    assert r.lower < 0.5 < r.upper
    assert r.verdict == "inconclusive"


def test_weak_trend_is_partly_supported():
    # ranks (4, 1, 2, 5, 3) against (1..5): sum d^2 = 16, Spearman = 1 - 6*16/120 = 0.2
    r = trend().evaluate(trend_table([[0.4, 0.1, 0.2, 0.5, 0.3]] * 3))
    assert r.effect == pytest.approx(0.2)
    assert r.verdict == "partly supported"


def test_decreasing_trend_claim():
    c = trend(direction="decreasing")
    assert c.evaluate(trend_table([[0.9, 0.8, 0.7, 0.6, 0.5]] * 3)).verdict == "supported"
    assert c.evaluate(trend_table([[0.5, 0.6, 0.7, 0.8, 0.9]] * 3)).verdict == "not supported"


def test_one_seed_is_inconclusive():
    r = trend().evaluate(trend_table([[0.1, 0.2, 0.3, 0.4, 0.5]]))
    assert r.verdict == "inconclusive"
    assert "seed" in r.reason


def test_flat_measure_gives_no_effect_and_inconclusive():
    r = trend().evaluate(trend_table([[1.0] * 5] * 3))
    assert r.n_seeds == 0 and r.verdict == "inconclusive"


def test_trend_within_units_is_averaged_per_seed():
    a = trend_table([[0.1, 0.2, 0.3, 0.4, 0.5]] * 3, model="mlp")
    b = trend_table([[0.4, 0.1, 0.2, 0.5, 0.3]] * 3, model="cnn")
    r = trend(within="model").evaluate(pd.concat([a, b]))
    assert r.effect == pytest.approx((1.0 + 0.2) / 2)
    assert r.verdict == "supported"


def test_trend_by_groups_combines_group_verdicts():
    a = trend_table([[0.1, 0.2, 0.3, 0.4, 0.5]] * 3, model="mlp")
    b = trend_table([[0.5, 0.4, 0.3, 0.2, 0.1]] * 3, model="cnn")
    r = trend(by="model").evaluate(pd.concat([a, b]))
    assert {g.group: g.verdict for g in r.groups} == {"model=cnn": "not supported", "model=mlp": "supported"}
    assert r.verdict == "inconclusive"  # one group for, one against: no majority
    assert r.split == "1 of 2 groups supported, 1 not supported"
    frame = r.to_frame()
    assert frame["group"].tolist() == ["all", "model=cnn", "model=mlp"]
    assert frame.loc[0, "effect"] == pytest.approx(0.0)


def test_where_filters_rows():
    a = trend_table([[0.1, 0.2, 0.3, 0.4, 0.5]] * 3, measure="md_lsm_ok")
    b = trend_table([[0.5, 0.4, 0.3, 0.2, 0.1]] * 3, measure="other")
    both = pd.concat([a, b])
    assert trend(where={"measure": "md_lsm_ok"}).evaluate(both).verdict == "supported"
    assert trend(where={"measure": ["other"]}).evaluate(both).verdict == "not supported"
    assert trend(where=lambda t: t["measure"] == "other").evaluate(both).verdict == "not supported"
    empty = trend(where={"measure": "absent"}).evaluate(both)
    assert empty.verdict == "inconclusive" and empty.n_seeds == 0


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(0, 20), min_size=5, max_size=5), min_size=2, max_size=4),
       st.randoms(use_true_random=False))
def test_trend_is_invariant_to_monotone_maps_and_row_order(ys, rnd):
    # values on a grid, so that the map below stays strictly increasing in floating point
    table = trend_table([[v / 20 for v in y] for y in ys])
    base = trend().evaluate(table)
    mapped = table.assign(md_lsm=np.exp(3 * table["md_lsm"]))
    order = list(range(len(table)))
    rnd.shuffle(order)
    shuffled = table.iloc[order]
    for other in (trend().evaluate(mapped), trend().evaluate(shuffled)):
        assert other.n_seeds == base.n_seeds
        if base.n_seeds:
            assert other.effect == pytest.approx(base.effect, abs=1e-9)
            assert other.verdict == base.verdict


# --------------------------------------------------------------------------------------------
# comparison


def cmp_table(diffs: list[float], base: float = 0.8) -> pd.DataFrame:
    rows = []
    for seed, d in enumerate(diffs):
        rows += [{"seed": seed, "model": "X", "accuracy": base + d}, {"seed": seed, "model": "Y", "accuracy": base}]
    return pd.DataFrame(rows)


def comparison(**kw) -> Comparison:
    kw.setdefault("at_least", 0.05)
    return Comparison(name="x beats y", paper=P, statement="X beats Y", value="accuracy",
                      a={"model": "X"}, b={"model": "Y"}, **kw)


def test_comparison_holds_fails_noisy_and_partly():
    assert comparison().evaluate(cmp_table([0.10, 0.12, 0.09, 0.11])).verdict == "supported"
    assert comparison().evaluate(cmp_table([-0.10, -0.12, -0.09])).verdict == "not supported"
    assert comparison().evaluate(cmp_table([0.2, -0.15, 0.1, -0.1, 0.05])).verdict == "inconclusive"
    assert comparison().evaluate(cmp_table([0.02, 0.03, 0.025])).verdict == "partly supported"


def test_comparison_effect_is_the_paired_mean_difference():
    table = cmp_table([0.10, 0.12, 0.09, 0.11])
    r = comparison().evaluate(table)
    wide = table.pivot(index="seed", columns="model", values="accuracy")
    assert r.effect == pytest.approx(float((wide["X"] - wide["Y"]).mean()))
    assert r.details["mean_a"] == pytest.approx(float(wide["X"].mean()))


def test_comparison_ratio_and_lower_is_better():
    table = cmp_table([0.0, 0.01, -0.01], base=0.8).assign(accuracy=lambda t: t["accuracy"] * np.where(
        t["model"] == "X", 0.95, 1.0))
    r = comparison(statistic="ratio", at_least=0.9).evaluate(table)
    wide = table.pivot(index="seed", columns="model", values="accuracy")
    assert r.effect == pytest.approx(float((wide["X"] / wide["Y"]).mean()))
    assert r.verdict == "supported"
    loss = cmp_table([-0.1, -0.12, -0.11]).rename(columns={"accuracy": "loss"})
    c = Comparison(name="lower loss", paper=P, statement="X has lower loss", value="loss", a={"model": "X"},
                   b={"model": "Y"}, higher_is_better=False)
    assert c.evaluate(loss).verdict == "supported"


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-1, 1, allow_nan=False), min_size=2, max_size=6))
def test_comparison_is_antisymmetric(diffs):
    table = cmp_table(diffs)
    ab = Comparison(name="c", paper=P, statement="s", value="accuracy", a={"model": "X"}, b={"model": "Y"})
    ba = Comparison(name="c", paper=P, statement="s", value="accuracy", a={"model": "Y"}, b={"model": "X"})
    r1, r2 = ab.evaluate(table), ba.evaluate(table)
    assert r1.effect == pytest.approx(-r2.effect, abs=1e-12)
    assert r1.lower == pytest.approx(-r2.upper, abs=1e-12)


# --------------------------------------------------------------------------------------------
# co-movement


def test_sign_agreement_baseline_equals_brute_force_over_all_pairings():
    rng = np.random.default_rng(4)
    for _ in range(5):
        da, db = rng.normal(size=6), rng.normal(size=6)
        agreement, baseline, n = sign_agreement(da, db)
        assert agreement == pytest.approx(np.mean(np.sign(da) == np.sign(db)))
        brute = np.mean([np.mean(np.sign(da) == np.sign(db[list(p)])) for p in itertools.permutations(range(6))])
        assert baseline == pytest.approx(brute)
        assert n == 6


def test_sign_agreement_drops_intervals_without_change():
    agreement, baseline, n = sign_agreement(np.array([1.0, 0.0, -1.0]), np.array([1.0, 1.0, -1.0]))
    assert n == 2 and agreement == 1.0 and baseline == pytest.approx(0.5)
    assert math.isnan(sign_agreement(np.zeros(3), np.ones(3))[0])


def comove_table(n_seeds: int, relation: str, steps: int = 16) -> pd.DataFrame:
    rows = []
    for seed in range(n_seeds):
        rng = np.random.default_rng(100 + seed)
        acc = np.cumsum(rng.normal(0, 1, steps))
        if relation == "together":
            sep = 0.5 * acc + 0.01 * np.arange(steps)
        elif relation == "opposite":
            sep = -acc
        else:
            sep = np.cumsum(rng.normal(0, 1, steps))
        for t in range(steps):
            rows.append({"seed": seed, "epoch": t, "train_accuracy": acc[t], "separability": sep[t]})
    return pd.DataFrame(rows)


def comovement(**kw) -> CoMovement:
    return CoMovement(name="sync", paper=P, statement="separability and training accuracy move together",
                      a="separability", b="train_accuracy", time="epoch", n_perm=200, **kw)


def test_comovement_holds():
    r = comovement().evaluate(comove_table(4, "together"))
    assert r.verdict == "supported"
    assert r.details["agreement"] == pytest.approx(1.0)
    assert r.details["p_value"] < 0.01
    assert r.details["spearman"] > 0.9


def test_comovement_that_does_not_hold():
    r = comovement().evaluate(comove_table(4, "opposite"))
    assert r.verdict == "not supported"
    assert r.details["agreement"] == pytest.approx(0.0)


def test_independent_series_are_inconclusive_and_effect_is_excess_over_chance():
    table = comove_table(30, "independent")
    r = comovement().evaluate(table)
    assert r.lower < 0 < r.upper
    assert r.verdict == "inconclusive"
    assert r.details["p_value"] > 0.05
    per_seed = []
    for _, g in table.groupby("seed"):
        g = g.sort_values("epoch")
        ag, bl, _ = sign_agreement(np.diff(g["separability"]), np.diff(g["train_accuracy"]))
        per_seed.append(ag - bl)
    assert r.effect == pytest.approx(np.mean(per_seed))


def test_raw_sign_agreement_statistic_and_trend_only_series():
    # both series only rise: every interval agrees, but so would any re-pairing
    rows = [{"seed": s, "epoch": t, "separability": t + 0.1 * s, "train_accuracy": np.sqrt(t + 1.0)}
            for s in range(3) for t in range(8)]
    table = pd.DataFrame(rows)
    raw = comovement(statistic="sign_agreement", min_effect=0.75).evaluate(table)
    assert raw.effect == pytest.approx(1.0) and raw.verdict == "supported"
    assert raw.details["baseline"] == pytest.approx(1.0)
    excess = comovement().evaluate(table)
    assert excess.effect == pytest.approx(0.0) and excess.verdict != "supported"


def test_comovement_spearman_statistic_and_partial():
    r = comovement(statistic="spearman", min_effect=0.5).evaluate(comove_table(4, "together"))
    assert r.verdict == "supported" and r.effect > 0.9
    c = comovement(min_effect=0.9, partial=0.0)
    # agreement 1 but the chance level is about 0.5, so the excess (~0.5) is below 0.9 yet above 0
    assert c.evaluate(comove_table(4, "together")).verdict == "partly supported"


# --------------------------------------------------------------------------------------------
# closed form and threshold


def test_closed_form():
    def table(values):
        return pd.DataFrame({"seed": range(len(values)), "constant": values, "theory": [0.5] * len(values)})

    c = ClosedForm(name="npk constant", paper="Lakshminarayanan & Singh 2021", statement="NTK = c * NPK",
                   value="constant", reference="theory", tolerance=0.05, partial=0.2)
    assert c.evaluate(table([0.501, 0.49, 0.505])).verdict == "supported"
    r = c.evaluate(table([0.55, 0.56, 0.57]))
    assert r.effect == pytest.approx(np.mean([0.05, 0.06, 0.07]) / 0.5)
    assert r.verdict == "partly supported"
    assert c.evaluate(table([1.0, 1.1, 0.9])).verdict == "not supported"
    assert c.evaluate(table([0.5, 0.6, 0.5, 0.51])).verdict == "inconclusive"
    absolute = ClosedForm(name="c", paper=P, statement="s", value="constant", reference=0.5, tolerance=0.01,
                          relative=False)
    assert absolute.evaluate(table([0.501, 0.499, 0.5])).effect == pytest.approx(np.mean([0.001, 0.001, 0.0]))


def test_threshold():
    t = pd.DataFrame({"seed": [0, 1, 2], "accuracy": [0.86, 0.87, 0.9]})
    c = Threshold(name="dlgn", paper="Lakshminarayanan & Singh 2021", statement="DLGN reaches over 83.5%",
                  value="accuracy", op=">=", bound=0.835, partial=0.7)
    r = c.evaluate(t)
    assert r.verdict == "supported"
    assert r.effect == pytest.approx(np.mean([0.86, 0.87, 0.9])) and r.n_seeds == 3
    # several rows of a seed are averaged first, then the seeds
    multi = pd.DataFrame({"seed": [0, 0, 1, 2, 2, 2], "accuracy": [0.8, 0.9, 0.88, 0.9, 0.91, 0.95]})
    r = c.evaluate(multi)
    assert [v for _, v in r.per_seed] == pytest.approx([0.85, 0.88, 0.92])
    assert r.effect == pytest.approx((0.85 + 0.88 + 0.92) / 3)
    assert c.evaluate(t.assign(accuracy=[0.75, 0.76, 0.74])).verdict == "partly supported"
    assert c.evaluate(t.assign(accuracy=[0.5, 0.55, 0.6])).verdict == "not supported"
    assert c.evaluate(t.assign(accuracy=[0.8, 0.9, 0.85])).verdict == "inconclusive"
    le = Threshold(name="loss", paper=P, statement="s", value="accuracy", op="<=", bound=0.95)
    assert le.evaluate(t).verdict == "supported"


# --------------------------------------------------------------------------------------------
# results and bad input


def test_result_is_frozen_and_frames_are_tidy():
    r = trend().evaluate(trend_table([[0.1, 0.2, 0.3, 0.4, 0.5]] * 3))
    assert isinstance(r, ClaimResult)
    with pytest.raises(AttributeError):
        r.verdict = "supported"  # type: ignore[misc]
    frame = claims_frame([r, comparison().evaluate(cmp_table([0.1, 0.1]))])
    assert frame["claim"].tolist() == ["depth", "x beats y"]
    assert set(frame["verdict"]) <= set(VERDICTS)
    per_seed = json.loads(frame.loc[0, "per_seed"])
    assert [s for s, _ in per_seed] == [0, 1, 2]
    assert [v for _, v in per_seed] == pytest.approx([1.0, 1.0, 1.0])
    assert "rule" in frame and frame.loc[0, "rule"].startswith("supported if")
    assert claims_frame([]).empty


def test_rule_text_names_the_bounds():
    rule = trend(min_effect=0.6).rule
    assert "0.6" in rule and "partly supported" in rule and "inconclusive" in rule
    assert "per group" in trend(by="model").rule


@pytest.mark.parametrize("make, match", [
    (lambda: trend(direction="up"), "direction"),
    (lambda: trend(min_effect=1.5), "min_effect"),
    (lambda: trend(confidence=1.0), "confidence"),
    (lambda: trend(where="layer > 1"), "where"),
    (lambda: trend(by=3), "by"),
    (lambda: trend(n_boot=1), "n_boot"),
    (lambda: MonotoneTrend(name="", paper=P, statement="s", x="a", y="b"), "name"),
    (lambda: MonotoneTrend(name="n", paper=P, statement="s", x=1, y="b"), "x"),
    (lambda: Comparison(name="n", paper=P, statement="s", value="v", a={}, b={"m": 1}), "a"),
    (lambda: Comparison(name="n", paper=P, statement="s", value="v", a={"m": 0}, b={"m": 1}, statistic="max"),
     "statistic"),
    (lambda: CoMovement(name="n", paper=P, statement="s", a="x", b="y", tol=-1.0), "tol"),
    (lambda: ClosedForm(name="n", paper=P, statement="s", value="v", reference="r", tolerance=0.1, partial=0.05),
     "partial"),
    (lambda: ClosedForm(name="n", paper=P, statement="s", value="v", reference="r", tolerance=0.0), "tolerance"),
    (lambda: Threshold(name="n", paper=P, statement="s", value="v", op=">", bound=1.0), "op"),
    (lambda: Threshold(name="n", paper=P, statement="s", value="v", op=">=", bound=1.0, partial=2.0), "partial"),
])
def test_bad_claim_arguments(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


def test_bad_tables():
    with pytest.raises(TypeError, match="table: expected a pandas DataFrame"):
        trend().evaluate({"seed": [0]})
    with pytest.raises(ValueError, match=r"missing \['md_lsm'\]"):
        trend().evaluate(pd.DataFrame({"seed": [0], "layer": [1]}))
    with pytest.raises(ValueError, match="where: claim 'depth' filters on column 'nope'"):
        trend(where={"nope": 1}).evaluate(trend_table([[0.1] * 5]))
    with pytest.raises(ValueError, match="where: expected a boolean mask"):
        trend(where=lambda t: [True]).evaluate(trend_table([[0.1] * 5]))


@pytest.mark.parametrize("statistic", ["sign_agreement", "spearman"])
def test_permutation_p_value_matches_full_enumeration(statistic):
    rng = np.random.default_rng(7)
    acc = np.cumsum(rng.normal(0, 1, 8))
    sep = np.cumsum(rng.normal(0, 1, 8)) + 0.8 * acc
    table = pd.DataFrame({"seed": 0, "epoch": range(8), "train_accuracy": acc, "separability": sep})
    r = comovement(statistic=statistic, min_effect=0.0).evaluate(table)
    da, db = np.diff(sep), np.diff(acc)

    def stat(x):
        if statistic == "spearman":
            return pd.Series(da).corr(pd.Series(x), method="spearman")
        return np.mean(np.sign(da) == np.sign(x))

    observed = stat(db)
    perms = [stat(db[list(p)]) for p in itertools.permutations(range(da.size))]
    exact = np.mean(np.array(perms) >= observed - 1e-12)
    c = CoMovement(name="s", paper=P, statement="s", a="separability", b="train_accuracy", time="epoch",
                   statistic=statistic, n_perm=4000)
    assert c.evaluate(table).details["p_value"] == pytest.approx(exact, abs=0.03)
    assert 0 < r.details["p_value"] <= 1


def test_claims_frame_names_what_is_not_a_claim_result():
    with pytest.raises(TypeError, match=r"results\[0\]: expected a ClaimResult \(from Claim.evaluate\), got"):
        claims_frame([None])
    with pytest.raises(TypeError, match="results: expected a sequence of ClaimResult"):
        claims_frame(42)
