"""S5 — linear features and pruning with learnable linearity masks (He et al. 2022).

Three architectures (ReLU MLPs and 1-D CNNs on mnist1d, 2-D CNNs on digits) get a learnable mask on
every hidden unit (channel for the CNNs) that decides whether the activation is applied
(``h = m * relu(z) + (1 - m) * z``, ``m in {0, 1}``, trained with a straight-through estimator;
:func:`sepmeasure.models.apply_masks`), and a penalty rewarding linear units
(:class:`sepmeasure.models.MaskPenalty`) over a grid of weights that starts at 0 (masks that may
learn, no reward for linearity) and, for the CNNs, stays low enough that channels stay
non-linear. One configuration is one architecture and one seed; within it:

1. the training part of the data is split once more into a fitting part (80%) and a **validation**
   part (20%, stratified); every network is trained on the fitting part only;
2. the plain (unmasked) network and one masked network per penalty are trained alike;
3. the penalty is **chosen on validation accuracy** (never test): the largest one whose validation
   accuracy is at most ``MAX_VAL_LOSS_POINTS`` below the unmasked network's (none within: the one
   with the best validation accuracy);
4. every masked network is folded (:func:`sepmeasure.models.fold`): linear units leave the
   non-linear trunk and an all-linear end (for an entirely linear network: the whole network) is
   composed into one affine map; its multiply-adds are counted;
5. the baseline: the unmasked network **magnitude-pruned** (``torch.nn.utils.prune``, global L1)
   to the multiply-adds of each folded network (one-shot, after training), and at the chosen
   penalty's budget pruned ``FINETUNE_FRACTION`` of the epochs before the end of training and
   fine-tuned for the rest with the pruning mask fixed (the same number of epochs as every other
   network).

Test accuracy is measured once per network, after every choice is made. Claims, thresholds and
their reasons are declared in ``REGISTRY`` below (pinned by ``tests/test_studies_s5.py``). That
folding is exact is a unit test of the library (``tests/test_models_masked.py``), not a claim; the
largest output difference of every fold is still recorded here.

Run alone with ``python studies/s5_masks.py --quick`` or through ``sepmeasure study s5 --quick``.
"""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.utils import prune

from sepmeasure.claims import ClaimRegistry, Control, Threshold
from sepmeasure.data import LabeledData, load_dataset
from sepmeasure.models import CNN, MLP, MaskPenalty, apply_masks, fold, linear_fraction
from sepmeasure.report import FigureSpec
from sepmeasure.study import Study
from sepmeasure.training import evaluate, fit

PAPER = ("He, Nie, Yao, Yin, Gong, Li 2022, Exploring Linear Feature Disentanglement for Neural Networks, "
         "arXiv 2203.11700")

# ----------------------------------------------------------------------------- decisions before data
STUDY_VERSION = "2"
CHANGES = {
    "1": "first version: penalty chosen per seed on test accuracy; pruning judged at a fixed reference penalty "
         "without a control; folding-is-exact as a claim.",
    "2": "review of the S3-S6 issue: penalty chosen on a validation split carved from the training data; a "
         "penalty grid in which the CNNs keep non-linear channels, with 0 (masks without reward) as the control "
         "of the linear share; fold composes an all-linear end into one affine map, so an entirely linear CNN "
         "saves multiply-adds instead of 0 by construction; magnitude pruning at equal multiply-adds as the "
         "baseline of the pruning claim; a 1-D CNN on mnist1d; folding-is-exact moved to the library's tests; "
         "every claim with a control and a not-supported sentence.",
}
#: Penalty grid per architecture (the first, 0, is the masked control without reward for linearity).
PENALTIES = {"mlp": (0.0, 0.3, 1.0, 3.0), "cnn1d": (0.0, 0.1, 0.3, 1.0, 3.0), "cnn": (0.0, 0.1, 0.3, 1.0, 3.0)}
#: A penalty may cost at most this many points of validation accuracy against the unmasked network.
MAX_VAL_LOSS_POINTS = 2.0
#: Share of the epochs that the magnitude-pruned baseline is fine-tuned (pruning mask fixed); the unmasked network
#: is snapshotted that many epochs before its end, so pruned and unmasked networks get the same number of epochs.
FINETUNE_FRACTION = 0.25
VALIDATION_FRACTION = 0.2
EARLY_SHARE_BOUND = 0.1          # linear share of the layers before the last, beyond the control
LOSS_BOUND_POINTS = -1.0         # "barely affects": at most 1 point of test accuracy lost ...
LOSS_PARTIAL_POINTS = -2.0       # ... (2 points: partly)
MACS_SAVED_BOUND = 0.1           # "a readily feasible pruning strategy": at least 10% of the multiply-adds

_CAVEAT = ("Laptop scale: three-layer MLPs and CNNs (16 channels), few epochs, Adam, on mnist1d and digits; the paper "
           "uses larger networks and image datasets and trains the masks for longer. The validation split (20% "
           "of the training part) has a few hundred samples, so the choice of penalty is noisy at the 1-point "
           "level.")


def _registry() -> ClaimRegistry:
    masks = {"variant": "masks"}
    early = Threshold(
        name="early-linear-features", paper=PAPER, table="comparison", where=masks, by="arch",
        statement=("\u201csome features reach the linearly separable space earlier than the others and can be "
                   "detached partly from the NNs\u201d (abstract). Tested reading: at the penalty chosen on "
                   "validation data, the hidden layers before the last hold more than 10% linear units beyond "
                   "the same masked network trained without the penalty."),
        value="early_linear_fraction", op=">=", bound=EARLY_SHARE_BOUND, partial=0.0,
        control=Control.rows({"variant": "masks_no_penalty"},
                             "the same masked network trained without the penalty (masks free to learn)"),
        measured="share of linear units in the hidden layers before the last, at the validation-chosen penalty",
        not_supported_if=("Not supported if the layers before the last had held no more linear units than the "
                          "masked network without penalty, i.e. if no unit could be made linear at an accuracy "
                          "cost the validation data tolerates"),
        caveat=_CAVEAT)
    barely = Threshold(
        name="pruning-barely-affects-accuracy", paper=PAPER, table="comparison", where=masks, by="arch",
        statement=("\u201ca readily feasible pruning strategy which barely affects the performance of the "
                   "original model\u201d (abstract). Tested reading: the folded network at the validation-chosen "
                   "penalty loses at most 1 point of test accuracy against the unmasked network."),
        value="test_accuracy_points", op=">=", bound=LOSS_BOUND_POINTS, partial=LOSS_PARTIAL_POINTS,
        control=Control.rows({"variant": "unmasked"}, "the unmasked network of the same seed and training"),
        measured="test accuracy (points) of the folded masked network at the chosen penalty",
        not_supported_if=("Not supported if the folded network had lost more than 1 point of test accuracy "
                          "against the unmasked one in every seed's interval"),
        caveat=_CAVEAT)
    versus = Threshold(
        name="masks-prune-as-well-as-magnitude-pruning", paper=PAPER, table="comparison", where=masks, by="arch",
        statement=("\u201ca readily feasible pruning strategy which barely affects the performance of the "
                   "original model\u201d (abstract). Tested reading: at equal multiply-adds the folded network "
                   "is at most 1 point less accurate than the unmasked network magnitude-pruned (global L1, "
                   "then fine-tuned, the same epochs in all) to the same budget: the masks' small loss is not "
                   "merely what any pruning to that budget costs."),
        value="test_accuracy_points", op=">=", bound=LOSS_BOUND_POINTS, partial=LOSS_PARTIAL_POINTS,
        control=Control.rows({"variant": "pruned"}, "the unmasked network magnitude-pruned to the folded network's "
                             "multiply-adds and fine-tuned"),
        measured="test accuracy (points) of the folded masked network at the chosen penalty",
        not_supported_if=("Not supported if plain magnitude pruning to the same multiply-adds had been more than "
                          "1 point more accurate than the masks"),
        caveat=_CAVEAT + (" The pruned network is trained as many epochs as the masked one, its last quarter "
                          "with the pruning mask fixed (Adam restarted there, for the unmasked network too). Where "
                          "folding saves nothing, the budget prunes nothing and the baseline is the unmasked network "
                          "itself."))
    saves = Threshold(
        name="pruning-saves-compute", paper=PAPER, table="comparison", where=masks, by="arch",
        statement=("\u201ca readily feasible pruning strategy\u201d (abstract). Tested reading: folding the "
                   "network chosen on validation data saves at least 10% of its multiply-adds."),
        value="macs_saved", op=">=", bound=MACS_SAVED_BOUND, partial=0.0,
        control=Control.constant(0.0, "the unmasked network (nothing saved)"),
        measured="1 - multiply-adds of the folded network / those of the masked network, at the chosen penalty",
        not_supported_if="Not supported if folding had saved less than 10% of the multiply-adds",
        caveat=_CAVEAT)
    return ClaimRegistry(STUDY_VERSION, [
        (early, "The abstract's detachment statement needs linear units before the last layer; 10% of the units "
                "is a share worth detaching, and the masked network without penalty is the control: it shows how "
                "many units turn linear from the task alone. Fixed before any run of version 2."),
        (barely, "\u201cbarely affects\u201d read as at most 1 point of accuracy (2 points: partly), against the "
                 "unmasked network trained alike; the penalty is chosen on validation data, the loss is read on "
                 "test data."),
        (versus, "A pruning claim means something only against a standard pruning at the same compute: global "
                 "magnitude pruning at equal multiply-adds, the 1-point margin of the claim above."),
        (saves, "\u201cfeasible pruning\u201d needs a saving: at least 10% of the multiply-adds (any saving: "
                "partly); the control is the unmasked network, which saves nothing."),
    ], changes=CHANGES)


REGISTRY = _registry()  # its fingerprint per study version is pinned in tests/test_studies_s5.py

# ----------------------------------------------------------------------------- grids
_MLP = {"arch": "mlp", "dataset": "mnist1d", "n_data": 3000, "widths": (64, 64, 64), "epochs": 16, "lr": 0.003,
        "batch_size": 64}
_CNN1D = {"arch": "cnn1d", "dataset": "mnist1d", "n_data": 3000, "widths": (16, 16, 16), "epochs": 10, "lr": 0.01,
          "batch_size": 64}
_CNN = {"arch": "cnn", "dataset": "digits", "n_data": 0, "widths": (16, 16, 16), "epochs": 10, "lr": 0.01,
        "batch_size": 64}
QUICK = [_MLP, _CNN1D, _CNN]
FULL = [{**_MLP, "n_data": 4000, "epochs": 32}, {**_CNN1D, "n_data": 4000, "epochs": 20}, {**_CNN, "epochs": 20}]


# ----------------------------------------------------------------------------- pieces
def split_validation(train: LabeledData, fraction: float, seed: int) -> tuple[LabeledData, LabeledData]:
    """A stratified split of the training part into a fitting part and a validation part."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction: expected a share strictly between 0 and 1, got {fraction!r}")
    y = train.y.numpy()
    rng = np.random.default_rng(10_007 + seed)
    fit_idx, val_idx = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(fraction * len(idx)))
        val_idx.append(idx[:k])
        fit_idx.append(idx[k:])
    fit_idx, val_idx = np.sort(np.concatenate(fit_idx)), np.sort(np.concatenate(val_idx))
    if not len(fit_idx) or not len(val_idx):
        raise ValueError(f"fraction: a validation fraction of {fraction} leaves an empty part of {len(y)} samples")
    return train.subset(torch.from_numpy(fit_idx)), train.subset(torch.from_numpy(val_idx))


def choose_penalty(val_accuracy: dict[float, float], unmasked_val_accuracy: float,
                   max_loss_points: float = MAX_VAL_LOSS_POINTS) -> tuple[float, bool]:
    """The largest positive penalty within ``max_loss_points`` of the unmasked validation accuracy.

    Returns ``(penalty, within)``; when none is within, the positive penalty with the best validation
    accuracy (the smallest such penalty on ties) and ``within=False``.
    """
    positive = sorted(p for p in val_accuracy if p > 0)
    if not positive:
        raise ValueError(f"val_accuracy: expected at least one positive penalty, got {sorted(val_accuracy)}")
    ok = [p for p in positive if 100 * (unmasked_val_accuracy - val_accuracy[p]) <= max_loss_points + 1e-9]
    if ok:
        return ok[-1], True
    best = max(val_accuracy[p] for p in positive)
    return next(p for p in positive if val_accuracy[p] == best), False


def _prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


@torch.no_grad()
def sparse_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one sample counting only non-zero weights (each weight once per output position)."""
    total = 0
    handles = []

    def hook(module, inputs, output):
        nonlocal total
        positions = 1 if isinstance(module, nn.Linear) else output[0].numel() // module.out_channels
        total += int((module.weight != 0).sum()) * positions

    for m, _ in _prunable(model):
        handles.append(m.register_forward_hook(hook))
    try:
        p = next(model.parameters())
        model.eval()
        model(torch.zeros(1, *input_shape, dtype=p.dtype, device=p.device))
    finally:
        for h in handles:
            h.remove()
    return total


def magnitude_prune_to(model: nn.Module, budget: int, input_shape: tuple[int, ...]) -> nn.Module:
    """A copy of ``model`` globally L1-pruned (``torch.nn.utils.prune``) to at most ``budget`` multiply-adds.

    The number of pruned weights is the smallest that meets the budget (bisection; the multiply-adds
    fall as more weights are pruned). Biases are kept (they cost no multiply-add).
    """
    n_weights = sum(m.weight.numel() for m, _ in _prunable(model))

    def pruned(k: int) -> nn.Module:
        out = copy.deepcopy(model)
        if k:
            prune.global_unstructured(_prunable(out), pruning_method=prune.L1Unstructured, amount=int(k))
        return out

    if sparse_macs(model, input_shape) <= budget:
        return pruned(0)
    lo, hi = 0, n_weights  # macs(lo) > budget >= macs(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if sparse_macs(pruned(mid), input_shape) <= budget:
            hi = mid
        else:
            lo = mid
    return pruned(hi)


def build_model(config: dict, train: LabeledData) -> nn.Module:
    """The plain network of a configuration (MLP on flat inputs, 1-D or 2-D CNN)."""
    widths = list(config["widths"])
    if config["arch"] == "mlp":
        return MLP(train.n_features, widths, train.n_classes)
    if config["arch"] == "cnn1d":
        return CNN(1, widths, train.n_classes, dim=1, kernel_size=5)
    if config["arch"] == "cnn":
        return CNN(1, widths, train.n_classes, dim=2)
    raise ValueError(f"arch: expected 'mlp', 'cnn1d' or 'cnn', got {config['arch']!r}")


def _train(model, data, config, seed, device, penalty=None, epochs=None):
    fit(model, data, None, epochs=config["epochs"] if epochs is None else epochs, lr=config["lr"],
        optimizer="adam", batch_size=config["batch_size"], seed=seed, device=device, progress=False,
        penalty=penalty)
    return model


def run_one(config: dict, device: str | None = None) -> pd.DataFrame:
    # One thread per run: the runs are small, and several may run side by side in worker processes.
    torch.set_num_threads(1)
    device = torch.device(device or "cpu")
    seed = config["seed"]
    penalties = tuple(config.get("penalties", PENALTIES[config["arch"]]))
    train, test = load_dataset(config["dataset"], split="both", seed=seed, size=config["n_data"] or None)
    fit_part, val = split_validation(train, VALIDATION_FRACTION, seed)
    input_shape = tuple(train.input_shape)
    rows: list[dict] = []

    def acc(model, data):
        return evaluate(model, data, device=device)["accuracy"]

    finetune = max(1, int(round(FINETUNE_FRACTION * config["epochs"])))
    plain = _train(build_model(config, train), fit_part, config, seed, device,
                   epochs=config["epochs"] - finetune)
    snapshot = copy.deepcopy(plain)  # the unmasked network a quarter of the epochs before the end
    _train(plain, fit_part, config, seed + 1, device, epochs=finetune)
    plain_macs = sparse_macs(plain, input_shape)
    plain_val = acc(plain, val)
    common = {"variant": "unmasked", "penalty": np.nan}
    rows += [{**common, "kind": "accuracy", "measure": "val_accuracy", "value": plain_val},
             {**common, "kind": "accuracy", "measure": "test_accuracy", "value": acc(plain, test)},
             {**common, "kind": "fold", "measure": "macs", "value": plain_macs}]

    val_acc, folded_macs = {}, {}
    for penalty in penalties:
        model = apply_masks(build_model(config, train))
        _train(model, fit_part, config, seed, device, penalty=MaskPenalty(penalty) if penalty > 0 else None)
        common = {"variant": "masks", "penalty": penalty}
        val_acc[penalty] = acc(model, val)
        for i, r in linear_fraction(model).iterrows():
            rows.append({**common, "kind": "layer", "layer": r["layer"], "layer_index": i + 1,
                         "measure": "linear_fraction", "value": float(r["linear_fraction"]),
                         "units": int(r["units"]), "linear_units": int(r["linear_units"])})
        folded = fold(model.to(device), input_shape=input_shape)
        model.eval()
        folded.eval()
        with torch.no_grad():
            X = test.X.to(device)
            max_diff = float((model(X) - folded(X)).abs().max())
        rep = folded.report
        folded_macs[penalty] = rep.macs_after
        rows += [
            {**common, "kind": "accuracy", "measure": "val_accuracy", "value": val_acc[penalty]},
            {**common, "kind": "accuracy", "measure": "test_accuracy", "value": acc(model, test)},
            {**common, "kind": "fold", "measure": "folded_test_accuracy", "value": acc(folded, test)},
            {**common, "kind": "fold", "measure": "max_output_difference", "value": max_diff},
            {**common, "kind": "fold", "measure": "macs", "value": rep.macs_after},
            {**common, "kind": "fold", "measure": "macs_saved", "value": 1 - rep.macs_after / rep.macs_before},
            {**common, "kind": "fold", "measure": "parameters_saved",
             "value": 1 - rep.parameters_after / rep.parameters_before},
            {**common, "kind": "fold", "measure": "collapsed", "value": float(bool(rep.collapsed))},
        ]
        # the baseline at this budget, one-shot (no training): the curve of the figure
        if penalty > 0:
            oneshot = magnitude_prune_to(plain, rep.macs_after, input_shape)
            rows += [{"variant": "pruned_oneshot", "penalty": penalty, "kind": "accuracy",
                      "measure": "test_accuracy", "value": acc(oneshot, test)},
                     {"variant": "pruned_oneshot", "penalty": penalty, "kind": "fold", "measure": "macs",
                      "value": sparse_macs(oneshot, input_shape)}]

    chosen, within = choose_penalty(val_acc, plain_val)
    rows += [{"variant": "choice", "penalty": chosen, "kind": "choice", "measure": "chosen_penalty",
              "value": chosen},
             {"variant": "choice", "penalty": chosen, "kind": "choice", "measure": "within_validation_budget",
              "value": float(within)}]
    tuned = magnitude_prune_to(snapshot, folded_macs[chosen], input_shape)
    _train(tuned, fit_part, config, seed + 1, device, epochs=finetune)
    common = {"variant": "pruned", "penalty": chosen}
    rows += [{**common, "kind": "accuracy", "measure": "val_accuracy", "value": acc(tuned, val)},
             {**common, "kind": "accuracy", "measure": "test_accuracy", "value": acc(tuned, test)},
             {**common, "kind": "fold", "measure": "macs", "value": sparse_macs(tuned, input_shape)}]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- tables
_KEYS = ["arch", "dataset", "seed"]


def summarize(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    res = results.copy()
    res["penalty"] = pd.to_numeric(res["penalty"], errors="coerce")
    choice = (res[res["measure"] == "chosen_penalty"][[*_KEYS, "value"]]
              .rename(columns={"value": "chosen_penalty"}))
    within = (res[res["measure"] == "within_validation_budget"][[*_KEYS, "value"]]
              .rename(columns={"value": "within_validation_budget"}))
    scalar = res[res["kind"].isin(["accuracy", "fold"])]
    wide = (scalar.assign(penalty=scalar["penalty"].fillna(-1.0))
            .pivot_table(index=[*_KEYS, "variant", "penalty"], columns="measure", values="value").reset_index())
    wide.columns.name = None
    wide["penalty"] = wide["penalty"].where(wide["penalty"] >= 0)
    plain = wide[wide["variant"] == "unmasked"][[*_KEYS, "val_accuracy", "test_accuracy", "macs"]].rename(
        columns={"val_accuracy": "unmasked_val_accuracy", "test_accuracy": "unmasked_test_accuracy",
                 "macs": "unmasked_macs"})
    layers = res[res["kind"] == "layer"]
    per_layer = layers[[*_KEYS, "penalty", "layer", "layer_index", "units", "linear_units", "value"]].rename(
        columns={"value": "linear_fraction"}).reset_index(drop=True)
    per_layer["layer_index"] = per_layer["layer_index"].astype(int)
    n_layers = per_layer.groupby(_KEYS)["layer_index"].transform("max")
    early = (per_layer[per_layer["layer_index"] < n_layers].groupby([*_KEYS, "penalty"], as_index=False)
             [["linear_units", "units"]].sum())
    early["early_linear_fraction"] = early["linear_units"] / early["units"]
    total = per_layer.groupby([*_KEYS, "penalty"], as_index=False)[["linear_units", "units"]].sum()
    total["linear_fraction_total"] = total["linear_units"] / total["units"]
    per_layer = per_layer.merge(choice, on=_KEYS, how="left")
    per_layer["chosen"] = np.isclose(per_layer["penalty"], per_layer["chosen_penalty"])

    masks = wide[wide["variant"] == "masks"].drop(columns="variant")
    masks = masks.merge(plain, on=_KEYS, how="left").merge(choice, on=_KEYS, how="left")
    masks = masks.merge(early[[*_KEYS, "penalty", "early_linear_fraction"]], on=[*_KEYS, "penalty"], how="left")
    masks = masks.merge(total[[*_KEYS, "penalty", "linear_fraction_total"]], on=[*_KEYS, "penalty"], how="left")
    oneshot = wide[wide["variant"] == "pruned_oneshot"][[*_KEYS, "penalty", "test_accuracy", "macs"]].rename(
        columns={"test_accuracy": "pruned_oneshot_test_accuracy", "macs": "pruned_oneshot_macs"})
    masks = masks.merge(oneshot, on=[*_KEYS, "penalty"], how="left")
    masks["chosen"] = np.isclose(masks["penalty"], masks["chosen_penalty"])
    masks["val_loss_points"] = 100 * (masks["unmasked_val_accuracy"] - masks["val_accuracy"])
    masks["test_loss_points"] = 100 * (masks["unmasked_test_accuracy"] - masks["test_accuracy"])
    masks["keeps_nonlinear_units"] = masks["linear_fraction_total"] < 1
    accuracy = masks.sort_values([*_KEYS, "penalty"]).reset_index(drop=True)

    # one row per (arch, seed, variant): the networks the claims compare
    chosen = accuracy[accuracy["chosen"]]
    comp = [chosen.assign(variant="masks")[[*_KEYS, "variant", "penalty", "test_accuracy", "macs", "macs_saved",
                                            "early_linear_fraction", "linear_fraction_total"]]]
    control = accuracy[accuracy["penalty"] == 0].assign(variant="masks_no_penalty")
    comp.append(control[[*_KEYS, "variant", "penalty", "test_accuracy", "macs", "macs_saved",
                         "early_linear_fraction", "linear_fraction_total"]])
    unm = wide[wide["variant"] == "unmasked"][[*_KEYS, "variant", "test_accuracy", "macs"]].assign(macs_saved=0.0)
    comp.append(unm)
    pr = wide[wide["variant"] == "pruned"][[*_KEYS, "variant", "penalty", "test_accuracy", "macs"]]
    comp.append(pr.merge(plain[[*_KEYS, "unmasked_macs"]], on=_KEYS, how="left")
                .assign(macs_saved=lambda t: 1 - t["macs"] / t["unmasked_macs"]).drop(columns="unmasked_macs"))
    comparison = pd.concat(comp, ignore_index=True)
    comparison["test_accuracy_points"] = 100 * comparison["test_accuracy"]
    comparison = comparison.merge(within, on=_KEYS, how="left")
    comparison = comparison.sort_values([*_KEYS, "variant"]).reset_index(drop=True)

    chosen_layers = per_layer[per_layer["chosen"]].reset_index(drop=True)
    return {"accuracy": accuracy, "per_layer": per_layer, "chosen_layers": chosen_layers,
            "comparison": comparison, "decisions": REGISTRY.to_frame()}


FIGURES = [
    FigureSpec(name="linear_share_per_layer", table="chosen_layers", kind="bar", x="layer_index",
               y="linear_fraction", col="arch", title="Share of linear units per hidden layer (chosen penalty)",
               caption="The share of linear units (channels for the CNNs) in each hidden layer at the penalty chosen "
                       "on validation data, as the paper's per-layer figure reports it. Error bars: one standard "
                       "deviation over seeds."),
    FigureSpec(name="linear_share_per_layer_all", table="per_layer", kind="point", x="layer_index",
               y="linear_fraction", hue="penalty", col="arch",
               title="Share of linear units per hidden layer, every penalty",
               caption="Penalty 0: masks free to learn without reward for linearity (the control)."),
    FigureSpec(name="accuracy_vs_penalty", table="accuracy", kind="point", x="penalty", y="val_loss_points",
               col="arch", sharey=False, title="Validation accuracy lost against the penalty",
               caption=f"Points below the unmasked network on the validation split; the chosen penalty is the "
                       f"largest within {MAX_VAL_LOSS_POINTS:g} points."),
    FigureSpec(name="masks_vs_pruning", table="accuracy", kind="scatter", x="test_accuracy",
               y="pruned_oneshot_test_accuracy", hue="penalty", style="arch",
               title="Masks against one-shot magnitude pruning at equal multiply-adds",
               caption="One point per masked run: test accuracy of the folded network (x) and of the unmasked "
                       "network magnitude-pruned to the same multiply-adds without fine-tuning (y)."),
    FigureSpec(name="macs_saved", table="accuracy", kind="bar", x="penalty", y="macs_saved", col="arch",
               title="Multiply-adds saved by folding",
               caption="An all-linear end of a CNN (for an entirely linear CNN: the whole network) is composed into "
                       "one affine map when that is cheaper. Error bars: one standard deviation over seeds."),
]

STUDY = Study(
    name="s5_masks", run_one=run_one, quick=QUICK, full=FULL, seeds={"quick": 3, "full": 5},
    title="S5 — Linear features and pruning with linearity masks", paper=PAPER,
    description=("Three-layer ReLU MLPs (width 64) and 1-D CNNs (16 channels, kernel 5) on mnist1d and 2-D CNNs (16 "
                 "channels) on digits are trained with Adam with a learnable linear/non-linear mask on every unit "
                 "or channel and a mask penalty over a grid (MLP 0/0.3/1/3, CNNs 0/0.1/0.3/1/3; 0 = masks without "
                 "reward, the control), beside the unmasked network; quick: 3000 mnist1d samples, 16/10/10 epochs; "
                 "full: 4000 samples, 32/20/20 epochs. 20% of the training part is held out for validation and "
                 "the penalty is chosen there (the largest within "
                 f"{MAX_VAL_LOSS_POINTS:g} points of the unmasked network's validation accuracy). Each masked "
                 "network is folded (linear units out of the trunk, an all-linear end composed into one affine "
                 "map) and compared with the unmasked network magnitude-pruned (torch.nn.utils.prune, global L1) "
                 "to the same multiply-adds a quarter of the epochs before the end and fine-tuned for the rest. "
                 "Claims, thresholds and "
                 "reasons: the decisions table (study version " + STUDY_VERSION + "). Version history: "
                 + " ".join(f"version {v}: {why}" for v, why in CHANGES.items())),
    claims=REGISTRY.claims, summarize=summarize, figures=FIGURES, version=REGISTRY.study_version)

if __name__ == "__main__":
    import sepmeasure.cli

    sepmeasure.cli.run_study_script(STUDY)
