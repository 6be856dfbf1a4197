"""S4 — half-space features of deep linearly gated networks (Yadav, Ramaswamy & Lakshminarayanan 2024).

DLGN-SFs (a deep *linear* gating network whose gates mask a value network fed a constant input,
so the value network's biases are held at zero and every output is a sum of path features) are
trained on 2-D synthetic targets (two moons, xor, spirals). Each gate of layer ``l`` is the
indicator of a half-space ``{x : <a, x> + c > 0}`` of the plane
(:func:`sepmeasure.models.effective_halfspaces`), and each path ``p = (p_1, ..., p_L)`` through
one unit per layer carries the feature ``1[x ∈ R_p]`` with ``R_p`` the intersection of its
``L`` half-spaces, weighted in the output by its value weight

    v_{p,k} = (Σ_j W_1[p_1, j]) · Π_{l≥2} W_l[p_l, p_{l-1}] · W_head[k, p_L]

(hard gates; with soft gates ``1[·]`` becomes a product of sigmoids). Two claims are tested:

(a) **features sit on smooth regions of the target** — operational test: the target is the
    1-nearest-neighbour label of the training data on a grid over the data's box, restricted to
    cells within ``support_radius`` of a training point. For the ``top_k`` paths with the
    largest class-centred value weight ``|v_p - mean_k v_{p,k}|`` (among paths whose region
    covers at least ``min_cells`` supported cells), the *purity* of the region (share of its
    supported cells carrying the region's majority label) is compared with the purity of
    random discs of the same number of supported cells centred at random supported cells;
(b) **later-layer gates cluster** — per layer, the clustering of the effective half-spaces is
    measured by ``1 - inertia_k / inertia_1`` of k-means (k = ``n_clusters``) on the unit vectors
    ``(a, c)/|(a, c)|`` (1: all half-spaces in k tight groups, 0: no structure beyond one
    centre), and by the mean pairwise ``|cos|`` of the normals; trained networks are compared
    with the same network at its random initialisation and across layers.

Figures: each layer's half-space boundaries (seed 0), the top path regions and the target
(seed 0), region purity against random discs, and clustering per layer.

Run alone with ``python studies/s4_halfspaces.py --quick`` or through
``sepmeasure study s4 --quick``. Each run uses one torch thread (``torch.set_num_threads(1)``).
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import torch

from sepmeasure.claims import Comparison, MonotoneTrend, Threshold
from sepmeasure.data import load_dataset
from sepmeasure.models.gated import DLGN, BetaAnnealing, effective_halfspaces
from sepmeasure.report import FigureSpec
from sepmeasure.study import Study
from sepmeasure.training import fit
from sepmeasure.validation import check_features, check_int, check_labels, describe

PAPER = "Yadav, Ramaswamy & Lakshminarayanan 2024, Half-Space Feature Learning in Neural Networks (arXiv)"
DATASETS = ("two_moons", "xor", "spirals")

_COMMON_QUICK = {"n_data": 1000, "width": 12, "depth": 4, "epochs": 30, "lr": 0.01, "batch_size": 64,
                 "beta_start": 1.0, "beta_end": 16.0, "grid": 50, "top_k": 5, "min_cells": 8,
                 "support_radius": 0.3, "n_random": 30, "n_clusters": 3, "map_seed": 0}
_COMMON_FULL = {**_COMMON_QUICK, "n_data": 2000, "width": 16, "depth": 4, "epochs": 80, "grid": 80,
                "top_k": 8, "min_cells": 16, "n_random": 100, "n_clusters": 4}
QUICK = [{**_COMMON_QUICK, "dataset": list(DATASETS)}]
FULL = [{**_COMMON_FULL, "dataset": list(DATASETS)}]


# --------------------------------------------------------------------------------------------
# measures


def halfspace_clustering(normals: torch.Tensor, offsets: torch.Tensor, n_clusters: int = 3,
                         seed: int = 0) -> dict[str, float]:
    """Clustering of one layer's half-spaces ``{x : <a_i, x> + c_i > 0}``.

    * ``kmeans_clustering = 1 - inertia_k / inertia_1``: k-means (:func:`kmeans_inertia`) on the unit vectors ``u_i = (a_i, c_i) / |(a_i, c_i)|``; ``inertia_1`` is the sum of
      squared distances to the mean. 1 when the half-spaces form ``k`` identical groups; a
      scale-free reading of "the neurons cluster" (Yadav et al. 2024).
    * ``normal_abs_cosine``: mean over pairs ``i < j`` of ``|cos(a_i, a_j)|`` (2/π ≈ 0.64 for
      independent uniform directions in the plane).

    Parameters
    ----------
    normals : Tensor of shape (n, d)
    offsets : Tensor of shape (n,)
    n_clusters : int
        ``k``, at most ``n``.
    seed : int

    Returns
    -------
    dict
        ``{"kmeans_clustering": float, "normal_abs_cosine": float}``.

    Examples
    --------
    >>> a = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]])
    >>> r = halfspace_clustering(a, torch.zeros(4), n_clusters=2)
    >>> r["kmeans_clustering"] > 0.99
    True
    """
    a = check_features(normals, "normals", ndim=2)
    c = check_features(offsets, "offsets", ndim=1)
    if c.shape[0] != a.shape[0]:
        raise ValueError(f"offsets: expected {a.shape[0]} offsets (one per normal), got {describe(offsets)}")
    n_clusters = check_int(n_clusters, "n_clusters", minimum=1)
    if n_clusters > a.shape[0]:
        raise ValueError(f"n_clusters: expected at most {a.shape[0]} (the number of half-spaces), got {n_clusters}")
    a64 = a.detach().double().cpu()
    u = torch.cat([a64, c.detach().double().cpu()[:, None]], dim=1)
    u = (u / u.norm(dim=1, keepdim=True).clamp_min(1e-300)).numpy()
    total = float(((u - u.mean(axis=0)) ** 2).sum())
    u = u[np.lexsort(u.T[::-1])]  # a canonical order: the result does not depend on the units' order
    clustering = 1.0 - kmeans_inertia(u, n_clusters, seed) / total if total > 0 else 1.0
    unit = a64 / a64.norm(dim=1, keepdim=True).clamp_min(1e-300)
    cos = (unit @ unit.T).abs()
    n = cos.shape[0]
    pairs = cos[torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)]
    return {"kmeans_clustering": clustering, "normal_abs_cosine": float(pairs.mean()) if n > 1 else math.nan}


def kmeans_inertia(points: np.ndarray, k: int, seed: int = 0, n_init: int = 32, n_iter: int = 100) -> float:
    """Smallest k-means inertia (sum of squared distances to the nearest centre) over ``n_init`` runs.

    Lloyd's algorithm from k-means++ starts (seeded); meant for the few points of one layer (tens),
    where many restarts are cheap and find the optimum in practice (tested against exhaustive search).

    Examples
    --------
    >>> round(kmeans_inertia(np.array([[0.0], [0.1], [5.0], [5.1]]), 2), 6)
    0.01
    """
    x = np.asarray(points, dtype=float)
    rng = np.random.default_rng(seed)
    best = np.inf
    for _ in range(n_init):
        centres = [x[rng.integers(len(x))]]
        for _ in range(1, k):
            d2 = np.min([((x - c) ** 2).sum(axis=1) for c in centres], axis=0)
            p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1 / len(x))
            centres.append(x[rng.choice(len(x), p=p)])
        centres = np.array(centres)
        for _ in range(n_iter):
            labels = ((x[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
            new = np.array([x[labels == j].mean(axis=0) if np.any(labels == j) else centres[j] for j in range(k)])
            if np.allclose(new, centres, rtol=0, atol=1e-14):
                break
            centres = new
        inertia = float(((x[:, None, :] - centres[None]) ** 2).sum(axis=2).min(axis=1).sum())
        best = min(best, inertia)
    return best


def path_value_weights(model: DLGN) -> torch.Tensor:
    """Value weight of every path of a fully connected DLGN-SF: tensor of shape ``(w_1, ..., w_L, K)``.

    ``v[p_1, ..., p_L, k] = (Σ_j W_1[p_1, j] · 1) · Π_{l≥2} W_l[p_l, p_{l-1}] · W_head[k, p_L]``
    (the value network's input is ones; value biases are taken as zero), so that with hard gates
    ``f_k(x) = Σ_p v_{p,k} Π_l G_l(x)[p_l]`` (Yadav et al. 2024: the output is a linear
    combination of path features, each the indicator of an intersection of half-spaces).

    Examples
    --------
    >>> m = DLGN(2, [3, 4], 2, value_input="ones")
    >>> path_value_weights(m).shape
    torch.Size([3, 4, 2])
    """
    if not isinstance(model, DLGN) or model.arch != "mlp" or model.value_input != "ones":
        raise TypeError(f"model: expected a fully connected DLGN with value_input='ones', got {describe(model)}")
    with torch.no_grad():
        layers = list(model.value.layers)
        v = layers[0].weight.double().sum(dim=1)
        for layer in layers[1:]:
            v = v.unsqueeze(-1) * layer.weight.double().T.reshape(*([1] * (v.ndim - 1)), *layer.weight.T.shape)
        head = model.value.head.weight.double()
        return v.unsqueeze(-1) * head.T.reshape(*([1] * (v.ndim - 1)), *head.T.shape)


def region_purity(labels: np.ndarray) -> float:
    """Share of the cells carrying the most frequent label (1 when the target is constant there).

    Examples
    --------
    >>> region_purity(np.array([1, 1, 0, 1]))
    0.75
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return math.nan
    return float(np.bincount(labels).max() / labels.size)


def random_disc_purity(points: np.ndarray, labels: np.ndarray, size: int, n_random: int,
                       rng: np.random.Generator) -> float:
    """Mean purity of ``n_random`` discs of ``size`` points: the ``size`` nearest points to a random centre point."""
    centres = rng.integers(0, len(points), size=n_random)
    out = []
    for i in centres:
        d = ((points - points[i]) ** 2).sum(axis=1)
        out.append(region_purity(labels[np.argsort(d, kind="stable")[:size]]))
    return float(np.mean(out))


def nearest_neighbour_target(train_x: np.ndarray, train_y: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-NN label of the training data at each grid point, and the distance to the nearest training point."""
    check_labels(torch.as_tensor(train_y), "train_y", n=len(train_x))
    best = np.full(len(grid), np.inf)
    label = np.zeros(len(grid), dtype=int)
    for start in range(0, len(train_x), 512):
        d = ((grid[:, None, :] - train_x[None, start:start + 512, :]) ** 2).sum(axis=2)
        j = d.argmin(axis=1)
        dj = d[np.arange(len(grid)), j]
        better = dj < best
        best[better], label[better] = dj[better], train_y[start:start + 512][j[better]]
    return label, np.sqrt(best)


def _boundary_points(a: np.ndarray, c: float, lo: np.ndarray, hi: np.ndarray, n: int = 25) -> np.ndarray:
    """Points of the line ``<a, x> + c = 0`` inside the box ``[lo, hi]`` (empty when it misses)."""
    norm2 = float(a @ a)
    if norm2 == 0:
        return np.zeros((0, 2))
    x0 = -c * a / norm2
    d = np.array([-a[1], a[0]]) / math.sqrt(norm2)
    reach = float(np.linalg.norm(hi - lo)) + float(np.linalg.norm(x0))
    t = np.linspace(-reach, reach, 4000)
    pts = x0[None, :] + t[:, None] * d[None, :]
    pts = pts[np.all((pts >= lo) & (pts <= hi), axis=1)]
    if len(pts) < 2:
        return np.zeros((0, 2))
    return pts[np.linspace(0, len(pts) - 1, n).round().astype(int)]


# --------------------------------------------------------------------------------------------
# one configuration


def build_model(width: int, depth: int, n_classes: int, beta: float) -> DLGN:
    """A DLGN-SF on the plane with its value biases zero and frozen (outputs are sums of path features)."""
    model = DLGN(2, [width] * depth, n_classes, gate="soft", beta=beta, value_input="ones")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("value.") and name.endswith("bias"):
                p.zero_()
                p.requires_grad_(False)
    return model


def _clustering_rows(model: DLGN, state: str, n_clusters: int, seed: int) -> list[dict]:
    hs = effective_halfspaces(model)
    rows = []
    for layer, (a, c) in enumerate(zip(hs.normals, hs.offsets), start=1):
        for measure, value in halfspace_clustering(a, c, n_clusters, seed).items():
            rows.append({"kind": "clustering", "state": state, "layer": layer, "measure": measure, "value": value})
    return rows


def _region_rows(model: DLGN, train, config: dict) -> list[dict]:
    X, y = train.X.double().cpu().numpy(), train.y.cpu().numpy()
    lo, hi = X.min(axis=0) - 0.1 * np.ptp(X, axis=0), X.max(axis=0) + 0.1 * np.ptp(X, axis=0)
    axes = [np.linspace(lo[i], hi[i], config["grid"]) for i in range(2)]
    gx, gy = np.meshgrid(*axes, indexing="xy")
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    target, dist = nearest_neighbour_target(X, y, grid)
    support = dist <= config["support_radius"]
    hs = effective_halfspaces(model)
    gates = [(q > 0).numpy() for q in hs.pre_activations(torch.as_tensor(grid[support], dtype=torch.float64)
                                                           .to(hs.normals[0]))]
    sgates = [g.astype(np.float64) for g in gates]
    letters = "abcdefgh"[: len(gates)]
    counts = np.einsum(",".join(f"n{ch}" for ch in letters) + "->" + letters, *sgates)
    v = path_value_weights(model).cpu().numpy()
    importance = np.linalg.norm(v - v.mean(axis=-1, keepdims=True), axis=-1)
    eligible = counts >= config["min_cells"]
    order = np.argsort(np.where(eligible, importance, -np.inf), axis=None)[::-1]
    top = [np.unravel_index(i, importance.shape) for i in order[: config["top_k"]] if eligible.flat[i]]
    rng = np.random.default_rng(config["seed"])
    pts, lab = grid[support], target[support]
    rows, region_of = [], np.zeros(len(pts), dtype=int)
    for rank, path in enumerate(top, start=1):
        inside = np.all([g[:, unit] for g, unit in zip(gates, path)], axis=0)
        size = int(inside.sum())
        rows.append({"kind": "region", "rank": rank, "path": "-".join(map(str, path)), "cells": size,
                     "share_of_support": size / len(pts), "importance": float(importance[path]),
                     "purity": region_purity(lab[inside]),
                     "random_purity": random_disc_purity(pts, lab, size, config["n_random"], rng)})
        region_of[(region_of == 0) & inside] = rank
    if config["seed"] == config["map_seed"]:
        rows += [{"kind": "target_map", "x": float(p[0]), "y": float(p[1]), "label": str(int(t))}
                 for p, t in zip(pts, lab)]
        rows += [{"kind": "region_map", "x": float(p[0]), "y": float(p[1]), "region": f"top {r}"}
                 for p, r in zip(pts, region_of) if r > 0]
        for layer, (a, c) in enumerate(zip(hs.normals, hs.offsets), start=1):
            for unit in range(a.shape[0]):
                for p in _boundary_points(a[unit].double().cpu().numpy(), float(c[unit]), lo, hi):
                    rows.append({"kind": "halfspace_line", "layer": layer, "unit": unit, "x": float(p[0]),
                                 "y": float(p[1])})
    return rows


def run_one(config: dict, device: str | None = None) -> pd.DataFrame:
    torch.set_num_threads(1)
    device = torch.device(device or "cpu")
    seed = config["seed"]
    train, test = load_dataset(config["dataset"], split="both", seed=seed, size=config["n_data"])
    torch.manual_seed(seed)
    model = build_model(config["width"], config["depth"], train.n_classes, config["beta_start"])
    rows = _clustering_rows(copy.deepcopy(model), "init", config["n_clusters"], seed)
    anneal = BetaAnnealing(config["beta_start"], config["beta_end"], n_epochs=config["epochs"])
    fit(model, train, test, epochs=config["epochs"], lr=config["lr"], optimizer="adam",
        batch_size=config["batch_size"], seed=seed, callbacks=[anneal], device=device, progress=False)
    model = model.cpu().double().eval()
    acc = []
    for split, data in (("train", train), ("test", test)):
        x = data.X.double()
        with torch.no_grad():
            soft = (model(x).argmax(1) == data.y).double().mean().item()
            model.gate = "hard"
            hard = (model(x).argmax(1) == data.y).double().mean().item()
            model.gate = "soft"
        acc += [{"kind": "accuracy", "split": split, "gates": "soft", "value": soft},
                {"kind": "accuracy", "split": split, "gates": "hard", "value": hard}]
    rows += acc
    rows += _clustering_rows(model, "trained", config["n_clusters"], seed)
    rows += _region_rows(model, train, config)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# tables

_KEYS = ["dataset", "seed"]


def summarize(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    acc = (results[results["kind"] == "accuracy"].pivot_table(index=[*_KEYS, "gates"], columns="split",
                                                              values="value").add_suffix("_accuracy").reset_index())
    acc.columns.name = None
    clus = results[results["kind"] == "clustering"][[*_KEYS, "state", "layer", "measure", "value"]].copy()
    clus["layer"] = clus["layer"].astype(int)
    wide = clus.pivot_table(index=[*_KEYS, "layer", "measure"], columns="state", values="value").reset_index()
    wide.columns.name = None
    wide["excess_over_init"] = wide["trained"] - wide["init"]
    regions = results[results["kind"] == "region"][[*_KEYS, "rank", "path", "cells", "share_of_support",
                                                    "importance", "purity", "random_purity"]].copy()
    regions["rank"] = regions["rank"].astype(int)
    regions_long = regions.melt(id_vars=[*_KEYS, "rank"], value_vars=["purity", "random_purity"],
                                var_name="region_kind", value_name="value")
    regions_long["region_kind"] = regions_long["region_kind"].map({"purity": "top path region",
                                                                   "random_purity": "random disc"})
    maps = {k: results[results["kind"] == k] for k in ("halfspace_line", "region_map", "target_map")}
    lines = maps["halfspace_line"][[*_KEYS, "layer", "unit", "x", "y"]].copy()
    lines[["layer", "unit"]] = lines[["layer", "unit"]].astype(int)
    return {"accuracy": acc, "clustering": clus.reset_index(drop=True), "clustering_vs_init": wide,
            "regions": regions.reset_index(drop=True), "regions_long": regions_long,
            "halfspaces": lines.reset_index(drop=True),
            "region_map": maps["region_map"][[*_KEYS, "x", "y", "region"]].reset_index(drop=True),
            "target_map": maps["target_map"][[*_KEYS, "x", "y", "label"]].reset_index(drop=True)}


# --------------------------------------------------------------------------------------------
# claims

_SMOOTH = ("\u201cthe mechanism with which this happens is through learning half-spaces in the input space that "
           "contain smooth regions of the target function\u201d (abstract)")
_CLUSTER = ("\u201cthe dynamics of gradient descent impart a distinct clustering to the later layer neurons\u201d "
            "(abstract)")
_SCALE = ("Laptop scale: small DLGN-SFs on 2-D synthetic sets; the target is the 1-NN label of noisy samples, "
          "so purity below 1 also reflects label noise.")


_CLUSTER_CAVEAT = ("Laptop scale: small DLGN-SFs (12-16 units per layer, 4 layers) on 2-D sets. In the plane a "
                   "layer has few half-spaces, so the k-means score is high already at initialisation and moves "
                   "by a few hundredths; with 3 seeds and 4 layers the per-seed rank correlations are coarse.")


def _last_layer_kmeans(table: pd.DataFrame) -> np.ndarray:
    """Rows of the k-means score at each dataset's last layer."""
    last = table.groupby("dataset")["layer"].transform("max")
    return ((table["measure"] == "kmeans_clustering") & (table["layer"] == last)).to_numpy()


def _claims() -> list:
    km = {"measure": "kmeans_clustering"}
    return [
        Threshold(
            name="dlgn-fits-targets", paper=PAPER, table="accuracy", where={"gates": "hard"},
            statement="\u201cFeature learning in DLGNs is shown to happen\u201d (abstract). Tested reading: the "
                      "DLGN-SF, read with hard gates (pure half-space features), fits the 2-D targets.",
            value="test_accuracy", op=">=", bound=0.9, partial=0.75, by="dataset",
            measured="test accuracy of the trained DLGN-SF with hard gates 1[q > 0]", caveat=_SCALE),
        Comparison(
            name="features-on-smooth-regions", paper=PAPER, table="regions_long", statement=_SMOOTH + ". Tested "
            "reading: the path regions (intersections of half-spaces) carrying the largest value weight are "
            "purer (the target is more nearly constant on them) than random discs of the same area.",
            value="value", a={"region_kind": "top path region"}, b={"region_kind": "random disc"}, at_least=0.0,
            by="dataset", measured="purity (share of the region's supported grid cells with the majority 1-NN "
                                   "label) of the top path regions minus that of random discs of the same number "
                                   "of cells, mean over the top regions", caveat=_SCALE),
        MonotoneTrend(
            name="later-layers-cluster", paper=PAPER, table="clustering", where={**km, "state": "trained"},
            statement=_CLUSTER + ". Tested reading: the effective half-spaces of later layers are more clustered "
                                 "than those of earlier layers.", x="layer", y="value", min_effect=0.5, by="dataset",
            measured="Spearman correlation between layer and the k-means clustering score 1 - inertia_k/inertia_1 "
                     "of the layer's unit half-space vectors (a, c)/|(a, c)|, trained networks",
            caveat=_SCALE + " Products of random matrices already align later-layer normals at initialisation; "
                            "see the comparison with initialisation."),
        Comparison(
            name="last-layer-clusters-more-than-init", paper=PAPER, table="clustering", statement=_CLUSTER
            + ". Tested reading: the last layer's half-spaces are more clustered after training than at "
              "initialisation.", value="value", a={"state": "trained"}, b={"state": "init"}, at_least=0.0,
            by="dataset", where=_last_layer_kmeans,
            measured="k-means clustering score of the last layer, trained minus the same network at "
                     "initialisation, paired by seed", caveat=_CLUSTER_CAVEAT),
        MonotoneTrend(
            name="clustering-gain-grows-with-depth", paper=PAPER, table="clustering_vs_init", where=km,
            statement=_CLUSTER + ". Tested reading: the clustering gained during training (trained minus "
                                 "initialisation) grows with the layer index.", x="layer", y="excess_over_init",
            min_effect=0.5, by="dataset",
            measured="Spearman correlation between layer and the gain of the k-means clustering score over "
                     "initialisation", caveat=_CLUSTER_CAVEAT),
    ]


FIGURES = [
    FigureSpec(name="halfspaces_per_layer", table="halfspaces", kind="line", x="x", y="y", hue="unit",
               col="layer", row="dataset", where={"seed": 0}, sharey=False, height=2.6,
               title="Learned half-space boundaries per layer (seed 0)",
               caption="Each line is one gate's boundary <a, x> + c = 0 in the data's box."),
    FigureSpec(name="top_path_regions", table="region_map", kind="scatter", x="x", y="y", hue="region",
               col="dataset", where={"seed": 0}, height=3.0, title="Path regions with the largest value weight "
               "(seed 0)", caption="Grid cells near the data inside each top path region (a cell in several "
                                   "regions shows the highest-ranked)."),
    FigureSpec(name="target", table="target_map", kind="scatter", x="x", y="y", hue="label", col="dataset",
               where={"seed": 0}, height=3.0, title="Target (1-NN label of the training data, seed 0)"),
    FigureSpec(name="region_purity", table="regions_long", kind="bar", x="dataset", y="value", hue="region_kind",
               title="Purity of top path regions vs random discs of the same area",
               caption="Error bars: one standard deviation over seeds and regions."),
    FigureSpec(name="clustering_per_layer", table="clustering", kind="point", x="layer", y="value", hue="state",
               col="dataset", row="measure", sharey=False, title="Clustering of effective half-spaces per layer",
               caption="k-means score 1 - inertia_k/inertia_1 of unit (a, c) vectors and mean |cos| of the normals; "
                       "error bars: one standard deviation over seeds."),
]

STUDY = Study(
    name="s4_halfspaces", run_one=run_one, quick=QUICK, full=FULL, seeds={"quick": 3, "full": 5},
    title="S4 — Half-space features of DLGNs on 2-D targets", paper=PAPER,
    description=("DLGN-SFs (deep linear gating network, value network fed ones, value biases zero and frozen) "
                 "with soft gates annealed from beta = 1 to 16 are trained with Adam on two moons, xor and "
                 "spirals (quick: width 12, depth 4, 30 epochs, 1000 samples; full: width 16, 80 epochs, 2000 "
                 "samples). Each gate's effective half-space in the plane is read off the gating weights; each "
                 "path's region is the intersection of its half-spaces and its value weight the product of its "
                 "value weights. The regions of the paths with the largest value weights are compared with "
                 "random discs of the same area for how constant the target is on them; the half-spaces of "
                 "each layer are clustered and compared with the same network at initialisation."),
    claims=_claims(), summarize=summarize, figures=FIGURES, version="1")

if __name__ == "__main__":
    import sepmeasure.cli

    sepmeasure.cli.run_study_script(STUDY)
