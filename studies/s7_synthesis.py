"""S7 — cross-paper: does the depth at which features become linearly separable predict which units
are left linear by linearity masks and by a sparsity prior?

No seed paper asks this. He et al. 2022 (arXiv 2203.11700) argue that features which have already
"reach[ed] the linearly separable space" need no further non-linearity; Zhang et al. 2023
(arXiv 2307.13962) measure where hidden layers become linearly separable; Mehmeti-Göpel &
Disselhoff 2023 (arXiv 2211.17180) linearize units with a sparsity prior. Joined, they predict:
a layer whose *input* is already more linearly separable should keep fewer non-linear units.

Per seed, on mnist1d with a four-layer ReLU MLP (self-contained: the models are trained here):

1. a plain MLP is trained; the linear separability of the input of every hidden layer (the raw
   input for layer 1, the previous layer's activations otherwise) is measured on a fixed
   training subset with MD-LSM and a held-out linear probe, one class against the rest
   (:func:`sepmeasure.separability.layer_separability` on :func:`sepmeasure.capture.record`);
2. an MLP with learnable linearity masks and a mask penalty is trained from the same
   initialisation seed (He et al.): share of linear units per layer;
3. the trained plain MLP is made linearizable and fine-tuned with the sparsity prior (late
   linearization, Mehmeti-Göpel & Disselhoff): share of linear units per layer.

Per seed, method (mask, prior) and separability measure, the Spearman correlation across layers
between input separability and the share of linear units is compared with its permutation
baseline (the layers' linear shares re-paired at random: exactly, over all permutations, when
there are at most ``n_perm`` of them, else ``n_perm`` seeded draws). The table ``answer`` states
the answer in one sentence from the measured correlations.

Run alone with ``python studies/s7_synthesis.py --quick`` or through ``sepmeasure study s7 --quick``.
"""
from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pandas as pd
import torch
from scipy import stats

from sepmeasure.capture import record
from sepmeasure.claims import Threshold
from sepmeasure.data import load_dataset
from sepmeasure.models import (MLP, LinearizationSchedule, MaskPenalty, SparsityPrior, apply_masks, linear_fraction,
                               make_linearizable, nonlinear_fraction)
from sepmeasure.report import FigureSpec
from sepmeasure.separability import class_subsample
from sepmeasure.study import Study
from sepmeasure.training import evaluate, fit

PAPER = ("He et al. 2022 (arXiv 2203.11700), Mehmeti-G\u00f6pel & Disselhoff 2023 (arXiv 2211.17180) and "
         "Zhang et al. 2023 (arXiv 2307.13962), joined")
PREDICTORS = ("md_lsm", "linear_probe")
METHODS = ("mask", "prior")
N_PERM = 2000

_COMMON = {"dataset": "mnist1d", "lr": 0.003, "post_lr": 0.01, "batch_size": 64, "classes": (0, 1, 2, 3)}
QUICK = {**_COMMON, "n_data": 3000, "widths": (32, 32, 32, 32), "epochs": 12, "mask_penalty": 1.0,
         "prior_weight": 0.05, "post_epochs": 6, "per_class": 20}
FULL = {**_COMMON, "n_data": 4000, "widths": (64, 64, 64, 64, 64), "epochs": 30, "mask_penalty": [1.0, 3.0],
        "prior_weight": 0.05, "post_epochs": 10, "per_class": 40}


def permutation_correlation(x, y, n_perm: int = N_PERM, seed: int = 0) -> dict[str, float]:
    """Spearman correlation of ``x`` and ``y`` with its permutation baseline.

    The null distribution re-pairs ``y`` with ``x`` at random: every permutation of ``y`` when
    there are at most ``n_perm`` of them (exact), else ``n_perm`` seeded random permutations.

    Returns
    -------
    dict
        ``rho`` (observed), ``null_mean``, ``null_q95`` (95th percentile of the null),
        ``p_value`` (share of the null >= rho; with random draws ``(1 + count) / (1 + n_perm)``),
        ``excess`` (``rho - null_mean``), ``exact`` (1.0 if enumerated). All ``nan`` when either
        input is constant or shorter than 3.

    Examples
    --------
    >>> r = permutation_correlation([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.5])
    >>> r["rho"], round(r["p_value"], 4), r["exact"]
    (1.0, 0.0417, 1.0)
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    nan = {k: math.nan for k in ("rho", "null_mean", "null_q95", "p_value", "excess", "exact")}
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return nan
    rx = stats.rankdata(x)
    ry = stats.rankdata(y)

    def pearson_rows(b: np.ndarray) -> np.ndarray:  # Pearson of rx against each row of b (ranks)
        a = rx - rx.mean()
        bc = b - b.mean(axis=1, keepdims=True)
        return bc @ a / np.sqrt((a @ a) * (bc * bc).sum(axis=1))

    rho = float(pearson_rows(ry[None, :])[0])
    exact = math.factorial(x.size) <= n_perm
    if exact:
        perms = np.array(list(itertools.permutations(range(x.size))))
        null = pearson_rows(ry[perms])
        p = float(np.mean(null >= rho - 1e-12))
    else:
        rng = np.random.default_rng(seed)
        null = pearson_rows(rng.permuted(np.tile(ry, (n_perm, 1)), axis=1))
        p = float((1 + np.sum(null >= rho - 1e-12)) / (1 + n_perm))
    return {"rho": rho, "null_mean": float(null.mean()), "null_q95": float(np.quantile(null, 0.95)), "p_value": p,
            "excess": rho - float(null.mean()), "exact": float(exact)}


def run_one(config: dict, device: str | None = None) -> pd.DataFrame:
    from sepmeasure.separability import layer_separability

    # One thread per run: the runs are small, and several may run side by side in worker processes.
    torch.set_num_threads(1)
    device = torch.device(device or "cpu")
    seed = config["seed"]
    train, test = load_dataset(config["dataset"], split="both", seed=seed, size=config["n_data"])
    widths = list(config["widths"])
    opts = {"lr": config["lr"], "optimizer": "adam", "batch_size": config["batch_size"], "seed": seed,
            "device": device, "progress": False}
    rows = []

    torch.manual_seed(seed)
    plain = MLP(train.n_features, widths, train.n_classes)
    torch.manual_seed(seed)
    masked = apply_masks(MLP(train.n_features, widths, train.n_classes))
    fit(plain, train, test, epochs=config["epochs"], **opts)
    rows.append({"kind": "accuracy", "method": "plain", "measure": "test_accuracy",
                 "value": evaluate(plain, test, device=device)["accuracy"]})

    # 1. separability of every hidden layer's input in the trained plain network
    keep = class_subsample(train.y, config["classes"], config["per_class"], seed)
    X, y = train.X[keep], train.y[keep]
    names = [f"layers.{i}.act" for i in range(len(widths))]
    acts = record(plain, X.to(device), layers=names, pool="flatten", device=device, to=device)
    inputs = {"layer_1_input": X.to(device).flatten(1)}
    inputs.update({f"layer_{i + 2}_input": acts[n] for i, n in enumerate(names[:-1])})
    sep = layer_separability(inputs, y.to(device), measures=PREDICTORS, pairs="ovr", seed=seed, device=device)
    per_layer = sep.groupby(["layer", "measure"], as_index=False)["value"].mean()
    for _, r in per_layer.iterrows():
        rows.append({"kind": "layer", "layer_index": int(r["layer"].split("_")[1]), "method": "separability",
                     "measure": r["measure"], "value": float(r["value"])})

    # 2. masks (He et al.)
    fit(masked, train, test, epochs=config["epochs"], penalty=MaskPenalty(config["mask_penalty"]), **opts)
    rows.append({"kind": "accuracy", "method": "mask", "measure": "test_accuracy",
                 "value": evaluate(masked, test, device=device)["accuracy"]})
    for i, r in linear_fraction(masked).iterrows():
        rows.append({"kind": "layer", "layer_index": i + 1, "method": "mask", "measure": "linear_share",
                     "value": float(r["linear_fraction"])})

    # 3. sparsity prior after training (Mehmeti-Göpel & Disselhoff)
    late = make_linearizable(copy.deepcopy(plain))
    prior = SparsityPrior(config["prior_weight"])
    fit(late, train, test, epochs=config["post_epochs"], penalty=prior, callbacks=[LinearizationSchedule(prior, 1)],
        **{**opts, "lr": config["post_lr"]})
    rows.append({"kind": "accuracy", "method": "prior", "measure": "test_accuracy",
                 "value": evaluate(late, test, device=device)["accuracy"]})
    for i, r in nonlinear_fraction(late).iterrows():
        rows.append({"kind": "layer", "layer_index": i + 1, "method": "prior", "measure": "linear_share",
                     "value": 1.0 - float(r["nonlinear_fraction"])})
    return pd.DataFrame(rows)


_KEYS = ["mask_penalty", "seed"]


def summarize(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    layers = results[results["kind"] == "layer"].copy()
    layers["layer_index"] = layers["layer_index"].astype(int)
    layers["quantity"] = np.where(layers["method"] == "separability", "input_" + layers["measure"],
                                  "linear_share_" + layers["method"])
    per_layer = (layers.pivot_table(index=[*_KEYS, "layer_index"], columns="quantity", values="value")
                 .reset_index())
    per_layer.columns.name = None
    long = layers[[*_KEYS, "layer_index", "quantity", "value"]].reset_index(drop=True)
    rows = []
    for key, g in per_layer.groupby(_KEYS):
        g = g.sort_values("layer_index")
        for method in METHODS:
            for predictor in PREDICTORS:
                col_x, col_y = f"input_{predictor}", f"linear_share_{method}"
                if col_x not in g or col_y not in g:
                    continue
                r = permutation_correlation(g[col_x], g[col_y], seed=int(key[-1]))
                rows.append({**dict(zip(_KEYS, key)), "method": method, "predictor": predictor, **r})
    corr = pd.DataFrame(rows)
    acc = (results[results["kind"] == "accuracy"].groupby([*_KEYS, "method"], as_index=False)["value"].mean()
           .rename(columns={"value": "test_accuracy"}))
    return {"answer": pd.DataFrame([{"answer": answer_sentence(corr)}]), "correlation": corr,
            "per_layer": per_layer, "per_layer_long": long, "accuracy": acc}


def answer_sentence(corr: pd.DataFrame, predictor: str = "linear_probe") -> str:
    """The study's answer in one sentence: the claim's verdict for each method, with the numbers.

    Per method the claim ``separable-input-predicts-linear-units`` is decided on the ``predictor``
    rows (supported: "predicts"; partly supported: "only weakly predicts"; not supported: "does not
    predict"; inconclusive: "cannot be shown to predict").
    """
    sub = corr[corr["predictor"] == predictor] if not corr.empty else corr
    if sub.empty or sub["rho"].isna().all():
        return "No correlation could be measured (every layer had the same linear share)."
    result = _claims()[0].evaluate(sub)
    by_method = {g.group.split(",")[0].removeprefix("method="): g for g in result.groups}
    verbs = {"supported": "predicts", "partly supported": "only weakly predicts",
             "not supported": "does not predict", "inconclusive": "cannot be shown to predict"}
    parts, verdicts = [], []
    for method, label in (("mask", "the masks"), ("prior", "the sparsity prior")):
        g = by_method.get(method)
        rows = sub[sub["method"] == method].dropna(subset=["rho"])
        if g is None or rows.empty:
            parts.append(f"is undefined for {label} (constant linear share)")
            verdicts.append("inconclusive")
            continue
        sig = int((rows["p_value"] <= 0.05).sum())
        parts.append(f"{verbs[g.verdict]} the share left linear by {label} (Spearman rho {rows['rho'].mean():+.2f} "
                     f"against a permutation baseline of {rows['null_mean'].mean():+.2f}; p <= 0.05 in {sig} of "
                     f"{len(rows)} seeds)")
        verdicts.append(g.verdict)
    lead = {("supported", "supported"): "Yes", ("not supported", "not supported"): "No"}.get(tuple(verdicts))
    if lead is None:
        lead = "Partly" if any(v in ("supported", "partly supported") for v in verdicts) else "Unclear"
    return (f"{lead}: across hidden layers, how linearly separable a layer's input is (held-out linear probe) "
            f"{parts[0]} and {parts[1]}.")


def _claims() -> list:
    caveat = ("A question no seed paper asks. Laptop scale: one four-layer MLP on mnist1d per seed, so each "
              "correlation has only four points (the smallest exact permutation p-value is 1/24), and separability "
              "rises with depth in any trained network, so depth confounds both quantities.")
    return [
        Threshold(
            name="separable-input-predicts-linear-units", paper=PAPER, table="correlation",
            statement=("Cross-paper question (no seed paper states it): He et al. 2022 say \u201csome features "
                       "reach the linearly separable space earlier than the others and can be detached\u201d "
                       "(abstract). Tested reading: across hidden layers, the linear separability of a layer's "
                       "input is rank-correlated with the share of its units left linear by the masks and by the "
                       "sparsity prior, by at least 0.5 above the permutation baseline."),
            value="excess", op=">=", bound=0.5, partial=0.0, by=["method", "predictor"],
            measured=("Spearman correlation across hidden layers between input separability (MD-LSM or linear "
                      "probe, one class against the rest) and share of linear units, minus the mean of its "
                      "exact permutation baseline"), caveat=caveat),
    ]


FIGURES = [
    FigureSpec(name="separability_and_linear_share", table="per_layer_long", kind="point", x="layer_index",
               y="value", hue="quantity", title="Input separability and share of linear units per hidden layer",
               caption="input_*: separability of the layer's input in the plain trained MLP; linear_share_*: share "
                       "of units left linear by the masks or the sparsity prior. Error bars: one standard deviation "
                       "over seeds."),
    FigureSpec(name="correlations", table="correlation", kind="bar", x="method", y="rho", hue="predictor",
               title="Spearman correlation across layers (permutation baseline mean: about 0)",
               caption="Error bars: one standard deviation over seeds."),
]

STUDY = Study(
    name="s7_synthesis", run_one=run_one, quick=QUICK, full=FULL, seeds={"quick": 3, "full": 5},
    title="S7 — Does the depth of linear separability predict which units stay linear?", paper=PAPER,
    description=("Question: does the layer at which features become linearly separable predict which units the "
                 "linearity masks (S5) and the sparsity prior (S6) leave linear? Per seed a four-layer ReLU MLP "
                 "(quick: width 32, 12 epochs; full: five layers of width 64, 30 epochs) is trained on mnist1d "
                 "with Adam; the separability of every hidden layer's input (MD-LSM and a held-out linear probe, "
                 "classes 0-3 one against the rest, a fixed training subset) is correlated across layers with the "
                 "share of linear units of a masked MLP (mask penalty 1; full also 3) and of the trained MLP "
                 "fine-tuned with a sparsity prior (weight 0.05, Adam lr 0.01), against an exact permutation baseline. "
                 "The answer in one sentence is the table 'answer' below (computed from the measured "
                 "correlations) and the verdict of the claim."),
    claims=_claims(), summarize=summarize, figures=FIGURES, version="1")

if __name__ == "__main__":
    import sepmeasure.cli

    sepmeasure.cli.run_study_script(STUDY)
