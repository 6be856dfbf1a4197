"""Per-layer separability tables: one row per (layer, class pair, measure).

:func:`layer_separability` runs the measures of Zhang et al. 2023 (arXiv 2307.13962) — MD-LSM
and the hull distance — next to the usual logistic-regression probe (and, on request, the
separable-subset fraction) on every recorded layer, for one-vs-one or one-vs-rest class pairs.
:func:`separability_summary` condenses such a table to one row per layer and measure.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch

from .._progress import progress_bar, wanted
from ..validation import check_features, check_int, check_labels, check_seed, describe
from .heldout import stratified_split
from .hull import solve_pairs
from .pointsets import class_pairs
from .registry import HULL, MEASURES, REGISTRY, PairInput, check_measures, resolve_options

__all__ = ["MEASURES", "COLUMNS", "layer_separability", "separability_summary", "balanced_subsample",
           "class_subsample", "add_relative_hull_distance"]

COLUMNS = ["layer", "class_a", "class_b", "measure", "value", "lower", "upper", "method", "status",
           "n_a", "n_b", "d", "seed", "max_per_class", "seconds"]
HELD_OUT_COLUMNS = ["held_out_value", "held_out_lower", "held_out_upper", "held_out_interval", "n_test_a", "n_test_b",
                    "held_out"]


def balanced_subsample(labels: torch.Tensor, max_per_class: int | None, seed: int) -> torch.Tensor:
    """Indices (sorted) of at most ``max_per_class`` rows of every class, drawn with ``seed``.

    The draw uses a CPU generator, so it is the same on every device.

    Parameters
    ----------
    labels : Tensor of shape (N,)
        Class labels (any device).
    max_per_class : int or None
        Rows kept per class; ``None`` keeps every row.
    seed : int
        Seeds the draw.

    Returns
    -------
    Tensor of shape (K,)
        Sorted int64 row indices, on the CPU.

    Examples
    --------
    >>> balanced_subsample(torch.tensor([0, 0, 0, 1, 1]), 2, seed=0).tolist()
    [0, 2, 3, 4]
    """
    y = check_labels(labels, "labels").cpu()
    seed = check_seed(seed)
    if max_per_class is not None:
        max_per_class = check_int(max_per_class, "max_per_class", minimum=1)
    if max_per_class is None:
        return torch.arange(y.shape[0])
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(y).tolist():
        rows = torch.nonzero(y == c).flatten()
        if rows.numel() > max_per_class:
            rows = rows[torch.randperm(rows.numel(), generator=g)[:max_per_class]]
        keep.append(rows)
    return torch.sort(torch.cat(keep)).values


def class_subsample(labels: torch.Tensor, classes: Sequence[int], per_class: int, seed: int) -> torch.Tensor:
    """Indices of ``per_class`` rows of each of ``classes``, class by class in the given order.

    Within a class the rows come in the order of a seeded random permutation
    (a CPU generator, so the draw is the same on every device); a class with
    fewer rows contributes all of them. Use it to measure the same points at
    every epoch or for every model of a grid.

    Parameters
    ----------
    labels : Tensor or array of shape (N,)
        Integer class labels (any device).
    classes : sequence of int
        The classes to draw from, distinct and present in ``labels``; the result follows their order.
    per_class : int
        Rows drawn per class (>= 1).
    seed : int
        Seeds the draw.

    Returns
    -------
    Tensor of shape (K,)
        int64 row indices, on the CPU, ``classes[0]``'s first.

    Raises
    ------
    TypeError
        ``labels`` is not a tensor, array or nested list of integers (booleans and complex numbers
        are refused); ``per_class`` is not an int (bools are refused).
    ValueError
        ``labels`` is not 1-D or holds non-integer values; ``per_class`` < 1; ``classes`` is not a
        non-empty sequence (a string counts as none), names a class with no rows in ``labels``, or
        repeats a class.

    Examples
    --------
    >>> class_subsample(torch.tensor([0, 1, 2, 1, 0, 2, 1]), [2, 1], per_class=2, seed=0).tolist()
    [2, 5, 1, 6]
    """
    y = check_labels(labels, "labels").cpu()
    per_class = check_int(per_class, "per_class", minimum=1)
    seed = check_seed(seed)
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence) or len(classes) == 0:
        raise ValueError(f"classes: expected a non-empty sequence of class labels, got {describe(classes)}")
    present = set(torch.unique(y).tolist())
    absent = [c for c in classes if c not in present]
    if absent:
        raise ValueError(f"classes: expected labels that occur in labels ({sorted(present)}), got {absent} "
                         f"with no rows")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes: expected distinct classes, got {list(classes)}")
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in classes:
        rows = torch.nonzero(y == c).flatten()
        picks.append(rows[torch.randperm(rows.numel(), generator=g)[:per_class]])
    return torch.cat(picks)


def add_relative_hull_distance(table: pd.DataFrame, activations: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """Append ``relative_hull_distance`` rows: each hull distance over its layer's RMS spread.

    The spread of a layer is the root-mean-square distance of its (flattened)
    rows in ``activations`` to their centroid, so the relative distance is
    unchanged when a layer is scaled and can be compared across layers and
    widths. The new rows copy the hull-distance rows with ``value``,
    ``lower`` and ``upper`` divided by the spread, and carry it in a
    ``layer_spread`` column. ``activations`` must hold the points the table
    was computed from.

    Parameters
    ----------
    table : pandas.DataFrame
        A table of :func:`layer_separability` (at least the columns ``layer``, ``measure``,
        ``value``, ``lower``, ``upper``).
    activations : mapping of str to Tensor, or Tensor
        ``{layer name: Tensor[N, ...]}`` as given to :func:`layer_separability` (a single tensor
        is the layer ``"features"``).

    Returns
    -------
    pandas.DataFrame
        ``table`` followed by one ``relative_hull_distance`` row per ``hull_distance`` row, with the
        extra column ``layer_spread`` (NaN on the original rows).

    Raises
    ------
    TypeError
        ``table`` is not a DataFrame; ``activations`` is neither a tensor nor a mapping.
    ValueError
        ``table`` lacks one of the columns above; ``activations`` is an empty mapping, or has no
        entry for a layer of the table's hull-distance rows.

    Examples
    --------
    >>> X = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [2.0, 4.0]])
    >>> t = layer_separability({"x": X}, torch.tensor([0, 0, 1, 1]), measures=("hull_distance",))
    >>> out = add_relative_hull_distance(t, {"x": X})
    >>> out[["measure", "value"]].round(4).values.tolist()
    [['hull_distance', 4.0], ['relative_hull_distance', 1.7889]]
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table: expected the DataFrame of layer_separability, got {describe(table)}")
    missing = {"layer", "measure", "value", "lower", "upper"} - set(table.columns)
    if missing:
        raise ValueError(f"table: expected the columns of layer_separability, got {list(table.columns)} "
                         f"(missing {sorted(missing)})")
    layers = _layers_of(activations)
    hull = table[table["measure"] == "hull_distance"].copy()
    unknown = sorted(set(hull["layer"]) - set(layers))
    if unknown:
        raise ValueError(f"activations: expected every layer of the table's hull distances, got none for "
                         f"{unknown} (have {sorted(layers)})")
    spread = {}
    for name in set(hull["layer"]):
        x = layers[name].reshape(layers[name].shape[0], -1).double()
        spread[name] = float((x - x.mean(0)).pow(2).sum(1).mean().sqrt())
    scale = hull["layer"].map(spread)
    for col in ("value", "lower", "upper"):
        hull[col] = hull[col] / scale
    hull["measure"] = "relative_hull_distance"
    return pd.concat([table, hull.assign(layer_spread=scale)], ignore_index=True)


def _layers_of(activations: Any) -> dict[str, torch.Tensor]:
    if isinstance(activations, torch.Tensor):
        return {"features": activations}
    if isinstance(activations, Mapping):
        if len(activations) == 0:
            raise ValueError("activations: expected at least one layer, got an empty mapping")
        return {str(k): activations[k] for k in activations}
    raise TypeError(f"activations: expected a Tensor or a mapping {{layer name: Tensor}} (e.g. from "
                    f"sepmeasure.capture.record), got {describe(activations)}")


def layer_separability(activations: Any, labels: Any = None,
                       measures: Sequence[str] = ("md_lsm", "hull_distance", "linear_probe"), pairs: Any = "ovo", *,
                       max_per_class: int | None = None, seed: int = 0, device: torch.device | str | None = None,
                       classes: Sequence[int] | None = None, options: Mapping[str, Mapping[str, Any]] | None = None,
                       md_lsm_method: str | None = None, subset_method: str | None = None,
                       hull_tol: float | None = None, hull_max_iter: int | None = None,
                       probe_test_fraction: float | None = None, held_out: float | None = None,
                       progress: bool = True) -> pd.DataFrame:
    """Separability of every layer for every class pair, as a tidy table.

    Measures (rows of the table, per layer and class pair):

    * ``"md_lsm"`` — MD-LSM of Zhang et al. 2023 (arXiv 2307.13962): the largest fraction of
      the differences :math:`a_i-b_j` that one hyperplane through the origin leaves strictly on
      one side (:func:`~sepmeasure.separability.mdlsm.md_lsm`); ``lower``/``upper`` certified.
    * ``"hull_distance"`` — distance between the convex hulls (positive iff separable; twice
      the hard-margin SVM margin) with its certified interval
      (:func:`~sepmeasure.separability.hull.hull_distance`); all pairs of a layer are solved
      together.
    * ``"linear_probe"`` — held-out accuracy of a logistic-regression probe fitted in torch
      (:func:`~sepmeasure.separability.probe.linear_probe`, stratified split of
      ``probe_test_fraction``); ``lower``/``upper`` is a 95% Wilson interval, a statistical
      interval rather than a certificate.
    * ``"separable_subset"`` — the largest fraction of the pair's points a hyperplane can keep
      strictly separated (:func:`~sepmeasure.separability.subset.separable_subset_fraction`).

    Parameters
    ----------
    activations : mapping of str to Tensor, or Tensor
        ``{layer name: Tensor[N, ...]}`` (for example :func:`sepmeasure.capture.record`'s
        result); each layer is flattened to ``[N, d]``. A single tensor is the layer
        ``"features"``.
    labels : Tensor of shape (N,), optional
        Class labels; default ``activations.labels``.
    measures : sequence of str, default ("md_lsm", "hull_distance", "linear_probe")
        Any of ``"md_lsm"``, ``"hull_distance"``, ``"linear_probe"``, ``"separable_subset"`` (a
        single name is accepted).
    pairs : "ovo", "ovr" or list of (class_a, class_b), default "ovo"
        One-vs-one, one-vs-rest (``class_b == "rest"``) or explicit pairs.
    max_per_class : int, optional
        Keep at most this many samples of each class (the same samples for every layer), drawn
        with ``seed``; recorded in the table.
    seed : int, default 0
        Seeds the subsample, the probe's split and the random starts of the measures.
    device : device, optional
        Where to compute (default: where each layer's tensor lives).
    classes : sequence of int, optional
        Only these classes.
    options : mapping, optional
        Options of the measures, ``{measure name: {option: value}}``, with the names and defaults
        of the measure's public function (:func:`md_lsm`, :func:`hull_distance`,
        :func:`linear_probe`, :func:`separable_subset_fraction`; see
        :data:`~sepmeasure.separability.registry.REGISTRY`). Seeds come from ``seed``. The
        ``"hull_distance"`` options drive the layer's hull solve that ``md_lsm`` and
        ``separable_subset`` reuse.
    md_lsm_method, subset_method, hull_tol, hull_max_iter, probe_test_fraction : optional
        Short forms of ``options`` (``md_lsm``'s and ``separable_subset``'s ``method``,
        ``hull_distance``'s ``tol`` and ``max_iter``, ``linear_probe``'s ``test_fraction``);
        ``None`` keeps the measure's default. A pair with a class of fewer than 2 points gets NaN
        and the status ``"too_few_points"`` for ``"linear_probe"``.
    held_out : float in (0, 1), optional
        Hold out this share of every class (after ``max_per_class``; stratified, seeded by
        ``seed``, the same rows for every layer; scikit-learn's ``train_test_split``). Every
        measure is then computed on the rest and read on the held-out rows as well, in the extra
        columns ``held_out_value, held_out_lower, held_out_upper, held_out_interval, n_test_a,
        n_test_b, held_out``: for ``md_lsm`` and ``hull_distance`` the test AUC of their
        direction with DeLong's 95% interval
        (:func:`~sepmeasure.separability.heldout.held_out_auc`), for ``separable_subset`` its
        classifier's test accuracy, for ``linear_probe`` the accuracy of a probe fitted on the
        training rows (then also its ``value``), both with Wilson 95% intervals. In-sample
        values saturate when ``d`` is large against the points; held-out ones do not.
        ``attrs["held_out_rows"]`` holds the held-out row indices.
    progress : bool, default True
        Progress bar over layers and pairs (on a terminal or in a notebook, after a second).

    Returns
    -------
    pandas.DataFrame
        One row per (layer, class_a, class_b, measure) with columns ``layer, class_a, class_b,
        measure, value, lower, upper, method, status, n_a, n_b, d, seed, max_per_class,
        seconds``. ``attrs["subsample"]`` holds the indices of the rows used.

    Raises
    ------
    TypeError
        ``activations`` is neither a tensor nor a mapping, or one of its layers is not a tensor or
        array of real numbers; ``labels`` is not a tensor, array or nested list of integers
        (booleans and complex numbers are refused); ``measures`` is not a sequence of names;
        ``seed`` or ``max_per_class`` is not an int (bools are refused); ``progress`` is not a bool;
        ``hull_max_iter`` is not an int; ``hull_tol`` or ``probe_test_fraction`` is not a real number.
    ValueError
        ``activations`` is an empty mapping, or a layer has fewer than 2 dimensions, no rows,
        NaN/inf entries or another number of rows than ``labels``; ``labels`` is None and
        ``activations`` has no ``labels`` attribute, or ``labels`` is not 1-D or holds non-integer
        values; ``measures`` is empty or holds an unknown name; ``seed`` is negative or
        ``max_per_class`` < 1; ``classes`` names a label absent from ``labels``; fewer
        than 2 classes are left; ``pairs`` is not ``"ovo"``, ``"ovr"`` or a non-empty list of pairs
        of two different present classes; ``md_lsm_method`` or ``subset_method`` is not
        ``"auto"``, ``"exact"`` or ``"approx"``; ``hull_tol`` is not > 0; ``hull_max_iter`` < 1;
        ``probe_test_fraction`` is not a number in (0, 1).

    Examples
    --------
    >>> import torch
    >>> X = torch.tensor([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0], [3.0, 1.0], [0.0, 5.0], [1.0, 6.0]])
    >>> y = torch.tensor([0, 0, 1, 1, 2, 2])
    >>> table = layer_separability({"layer": X}, y, measures=("md_lsm", "hull_distance"))
    >>> table[["class_a", "class_b", "measure", "value"]].round(6).values.tolist()
    [[0, 1, 'md_lsm', 1.0], [0, 1, 'hull_distance', 3.0], [0, 2, 'md_lsm', 1.0], [0, 2, 'hull_distance', 4.0], [1, 2, 'md_lsm', 1.0], [1, 2, 'hull_distance', 5.0]]
    """
    layers = _layers_of(activations)
    if labels is None:
        labels = getattr(activations, "labels", None)
        if labels is None:
            raise ValueError("labels: expected class labels (or activations with a .labels attribute), got None")
    measures = check_measures(measures)
    seed = check_seed(seed)
    wanted(progress)  # checks the argument before any work
    if max_per_class is not None:
        max_per_class = check_int(max_per_class, "max_per_class", minimum=1)
    resolved = resolve_options(options, {"md_lsm_method": md_lsm_method, "subset_method": subset_method,
                                         "hull_tol": hull_tol, "hull_max_iter": hull_max_iter,
                                         "probe_test_fraction": probe_test_fraction}, seed=seed)
    dev = torch.device(device) if device is not None else None
    first = next(iter(layers))
    n_rows = layers[first].shape[0] if isinstance(layers[first], torch.Tensor) and layers[first].ndim else None
    y = check_labels(labels, "labels", n=n_rows, n_name=f"activations[{first!r}]")
    sel = balanced_subsample(y, max_per_class, seed)
    y_sel = y[sel.to(y.device)]
    spec = class_pairs(y_sel, pairs, classes=classes)
    test_spec = None
    if held_out is not None:
        train, test = stratified_split(y_sel, held_out, seed)
        spec = class_pairs(y_sel[train.to(y_sel.device)], pairs, classes=classes)
        test_spec = class_pairs(y_sel[test.to(y_sel.device)], pairs, classes=classes)
        held_out = float(held_out)
    rows: list[dict[str, Any]] = []
    bar = progress_bar(total=len(layers) * len(spec), progress=progress, desc="layer separability", unit="pair",
                       leave=False)
    try:
        for name, tensor in layers.items():
            X = check_features(tensor, f"activations[{name!r}]", ndim=None)
            if X.ndim < 2:
                raise ValueError(f"activations[{name!r}]: expected a tensor of shape [N, ...] with N = "
                                 f"{y.shape[0]}, got {describe(X)}")
            if X.shape[0] != y.shape[0]:
                raise ValueError(f"labels: expected {X.shape[0]} labels (one per row of activations[{name!r}]), "
                                 f"got {y.shape[0]}")
            X = X.reshape(X.shape[0], -1)
            if dev is not None:
                X = X.to(dev)
            X = X[sel.to(X.device)]
            if test_spec is None:
                rows.extend(_layer_rows(name, X, spec, measures, resolved, seed=seed, max_per_class=max_per_class,
                                        bar=bar))
            else:
                rows.extend(_layer_rows(name, X[train.to(X.device)], spec, measures, resolved, seed=seed,
                                        max_per_class=max_per_class, bar=bar, test=(X[test.to(X.device)], test_spec),
                                        held_out=held_out))
    finally:
        bar.close()
    table = pd.DataFrame(rows, columns=COLUMNS if test_spec is None else COLUMNS + HELD_OUT_COLUMNS)
    table.attrs["subsample"] = sel.tolist()
    if test_spec is not None:
        table.attrs["held_out_rows"] = sel[test].tolist()
    table.attrs["seed"] = seed
    table.attrs["max_per_class"] = max_per_class
    return table


def _layer_rows(name: str, X: torch.Tensor, spec: list, measures: tuple[str, ...], options: dict[str, Any], *,
                seed: int, max_per_class: int | None, bar, test: tuple[torch.Tensor, list] | None = None,
                held_out: float | None = None) -> list[dict[str, Any]]:
    """The rows of one layer: one batched hull solve for the pairs, then every measure's core per pair.

    With ``test = (X_test, test_spec)`` (the held-out rows and their pairs, in the order of
    ``spec``) every row also gets the measure's held-out columns.
    """
    dev = X.device
    base = {"layer": name, "d": int(X.shape[1]), "seed": seed, "max_per_class": max_per_class}
    hulls = None
    hull_seconds = float("nan")
    if any(REGISTRY[m].uses_hull for m in measures):
        start = time.perf_counter()
        hulls = solve_pairs(X, [(ra.to(dev), rb.to(dev)) for _, _, ra, rb in spec], options[HULL])
        hull_seconds = (time.perf_counter() - start) / max(len(spec), 1)
    rows = []
    for k, (a, b, ra, rb) in enumerate(spec):
        A, B = X[ra.to(dev)], X[rb.to(dev)]
        held = None
        if test is not None:
            X_test, test_spec = test
            _, _, ta, tb = test_spec[k]
            held = (X_test[ta.to(dev)], X_test[tb.to(dev)])
        pair = PairInput(A, B, hulls[k] if hulls is not None else None, held)
        head = {**base, "class_a": a, "class_b": b, "n_a": int(A.shape[0]), "n_b": int(B.shape[0])}
        for measure in measures:
            entry = REGISTRY[measure]
            start = time.perf_counter()
            result = entry.compute(pair, options[measure])
            row = entry.row(result, options[measure])
            if held is not None:
                nan = float("nan")
                row.update(entry.held_out(result, pair) if entry.held_out is not None else
                           {"held_out_value": nan, "held_out_lower": nan, "held_out_upper": nan,
                            "held_out_interval": "none"})
                row.update(n_test_a=int(held[0].shape[0]), n_test_b=int(held[1].shape[0]), held_out=held_out)
            seconds = hull_seconds if entry.solved_per_layer else time.perf_counter() - start
            rows.append({**head, "measure": measure, **row, "seconds": seconds})
        bar.update(1)
    return rows


def separability_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per layer and measure (and per epoch/step when present), in the table's order.

    Columns: the grouping keys, ``mean``, ``min``, ``max`` of ``value``, ``mean_lower``,
    ``mean_upper``, ``n_pairs`` and ``frac_separable`` — the fraction of pairs certified
    separable (hull distance: ``lower > 0``; MD-LSM and separable subset: ``lower == 1``;
    NaN for the probe, whose accuracy certifies nothing).

    Parameters
    ----------
    table : pandas.DataFrame
        A table of :func:`layer_separability` (at least the columns ``layer``, ``measure``,
        ``value``, ``lower``, ``upper``; ``epoch`` and ``step`` group too when present, as in the
        table of :class:`~sepmeasure.separability.callback.SeparabilityCallback`).

    Returns
    -------
    pandas.DataFrame
        One row per group, with the columns above.

    Raises
    ------
    TypeError
        ``table`` is not a DataFrame.
    ValueError
        ``table`` lacks one of the columns ``layer``, ``measure``, ``value``, ``lower``, ``upper``.

    Examples
    --------
    >>> import torch
    >>> y = torch.tensor([0] * 10 + [1] * 10)
    >>> X = torch.randn(20, 3, generator=torch.Generator().manual_seed(0)) + 4 * y[:, None]
    >>> s = separability_summary(layer_separability({"x": X}, y, measures=("hull_distance",)))
    >>> s[["layer", "measure", "n_pairs", "frac_separable"]].values.tolist()
    [['x', 'hull_distance', 1, 1.0]]
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table: expected the DataFrame of layer_separability, got {describe(table)}")
    needed = {"layer", "measure", "value", "lower", "upper"}
    missing = needed - set(table.columns)
    if missing:
        raise ValueError(f"table: expected columns {sorted(needed)}, got {list(table.columns)} "
                         f"(missing {sorted(missing)})")
    not_numeric = [c for c in ("value", "lower", "upper") if not pd.api.types.is_numeric_dtype(table[c])
                   or pd.api.types.is_bool_dtype(table[c])]
    if not_numeric:
        raise ValueError(f"table: expected numeric columns value, lower and upper, got "
                         f"{', '.join(f'{c} of dtype {table[c].dtype}' for c in not_numeric)}")
    keys = [c for c in ("epoch", "step", "layer", "measure") if c in table.columns]
    t = table.copy()
    certified = pd.Series(float("nan"), index=t.index)
    hull = t["measure"] == "hull_distance"
    certified[hull] = (t.loc[hull, "lower"] > 0).astype(float)
    frac = t["measure"].isin(["md_lsm", "separable_subset"])
    certified[frac] = (t.loc[frac, "lower"] >= 1).astype(float)
    t["_certified"] = certified
    grouped = t.groupby(keys, sort=False, dropna=False)
    out = grouped.agg(mean=("value", "mean"), min=("value", "min"), max=("value", "max"),
                      mean_lower=("lower", "mean"), mean_upper=("upper", "mean"), n_pairs=("value", "size"),
                      frac_separable=("_certified", "mean")).reset_index()
    return out
