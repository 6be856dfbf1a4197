"""S5 — linear features and pruning with learnable linearity masks (He et al. 2022).

MLPs on mnist1d and CNNs on digits get a learnable mask on every hidden unit (channel for the
CNN) that decides whether the activation is applied (``h = m * relu(z) + (1 - m) * z``,
``m in {0, 1}``, trained with a straight-through estimator; :func:`sepmeasure.models.apply_masks`).
A penalty rewarding linear units (:class:`sepmeasure.models.MaskPenalty`) is swept over a range of
weights; weight 0 is the plain, unmasked network of the same size and training, the reference for
every accuracy loss. After training each masked network is folded
(:func:`sepmeasure.models.fold`): its linear units leave the non-linear trunk, and the parameters
and multiply-adds of the folded network are counted. Measured per run: test accuracy of the masked
and the folded network (they must agree: folding is exact), the largest output difference between
them, the share of linear units per hidden layer, and the parameters and multiply-adds saved.

Operationalisation of the abstract's two statements (both are decided per architecture and seed):

* "reach the linearly separable space earlier ... can be detached partly": take the largest
  penalty whose test accuracy is at most 2 points below the unmasked network (the *chosen*
  penalty; none qualifies -> share 0) and measure the share of linear units in the hidden layers
  before the last one; the claim needs a share > 0.1 there (> 0: partly).
* "a readily feasible pruning strategy which barely affects the performance": at a fixed
  reference penalty (the third of the four levels) the accuracy loss is at most 1 point
  (2: partly) while folding saves at least 10% of the multiply-adds (> 0: partly).

Run alone with ``python studies/s5_masks.py --quick`` or through ``sepmeasure study s5 --quick``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from sepmeasure.claims import ClosedForm, Threshold
from sepmeasure.data import load_dataset
from sepmeasure.models import CNN, MLP, MaskPenalty, apply_masks, fold, linear_fraction
from sepmeasure.report import FigureSpec
from sepmeasure.study import Study
from sepmeasure.training import evaluate, fit

PAPER = ("He, Nie, Yao, Yin, Gong, Li 2022, Exploring Linear Feature Disentanglement for Neural Networks, "
         "arXiv 2203.11700")

# Penalty levels 0..3 per architecture; level 0 is the unmasked reference. The CNN's channels get a
# larger task gradient on their mask logits than the MLP's units, hence its larger weights.
PENALTIES = {"mlp": (0.0, 0.3, 1.0, 3.0), "cnn": (0.0, 3.0, 10.0, 30.0)}
REFERENCE_LEVEL = 2
MAX_LOSS_FOR_CHOICE = 2.0  # accuracy points

_MLP_QUICK = {"arch": "mlp", "dataset": "mnist1d", "n_data": 3000, "widths": (64, 64, 64), "epochs": 12,
              "lr": 0.003, "batch_size": 64}
_CNN_QUICK = {"arch": "cnn", "dataset": "digits", "n_data": 0, "widths": (16, 16, 16), "epochs": 8,
              "lr": 0.01, "batch_size": 64}
QUICK = [{**_MLP_QUICK, "penalty": list(PENALTIES["mlp"])}, {**_CNN_QUICK, "penalty": list(PENALTIES["cnn"])}]
FULL = [{**_MLP_QUICK, "n_data": 4000, "epochs": 30, "penalty": list(PENALTIES["mlp"])},
        {**_CNN_QUICK, "epochs": 25, "penalty": list(PENALTIES["cnn"])}]


def build_model(config: dict, train) -> torch.nn.Module:
    """The plain network of a configuration (MLP on flat inputs, 2-D CNN on images)."""
    widths = list(config["widths"])
    if config["arch"] == "mlp":
        return MLP(train.n_features, widths, train.n_classes)
    return CNN(1, widths, train.n_classes, dim=2)


def run_one(config: dict, device: str | None = None) -> pd.DataFrame:
    # One thread per run: the runs are small, and several may run side by side in worker processes.
    torch.set_num_threads(1)
    device = torch.device(device or "cpu")
    seed = config["seed"]
    size = config["n_data"] or None
    train, test = load_dataset(config["dataset"], split="both", seed=seed, size=size)
    penalty = float(config["penalty"])
    level = PENALTIES[config["arch"]].index(penalty) if penalty in PENALTIES[config["arch"]] else -1
    model = build_model(config, train)
    masked = penalty > 0
    if masked:
        model = apply_masks(model)
    fit(model, train, test, epochs=config["epochs"], lr=config["lr"], optimizer="adam",
        batch_size=config["batch_size"], seed=seed, device=device, progress=False,
        penalty=MaskPenalty(penalty) if masked else None)
    accuracy = evaluate(model, test, device=device)["accuracy"]
    common = {"penalty_level": level, "masked": masked}
    rows = [{**common, "kind": "accuracy", "measure": "test_accuracy", "value": accuracy}]
    if not masked:
        return pd.DataFrame(rows)
    shares = linear_fraction(model)
    for i, r in shares.iterrows():
        rows.append({**common, "kind": "layer", "layer": r["layer"], "layer_index": i + 1,
                     "measure": "linear_fraction", "value": float(r["linear_fraction"]),
                     "units": int(r["units"]), "linear_units": int(r["linear_units"])})
    input_shape = tuple(train.input_shape)
    folded = fold(model, input_shape=input_shape)
    folded_accuracy = evaluate(folded, test, device=device)["accuracy"]
    model.eval()
    folded.eval()
    with torch.no_grad():
        X = test.X.to(device)
        max_diff = float((model(X) - folded(X)).abs().max())
    rep = folded.report
    rows += [
        {**common, "kind": "fold", "measure": "folded_accuracy", "value": folded_accuracy},
        {**common, "kind": "fold", "measure": "max_output_difference", "value": max_diff},
        {**common, "kind": "fold", "measure": "parameters_saved",
         "value": 1 - rep.parameters_after / rep.parameters_before},
        {**common, "kind": "fold", "measure": "macs_saved", "value": 1 - rep.macs_after / rep.macs_before},
        {**common, "kind": "fold", "measure": "linear_units_total", "value": rep.linear_units / rep.units},
    ]
    return pd.DataFrame(rows)


_KEYS = ["arch", "dataset", "seed"]


def summarize(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    acc = results[results["measure"] == "test_accuracy"][[*_KEYS, "penalty", "penalty_level", "value"]]
    base = (acc[acc["penalty"] == 0].groupby(_KEYS, as_index=False)["value"].mean()
            .rename(columns={"value": "unmasked_accuracy"}))
    wide = (results[results["kind"].isin(["accuracy", "fold"])]
            .pivot_table(index=[*_KEYS, "penalty", "penalty_level"], columns="measure", values="value")
            .reset_index())
    wide.columns.name = None
    wide = wide.merge(base, on=_KEYS, how="left")
    wide["accuracy_loss_points"] = 100 * (wide["unmasked_accuracy"] - wide["test_accuracy"])
    wide["masked"] = wide["penalty"] > 0
    layers = results[results["kind"] == "layer"]
    per_layer = layers[[*_KEYS, "penalty", "penalty_level", "layer", "layer_index", "units", "linear_units",
                        "value"]].rename(columns={"value": "linear_fraction"}).reset_index(drop=True)
    per_layer["layer_index"] = per_layer["layer_index"].astype(int)
    n_layers = per_layer.groupby(_KEYS)["layer_index"].transform("max")
    early = (per_layer[per_layer["layer_index"] < n_layers].groupby([*_KEYS, "penalty"], as_index=False)
             ["linear_fraction"].mean().rename(columns={"linear_fraction": "early_linear_fraction"}))
    wide = wide.merge(early, on=[*_KEYS, "penalty"], how="left")
    tradeoff = []
    for key, g in wide.groupby(_KEYS):
        g = g.sort_values("penalty")
        masked = g[g["penalty"] > 0]
        ok = masked[masked["accuracy_loss_points"] <= MAX_LOSS_FOR_CHOICE]
        chosen = ok.iloc[-1] if len(ok) else None
        ref = masked[masked["penalty_level"] == REFERENCE_LEVEL]
        row = dict(zip(_KEYS, key))
        row.update({
            "chosen_penalty": float(chosen["penalty"]) if chosen is not None else np.nan,
            "chosen_early_linear_fraction": float(chosen["early_linear_fraction"]) if chosen is not None else 0.0,
            "chosen_accuracy_loss_points": float(chosen["accuracy_loss_points"]) if chosen is not None else np.nan,
            "chosen_macs_saved": float(chosen["macs_saved"]) if chosen is not None else 0.0,
            "reference_penalty": float(ref["penalty"].iloc[0]) if len(ref) else np.nan,
            "reference_accuracy_loss_points": float(ref["accuracy_loss_points"].iloc[0]) if len(ref) else np.nan,
            "reference_macs_saved": float(ref["macs_saved"].iloc[0]) if len(ref) else np.nan,
            "reference_parameters_saved": float(ref["parameters_saved"].iloc[0]) if len(ref) else np.nan,
        })
        tradeoff.append(row)
    return {"accuracy": wide, "per_layer": per_layer, "tradeoff": pd.DataFrame(tradeoff)}


def _claims() -> list:
    caveat = ("Laptop scale: three-layer MLPs on mnist1d and small CNNs on digits, few epochs, Adam; the paper "
              "uses larger networks and image datasets and trains the masks for longer. The CNN's channel masks "
              "(straight-through estimator, a few epochs at learning rate 0.01) flip channels between linear and "
              "non-linear until late in training; this short schedule, rather than the masks as such, is the "
              "likely reason for the CNN's large and seed-dependent accuracy loss (not checked here).")
    return [
        Threshold(
            name="early-linear-features", paper=PAPER, table="tradeoff",
            statement=("\u201csome features reach the linearly separable space earlier than the others and can be "
                       "detached partly from the NNs\u201d (abstract). Tested reading: at the largest penalty that "
                       f"costs at most {MAX_LOSS_FOR_CHOICE:g} points of test accuracy, more than 10% of the units "
                       "of the hidden layers before the last one are linear."),
            value="chosen_early_linear_fraction", op=">=", bound=0.1, partial=0.0, by="arch",
            measured=("share of linear units in the hidden layers before the last, at the largest mask penalty "
                      f"whose accuracy loss against the unmasked network is <= {MAX_LOSS_FOR_CHOICE:g} points "
                      "(0 when none qualifies)"), caveat=caveat),
        Threshold(
            name="pruning-barely-affects-accuracy", paper=PAPER, table="tradeoff",
            statement=("\u201ca readily feasible pruning strategy which barely affects the performance of the "
                       "original model\u201d (abstract). Tested reading: at the reference penalty the folded "
                       "network is at most 1 point less accurate than the unmasked one."),
            value="reference_accuracy_loss_points", op="<=", bound=1.0, partial=2.0, by="arch",
            measured="test accuracy of the unmasked network minus that of the masked (= folded) one, in points, "
                     "at the reference penalty (level 2 of 0-3)", caveat=caveat),
        Threshold(
            name="pruning-saves-compute", paper=PAPER, table="tradeoff",
            statement=("\u201ca readily feasible pruning strategy\u201d (abstract). Tested reading: at the "
                       "reference penalty folding the linear units saves at least 10% of the multiply-adds."),
            value="reference_macs_saved", op=">=", bound=0.1, partial=0.0, by="arch",
            measured="1 - multiply-adds of the folded network / those of the masked network, at the reference "
                     "penalty",
            caveat=caveat + (" The CNN is folded into a non-linear trunk plus an exact linear stream (composing "
                             "zero-padded convolutions would change the borders, see sepmeasure.models.fold), so "
                             "its linear channels save activations but no multiply-adds by construction.")),
        ClosedForm(
            name="folding-is-exact", paper=PAPER, table="accuracy",
            statement=("\u201ccan be detached partly from the NNs\u201d (abstract). Tested reading: detaching "
                       "(folding) the linear units leaves the test accuracy exactly unchanged."),
            where=lambda t: t["penalty"] > 0, value="folded_accuracy", reference="test_accuracy",
            tolerance=1e-9, relative=False, by="arch",
            measured="|test accuracy of the folded network - that of the masked network| (every masked run)",
            caveat="A difference would mean float32 round-off flipped a prediction near a decision boundary."),
    ]


FIGURES = [
    FigureSpec(name="accuracy_vs_penalty", table="accuracy", kind="point", x="penalty_level", y="test_accuracy",
               col="arch", sharey=False, title="Test accuracy against the mask penalty",
               caption="Level 0: unmasked network; levels 1-3: mask penalties (MLP 0.3/1/3, CNN 3/10/30). "
                       "Error bars: one standard deviation over seeds."),
    FigureSpec(name="linear_share_per_layer", table="per_layer", kind="point", x="layer_index",
               y="linear_fraction", hue="penalty_level", col="arch",
               title="Share of linear units per hidden layer",
               caption="Hue: penalty level (1-3). Error bars: one standard deviation over seeds."),
    FigureSpec(name="saved_vs_lost", table="accuracy", kind="scatter", x="accuracy_loss_points", y="macs_saved",
               hue="penalty_level", style="arch", title="Multiply-adds saved by folding against accuracy lost",
               caption="One point per masked run; accuracy lost in points against the unmasked network of the "
                       "same seed."),
    FigureSpec(name="parameters_saved", table="accuracy", kind="bar", x="penalty_level", y="parameters_saved",
               col="arch", where={"masked": True},
               title="Parameters saved by folding", caption="Error bars: one standard deviation over seeds."),
]

STUDY = Study(
    name="s5_masks", run_one=run_one, quick=QUICK, full=FULL, seeds={"quick": 3, "full": 5},
    title="S5 — Linear features and pruning with linearity masks", paper=PAPER,
    description=("Three-layer ReLU MLPs (width 64) on mnist1d and three-layer 2-D ReLU CNNs (16 channels) on "
                 "digits are trained with Adam with a learnable linear/non-linear mask on every unit or channel "
                 "and a mask penalty over four levels (level 0 = the unmasked network; MLP 0.3/1/3, CNN 3/10/30; "
                 "quick: 3000 mnist1d samples, 12/8 epochs; full: 4000 samples, 30/25 epochs). Measured: test "
                 "accuracy, the share of linear units per layer, and after folding the linear units out of the "
                 "non-linear trunk the parameters and multiply-adds saved and the folded network's accuracy "
                 "(which must equal the masked network's). The penalty used for the detachment claim is chosen "
                 f"per seed as the largest one costing at most {MAX_LOSS_FOR_CHOICE:g} accuracy points; the "
                 "pruning claims use the fixed reference level 2."),
    claims=_claims(), summarize=summarize, figures=FIGURES, version="1")

if __name__ == "__main__":
    import sepmeasure.cli

    sepmeasure.cli.run_study_script(STUDY)
