"""Study S7 (cross-paper): the across-layer and the within-layer (depth-controlled) correlations against scipy,
residualisation and exact enumeration, the jackknife, the registry pin, a tiny run of the real pipeline."""
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

from sepmeasure.claims import VERDICTS, Claim, Control
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
        "widths": (6, 6, 6), "epochs": 1, "mask_penalties": (1.0, 3.0), "prior_weight": 0.05, "post_epochs": 1,
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


PINS = {"2": "bb4ab0d7b3f5e78b"}


def test_registry_is_pinned_and_every_claim_has_a_control_and_a_failure_sentence():
    reg = MODULE.REGISTRY
    assert reg.study_version == S7.version == "2" and "2" in reg.changes
    reg.verify(PINS)
    for claim in S7.claims:
        assert isinstance(claim.control, Control) and claim.control.source == "column"
        assert claim.not_supported_if and claim.failure_condition.startswith(claim.not_supported_if.rstrip("."))
    assert [c.name for c in S7.claims] == [c.name for c in reg.claims]


def test_study_declares_grids_seeds_claims_and_figures():
    assert S7.seeds["quick"] >= 3 and S7.seeds["full"] >= 5
    assert all(isinstance(c, Claim) and c.statement for c in S7.claims)
    assert all(isinstance(f, FigureSpec) for f in S7.figures)
    assert "answer" in S7.description and "mask_penalty" not in S7.quick  # one configuration per seed


def residualised_within_cell(x, y, cells):
    """Independent: ranks inside each cell (scipy), residuals on cell indicators by least squares, Pearson."""
    x, y, cells = map(np.asarray, (x, y, cells))
    rx, ry = np.empty(len(x)), np.empty(len(y))
    for c in np.unique(cells):
        m = cells == c
        rx[m], ry[m] = stats.rankdata(x[m]), stats.rankdata(y[m])
    D = (cells[:, None] == np.unique(cells)[None, :]).astype(float)
    res = [v - D @ np.linalg.lstsq(D, v, rcond=None)[0] for v in (rx, ry)]
    return float(res[0] @ res[1] / np.sqrt((res[0] @ res[0]) * (res[1] @ res[1])))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=6, max_size=6))
def test_within_layer_statistic_and_exact_null_by_brute_force(points):
    x = np.array([p[0] for p in points], float)
    y = np.array([p[1] for p in points], float)
    cells = np.array([0, 0, 0, 1, 1, 1])
    r = MODULE.within_layer_correlation(x, y, cells, n_perm=100)
    varying = sum(np.ptp(x[cells == c]) > 0 and np.ptp(y[cells == c]) > 0 for c in (0, 1))
    assert r["cells"] == 2 and r["cells_varying"] == varying
    if varying == 0:
        assert np.isnan(r["rho"])
        return
    rho = residualised_within_cell(x, y, cells)
    assert r["rho"] == pytest.approx(rho, abs=1e-10)
    # exact within-cell null: all 3! x 3! re-pairings of y inside each cell, statistic recomputed independently
    null = []
    for p0 in itertools.permutations(range(3)):
        for p1 in itertools.permutations(range(3)):
            yy = np.concatenate([y[:3][list(p0)], y[3:][list(p1)]])
            null.append(residualised_within_cell(x, yy, cells))
    null = np.array(null)
    assert r["exact"] == 1.0
    assert r["null_mean"] == pytest.approx(null.mean(), abs=1e-10)
    assert r["p_value"] == pytest.approx(np.mean(null >= rho - 1e-12), abs=1e-10)


def test_within_layer_one_cell_is_spearman_and_depth_alone_gives_zero():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=6), rng.normal(size=6)
    r = MODULE.within_layer_correlation(x, y, np.zeros(6))
    assert r["rho"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    # both quantities rise with depth, seeds do nothing: across layers rho = 1, within layers nothing but noise
    layer = np.repeat(np.arange(4), 8)
    xs = layer + 0.01 * rng.normal(size=32)
    ys = layer + 0.01 * rng.normal(size=32)
    assert stats.spearmanr(xs, ys).statistic > 0.9
    w = MODULE.within_layer_correlation(xs, ys, layer, n_perm=4000, seed=1)
    assert w["exact"] == 0.0 and abs(w["null_mean"]) < 0.02 and w["p_value"] > 0.01
    assert abs(w["rho"]) < 0.5
    # a real within-layer association is found
    ys2 = layer + 0.5 * (xs - layer) + 0.0001 * rng.normal(size=32)
    assert MODULE.within_layer_correlation(xs, ys2, layer)["rho"] > 0.9


def test_partial_spearman_against_residualisation_and_jackknife_by_hand():
    rng = np.random.default_rng(5)
    z = np.repeat(np.arange(5), 4).astype(float)
    x, y = z + rng.normal(size=20), z + rng.normal(size=20)
    ranks = [stats.rankdata(v) for v in (x, y, z)]
    Z = np.column_stack([np.ones(20), ranks[2]])
    res = [v - Z @ np.linalg.lstsq(Z, v, rcond=None)[0] for v in ranks[:2]]
    assert MODULE.partial_spearman(x, y, z) == pytest.approx(np.corrcoef(*res)[0, 1], abs=1e-12)
    values = {0: 1.0, 1: 3.0, 2: 8.0, 3: 2.0}
    ps = MODULE.jackknife_pseudo_values(values, lambda kept: float(np.mean([values[k] for k in kept])))
    assert ps == pytest.approx(values)  # the mean's pseudo-values are the values themselves
    sq = MODULE.jackknife_pseudo_values(values, lambda kept: float(np.mean([values[k] for k in kept]) ** 2))
    n, full = 4, np.mean(list(values.values())) ** 2
    for u in values:
        rest = np.mean([values[k] for k in values if k != u]) ** 2
        assert sq[u] == pytest.approx(n * full - (n - 1) * rest)


def test_answer_sentence_reads_the_depth_controlled_statistics():
    def tables(pseudo):
        within = pd.DataFrame([{"seed": s, "method": m, "predictor": "linear_probe", "pseudo_value": pseudo[m] + 0.01 * s,
                                "null_mean": 0.0} for s in range(4) for m in ("mask", "prior")])
        summary = pd.DataFrame([{"method": m, "predictor": "linear_probe", "within_rho": pseudo[m], "null_mean": 0.0,
                                 "p_value": 0.01, "seeds": 4, "cells": 5} for m in ("mask", "prior")])
        across = pd.DataFrame([{"seed": s, "method": m, "predictor": "linear_probe", "rho": 0.9, "rho_depth": 0.9}
                               for s in range(4) for m in ("mask", "prior")])
        return summary, across, within
    assert MODULE.answer_sentence(*tables({"mask": 0.8, "prior": 0.8})).startswith("Yes")
    text = MODULE.answer_sentence(*tables({"mask": -0.4, "prior": -0.3}))
    assert text.startswith("No") and "4 seeds in 5 cells" in text and "the layer index alone +0.90" in text
    text = MODULE.answer_sentence(*tables({"mask": 0.1, "prior": 0.8}))
    assert text.startswith("Partly") and "only weakly predicts the share left linear by the masks" in text


@needs_separability
def test_tiny_run_summary_and_claims(device):
    frames = []
    for seed in (0, 1, 2):
        config = {**TINY, "seed": seed}
        frames.append(MODULE.run_one(config, device=str(device)).assign(seed=seed))
    results = pd.concat(frames, ignore_index=True)
    layers = results[results["kind"] == "layer"]
    assert set(layers["method"]) == {"mask", "prior"}
    assert set(layers["layer_index"].astype(int)) == {1, 2, 3}
    # every arm once per seed: the prior once, the masks once per penalty
    assert not layers.duplicated(subset=["seed", "method", "setting", "quantity", "layer_index"]).any()
    assert set(layers[layers.method == "prior"]["setting"]) == {TINY["prior_weight"]}
    assert set(layers[layers.method == "mask"]["setting"]) == set(TINY["mask_penalties"])
    tables = S7.summarize(results)
    within, summary, across = tables["within_layer"], tables["depth_controlled"], tables["across_layers"]
    assert len(within) == 3 * 2 * 2 and not within.duplicated(subset=["seed", "method", "predictor"]).any()
    assert len(across) == 3 * (1 + len(TINY["mask_penalties"])) * 2
    per_layer = tables["per_layer"]
    for _, row in summary.iterrows():
        g = per_layer[per_layer.method == row["method"]]
        cells = g["setting"].astype(str) + "/" + g["layer_index"].astype(str)
        x, y = g[f"input_{row['predictor']}"].to_numpy(), g["linear_share"].to_numpy()
        if row["cells_varying"] == 0:
            assert np.isnan(row["within_rho"])
        else:
            assert row["within_rho"] == pytest.approx(residualised_within_cell(x, y, cells.to_numpy()), abs=1e-10)
    for _, row in across.iterrows():
        g = per_layer[(per_layer.method == row["method"]) & (per_layer.setting == row["setting"])
                      & (per_layer.seed == row["seed"])].sort_values("layer_index")
        x, y = g[f"input_{row['predictor']}"].to_numpy(), g["linear_share"].to_numpy()
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            assert row["rho"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    answer = tables["answer"]["answer"]
    assert len(answer) == 1 and answer[0].split(":")[0] in {"Yes", "No", "Partly", "Unclear", "No within-layer correlation could be measured (no layer varies across seeds in both quantities)."}
    assert len(tables["caveats"]) >= 2 and "3 seeds" in tables["caveats"]["caveat"][0]
    for claim in S7.claims:
        r = claim.evaluate(tables[claim.table])
        assert r.verdict in VERDICTS and r.control.startswith(claim.control.description)
    for spec in S7.figures:
        assert render_figure(spec, tables[spec.table])[:4] == b"\x89PNG"


def test_within_layer_bad_input_and_one_seed_per_cell():
    with pytest.raises(ValueError, match="x, y, cells: expected 1-D arrays of one length"):
        MODULE.within_layer_correlation([1, 2, 3], [1, 2], [0, 0, 0])
    r = MODULE.within_layer_correlation([1.0, 2.0, 3.0], [3.0, 1.0, 2.0], [0, 1, 2])  # no cell has 2 units
    assert r["cells"] == 0 and np.isnan(r["rho"]) and np.isnan(r["p_value"])
