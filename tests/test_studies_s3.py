"""Study S3: the value-NTK constant against an exact expectation, the helpers against independent
computations, and a tiny run of the whole pipeline through its tables and claims."""
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
from sepmeasure.kernels import empirical_ntk, neural_path_kernel
from sepmeasure.models import MLP
from sepmeasure.models.gated import DGN, DLGN

ROOT = Path(__file__).resolve().parents[1]
STUDY = load_study(ROOT / "studies" / "s3_gated.py")
S3 = __import__(STUDY.run_one.__module__, fromlist=["run_one"])


def _sign_enumerated_mean_ntk(model, x, scales):
    """E[NTK over value weights] exactly: every value weight is ±scale_l with probability 1/2 each, all
    2^P sign patterns enumerated (value biases zero)."""
    layers = [*model.value.layers, model.value.head]
    names = S3.value_weight_names(model)
    sizes = [layer.weight.numel() for layer in layers]
    total = None
    with torch.no_grad():
        for layer in layers:
            if layer.bias is not None:
                layer.bias.zero_()
    for signs in itertools.product((-1.0, 1.0), repeat=sum(sizes)):
        start = 0
        with torch.no_grad():
            for layer, n, s in zip(layers, sizes, scales):
                chunk = torch.tensor(signs[start:start + n], dtype=torch.float64, device=x.device)
                layer.weight.copy_(s * chunk.reshape(layer.weight.shape))
                start += n
        k = empirical_ntk(model, x, output="trace", params=names, method="jacobian")
        total = k if total is None else total + k
    return total / 2 ** sum(sizes)


@pytest.mark.parametrize("kind", ["dlgn_hard", "dgn_soft", "dlgn_sf_soft"])
def test_mean_value_ntk_equals_constant_times_npk_exactly(kind, device):
    torch.manual_seed(3)
    if kind == "dlgn_hard":
        model = DLGN(2, [2, 2], 1, gate="hard")
    elif kind == "dgn_soft":
        model = DGN(2, [2, 2], 1, gate="soft", beta=2.0)
    else:
        model = DLGN(2, [2], 2, gate="soft", beta=2.0, value_input="ones")
    model = model.double().to(device)
    x = torch.randn(5, 2, dtype=torch.float64, device=device)
    scales = [0.7, 1.3, 0.5][: model.n_gated_layers + 1]
    mean = _sign_enumerated_mean_ntk(model, x, scales)
    npk = neural_path_kernel(model, x)
    c = S3.value_ntk_constant([s * s for s in scales])
    torch.testing.assert_close(mean, c * npk, rtol=1e-9, atol=1e-12)


def test_constant_differs_from_a_wrong_one_so_the_exact_test_can_fail(device):
    # the exact test above distinguishes the derived constant from the naive D σ^{2D}
    scales = [0.7, 1.3, 0.5]
    c = S3.value_ntk_constant([s * s for s in scales])
    naive = 3 * math.prod(s * s for s in scales)
    assert abs(c - naive) / c > 0.1


@settings(max_examples=30, deadline=None)
@given(st.floats(0.05, 3.0), st.integers(1, 6))
def test_constant_equal_variances_is_d_sigma_power(var, depth):
    assert math.isclose(S3.value_ntk_constant([var] * depth), depth * var ** (depth - 1), rel_tol=1e-12)


def test_redrawn_weights_have_the_stated_variance_and_zero_bias():
    model = DLGN(300, [200], 150)
    S3.redraw_value_weights(model, torch.Generator().manual_seed(0))
    variances = S3.default_value_weight_variances(model)
    for layer, v in zip([*model.value.layers, model.value.head], variances):
        w = layer.weight.detach().double()
        assert abs(w.var().item() - v) / v < 0.05
        assert abs(w.mean().item()) < 0.05 * math.sqrt(v)
        assert math.isclose(v, 1 / (3 * layer.weight.shape[1]))
        assert torch.count_nonzero(layer.bias) == 0


def test_monte_carlo_mean_approaches_the_constant(device):
    torch.manual_seed(0)
    model = DLGN(3, [6, 5], 2, gate="hard").to(device)
    x = torch.randn(6, 3, device=device)
    mean, first = S3.mean_value_ntk(model, x, n_init=400, seed=1)
    npk = neural_path_kernel(model.double(), x.double())
    theory = S3.value_ntk_constant(S3.default_value_weight_variances(model))
    assert abs(S3.fitted_constant(mean, npk) / theory - 1) < 0.1
    assert mean.device == x.device


def test_fitted_constant_matches_least_squares():
    rng = np.random.default_rng(0)
    k, r = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    ref = np.linalg.lstsq(r.reshape(-1, 1), k.reshape(-1), rcond=None)[0][0]
    assert math.isclose(S3.fitted_constant(torch.tensor(k), torch.tensor(r)), ref, rel_tol=1e-10)


def test_bad_inputs_are_named():
    with pytest.raises(TypeError, match="model"):
        S3.value_weight_names(MLP(3, [4], 2))
    with pytest.raises(ValueError, match="arch"):
        S3.default_value_weight_variances(DLGN(1, [2], 2, arch="cnn"))
    with pytest.raises(ValueError, match="variances"):
        S3.value_ntk_constant([1.0, -1.0])
    with pytest.raises(TypeError, match="variances"):
        S3.value_ntk_constant([])
    with pytest.raises(ValueError, match="n_init"):
        S3.mean_value_ntk(DLGN(3, [4], 2), torch.randn(2, 3), n_init=0)


def test_grids_claims_and_figures_are_declared():
    assert STUDY.seeds["quick"] >= 3 and STUDY.seeds["full"] >= 5
    assert len(STUDY.configurations("full")) >= len(STUDY.configurations("quick"))
    for c in STUDY.claims:
        assert "2110.03403" in c.paper and c.statement
    tables = {c.table for c in STUDY.claims} | {f.table for f in STUDY.figures}
    assert tables <= {"accuracy", "decoupled", "ntk_npk", "ntk_npk_distance", "ntk_npk_pairs", "alignment"}


TINY = {"n_data": 240, "width": 8, "depth": 2, "epochs": 2, "lr": 0.01, "batch_size": 64, "beta": 4.0,
        "n_kernel": 16, "n_ntk": 8, "n_init": 4, "dataset": "mnist1d"}


def test_tiny_run_gives_tidy_tables_and_claims_evaluate(device):
    rows = []
    for seed in range(3):
        configs = [{**TINY, "part": "models", "model": m, "seed": seed} for m in S3.MODELS]
        configs.append({**TINY, "part": "decoupled", "model": "dgn", "seed": seed})
        for cfg in configs:
            out = STUDY.run_one(cfg, device=str(device))
            assert isinstance(out, pd.DataFrame) and "kind" in out.columns
            rows.append(out.assign(**{k: v for k, v in cfg.items() if k not in out.columns}))
    results = pd.concat(rows, ignore_index=True)
    tables = STUDY.summarize(results)
    acc = tables["accuracy"]
    assert len(acc) == 3 * len(S3.MODELS) and acc["test_accuracy"].between(0, 1).all()
    # every model's accuracy and its ratio to the ReLU network of the same seed, read off the raw rows
    raw = results[(results["part"] == "models") & (results["kind"] == "accuracy")]
    test_acc = raw[raw["split"] == "test"].set_index(["seed", "model"])["value"]
    train_acc = raw[raw["split"] == "train"].set_index(["seed", "model"])["value"]
    for _, row in acc.iterrows():
        key = (row["seed"], row["model"])
        assert row["test_accuracy"] == test_acc[key] and row["train_accuracy"] == train_acc[key]
        assert row["ratio_to_dnn"] == pytest.approx(test_acc[key] / test_acc[(row["seed"], "dnn")], rel=1e-12)
    assert set(tables["decoupled"]["gates"]) == {"dnn", "trained", "init"}
    ntk = tables["ntk_npk"]
    assert len(ntk) == 3 * 3
    # value layers 40 -> 8 -> 8 -> 10 with weight variances 1 / (3 fan_in): sum over layers of the
    # product of the other layers' variances
    v = [1 / (3 * 40), 1 / (3 * 8), 1 / (3 * 8)]
    expected = sum(math.prod(v[j] for j in range(3) if j != i) for i in range(3))
    assert np.allclose(ntk["theoretical_constant"], expected, rtol=1e-12, atol=0)
    assert np.allclose(ntk["constant_ratio"], ntk["fitted_constant"] / expected, rtol=1e-12, atol=0)
    align = tables["alignment"]
    assert set(align["epoch"]) == {0, 1, 2} and align["npk_alignment"].notna().all()
    for claim in STUDY.claims:
        result = claim.evaluate(tables[claim.table])
        assert result.verdict in VERDICTS
