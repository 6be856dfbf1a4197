"""S2 — activation function, width and depth against hidden-layer separability (Zhang et al. 2023).

MLPs on mnist1d over a grid of activation functions (relu, leaky_relu, gelu, tanh, sigmoid,
identity), widths and depths. After training, each hidden layer's outputs on a fixed training
subset are measured with MD-LSM, the hull distance and a linear probe (one class against the
rest), together with train and test accuracy. The paper's statements on each factor are tested
as claims.

Run alone with ``python studies/s2_architecture.py --quick`` or through
``sepmeasure study s2 --quick``.
"""
from __future__ import annotations

import pandas as pd
import torch

from sepmeasure.capture import record
from sepmeasure.claims import Comparison, MonotoneTrend
from sepmeasure.data import load_dataset
from sepmeasure.models.standard import MLP
from sepmeasure.report import FigureSpec
from sepmeasure.separability import add_relative_hull_distance, class_subsample
from sepmeasure.study import Study
from sepmeasure.training import evaluate, fit

PAPER = ("Zhang, Chen, Li, Liu, Wu, Tao 2023, Understanding Deep Neural Networks via Linear Separability of "
         "Hidden Layers, arXiv 2307.13962")
ABSTRACT = ("\u201cwe study the effect of activation function and network size (including width and depth) on "
            "the linear separability of hidden layers\u201d (abstract). Tested reading: ")
ACTIVATIONS = ["relu", "leaky_relu", "gelu", "tanh", "sigmoid", "identity"]
NONLINEAR = [a for a in ACTIVATIONS if a != "identity"]
MEASURES = ("md_lsm", "hull_distance", "linear_probe")

# Each measured class against the rest of the measured classes: a single pair of classes is separated
# by every trained network here, so the measures would saturate.
_COMMON_QUICK = {"dataset": "mnist1d", "n_data": 3000, "epochs": 15, "per_class": 30, "classes": (0, 1, 2, 3, 4),
                 "pairs": "ovr", "lr": 0.003, "batch_size": 64}
_COMMON_FULL = {"dataset": "mnist1d", "n_data": 4000, "epochs": 25, "per_class": 30, "classes": tuple(range(10)),
                "pairs": "ovr", "lr": 0.003, "batch_size": 64}
# Quick: every activation at one size, and width and depth varied around it with relu.
QUICK = [
    {**_COMMON_QUICK, "activation": ACTIVATIONS, "width": 32, "depth": 2},
    {**_COMMON_QUICK, "activation": "relu", "width": [8, 128], "depth": 2},
    {**_COMMON_QUICK, "activation": "relu", "width": 32, "depth": [1, 4]},
]
FULL = [{**_COMMON_FULL, "activation": ACTIVATIONS, "width": [8, 32, 128], "depth": [1, 2, 4]}]


def run_one(config: dict, device: str | None = None) -> pd.DataFrame:
    from sepmeasure.separability import layer_separability

    device = torch.device(device or "cpu")
    seed = config["seed"]
    train, test = load_dataset(config["dataset"], split="both", seed=seed, size=config["n_data"])
    model = MLP(train.n_features, [config["width"]] * config["depth"], train.n_classes,
                activation=config["activation"])
    fit(model, train, test, epochs=config["epochs"], lr=config["lr"], optimizer="adam",
        batch_size=config["batch_size"], seed=seed, device=device, progress=False)
    layers = {f"layers.{i}.act": i + 1 for i in range(config["depth"])}
    keep = class_subsample(train.y, config["classes"], config["per_class"], seed)
    X, y = train.X[keep], train.y[keep]
    acts = record(model, X.to(device), layers=list(layers), pool="flatten", device=device, to=device)
    table = layer_separability(acts, y.to(device), measures=MEASURES, pairs=config["pairs"], max_per_class=None,
                               seed=seed, device=device)
    table = add_relative_hull_distance(table.drop(columns=["seed"], errors="ignore"), acts)
    table = table.assign(layer_index=table["layer"].map(layers), relative_depth=table["layer"].map(layers)
                         / config["depth"], kind="separability")
    accuracy = [{"kind": "accuracy", "split": split, "value": evaluate(model, data, device=device)["accuracy"]}
                for split, data in (("train", train), ("test", test))]
    return pd.concat([table, pd.DataFrame(accuracy)], ignore_index=True)


_FACTORS = ["activation", "width", "depth", "seed"]


def summarize(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    sep = results[results["kind"] == "separability"]
    per_layer = (sep.groupby([*_FACTORS, "layer", "layer_index", "relative_depth", "measure"], as_index=False)
                 .agg(value=("value", "mean")))
    per_layer["layer_index"] = per_layer["layer_index"].astype(int)
    last = per_layer[per_layer["layer_index"] == per_layer["depth"]].reset_index(drop=True)
    acc = (results[results["kind"] == "accuracy"].pivot_table(index=_FACTORS, columns="split", values="value")
           .add_suffix("_accuracy").reset_index())
    acc.columns.name = None
    last = last.merge(acc, on=_FACTORS, how="left")
    return {"per_layer": per_layer, "last_layer": last, "accuracy": acc}


CLAIM_MEASURES = ["md_lsm", "relative_hull_distance", "linear_probe"]


def _claims() -> list:
    measures = {"measure": CLAIM_MEASURES}
    base_width = {"activation": "relu", "depth": 2}
    base_depth = {"activation": "relu", "width": 32}
    caveat = ("Laptop scale: a small MLP on mnist1d, few epochs, the measures on a few hundred training points of "
              "five classes; the paper's networks and data are larger.")
    per_measure = ("; decided for MD-LSM, the hull distance relative to the layer's spread and the linear probe "
                   "separately")
    return [
        Comparison(
            name="nonlinearity-needed", paper=PAPER, table="last_layer", by="measure",
            statement=ABSTRACT + "a non-linear activation makes the last hidden layer more separable than a "
                                 "linear network (identity activation) of the same size does.",
            where={**measures, "width": 32, "depth": 2}, value="value", a={"activation": NONLINEAR},
            b={"activation": "identity"}, at_least=0.0,
            measured="separability of the last hidden layer (mean over the measured class pairs): mean over the "
                     "non-linear activations minus identity, width 32, depth 2, paired by seed" + per_measure,
            caveat=caveat),
        MonotoneTrend(
            name="wider-more-separable", paper=PAPER, table="last_layer", by="measure",
            statement=ABSTRACT + "wider hidden layers are more linearly separable.",
            where={**measures, **base_width}, x="width", y="value", min_effect=0.5,
            measured="Spearman correlation between width and the last hidden layer's separability (relu, depth 2)"
                     + per_measure, caveat=caveat),
        MonotoneTrend(
            name="deeper-more-separable", paper=PAPER, table="last_layer", by="measure",
            statement=ABSTRACT + "deeper networks make their last hidden layer more linearly separable.",
            where={**measures, **base_depth}, x="depth", y="value", min_effect=0.5,
            measured="Spearman correlation between depth and the last hidden layer's separability (relu, width 32)"
                     + per_measure, caveat=caveat),
    ]


FIGURES = [
    FigureSpec(name="activation_heatmap", table="last_layer", kind="heatmap", x="width", y="activation",
               value="value", col="measure", where={"depth": 2},
               title="Last hidden layer separability by activation and width (depth 2)",
               caption="Mean over seeds and the measured class pairs; one colour scale per measure; empty cells "
                       "were not in the grid."),
    FigureSpec(name="width_depth_heatmap", table="last_layer", kind="heatmap", x="width", y="depth", value="value",
               where={"measure": "md_lsm", "activation": "relu"}, title="MD-LSM of the last hidden layer (relu)",
               caption="Mean over seeds; empty cells were not in the grid."),
    FigureSpec(name="per_layer_curves", table="per_layer", kind="point", x="layer_index", y="value",
               hue="activation", col="measure", sharey=False, where={"width": 32},
               title="Separability per hidden layer (width 32)", caption="Band: one standard deviation over seeds."),
    FigureSpec(name="test_accuracy", table="accuracy", kind="bar", x="activation", y="test_accuracy",
               where={"width": 32, "depth": 2}, title="Test accuracy (width 32, depth 2)"),
]

STUDY = Study(
    name="s2_architecture", run_one=run_one, quick=QUICK, full=FULL, seeds={"quick": 3, "full": 4},
    title="S2 — Activation function, width and depth", paper=PAPER,
    description=("MLPs are trained on mnist1d with Adam over a grid of activation functions, widths and depths "
                 "(quick: every activation at width 32 and depth 2, widths 8/32/128 and depths 1/2/4 with relu, "
                 "3000 samples and 15 epochs, classes 0-4 each against the other four with 30 points each; full: "
                 "the whole product, 4000 samples and 25 epochs, all 10 classes with 30 points each, 4 seeds). "
                 "After training each hidden layer's outputs on a fixed training subset are measured with "
                 "MD-LSM, the hull distance (also relative to the layer's spread) and a held-out linear probe."),
    claims=_claims(), summarize=summarize, figures=FIGURES, version="2")

if __name__ == "__main__":
    import sepmeasure.cli

    sepmeasure.cli.run_study_script(STUDY)
