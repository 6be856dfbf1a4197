"""Study S6 (nonlinear advantage): a tiny run of the real pipeline, its tables and claims, and the matched
early-versus-late gap checked against a closed form."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sepmeasure.claims import VERDICTS, Claim
from sepmeasure.cli import load_study
from sepmeasure.report import FigureSpec, render_figure

ROOT = Path(__file__).resolve().parents[1]
S6 = load_study(ROOT / "studies" / "s6_nonlinear_advantage.py")
MODULE = __import__(S6.run_one.__module__, fromlist=["run_one"])

TINY_MLP = {"arch": "mlp", "n_data": 300, "widths": (6, 6), "pre_epochs": 1, "post_epochs": 1,
            "weights": (0.05, 0.2), "lr": 0.01, "batch_size": 64}
TINY_RESNET = {"arch": "resnet", "dataset": "mnist1d", "n_data": 200, "width": 3, "blocks": 1, "pre_epochs": 1,
               "post_epochs": 1, "weights": (0.2,), "lr": 0.01, "batch_size": 64}


def test_study_declares_grids_seeds_claims_and_figures():
    assert S6.seeds["quick"] >= 3 and S6.seeds["full"] >= 5
    assert {c["arch"] for c in S6.configurations("quick")} == {"mlp", "resnet"}
    assert {c["dataset"] for c in S6.configurations("quick")} == {"mnist1d", "two_moons"}
    assert all(isinstance(c, Claim) and "2211.17180" in c.paper and c.statement for c in S6.claims)
    assert all(isinstance(f, FigureSpec) for f in S6.figures)


@pytest.fixture(scope="module")
def tiny_results():
    frames = []
    for seed in (0, 1, 2):
        for config in ({**TINY_MLP, "dataset": "mnist1d"}, {**TINY_MLP, "dataset": "two_moons"}, TINY_RESNET):
            config = {**config, "seed": seed}
            out = MODULE.run_one(config, device="cpu")
            frames.append(out.assign(**{k: v for k, v in config.items() if k not in ("widths", "weights")}))
    return pd.concat(frames, ignore_index=True)


def test_run_one_rows_are_tidy(device):
    rows = MODULE.run_one({**TINY_MLP, "dataset": "two_moons", "seed": 0}, device=str(device))
    assert set(rows["timing"]) == {"reference", "early", "late"}
    summary = rows[rows["kind"] == "summary"]
    assert not summary.duplicated(subset=["timing", "weight", "measure"]).any()
    wide = summary.pivot_table(index=["timing", "weight"], columns="measure", values="value")
    # a plain chain: both average path lengths equal the summed per-layer non-linear fractions
    layers = rows[rows["kind"] == "layer"].groupby(["timing", "weight"])["value"].sum()
    assert np.allclose(wide["average_path_length"], layers.loc[wide.index])
    assert np.allclose(wide["average_path_length_normalized"], layers.loc[wide.index])
    ref = wide.loc[("reference", 0.0)]
    assert ref["nonlinear_fraction"] == 1.0 and ref["average_path_length"] == 2.0
    dist = rows[rows["kind"] == "path_distribution"]
    sums = dist.groupby(["timing", "weight", "normalized"])["value"].sum()
    assert np.allclose(sums, 1.0)


def test_summarize_claims_and_figures_on_a_real_tiny_run(tiny_results):
    tables = S6.summarize(tiny_results)
    assert {"runs", "per_layer", "paths", "gap", "linearizable"} <= set(tables)
    assert len(tables["gap"]) == 9 and len(tables["linearizable"]) == 9
    resnet = tables["runs"][tables["runs"]["arch"] == "resnet"]
    # in a ResNet the unnormalized path length exceeds the normalized one (skips shorten random walks)
    ref = resnet[resnet["timing"] == "reference"]
    assert (ref["average_path_length"] > ref["average_path_length_normalized"]).all()
    for claim in S6.claims:
        assert claim.evaluate(tables[claim.table]).verdict in VERDICTS
    for spec in S6.figures:
        assert render_figure(spec, tables[spec.table])[:4] == b"\x89PNG"


def test_interpolated_gap_matches_the_closed_form_for_linear_curves():
    """Early accuracy a_e(f) = f, late a_l(f) = 0.5 + 0.5 f: the gap at f is 0.5 (1 - f); averaged over the
    targets linspace(lo, 1, 6)[:-1] with lo = 0.2 (the larger smallest fraction)."""
    f_early = np.array([0.1, 0.4, 0.7, 1.0])
    f_late = np.array([0.2, 0.6, 1.0])
    early = np.column_stack([f_early, f_early])
    late = np.column_stack([f_late, 0.5 + 0.5 * f_late])
    gap, lo = MODULE.interpolated_gap(early, late)
    targets = np.linspace(0.2, 1.0, 6)[:-1]
    assert lo == pytest.approx(0.2)
    assert gap == pytest.approx(float(np.mean(0.5 * (1 - targets))), abs=1e-12)
    # the gap is antisymmetric and zero for identical curves
    assert MODULE.interpolated_gap(late, early)[0] == pytest.approx(-gap, abs=1e-12)
    assert MODULE.interpolated_gap(early, early)[0] == 0.0


def test_interpolated_gap_is_undefined_without_overlap_and_averages_duplicates():
    early = np.array([[0.97, 0.5], [1.0, 0.6]])
    late = np.array([[0.2, 0.1], [1.0, 0.6]])
    assert np.isnan(MODULE.interpolated_gap(early, late)[0])
    dup = np.array([[0.5, 0.2], [0.5, 0.4], [1.0, 0.6]])
    single = np.array([[0.5, 0.3], [1.0, 0.6]])
    assert MODULE.interpolated_gap(dup, single)[0] == pytest.approx(0.0, abs=1e-12)
