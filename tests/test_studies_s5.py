"""Study S5 (linearity masks, folding, magnitude pruning): the registry pinned, the validation split, the
choice of penalty, magnitude pruning to a multiply-add budget against brute-force counts, a tiny run of the
real pipeline, and the verdicts of ``summarize`` on a table whose answer is known."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from sepmeasure.claims import VERDICTS, Claim, ClaimRegistry
from sepmeasure.cli import load_study
from sepmeasure.data import LabeledData
from sepmeasure.models import CNN, MLP
from sepmeasure.report import FigureSpec, render_figure

ROOT = Path(__file__).resolve().parents[1]
S5 = load_study(ROOT / "studies" / "s5_masks.py")
MODULE = __import__(S5.run_one.__module__, fromlist=["run_one"])

#: The claims' decisions of each study version; a change needs a new version and a line of why.
PINS = {"2": "6a7364ac2e9a2060"}


def test_registry_is_pinned_and_every_claim_has_a_control_and_a_failure_sentence():
    reg = MODULE.REGISTRY
    assert isinstance(reg, ClaimRegistry) and reg.study_version == S5.version
    reg.verify(PINS)
    assert S5.version in reg.changes and "validation" in reg.changes[S5.version]
    assert tuple(S5.claims) == reg.claims
    for claim in S5.claims:
        assert isinstance(claim, Claim) and "2203.11700" in claim.paper and claim.statement
        assert claim.control is not None and claim.control.source != "none", claim.name
        assert claim.not_supported_if, claim.name
    assert "folding-is-exact" not in {c.name for c in S5.claims}  # a test of the library now


def test_study_declares_grids_seeds_and_figures():
    assert S5.seeds["quick"] >= 3 and S5.seeds["full"] >= 5
    configs = S5.configurations("quick")
    assert {c["arch"] for c in configs} == {"mlp", "cnn1d", "cnn"} and len(configs) == 9
    assert all(isinstance(f, FigureSpec) for f in S5.figures)
    for arch, grid in MODULE.PENALTIES.items():
        assert grid[0] == 0.0 and list(grid) == sorted(grid) and len(grid) >= 3, arch


def test_validation_split_is_a_stratified_partition_of_the_training_part():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    data = LabeledData(torch.arange(100, dtype=torch.float32)[:, None], y)
    fit_part, val = MODULE.split_validation(data, 0.2, seed=3)
    ids_fit, ids_val = set(fit_part.X[:, 0].tolist()), set(val.X[:, 0].tolist())
    assert not ids_fit & ids_val and ids_fit | ids_val == set(range(100))
    assert np.bincount(val.y.numpy()).tolist() == [10, 6, 4]
    again, _ = MODULE.split_validation(data, 0.2, seed=3)
    assert torch.equal(again.X, fit_part.X)
    other, _ = MODULE.split_validation(data, 0.2, seed=4)
    assert not torch.equal(other.X, fit_part.X)
    with pytest.raises(ValueError, match="fraction"):
        MODULE.split_validation(data, 1.0, seed=0)


def test_choose_penalty_on_validation_accuracies():
    val = {0.0: 0.80, 0.3: 0.795, 1.0: 0.785, 3.0: 0.70}
    assert MODULE.choose_penalty(val, 0.80) == (1.0, True)       # 1.5 points lost; 3.0 loses 10
    assert MODULE.choose_penalty(val, 0.80, max_loss_points=0.5) == (0.3, True)
    assert MODULE.choose_penalty({0.0: 0.9, 0.3: 0.7, 1.0: 0.75}, 0.9) == (1.0, False)  # none within: best val
    assert MODULE.choose_penalty({0.3: 0.7, 1.0: 0.7}, 0.9) == (0.3, False)
    with pytest.raises(ValueError, match="positive penalty"):
        MODULE.choose_penalty({0.0: 0.9}, 0.9)


def _brute_force_sparse_macs(model: nn.Module, input_shape) -> int:
    """Non-zero weights times output positions, positions counted from a forward pass of each layer's output."""
    count = 0
    x = torch.zeros(1, *input_shape)
    if isinstance(model, CNN):
        h = x if x.ndim == model.dim + 2 else x.unsqueeze(1)
        for block in model.layers:
            h = block(h)
            positions = int(np.prod(h.shape[2:]))
            count += sum(positions for w in block.conv.weight.detach().flatten().tolist() if w != 0)
    else:
        for block in model.layers:
            count += sum(1 for w in block.linear.weight.detach().flatten().tolist() if w != 0)
    return count + sum(1 for w in model.head.weight.detach().flatten().tolist() if w != 0)


@pytest.mark.parametrize("make, shape", [(lambda: MLP(6, [5, 4], 3), (6,)),
                                         (lambda: CNN(1, [3, 2], 4, dim=1), (1, 9)),
                                         (lambda: CNN(1, [2, 3], 3, dim=2), (1, 5, 5))])
def test_magnitude_pruning_meets_the_budget_with_the_fewest_weights_removed(make, shape):
    torch.manual_seed(0)
    model = make()
    full = MODULE.sparse_macs(model, shape)
    assert full == _brute_force_sparse_macs(model, shape)
    for share in (1.0, 0.6, 0.25, 0.0):
        budget = int(share * full)
        pruned = MODULE.magnitude_prune_to(model, budget, shape)
        macs = MODULE.sparse_macs(pruned, shape)
        assert macs == _brute_force_sparse_macs(pruned, shape) <= budget
        weights = [m for m in pruned.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
        kept = torch.cat([m.weight.detach().flatten() for m in weights])
        n_pruned = int((kept == 0).sum())
        if share == 1.0:
            assert n_pruned == 0 and not hasattr(weights[0], "weight_mask")
            continue
        # global magnitude: every removed weight is no larger than every kept one (in the original model)
        orig = torch.cat([m.weight.detach().flatten() for m in model.modules()
                          if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))])
        if (kept != 0).any():
            assert orig[kept == 0].abs().max() <= orig[kept != 0].abs().min()
        # one weight fewer would not have met the budget
        fewer = MODULE.magnitude_prune_to(model, 10 ** 9, shape)
        prunable = [(m, "weight") for m in fewer.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
        prune.global_unstructured(prunable, pruning_method=prune.L1Unstructured, amount=n_pruned - 1)
        assert MODULE.sparse_macs(fewer, shape) > budget
    assert torch.equal(MODULE.magnitude_prune_to(model, full, shape)(torch.ones(2, *shape)),
                       model(torch.ones(2, *shape)))  # the original model is untouched


TINY = {"n_data": 300, "widths": (6, 6), "epochs": 4, "lr": 0.01, "batch_size": 64}
TINY_ARCHS = [{"arch": "mlp", "dataset": "mnist1d", "penalties": (0.0, 3.0)},
              {"arch": "cnn1d", "dataset": "mnist1d", "penalties": (0.0, 30.0)},
              {"arch": "cnn", "dataset": "digits", "n_data": 0, "penalties": (0.0, 30.0)}]


@pytest.fixture(scope="module")
def tiny_results():
    frames = []
    for seed in (0, 1):
        for arch in TINY_ARCHS:
            config = {**TINY, **arch, "seed": seed}
            out = MODULE.run_one(config, device="cpu")
            frames.append(out.assign(**{k: v for k, v in config.items() if k not in ("widths", "penalties")}))
    return pd.concat(frames, ignore_index=True)


def test_run_one_rows_are_tidy_folding_is_exact_and_the_budgets_match(tiny_results):
    r = tiny_results
    assert {"kind", "measure", "value", "variant", "penalty"} <= set(r.columns)
    key = ["arch", "seed", "variant", "penalty", "kind", "measure", "layer"]
    assert not r.fillna({"penalty": -1, "layer": ""}).duplicated(subset=key).any()
    assert set(r["variant"]) == {"unmasked", "masks", "pruned_oneshot", "pruned", "choice"}
    m = r[r["variant"] == "masks"].pivot_table(index=["arch", "seed", "penalty"], columns="measure", values="value")
    assert (m["folded_test_accuracy"] == m["test_accuracy"]).all()
    assert (m["max_output_difference"] < 1e-4).all()
    shares = r[r["kind"] == "layer"]
    assert ((shares["value"] >= 0) & (shares["value"] <= 1)).all()
    assert (shares["linear_units"] == np.round(shares["value"] * shares["units"])).all()
    # the pruned baselines never exceed the folded network's multiply-adds at their penalty
    macs = r[r["measure"] == "macs"].pivot_table(index=["arch", "seed", "penalty"], columns="variant", values="value")
    both = macs.dropna(subset=["pruned_oneshot"])
    assert (both["pruned_oneshot"] <= both["masks"]).all()
    tuned = macs.dropna(subset=["pruned"])
    assert len(tuned) == 6 and (tuned["pruned"] <= tuned["masks"]).all()
    # a CNN whose every channel is linear is folded into one affine map: it saves most multiply-adds
    cnn = r[(r["arch"] != "mlp") & (r["variant"] == "masks")]
    lin = cnn[cnn["measure"] == "linear_fraction"].groupby(["arch", "seed", "penalty"])["value"].min()
    saved = cnn[cnn["measure"] == "macs_saved"].set_index(["arch", "seed", "penalty"])["value"]
    assert (saved[lin.index[lin == 1]] > 0.5).all()


@pytest.mark.parametrize("arch, dataset, shape", [("cnn1d", "mnist1d", (40,)), ("cnn", "digits", (1, 8, 8))])
def test_an_entirely_linear_study_cnn_folds_to_one_affine_map(arch, dataset, shape):
    from sepmeasure.models import apply_masks, fold
    data = LabeledData(torch.randn(20, *shape), torch.arange(20) % 10)
    model = apply_masks(MODULE.build_model({"arch": arch, "widths": (16, 16, 16)}, data))
    for block in model.layers:
        block.act.set_nonlinear(torch.zeros(block.act.channels, dtype=torch.bool))
    folded = fold(model, input_shape=shape)
    d = int(np.prod(shape))
    assert folded.report.macs_after == d * 10 and folded.report.macs_before > 20 * d * 10
    torch.testing.assert_close(folded(data.X), model(data.X), rtol=1e-4, atol=1e-4)


def test_summarize_claims_and_figures_on_a_real_tiny_run(tiny_results):
    tables = S5.summarize(tiny_results)
    assert {"accuracy", "per_layer", "chosen_layers", "comparison", "decisions"} <= set(tables)
    comp = tables["comparison"]
    assert set(comp["variant"]) == {"masks", "masks_no_penalty", "unmasked", "pruned"}
    assert len(comp) == 4 * 6
    assert tables["chosen_layers"].groupby(["arch", "seed"]).size().tolist() == [2] * 6
    for claim in S5.claims:
        result = claim.evaluate(tables[claim.table])
        assert result.verdict in VERDICTS and result.control and np.isfinite(result.baseline)
    for spec in S5.figures:
        assert render_figure(spec, tables[spec.table])[:4] == b"\x89PNG"


def _hand_table(mask_acc, pruned_acc, unmasked_acc=0.9, share=0.3, control_share=0.0, macs_saved=0.5):
    """Rows as run_one writes them; the validation accuracies make penalty 1 the choice (1 point lost)."""
    rows = []
    for seed, jitter in enumerate((0.0, 0.001, -0.001)):
        base = {"arch": "mlp", "dataset": "d", "seed": seed}
        u = {**base, "variant": "unmasked", "penalty": np.nan}
        rows += [{**u, "kind": "accuracy", "measure": "val_accuracy", "value": 0.9},
                 {**u, "kind": "accuracy", "measure": "test_accuracy", "value": unmasked_acc + jitter},
                 {**u, "kind": "fold", "measure": "macs", "value": 1000}]
        for penalty, val, acc, sh in ((0.0, 0.9, unmasked_acc, control_share), (1.0, 0.89, mask_acc, share),
                                      (3.0, 0.8, 0.5, 0.9)):
            c = {**base, "variant": "masks", "penalty": penalty}
            saved = macs_saved if penalty == 1.0 else (0.0 if penalty == 0 else 0.9)
            rows += [{**c, "kind": "accuracy", "measure": "val_accuracy", "value": val},
                     {**c, "kind": "accuracy", "measure": "test_accuracy", "value": acc + jitter},
                     {**c, "kind": "fold", "measure": "folded_test_accuracy", "value": acc + jitter},
                     {**c, "kind": "fold", "measure": "macs", "value": 1000 * (1 - saved)},
                     {**c, "kind": "fold", "measure": "macs_saved", "value": saved}]
            for i in (1, 2):
                rows.append({**c, "kind": "layer", "layer": f"layers.{i - 1}.act", "layer_index": i, "units": 10,
                             "linear_units": int(round(10 * sh)), "measure": "linear_fraction",
                             "value": round(10 * sh) / 10})
        rows += [{**base, "variant": "choice", "penalty": 1.0, "kind": "choice", "measure": "chosen_penalty",
                  "value": 1.0},
                 {**base, "variant": "pruned", "penalty": 1.0, "kind": "accuracy", "measure": "test_accuracy",
                  "value": pruned_acc + jitter},
                 {**base, "variant": "pruned", "penalty": 1.0, "kind": "fold", "measure": "macs",
                  "value": 1000 * (1 - macs_saved)}]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("mask_acc, pruned_acc, share, control_share, expected", [
    # masks lose 0.5 points, pruning at equal MACs 3 points: both pruning claims hold
    (0.895, 0.87, 0.3, 0.0, {"pruning-barely-affects-accuracy": "supported",
                             "masks-prune-as-well-as-magnitude-pruning": "supported",
                             "early-linear-features": "supported", "pruning-saves-compute": "supported"}),
    # masks lose 1.5 points; pruning loses nothing: partly against the unmasked, partly against pruning
    (0.885, 0.9, 0.3, 0.0, {"pruning-barely-affects-accuracy": "partly supported",
                            "masks-prune-as-well-as-magnitude-pruning": "partly supported"}),
    # masks lose 5 points and pruning is 5 points better; the control shares as many linear units
    (0.85, 0.9, 0.3, 0.3, {"pruning-barely-affects-accuracy": "not supported",
                           "masks-prune-as-well-as-magnitude-pruning": "not supported",
                           "early-linear-features": "not supported"}),
])
def test_verdicts_on_a_hand_built_table(mask_acc, pruned_acc, share, control_share, expected):
    tables = S5.summarize(_hand_table(mask_acc, pruned_acc, share=share, control_share=control_share))
    t = tables["comparison"]
    masks = t[t["variant"] == "masks"]
    assert (masks["penalty"] == 1.0).all()
    assert np.allclose(masks["early_linear_fraction"], round(10 * share) / 10)  # layer 1 only (not the last)
    verdicts = {c.name: c.evaluate(tables[c.table]) for c in S5.claims}
    for name, verdict in expected.items():
        assert verdicts[name].verdict == verdict, (name, verdicts[name].reason)
    r = verdicts["pruning-barely-affects-accuracy"]
    assert r.effect == pytest.approx(100 * (mask_acc - 0.9))
    assert r.baseline == pytest.approx(90.0)
