"""Study S5 (linearity masks and folding): a tiny run of the real pipeline, its tables and claims, and the
choice of penalty in ``summarize`` checked on a table whose answer is known."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sepmeasure.claims import VERDICTS, Claim
from sepmeasure.cli import load_study
from sepmeasure.report import FigureSpec, render_figure

ROOT = Path(__file__).resolve().parents[1]
S5 = load_study(ROOT / "studies" / "s5_masks.py")
MODULE = __import__(S5.run_one.__module__, fromlist=["run_one"])

TINY = {"arch": "mlp", "dataset": "mnist1d", "n_data": 400, "widths": (8, 8), "epochs": 2, "lr": 0.01,
        "batch_size": 64}


def test_study_declares_grids_seeds_claims_and_figures():
    assert S5.seeds["quick"] >= 3 and S5.seeds["full"] >= 5
    assert len(S5.configurations("quick")) == 24
    assert all(isinstance(c, Claim) and "2203.11700" in c.paper and c.statement for c in S5.claims)
    assert all(isinstance(f, FigureSpec) for f in S5.figures)
    for config in S5.configurations("quick"):
        assert config["penalty"] in MODULE.PENALTIES[config["arch"]]


@pytest.fixture(scope="module")
def tiny_results():
    frames = []
    for seed in (0, 1, 2):
        for arch, dataset, widths, penalties in (("mlp", "mnist1d", (8, 8), MODULE.PENALTIES["mlp"]),
                                                 ("cnn", "digits", (4, 4), MODULE.PENALTIES["cnn"])):
            for penalty in penalties:
                config = {**TINY, "arch": arch, "dataset": dataset, "widths": widths, "penalty": penalty,
                          "seed": seed, "n_data": 400 if arch == "mlp" else 0, "epochs": 1}
                out = MODULE.run_one(config, device="cpu")
                frames.append(out.assign(**{k: v for k, v in config.items() if k != "widths"}))
    return pd.concat(frames, ignore_index=True)


def test_run_one_rows_are_tidy_and_folding_is_exact(device):
    config = {**TINY, "penalty": 3.0, "seed": 0}
    rows = MODULE.run_one(config, device=str(device))
    assert {"kind", "measure", "value"} <= set(rows.columns)
    assert not rows.duplicated(subset=["kind", "measure", "layer"]).any()
    assert set(rows["kind"]) == {"accuracy", "layer", "fold"}
    m = rows.set_index("measure")["value"]
    assert m["folded_accuracy"] == pytest.approx(m["test_accuracy"], abs=1e-12)
    assert m["max_output_difference"] < 1e-4
    shares = rows[rows["kind"] == "layer"]
    assert ((shares["value"] >= 0) & (shares["value"] <= 1)).all()
    assert (shares["linear_units"] == np.round(shares["value"] * shares["units"])).all()
    # the saved share of parameters matches what the share of linear units allows: 0 when none is linear
    if (shares["linear_units"] == 0).all():
        assert m["parameters_saved"] == 0


def test_unmasked_reference_has_only_accuracy(device):
    rows = MODULE.run_one({**TINY, "penalty": 0.0, "seed": 0}, device=str(device))
    assert rows["measure"].tolist() == ["test_accuracy"]


def test_summarize_claims_and_figures_on_a_real_tiny_run(tiny_results):
    tables = S5.summarize(tiny_results)
    assert {"accuracy", "per_layer", "tradeoff"} <= set(tables)
    assert len(tables["tradeoff"]) == 6
    for claim in S5.claims:
        result = claim.evaluate(tables[claim.table])
        assert result.verdict in VERDICTS
    for spec in S5.figures:
        assert render_figure(spec, tables[spec.table])[:4] == b"\x89PNG"


def test_penalty_choice_is_the_largest_within_two_points():
    """Hand-built accuracies: losses 0.5, 1.5, 2.5 points at penalties 0.3, 1, 3 -> penalty 1 is chosen."""
    rows = []
    for seed in (0, 1, 2):
        rows.append({"arch": "mlp", "dataset": "d", "seed": seed, "penalty": 0.0, "penalty_level": 0,
                     "kind": "accuracy", "measure": "test_accuracy", "value": 0.9})
        for level, (penalty, acc, share) in enumerate(((0.3, 0.895, 0.1), (1.0, 0.885, 0.3), (3.0, 0.875, 0.9)), 1):
            common = {"arch": "mlp", "dataset": "d", "seed": seed, "penalty": penalty, "penalty_level": level}
            rows.append({**common, "kind": "accuracy", "measure": "test_accuracy", "value": acc})
            rows.append({**common, "kind": "fold", "measure": "folded_accuracy", "value": acc})
            rows.append({**common, "kind": "fold", "measure": "macs_saved", "value": share / 2})
            rows.append({**common, "kind": "fold", "measure": "parameters_saved", "value": share / 2})
            for i in (1, 2):
                rows.append({**common, "kind": "layer", "layer": f"layers.{i - 1}.act", "layer_index": i,
                             "units": 10, "linear_units": int(10 * share * i / 2), "measure": "linear_fraction",
                             "value": share * i / 2})
    tables = S5.summarize(pd.DataFrame(rows))
    t = tables["tradeoff"]
    assert (t["chosen_penalty"] == 1.0).all()
    assert np.allclose(t["chosen_early_linear_fraction"], 0.15)  # layer 1 only (the last layer is excluded)
    assert np.allclose(t["reference_accuracy_loss_points"], 1.5)
    assert np.allclose(t["reference_macs_saved"], 0.15)
    verdicts = {c.name: c.evaluate(tables[c.table]).verdict for c in S5.claims}
    assert verdicts["early-linear-features"] == "supported"
    assert verdicts["pruning-barely-affects-accuracy"] == "partly supported"
    assert verdicts["folding-is-exact"] == "supported"
