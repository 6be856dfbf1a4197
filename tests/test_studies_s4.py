"""Study S4: path value weights against an explicit path sum, the clustering and region measures against
brute force, and a tiny run of the pipeline through its tables and claims."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sepmeasure.claims import VERDICTS
from sepmeasure.cli import load_study
from sepmeasure.models.gated import DLGN, effective_halfspaces

ROOT = Path(__file__).resolve().parents[1]
STUDY = load_study(ROOT / "studies" / "s4_halfspaces.py")
S4 = __import__(STUDY.run_one.__module__, fromlist=["run_one"])


def test_path_value_weights_reproduce_the_output_as_a_sum_over_paths(device):
    torch.manual_seed(0)
    model = S4.build_model(width=3, depth=3, n_classes=2, beta=4.0).double().to(device)
    model.gate = "hard"
    x = torch.randn(7, 2, dtype=torch.float64, device=device)
    v = S4.path_value_weights(model)
    gates = model.gates(x)
    out = torch.zeros(7, 2, dtype=torch.float64, device=device)
    for path in itertools.product(range(3), repeat=3):       # explicit enumeration of every path
        on = torch.ones(7, dtype=torch.float64, device=device)
        for g, unit in zip(gates, path):
            on = on * g[:, unit]
        out += on[:, None] * v[path][None, :]
    torch.testing.assert_close(out, model(x), rtol=1e-10, atol=1e-12)


def test_value_biases_are_zero_and_stay_frozen():
    model = S4.build_model(width=4, depth=2, n_classes=2, beta=1.0)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == [n for n, _ in model.named_parameters() if n.startswith("value.") and n.endswith("bias")]
    assert all(torch.count_nonzero(model.get_parameter(n)) == 0 for n in frozen)


def _brute_kmeans_score(u: np.ndarray, k: int) -> float:
    best = np.inf
    for labels in itertools.product(range(k), repeat=len(u)):
        labels = np.array(labels)
        inertia = sum(((u[labels == j] - u[labels == j].mean(axis=0)) ** 2).sum() for j in set(labels))
        best = min(best, inertia)
    return 1 - best / ((u - u.mean(axis=0)) ** 2).sum()


def test_clustering_matches_brute_force():
    rng = np.random.default_rng(1)
    a, c = rng.normal(size=(7, 2)), rng.normal(size=7)
    got = S4.halfspace_clustering(torch.tensor(a), torch.tensor(c), n_clusters=2)
    u = np.c_[a, c] / np.linalg.norm(np.c_[a, c], axis=1, keepdims=True)
    assert math.isclose(got["kmeans_clustering"], _brute_kmeans_score(u, 2), rel_tol=1e-6)
    assert math.isclose(S4.kmeans_inertia(u, 3), (1 - _brute_kmeans_score(u, 3)) * ((u - u.mean(0)) ** 2).sum(),
                        rel_tol=1e-6)
    na = a / np.linalg.norm(a, axis=1, keepdims=True)
    cos = [abs(na[i] @ na[j]) for i in range(7) for j in range(i + 1, 7)]
    assert math.isclose(got["normal_abs_cosine"], float(np.mean(cos)), rel_tol=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.lists(st.floats(0.1, 10.0), min_size=8, max_size=8))
def test_clustering_is_invariant_to_scaling_and_order_of_half_spaces(seed, scales):
    rng = np.random.default_rng(seed)
    a, c = torch.tensor(rng.normal(size=(8, 2))), torch.tensor(rng.normal(size=8))
    s = torch.tensor(scales, dtype=torch.float64)
    perm = torch.tensor(rng.permutation(8))
    r1 = S4.halfspace_clustering(a, c, n_clusters=2)
    r2 = S4.halfspace_clustering((a * s[:, None])[perm], (c * s)[perm], n_clusters=2)
    for key in r1:
        assert math.isclose(r1[key], r2[key], rel_tol=1e-6, abs_tol=1e-9)


def test_region_measures_against_direct_computation():
    assert S4.region_purity(np.array([2, 2, 2])) == 1.0
    assert math.isnan(S4.region_purity(np.array([], dtype=int)))
    pts = np.random.default_rng(0).normal(size=(50, 2))
    assert S4.random_disc_purity(pts, np.zeros(50, dtype=int), 10, 5, np.random.default_rng(0)) == 1.0
    # labels by half-plane; a disc of one point is always pure
    labels = (pts[:, 0] > 0).astype(int)
    assert S4.random_disc_purity(pts, labels, 1, 20, np.random.default_rng(0)) == 1.0


def test_nearest_neighbour_target_matches_brute_force():
    rng = np.random.default_rng(2)
    X, y, grid = rng.normal(size=(700, 2)), rng.integers(0, 3, 700), rng.normal(size=(90, 2))
    label, dist = S4.nearest_neighbour_target(X, y, grid)
    d = np.linalg.norm(grid[:, None] - X[None], axis=2)
    np.testing.assert_array_equal(label, y[d.argmin(axis=1)])
    np.testing.assert_allclose(dist, d.min(axis=1), rtol=1e-12)


def test_boundary_points_lie_on_the_line_inside_the_box():
    a, c = np.array([1.0, -2.0]), 0.3
    lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    pts = S4._boundary_points(a, c, lo, hi)
    assert len(pts) > 2
    np.testing.assert_allclose(pts @ a + c, 0, atol=1e-12)
    assert np.all(pts >= lo) and np.all(pts <= hi)
    assert len(S4._boundary_points(a, 50.0, lo, hi)) == 0       # a line that misses the box


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="n_clusters"):
        S4.halfspace_clustering(torch.randn(3, 2), torch.randn(3), n_clusters=4)
    with pytest.raises(ValueError, match="offsets"):
        S4.halfspace_clustering(torch.randn(3, 2), torch.randn(2))
    with pytest.raises(TypeError, match="model"):
        S4.path_value_weights(DLGN(2, [3], 2))


def test_grids_claims_and_figures_are_declared():
    assert STUDY.seeds["quick"] >= 3 and STUDY.seeds["full"] >= 5
    for c in STUDY.claims:
        assert "Yadav" in c.paper and c.statement


TINY = {"n_data": 200, "width": 4, "depth": 3, "epochs": 3, "lr": 0.02, "batch_size": 64, "beta_start": 1.0,
        "beta_end": 8.0, "grid": 20, "top_k": 3, "min_cells": 2, "support_radius": 0.5, "n_random": 5,
        "n_clusters": 2, "map_seed": 0, "dataset": "xor"}


def test_tiny_run_gives_tidy_tables_and_claims_evaluate(device):
    rows = []
    for seed in range(3):
        cfg = {**TINY, "seed": seed}
        out = STUDY.run_one(cfg, device=str(device))
        rows.append(out.assign(**{k: v for k, v in cfg.items() if k not in out.columns}))
    tables = STUDY.summarize(pd.concat(rows, ignore_index=True))
    clus = tables["clustering"]
    assert set(clus["state"]) == {"init", "trained"} and set(clus["layer"]) == {1, 2, 3}
    assert clus.groupby(["seed", "state", "layer", "measure"]).size().eq(1).all()
    reg = tables["regions"]
    assert reg["purity"].between(0, 1).all() and reg["random_purity"].between(0, 1).all()
    assert set(tables["halfspaces"]["seed"]) == {0} and set(tables["region_map"]["seed"]) <= {0}
    hs_layers = tables["halfspaces"]["layer"].unique()
    assert set(hs_layers) <= {1, 2, 3}
    for claim in STUDY.claims:
        assert claim.evaluate(tables[claim.table]).verdict in VERDICTS


def test_effective_halfspaces_of_the_built_model_are_those_of_the_gates():
    model = S4.build_model(width=3, depth=2, n_classes=2, beta=4.0)
    model.gate = "hard"
    x = torch.randn(20, 2)
    hs = effective_halfspaces(model)
    for q, g in zip(hs.pre_activations(x), model.gates(x)):
        assert torch.equal((q > 0).float(), g)
