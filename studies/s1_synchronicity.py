"""S1 — synchronicity of hidden-layer separability and training accuracy (Zhang et al. 2023).

MLPs and CNNs are trained on mnist1d and digits. Before training, after a few early optimiser
steps and after every epoch, each hidden layer's outputs on a fixed training subset are
measured with MD-LSM, the hull distance and a linear probe (one class against the rest), and
the training accuracy is recorded. The claims are then checked on these series:

(a) a change that raises a hidden layer's separability raises the training accuracy and vice
    versa: the signs of the per-interval changes agree, and the changes are rank-correlated
    beyond what a random re-pairing of intervals gives (permutation baseline);
(b) layers closer to the output are more separable at the end of training.

Run alone with ``python studies/s1_synchronicity.py --quick`` or through
``sepmeasure study s1 --quick``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from sepmeasure.capture import record
from sepmeasure.claims import CoMovement, MonotoneTrend, sign_agreement
from sepmeasure.data import load_dataset
from sepmeasure.models.standard import CNN, MLP
from sepmeasure.report import FigureSpec
from sepmeasure.separability import add_relative_hull_distance, class_subsample
from sepmeasure.study import Study
from sepmeasure.training import Callback, evaluate, fit

PAPER = ("Zhang, Chen, Li, Liu, Wu, Tao 2023, Understanding Deep Neural Networks via Linear Separability of "
         "Hidden Layers, arXiv 2307.13962")
MEASURES = ("md_lsm", "hull_distance", "linear_probe")
# The hull distance is in the layer's own units; divided by the layer's spread (root-mean-square
# distance of the subset to its centroid) it can be compared across layers and over training.
CLAIM_MEASURES = ("md_lsm", "relative_hull_distance", "linear_probe")
MEASURE_NAMES = {"md_lsm": "MD-LSM", "hull_distance": "hull distance",
                 "relative_hull_distance": "hull distance relative to the layer's spread",
                 "linear_probe": "linear probe accuracy"}

# Each model family is one list of factors; quick and full differ in data, epochs, seeds and points.
# CNN layers are measured on their channel means (what the head sees after global average pooling):
# flattened conv maps have 640-1024 dimensions and separate a few hundred points trivially.
# Quick mode measures one pair of classes (3 against 8, which the small networks do not separate
# from the start, so the measures have room to move) on narrow networks.
_MODELS = [
    {"model": "mlp", "dataset": "mnist1d", "width": 16, "depth": 3, "pool": "flatten"},
    {"model": "cnn", "dataset": "digits", "width": 8, "depth": 3, "pool": "mean"},
]
QUICK = [{**m, "n_data": 3000, "epochs": 8, "early_steps": (1, 2, 4, 8, 16), "per_class": 40, "classes": (3, 8),
          "pairs": "ovo", "lr": 0.01, "batch_size": 64} for m in _MODELS]
FULL = [{**m, "dataset": d, "width": 2 * m["width"], "n_data": 4000, "epochs": 12,
         "early_steps": (1, 2, 4, 8, 16), "per_class": 30, "classes": (0, 1, 2, 3, 4), "pairs": "ovr",
         "lr": 0.01, "batch_size": 64} for m in _MODELS for d in ("mnist1d", "digits")]


# --------------------------------------------------------------------------------------------
# one configuration


def build_model(config: dict, n_features: int, in_shape: tuple, n_classes: int) -> torch.nn.Module:
    widths = [config["width"]] * config["depth"]
    if config["model"] == "mlp":
        return MLP(n_features, widths, n_classes, activation=config.get("activation", "relu"))
    dim = 2 if len(in_shape) == 3 else 1
    channels = in_shape[0] if len(in_shape) in (2, 3) else 1
    return CNN(channels, widths, n_classes, dim=dim, activation=config.get("activation", "relu"))


class HiddenSeparability(Callback):
    """Records every hidden layer's separability on a fixed subset, and the training accuracy."""

    name = "separability"

    def __init__(self, X, y, layers, seed, pool, pairs, *, epochs="all", steps=None):
        super().__init__(epochs=epochs, steps=steps)
        self.X, self.y, self.layers, self.seed, self.pool, self.pairs = X, y, layers, seed, pool, pairs

    def measure(self, state):
        from sepmeasure.separability import layer_separability

        acts = record(state.model, self.X.to(state.device), layers=list(self.layers), pool=self.pool,
                      device=state.device, to=state.device)
        table = layer_separability(acts, self.y.to(state.device), measures=MEASURES, pairs=self.pairs,
                                   max_per_class=None, seed=self.seed, device=state.device)
        table = add_relative_hull_distance(table.drop(columns=["seed"], errors="ignore"), acts)
        table = table.assign(layer_index=table["layer"].map(self.layers), kind="separability")
        acc = evaluate(state.model, state.train, device=state.device)
        extra = pd.DataFrame([{"kind": "train_accuracy", "value": acc["accuracy"], "loss": acc["loss"]}])
        return pd.concat([table, extra], ignore_index=True)


def run_one(config: dict, device: str | None = None) -> pd.DataFrame:
    device = torch.device(device or "cpu")
    seed = config["seed"]
    size = config["n_data"] if config["dataset"] == "mnist1d" else None
    train, test = load_dataset(config["dataset"], split="both", seed=seed, size=size)
    model = build_model(config, train.n_features, train.input_shape, train.n_classes)
    layers = {f"layers.{i}.act": i + 1 for i in range(config["depth"])}
    keep = class_subsample(train.y, config["classes"], config["per_class"], seed)
    X, y = train.X[keep], train.y[keep]
    probe = HiddenSeparability(X, y, layers, seed, config["pool"], config["pairs"], epochs="all",
                               steps=config["early_steps"])
    history = fit(model, train, test, epochs=config["epochs"], lr=config["lr"], optimizer="adam",
                  batch_size=config["batch_size"], seed=seed, callbacks=[probe], device=device, progress=False)
    measured = probe.table.drop(columns=["callback"], errors="ignore")
    hist = history.assign(kind="history", value=history["accuracy"])
    return pd.concat([measured, hist], ignore_index=True)


# --------------------------------------------------------------------------------------------
# tables


_KEYS = ["model", "dataset", "seed"]


def summarize(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    sep = results[results["kind"] == "separability"]
    separability = (sep.groupby([*_KEYS, "step", "epoch", "layer", "layer_index", "measure"], as_index=False)
                    .agg(value=("value", "mean"), n_pairs=("value", "size")))
    separability["layer_index"] = separability["layer_index"].astype(int)
    separability["step"] = separability["step"].astype(int)
    acc = (results[results["kind"] == "train_accuracy"].groupby([*_KEYS, "step", "epoch"], as_index=False)
           .agg(train_accuracy=("value", "mean")))
    synchrony = separability.rename(columns={"value": "separability"}).merge(acc, on=[*_KEYS, "step", "epoch"])
    last = separability.groupby(_KEYS)["step"].transform("max")
    final = separability[separability["step"] == last].reset_index(drop=True)
    rows = []
    for key, g in synchrony.groupby([*_KEYS, "layer_index", "measure"]):
        g = g.groupby("step")[["separability", "train_accuracy"]].mean().sort_index()
        da, db = np.diff(g["separability"].to_numpy()), np.diff(g["train_accuracy"].to_numpy())
        agreement, baseline, n = sign_agreement(da, db, tol=1e-6)
        rho = pd.Series(da).corr(pd.Series(db), method="spearman") if n >= 3 else np.nan
        rows.append({**dict(zip([*_KEYS, "layer_index", "measure"], key)), "agreement": agreement,
                     "baseline": baseline, "spearman_of_changes": rho, "intervals": n})
    agreement = pd.DataFrame(rows)
    agreement_long = agreement.melt(id_vars=[*_KEYS, "layer_index", "measure"],
                                    value_vars=["agreement", "baseline"], var_name="statistic", value_name="share")
    history = results[results["kind"] == "history"][[*_KEYS, "epoch", "split", "accuracy", "loss"]]
    return {"separability": separability, "synchrony": synchrony, "final": final, "agreement": agreement,
            "agreement_long": agreement_long, "accuracy": history.reset_index(drop=True)}


# --------------------------------------------------------------------------------------------
# claims

_SYNC = ("\u201cif the updated weights can enhance the linear separability degree of hidden layer outputs, the "
         "updated network will achieve a better training performance, and vice versa\u201d (abstract)")


def _claims() -> list:
    out = []
    for m in CLAIM_MEASURES:
        where = {"measure": m}
        if m == "md_lsm":
            out.append(CoMovement(
                name="sync-sign-md_lsm", paper=PAPER, statement=_SYNC, table="synchrony", where=where,
                a="separability", b="train_accuracy", time="step", statistic="sign_agreement", min_effect=0.75,
                partial=0.5, tol=1e-6, within=("model", "dataset"), by="layer_index",
                measured="share of measurement intervals (early steps, then epochs) in which a hidden layer's "
                         "MD-LSM (mean over the measured class pairs) and the training accuracy change in "
                         "the same direction; the permutation baseline is in the details",
                caveat="MD-LSM saturates at 1 once a layer separates the subset; intervals without a change "
                       "are dropped, so late training adds few intervals."))
        out.append(CoMovement(
            name=f"sync-rank-{m}", paper=PAPER, statement=_SYNC, table="synchrony", where=where,
            a="separability", b="train_accuracy", time="step", statistic="spearman", min_effect=0.1,
            partial=0.0, tol=1e-6, within=("model", "dataset"), by="layer_index",
            measured=f"Spearman correlation between the per-interval changes of a hidden layer's "
                     f"{MEASURE_NAMES[m]} and of the training accuracy (0 = what a random re-pairing of the "
                     f"intervals gives)",
            caveat="A short run has few intervals per layer, so the interval over seeds is wide; laptop-scale "
                   "models and data, not the paper's."))
    for m in CLAIM_MEASURES:
        out.append(MonotoneTrend(
            name=f"deeper-more-separable-{m}", paper=PAPER, table="final", where={"measure": m},
            statement="Tested reading of the paper's layer-wise results: hidden layers closer to the output are "
                      "more linearly separable.",
            x="layer_index", y="value", direction="increasing", min_effect=0.5, within=("model", "dataset"),
            measured=f"Spearman correlation between hidden-layer index and its {MEASURE_NAMES[m]} after the last "
                     f"epoch (mean over the measured class pairs)",
            caveat="With three hidden layers, the correlation takes few values; saturated measures (all layers "
                   "separable) give no correlation and are left out."))
    return out


FIGURES = [
    FigureSpec(name="separability_vs_step", table="separability", kind="line", x="step", y="value",
               hue="layer_index", col="measure", row="model", sharey=False,
               title="Hidden-layer separability during training",
               caption="Mean over the measured class pairs; band: one standard deviation over seeds."),
    FigureSpec(name="accuracy_vs_epoch", table="accuracy", kind="line", x="epoch", y="accuracy", hue="split",
               col="model", title="Accuracy during training", caption="Band: one standard deviation over seeds."),
    FigureSpec(name="agreement_per_layer", table="agreement_long", kind="bar", x="layer_index", y="share",
               hue="statistic", col="measure", title="Sign agreement per layer against its permutation baseline",
               caption="Share of intervals in which separability and training accuracy change in the same "
                       "direction, and the share expected from a random re-pairing of the intervals."),
    FigureSpec(name="final_per_layer", table="final", kind="point", x="layer_index", y="value", hue="model",
               col="measure", sharey=False, title="Separability per hidden layer after training"),
]

STUDY = Study(
    name="s1_synchronicity", run_one=run_one, quick=QUICK, full=FULL, seeds={"quick": 3, "full": 5},
    title="S1 — Synchronicity of hidden-layer separability and training accuracy", paper=PAPER,
    description=("MLPs (mnist1d) and CNNs (digits; in full mode both models on both datasets) are trained with "
                 "Adam. Before training, after the first optimiser steps and after every epoch, each hidden "
                 "layer's outputs on a fixed training subset are measured with MD-LSM, the hull distance and "
                 "a held-out linear probe, together with the training accuracy. "
                 "MLP layers are measured as they are; CNN layers by their channel means (the features global "
                 "average pooling hands on), because flattened feature maps of 640-1024 dimensions separate a "
                 "few hundred points trivially. Quick mode measures one pair of classes (3 against 8) with 40 "
                 "points each over 8 epochs on narrow networks (MLP width 16, CNN 8 channels); full mode five "
                 "classes (0-4), each against the other four, with 30 points each over 12 epochs, twice the "
                 "width, both models on both datasets."),
    claims=_claims(), summarize=summarize, figures=FIGURES, version="2")

if __name__ == "__main__":
    import sepmeasure.cli

    sepmeasure.cli.run_study_script(STUDY)
