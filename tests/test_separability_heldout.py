"""Held-out separability: test AUC of fitted directions with DeLong intervals, and held-out tables."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, roc_auc_score

from sepmeasure.separability import MEASURES, hull_distance, layer_separability, linear_probe, md_lsm
from sepmeasure.separability.heldout import HeldOutAUC, delong_interval, held_out_auc
from sepmeasure.separability.layer_rows import held_out_layer_rows


def gaussian_pair(seed, n=40, m=35, d=6, shift=0.5):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, generator=g, dtype=torch.float64)
    B = torch.randn(m, d, generator=g, dtype=torch.float64) + shift
    return A, B


def delong_by_loops(sa, sb, z=1.959963984540054):
    """DeLong's variance from its definition (double loops over the pairs, strict kernel)."""
    n, m = len(sa), len(sb)
    psi = [[1.0 if a > b else 0.0 for b in sb] for a in sa]
    auc = sum(map(sum, psi)) / (n * m)
    v = [sum(row) / m for row in psi]
    w = [sum(psi[i][j] for i in range(n)) / n for j in range(m)]
    s10 = sum((x - auc) ** 2 for x in v) / (n - 1)
    s01 = sum((x - auc) ** 2 for x in w) / (m - 1)
    half = z * math.sqrt(s10 / n + s01 / m)
    return auc, max(0.0, auc - half), min(1.0, auc + half)


@pytest.mark.parametrize("seed", range(4))
def test_delong_interval_matches_its_definition(seed):
    rng = np.random.default_rng(seed)
    sa, sb = rng.normal(size=12 + seed) + 0.7, rng.normal(size=9)
    if seed == 3:
        sa, sb = np.round(sa), np.round(sb)       # ties count for neither side
    got = delong_interval(sa, sb)
    assert got == pytest.approx(delong_by_loops(sa.tolist(), sb.tolist()), abs=1e-12)
    assert delong_interval([1.0], [0.0, 2.0])[1:] == (0.0, 1.0)


@pytest.mark.parametrize("seed", range(3))
def test_md_lsm_held_out_value_is_the_test_auc_of_its_direction(seed):
    A, B = gaussian_pair(seed)
    At, Bt = gaussian_pair(seed + 100, n=25, m=30)
    r = md_lsm(A, B, test=(At, Bt))
    fit = md_lsm(A, B)
    assert isinstance(r, HeldOutAUC)
    assert torch.equal(r.normal, fit.normal / fit.normal.norm()) and r.train_value == fit.value
    scores = np.r_[(At @ r.normal).numpy(), (Bt @ r.normal).numpy()]
    y = np.r_[np.ones(25), np.zeros(30)]
    assert r.value == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert r.lower <= r.value <= r.upper and (r.n_a, r.n_b) == (25, 30)
    # any direction, e.g. the hull's or the probe's
    h = hull_distance(A, B)
    assert held_out_auc(h.normal, At, Bt).value == pytest.approx(
        roc_auc_score(y, np.r_[(At @ h.normal).numpy(), (Bt @ h.normal).numpy()]), abs=1e-12)


def test_linear_probe_on_given_held_out_sets():
    A, B = gaussian_pair(5)
    At, Bt = gaussian_pair(6, n=20, m=20)
    p = linear_probe(A, B, test=(At, Bt))
    pred = np.r_[(At @ p.normal + p.bias > 0).numpy(), (Bt @ p.normal + p.bias > 0).numpy()]
    assert p.accuracy == pytest.approx(accuracy_score(np.r_[np.ones(20), np.zeros(20)], pred), abs=1e-12)
    assert (p.n_train, p.n_test, p.seed) == (75, 40, None)


def test_held_out_table_rows_equal_direct_calls_on_the_split():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(20)
    X = torch.randn(60, 12, generator=g, dtype=torch.float64) + 0.9 * torch.nn.functional.one_hot(y, 12).double()
    acts = {"x": X, "t": torch.tanh(X)}
    t = layer_separability(acts, y, measures=MEASURES, held_out=0.3, seed=1, progress=False)
    again = layer_separability(acts, y, measures=MEASURES, held_out=0.3, seed=1, progress=False)
    assert t.drop(columns="seconds").equals(again.drop(columns="seconds"))
    test_rows = torch.tensor(t.attrs["held_out_rows"])
    assert torch.bincount(y[test_rows]).tolist() == [6, 6, 6]          # stratified
    train_rows = torch.tensor(sorted(set(range(60)) - set(test_rows.tolist())))
    assert set(t["n_test_a"]) == {6} and set(t["n_a"]) == {14}
    yt, ytr = y[test_rows], y[train_rows]
    for layer, H in acts.items():
        for a, b in [(0, 1), (1, 2)]:
            rows = t[(t.layer == layer) & (t.class_a == a) & (t.class_b == b)].set_index("measure")
            A, B = H[train_rows][ytr == a], H[train_rows][ytr == b]
            At, Bt = H[test_rows][yt == a], H[test_rows][yt == b]
            fit = md_lsm(A, B, seed=1)
            assert rows.loc["md_lsm", "value"] == fit.value
            s = np.r_[(At @ fit.normal).numpy(), (Bt @ fit.normal).numpy()]
            auc = roc_auc_score(np.r_[np.ones(6), np.zeros(6)], s)
            assert rows.loc["md_lsm", "held_out_value"] == pytest.approx(auc, abs=1e-12)
            assert rows.loc["md_lsm", "held_out_interval"] == "DeLong 95%"
            p = linear_probe(A, B, test=(At, Bt))
            assert rows.loc["linear_probe", "held_out_value"] == p.accuracy == rows.loc["linear_probe", "value"]
            h = hull_distance(A, B)
            if h.separable:
                assert rows.loc["hull_distance", "held_out_value"] == pytest.approx(
                    held_out_auc(h.normal, At, Bt).value, abs=1e-9)
            else:
                assert math.isnan(rows.loc["hull_distance", "held_out_value"])
    assert "held_out_value" not in layer_separability(acts, y, measures=("md_lsm",), progress=False).columns


def test_held_out_layer_rows_against_direct_calls_on_the_split():
    from sklearn.metrics import balanced_accuracy_score

    from sepmeasure.separability import fit_logistic

    g = torch.Generator().manual_seed(2)
    y = torch.tensor([0] * 24 + [1] * 20 + [2] * 16)
    X = torch.randn(60, 5, generator=g, dtype=torch.float64) + 1.1 * torch.nn.functional.one_hot(y, 5).double()
    acts = {"x": X, "t": torch.tanh(X)}
    out = held_out_layer_rows(acts, y, "ovr", 1, 0.3, {"x": 1, "t": 2})
    assert list(out.columns) == ["layer", "class_a", "class_b", "measure", "value", "n_a", "n_b", "layer_index"]
    assert sorted(set(out["measure"])) == sorted(["md_lsm", "hull_distance", "relative_hull_distance",
                                                  "md_lsm_held_out", "linear_probe", "probe_auc"])
    assert len(out) == 2 * 3 * 6 and set(zip(out["layer"], out["layer_index"])) == {("x", 1), ("t", 2)}
    test_rows = layer_separability(acts, y, measures=("md_lsm",), pairs="ovr", held_out=0.3, seed=1,
                                   progress=False).attrs["held_out_rows"]
    test_rows = torch.tensor(sorted(test_rows))
    train_rows = torch.tensor(sorted(set(range(60)) - set(test_rows.tolist())))
    yt, ytr = y[test_rows], y[train_rows]
    for layer, H in acts.items():
        spread = math.sqrt(float(((H - H.mean(0)) ** 2).sum(1).mean()))
        for a in range(3):
            got = out[(out.layer == layer) & (out.class_a == a)].set_index("measure")
            assert set(got["class_b"]) == {"rest"} and set(got["n_a"]) == {int((ytr == a).sum())}
            A, B = H[train_rows][ytr == a], H[train_rows][ytr != a]
            At, Bt = H[test_rows][yt == a], H[test_rows][yt != a]
            fit = md_lsm(A, B, seed=1)
            assert got.loc["md_lsm", "value"] == fit.value
            s = np.r_[(At @ fit.normal).numpy(), (Bt @ fit.normal).numpy()]
            truth = np.r_[np.ones(len(At)), np.zeros(len(Bt))]
            assert got.loc["md_lsm_held_out", "value"] == pytest.approx(roc_auc_score(truth, s), abs=1e-12)
            h = hull_distance(A, B).distance
            assert got.loc["hull_distance", "value"] == pytest.approx(h, abs=1e-9)
            assert got.loc["relative_hull_distance", "value"] == pytest.approx(h / spread, abs=1e-9)
            w, b = fit_logistic(H[train_rows], (ytr == a).long())
            p = (H[test_rows] @ w + b).numpy()
            assert got.loc["linear_probe", "value"] == pytest.approx(
                balanced_accuracy_score((yt == a).numpy(), p > 0), abs=1e-12)
            assert got.loc["probe_auc", "value"] == pytest.approx(roc_auc_score((yt == a).numpy(), p), abs=1e-12)


def test_held_out_bad_input():
    A, B = gaussian_pair(0, n=5, m=5, d=3)
    with pytest.raises(TypeError, match=r"test: expected a pair \(A_test, B_test\)"):
        md_lsm(A, B, test=A)
    with pytest.raises(ValueError, match="test\\[0\\]: expected 3 features"):
        md_lsm(A, B, test=(torch.zeros(2, 4), torch.zeros(2, 4)))
    with pytest.raises(ValueError, match="test\\[1\\]: expected finite values"):
        linear_probe(A, B, test=(A, torch.full((2, 3), float("nan"))))
    X = torch.cat([A, B]).float()
    y = torch.tensor([0] * 5 + [1] * 4 + [2])
    with pytest.raises(ValueError, match=r"held_out: expected a number in \(0, 1\)"):
        layer_separability({"x": X}, y, held_out=1.5)
    with pytest.raises(ValueError, match="held_out: expected at least 2 rows of every class.*got 1 of class 2"):
        layer_separability({"x": X}, y, held_out=0.3)
