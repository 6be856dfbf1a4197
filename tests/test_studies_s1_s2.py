"""Studies S1 and S2: their registries (pinned), controls and failure sentences, the new statistics
against independent computations, their tables and verdicts on synthetic results whose truth is
known, and a smoke run of the real pipeline on a tiny grid."""
from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from sepmeasure.claims import Claim, Control, sign_agreement
from sepmeasure.cli import load_study
from sepmeasure.data import LabeledData
from sepmeasure.report import FigureSpec, render_figure

ROOT = Path(__file__).resolve().parents[1]
S1 = load_study(ROOT / "studies" / "s1_synchronicity.py")
M1 = sys.modules[S1.run_one.__module__]
S2 = load_study(ROOT / "studies" / "s2_architecture.py")
M2 = sys.modules[S2.run_one.__module__]

PINS1 = {"3": "11599ea4aa719305"}
PINS2 = {"3": "b657c7d7b24705a1"}


# --------------------------------------------------------------------------------------------
# declarations


@pytest.mark.parametrize("study, module, pins", [(S1, M1, PINS1), (S2, M2, PINS2)], ids=["s1", "s2"])
def test_registry_is_pinned_and_every_claim_has_a_control(study, module, pins):
    module.REGISTRY.verify(pins)
    assert study.version == module.REGISTRY.study_version
    assert [c.name for c in study.claims] == [c.name for c in module.REGISTRY.claims]
    assert module.REGISTRY.study_version in module.REGISTRY.changes
    assert study.seeds["quick"] >= 3 and study.seeds["full"] > study.seeds["quick"]
    assert len(study.configurations("full")) > len(study.configurations("quick"))
    for c in study.claims:
        assert isinstance(c, Claim) and "Zhang" in c.paper and "2307.13962" in c.paper and c.statement
        assert isinstance(c.control, Control) and c.control.source == "rows", c.name
        assert c.not_supported_if.startswith("Not supported if"), c.name
        assert c.failure_condition.startswith(c.not_supported_if)
    assert module.REGISTRY.to_frame()["reason"].str.len().gt(60).all()
    assert all(isinstance(f, FigureSpec) for f in study.figures)
    for config in study.configurations("quick"):
        assert config["per_class"] <= 100 and config["epochs"] <= 15


def test_each_s2_claim_reads_one_measure():
    """No claim averages measures of different scales: each filters on exactly one measure."""
    for c in S2.claims:
        assert isinstance(c.where["measure"], str) and not c.by, c.name
    assert {c.where["measure"] for c in S2.claims} == set(M2.CLAIM_MEASURES)
    for c in S1.claims:
        assert isinstance(c.where["measure"], str), c.name


def test_s1_measures_the_classes_the_accuracy_counts_with_room_to_move():
    for config in S1.configurations("quick") + S1.configurations("full"):
        assert len(config["classes"]) == 2 and config["pairs"] == "ovo" and config["per_class"] >= 100
        assert config["early_steps"][:3] == (1, 2, 4)
    assert {c["labels"] for c in S1.configurations("quick")} == {"true", "shuffled"}


# --------------------------------------------------------------------------------------------
# statistics against independent computations


def brute_partial(a, b, t):
    """Residuals of the ranks of a and b after least squares on the ranks of t (with intercept), correlated."""
    ra, rb, rt = (stats.rankdata(v) for v in (a, b, t))
    design = np.column_stack([np.ones_like(rt), rt])
    res_a = ra - design @ np.linalg.lstsq(design, ra, rcond=None)[0]
    res_b = rb - design @ np.linalg.lstsq(design, rb, rcond=None)[0]
    return stats.pearsonr(res_a, res_b).statistic


@pytest.mark.parametrize("seed", range(6))
def test_partial_spearman_equals_the_residual_correlation(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 30))
    t = np.arange(n, dtype=float)
    a = rng.normal(size=n) - 0.3 * t
    b = 0.5 * a + rng.normal(size=n) + 0.2 * t
    if seed % 2:
        a = np.round(a)  # ties
    assert M1.partial_spearman(a, b, t) == pytest.approx(brute_partial(a, b, t), abs=1e-10)


def test_partial_spearman_removes_a_shared_trend_and_refuses_bad_input():
    rng = np.random.default_rng(0)
    t = np.arange(40.0)
    a, b = -t + rng.normal(0, 0.5, 40), -t + rng.normal(0, 0.5, 40)  # both only follow time
    assert stats.spearmanr(a, b).statistic > 0.9
    assert abs(M1.partial_spearman(a, b, t)) < 0.4
    assert math.isnan(M1.partial_spearman([1, 2, 3], [1, 2, 3], [0, 1, 2]))
    assert math.isnan(M1.partial_spearman(np.ones(6), np.arange(6.0), np.arange(6.0)))
    with_nan = M1.partial_spearman(np.r_[a, np.nan], np.r_[b, 1.0], np.r_[t, 40.0])
    assert with_nan == pytest.approx(M1.partial_spearman(a, b, t))
    with pytest.raises(ValueError, match="one length"):
        M1.partial_spearman([1, 2, 3, 4], [1, 2, 3], [1, 2, 3, 4])


def test_series_statistics_against_sign_agreement_and_scipy():
    rng = np.random.default_rng(3)
    sep, acc = np.cumsum(rng.normal(size=15)), np.cumsum(rng.normal(size=15))
    s = M1.series_statistics(sep, acc)
    agreement, baseline, n = sign_agreement(np.diff(sep), np.diff(acc), tol=1e-6)
    assert s["agreement"] == agreement and s["baseline"] == baseline and s["intervals"] == n
    assert s["excess_agreement"] == pytest.approx(agreement - baseline)
    assert s["spearman_of_changes"] == pytest.approx(stats.spearmanr(np.diff(sep), np.diff(acc)).statistic)
    assert s["partial_spearman"] == pytest.approx(brute_partial(np.diff(sep), np.diff(acc), np.arange(14)))


def test_probe_balanced_accuracy_and_auc_against_sklearn():
    """The held-out probe of S1 and S2 (both studies call held_out_probe_rows)."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from sepmeasure.separability import fit_logistic, layer_separability
    from sepmeasure.separability.layer_rows import held_out_probe_rows

    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0] * 40 + [1] * 20 + [2] * 20)
    X = torch.randn(80, 3, generator=g, dtype=torch.float64) + torch.nn.functional.one_hot(y, 3) * 1.2
    acts = {"h": X}
    table = layer_separability(acts, y, measures=("md_lsm",), pairs="ovr", held_out=0.3, seed=1, progress=False)
    rows = pd.DataFrame(held_out_probe_rows(acts, y, table))
    test = sorted(table.attrs["held_out_rows"])
    train = [i for i in range(80) if i not in set(test)]
    for a in range(3):
        w, b = fit_logistic(X[train], (y[train] == a).long())
        s = (X[test] @ w + b).numpy()
        truth = (y[test] == a).numpy()
        got = rows[(rows["class_a"] == a)].set_index("measure")["value"]
        assert got["linear_probe"] == pytest.approx(balanced_accuracy_score(truth, s > 0))
        assert got["probe_auc"] == pytest.approx(roc_auc_score(truth, s))


def test_s1_accuracy_on_the_measured_classes_is_the_choice_between_them():
    X = torch.arange(6.0).reshape(6, 1)
    data = LabeledData(X, torch.tensor([8, 3, 0, 8, 5, 3]))
    sub = M1.measured_classes(data, (8, 3))
    assert sub.y.tolist() == [0, 1, 0, 1] and sub.X.squeeze(1).tolist() == [0.0, 1.0, 3.0, 5.0]

    class Fixed(torch.nn.Module):  # logits: class 8 wins for x < 2, class 0 always largest overall
        def forward(self, x):
            out = torch.zeros(x.shape[0], 10)
            out[:, 0] = 10.0
            out[:, 8] = (x[:, 0] < 2).float()
            out[:, 3] = (x[:, 0] >= 2).float() * 0.5
            return out

    from sepmeasure.training import evaluate

    restricted = evaluate(M1.Restricted(Fixed(), (8, 3)), sub)["accuracy"]
    # x = 0 (8: right), 1 (3: wrong), 3 (8: wrong), 5 (3: right)
    assert restricted == pytest.approx(0.5)
    shuffled = M1.shuffled(data, 0)
    assert sorted(shuffled.y.tolist()) == sorted(data.y.tolist()) and torch.equal(shuffled.X, data.X)


# --------------------------------------------------------------------------------------------
# S1 on synthetic results


STEPS = [0, 1, 2, 4, 8, 16, 38, 76, 114, 152, 190]


def s1_results(coupling: float, layer_slope: float = 0.05, seeds=(0, 1, 2)) -> pd.DataFrame:
    """Rows shaped like S1's run_one. In the true-label run every measure is a time trend plus
    ``coupling`` times the accuracy's own noise; in the shuffled run it is the trend plus independent noise."""
    rows = []
    for model, dataset in (("mlp", "mnist1d"), ("cnn", "digits")):
        for labels in ("true", "shuffled"):
            for seed in seeds:
                rng = np.random.default_rng([seed, labels == "true"])
                trend = 0.5 * (1 - np.exp(-np.arange(len(STEPS)) / 3))
                noise = rng.normal(0, 0.05, len(STEPS))
                acc = 0.5 + trend + noise
                own = rng.normal(0, 0.05, len(STEPS))
                for i, step in enumerate(STEPS):
                    common = {"model": model, "dataset": dataset, "labels": labels, "seed": seed, "step": step,
                              "epoch": step // 38}
                    rows.append({**common, "kind": "train_accuracy", "value": acc[i], "loss": 1 - acc[i]})
                    for layer in (1, 2, 3):
                        # the layers' ordering is reversed at initialisation and appears with training
                        depth = layer_slope * layer * (1 if i > 0 else -1)
                        value = (0.6 + 0.3 * trend[i] + depth
                                 + (coupling * noise[i] if labels == "true" else 0.05 * own[i]))
                        for m in (*M1.CLAIM_MEASURES, "md_lsm", "hull_distance", "probe_auc"):
                            rows.append({**common, "kind": "separability", "layer": f"layers.{layer - 1}.act",
                                         "layer_index": layer, "class_a": 3, "class_b": 8, "measure": m,
                                         "value": value})
                for epoch in range(6):
                    for split in ("train", "test"):
                        rows.append({"model": model, "dataset": dataset, "labels": labels, "seed": seed,
                                     "epoch": epoch, "step": 38 * epoch, "kind": "history", "split": split,
                                     "accuracy": 0.1 * epoch, "loss": 1.0})
    return pd.DataFrame(rows)


def evaluate_all(study, tables):
    return {c.name: c.evaluate(tables[c.table]) for c in study.claims}


def test_s1_tables_and_verdicts_when_separability_tracks_accuracy_beyond_time():
    tables = S1.summarize(s1_results(coupling=1.0))
    assert {"separability", "synchrony", "final", "association", "saturation_at_init", "accuracy"} <= set(tables)
    assoc = tables["association"]
    one = assoc[(assoc.labels == "true") & (assoc.measure == "linear_probe") & (assoc.layer_index == 2)
                & (assoc.seed == 0) & (assoc.model == "mlp")].iloc[0]
    sync = tables["synchrony"]
    g = sync[(sync.labels == "true") & (sync.measure == "linear_probe") & (sync.layer_index == 2)
             & (sync.seed == 0) & (sync.model == "mlp")].sort_values("step")
    da, db = np.diff(g.separability.to_numpy()), np.diff(g.train_accuracy.to_numpy())
    assert one.partial_spearman == pytest.approx(brute_partial(da, db, np.arange(da.size)))
    results = evaluate_all(S1, tables)
    for m in M1.CLAIM_MEASURES:
        assert results[f"sync-sign-{m}"].verdict == "supported", results[f"sync-sign-{m}"].reason
        assert results[f"sync-detrended-{m}"].verdict == "supported"
        assert results[f"deeper-more-separable-{m}"].verdict == "supported"
    # the control is the shuffled-label run: its value is reported as the baseline
    r = results["sync-detrended-linear_probe"]
    shuffled = assoc[(assoc.labels == "shuffled") & (assoc.measure == "linear_probe")]
    assert r.baseline == pytest.approx(shuffled.groupby("seed").partial_spearman.mean().mean())
    final = tables["final"]
    assert set(final.state) == {"init", "trained"}
    assert set(final[final.state == "trained"].step) == {190} and set(final[final.state == "init"].step) == {0}


def test_s1_verdicts_when_only_time_links_separability_and_accuracy():
    """Both series follow the same trend in time, but their changes are otherwise unrelated: a plain
    correlation of changes would be positive; the detrended claims, against the shuffled run, are not met."""
    tables = S1.summarize(s1_results(coupling=0.0, layer_slope=0.0))
    assoc = tables["association"]
    true = assoc[assoc.labels == "true"]
    assert true.spearman_of_changes.mean() > 0.2  # the time confound
    results = evaluate_all(S1, tables)
    for m in M1.CLAIM_MEASURES:
        assert results[f"sync-detrended-{m}"].verdict in ("not supported", "inconclusive")
        assert results[f"sync-detrended-{m}"].verdict != "supported"
        assert results[f"deeper-more-separable-{m}"].verdict == "inconclusive"  # no layer trend at all


def test_s1_figures_draw_from_its_tables():
    tables = S1.summarize(s1_results(coupling=1.0, seeds=(0, 1)))
    for spec in S1.figures:
        assert render_figure(spec, tables[spec.table])[:4] == b"\x89PNG"


# --------------------------------------------------------------------------------------------
# S2 on synthetic results


def s2_results(width_effect: float, untrained_width_effect: float) -> pd.DataFrame:
    rows = []
    for config in S2.configurations("quick"):
        act, width, depth, seed = config["activation"], config["width"], config["depth"], config["seed"]
        for state in ("untrained", "matched", "trained"):
            effect = untrained_width_effect if state == "untrained" else width_effect
            layers = range(1, depth + 1) if state == "trained" else [depth]
            for layer in layers:
                for m in (*M2.CLAIM_MEASURES, "md_lsm", "hull_distance", "probe_auc"):
                    value = (0.6 + effect * np.log2(width) + (0.01 if state != "untrained" else -0.01) * depth
                             + (0.0 if act == "identity" or state == "untrained" else 0.1) + 0.01 * seed)
                    rows.append({**config, "kind": "separability", "state": state, "layer": f"layers.{layer - 1}.act",
                                 "layer_index": layer, "relative_depth": layer / depth, "class_a": 0,
                                 "class_b": "rest", "measure": m, "value": value, "train_accuracy": 0.4,
                                 "step": 10.0 if state == "matched" else np.nan})
        for split in ("train", "test"):
            rows.append({**config, "kind": "accuracy", "split": split, "value": 0.5 + 0.01 * seed})
    return pd.DataFrame(rows)


def test_s2_verdicts_against_the_untrained_networks():
    tables = S2.summarize(s2_results(width_effect=0.02, untrained_width_effect=-0.01))
    last = tables["last_layer"]
    assert (last["layer_index"] == last["depth"]).all() and set(last.state) == {"untrained", "matched", "trained"}
    assert {"test_accuracy"} <= set(last.columns)
    results = evaluate_all(S2, tables)
    for m in M2.CLAIM_MEASURES:
        r = results[f"nonlinearity-needed-{m}"]
        assert r.verdict == "supported" and r.effect == pytest.approx(0.1) and r.baseline == pytest.approx(0.0)
        assert results[f"wider-more-separable-{m}"].verdict == "supported"
        assert results[f"wider-more-separable-{m}"].effect == pytest.approx(2.0)  # +1 trained, -1 untrained
        assert results[f"wider-more-separable-matched-{m}"].verdict == "supported"
        assert results[f"deeper-more-separable-{m}"].verdict == "supported"
    # the same width trend in the untrained networks: training adds nothing, so the width claims fail
    same = evaluate_all(S2, S2.summarize(s2_results(width_effect=0.02, untrained_width_effect=0.02)))
    for m in M2.CLAIM_MEASURES:
        assert same[f"wider-more-separable-{m}"].verdict == "not supported"
        assert same[f"wider-more-separable-{m}"].baseline == pytest.approx(1.0)
    for spec in S2.figures:
        assert render_figure(spec, tables[spec.table])[:4] == b"\x89PNG"


# --------------------------------------------------------------------------------------------
# the real pipeline on a tiny grid


def test_s1_and_s2_run_on_a_tiny_grid(tmp_path):
    base1 = {k: v for k, v in S1.configurations("quick")[0].items() if k not in ("seed", "labels")}
    tiny1 = dataclasses.replace(S1, quick=[{**base1, "epochs": 1, "early_steps": (1,), "per_class": 12,
                                            "depth": 2, "width": 8, "n_data": 300,
                                            "labels": ["true", "shuffled"]}],
                                seeds={"quick": 2, "full": 3})
    r1 = tiny1.run("quick", out=tmp_path, progress=False, threads=1)
    sep = r1.tables["separability"]
    assert set(M1.CLAIM_MEASURES) <= set(sep["measure"]) and set(sep["labels"]) == {"true", "shuffled"}
    assert set(sep["layer_index"]) == {1, 2}
    assert sorted(sep["step"].unique())[:2] == [0, 1]
    for m in ("md_lsm", "md_lsm_held_out", "linear_probe", "probe_auc"):
        v = sep[sep["measure"] == m]["value"]
        assert v.notna().all() and v.between(0, 1).all(), m
    acc = r1.tables["synchrony"]["train_accuracy"]
    assert acc.between(0, 1).all()
    assert len(r1.claims) == len(S1.claims)

    base = {k: v for k, v in S2.configurations("quick")[0].items() if k != "seed"}
    tiny2 = dataclasses.replace(S2, quick=[{**base, "epochs": 2, "per_class": 10, "classes": (0, 1, 2),
                                            "width": 8, "n_data": 300, "activation": ["relu", "identity"]}],
                                seeds={"quick": 2, "full": 3})
    r2 = tiny2.run("quick", out=tmp_path, progress=False, threads=1)
    last = r2.tables["last_layer"]
    assert set(last["activation"]) == {"relu", "identity"}
    assert {"untrained", "trained"} <= set(last["state"])
    assert last["test_accuracy"].between(0, 1).all()
    matched = last[last.state == "matched"]
    assert (matched["train_accuracy"] >= M2.TARGET_ACCURACY).all()
