"""Studies S1 and S2: their grids and claims, their tables and verdicts on synthetic results whose
truth is known, and a smoke run of the real pipeline on a tiny grid."""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sepmeasure.claims import Claim
from sepmeasure.cli import load_study
from sepmeasure.report import FigureSpec, render_figure

ROOT = Path(__file__).resolve().parents[1]
S1 = load_study(ROOT / "studies" / "s1_synchronicity.py")
S2 = load_study(ROOT / "studies" / "s2_architecture.py")


def _has_layer_separability() -> bool:
    if importlib.util.find_spec("sepmeasure.separability") is None:
        return False
    import sepmeasure.separability as sep

    return hasattr(sep, "layer_separability")


needs_separability = pytest.mark.skipif(not _has_layer_separability(),
                                        reason="sepmeasure.separability.layer_separability is not available")


@pytest.mark.parametrize("study", [S1, S2], ids=["s1", "s2"])
def test_grids_seeds_claims_and_figures_are_declared(study):
    assert study.seeds["quick"] >= 3 and study.seeds["full"] > study.seeds["quick"]
    assert len(study.configurations("full")) > len(study.configurations("quick"))
    assert study.claims and all(isinstance(c, Claim) for c in study.claims)
    for c in study.claims:
        assert "Zhang" in c.paper and "2307.13962" in c.paper and c.statement
    assert all(isinstance(f, FigureSpec) for f in study.figures)
    for config in study.configurations("quick"):
        assert config["per_class"] <= 40 and config["epochs"] <= 15


# --------------------------------------------------------------------------------------------
# S1 on synthetic results


def s1_results(layer_slope: float, seeds=(0, 1, 2)) -> pd.DataFrame:
    """Rows shaped like S1's run_one: separability co-moves with accuracy; layer trend given."""
    rows = []
    steps = [0, 1, 2, 4, 8, 19, 38, 57, 76]
    for model, dataset in (("mlp", "mnist1d"), ("cnn", "digits")):
        for seed in seeds:
            rng = np.random.default_rng(seed)
            acc = np.clip(np.cumsum(rng.uniform(-0.05, 0.15, len(steps))) + 0.1, 0, 1)
            for i, step in enumerate(steps):
                epoch = step // 19
                common = {"model": model, "dataset": dataset, "seed": seed, "step": step, "epoch": epoch}
                rows.append({**common, "kind": "train_accuracy", "value": acc[i], "loss": 1 - acc[i]})
                for layer in (1, 2, 3):
                    for cls in range(4):
                        for m in ("md_lsm", "hull_distance", "relative_hull_distance", "linear_probe"):
                            value = 0.5 + layer_slope * layer + 0.3 * acc[i] + 1e-4 * cls
                            rows.append({**common, "kind": "separability", "layer": f"layers.{layer - 1}.act",
                                         "layer_index": layer, "class_a": cls, "class_b": -1, "measure": m,
                                         "value": value})
            for epoch in range(4):
                for split in ("train", "test"):
                    rows.append({"model": model, "dataset": dataset, "seed": seed, "epoch": epoch, "step": 19 * epoch,
                                 "kind": "history", "split": split, "accuracy": 0.2 * epoch, "loss": 1.0})
    return pd.DataFrame(rows)


def evaluate_all(study, tables):
    return {c.name: c.evaluate(tables[c.table]) for c in study.claims}


def test_s1_summaries_and_verdicts_when_the_claims_hold():
    tables = S1.summarize(s1_results(layer_slope=0.05))
    assert {"separability", "synchrony", "final", "agreement", "accuracy"} <= set(tables)
    sep = tables["separability"]
    assert (sep["n_pairs"] == 4).all()  # the mean over the four one-vs-rest pairs
    first = sep[(sep["seed"] == 0) & (sep["model"] == "mlp") & (sep["step"] == 0) & (sep["layer_index"] == 2)]
    # layer 2 at step 0: 0.5 + 2 * 0.05 + 0.3 * acc[0] + mean over classes of 1e-4 * class
    rng = np.random.default_rng(0)
    acc0 = np.clip(np.cumsum(rng.uniform(-0.05, 0.15, 9)) + 0.1, 0, 1)[0]
    assert first["value"].tolist() == pytest.approx([0.5 + 0.1 + 0.3 * acc0 + 1.5e-4] * 4)
    final = tables["final"]
    assert set(final["step"]) == {76}
    results = evaluate_all(S1, tables)
    for m in ("md_lsm", "relative_hull_distance", "linear_probe"):
        assert results[f"deeper-more-separable-{m}"].verdict == "supported"
        assert results[f"sync-rank-{m}"].verdict == "supported"
    assert results["sync-sign-md_lsm"].details["agreement"] == pytest.approx(1.0)
    agreement = tables["agreement"]
    assert (agreement["agreement"] == 1.0).all()


def test_s1_verdicts_when_deeper_layers_are_less_separable():
    results = evaluate_all(S1, S1.summarize(s1_results(layer_slope=-0.05)))
    for m in ("md_lsm", "relative_hull_distance", "linear_probe"):
        assert results[f"deeper-more-separable-{m}"].verdict == "not supported"


def test_s1_figures_draw_from_its_tables():
    tables = S1.summarize(s1_results(layer_slope=0.05, seeds=(0, 1)))
    for spec in S1.figures:
        assert render_figure(spec, tables[spec.table])[:4] == b"\x89PNG"


# --------------------------------------------------------------------------------------------
# S2 on synthetic results


def s2_results(width_effect: float) -> pd.DataFrame:
    rows = []
    for config in S2.configurations("quick"):
        act, width, depth, seed = config["activation"], config["width"], config["depth"], config["seed"]
        for layer in range(1, depth + 1):
            for m in ("md_lsm", "hull_distance", "relative_hull_distance", "linear_probe"):
                value = 0.6 + width_effect * np.log2(width) + (0.0 if act == "identity" else 0.1) + 0.01 * seed
                rows.append({**config, "kind": "separability", "layer": f"layers.{layer - 1}.act",
                             "layer_index": layer, "relative_depth": layer / depth, "class_a": 0, "class_b": -1,
                             "measure": m, "value": value})
        for split in ("train", "test"):
            rows.append({**config, "kind": "accuracy", "split": split, "value": 0.5 + 0.01 * seed})
    return pd.DataFrame(rows)


def test_s2_verdicts_on_synthetic_results():
    tables = S2.summarize(s2_results(width_effect=0.02))
    last = tables["last_layer"]
    assert (last["layer_index"] == last["depth"]).all()
    assert {"train_accuracy", "test_accuracy"} <= set(last.columns)
    results = evaluate_all(S2, tables)
    assert results["nonlinearity-needed"].verdict == "supported"
    assert results["nonlinearity-needed"].effect == pytest.approx(0.1)
    assert results["wider-more-separable"].verdict == "supported"
    # depth has no effect here: every seed's values tie across depths, so no correlation exists
    assert results["deeper-more-separable"].verdict == "inconclusive"
    flipped = evaluate_all(S2, S2.summarize(s2_results(width_effect=-0.02)))
    assert flipped["wider-more-separable"].verdict == "not supported"
    assert {g.group for g in results["wider-more-separable"].groups} == {
        "measure=md_lsm", "measure=relative_hull_distance", "measure=linear_probe"}
    for spec in S2.figures:
        assert render_figure(spec, tables[spec.table])[:4] == b"\x89PNG"


# --------------------------------------------------------------------------------------------
# the real pipeline on a tiny grid


@needs_separability
def test_s1_and_s2_run_on_a_tiny_grid(tmp_path):
    base1 = {k: v for k, v in S1.configurations("quick")[0].items() if k != "seed"}
    tiny1 = dataclasses.replace(S1, quick=[{**base1, "epochs": 2, "early_steps": (1,), "per_class": 6,
                                            "classes": (0, 1), "depth": 2, "width": 8, "n_data": 300}],
                                seeds={"quick": 2, "full": 3})
    r1 = tiny1.run("quick", out=tmp_path, progress=False, threads=1)
    sep = r1.tables["separability"]
    assert set(sep["measure"]) == {"md_lsm", "hull_distance", "relative_hull_distance", "linear_probe"}
    assert set(sep["layer_index"]) == {1, 2}
    assert sorted(sep["step"].unique())[:2] == [0, 1]
    assert sep["value"].notna().all()
    md = sep[sep["measure"] == "md_lsm"]["value"]
    assert ((md >= 0.5 - 1e-9) & (md <= 1 + 1e-9)).all()
    assert len(r1.claims) == len(S1.claims)

    base = {k: v for k, v in S2.configurations("quick")[0].items() if k != "seed"}
    tiny2 = dataclasses.replace(S2, quick=[{**base, "epochs": 1, "per_class": 6, "classes": (0, 1), "width": 8,
                                            "n_data": 300, "activation": ["relu", "identity"]}],
                                seeds={"quick": 2, "full": 3})
    r2 = tiny2.run("quick", out=tmp_path, progress=False, threads=1)
    last = r2.tables["last_layer"]
    assert set(last["activation"]) == {"relu", "identity"}
    assert last["test_accuracy"].between(0, 1).all()
