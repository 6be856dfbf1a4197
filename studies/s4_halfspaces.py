"""S4 — half-space features of deep linearly gated networks (Yadav, Ramaswamy & Lakshminarayanan 2024).

DLGNs as in Yadav et al. 2024 (the value network is fed a constant input of ones and its biases are
held at zero, so every output is a linear combination of path features) are trained on 2-D
synthetic targets (two moons, xor, spirals), in two gating structures side by side:

* ``deep``: the paper's DLGN, a deep *linear* gating chain ``q_l = W_l q_{l-1} + b_l``;
* ``shallow``: the DLGN with shallow features (DLGN-SF, Lakshminarayanan & Singh 2021), every
  gating layer's own map of the input ``q_l = W_l x + b_l``, so its layers are exchangeable at
  initialisation (no depth-induced alignment of the gates).

Each gate of layer ``l`` is the indicator of a half-space ``{x : <a, x> + c > 0}`` of the plane
(:func:`sepmeasure.models.effective_halfspaces`), and each path ``p = (p_1, ..., p_L)`` carries the
feature ``1[x ∈ R_p]`` with ``R_p`` the intersection of its ``L`` half-spaces, weighted by

    v_{p,k} = (Σ_j W_1[p_1, j]) · Π_{l≥2} W_l[p_l, p_{l-1}] · W_head[k, p_L].

The learning rate of every arm is chosen per seed on a validation split carved from the training
data (stratified, ``val_fraction``); the test split is used only for the reported test accuracy.
Claims (each against a control, declared with its bounds and reasons in :data:`REGISTRY`):

(a) **features are learned** — test accuracy (hard gates) of the trained DLGN against the same
    DLGN with its gating frozen at initialisation and only the value network trained;
(b) **features sit on smooth regions of the target** — the target is the 1-nearest-neighbour label
    of the training data on a grid over the data's box, restricted to cells within
    ``support_radius`` of a training point; the *purity* (share of the majority label) of the
    regions of the ``top_k`` paths with the largest class-centred value weight
    ``|a_p| · |W_head[:, p_L] - mean_k W_head[k, p_L]|`` (exact top paths by a best-paths dynamic
    programme, :func:`top_paths`) is compared with random regions of matched shape: intersections
    of ``L`` random half-spaces holding the same number of supported cells
    (:func:`random_halfspace_region`);
(c) **later layers cluster** — per layer, the clustering of the effective half-spaces,
    ``1 - inertia_k / inertia_1`` of k-means on the unit vectors ``(a, c)/|(a, c)|``; the main test
    is on the *gain over initialisation* (trained minus the same network at initialisation), whose
    rank correlation with the layer index must be positive; the last layer's gain is also compared
    with a random update of the gating weights of the same size per layer (later layers of a deep
    chain move more; does training cluster them more than a random move would?).

Run alone with ``python studies/s4_halfspaces.py --quick`` or through
``sepmeasure study s4 --quick``. Each run uses one torch thread (``torch.set_num_threads(1)``).
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import torch

from sepmeasure.claims import ClaimRegistry, Control, MonotoneTrend, Threshold
from sepmeasure.data import LabeledData, load_dataset
from sepmeasure.models.gated import DLGN, BetaAnnealing, effective_halfspaces
from sepmeasure.report import FigureSpec
from sepmeasure.study import Study
from sepmeasure.training import fit
from sepmeasure.validation import check_features, check_fraction, check_int, check_labels, describe

PAPER = "Yadav, Ramaswamy & Lakshminarayanan 2024, Half-Space Feature Learning in Neural Networks (arXiv)"
DATASETS = ("two_moons", "xor", "spirals")
GATINGS = ("deep", "shallow")
ARMS = ("trained", "frozen gating")

_COMMON_QUICK = {"n_data": 1000, "width": 12, "depth": 6, "epochs": 30, "lr_grid": "0.01,0.03",
                 "val_fraction": 0.25, "batch_size": 64, "beta_start": 1.0, "beta_end": 16.0, "grid": 50,
                 "top_k": 5, "top_candidates": 200, "min_cells": 8, "support_radius": 0.3, "n_random": 30,
                 "n_clusters": 3, "map_seed": 0}
_COMMON_FULL = {**_COMMON_QUICK, "n_data": 2000, "width": 16, "epochs": 40, "grid": 80, "top_k": 8,
                "top_candidates": 400, "min_cells": 16, "n_random": 100, "n_clusters": 4}
QUICK = [{**_COMMON_QUICK, "dataset": list(DATASETS)}]
FULL = [{**_COMMON_FULL, "dataset": list(DATASETS)}]
SEEDS = {"quick": 3, "full": 10}


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


def kmeans_inertia(points: np.ndarray, k: int, seed: int = 0, n_init: int = 128, n_iter: int = 300) -> float:
    """Smallest k-means inertia (sum of squared distances to the nearest centre) over ``n_init`` runs.

    scikit-learn's :class:`~sklearn.cluster.KMeans` (Lloyd's algorithm from seeded k-means++
    starts); meant for the few points of one layer (tens), where many restarts are cheap and find
    the optimum in practice (tested against exhaustive search).

    Examples
    --------
    >>> round(kmeans_inertia(np.array([[0.0], [0.1], [5.0], [5.1]]), 2), 6)
    0.01
    """
    from sklearn.cluster import KMeans

    x = np.asarray(points, dtype=float)
    if len(np.unique(x, axis=0)) <= k:  # every distinct point can be its own centre
        return 0.0
    fit = KMeans(n_clusters=k, n_init=n_init, max_iter=n_iter, tol=0.0, random_state=seed, algorithm="lloyd").fit(x)
    return float(fit.inertia_)


def path_value_weights(model: DLGN) -> torch.Tensor:
    """Value weight of every path of a fully connected DLGN fed ones: tensor of shape ``(w_1, ..., w_L, K)``.

    ``v[p_1, ..., p_L, k] = (Σ_j W_1[p_1, j] · 1) · Π_{l≥2} W_l[p_l, p_{l-1}] · W_head[k, p_L]``
    (the value network's input is ones; value biases are taken as zero), so that with hard gates
    ``f_k(x) = Σ_p v_{p,k} Π_l G_l(x)[p_l]`` (Yadav et al. 2024: the output is a linear
    combination of path features, each the indicator of an intersection of half-spaces). Holds
    ``Π w_l · K`` numbers: for small networks and tests; :func:`top_paths` finds the largest
    without enumerating.

    Examples
    --------
    >>> m = DLGN(2, [3, 4], 2, value_input="ones")
    >>> path_value_weights(m).shape
    torch.Size([3, 4, 2])
    """
    _check_ones_dlgn(model)
    with torch.no_grad():
        layers = list(model.value.layers)
        v = layers[0].weight.double().sum(dim=1)
        for layer in layers[1:]:
            v = v.unsqueeze(-1) * layer.weight.double().T.reshape(*([1] * (v.ndim - 1)), *layer.weight.T.shape)
        head = model.value.head.weight.double()
        return v.unsqueeze(-1) * head.T.reshape(*([1] * (v.ndim - 1)), *head.T.shape)


def _check_ones_dlgn(model) -> None:
    if not isinstance(model, DLGN) or model.arch != "mlp" or model.value_input != "ones":
        raise TypeError(f"model: expected a fully connected DLGN with value_input='ones', got {describe(model)}")


def top_paths(model: DLGN, m: int) -> list[tuple[tuple[int, ...], float]]:
    """The ``m`` paths with the largest class-centred value weight, exactly, largest first.

    The importance of path ``p`` is ``|v_p - mean_k v_{p,k}| = |a_p| · |h_{p_L}|`` with
    ``a_p = (Σ_j W_1[p_1, j]) Π_{l≥2} W_l[p_l, p_{l-1}]`` and ``h_u = W_head[:, u] - mean_k W_head[k, u]``
    (:func:`path_value_weights` is ``a_p W_head[k, p_L]``). Its logarithm is a sum along the path,
    so the best ``m`` paths ending at each unit of layer ``l`` extend best paths ending at units
    of layer ``l - 1``: a dynamic programme keeping ``m`` partial paths per unit finds the exact
    top ``m`` without enumerating the ``Π w_l`` paths.

    Returns
    -------
    list of (path, importance)
        ``path`` a tuple of one unit index per layer; ties in an arbitrary but fixed order.

    Examples
    --------
    >>> torch.manual_seed(0); m = DLGN(2, [3, 4], 2, value_input="ones")  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> [p for p, _ in top_paths(m, 2)] == [p for p, _ in top_paths(m, 12)[:2]]
    True
    """
    _check_ones_dlgn(model)
    m = check_int(m, "m", minimum=1)
    with torch.no_grad():
        layers = [layer.weight.double().cpu().numpy() for layer in model.value.layers]
        head = model.value.head.weight.double().cpu().numpy()
    with np.errstate(divide="ignore"):
        first = np.log(np.abs(layers[0].sum(axis=1)))
        logs = [np.log(np.abs(w)) for w in layers[1:]]
        h = np.log(np.linalg.norm(head - head.mean(axis=0, keepdims=True), axis=0))
    # partial paths: scores (P,), paths (P, l)
    scores = first.copy()
    paths = np.arange(len(first))[:, None]
    for lw in logs:                       # lw[j, i]: edge from unit i of the previous layer to unit j
        new_scores, new_paths = [], []
        last = paths[:, -1]
        for j in range(lw.shape[0]):
            cand = scores + lw[j, last]
            keep = np.argsort(-cand, kind="stable")[:m]
            new_scores.append(cand[keep])
            new_paths.append(np.concatenate([paths[keep], np.full((len(keep), 1), j)], axis=1))
        scores, paths = np.concatenate(new_scores), np.concatenate(new_paths)
    scores = scores + h[paths[:, -1]]
    order = np.argsort(-scores, kind="stable")[:m]
    return [(tuple(int(u) for u in paths[i]), float(np.exp(scores[i]))) for i in order]


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


def random_halfspace_region(points: np.ndarray, size: int, n_halfspaces: int, rng: np.random.Generator
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random intersection of ``n_halfspaces`` half-planes holding exactly ``size`` of ``points``.

    An anchor ``p`` (a random one of ``points``), unit normals ``u_l`` of uniform random angle and
    relative offsets ``w_l ~ U(0.5, 1.5)`` give the nested family
    ``R(t) = ∩_l {x : <u_l, x - p> + t w_l >= 0}``; a point ``x`` is in ``R(t)`` iff
    ``t >= max_l <u_l, p - x> / w_l``, so the ``size`` points with the smallest such value are
    ``R(t)`` for ``t`` their largest value: a random polygon (possibly unbounded, as a path region
    may be) of the same number of half-spaces and the same area on the points as a path region.

    Returns
    -------
    (inside, normals, offsets)
        Boolean mask over ``points``, normals of shape ``(n_halfspaces, 2)`` and offsets
        ``(n_halfspaces,)`` with ``inside == all(points @ normals.T + offsets >= 0)`` (up to ties).
    """
    pts = np.asarray(points, dtype=float)
    size = check_int(size, "size", minimum=1)
    if size > len(pts):
        raise ValueError(f"size: expected at most {len(pts)} (the number of points), got {size}")
    n_halfspaces = check_int(n_halfspaces, "n_halfspaces", minimum=1)
    p = pts[rng.integers(len(pts))]
    theta = rng.uniform(0.0, 2 * math.pi, size=n_halfspaces)
    u = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    w = rng.uniform(0.5, 1.5, size=n_halfspaces)
    level = ((p[None, :] - pts) @ u.T / w[None, :]).max(axis=1)
    order = np.argsort(level, kind="stable")
    inside = np.zeros(len(pts), dtype=bool)
    inside[order[:size]] = True
    t = level[order[size - 1]]
    return inside, u, t * w - u @ p


def random_region_purity(points: np.ndarray, labels: np.ndarray, size: int, n_halfspaces: int, n_random: int,
                         rng: np.random.Generator) -> tuple[float, float]:
    """Mean purity of ``n_random`` random half-space regions of ``size`` points (:func:`random_halfspace_region`).

    Returns
    -------
    (purity, standard_error)
        The mean purity over the draws and its standard error.
    """
    n_random = check_int(n_random, "n_random", minimum=1)
    out = [region_purity(labels[random_halfspace_region(points, size, n_halfspaces, rng)[0]])
           for _ in range(n_random)]
    se = float(np.std(out, ddof=1) / math.sqrt(len(out))) if len(out) > 1 else math.nan
    return float(np.mean(out)), se


def halfspace_polygon_area(normals: np.ndarray, offsets: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Exact area of ``{x in [lo, hi] : <normals_i, x> + offsets_i > 0 for all i}`` in the plane.

    The box is clipped by each half-plane in turn (Sutherland–Hodgman: a convex polygon stays
    convex), and the area of the result is the shoelace formula.

    Examples
    --------
    >>> halfspace_polygon_area(np.array([[1.0, 0.0]]), np.array([0.0]), np.array([-1.0, -1.0]), np.array([1.0, 1.0]))
    2.0
    """
    a = np.asarray(normals, dtype=float).reshape(-1, 2)
    c = np.asarray(offsets, dtype=float).reshape(-1)
    if len(c) != len(a):
        raise ValueError(f"offsets: expected {len(a)} offsets (one per normal), got {len(c)}")
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    poly = [np.array([lo[0], lo[1]]), np.array([hi[0], lo[1]]), np.array([hi[0], hi[1]]), np.array([lo[0], hi[1]])]
    for ai, ci in zip(a, c):
        out = []
        for k in range(len(poly)):
            p, q = poly[k], poly[(k + 1) % len(poly)]
            fp, fq = float(ai @ p + ci), float(ai @ q + ci)
            if fp > 0:
                out.append(p)
            if (fp > 0) != (fq > 0) and fp != fq:
                out.append(p + (q - p) * (fp / (fp - fq)))
        poly = out
        if len(poly) < 3:
            return 0.0
    xy = np.array(poly)
    return float(0.5 * abs(np.dot(xy[:, 0], np.roll(xy[:, 1], -1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], -1))))


def validation_split(data: LabeledData, fraction: float, seed: int) -> tuple[LabeledData, LabeledData]:
    """Stratified, seeded split of the *training* data into a fitting part and a validation part.

    Every class gives ``round(fraction * n_class)`` samples (at least one, and at least one left
    to fit) to the validation part.
    """
    fraction = check_fraction(fraction, "val_fraction")
    y = data.y.cpu().numpy()
    rng = np.random.default_rng([seed, 7919])
    fit_idx, val_idx = [], []
    for k in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == k))
        if len(idx) < 2:
            raise ValueError(f"val_fraction: class {int(k)} has {len(idx)} training sample(s); a validation split "
                             f"needs at least 2 per class")
        n_val = min(max(1, int(round(fraction * len(idx)))), len(idx) - 1)
        val_idx.append(idx[:n_val])
        fit_idx.append(idx[n_val:])
    fit_idx, val_idx = np.sort(np.concatenate(fit_idx)), np.sort(np.concatenate(val_idx))
    return data.subset(torch.from_numpy(fit_idx)), data.subset(torch.from_numpy(val_idx))


def random_update(init: DLGN, trained: DLGN, seed: int) -> DLGN:
    """``init`` with every gating parameter moved by a random Gaussian direction of the trained move's size.

    Each gating weight and bias ``θ`` becomes ``θ_0 + |θ_T - θ_0| · ξ / |ξ|`` (Frobenius norms,
    ``ξ`` standard normal, seeded): the control for "later layers just move more".
    """
    out = copy.deepcopy(init)
    gen = torch.Generator().manual_seed(int(seed) + 104729)
    with torch.no_grad():
        named_t = dict(trained.gating.named_parameters())
        for name, p in out.gating.named_parameters():
            delta = (named_t[name].detach().to(p) - p).norm()
            xi = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p)
            p.add_(xi * (delta / xi.norm().clamp_min(1e-300)))
    return out


def hard_accuracy(model: DLGN, data: LabeledData) -> float:
    """Accuracy of ``model`` read with hard gates ``1[q > 0]`` (its gate setting is restored)."""
    was = model.gate
    model.gate = "hard"
    try:
        with torch.no_grad():
            x = data.X.to(next(model.parameters()))
            return float((model(x).argmax(1).cpu() == data.y.cpu()).double().mean())
    finally:
        model.gate = was


def nearest_neighbour_target(train_x: np.ndarray, train_y: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-NN label of the training data at each grid point, and the distance to the nearest training point
    (scipy's :class:`~scipy.spatial.cKDTree`)."""
    check_labels(torch.as_tensor(train_y), "train_y", n=len(train_x))
    from scipy.spatial import cKDTree

    dist, j = cKDTree(np.asarray(train_x, dtype=float)).query(np.asarray(grid, dtype=float), k=1)
    return np.asarray(train_y)[j].astype(int), dist


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


def build_model(width: int, depth: int, n_classes: int, beta: float, gating: str = "deep") -> DLGN:
    """A DLGN on the plane fed ones (Yadav et al. 2024), value biases zero and frozen, ``gating`` deep or shallow."""
    model = DLGN(2, [width] * depth, n_classes, gate="soft", beta=beta, value_input="ones", gating=gating)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("value.") and name.endswith("bias"):
                p.zero_()
                p.requires_grad_(False)
    return model


def _lr_grid(text: str) -> list[float]:
    try:
        lrs = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        lrs = []
    if not lrs or not all(math.isfinite(v) and v > 0 for v in lrs):
        raise ValueError(f"lr_grid: expected comma-separated positive learning rates, e.g. '0.01,0.03', got {text!r}")
    return lrs


def _train_arm(init: DLGN, arm: str, fit_part: LabeledData, val_part: LabeledData, config: dict,
               device: torch.device) -> tuple[DLGN, float, list[dict]]:
    """Train a copy of ``init`` for each learning rate of the grid; keep the best on validation (hard gates)."""
    best, best_val, best_lr, rows = None, -math.inf, math.nan, []
    for lr in _lr_grid(config["lr_grid"]):
        model = copy.deepcopy(init)
        if arm == "frozen gating":
            model.freeze_gating(True)
        anneal = BetaAnnealing(config["beta_start"], config["beta_end"], n_epochs=config["epochs"])
        fit(model, fit_part, None, epochs=config["epochs"], lr=lr, optimizer="adam", batch_size=config["batch_size"],
            seed=config["seed"], callbacks=[anneal], device=device, progress=False)
        model = model.cpu().double().eval()
        val = hard_accuracy(model, val_part)
        rows.append({"kind": "lr_selection", "arm": arm, "lr": lr, "value": val})
        if val > best_val:  # ties keep the first (smaller) learning rate of the grid
            best, best_val, best_lr = model, val, lr
    for r in rows:
        r["chosen"] = r["lr"] == best_lr
    return best, best_lr, rows


def _clustering_rows(model: DLGN, state: str, n_clusters: int, seed: int) -> list[dict]:
    hs = effective_halfspaces(model)
    rows = []
    for layer, (a, c) in enumerate(zip(hs.normals, hs.offsets), start=1):
        for measure, value in halfspace_clustering(a, c, n_clusters, seed).items():
            rows.append({"kind": "clustering", "state": state, "layer": layer, "measure": measure, "value": value})
    return rows


def _grid(train: LabeledData, config: dict):
    X, y = train.X.double().cpu().numpy(), train.y.cpu().numpy()
    lo, hi = X.min(axis=0) - 0.1 * np.ptp(X, axis=0), X.max(axis=0) + 0.1 * np.ptp(X, axis=0)
    axes = [np.linspace(lo[i], hi[i], config["grid"]) for i in range(2)]
    gx, gy = np.meshgrid(*axes, indexing="xy")
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    target, dist = nearest_neighbour_target(X, y, grid)
    support = dist <= config["support_radius"]
    return grid[support], target[support], lo, hi


def _region_rows(model: DLGN, pts: np.ndarray, lab: np.ndarray, lo: np.ndarray, hi: np.ndarray, config: dict,
                 draw_maps: bool) -> list[dict]:
    hs = effective_halfspaces(model)
    gates = [(q > 0).numpy() for q in hs.pre_activations(torch.as_tensor(pts, dtype=torch.float64))]
    normals = [a.detach().double().numpy() for a in hs.normals]
    offsets = [c.detach().double().numpy() for c in hs.offsets]
    rng = np.random.default_rng([config["seed"], 31])
    box = float(np.prod(hi - lo))
    depth = len(gates)
    rows, region_of, rank = [], np.zeros(len(pts), dtype=int), 0
    for path, importance in top_paths(model, config["top_candidates"]):
        inside = np.all([g[:, unit] for g, unit in zip(gates, path)], axis=0)
        size = int(inside.sum())
        if size < config["min_cells"]:
            continue
        rank += 1
        purity_random, se = random_region_purity(pts, lab, size, depth, config["n_random"], rng)
        area = halfspace_polygon_area(np.stack([a[u] for a, u in zip(normals, path)]),
                                      np.array([c[u] for c, u in zip(offsets, path)]), lo, hi)
        rows.append({"kind": "region", "rank": rank, "path": "-".join(map(str, path)), "cells": size,
                     "share_of_support": size / len(pts), "box_area_share": area / box, "importance": importance,
                     "purity": region_purity(lab[inside]), "random_purity": purity_random,
                     "random_purity_se": se})
        region_of[(region_of == 0) & inside] = rank
        if rank == config["top_k"]:
            break
    if draw_maps:
        rows += [{"kind": "region_map", "x": float(p[0]), "y": float(p[1]), "region": f"top {r}"}
                 for p, r in zip(pts, region_of) if r > 0]
        for layer, (a, c) in enumerate(zip(normals, offsets), start=1):
            for unit in range(a.shape[0]):
                for p in _boundary_points(a[unit], float(c[unit]), lo, hi):
                    rows.append({"kind": "halfspace_line", "layer": layer, "unit": unit, "x": float(p[0]),
                                 "y": float(p[1])})
    return rows


def run_one(config: dict, device: str | None = None) -> pd.DataFrame:
    torch.set_num_threads(1)
    device = torch.device(device or "cpu")
    seed = config["seed"]
    train, test = load_dataset(config["dataset"], split="both", seed=seed, size=config["n_data"])
    fit_part, val_part = validation_split(train, config["val_fraction"], seed)
    pts, lab, lo, hi = _grid(train, config)
    draw_maps = seed == config["map_seed"]
    rows = []
    if draw_maps:
        rows += [{"kind": "target_map", "x": float(p[0]), "y": float(p[1]), "label": str(int(t))}
                 for p, t in zip(pts, lab)]
    for g_index, gating in enumerate(GATINGS):
        torch.manual_seed(seed * 2 + g_index)
        init = build_model(config["width"], config["depth"], train.n_classes, config["beta_start"], gating)
        init_cpu = copy.deepcopy(init).double()
        arm_rows = _clustering_rows(init_cpu, "init", config["n_clusters"], seed)
        for arm in ARMS:
            model, lr, sel = _train_arm(init, arm, fit_part, val_part, config, device)
            arm_rows += sel
            for split, data in (("train", fit_part), ("validation", val_part), ("test", test)):
                with torch.no_grad():
                    soft = float((model(data.X.double()).argmax(1) == data.y).double().mean())
                arm_rows += [{"kind": "accuracy", "arm": arm, "split": split, "gates": "soft", "value": soft, "lr": lr},
                             {"kind": "accuracy", "arm": arm, "split": split, "gates": "hard",
                              "value": hard_accuracy(model, data), "lr": lr}]
            if arm == "trained":
                arm_rows += _clustering_rows(model, "trained", config["n_clusters"], seed)
                arm_rows += _clustering_rows(random_update(init_cpu, model, seed), "random update",
                                             config["n_clusters"], seed)
                arm_rows += _region_rows(model, pts, lab, lo, hi, config, draw_maps)
        rows += [{**r, "gating": gating} for r in arm_rows]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# tables

_KEYS = ["dataset", "seed", "gating"]


def summarize(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    acc = (results[results["kind"] == "accuracy"].pivot_table(index=[*_KEYS, "arm", "gates"], columns="split",
                                                              values="value").add_suffix("_accuracy").reset_index())
    acc.columns.name = None
    lrs = results[results["kind"] == "lr_selection"][[*_KEYS, "arm", "lr", "value", "chosen"]].rename(
        columns={"value": "validation_accuracy"}).reset_index(drop=True)
    clus = results[results["kind"] == "clustering"][[*_KEYS, "state", "layer", "measure", "value"]].copy()
    clus["layer"] = clus["layer"].astype(int)
    wide = clus.pivot_table(index=[*_KEYS, "layer", "measure"], columns="state", values="value").reset_index()
    wide.columns.name = None
    gain = pd.concat([wide[[*_KEYS, "layer", "measure"]].assign(state=s, gain=wide[s] - wide["init"])
                      for s in ("trained", "random update")], ignore_index=True)
    last = gain.groupby(["dataset", "seed", "gating"])["layer"].transform("max")
    gain["layer_position"] = np.where(gain["layer"] == last, "last", np.where(gain["layer"] == 1, "first", "middle"))
    regions = results[results["kind"] == "region"][[*_KEYS, "rank", "path", "cells", "share_of_support",
                                                    "box_area_share", "importance", "purity", "random_purity",
                                                    "random_purity_se"]].copy()
    regions["rank"] = regions["rank"].astype(int)
    regions_long = regions.melt(id_vars=[*_KEYS, "rank"], value_vars=["purity", "random_purity"],
                                var_name="region_kind", value_name="value")
    regions_long["region_kind"] = regions_long["region_kind"].map(
        {"purity": "top path region", "random_purity": "random half-space region"})
    maps = {k: results[results["kind"] == k].reindex(columns=[*_KEYS, "layer", "unit", "x", "y", "region", "label"])
            for k in ("halfspace_line", "region_map", "target_map")}
    lines = maps["halfspace_line"][[*_KEYS, "layer", "unit", "x", "y"]].copy()
    lines[["layer", "unit"]] = lines[["layer", "unit"]].astype(int)
    return {"accuracy": acc, "lr_selection": lrs, "clustering": clus.reset_index(drop=True),
            "clustering_gain": gain.sort_values([*_KEYS, "state", "measure", "layer"]).reset_index(drop=True),
            "regions": regions.reset_index(drop=True), "regions_long": regions_long,
            "halfspaces": lines.reset_index(drop=True),
            "region_map": maps["region_map"][[*_KEYS, "x", "y", "region"]].reset_index(drop=True),
            "target_map": maps["target_map"][["dataset", "seed", "x", "y", "label"]].reset_index(drop=True),
            "decisions": REGISTRY.to_frame()}


# --------------------------------------------------------------------------------------------
# claims: every claim, its bounds, its control and the reason for them, in one registry


_LEARNED = "\u201cFeature learning in DLGNs is shown to happen\u201d (abstract)"
_SMOOTH = ("\u201cthe mechanism with which this happens is through learning half-spaces in the input space that "
           "contain smooth regions of the target function\u201d (abstract)")
_CLUSTER = ("\u201cthe dynamics of gradient descent impart a distinct clustering to the later layer neurons\u201d "
            "(abstract)")
_SCALE = ("Laptop scale: small DLGNs (12-16 units per layer, 6 layers) on 2-D synthetic sets; the target is the "
          "1-NN label of noisy samples, so purity below 1 also reflects label noise.")
_CEILING = (" On easy sets (two moons) random half-space features may already fit the target, leaving the learned "
            "gating no room to gain 2 points of accuracy.")
_CLUSTER_CAVEAT = ("Laptop scale: 12-16 half-spaces per layer in the plane, so the k-means score is high already at "
                   "initialisation and moves by hundredths; the per-seed rank correlation over 6 layers is coarse.")
_MODEL = {"deep": "DLGN (deep linear gating chain, value network fed ones)",
          "shallow": "shallow-features DLGN (DLGN-SF: every gating layer reads the input; value network fed ones)"}


def _decisions(gating: str) -> list[tuple]:
    sfx = "" if gating == "deep" else "-shallow"
    model = _MODEL[gating]
    g = {"gating": gating}
    km = {**g, "measure": "kmeans_clustering"}
    return [
        (Threshold(
            name=f"features-are-learned{sfx}", paper=PAPER, table="accuracy",
            where={**g, "arm": "trained", "gates": "hard"},
            statement=f"{_LEARNED}. Tested reading: the {model}, read with hard gates, is more accurate on held-out "
                      f"data when its gating is trained than when the gating stays at its random initialisation.",
            value="test_accuracy", op=">=", bound=0.02, partial=0.0, by="dataset",
            control=Control.rows({**g, "arm": "frozen gating", "gates": "hard"},
                                 "the same network from the same initialisation with its gating frozen, only the "
                                 "value network trained (its learning rate chosen on the same validation split)"),
            measured=f"test accuracy with hard gates 1[q > 0] of the trained {model}, learning rate chosen on the "
                     f"validation split",
            caveat=_SCALE + _CEILING,
            not_supported_if="Not supported if training the gating had added less than 2 points of test accuracy "
                             "over frozen random gating, on most datasets"),
         "Features are learned only if the learned gating beats random half-space features on the same value "
         "network; 2 points of accuracy is the smallest gain we call a feature-learning effect (fixed before the "
         "version-2 run); a positive gain below it is partly supported."),
        (Threshold(
            name=f"features-on-smooth-regions{sfx}", paper=PAPER, table="regions", where=g,
            statement=f"{_SMOOTH}. Tested reading: the regions (intersections of half-spaces) of the paths of "
                      f"the {model} with the largest value weight are purer (the target is more nearly constant on them) "
                      f"than random intersections of as many half-spaces of the same area.",
            value="purity", op=">=", bound=0.0, by="dataset",
            control=Control.from_column("random_purity",
                                        "random regions of matched shape: intersections of as many random "
                                        "half-planes as layers holding the same number of supported grid cells "
                                        "(mean over n_random draws per region)"),
            measured="purity (share of the region's supported grid cells with the majority 1-NN label) of the top "
                     "path regions, mean over the top regions",
            caveat=_SCALE,
            not_supported_if="Not supported if the top path regions had been no purer than random intersections "
                             "of half-spaces of the same area"),
         "Any region of a few cells is fairly pure on a smooth target; only the excess over regions of the same "
         "kind (L half-spaces) and the same area says that the half-spaces were placed on smooth parts; any "
         "excess counts (bound 0), since the paper states no size."),
        (MonotoneTrend(
            name=f"later-layers-cluster{sfx}", paper=PAPER, table="clustering_gain",
            where={**km, "state": "trained"},
            statement=f"{_CLUSTER}. Tested reading: in the {model}, the clustering that training adds to a layer's "
                      f"half-spaces (trained minus the same network at initialisation) grows with the layer index.",
            x="layer", y="gain", min_effect=0.5, by="dataset",
            control=Control.constant(0.0, "no depth trend in the gain (rank correlation 0); the same network at "
                                          "initialisation is subtracted in every layer's gain"),
            measured="Spearman correlation between layer and the gain over initialisation of the k-means clustering "
                     "score 1 - inertia_k/inertia_1 of the layer's unit half-space vectors (a, c)/|(a, c)|",
            caveat=_CLUSTER_CAVEAT,
            not_supported_if="Not supported if the gain in clustering had not risen with the layer index (rank "
                             "correlation below 0.5, and not clearly above 0)"),
         "Clustering already rises with depth at initialisation in a deep linear chain (products of random "
         "matrices align), so only the gain over initialisation is attributable to gradient descent; 0.5 is the "
         "version-1 bound for a clear monotone trend, kept."),
        (Threshold(
            name=f"last-layer-clusters-beyond-random-move{sfx}", paper=PAPER, table="clustering_gain",
            where={**km, "state": "trained", "layer_position": "last"},
            statement=f"{_CLUSTER}. Tested reading: training makes the last layer of the {model} more clustered "
                      f"than its initialisation by more than a random move of the gating weights of the same size "
                      f"does.",
            value="gain", op=">=", bound=0.0, by="dataset",
            control=Control.rows({**km, "state": "random update", "layer_position": "last"},
                                 "the initial network moved by a random update of the same size per gating "
                                 "parameter (its last layer's gain over initialisation)"),
            measured="gain over initialisation of the last layer's k-means clustering score",
            caveat=_CLUSTER_CAVEAT,
            not_supported_if="Not supported if training had clustered the last layer no more than a random move "
                             "of the same size"),
         "Later layers of a deep chain move more under any update; a random move of the trained size per "
         "parameter separates clustering imparted by gradient descent from movement itself; any excess counts."),
    ]


REGISTRY = ClaimRegistry(
    "2", [d for gating in GATINGS for d in _decisions(gating)],
    changes={"1": "first claims: the constant-input DLGN (then mislabelled as the shallow-features DLGN-SF), clustering across layers of "
                  "trained networks, purity against discs, accuracy against a fixed 0.9",
             "2": "every claim against a control (frozen-gating network, random half-space regions of matched "
                  "shape, the initialisation, a random move of equal size); clustering judged on the gain over "
                  "initialisation; the shallow-features DLGN beside the deep one; 6 layers and 10 seeds; learning "
                  "rates chosen on a validation split of the training data"})

FIGURES = [
    FigureSpec(name="accuracy_trained_vs_frozen", table="accuracy", kind="bar", x="dataset", y="test_accuracy",
               hue="arm", col="gating", where={"gates": "hard"},
               title="Test accuracy (hard gates): trained gating vs gating frozen at initialisation",
               caption="Error bars: one standard deviation over seeds."),
    FigureSpec(name="region_purity", table="regions_long", kind="bar", x="dataset", y="value", hue="region_kind",
               col="gating", title="Purity of top path regions vs random half-space regions of the same area",
               caption="Error bars: one standard deviation over seeds and regions."),
    FigureSpec(name="clustering_gain_per_layer", table="clustering_gain", kind="point", x="layer", y="gain",
               hue="state", col="dataset", row="gating", where={"measure": "kmeans_clustering"}, sharey=False,
               title="Gain of the k-means clustering score over initialisation, per layer",
               caption="Trained network and a random move of the same size; error bars: one standard deviation "
                       "over seeds."),
    FigureSpec(name="clustering_per_layer", table="clustering", kind="point", x="layer", y="value", hue="state",
               col="dataset", row="gating", where={"measure": "kmeans_clustering"}, sharey=False,
               title="k-means clustering score of effective half-spaces per layer",
               caption="1 - inertia_k/inertia_1 of unit (a, c) vectors; error bars: one standard deviation over "
                       "seeds."),
    FigureSpec(name="halfspaces_per_layer_deep", table="halfspaces", kind="line", x="x", y="y", hue="unit",
               col="layer", row="dataset", where={"seed": 0, "gating": "deep"}, sharey=False, height=2.6,
               title="Learned half-space boundaries per layer, deep DLGN (seed 0)",
               caption="Each line is one gate's boundary <a, x> + c = 0 in the data's box."),
    FigureSpec(name="halfspaces_per_layer_shallow", table="halfspaces", kind="line", x="x", y="y", hue="unit",
               col="layer", row="dataset", where={"seed": 0, "gating": "shallow"}, sharey=False, height=2.6,
               title="Learned half-space boundaries per layer, shallow-features DLGN (seed 0)",
               caption="Each line is one gate's boundary <a, x> + c = 0 in the data's box."),
    FigureSpec(name="top_path_regions", table="region_map", kind="scatter", x="x", y="y", hue="region",
               col="dataset", row="gating", where={"seed": 0}, height=3.0,
               title="Path regions with the largest value weight (seed 0)",
               caption="Grid cells near the data inside each top path region (a cell in several regions shows the "
                       "highest-ranked)."),
    FigureSpec(name="target", table="target_map", kind="scatter", x="x", y="y", hue="label", col="dataset",
               where={"seed": 0}, height=3.0, title="Target (1-NN label of the training data, seed 0)"),
]

STUDY = Study(
    name="s4_halfspaces", run_one=run_one, quick=QUICK, full=FULL, seeds=SEEDS,
    title="S4 — Half-space features of DLGNs on 2-D targets", paper=PAPER,
    description=("DLGNs as in Yadav et al. 2024 (value network fed ones, value biases zero and frozen) with a deep "
                 "linear gating chain, and shallow-features DLGNs (DLGN-SF: every gating layer reads the input), "
                 "with soft gates annealed from beta = 1 to 16, are trained with Adam on two moons, xor and "
                 "spirals (quick: width 12, depth 6, 30 epochs, 1000 samples, 3 seeds; full: width 16, depth 6, "
                 "40 epochs, 2000 samples, 10 seeds). A quarter of each training set is held out (stratified) "
                 "to choose the learning rate of every arm from the grid; the test split serves only the reported "
                 "test accuracy. Controls: the same network with its gating frozen at initialisation (only the "
                 "value network trained); random intersections of as many half-planes as layers holding the same "
                 "number of grid cells as a path region; the network at initialisation; a random move of the "
                 "gating weights of the trained size. Claims, bounds and reasons are fixed in the study's "
                 "registry (table decisions); " + REGISTRY.changes_text().replace("\n", "; ") + "."),
    claims=REGISTRY.claims, summarize=summarize, figures=FIGURES, version=REGISTRY.study_version)

if __name__ == "__main__":
    import sepmeasure.cli

    sepmeasure.cli.run_study_script(STUDY)
