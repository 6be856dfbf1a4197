"""S6 — nonlinear advantage: linearizing early versus late, path length and core networks
(Mehmeti-Göpel & Disselhoff 2023).

Every ReLU of an MLP (mnist1d: the harder task; two_moons: the easy one) and of a 1-D pre-activation
ResNet (mnist1d) becomes a channel-wise PReLU (:func:`sepmeasure.models.make_linearizable`); a
sparsity prior ``omega * sum_c |1 - alpha_c|^(1/2)`` (:class:`sepmeasure.models.SparsityPrior`)
drives slopes to 1, and channels within 0.01 of 1 are frozen there (linear) after every epoch
(:class:`sepmeasure.models.LinearizationSchedule`). Per seed and prior weight ``omega``:

* **late**: the network trains ``pre_epochs`` without the prior, then ``post_epochs`` with it
  (a fresh Adam state);
* **early**: a fresh network trains ``pre_epochs + post_epochs`` with the prior from the start;
* **reference**: the network trains ``pre_epochs + post_epochs`` without the prior.

Measured on every resulting network: test accuracy, the share of non-linear channels (overall and
per layer: where the core network sits), and the average path length (number of non-linear
channels on an input-to-output path of the channel graph; :func:`sepmeasure.paths.average_path_length`),
unnormalized and normalized, with its whole distribution.

The early-versus-late gap is read at matched non-linear fractions: per seed, accuracy is linearly
interpolated along each timing's curve of (non-linear fraction, accuracy) points (the reference is
the point at fraction 1 of both curves) at five fractions evenly spaced from the largest of the two
curves' smallest fractions up to (not including) 1, and the gap is the mean of late minus early
there, in accuracy points (no overlap below 0.95 -> undefined).

Run alone with ``python studies/s6_nonlinear_advantage.py --quick`` or through
``sepmeasure study s6 --quick``.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import torch

from sepmeasure.claims import Comparison, Threshold
from sepmeasure.data import load_dataset
from sepmeasure.models import (MLP, LinearizationSchedule, ResNet, SparsityPrior, make_linearizable,
                               nonlinear_fraction)
from sepmeasure.paths import average_path_length, path_length_distribution
from sepmeasure.report import FigureSpec
from sepmeasure.study import Study
from sepmeasure.training import evaluate, fit

PAPER = ("Mehmeti-G\u00f6pel, Disselhoff 2023, Nonlinear Advantage: Trained Networks Might Not Be As Complex as "
         "You Think, ICML 2023, arXiv 2211.17180")
MAX_LOSS_LATE = 1.0  # accuracy points
N_TARGETS = 5

_TRAIN = {"lr": 0.01, "batch_size": 64}
QUICK = [
    {**_TRAIN, "arch": "mlp", "dataset": ["mnist1d", "two_moons"], "n_data": 2000, "widths": (32, 32, 32),
     "pre_epochs": 6, "post_epochs": 6, "weights": (0.01, 0.05)},
    {**_TRAIN, "arch": "resnet", "dataset": "mnist1d", "n_data": 1500, "width": 8, "blocks": 2,
     "pre_epochs": 4, "post_epochs": 4, "weights": (0.05, 0.2)},
]
FULL = [
    {**_TRAIN, "arch": "mlp", "dataset": ["mnist1d", "two_moons"], "n_data": 4000, "widths": (64, 64, 64),
     "pre_epochs": 15, "post_epochs": 10, "weights": (0.003, 0.01, 0.03, 0.1)},
    {**_TRAIN, "arch": "resnet", "dataset": "mnist1d", "n_data": 4000, "width": 16, "blocks": 3,
     "pre_epochs": 10, "post_epochs": 8, "weights": (0.01, 0.03, 0.1, 0.3)},
]


def build_model(config: dict, train) -> torch.nn.Module:
    """A fresh linearizable network of the configuration (ReLU slopes 0 to start)."""
    if config["arch"] == "mlp":
        net = MLP(train.n_features, list(config["widths"]), train.n_classes)
    else:
        net = ResNet(1, config["width"], config["blocks"], train.n_classes, dim=1)
    return make_linearizable(net)


def interpolated_gap(early: np.ndarray, late: np.ndarray, n_targets: int = N_TARGETS,
                     min_overlap: float = 0.95) -> tuple[float, float]:
    """Mean accuracy of ``late`` minus ``early`` at matched non-linear fractions.

    Each argument is an array of shape (k, 2) of (non-linear fraction, accuracy) points of one
    curve (duplicates of a fraction are averaged). Both curves are linearly interpolated at
    ``n_targets`` fractions ``linspace(lo, 1, n_targets + 1)[:-1]``, ``lo`` the larger of the two
    smallest fractions; returns ``(gap, lo)``, gap ``nan`` when ``lo > min_overlap``.
    """
    def curve(points):
        pts = pd.DataFrame(np.asarray(points, dtype=float), columns=["f", "a"]).groupby("f")["a"].mean()
        return pts.index.to_numpy(), pts.to_numpy()

    fe, ae = curve(early)
    fl, al = curve(late)
    lo = float(max(fe.min(), fl.min()))
    if lo > min_overlap:
        return math.nan, lo
    targets = np.linspace(lo, 1.0, n_targets + 1)[:-1]
    return float(np.mean(np.interp(targets, fl, al) - np.interp(targets, fe, ae))), lo


def _measure(model, test, device, timing: str, weight: float) -> list[dict]:
    common = {"timing": timing, "weight": weight}
    table = nonlinear_fraction(model)
    rows = [{**common, "kind": "summary", "measure": "test_accuracy",
             "value": evaluate(model, test, device=device)["accuracy"]},
            {**common, "kind": "summary", "measure": "nonlinear_fraction",
             "value": float(table["nonlinear_channels"].sum() / table["channels"].sum())}]
    for i, r in table.iterrows():
        rows.append({**common, "kind": "layer", "layer": r["layer"], "layer_index": i + 1,
                     "relative_depth": (i + 1) / len(table), "measure": "layer_nonlinear_fraction",
                     "value": float(r["nonlinear_fraction"])})
    for normalized in (False, True):
        suffix = "_normalized" if normalized else ""
        apl = average_path_length(model, normalized)
        rows.append({**common, "kind": "summary", "measure": "average_path_length" + suffix, "value": apl.value})
        dist = path_length_distribution(model, normalized)
        for k, p in zip(dist.lengths, dist.probabilities):
            rows.append({**common, "kind": "path_distribution", "normalized": normalized, "length": int(k),
                         "measure": "path_length_probability", "value": float(p)})
    return rows


def run_one(config: dict, device: str | None = None) -> pd.DataFrame:
    # One thread per run: the runs are small, and several may run side by side in worker processes.
    torch.set_num_threads(1)
    device = torch.device(device or "cpu")
    seed = config["seed"]
    size = config["n_data"] if config["dataset"] in ("mnist1d", "two_moons") else None
    train, test = load_dataset(config["dataset"], split="both", seed=seed, size=size)
    opts = {"lr": config["lr"], "optimizer": "adam", "batch_size": config["batch_size"], "seed": seed,
            "device": device, "progress": False}
    pre, post = config["pre_epochs"], config["post_epochs"]

    torch.manual_seed(seed)
    reference = build_model(config, train)
    fit(reference, train, test, epochs=pre, **opts)
    trained = copy.deepcopy(reference)
    fit(reference, train, test, epochs=post, **opts)
    rows = _measure(reference, test, device, "reference", 0.0)
    for weight in config["weights"]:
        late = copy.deepcopy(trained)
        prior = SparsityPrior(float(weight))
        fit(late, train, test, epochs=post, penalty=prior, callbacks=[LinearizationSchedule(prior, 1)], **opts)
        rows += _measure(late, test, device, "late", float(weight))

        torch.manual_seed(seed)
        early = build_model(config, train)
        prior = SparsityPrior(float(weight))
        fit(early, train, test, epochs=pre + post, penalty=prior, callbacks=[LinearizationSchedule(prior, 1)],
            **opts)
        rows += _measure(early, test, device, "early", float(weight))
    out = pd.DataFrame(rows)
    out["setting"] = f"{config['arch']}/{config['dataset']}"
    return out


_KEYS = ["setting", "arch", "dataset", "seed"]


def summarize(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    summary = results[results["kind"] == "summary"]
    runs = (summary.pivot_table(index=[*_KEYS, "timing", "weight"], columns="measure", values="value")
            .reset_index())
    runs.columns.name = None
    ref = (runs[runs["timing"] == "reference"][[*_KEYS, "test_accuracy"]]
           .rename(columns={"test_accuracy": "reference_accuracy"}))
    runs = runs.merge(ref, on=_KEYS, how="left")
    runs["accuracy_loss_points"] = 100 * (runs["reference_accuracy"] - runs["test_accuracy"])
    runs["strongest_prior"] = runs["weight"] == runs.groupby("setting")["weight"].transform("max")
    per_layer = (results[results["kind"] == "layer"][[*_KEYS, "timing", "weight", "layer", "layer_index",
                                                       "relative_depth", "value"]]
                 .rename(columns={"value": "nonlinear_fraction"}).reset_index(drop=True))
    per_layer["layer_index"] = per_layer["layer_index"].astype(int)
    paths = (results[results["kind"] == "path_distribution"][[*_KEYS, "timing", "weight", "normalized", "length",
                                                               "value"]]
             .rename(columns={"value": "probability"}).reset_index(drop=True))
    paths["length"] = paths["length"].astype(int)
    paths["normalized"] = paths["normalized"].astype(bool)
    gaps, linearizable = [], []
    for key, g in runs.groupby(_KEYS):
        base = g[g["timing"] == "reference"][["nonlinear_fraction", "test_accuracy"]].to_numpy()
        early = np.vstack([base, g[g["timing"] == "early"][["nonlinear_fraction", "test_accuracy"]].to_numpy()])
        late = g[g["timing"] == "late"]
        gap, lo = interpolated_gap(early, np.vstack([base, late[["nonlinear_fraction", "test_accuracy"]]
                                                     .to_numpy()]))
        gaps.append({**dict(zip(_KEYS, key)), "gap_points": 100 * gap, "lowest_matched_fraction": lo})
        ok = late[late["accuracy_loss_points"] <= MAX_LOSS_LATE]
        linearizable.append({**dict(zip(_KEYS, key)),
                             "linearized_share": float(1 - ok["nonlinear_fraction"].min()) if len(ok) else 0.0,
                             "runs_within_loss": int(len(ok))})
    return {"runs": runs, "per_layer": per_layer, "paths": paths, "gap": pd.DataFrame(gaps),
            "linearizable": pd.DataFrame(linearizable)}


def _claims() -> list:
    caveat = ("Laptop scale: small MLPs and a two-block 1-D ResNet on mnist1d and two_moons, a few epochs with "
              "Adam and a fresh optimiser state when the prior is switched on late; the paper trains ResNets on "
              "CIFAR and transformers for translation for far longer. The ResNet's late phase (a few epochs) "
              "linearizes few channels, so its early/late comparison covers only non-linear fractions near 1 and "
              "its linearizable share stays small.")
    return [
        Threshold(
            name="early-linearization-hurts", paper=PAPER, table="gap",
            statement=("\u201cwe observe a significant performance gap when reducing nonlinearity in the network "
                       "function early on as opposed to late in training\u201d (abstract). Tested reading: at "
                       "matched shares of non-linear units, networks linearized late are at least 1 point more "
                       "accurate than networks linearized from the start."),
            value="gap_points", op=">=", bound=1.0, partial=0.0, by="setting",
            measured=("test accuracy of late minus early linearization, in points, interpolated at five matched "
                      "non-linear fractions between the larger of the two curves' smallest fractions and 1"),
            caveat=caveat),
        Threshold(
            name="linearize-after-training", paper=PAPER, table="linearizable",
            statement=("\u201cafter training, we are able to linearize a significant number of nonlinear units "
                       "while maintaining a high performance\u201d (abstract). Tested reading: at least half of "
                       f"the units can be linearized late at a loss of at most {MAX_LOSS_LATE:g} point of test "
                       "accuracy."),
            value="linearized_share", op=">=", bound=0.5, partial=0.0, by="setting",
            measured=(f"largest share of linear units among the late-linearized networks whose test accuracy is "
                      f"at most {MAX_LOSS_LATE:g} point below the reference (0 when none)"), caveat=caveat),
        Comparison(
            name="core-depends-on-difficulty", paper=PAPER, table="runs",
            statement=("\u201cthe remaining nonlinear units organize into distinct structures, forming "
                       "core-networks of near constant effective depth and width, which in turn depend on task "
                       "difficulty\u201d (abstract). Tested reading: under the same late sparsity pressure the "
                       "MLP on the harder task (mnist1d) keeps a deeper non-linear core (larger normalized "
                       "average path length) than on the easy task (two_moons)."),
            where={"arch": "mlp", "timing": "late", "strongest_prior": True}, value="average_path_length_normalized",
            a={"dataset": "mnist1d"}, b={"dataset": "two_moons"}, at_least=0.0,
            measured=("normalized average path length of the late-linearized MLP at the largest prior weight: "
                      "mnist1d minus two_moons, paired by seed"), caveat=caveat),
    ]


FIGURES = [
    FigureSpec(name="accuracy_vs_nonlinear_fraction", table="runs", kind="scatter", x="nonlinear_fraction",
               y="test_accuracy", hue="timing", style="timing", col="setting",
               title="Test accuracy against the share of non-linear units",
               caption="One point per network (seed and prior weight); reference: no prior."),
    FigureSpec(name="path_length_vs_weight", table="runs", kind="point", x="weight",
               y="average_path_length_normalized", hue="timing", col="setting", sharey=False,
               title="Normalized average path length", caption="Error bars: one standard deviation over seeds."),
    FigureSpec(name="path_length_unnormalized", table="runs", kind="point", x="weight", y="average_path_length",
               hue="timing", col="setting", sharey=False, title="Unnormalized average path length",
               caption="Error bars: one standard deviation over seeds."),
    FigureSpec(name="path_length_distribution", table="paths", kind="point", x="length", y="probability",
               hue="timing", col="setting", row="normalized", sharey=False,
               title="Distribution of path lengths (all prior weights pooled)",
               caption="Probability of each number of non-linear channels on a path; rows: unnormalized "
                       "(share of all paths) and normalized (backward random walk)."),
    FigureSpec(name="core_network", table="per_layer", kind="point", x="layer_index", y="nonlinear_fraction",
               hue="weight", col="setting", where={"timing": "late"},
               title="Where the non-linear units remain (late linearization)",
               caption="Share of non-linear channels per activation layer; hue: prior weight (0 = reference not "
                       "shown). Error bars: one standard deviation over seeds."),
]

STUDY = Study(
    name="s6_nonlinear_advantage", run_one=run_one, quick=QUICK, full=FULL, seeds={"quick": 3, "full": 5},
    title="S6 — Nonlinear advantage: early vs late linearization, path length, core networks", paper=PAPER,
    description=("ReLU MLPs (three layers; mnist1d and two_moons) and 1-D pre-activation ResNets (mnist1d) get "
                 "channel-wise PReLUs driven to linearity by a sparsity prior with weight omega (MLPs, quick: 0.01 "
                 "and 0.05, full: 0.003 to 0.1; ResNets, whose slopes move more slowly, quick: 0.05 and 0.2, full: "
                 "0.01 to 0.3), switched on from the start (early) or after pre-training (late), "
                 "Adam, lr 0.01 (quick: 6+6 epochs for the MLPs, 4+4 for the ResNet; full: 15+10 and 10+8). "
                 "Measured: test accuracy, the share of non-linear channels per layer, and the average path "
                 "length with its distribution (unnormalized and normalized)."),
    claims=_claims(), summarize=summarize, figures=FIGURES, version="1")

if __name__ == "__main__":
    import sepmeasure.cli

    sepmeasure.cli.run_study_script(STUDY)
