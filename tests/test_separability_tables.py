"""Per-layer tables, the logistic probe and the training callback."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import brentq
from sklearn.linear_model import LogisticRegression

from sepmeasure.capture import record
from sepmeasure.data import load_dataset
from sepmeasure.models import MLP
from sepmeasure.separability import (SeparabilityCallback, add_relative_hull_distance, balanced_subsample,
                                     class_subsample, fit_logistic, hull_distance, layer_separability, linear_probe, md_lsm, separability_summary,
                                     wilson_interval)
from sepmeasure.training import fit


def three_classes(seed=0, n=30, d=5, sep=3.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(3).repeat_interleave(n)
    X = torch.randn(3 * n, d, generator=g) + sep * torch.nn.functional.one_hot(y, d).float()
    return X, y


# ----------------------------------------------------------------------------
# layer_separability
# ----------------------------------------------------------------------------

def test_table_rows_match_direct_calls():
    X, y = three_classes()
    acts = {"a": X, "b": torch.tanh(X @ torch.randn(5, 7, generator=torch.Generator().manual_seed(1)))[:, :, None]}
    table = layer_separability(acts, y, measures=("md_lsm", "hull_distance", "linear_probe"))
    assert list(table.columns) == ["layer", "class_a", "class_b", "measure", "value", "lower", "upper", "method",
                                   "status", "n_a", "n_b", "d", "seed", "max_per_class", "seconds"]
    assert len(table) == 2 * 3 * 3
    assert table["layer"].unique().tolist() == ["a", "b"]
    assert set(table.loc[table.layer == "b", "d"]) == {7}            # [N, 7, 1] is flattened
    for (a, b) in [(0, 1), (0, 2), (1, 2)]:
        A, B = X[y == a], X[y == b]
        rows = table[(table.layer == "a") & (table.class_a == a) & (table.class_b == b)].set_index("measure")
        h = hull_distance(A, B)
        assert rows.loc["hull_distance", "value"] == pytest.approx(h.distance, rel=1e-6)
        assert rows.loc["hull_distance", "lower"] <= h.upper + 1e-9
        assert rows.loc["md_lsm", "value"] == md_lsm(A, B).value
        p = linear_probe(A, B)
        assert rows.loc["linear_probe", "value"] == p.accuracy
        assert (rows["n_a"] == 30).all() and (rows["n_b"] == 30).all()
        assert (rows["lower"] <= rows["value"] + 1e-12).all() and (rows["value"] <= rows["upper"] + 1e-12).all()


def test_ovr_and_subsampling_are_recorded_and_reproducible():
    X, y = three_classes(n=40)
    t1 = layer_separability({"x": X}, y, measures=("hull_distance", "separable_subset"), pairs="ovr",
                            max_per_class=10, seed=3)
    t2 = layer_separability({"x": X}, y, measures=("hull_distance", "separable_subset"), pairs="ovr",
                            max_per_class=10, seed=3)
    t3 = layer_separability({"x": X}, y, measures=("hull_distance",), pairs="ovr", max_per_class=10, seed=4)
    pd.testing.assert_frame_equal(t1.drop(columns="seconds"), t2.drop(columns="seconds"))
    assert t1.attrs["subsample"] == t2.attrs["subsample"] != t3.attrs["subsample"]
    assert len(t1.attrs["subsample"]) == 30
    assert set(t1["class_b"]) == {"rest"}
    assert set(t1["n_a"]) == {10} and set(t1["n_b"]) == {20}
    assert set(t1["max_per_class"]) == {10} and set(t1["seed"]) == {3}
    sel = torch.tensor(t1.attrs["subsample"])
    Xs, ys = X[sel], y[sel]
    h = hull_distance(Xs[ys == 1], Xs[ys != 1])
    row = t1[(t1.class_a == 1) & (t1.measure == "hull_distance")].iloc[0]
    assert row["value"] == pytest.approx(h.distance, rel=1e-6)


def test_balanced_subsample():
    y = torch.tensor([0] * 7 + [1] * 3 + [2] * 5)
    idx = balanced_subsample(y, 4, seed=0)
    assert torch.bincount(y[idx]).tolist() == [4, 3, 4]
    assert idx.tolist() == sorted(idx.tolist())
    assert balanced_subsample(y, None, seed=0).tolist() == list(range(15))


def test_class_subsample_takes_the_chosen_classes_in_order():
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 6, (200,), generator=g)
    counts = torch.bincount(y, minlength=6)
    classes = [4, 1, 5]
    idx = class_subsample(y, classes, per_class=12, seed=7)
    assert idx.unique().numel() == idx.numel()  # no row twice
    blocks = torch.split(idx, [min(12, int(counts[c])) for c in classes])
    for c, block in zip(classes, blocks):
        assert bool((y[block] == c).all())
    # deterministic for a seed, different for another, on any label dtype
    assert torch.equal(idx, class_subsample(y.to(torch.int32), classes, 12, seed=7))
    assert not torch.equal(idx, class_subsample(y, classes, 12, seed=8))
    # a class with fewer rows than asked contributes all of them
    small = torch.tensor([0, 0, 1, 1, 1, 1])
    assert sorted(class_subsample(small, [0, 1], 3, seed=0)[:2].tolist()) == [0, 1]
    # the draw within a class is a uniform permutation: every row of a class is
    # picked about equally often over many seeds
    hits = torch.zeros(6)
    for seed in range(600):
        hits[class_subsample(small, [1], 2, seed=seed)] += 1
    assert hits[:2].sum() == 0
    assert torch.allclose(hits[2:] / 600, torch.full((4,), 0.5), atol=0.08)


def test_class_subsample_bad_input():
    y = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="classes: .*got \\[3\\] with no rows"):
        class_subsample(y, [0, 3], 1, seed=0)
    with pytest.raises(ValueError, match="classes: expected a non-empty"):
        class_subsample(y, [], 1, seed=0)
    with pytest.raises(ValueError, match="classes: expected distinct"):
        class_subsample(y, [1, 1], 1, seed=0)
    with pytest.raises(ValueError, match="per_class"):
        class_subsample(y, [0], 0, seed=0)
    with pytest.raises(ValueError, match="labels: expected a 1-dimensional"):
        class_subsample(y[None], [0], 1, seed=0)


def test_relative_hull_distance_divides_by_the_rms_spread():
    rng = np.random.default_rng(0)
    acts = {"a": torch.tensor(rng.normal(size=(30, 4))), "b": torch.tensor(rng.normal(size=(30, 2, 3)) * 5)}
    table = pd.DataFrame([{"layer": name, "measure": m, "value": v, "lower": v - 0.1, "upper": v + 0.1}
                          for name, v in (("a", 2.0), ("b", 3.0)) for m in ("hull_distance", "md_lsm")])
    out = add_relative_hull_distance(table, acts)
    rel = out[out["measure"] == "relative_hull_distance"].set_index("layer")
    for name, v in (("a", 2.0), ("b", 3.0)):
        x = acts[name].numpy().reshape(30, -1)
        rms = np.sqrt(np.mean(np.sum((x - x.mean(axis=0)) ** 2, axis=1)))
        assert rel.loc[name, "value"] == pytest.approx(v / rms)
        assert rel.loc[name, "upper"] == pytest.approx((v + 0.1) / rms)
        assert rel.loc[name, "layer_spread"] == pytest.approx(rms)
    # scaling a layer and its hull distance together leaves the relative distance unchanged
    scaled = add_relative_hull_distance(table.assign(value=table["value"] * 7), {k: 7 * t for k, t in acts.items()})
    assert scaled[scaled["measure"] == "relative_hull_distance"]["value"].to_numpy() == pytest.approx(
        rel["value"].to_numpy())
    assert len(out) == len(table) + 2
    with pytest.raises(ValueError, match="activations: .*none for \\['b'\\]"):
        add_relative_hull_distance(table, {"a": acts["a"]})
    with pytest.raises(ValueError, match="table: .*missing \\['upper'\\]"):
        add_relative_hull_distance(table.drop(columns=["upper"]), acts)


def test_activations_from_record_and_summary():
    train = load_dataset("gaussians", size=90, seed=0)
    model = MLP(2, [6, 6], train.n_classes)
    acts = record(model, (train.X, train.y), layers=["layers.0.act", "layers.1.act"])
    table = layer_separability(acts, measures=("hull_distance", "md_lsm"))     # labels from acts.labels
    assert table["layer"].unique().tolist() == ["layers.0.act", "layers.1.act"]
    summary = separability_summary(table)
    assert list(summary.columns) == ["layer", "measure", "mean", "min", "max", "mean_lower", "mean_upper",
                                     "n_pairs", "frac_separable"]
    for _, s in summary.iterrows():
        part = table[(table.layer == s["layer"]) & (table.measure == s["measure"])]
        assert s["mean"] == pytest.approx(part["value"].mean())
        assert s["n_pairs"] == len(part)
        cert = (part["lower"] > 0) if s["measure"] == "hull_distance" else (part["lower"] >= 1)
        assert s["frac_separable"] == pytest.approx(cert.mean())


def test_bad_inputs():
    X, y = three_classes()
    with pytest.raises(ValueError, match="labels: expected 90 labels"):
        layer_separability({"x": X}, y[:10])
    with pytest.raises(ValueError, match="labels: expected at least 2 distinct classes"):
        layer_separability({"x": X}, torch.zeros(90, dtype=torch.long))
    with pytest.raises(ValueError, match="measures: expected names from"):
        layer_separability({"x": X}, y, measures=("auc",))
    with pytest.raises(ValueError, match="measures: expected at least one"):
        layer_separability({"x": X}, y, measures=())
    bad = X.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"activations\['x'\]: expected finite values"):
        layer_separability({"x": bad}, y)
    with pytest.raises(ValueError, match="activations: expected at least one layer"):
        layer_separability({}, y)
    with pytest.raises(TypeError, match="activations: expected a Tensor or a mapping"):
        layer_separability([X], y)
    with pytest.raises(ValueError, match="labels: expected class labels"):
        layer_separability({"x": X})
    with pytest.raises(ValueError, match=r"labels: expected 50 labels \(one per row of activations\['y'\]\), got 90"):
        layer_separability({"x": X, "y": X[:50]}, y)
    with pytest.raises(ValueError, match="max_per_class: expected an int >= 1"):
        layer_separability({"x": X}, y, max_per_class=0)
    with pytest.raises(ValueError, match="table: expected columns"):
        separability_summary(pd.DataFrame({"layer": ["a"]}))


def test_on_device(device):
    X, y = three_classes(n=20)
    table = layer_separability({"x": X.to(device)}, y.to(device), measures=("hull_distance", "md_lsm", "linear_probe"))
    cpu = layer_separability({"x": X}, y, measures=("hull_distance", "md_lsm", "linear_probe"))
    h_dev = table[table.measure == "hull_distance"]["value"].to_numpy()
    h_cpu = cpu[cpu.measure == "hull_distance"]["value"].to_numpy()
    assert np.allclose(h_dev, h_cpu, rtol=1e-6)
    assert (table["lower"] <= table["upper"] + 1e-12).all()


# ----------------------------------------------------------------------------
# Probe
# ----------------------------------------------------------------------------

def test_fit_logistic_bad_input_and_label_forms():
    X = torch.tensor([[0.0], [1.0], [3.0], [4.0]])
    w, b = fit_logistic(X, torch.tensor([0, 0, 1, 1]))
    for y in ([0, 0, 1, 1], torch.tensor([0.0, 0.0, 1.0, 1.0]), np.array([0, 0, 1, 1])):
        w2, b2 = fit_logistic(X, y)
        assert torch.equal(w2, w) and b2 == b
    with pytest.raises(ValueError, match=r"y: expected binary labels in \{0, 1\}, got values \[0, 2\]"):
        fit_logistic(X, torch.tensor([0, 0, 2, 2]))
    with pytest.raises(ValueError, match="y: expected .*4"):
        fit_logistic(X, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="X: expected a 2-dimensional"):
        fit_logistic(X[:, 0], torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="weights: expected 4 non-negative"):
        fit_logistic(X, torch.tensor([0, 0, 1, 1]), weights=torch.ones(3))
    with pytest.raises(ValueError, match="max_iter"):
        fit_logistic(X, torch.tensor([0, 0, 1, 1]), max_iter=0)


def test_fit_logistic_matches_scikit_learn():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.5, 2.0], dtype=torch.float64)
    y = (X[:, 0] - 0.3 * X[:, 1] + 0.5 * torch.randn(200, generator=g, dtype=torch.float64) > 0.2).long()
    l2 = 1e-2
    w, b = fit_logistic(X, y, l2=l2, max_iter=200)
    # same objective in scikit-learn: standardised features, balanced weights, C = 1 / (l2 * N)
    mean, std = X.mean(0), X.std(0, unbiased=False)
    Xs = ((X - mean) / std).numpy()
    n1 = int(y.sum())
    sw = np.where(y.numpy() == 1, 0.5 * 200 / n1, 0.5 * 200 / (200 - n1))
    sk = LogisticRegression(C=1 / (l2 * 200), tol=1e-12, max_iter=10_000).fit(Xs, y.numpy(), sample_weight=sw)
    w_sk = torch.tensor(sk.coef_[0]) / std
    b_sk = float(sk.intercept_[0] - (torch.tensor(sk.coef_[0]) * mean / std).sum())
    assert torch.allclose(w, w_sk, rtol=1e-4, atol=1e-6)
    assert b == pytest.approx(b_sk, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (47, 60)])
def test_wilson_interval_solves_its_defining_equation(k, n):
    z = 1.959963984540054
    p_hat = k / n
    f = lambda p: (p_hat - p) ** 2 - z * z * p * (1 - p) / n  # noqa: E731
    lo, hi = wilson_interval(k, n)
    exp_lo = 0.0 if k == 0 else brentq(f, 1e-12, p_hat - 1e-12)
    exp_hi = 1.0 if k == n else brentq(f, p_hat + 1e-12, 1 - 1e-12)
    assert lo == pytest.approx(exp_lo, abs=1e-9) and hi == pytest.approx(exp_hi, abs=1e-9)


def test_linear_probe_split_and_errors():
    X, y = three_classes(n=20)
    A, B = X[y == 0], X[y == 1]
    p = linear_probe(A, B, test_fraction=0.25, seed=1)
    assert p.n_test == 10 and p.n_train == 30
    assert p.lower <= p.accuracy <= p.upper
    assert linear_probe(A, B, test_fraction=0.25, seed=1).accuracy == p.accuracy
    with pytest.raises(ValueError, match="A: expected at least 2 points"):
        linear_probe(A[:1], B)
    with pytest.raises(ValueError, match=r"test_fraction: expected a number in \(0, 1\)"):
        linear_probe(A, B, test_fraction=1.0)


def test_linear_probe_accuracy_is_that_of_its_classifier():
    """Whatever the split, the returned classifier (A where x @ normal + bias > 0) gets exactly
    accuracy * n_test held-out and train_accuracy * n_train training points right."""
    g = torch.Generator().manual_seed(5)
    A = torch.randn(40, 3, generator=g, dtype=torch.float64) + torch.tensor([0.8, 0.0, 0.0], dtype=torch.float64)
    B = torch.randn(36, 3, generator=g, dtype=torch.float64)
    for seed in (0, 1, 2):
        p = linear_probe(A, B, test_fraction=0.25, seed=seed)
        assert (p.n_test, p.n_train) == (10 + 9, 30 + 27)
        correct = int((A @ p.normal + p.bias > 0).sum() + (B @ p.normal + p.bias <= 0).sum())
        k_test, k_train = p.accuracy * p.n_test, p.train_accuracy * p.n_train
        assert k_test == pytest.approx(round(k_test), abs=1e-9) and k_train == pytest.approx(round(k_train), abs=1e-9)
        assert round(k_test) + round(k_train) == correct
        assert 0.5 < correct / 76 < 1.0                # overlapping sets: an informative but imperfect probe
        assert (p.lower, p.upper) == pytest.approx(wilson_interval(round(k_test), p.n_test), abs=1e-15)
        assert float(p.normal.norm()) == pytest.approx(1.0, abs=1e-12)
    far = linear_probe(A + 20.0, B, seed=0)               # separated by a wide margin
    assert far.accuracy == 1.0 and far.train_accuracy == 1.0
    assert bool((A @ far.normal + 20.0 * far.normal.sum() + far.bias > 0).all())
    assert bool((B @ far.normal + far.bias < 0).all())


# ----------------------------------------------------------------------------
# Callback
# ----------------------------------------------------------------------------

def test_callback_records_fixed_subset_at_chosen_epochs():
    train = load_dataset("gaussians", size=150, seed=1)
    cb = SeparabilityCallback(layers=["layers.0.act", "head"], measures=("hull_distance", "md_lsm"),
                              max_per_class=15, epochs=[0, 2], steps=[1])
    torch.manual_seed(0)
    model = MLP(2, [8], train.n_classes)
    history = fit(model, train, epochs=2, progress=False, callbacks=[cb])
    table = cb.table
    assert set(table["trigger"]) == {"epoch", "step"}
    assert set(table[table["trigger"] == "epoch"]["epoch"]) == {0, 2}
    assert table[table["trigger"] == "step"]["step"].unique().tolist() == [1]
    assert set(table["layer"]) == {"layers.0.act", "head"}
    n_pairs = train.n_classes * (train.n_classes - 1) // 2
    assert len(table) == 3 * 2 * n_pairs * 2
    assert len(cb.indices) == 15 * train.n_classes
    measured = history.attrs["measurements"]
    assert len(measured) == len(table)
    # the epoch-2 rows equal a direct computation on the same subset with the trained model
    X, y = train.X[cb.indices], train.y[cb.indices]
    acts = record(model, (X, y), layers=["layers.0.act"], pool="flatten")
    rows = table[(table["epoch"] == 2) & (table["trigger"] == "epoch") & (table["measure"] == "hull_distance")
                 & (table["layer"] == "layers.0.act")]
    for _, row in rows.iterrows():
        H = acts["layers.0.act"]
        h = hull_distance(H[y == row["class_a"]], H[y == row["class_b"]])
        assert row["value"] == pytest.approx(h.distance, rel=1e-6, abs=1e-9)


def test_callback_rejects_unknown_options():
    with pytest.raises(TypeError, match="options: expected keyword arguments of layer_separability"):
        SeparabilityCallback(colour="red")
    with pytest.raises(ValueError, match="measures: expected names from"):
        SeparabilityCallback(measures=("nope",))


def test_subsample_and_table_arguments_are_checked_before_any_work():
    y = torch.tensor([0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="max_per_class: expected an int >= 1, got 0"):
        balanced_subsample(y, 0, seed=0)
    with pytest.raises(ValueError, match="max_per_class: expected an int >= 1, got -1"):
        balanced_subsample(y, -1, seed=0)
    assert balanced_subsample([0, 0, 1], 1, seed=0).tolist() in ([0, 2], [1, 2])   # labels as a list
    with pytest.raises(TypeError, match="seed: expected an int"):
        class_subsample(y, [0], 1, seed="a")
    X, yy = three_classes()
    for kwargs, pattern in [({"hull_tol": -1.0}, "hull_tol"), ({"hull_max_iter": 0}, "hull_max_iter"),
                            ({"md_lsm_method": "fast"}, "md_lsm_method: expected one of"),
                            ({"subset_method": "fast"}, "subset_method: expected one of"),
                            ({"probe_test_fraction": 1.5}, r"probe_test_fraction: expected a number in \(0, 1\)")]:
        with pytest.raises(ValueError, match=pattern):
            layer_separability({"x": X}, yy, measures=("hull_distance",), **kwargs)


def test_wilson_interval_checks_its_counts():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes: expected at most n = 10, got 12"):
        wilson_interval(12, 10)
    with pytest.raises(ValueError, match="n: expected an int >= 0"):
        wilson_interval(0, -1)
    with pytest.raises(TypeError, match="successes: expected an int"):
        wilson_interval(0.5, 10)
