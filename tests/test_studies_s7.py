"""Study S7 (cross-paper): the permutation-baselined correlation against scipy and brute force, a tiny run
of the real pipeline, its tables, answer sentence and claim."""
from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from sepmeasure.claims import VERDICTS, Claim
from sepmeasure.cli import load_study
from sepmeasure.report import FigureSpec, render_figure

ROOT = Path(__file__).resolve().parents[1]
S7 = load_study(ROOT / "studies" / "s7_synthesis.py")
MODULE = __import__(S7.run_one.__module__, fromlist=["run_one"])

needs_separability = pytest.mark.skipif(
    importlib.util.find_spec("sepmeasure.separability") is None
    or not hasattr(__import__("sepmeasure.separability", fromlist=["x"]), "layer_separability"),
    reason="sepmeasure.separability.layer_separability is not available")

TINY = {"dataset": "mnist1d", "lr": 0.01, "post_lr": 0.01, "batch_size": 64, "classes": (0, 1), "n_data": 300,
        "widths": (6, 6, 6), "epochs": 1, "mask_penalty": 1.0, "prior_weight": 0.05, "post_epochs": 1,
        "per_class": 8}


def brute_force(x, y):
    rho = stats.spearmanr(x, y).statistic
    null = np.array([stats.spearmanr(x, np.asarray(y)[list(p)]).statistic
                     for p in itertools.permutations(range(len(y)))])
    return rho, null.mean(), np.mean(null >= rho - 1e-12)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=3, max_size=6), st.lists(st.integers(0, 5), min_size=3, max_size=6))
def test_permutation_correlation_matches_scipy_and_brute_force(xs, ys):
    n = min(len(xs), len(ys))
    x, y = np.array(xs[:n], float), np.array(ys[:n], float)
    r = MODULE.permutation_correlation(x, y, n_perm=1000)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        assert np.isnan(r["rho"])
        return
    rho, null_mean, p = brute_force(x, y)
    assert r["exact"] == 1.0
    assert r["rho"] == pytest.approx(rho, abs=1e-10)
    assert r["null_mean"] == pytest.approx(null_mean, abs=1e-10)
    assert r["p_value"] == pytest.approx(p, abs=1e-10)
    assert r["excess"] == pytest.approx(rho - null_mean, abs=1e-10)


def test_random_permutations_approximate_the_exact_null():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=7), rng.normal(size=7)  # 5040 permutations > n_perm: seeded draws
    exact = MODULE.permutation_correlation(x, y, n_perm=10_000)
    drawn = MODULE.permutation_correlation(x, y, n_perm=4000, seed=1)
    assert exact["exact"] == 1.0 and drawn["exact"] == 0.0
    assert drawn["rho"] == pytest.approx(exact["rho"])
    assert drawn["p_value"] == pytest.approx(exact["p_value"], abs=0.03)  # binomial sd at n=4000 < 0.008
    assert abs(drawn["null_mean"]) < 0.03
    assert drawn == MODULE.permutation_correlation(x, y, n_perm=4000, seed=1)


def test_study_declares_grids_seeds_claims_and_figures():
    assert S7.seeds["quick"] >= 3 and S7.seeds["full"] >= 5
    assert all(isinstance(c, Claim) and c.statement for c in S7.claims)
    assert all(isinstance(f, FigureSpec) for f in S7.figures)
    assert "answer" in S7.description


def test_answer_sentence_reads_the_correlations():
    rows = [{"mask_penalty": 1.0, "seed": s, "method": m, "predictor": "linear_probe", "rho": 0.9,
             "null_mean": 0.0, "excess": 0.9, "p_value": 0.04} for s in range(3) for m in ("mask", "prior")]
    assert MODULE.answer_sentence(pd.DataFrame(rows)).startswith("Yes")
    for r in rows:
        r["rho"] = r["excess"] = -0.5
    assert MODULE.answer_sentence(pd.DataFrame(rows)).startswith("No")
    for r in rows:
        r["rho"] = r["excess"] = 0.9 if r["method"] == "prior" else 0.2
    text = MODULE.answer_sentence(pd.DataFrame(rows))
    assert text.startswith("Partly") and "only weakly predicts the share left linear by the masks" in text


@needs_separability
def test_tiny_run_summary_and_claim(device):
    frames = []
    for seed in (0, 1, 2):
        config = {**TINY, "seed": seed}
        frames.append(MODULE.run_one(config, device=str(device))
                      .assign(mask_penalty=config["mask_penalty"], seed=seed))
    results = pd.concat(frames, ignore_index=True)
    layers = results[results["kind"] == "layer"]
    assert set(layers["method"]) == {"separability", "mask", "prior"}
    assert set(layers["layer_index"].astype(int)) == {1, 2, 3}
    assert not layers.duplicated(subset=["seed", "method", "measure", "layer_index"]).any()
    tables = S7.summarize(results)
    corr = tables["correlation"]
    assert set(corr["method"]) == {"mask", "prior"}
    assert len(corr) == 3 * 2 * 2   # seeds x methods x predictors
    # each correlation recomputed from the layer rows: Spearman of the input's separability against
    # the share left linear, undefined (nan) where either is the same in every layer
    wide = layers.pivot_table(index=["seed", "layer_index"], columns=["method", "measure"], values="value")
    for _, row in corr.iterrows():
        g = wide.loc[row["seed"]].sort_index()
        x, y = g[("separability", row["predictor"])].to_numpy(), g[(row["method"], "linear_share")].to_numpy()
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            assert np.isnan(row["rho"]) and np.isnan(row["p_value"])
        else:
            assert row["rho"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    answer = tables["answer"]["answer"]
    assert len(answer) == 1
    if corr[corr["predictor"] == "linear_probe"]["rho"].isna().all():
        assert answer[0].startswith("No correlation could be measured")
    else:
        assert answer[0].split(":")[0] in {"Yes", "No", "Partly", "Unclear"} and "Spearman rho" in answer[0]
    for claim in S7.claims:
        assert claim.evaluate(tables[claim.table]).verdict in VERDICTS
    for spec in S7.figures:
        assert render_figure(spec, tables[spec.table])[:4] == b"\x89PNG"
