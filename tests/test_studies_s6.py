"""Study S6 (nonlinear advantage): a tiny run of the real pipeline, its tables and claims, the registry pinned,
and every helper (matched gap, permutation baseline, validation split, slope, core choice) checked against an
independent computation."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sepmeasure.claims import VERDICTS, Claim, Control
from sepmeasure.cli import load_study
from sepmeasure.data import LabeledData
from sepmeasure.report import FigureSpec, render_figure

ROOT = Path(__file__).resolve().parents[1]
S6 = load_study(ROOT / "studies" / "s6_nonlinear_advantage.py")
MODULE = __import__(S6.run_one.__module__, fromlist=["run_one"])

#: The fingerprint of the claims' decisions, per study version (bump the version to change a threshold).
PINS = {"2": "754e62931ded0845"}

TINY_MLP = {"arm": "timing", "arch": "mlp", "n_data": 300, "widths": (6, 6), "pre_epochs": 1, "post_epochs": 1,
            "weights": (0.05, 0.2), "lrs": (0.003, 0.01), "batch_size": 64}
TINY_DEPTH = {"arm": "depth", "arch": "mlp", "dataset": "mnist1d", "n_data": 300, "width": 4, "pre_epochs": 1,
              "post_epochs": 1, "weights": (0.05, 0.3), "lrs": (0.01,), "batch_size": 64}
TINY_RESNET = {"arm": "resnet", "arch": "resnet", "dataset": "mnist1d", "n_data": 200, "width": 3, "blocks": 1,
               "pre_epochs": 1, "post_epochs": 1, "weights": (0.2,), "lrs": (0.01,), "batch_size": 64}


def test_registry_is_pinned_to_the_study_version_and_every_claim_has_a_control():
    MODULE.REGISTRY.verify(PINS)
    assert S6.version == MODULE.REGISTRY.study_version == MODULE.STUDY_VERSION
    assert [c.name for c in S6.claims] == [c.name for c in MODULE.REGISTRY.claims]
    for claim in S6.claims:
        assert isinstance(claim.control, Control) and claim.control.source != "none", claim.name
        assert claim.not_supported_if, claim.name
    # the ResNet arm is exploratory: no claim reads it
    for claim in S6.claims:
        assert "resnet" not in repr(claim.where)
    assert "version 2:" in MODULE.REGISTRY.changes_text()


def test_study_declares_grids_seeds_claims_and_figures():
    assert S6.seeds["quick"] >= 3 and S6.seeds["full"] >= 5
    quick = S6.configurations("quick")
    assert {c["arm"] for c in quick} == {"timing", "depth", "resnet"}
    assert {c["dataset"] for c in quick if c["arm"] == "timing"} == {"mnist1d", "two_moons"}
    assert {c["depth"] for c in quick if c["arm"] == "depth"} == {2, 4, 8}
    assert all(isinstance(c, Claim) and "2211.17180" in c.paper and c.statement for c in S6.claims)
    assert all(isinstance(f, FigureSpec) for f in S6.figures)


@pytest.fixture(scope="module")
def tiny_results():
    frames = []
    for seed in (0, 1, 2):
        configs = [{**TINY_MLP, "dataset": "mnist1d"}, {**TINY_MLP, "dataset": "two_moons"}, TINY_RESNET]
        configs += [{**TINY_DEPTH, "depth": d} for d in (1, 2, 3)]
        for config in configs:
            config = {**config, "seed": seed}
            out = MODULE.run_one(config, device="cpu")
            frames.append(out.assign(**{k: v for k, v in config.items()
                                        if k not in ("widths", "weights", "lrs") and k not in out}))
    return pd.concat(frames, ignore_index=True)


def test_run_one_rows_are_tidy(device):
    rows = MODULE.run_one({**TINY_MLP, "dataset": "two_moons", "seed": 0}, device=str(device))
    assert set(rows["timing"]) == {"reference", "early", "late"}
    assert rows["lr"].nunique() == 1 and rows["lr"].iloc[0] in TINY_MLP["lrs"]
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
    assert np.allclose(dist.groupby(["timing", "weight", "normalized"])["value"].sum(), 1.0)
    depth = MODULE.run_one({**TINY_DEPTH, "depth": 3, "seed": 0}, device=str(device))
    assert set(depth["timing"]) == {"reference", "late"} and (depth["depth"] == 3).all()
    ref = depth[(depth["timing"] == "reference") & (depth["measure"] == "average_path_length")]["value"]
    assert ref.tolist() == [3.0]


def test_summarize_claims_and_figures_on_a_real_tiny_run(tiny_results):
    tables = S6.summarize(tiny_results)
    assert {"runs", "per_layer", "paths", "gap", "linearizable", "core", "depth_slope"} <= set(tables)
    assert len(tables["gap"]) == 9 and len(tables["core"]) == 18 and len(tables["depth_slope"]) == 3
    assert tables["gap"].loc[tables["gap"]["arm"] == "resnet", "exploratory"].all()
    resnet = tables["runs"][tables["runs"]["arch"] == "resnet"]
    ref = resnet[resnet["timing"] == "reference"]
    assert (ref["average_path_length"] > ref["average_path_length_normalized"]).all()
    # the core is within the validation budget and is the most linear such network, recomputed by hand
    runs = tables["runs"]
    for _, c in tables["core"].iterrows():
        g = runs[(runs["setting"] == c["setting"]) & (runs["seed"] == c["seed"]) & (runs["timing"] != "early")]
        ok = g[g["val_loss_points"] <= MODULE.LOSS_BUDGET + 1e-12]
        assert c["core_nonlinear_fraction"] == pytest.approx(ok["nonlinear_fraction"].min())
        assert c["core_val_loss_points"] <= MODULE.LOSS_BUDGET
    # slopes of the depth arm against numpy's least-squares fit
    core = tables["core"][tables["core"]["arm"] == "depth"]
    for _, s in tables["depth_slope"].iterrows():
        g = core[core["seed"] == s["seed"]]
        assert s["core_slope"] == pytest.approx(np.polyfit(g["depth"], g["core_apl_normalized"], 1)[0])
        assert s["reference_slope"] == pytest.approx(1.0)
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
    assert MODULE.interpolated_gap(late, early)[0] == pytest.approx(-gap, abs=1e-12)
    assert MODULE.interpolated_gap(early, early)[0] == 0.0


def test_interpolated_gap_is_undefined_without_overlap_and_averages_duplicates():
    early = np.array([[0.97, 0.5], [1.0, 0.6]])
    late = np.array([[0.2, 0.1], [1.0, 0.6]])
    assert np.isnan(MODULE.interpolated_gap(early, late)[0])
    dup = np.array([[0.5, 0.2], [0.5, 0.4], [1.0, 0.6]])
    single = np.array([[0.5, 0.3], [1.0, 0.6]])
    assert MODULE.interpolated_gap(dup, single)[0] == pytest.approx(0.0, abs=1e-12)


def test_permutation_gaps_enumerate_every_balanced_split():
    rng = np.random.default_rng(3)
    early = np.column_stack([rng.uniform(0.1, 0.9, 3), rng.uniform(0.2, 0.6, 3)])
    late = np.column_stack([rng.uniform(0.1, 0.9, 3), rng.uniform(0.5, 0.9, 3)])
    ref = np.array([[1.0, 0.9]])
    perm = MODULE.permutation_gaps(early, late, ref)
    assert perm.size == math.comb(6, 3)
    # by hand: every 3-subset of the pooled points labelled early
    pooled = np.vstack([early, late])
    by_hand = []
    for chosen in itertools.combinations(range(6), 3):
        rest = [i for i in range(6) if i not in chosen]
        by_hand.append(MODULE.interpolated_gap(np.vstack([ref, pooled[list(chosen)]]),
                                               np.vstack([ref, pooled[rest]]))[0])
    assert sorted(perm) == pytest.approx(sorted(by_hand), abs=1e-12)
    observed = MODULE.interpolated_gap(np.vstack([ref, early]), np.vstack([ref, late]))[0]
    assert np.isclose(perm, observed).any()
    # each split's complement gives the opposite gap: the permuted gaps are symmetric about 0
    assert perm.mean() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="as many early as late"):
        MODULE.permutation_gaps(early, late[:2], ref)


def test_validation_split_is_stratified_disjoint_and_seeded():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    X = torch.arange(100, dtype=torch.float32).reshape(100, 1)
    data = LabeledData(X, y, "toy", {})
    fit_part, val = MODULE.validation_split(data, 0.2, seed=1)
    assert sorted(torch.bincount(val.y).tolist()) == [4, 6, 10]
    assert len(fit_part) + len(val) == 100
    assert not set(fit_part.X[:, 0].tolist()) & set(val.X[:, 0].tolist())
    again = MODULE.validation_split(data, 0.2, seed=1)[1]
    assert torch.equal(again.X, val.X)
    assert not torch.equal(MODULE.validation_split(data, 0.2, seed=2)[1].X, val.X)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        MODULE.validation_split(data, 1.0)
    with pytest.raises(ValueError, match="too few"):
        MODULE.validation_split(LabeledData(X[:3], torch.tensor([0, 1, 1]), "toy", {}), 0.2)


def test_least_squares_slope():
    x, y = [2, 4, 8], [1.5, 2.0, 2.2]
    assert MODULE.least_squares_slope(x, y) == pytest.approx(np.polyfit(x, y, 1)[0], abs=1e-12)
    assert math.isnan(MODULE.least_squares_slope([3, 3], [1, 2]))
