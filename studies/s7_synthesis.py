"""S7 — cross-paper: does the linear separability of a layer's input predict which units are left
linear by linearity masks and by a sparsity prior, beyond what the layer's depth predicts?

No seed paper asks this. He et al. 2022 (arXiv 2203.11700) argue that features which have already
"reach[ed] the linearly separable space" need no further non-linearity; Zhang et al. 2023
(arXiv 2307.13962) measure where hidden layers become linearly separable; Mehmeti-Göpel &
Disselhoff 2023 (arXiv 2211.17180) linearize units with a sparsity prior. Joined, they predict:
a layer whose *input* is already more linearly separable should keep fewer non-linear units.

Per seed (one configuration per seed, so every arm is trained and counted once), on mnist1d with
a ReLU MLP (self-contained: the models are trained here; the test split is used only for the
reported accuracies):

1. a plain MLP is trained; the linear separability of the input of every hidden layer (the raw
   input for layer 1, the previous layer's activations otherwise) is measured on a fixed training
   subset with MD-LSM and a held-out linear probe, one class against the rest;
2. for every mask penalty an MLP with learnable linearity masks is trained from the same
   initialisation seed (He et al.): share of linear units per layer, and the separability of
   every layer's input *in that masked network*;
3. the trained plain MLP is made linearizable and fine-tuned with the sparsity prior (late
   linearization, Mehmeti-Göpel & Disselhoff): share of linear units per layer, against the
   separability measured in the plain network it started from.

Both quantities rise with depth in any trained network, so the correlation across layers (v1's
statistic) is confounded by depth. The claim reads the association **within layers**: in every
cell (one layer index and one setting, e.g. one mask penalty) the seeds are ranked by input
separability and by linear share, and the rank correlation of the within-cell ranks, pooled over
cells (:func:`within_layer_correlation`; the partial rank correlation given the cell), is compared
with its permutation baseline, the linear shares re-paired among seeds **inside each cell** (so
depth stays fixed). Its per-seed values are jackknife pseudo-values (the interval over seeds of
the claims). The across-layer correlation is reported beside the correlation of the linear share
with the layer index alone (depth as its control).

Decisions (claims, thresholds, reasons) are declared in ``REGISTRY`` below and pinned by
``tests/test_studies_s7.py``. Hyper-parameters are the version-1 values, fixed before any run and
not tuned (no choice is made on any data).

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
from sepmeasure.claims import ClaimRegistry, Control, Threshold
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

# ----------------------------------------------------------------------------- decisions before data
STUDY_VERSION = "2"
CHANGES = {
    "1": "first version: Spearman correlation across layers against a permutation baseline that re-pairs layers, "
         "so depth (which raises both quantities) decided the verdict; the prior arm was repeated for each mask "
         "penalty and counted twice.",
    "2": "review (issue 15): the claim reads the association within layers (seeds ranked inside each layer and "
         "setting, the permutation baseline re-pairs seeds inside each layer), jackknife pseudo-values per seed; "
         "one configuration per seed holds every arm once; the masks' separability is measured in the masked "
         "network itself; the across-layer correlation is judged against the layer index alone; the claim reads "
         "the held-out linear probe (in-sample MD-LSM is 1 past the first layer in version 1, a ceiling that "
         "cannot rank seeds) and MD-LSM stays a reported column; answer and caveats generated from the tables.",
}
CLAIM_PREDICTOR = "linear_probe"
WITHIN_BOUND = 0.3     # a moderate rank association beyond the within-layer permutation baseline ...
WITHIN_PARTIAL = 0.0   # ... any positive one: partly
DEPTH_MARGIN = 0.1     # across layers, separability must beat the layer index by 0.1 in rank correlation

_CAVEAT = ("A question no seed paper asks. Laptop scale: one ReLU MLP per seed and setting on mnist1d. Within a "
           "layer the only variation is from seed to seed (initialisation, data split, measurement subset), which "
           "is small next to the variation across layers, so a within-layer association has little room to show; "
           "the table 'caveats' gives this run's numbers (seeds, cells, within-layer spread).")


def _registry() -> ClaimRegistry:
    probe = {"predictor": CLAIM_PREDICTOR}
    within = Threshold(
        name="separable-input-predicts-linear-units", paper=PAPER, table="within_layer", where=probe, by="method",
        statement=("Cross-paper question (no seed paper states it): He et al. 2022 say \u201csome features "
                   "reach the linearly separable space earlier than the others and can be detached\u201d "
                   "(abstract). Tested reading: at a fixed depth (within each layer and setting, across seeds), "
                   "a layer whose input is more linearly separable has a larger share of units left linear by the "
                   "masks and by the sparsity prior: the within-layer rank correlation exceeds its within-layer "
                   "permutation baseline by at least 0.3."),
        value="pseudo_value", op=">=", bound=WITHIN_BOUND, partial=WITHIN_PARTIAL, min_seeds=3,
        control=Control.from_column("null_mean", "mean of the within-layer permutation null (linear shares "
                                    "re-paired among seeds inside each layer and setting, depth held fixed)"),
        measured=("within-layer rank correlation between input separability (held-out linear probe, one class "
                  "against the rest) and share of linear units: seeds ranked inside each layer and setting, "
                  "pooled over cells; per seed its jackknife pseudo-value"),
        not_supported_if=("Not supported if, at a fixed layer, the seeds with a more separable input had not had "
                          "more linear units than the same shares re-paired at random among seeds"),
        caveat=_CAVEAT)
    across = Threshold(
        name="separability-beats-depth-across-layers", paper=PAPER, table="across_layers", where=probe,
        by="method", within="setting",
        statement=("Cross-paper question (no seed paper states it), v1's reading: across hidden layers the "
                   "separability of a layer's input is rank-correlated with its share of linear units. Tested "
                   "here against depth: that correlation exceeds the correlation of the linear share with the "
                   "layer index alone by at least 0.1."),
        value="rho", op=">=", bound=DEPTH_MARGIN,
        control=Control.from_column("rho_depth", "Spearman correlation of the linear share with the layer index "
                                    "alone (depth as the predictor)"),
        measured="Spearman correlation across hidden layers between input separability and share of linear units",
        not_supported_if=("Not supported if ranking layers by separability had predicted their linear shares no "
                          "better than ranking them by depth"),
        caveat=_CAVEAT)
    return ClaimRegistry(STUDY_VERSION, [
        (within, "Depth raises both quantities, so only variation at a fixed depth can show that separability "
                 "itself predicts linearity; 0.3 is a moderate rank correlation (any positive one: partly), fixed "
                 "before the version-2 runs; the permutation re-pairs seeds inside a layer so the control keeps "
                 "depth; 3 seeds at least for a jackknife."),
        (across, "v1's across-layer statistic, now against the only other predictor the layers offer, their "
                 "order: separability must add at least 0.1 of rank correlation to depth."),
    ], changes=CHANGES)


REGISTRY = _registry()  # its fingerprint per study version is pinned in tests/test_studies_s7.py

_COMMON = {"dataset": "mnist1d", "lr": 0.003, "post_lr": 0.01, "batch_size": 64, "classes": (0, 1, 2, 3)}
QUICK = {**_COMMON, "n_data": 3000, "widths": (32, 32, 32, 32), "epochs": 12, "mask_penalties": (1.0,),
         "prior_weight": 0.05, "post_epochs": 6, "per_class": 20}
FULL = {**_COMMON, "n_data": 4000, "widths": (64, 64, 64, 64, 64), "epochs": 30, "mask_penalties": (1.0, 3.0),
        "prior_weight": 0.05, "post_epochs": 10, "per_class": 40}
SEEDS = {"quick": 8, "full": 20}


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


def _ranks_by_cell(values: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Ranks (average ranks for ties) of ``values`` inside each cell, centred on the cell's mean rank."""
    out = np.zeros(values.size)
    for c in np.unique(cells):
        m = cells == c
        r = stats.rankdata(values[m])
        out[m] = r - r.mean()
    return out


def within_layer_correlation(x, y, cells, n_perm: int = N_PERM, seed: int = 0) -> dict[str, float]:
    """Rank correlation of ``x`` and ``y`` inside cells, pooled, with a within-cell permutation baseline.

    In every cell (e.g. one layer index and setting) ``x`` and ``y`` are ranked among the cell's
    units (seeds) and centred; the statistic is the Pearson correlation of these pooled centred
    ranks, i.e. the partial rank correlation given the cell (the residuals of the within-cell
    ranks on cell indicators). A cell where either is constant adds nothing to the covariance.
    The null re-pairs ``y`` with ``x`` at random **inside each cell**: exactly over every
    combination of within-cell permutations when there are at most ``n_perm``, else ``n_perm``
    seeded draws.

    Returns
    -------
    dict
        ``rho``, ``null_mean``, ``null_q95``, ``p_value`` (share of the null >= rho; with draws
        ``(1 + count) / (1 + n_perm)``), ``exact`` (1.0 if enumerated), ``cells`` (cells with at
        least 2 units), ``cells_varying`` (cells where both vary). ``nan`` statistics when no
        cell has both varying.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    cells = np.asarray(cells)
    if not (x.shape == y.shape == cells.shape) or x.ndim != 1:
        raise ValueError(f"x, y, cells: expected 1-D arrays of one length, got shapes {x.shape}, {y.shape}, "
                         f"{cells.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, cells = x[ok], y[ok], cells[ok]
    groups = [np.flatnonzero(cells == c) for c in pd.unique(cells)]
    groups = [g for g in groups if g.size >= 2]
    out = {k: math.nan for k in ("rho", "null_mean", "null_q95", "p_value", "exact")}
    out["cells"] = float(len(groups))
    out["cells_varying"] = float(sum(np.ptp(x[g]) > 0 and np.ptp(y[g]) > 0 for g in groups))
    if out["cells_varying"] == 0:
        return out
    rx = [stats.rankdata(x[g]) - (g.size + 1) / 2 for g in groups]
    ry = [stats.rankdata(y[g]) - (g.size + 1) / 2 for g in groups]
    scale = math.sqrt(sum(a @ a for a in rx) * sum(b @ b for b in ry))
    rho = sum(a @ b for a, b in zip(rx, ry)) / scale
    if n_perm == 0:  # the statistic alone
        out["rho"] = float(rho)
        return out
    n_comb = math.prod(math.factorial(g.size) for g in groups)
    exact = n_comb <= n_perm
    if exact:
        per_cell = [np.array([b[list(p)] @ a for p in itertools.permutations(range(a.size))])
                    for a, b in zip(rx, ry)]
        null = np.array([sum(c) for c in itertools.product(*per_cell)]) / scale
        p = float(np.mean(null >= rho - 1e-12))
    else:
        rng = np.random.default_rng(seed)
        null = sum(rng.permuted(np.tile(b, (n_perm, 1)), axis=1) @ a for a, b in zip(rx, ry)) / scale
        p = float((1 + np.sum(null >= rho - 1e-12)) / (1 + n_perm))
    out.update(rho=float(rho), null_mean=float(null.mean()), null_q95=float(np.quantile(null, 0.95)), p_value=p,
               exact=float(exact))
    return out


def jackknife_pseudo_values(units, statistic) -> dict:
    """Tukey's jackknife pseudo-values ``n * S - (n - 1) * S_(-i)`` of ``statistic`` over ``units``.

    ``statistic(kept_units)`` returns the statistic on a subset of the units. Their mean is the
    jackknife estimate of the statistic and their variance / n its jackknife variance, so their
    percentile bootstrap over units approximates the statistic's interval.
    """
    units = list(units)
    n = len(units)
    full = statistic(units)
    return {u: n * full - (n - 1) * statistic([v for v in units if v != u]) for u in units}


def partial_spearman(x, y, z) -> float:
    """Partial Spearman correlation of ``x`` and ``y`` given ``z``: ranks of all three, then the
    first-order partial correlation of the ranks (``nan`` when undefined)."""
    ranks = np.vstack([stats.rankdata(x), stats.rankdata(y), stats.rankdata(z)])
    if ranks.shape[1] < 3 or (np.ptp(ranks, axis=1) == 0).any():
        return math.nan
    r = np.corrcoef(ranks)
    rxy, rxz, ryz = r[0, 1], r[0, 2], r[1, 2]
    den = math.sqrt(max((1 - rxz**2) * (1 - ryz**2), 0.0))
    return float((rxy - rxz * ryz) / den) if den > 1e-12 and np.isfinite(den) else math.nan


def _spearman(x, y) -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return float(stats.spearmanr(x, y).statistic) if x.size > 2 and np.ptp(x) > 0 and np.ptp(y) > 0 else math.nan


def _input_separability(model, X, y, n_layers, seed, device) -> list[dict]:
    from sepmeasure.separability import layer_separability

    names = [f"layers.{i}.act" for i in range(n_layers)]
    acts = record(model, X.to(device), layers=names, pool="flatten", device=device, to=device)
    inputs = {"layer_1_input": X.to(device).flatten(1)}
    inputs.update({f"layer_{i + 2}_input": acts[n] for i, n in enumerate(names[:-1])})
    sep = layer_separability(inputs, y.to(device), measures=PREDICTORS, pairs="ovr", seed=seed, device=device)
    per_layer = sep.groupby(["layer", "measure"], as_index=False)["value"].mean()
    return [{"layer_index": int(r["layer"].split("_")[1]), "quantity": f"input_{r['measure']}",
             "value": float(r["value"])} for _, r in per_layer.iterrows()]


def run_one(config: dict, device: str | None = None) -> pd.DataFrame:
    # One thread per run: the runs are small, and several may run side by side in worker processes.
    torch.set_num_threads(1)
    device = torch.device(device or "cpu")
    seed = config["seed"]
    train, test = load_dataset(config["dataset"], split="both", seed=seed, size=config["n_data"])
    widths = list(config["widths"])
    # the test split is never seen in training (fit gets no test data): only the reported accuracies read it
    opts = {"lr": config["lr"], "optimizer": "adam", "batch_size": config["batch_size"], "seed": seed,
            "device": device, "progress": False}
    keep = class_subsample(train.y, config["classes"], config["per_class"], seed)
    X, y = train.X[keep], train.y[keep]
    rows = []

    def add(method, setting, items):
        rows.extend({"kind": "layer", "method": method, "setting": float(setting), **r} for r in items)

    torch.manual_seed(seed)
    plain = MLP(train.n_features, widths, train.n_classes)
    fit(plain, train, None, epochs=config["epochs"], **opts)
    rows.append({"kind": "accuracy", "method": "plain", "setting": math.nan, "quantity": "test_accuracy",
                 "value": evaluate(plain, test, device=device)["accuracy"]})
    plain_sep = _input_separability(plain, X, y, len(widths), seed, device)

    for penalty in config["mask_penalties"]:  # masks (He et al.), one network per penalty
        torch.manual_seed(seed)
        masked = apply_masks(MLP(train.n_features, widths, train.n_classes))
        fit(masked, train, None, epochs=config["epochs"], penalty=MaskPenalty(penalty), **opts)
        rows.append({"kind": "accuracy", "method": "mask", "setting": float(penalty), "quantity": "test_accuracy",
                     "value": evaluate(masked, test, device=device)["accuracy"]})
        add("mask", penalty, _input_separability(masked, X, y, len(widths), seed, device))
        add("mask", penalty, [{"layer_index": i + 1, "quantity": "linear_share", "value": float(r["linear_fraction"])}
                              for i, r in linear_fraction(masked).iterrows()])

    # sparsity prior after training (Mehmeti-Göpel & Disselhoff), against the plain network's separability
    late = make_linearizable(copy.deepcopy(plain))
    prior = SparsityPrior(config["prior_weight"])
    fit(late, train, None, epochs=config["post_epochs"], penalty=prior, callbacks=[LinearizationSchedule(prior, 1)],
        **{**opts, "lr": config["post_lr"]})
    rows.append({"kind": "accuracy", "method": "prior", "setting": float(config["prior_weight"]),
                 "quantity": "test_accuracy", "value": evaluate(late, test, device=device)["accuracy"]})
    add("prior", config["prior_weight"], plain_sep)
    add("prior", config["prior_weight"], [{"layer_index": i + 1, "quantity": "linear_share",
                                           "value": 1.0 - float(r["nonlinear_fraction"])}
                                          for i, r in nonlinear_fraction(late).iterrows()])
    return pd.DataFrame(rows)


def summarize(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    layers = results[results["kind"] == "layer"].copy()
    layers["layer_index"] = layers["layer_index"].astype(int)
    keys = ["seed", "method", "setting", "layer_index"]
    per_layer = layers.pivot_table(index=keys, columns="quantity", values="value").reset_index()
    per_layer.columns.name = None
    long = layers[keys + ["quantity", "value"]].reset_index(drop=True)
    across, within, summary = [], [], []
    for (method, setting, seed), g in per_layer.groupby(["method", "setting", "seed"]):
        g = g.sort_values("layer_index")
        depth = (float(stats.spearmanr(g["layer_index"], g["linear_share"]).statistic)
                 if np.ptp(g["linear_share"]) > 0 and len(g) > 1 else math.nan)
        for predictor in PREDICTORS:
            r = permutation_correlation(g[f"input_{predictor}"], g["linear_share"], seed=int(seed))
            across.append({"seed": seed, "method": method, "setting": setting, "predictor": predictor,
                           "rho": r["rho"], "rho_depth": depth, "null_mean": r["null_mean"], "p_value": r["p_value"]})
    for method, g in per_layer.groupby("method"):
        cells = g["setting"].astype(str) + "/" + g["layer_index"].astype(str)
        seeds = sorted(g["seed"].unique())
        for predictor in PREDICTORS:
            col = f"input_{predictor}"
            r = within_layer_correlation(g[col], g["linear_share"], cells, seed=len(seeds))

            def stat(kept, g=g, col=col, cells=cells):
                m = g["seed"].isin(kept).to_numpy()
                return within_layer_correlation(g[col][m], g["linear_share"][m], cells[m], n_perm=0)["rho"]

            pseudo = jackknife_pseudo_values(seeds, stat) if len(seeds) >= 3 and np.isfinite(r["rho"]) else {}
            for s in seeds:
                within.append({"seed": s, "method": method, "predictor": predictor,
                               "pseudo_value": pseudo.get(s, math.nan), "null_mean": r["null_mean"]})
            ok = np.isfinite(g[col]) & np.isfinite(g["linear_share"])
            summary.append({"method": method, "predictor": predictor, "within_rho": r["rho"],
                            "null_mean": r["null_mean"], "null_q95": r["null_q95"], "p_value": r["p_value"],
                            "exact": r["exact"], "seeds": len(seeds), "cells": r["cells"],
                            "cells_varying": r["cells_varying"],
                            "jackknife_mean": float(np.mean(list(pseudo.values()))) if pseudo else math.nan,
                            "partial_spearman_layer": partial_spearman(g[col][ok], g["linear_share"][ok],
                                                                        g["layer_index"][ok]),
                            "pooled_spearman": _spearman(g[col][ok], g["linear_share"][ok]),
                            "sd_within_layer": float(g.groupby(cells)[col].std().mean()),
                            "sd_across_layers": float(g.groupby("layer_index")[col].mean().std())})
    across, within, summary = pd.DataFrame(across), pd.DataFrame(within), pd.DataFrame(summary)
    acc = (results[results["kind"] == "accuracy"].groupby(["seed", "method", "setting"], as_index=False, dropna=False)
           ["value"].mean().rename(columns={"value": "test_accuracy"}))
    return {"answer": pd.DataFrame([{"answer": answer_sentence(summary, across, within)}]),
            "depth_controlled": summary, "within_layer": within, "across_layers": across,
            "caveats": pd.DataFrame({"caveat": caveat_lines(summary, per_layer)}),
            "per_layer": per_layer, "per_layer_long": long, "accuracy": acc, "decisions": REGISTRY.to_frame()}


def caveat_lines(summary: pd.DataFrame, per_layer: pd.DataFrame) -> list[str]:
    """This run's caveats, from its numbers."""
    out = []
    for _, r in summary[summary["predictor"] == CLAIM_PREDICTOR].iterrows():
        n_layers = per_layer[per_layer["method"] == r["method"]]["layer_index"].nunique()
        smallest = 1.0 / math.factorial(int(r["seeds"])) if r["seeds"] else math.nan
        out.append(f"{r['method']}: {int(r['seeds'])} seeds, {n_layers} hidden layers, {int(r['cells'])} "
                   f"layer-and-setting cells ({int(r['cells_varying'])} where both quantities vary across seeds); "
                   f"the held-out probe's spread across seeds within a layer is {r['sd_within_layer']:.3f} against "
                   f"{r['sd_across_layers']:.3f} across layers; one cell's smallest exact permutation p-value "
                   f"would be {smallest:.2g}.")
    for _, r in summary[summary["predictor"] == "md_lsm"].iterrows():
        out.append(f"{r['method']}: in-sample MD-LSM varies across seeds in {int(r['cells_varying'])} of "
                   f"{int(r['cells'])} cells (it is often 1, a ceiling), so it is reported, not judged.")
    return out


def answer_sentence(summary: pd.DataFrame, across: pd.DataFrame, within: pd.DataFrame,
                    predictor: str = CLAIM_PREDICTOR) -> str:
    """The study's answer in one sentence, from the depth-controlled claim's verdicts and the tables."""
    sub = summary[summary["predictor"] == predictor] if not summary.empty else summary
    if sub.empty or sub["within_rho"].isna().all():
        return "No within-layer correlation could be measured (no layer varies across seeds in both quantities)."
    result = REGISTRY.claims[0].evaluate(within)
    by_method = {g.group.removeprefix("method="): g for g in result.groups}
    verbs = {"supported": "predicts", "partly supported": "only weakly predicts",
             "not supported": "does not predict", "inconclusive": "cannot be shown to predict"}
    parts, verdicts = [], []
    for method, label in (("mask", "the masks"), ("prior", "the sparsity prior")):
        g, rows = by_method.get(method), sub[sub["method"] == method]
        if g is None or rows.empty or rows["within_rho"].isna().all():
            parts.append(f"is undefined for {label} (no layer varies in both)")
            verdicts.append("inconclusive")
            continue
        r = rows.iloc[0]
        a = across[(across["method"] == method) & (across["predictor"] == predictor)]
        parts.append(f"{verbs[g.verdict]} the share left linear by {label} (within-layer rank correlation "
                     f"{r['within_rho']:+.2f}, permutation baseline {r['null_mean']:+.2f}, p = {r['p_value']:.2g}, "
                     f"{int(r['seeds'])} seeds in {int(r['cells'])} cells; across layers {a['rho'].mean():+.2f}, "
                     f"the layer index alone {a['rho_depth'].mean():+.2f})")
        verdicts.append(g.verdict)
    lead = {("supported", "supported"): "Yes", ("not supported", "not supported"): "No"}.get(tuple(verdicts))
    if lead is None:
        lead = "Partly" if any(v in ("supported", "partly supported") for v in verdicts) else "Unclear"
    return (f"{lead}: at a fixed depth, how linearly separable a layer's input is (held-out linear probe) "
            f"{parts[0]} and {parts[1]}.")


FIGURES = [
    FigureSpec(name="separability_and_linear_share", table="per_layer_long", kind="point", x="layer_index",
               y="value", hue="quantity", col="method",
               title="Input separability and share of linear units per hidden layer",
               caption="input_*: separability of the layer's input (masks: in the masked network; prior: in the "
                       "plain network it starts from); linear_share: share of units left linear. Error bars: one "
                       "standard deviation over seeds and settings."),
    FigureSpec(name="within_layer", table="within_layer", kind="bar", x="method", y="pseudo_value", hue="predictor",
               title="Within-layer rank correlation (jackknife pseudo-values; permutation baseline about 0)",
               caption="Error bars: one standard deviation of the pseudo-values over seeds."),
]

STUDY = Study(
    name="s7_synthesis", run_one=run_one, quick=QUICK, full=FULL, seeds=SEEDS,
    title="S7 — Does linear separability predict which units stay linear, beyond depth?", paper=PAPER,
    description=("Question: at a fixed depth, does a more linearly separable layer input go with more units left "
                 "linear by the linearity masks (S5) and by the sparsity prior (S6)? One configuration per seed "
                 "(every arm trained and counted once): a ReLU MLP (quick: four layers of width 32, 12 epochs; "
                 "full: five of width 64, 30 epochs) trained on mnist1d with Adam; masked MLPs from the same "
                 "initialisation (mask penalty 1; full also 3) and the trained MLP fine-tuned with a sparsity prior "
                 "(weight 0.05, Adam lr 0.01). Separability of every hidden layer's input: MD-LSM and a held-out "
                 "linear probe, classes 0-3 one against the rest, a fixed training subset, in the masked network "
                 "for the masks and in the plain network for the prior. The claim ranks seeds inside each layer "
                 "and setting (depth held fixed) against a permutation baseline that re-pairs seeds inside each "
                 "layer; the across-layer correlation is compared with the layer index alone. The answer in one "
                 "sentence is the table 'answer' below; this run's caveats the table 'caveats'; claims, thresholds "
                 "and reasons the table 'decisions' (study version " + STUDY_VERSION + "). Version history: "
                 + " ".join(f"version {v}: {why}" for v, why in CHANGES.items())),
    claims=REGISTRY.claims, summarize=summarize, figures=FIGURES, version=REGISTRY.study_version)

if __name__ == "__main__":
    import sepmeasure.cli

    sepmeasure.cli.run_study_script(STUDY)
