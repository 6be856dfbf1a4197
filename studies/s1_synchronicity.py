"""S1 — synchronicity of hidden-layer separability and training accuracy (Zhang et al. 2023).

MLPs and CNNs are trained on mnist1d and digits, each twice: on the true labels and, as the
control, on shuffled labels (the same network, data and schedule). Before training, after a few
early optimiser steps and after every epoch, each hidden layer's outputs on a fixed training
subset of the measured classes are measured **held out** (30% of every class set aside; the
MD-LSM direction fitted on the rest and read as a test AUC, a logistic probe read as balanced
accuracy) together with the in-sample MD-LSM and hull distance, and the training accuracy on
the training samples of the measured classes (the network's choice between them). The claims are then checked on these series:

(a) a change that raises a hidden layer's separability raises the training accuracy and vice
    versa: the share of intervals in which both move the same way, in excess of its permutation
    baseline, and the rank correlation of the changes with the step index partialled out (both
    shrink with time, which alone would correlate them), each beyond the shuffled-label run;
(b) layers closer to the output are more separable at the end of training than at initialisation.

Run alone with ``python studies/s1_synchronicity.py --quick`` or through
``sepmeasure study s1 --quick``.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from scipy import stats

from sepmeasure.capture import record
from sepmeasure.claims import ClaimRegistry, CoMovement, Control, MonotoneTrend, Threshold, sign_agreement
from sepmeasure.data import LabeledData, load_dataset
from sepmeasure.models.standard import CNN, MLP
from sepmeasure.report import FigureSpec
from sepmeasure.separability import class_subsample
from sepmeasure.separability.layer_rows import HELD_OUT_LAYER_MEASURES, held_out_layer_rows
from sepmeasure.study import Study
from sepmeasure.training import Callback, evaluate, fit

PAPER = ("Zhang, Chen, Li, Liu, Wu, Tao 2023, Understanding Deep Neural Networks via Linear Separability of "
         "Hidden Layers, arXiv 2307.13962")
HELD_OUT = 0.3
# Measures the claims read: MD-LSM held out (test AUC of the MD-LSM direction fitted on the other 70%), the
# hull distance relative to the layer's spread (in sample: its held-out reading exists only where the training
# hulls are separable, which at these sizes they mostly are not) and the logistic probe's held-out balanced
# accuracy. The in-sample MD-LSM is kept in the tables to show where it starts and saturates.
CLAIM_MEASURES = ("md_lsm_held_out", "relative_hull_distance", "linear_probe")
MEASURE_NAMES = HELD_OUT_LAYER_MEASURES   # what each measure of held_out_layer_rows is

# Hyper-parameters (Adam, lr 0.01, batch 64, the epochs) are fixed in advance, as in version 2; none is tuned,
# and the test split only gives the reported test accuracy. One pair of classes (3 against 8) is measured,
# with 100 points per class in quick mode and 200 (mnist1d) / 120 (digits has about 140 training points per
# class) in full mode, so that the in-sample MD-LSM does not start at 1; the training accuracy is restricted
# to these two classes: on every training sample labelled 3 or 8 (by the labels the network is fitted to), the
# share for which the network's output for the right one of the two is the larger (its choice between them).
_MODELS = [
    {"model": "mlp", "dataset": "mnist1d", "width": 16, "depth": 3, "pool": "flatten"},
    {"model": "cnn", "dataset": "digits", "width": 8, "depth": 3, "pool": "mean"},
]
_COMMON = {"classes": (3, 8), "pairs": "ovo", "lr": 0.01, "batch_size": 64, "early_steps": (1, 2, 4, 8, 16),
           "labels": ["true", "shuffled"]}
QUICK = [{**m, **_COMMON, "n_data": 3000, "epochs": 5, "per_class": 100} for m in _MODELS]
FULL = [{**m, **_COMMON, "dataset": d, "width": 2 * m["width"], "n_data": 3000, "epochs": 8,
         "per_class": 200 if d == "mnist1d" else 120} for m in _MODELS for d in ("mnist1d", "digits")]


# --------------------------------------------------------------------------------------------
# statistics


def partial_spearman(a, b, t) -> float:
    """Spearman correlation of ``a`` and ``b`` with ``t`` partialled out.

    The Pearson correlation of the ranks (average ranks for ties) with the rank of ``t``
    removed: ``(r_ab - r_at r_bt) / sqrt((1 - r_at^2)(1 - r_bt^2))``. Non-finite entries are
    dropped; NaN with fewer than 4 points, a constant variable, or ``|r_at|`` or ``|r_bt|`` = 1.
    """
    a, b, t = (np.asarray(v, dtype=float).ravel() for v in (a, b, t))
    if not a.shape == b.shape == t.shape:
        raise ValueError(f"a, b, t: expected arrays of one length, got shapes {a.shape}, {b.shape}, {t.shape}")
    ok = np.isfinite(a) & np.isfinite(b) & np.isfinite(t)
    a, b, t = a[ok], b[ok], t[ok]
    if a.size < 4 or min(np.ptp(a), np.ptp(b), np.ptp(t)) == 0:
        return math.nan
    ra, rb, rt = (stats.rankdata(v) for v in (a, b, t))
    r = np.corrcoef(np.stack([ra, rb, rt]))
    r_ab, r_at, r_bt = r[0, 1], r[0, 2], r[1, 2]
    den = (1 - r_at ** 2) * (1 - r_bt ** 2)
    if den <= 1e-12:
        return math.nan
    return float(np.clip((r_ab - r_at * r_bt) / math.sqrt(den), -1.0, 1.0))


def series_statistics(sep: np.ndarray, acc: np.ndarray, tol: float = 1e-6) -> dict[str, float]:
    """Co-movement statistics of two series on the same time points (in time order)."""
    da, db = np.diff(np.asarray(sep, dtype=float)), np.diff(np.asarray(acc, dtype=float))
    agreement, baseline, n = sign_agreement(da, db, tol=tol)
    ok = np.isfinite(da) & np.isfinite(db)
    rho = (float(stats.spearmanr(da[ok], db[ok]).statistic)
           if ok.sum() >= 3 and np.ptp(da[ok]) > 0 and np.ptp(db[ok]) > 0 else math.nan)
    return {"agreement": agreement, "baseline": baseline, "excess_agreement": agreement - baseline,
            "spearman_of_changes": rho, "partial_spearman": partial_spearman(da, db, np.arange(da.size)),
            "intervals": float(n), "changes": float(da.size)}


# --------------------------------------------------------------------------------------------
# one configuration


def build_model(config: dict, n_features: int, in_shape: tuple, n_classes: int) -> torch.nn.Module:
    widths = [config["width"]] * config["depth"]
    if config["model"] == "mlp":
        return MLP(n_features, widths, n_classes, activation=config.get("activation", "relu"))
    dim = 2 if len(in_shape) == 3 else 1
    channels = in_shape[0] if len(in_shape) in (2, 3) else 1
    return CNN(channels, widths, n_classes, dim=dim, activation=config.get("activation", "relu"))


def shuffled(data: LabeledData, seed: int) -> LabeledData:
    """``data`` with its labels permuted (seeded): the shuffled-label control."""
    g = torch.Generator().manual_seed(10_000 + seed)
    perm = torch.randperm(len(data.y), generator=g)
    return LabeledData(data.X, data.y[perm], name=f"{data.name} (shuffled labels)",
                       meta={**data.meta, "labels": "shuffled", "shuffle_seed": 10_000 + seed})


def measured_classes(data: LabeledData, classes) -> LabeledData:
    """The samples of ``data`` labelled with one of ``classes``, relabelled 0..k-1 in that order."""
    classes = torch.as_tensor(tuple(classes))
    keep = torch.isin(data.y, classes)
    y = torch.searchsorted(torch.sort(classes).values, data.y[keep])
    order = torch.argsort(classes)  # position in sorted order -> position in ``classes``
    return LabeledData(data.X[keep], order[y], name="measured classes")


class Restricted(torch.nn.Module):
    """A classifier's outputs for ``classes`` only: its choice among the measured classes."""

    def __init__(self, model: torch.nn.Module, classes) -> None:
        super().__init__()
        self.model, self.classes = model, list(classes)

    def forward(self, x):
        return self.model(x)[:, self.classes]


class HiddenSeparability(Callback):
    """Every hidden layer's separability of the true classes on a fixed subset, and the training accuracy
    on the training samples of the measured classes (against the labels the network is fitted to)."""

    name = "separability"

    def __init__(self, X, y, acc_data, classes, layers, seed, pool, pairs, *, epochs="all", steps=None):
        super().__init__(epochs=epochs, steps=steps)
        self.X, self.y, self.acc_data, self.classes, self.layers = X, y, acc_data, list(classes), layers
        self.seed, self.pool, self.pairs = seed, pool, pairs

    def measure(self, state):
        acts = record(state.model, self.X.to(state.device), layers=list(self.layers), pool=self.pool,
                      device=state.device, to="cpu", progress=False)
        table = held_out_layer_rows(acts, self.y, self.pairs, self.seed, HELD_OUT, self.layers).assign(
            kind="separability")
        acc = evaluate(Restricted(state.model, self.classes), self.acc_data, device=state.device)
        extra = pd.DataFrame([{"kind": "train_accuracy", "value": acc["accuracy"], "loss": acc["loss"]}])
        return pd.concat([table, extra], ignore_index=True)


def run_one(config: dict, device: str | None = None) -> pd.DataFrame:
    device = torch.device(device or "cpu")
    seed = config["seed"]
    size = config["n_data"] if config["dataset"] == "mnist1d" else None
    train, test = load_dataset(config["dataset"], split="both", seed=seed, size=size)
    fitted = train if config["labels"] == "true" else shuffled(train, seed)
    model = build_model(config, train.n_features, train.input_shape, train.n_classes)
    layers = {f"layers.{i}.act": i + 1 for i in range(config["depth"])}
    keep = class_subsample(train.y, config["classes"], config["per_class"], seed)
    acc_data = measured_classes(fitted, config["classes"])
    probe = HiddenSeparability(train.X[keep], train.y[keep], acc_data, config["classes"], layers, seed, config["pool"],
                               config["pairs"], epochs="all", steps=config["early_steps"])
    history = fit(model, fitted, test, epochs=config["epochs"], lr=config["lr"], optimizer="adam",
                  batch_size=config["batch_size"], seed=seed, callbacks=[probe], device=device, progress=False)
    rows = probe.table.drop(columns=["callback"], errors="ignore")
    hist = history.assign(kind="history", value=history["accuracy"])
    return pd.concat([rows, hist], ignore_index=True)


# --------------------------------------------------------------------------------------------
# tables


_KEYS = ["model", "dataset", "labels", "seed"]


def summarize(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    sep = results[results["kind"] == "separability"]
    separability = (sep.groupby([*_KEYS, "step", "epoch", "layer", "layer_index", "measure"], as_index=False)
                    .agg(value=("value", "mean"), n_pairs=("value", "size")))
    separability["layer_index"] = separability["layer_index"].astype(int)
    separability["step"] = separability["step"].astype(int)
    acc = (results[results["kind"] == "train_accuracy"].groupby([*_KEYS, "step", "epoch"], as_index=False)
           .agg(train_accuracy=("value", "mean")))
    synchrony = separability.rename(columns={"value": "separability"}).merge(acc, on=[*_KEYS, "step", "epoch"])
    rows = []
    for key, g in synchrony.groupby([*_KEYS, "layer_index", "measure"]):
        g = g.groupby("step")[["separability", "train_accuracy"]].mean().sort_index()
        rows.append({**dict(zip([*_KEYS, "layer_index", "measure"], key)),
                     **series_statistics(g["separability"].to_numpy(), g["train_accuracy"].to_numpy())})
    association = pd.DataFrame(rows)
    association_long = association.melt(id_vars=[*_KEYS, "layer_index", "measure"],
                                        value_vars=["agreement", "baseline"], var_name="statistic",
                                        value_name="share")
    first = separability.groupby(_KEYS)["step"].transform("min")
    last = separability.groupby(_KEYS)["step"].transform("max")
    final = pd.concat([separability[separability["step"] == first].assign(state="init"),
                       separability[separability["step"] == last].assign(state="trained")], ignore_index=True)
    start = separability[separability["step"] == first]
    saturation = (start.groupby(["model", "dataset", "labels", "layer_index", "measure"], as_index=False)
                  .agg(at_init=("value", "mean"), share_at_one=("value", lambda v: float((v >= 1 - 1e-9).mean()))))
    history = results[results["kind"] == "history"][[*_KEYS, "epoch", "split", "accuracy", "loss"]]
    return {"separability": separability, "synchrony": synchrony, "final": final, "association": association,
            "association_long": association_long, "saturation_at_init": saturation,
            "accuracy": history.reset_index(drop=True)}


# --------------------------------------------------------------------------------------------
# claims, thresholds and reasons: fixed before the data of this version

_SYNC = ("\u201cif the updated weights can enhance the linear separability degree of hidden layer outputs, the "
         "updated network will achieve a better training performance, and vice versa\u201d (abstract)")
_CAVEAT = ("Laptop scale: small networks, one pair of classes (3 against 8), a few hundred points; the held-out "
           "readings use 30% of them, so each value is noisy and a short run has about a dozen intervals per layer.")
_WITHIN = ("model", "dataset")


def _shuffled_control(m: str, what: str) -> Control:
    return Control.rows({"measure": m, "labels": "shuffled"},
                        f"the same network trained on shuffled labels (its {what}: the training accuracy on the "
                        f"labels it is fitted to, the separability of the true classes)")


def _decisions() -> list:
    out = []
    for m in CLAIM_MEASURES:
        name = MEASURE_NAMES[m]
        out.append((CoMovement(
            name=f"sync-sign-{m}", paper=PAPER, statement=_SYNC, table="synchrony",
            where={"measure": m, "labels": "true"}, a="separability", b="train_accuracy", time="step",
            statistic="excess_agreement", min_effect=0.1, partial=0.0, tol=1e-6, within=_WITHIN, by="layer_index",
            control=_shuffled_control(m, "excess sign agreement"),
            measured=f"share of measurement intervals (early steps, then epochs) in which a hidden layer's {name} "
                     f"(mean over the measured pairs) and the training accuracy change in the same direction, "
                     f"minus its exact permutation baseline",
            caveat=_CAVEAT,
            not_supported_if=f"Not supported if, in most layers, the {name} and the training accuracy had moved "
                             f"the same way no more often, beyond chance, than in the shuffled-label run"),
            "The permutation baseline is what any two series with these shares of rises give; the shuffled-label "
            "run is what training alone gives. The paper predicts agreement well beyond both: 0.1 (one interval "
            "in ten) is the smallest excess read as synchrony, anything above 0 but below it is partial."))
        out.append((Threshold(
            name=f"sync-detrended-{m}", paper=PAPER, statement=_SYNC, table="association",
            where={"measure": m, "labels": "true"}, value="partial_spearman", op=">=", bound=0.2, partial=0.0,
            within=_WITHIN, by="layer_index", control=_shuffled_control(m, "partial rank correlation"),
            measured=f"Spearman correlation between the per-interval changes of a hidden layer's {name} and of the "
                     f"training accuracy with the interval's index partialled out (both change most early on)",
            caveat=_CAVEAT,
            not_supported_if=f"Not supported if, in most layers, the changes of the {name} and of the training "
                             f"accuracy had been no more rank-correlated, once time is partialled out, than in the "
                             f"shuffled-label run"),
            "Early intervals carry the largest changes of both series, so a plain correlation of the changes "
            "mostly measures time; with time partialled out and the shuffled-label run subtracted, 0.2 is the "
            "smallest rank correlation read as co-movement (about a dozen intervals per series)."))
    for m in CLAIM_MEASURES:
        out.append((MonotoneTrend(
            name=f"deeper-more-separable-{m}", paper=PAPER, table="final",
            where={"measure": m, "labels": "true", "state": "trained"},
            statement="Tested reading of the paper's layer-wise results: hidden layers closer to the output are "
                      "more linearly separable.",
            x="layer_index", y="value", direction="increasing", min_effect=0.5, within=_WITHIN,
            control=Control.rows({"measure": m, "labels": "true", "state": "init"},
                                 "the same network at initialisation (its rank correlation of layer and measure)"),
            measured=f"Spearman correlation between hidden-layer index and its {MEASURE_NAMES[m]} after the last "
                     f"epoch (mean over the measured pairs)",
            caveat="With three hidden layers, the correlation takes few values; a measure constant over layers "
                   "(e.g. every hull distance 0) gives no correlation and is left out.",
            not_supported_if=f"Not supported if training had not made the {MEASURE_NAMES[m]} rise with layer "
                             f"index by more than it already does at initialisation"),
            "A random network already orders its layers in some way; the claim is about what training does, so "
            "the trend is read against the initialisation; 0.5 of rank correlation (over three layers) is the "
            "smallest gain read as an ordering."))
    return out


REGISTRY = ClaimRegistry(
    "3", _decisions(),
    changes={"2": "sign agreement against a fixed 0.75/0.5, plain Spearman of the changes against 0.1, in-sample "
                  "measures on classes 0-4 against the accuracy on all ten",
             "3": "every claim against a control: excess sign agreement over the permutation baseline and a "
                  "time-detrended (partial) rank correlation, each beyond a shuffled-label run, the layer trend "
                  "beyond the initialisation; MD-LSM and the probe read held out (the probe as balanced "
                  "accuracy), on the classes the training accuracy counts; 100-200 points per class, so that "
                  "MD-LSM does not start saturated"})

FIGURES = [
    FigureSpec(name="separability_vs_step", table="separability", kind="line", x="step", y="value",
               hue="layer_index", col="measure", row="model", sharey=False, where={"labels": "true"},
               title="Hidden-layer separability during training (true labels)",
               caption="Mean over the measured class pairs; band: one standard deviation over seeds."),
    FigureSpec(name="separability_vs_step_shuffled", table="separability", kind="line", x="step", y="value",
               hue="layer_index", col="measure", row="model", sharey=False, where={"labels": "shuffled"},
               title="Hidden-layer separability of the true classes, network trained on shuffled labels",
               caption="The control run; band: one standard deviation over seeds."),
    FigureSpec(name="accuracy_vs_epoch", table="accuracy", kind="line", x="epoch", y="accuracy", hue="split",
               col="model", row="labels", title="Accuracy during training",
               caption="Band: one standard deviation over seeds."),
    FigureSpec(name="agreement_per_layer", table="association_long", kind="bar", x="layer_index", y="share",
               hue="statistic", col="measure", row="labels",
               title="Sign agreement per layer against its permutation baseline",
               caption="Share of intervals in which separability and training accuracy change in the same "
                       "direction, and the share expected from a random re-pairing of the intervals."),
    FigureSpec(name="final_per_layer", table="final", kind="point", x="layer_index", y="value", hue="state",
               col="measure", row="model", sharey=False, where={"labels": "true"},
               title="Separability per hidden layer at initialisation and after training"),
]

STUDY = Study(
    name="s1_synchronicity", run_one=run_one, quick=QUICK, full=FULL, seeds={"quick": 3, "full": 5},
    title="S1 — Synchronicity of hidden-layer separability and training accuracy", paper=PAPER,
    description=("MLPs (mnist1d) and CNNs (digits; in full mode both models on both datasets) are trained with "
                 "Adam (lr 0.01, batch 64, fixed in advance, not tuned), each on the true labels and, as the "
                 "control, on shuffled labels. Before training, after optimiser steps 1, 2, 4, 8 and 16 and after "
                 "every epoch, each hidden layer's outputs on a fixed training subset of classes 3 and 8 are "
                 "measured: MD-LSM held out (30% of each class set aside, the test AUC of the MD-LSM direction "
                 "fitted on the rest) and in sample, the hull distance relative to the layer's spread (in "
                 "sample), and a class-balanced logistic probe read as held-out balanced accuracy. The training "
                 "accuracy is restricted to the measured classes: on every training sample labelled 3 or 8 (by the "
                 "labels the network is fitted to), the share for which the network's output for the right one "
                 "of the two is the larger (its choice between the measured classes). MLP "
                 "layers are measured as they are, CNN layers by their channel means. Quick: 100 points per "
                 "class, 5 epochs, MLP width 16, CNN 8 channels, 3 seeds; full: 200 points per class on mnist1d "
                 "and 120 on digits, 8 epochs, twice the width, both models on both datasets, 5 seeds. Claims, "
                 "bounds and reasons are fixed in the study's registry; "
                 + REGISTRY.changes_text().replace("\n", "; ") + "."),
    claims=REGISTRY.claims, summarize=summarize, figures=FIGURES, version=REGISTRY.study_version)

if __name__ == "__main__":
    import sepmeasure.cli

    sepmeasure.cli.run_study_script(STUDY)
