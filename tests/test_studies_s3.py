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


#: The claims' decisions of each study version; a change needs a new version and a line of why.
PINS = {"2": "60a822e0ed284f08", "3": "026f8e178ec376e0"}


def test_registry_is_pinned_and_every_claim_has_a_control_and_a_failure_sentence():
    reg = S3.REGISTRY
    reg.verify(PINS)
    assert reg.study_version == STUDY.version and tuple(STUDY.claims) == reg.claims
    assert "validation" in reg.changes[STUDY.version]
    for claim in STUDY.claims:
        assert "2110.03403" in claim.paper and claim.statement and claim.not_supported_if, claim.name
        assert claim.control is not None and claim.control.source != "none", claim.name
    # the expectation identity is a test here, not a claim
    assert not {"value-ntk-proportional-to-npk", "mean-ntk-npk-distance"} & {c.name for c in STUDY.claims}


def test_labels_dlgn_sf_is_the_shallow_features_dlgn():
    sf = S3.build_model("dlgn_sf", 5, 3, 4, 2, 4.0)
    ones = S3.build_model("dlgn_ones", 5, 3, 4, 2, 4.0)
    assert sf.gating_structure == "shallow" and sf.value_input == "x"
    assert ones.gating_structure == "deep" and ones.value_input == "ones"
    assert "shallow" in S3.MODEL_NAMES["dlgn_sf"] and "DLGN-SF" not in S3.MODEL_NAMES["dlgn_ones"]
    text = (ROOT / "studies" / "s3_gated.py").read_text()
    for line in text.splitlines():
        if "DLGN-SF" in line and '"1":' not in line:  # version 1's history line names the old label
            assert "constant" not in line.split("DLGN-SF")[1][:12], line
    with pytest.raises(ValueError, match="name"):
        S3.build_model("logreg", 5, 3, 4, 2, 4.0)


def test_split_validation_is_disjoint_and_seeded():
    from sepmeasure.data import LabeledData
    d = LabeledData(torch.arange(50.0).reshape(50, 1), torch.arange(50) % 3)
    a, b = S3.split_validation(d, 0.2, 0)
    assert len(a) == 40 and len(b) == 10
    assert set(a.X[:, 0].tolist()).isdisjoint(b.X[:, 0].tolist())
    assert sorted(a.X[:, 0].tolist() + b.X[:, 0].tolist()) == list(range(50))
    a2, b2 = S3.split_validation(d, 0.2, 0)
    assert torch.equal(b.X, b2.X)
    with pytest.raises(ValueError, match="fraction"):
        S3.split_validation(d, 1.0, 0)


def test_matched_epoch_is_the_first_that_reaches_the_target():
    acc = {0: 0.1, 1: 0.5, 2: 0.7, 3: 0.9, 4: 0.95}
    assert S3.matched_epoch(acc, 0.7) == 2 and S3.matched_epoch(acc, 0.71) == 3
    assert S3.matched_epoch(acc, 0.99) == 4 and S3.matched_epoch(acc, 0.0) == 1
    with pytest.raises(ValueError):
        S3.matched_epoch({0: 0.1}, 0.5)


def test_recovery_table_against_hand_computation():
    acc = pd.DataFrame({"dataset": ["d"] * 6, "seed": [0, 0, 0, 1, 1, 1],
                        "model": ["logreg", "dnn", "dlgn"] * 2,
                        "test_accuracy": [0.6, 0.9, 0.84, 0.8, 0.805, 0.9],
                        "train_accuracy": [0.7, 0.95, 0.96, 0.8, 0.9, 0.91]})
    rec = S3.recovery_table(acc).set_index(["seed", "model"])
    assert rec.loc[(0, "dlgn"), "recovery"] == pytest.approx((0.84 - 0.6) / (0.9 - 0.6), rel=1e-12)
    assert rec.loc[(0, "dnn"), "recovery"] == pytest.approx(1.0)
    assert math.isnan(rec.loc[(1, "dlgn"), "recovery"])  # the DNN beats the floor by less than a point
    assert rec.loc[(0, "dlgn"), "dnn_train_accuracy"] == 0.95


def test_alignments_match_a_brute_force_npk_and_alignment():
    torch.manual_seed(0)
    model = DLGN(3, [4], 2, gate="hard")
    x = torch.randn(7, 3)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    a, p = S3.npk_alignments(model, x, y, y.flip(0))
    xd = x.double()
    g = model.double().gates(xd)[0]
    k = 2 * (xd @ xd.T) * (g @ g.T)  # K outputs times <x, x'> <G(x), G(x')>
    def align(k, y):
        yy = torch.nn.functional.one_hot(y).double()
        h = torch.eye(7, dtype=torch.float64) - 1 / 7
        kc, tc = h @ k @ h, h @ yy @ yy.T @ h
        return float((kc * tc).sum() / (kc.norm() * tc.norm()))
    assert a == pytest.approx(align(k, y), rel=1e-9) and p == pytest.approx(align(k, y.flip(0)), rel=1e-9)


def test_logistic_floor_chooses_c_on_validation_only():
    from sepmeasure.data import load_dataset
    tr, te = load_dataset("two_moons", split="both", size=200)
    f, v = S3.split_validation(tr, 0.2, 0)
    out = S3.logistic_floor(f, v, te, 0)
    assert out["C"] in S3.LOGREG_C and 0.5 < out["test"] <= 1
    # the same validation data with other test data: the same choice
    other = S3.logistic_floor(f, v, te.subset(torch.arange(10)), 0)
    assert other["C"] == out["C"] and other["val"] == out["val"]


def test_loglog_slope_matches_polyfit():
    rng = np.random.default_rng(1)
    w = np.array([16, 32, 64, 128, 256.0])
    d = 3.0 * w ** -0.5 * np.exp(rng.normal(0, 0.1, size=5))
    assert S3.loglog_slope(w, d) == pytest.approx(np.polyfit(np.log(w), np.log(d), 1)[0], rel=1e-10)
    assert S3.loglog_slope(w, 2 * w ** -0.5) == pytest.approx(-0.5, abs=1e-12)
    with pytest.raises(ValueError, match="widths"):
        S3.loglog_slope([1.0], [1.0])
    with pytest.raises(ValueError, match="distances"):
        S3.loglog_slope([1.0, 2.0], [1.0, 0.0])


def test_krr_predict_matches_a_direct_solve():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(12, 4))
    k, kt = a @ a.T, rng.normal(size=(5, 4)) @ a.T
    y = np.eye(3)[rng.integers(0, 3, 12)]
    alpha = np.linalg.solve(k + 0.3 * np.eye(12), y)
    np.testing.assert_allclose(S3.krr_predict(k, y, kt, 0.3), kt @ alpha, rtol=1e-8, atol=1e-10)


def test_krr_penalty_is_chosen_without_test_labels():
    rng = np.random.default_rng(3)
    xf, xv, xt = (torch.tensor(rng.normal(size=(n, 3))) for n in (30, 20, 15))
    yf, yv = (xf[:, 0] > 0).long().numpy(), (xv[:, 0] > 0).long().numpy()
    yt = (xt[:, 0] > 0).long().numpy()
    kern = lambda p, q: (p @ q.T).numpy()  # noqa: E731
    out = S3.krr_accuracy(kern, xf, yf, xv, yv, xt, yt, 2)
    flipped = S3.krr_accuracy(kern, xf, yf, xv, yv, xt, 1 - yt, 2)
    assert out["lambda"] == flipped["lambda"] and out["val"] == flipped["val"]
    assert out["test"] == pytest.approx(1 - flipped["test"]) and out["lambda"] in S3.KRR_LAMBDAS
    assert out["test"] > 0.8


def test_single_init_distance_shrinks_towards_the_npk_not_the_control():
    torch.manual_seed(0)
    x = torch.randn(6, 3)
    near, far = [], []
    for w in (8, 512):
        d, dc = S3.single_init_distances(DLGN(3, [w, w], 2, gate="soft", beta=4.0), x, seed=w)
        near.append(d)
        far.append(dc)
    assert near[1] < 0.5 * near[0] and far[1] > 0.5 * far[0] and far[1] > 2 * near[1]


TINY = {"n_data": 300, "width": 8, "depth": 2, "epochs": 2, "lr": 0.01, "batch_size": 64, "beta": 4.0,
        "n_kernel": 16, "match_factor": 2, "dataset": "mnist1d", "widths": (4, 8, 16, 32), "n_ntk": 5,
        "ntk_depth": 2, "n_krr": 40, "n_krr_test": 30}


def test_tiny_run_gives_tidy_tables_and_claims_evaluate(device):
    rows = []
    for seed in range(2):
        for part in ("models", "gates_vs_weights", "decoupled", "ntk_width", "npk_krr"):
            cfg = {**TINY, "part": part, "seed": seed}
            out = STUDY.run_one(cfg, device=str(device))
            assert isinstance(out, pd.DataFrame) and "kind" in out.columns
            rows.append(out.assign(**{k: v for k, v in cfg.items() if k not in out.columns and not isinstance(v, tuple)}))
    results = pd.concat(rows, ignore_index=True)
    tables = STUDY.summarize(results)
    acc = tables["accuracy"]
    assert set(acc["model"]) == set(S3.MODELS) and acc["test_accuracy"].between(0, 1).all()
    dnn = acc[acc["model"] == "dnn"]
    assert dnn["epochs_used"].between(1, TINY["match_factor"] * TINY["epochs"]).all()
    al = tables["alignment"]
    assert np.allclose(al["gain"], al["final"] - al["initial"]) and len(al) == 2 * 5
    assert set(tables["gates_vs_weights"]["trained"]) == {"none", "gates", "weights"}
    assert set(tables["decoupled"]["gates"]) == {"dnn", "trained", "init"}
    rec = tables["recovery"]
    assert set(rec["model"]) == set(S3.MODELS) - {"logreg"}
    nt = tables["ntk_width"]
    assert len(nt) == 2 and (nt["n_widths"] == 4).all() and np.isfinite(nt[["slope", "slope_control"]]).all().all()
    kr = tables["npk_krr"]
    assert len(kr) == 2 and np.allclose(kr["gap"], (kr["krr_accuracy"] - kr["value_accuracy"]).abs())
    assert np.allclose(kr["gap_control"], (kr["krr_init_accuracy"] - kr["value_accuracy"]).abs())
    for claim in STUDY.claims:
        result = claim.evaluate(tables[claim.table])
        assert result.verdict in VERDICTS
