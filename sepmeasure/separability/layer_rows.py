"""Per-layer rows of the held-out separability measures, as the synchronicity (S1) and architecture
(S2) studies read them: MD-LSM in sample and held out, the relative hull distance and a
class-balanced held-out logistic probe, one tidy row per layer, class pair and measure.

Built on :func:`~sepmeasure.separability.layer_separability` (its ``held_out=`` split) and the
held-out AUC of :mod:`sepmeasure.separability.heldout`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch

from .heldout import held_out_auc
from .probe import fit_logistic
from .tables import add_relative_hull_distance, layer_separability

__all__ = ["HELD_OUT_LAYER_MEASURES", "held_out_layer_rows", "held_out_probe_rows"]


def held_out_probe_rows(acts: Mapping[str, torch.Tensor], y: torch.Tensor, table: pd.DataFrame) -> list[dict]:
    """Held-out balanced accuracy and AUC of a class-balanced logistic probe, per layer and class pair.

    ``table`` is a :func:`~sepmeasure.separability.layer_separability` table made with
    ``held_out=...``: its ``attrs`` name the subsample and the rows it held out; the probe
    (:func:`~sepmeasure.separability.probe.fit_logistic`) is fitted on the other rows of the
    subsample for every ``(layer, class_a, class_b)`` of the table (``class_b`` may be
    ``"rest"``) and read on the held-out rows: one ``linear_probe`` row (balanced accuracy) and
    one ``probe_auc`` row (:func:`held_out_auc`) each, with ``n_a``, ``n_b`` the fitting rows.
    """
    test_rows = sorted(int(i) for i in table.attrs["held_out_rows"])
    held = set(test_rows)
    train_rows = [int(i) for i in table.attrs["subsample"] if int(i) not in held]
    y = y.cpu()
    ytr, yte = y[train_rows], y[test_rows]
    out = []
    for layer, a, b in table[["layer", "class_a", "class_b"]].drop_duplicates().itertuples(index=False):
        X = acts[layer].reshape(len(y), -1).to(torch.float64).cpu()
        Xtr, Xte = X[train_rows], X[test_rows]
        in_a_tr, in_a_te = ytr == int(a), yte == int(a)
        in_b_tr = (ytr != int(a)) if b == "rest" else ytr == int(b)
        in_b_te = (yte != int(a)) if b == "rest" else yte == int(b)
        keep = in_a_tr | in_b_tr
        w, bias = fit_logistic(Xtr[keep], in_a_tr[keep].long())
        s = Xte @ w + bias
        balanced = 0.5 * (float((s[in_a_te] > 0).double().mean()) + float((s[in_b_te] <= 0).double().mean()))
        auc = held_out_auc(w, Xte[in_a_te], Xte[in_b_te]).value
        base = {"layer": layer, "class_a": a, "class_b": b, "n_a": int(in_a_tr.sum()), "n_b": int(in_b_tr.sum())}
        out.append({**base, "measure": "linear_probe", "value": balanced})
        out.append({**base, "measure": "probe_auc", "value": float(auc)})
    return out


HELD_OUT_LAYER_MEASURES = {
    "md_lsm_held_out": "held-out MD-LSM (test AUC of the MD-LSM direction)",
    "md_lsm": "in-sample MD-LSM", "hull_distance": "hull distance",
    "relative_hull_distance": "hull distance relative to the layer's spread (in sample)",
    "linear_probe": "held-out balanced accuracy of a logistic probe",
    "probe_auc": "held-out AUC of a logistic probe"}
"""What each ``measure`` of the rows of :func:`held_out_layer_rows` is, in words (for claims and reports)."""


def held_out_layer_rows(acts: Mapping[str, torch.Tensor], y: torch.Tensor, pairs: Any, seed: int,
                        held_out: float, layers: Mapping[str, int], device: Any = "cpu") -> pd.DataFrame:
    """MD-LSM in sample and held out, relative hull distance and the held-out probe, one row per measure.

    For every layer of ``acts`` and class pair of ``pairs``
    (:func:`~sepmeasure.separability.layer_separability` with ``measures=("md_lsm",
    "hull_distance")``, every row of ``y``, ``held_out`` of each class set aside): the rows
    ``md_lsm`` and ``hull_distance`` (in sample), ``relative_hull_distance``
    (:func:`~sepmeasure.separability.add_relative_hull_distance`), ``md_lsm_held_out`` (the test
    AUC of the MD-LSM direction, the table's ``held_out_value``) and the probe's
    ``linear_probe`` and ``probe_auc`` (:func:`held_out_probe_rows`), with the columns
    ``layer, class_a, class_b, measure, value, n_a, n_b`` and ``layer_index`` (``layers[layer]``).
    """
    table = layer_separability(acts, y.to(device), measures=("md_lsm", "hull_distance"), pairs=pairs,
                               max_per_class=None, seed=seed, device=device, held_out=held_out, progress=False)
    probes = pd.DataFrame(held_out_probe_rows(acts, y, table))
    held = table[table["measure"] == "md_lsm"].assign(measure="md_lsm_held_out", value=lambda t: t["held_out_value"])
    base = add_relative_hull_distance(table.drop(columns=["seed"], errors="ignore"), acts)
    cols = ["layer", "class_a", "class_b", "measure", "value", "n_a", "n_b"]
    out = pd.concat([base[cols], held[cols], probes[cols]], ignore_index=True)
    return out.assign(layer_index=out["layer"].map(layers))
