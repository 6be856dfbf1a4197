"""The registry of separability measures: one entry per measure of the per-layer tables.

:func:`~sepmeasure.separability.tables.layer_separability`,
:class:`~sepmeasure.separability.callback.SeparabilityCallback`, the docs and the tests read
this table; adding a measure is one :class:`Measure` entry in :data:`REGISTRY`:

* ``name`` — the value of the table's ``measure`` column;
* ``options`` / ``check_options`` — a frozen dataclass of the measure's options whose names
  and defaults are read from the public function's signature
  (:func:`~sepmeasure.separability.options.options_from_signature`), and the function that
  checks a set of them once, at the boundary;
* ``compute`` — ``compute(pair, options) -> result``: the private core of the measure on one
  checked pair (:class:`PairInput`); ``row(result, options)`` gives the row's ``value, lower,
  upper, method, status``, and ``held_out(result, pair)`` the ``held_out_*`` columns on the
  pair's held-out sets (``None``: the measure has no held-out reading);
* ``returns`` — what ``value`` is, in a sentence (for the docs);
* ``uses_hull`` — whether the core reuses the layer's batched hull solve; ``solved_per_layer``
  — whether the row *is* that solve (its ``seconds`` are then the solve's share per pair);
* ``aliases`` — flat keywords of ``layer_separability`` kept for compatibility
  (``md_lsm_method`` is ``options={"md_lsm": {"method": ...}}``).

The hull options are used for the layer's hull solve whenever a measure needs it, also when
``"hull_distance"`` itself is not asked for.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from ..validation import describe
from .hull import HullDistance, HullOptions, check_hull_options
from .mdlsm import MDLSMOptions, check_md_lsm_options, md_lsm_core
from .heldout import held_out_auc_core
from .probe import ProbeOptions, check_probe_options, linear_probe_core, wilson_interval
from .subset import SubsetOptions, check_subset_options, separable_subset_core

__all__ = ["Measure", "PairInput", "REGISTRY", "MEASURES", "check_measures", "resolve_options"]


class PairInput(NamedTuple):
    """One checked pair of point sets of a layer, the layer's hull result for it (or None) and,
    for held-out tables, the pair's held-out sets ``(A_test, B_test)``."""

    A: torch.Tensor
    B: torch.Tensor
    hull: HullDistance | None
    test: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass(frozen=True)
class Measure:
    """One measure of the per-layer tables (see the module notes)."""

    name: str
    options: type
    check_options: Callable[..., Any]
    compute: Callable[[PairInput, Any], Any]
    row: Callable[[Any, Any], dict[str, Any]]
    returns: str
    held_out: Callable[[Any, PairInput], dict[str, Any]] | None = None
    uses_hull: bool = False
    solved_per_layer: bool = False
    aliases: Mapping[str, str] = field(default_factory=dict)


def _certified_row(r: Any, options: Any) -> dict[str, Any]:
    return {"value": r.value, "lower": r.lower, "upper": r.upper, "method": r.method, "status": r.status}


def _hull_row(h: HullDistance, options: Any) -> dict[str, Any]:
    return {"value": h.distance, "lower": h.lower, "upper": h.upper, "method": h.method, "status": h.status}


def _direction_auc(result: Any, pair: PairInput) -> dict[str, Any]:
    """Held-out AUC of the result's ``normal`` on the pair's test sets."""
    r = held_out_auc_core(result.normal, *pair.test)
    return {"held_out_value": r.value, "held_out_lower": r.lower, "held_out_upper": r.upper,
            "held_out_interval": r.interval}


def _hull_auc(h: HullDistance, pair: PairInput) -> dict[str, Any]:
    if h.separable is not True:
        nan = float("nan")
        return {"held_out_value": nan, "held_out_lower": nan, "held_out_upper": nan,
                "held_out_interval": "none (training hulls not separable)"}
    return _direction_auc(h, pair)


def _subset_accuracy(result: Any, pair: PairInput) -> dict[str, Any]:
    """Held-out accuracy of the kept-subset classifier (``x @ normal > offset`` is A)."""
    At, Bt = pair.test
    if result.normal is None:
        nan = float("nan")
        return {"held_out_value": nan, "held_out_lower": nan, "held_out_upper": nan,
                "held_out_interval": "Wilson 95%"}
    w = result.normal.to(At.device)
    right = int((At.to(torch.float64) @ w > result.offset).sum() + (Bt.to(torch.float64) @ w < result.offset).sum())
    total = At.shape[0] + Bt.shape[0]
    lo, hi = wilson_interval(right, total)
    return {"held_out_value": right / total, "held_out_lower": lo, "held_out_upper": hi,
            "held_out_interval": "Wilson 95%"}


def _probe(pair: PairInput, options: Any) -> Any:
    if pair.test is None and (pair.A.shape[0] < 2 or pair.B.shape[0] < 2):
        return None
    return linear_probe_core(pair.A, pair.B, options, test=pair.test)


def _probe_row(p: Any, options: Any) -> dict[str, Any]:
    if p is None:
        nan = float("nan")
        return {"value": nan, "lower": nan, "upper": nan, "method": "logistic probe", "status": "too_few_points"}
    split = "held-out sets" if p.seed is None else f"held-out {options.test_fraction:g}"
    return {"value": p.accuracy, "lower": p.lower, "upper": p.upper,
            "method": f"logistic probe ({split}, Wilson 95%)", "status": f"n_test={p.n_test}"}


def _probe_held_out(p: Any, pair: PairInput) -> dict[str, Any]:
    return {"held_out_value": p.accuracy, "held_out_lower": p.lower, "held_out_upper": p.upper,
            "held_out_interval": "Wilson 95%"}


REGISTRY: dict[str, Measure] = {m.name: m for m in (
    Measure("md_lsm", MDLSMOptions, check_md_lsm_options,
            lambda pair, o: md_lsm_core(pair.A, pair.B, o, hull=pair.hull), _certified_row,
            "MD-LSM: the largest fraction of pairs (a_i, b_j) one direction orders strictly (certified interval); "
            "held out: the test AUC of its direction (DeLong 95%)",
            held_out=_direction_auc, uses_hull=True, aliases={"md_lsm_method": "method"}),
    Measure("hull_distance", HullOptions, check_hull_options, lambda pair, o: pair.hull, _hull_row,
            "distance between the convex hulls (certified interval); > 0 iff strictly separable; "
            "held out: the test AUC of the separating hyperplane's normal (DeLong 95%), NaN when the "
            "training hulls are not certified separable (the normal is then not a separating direction)",
            held_out=_hull_auc, uses_hull=True, solved_per_layer=True,
            aliases={"hull_tol": "tol", "hull_max_iter": "max_iter"}),
    Measure("linear_probe", ProbeOptions, check_probe_options, _probe, _probe_row,
            "held-out accuracy of a logistic-regression probe (95% Wilson interval); with held-out sets it is "
            "fitted on the training part and tested on them",
            held_out=_probe_held_out, aliases={"probe_test_fraction": "test_fraction"}),
    Measure("separable_subset", SubsetOptions, check_subset_options,
            lambda pair, o: separable_subset_core(pair.A, pair.B, o, hull=pair.hull), _certified_row,
            "the largest fraction of the points one hyperplane keeps strictly separated (certified interval); "
            "held out: that classifier's test accuracy (Wilson 95%)",
            held_out=_subset_accuracy, uses_hull=True, aliases={"subset_method": "method"}),
)}

MEASURES = tuple(REGISTRY)
HULL = "hull_distance"   # the entry whose options drive a layer's batched hull solve


def check_measures(measures: Any) -> tuple[str, ...]:
    """Check a sequence of registered measure names (a single name is accepted); return a tuple."""
    if isinstance(measures, str):
        measures = (measures,)
    try:
        out = tuple(measures)
    except TypeError:
        raise TypeError(f"measures: expected a sequence of measure names from {MEASURES}, "
                        f"got {describe(measures)}") from None
    if not out:
        raise ValueError(f"measures: expected at least one of {MEASURES}, got an empty sequence")
    for m in out:
        if m not in REGISTRY:
            raise ValueError(f"measures: expected names from {MEASURES}, got {m!r}")
    return out


def resolve_options(options: Any = None, flat: Mapping[str, Any] | None = None,
                    seed: int | None = None) -> dict[str, Any]:
    """Checked options of every registered measure, from ``options`` and the flat aliases.

    ``options`` is ``None`` or ``{measure name: {option: value}}``; ``flat`` holds the alias
    keywords (``md_lsm_method``, ``hull_tol``, ...; ``None`` values mean "not given"). Unset
    options keep the measure's own defaults. ``seed`` (when given) is the seed of every measure
    that has one; ``options`` may not set it. Errors name the argument as the caller wrote it
    (``md_lsm_method: ...`` or ``options['md_lsm']['method']: ...``).
    """
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise TypeError(f"options: expected a mapping {{measure name: {{option: value}}}}, got {describe(options)}")
    unknown = [k for k in options if k not in REGISTRY]
    if unknown:
        raise ValueError(f"options: expected measure names from {MEASURES} as keys, got {unknown}")
    flat = dict(flat or {})
    out = {}
    for name, measure in REGISTRY.items():
        given = options.get(name, {})
        if not isinstance(given, Mapping):
            raise TypeError(f"options[{name!r}]: expected a mapping {{option: value}}, got {describe(given)}")
        kwargs = dict(given)
        labels = {k: f"options[{name!r}][{k!r}]" for k in kwargs}
        if seed is not None and "seed" in kwargs:
            raise ValueError(f"options[{name!r}]['seed']: expected no seed here (the tables seed every measure "
                             f"with their own seed argument), got {kwargs['seed']!r}")
        for alias, option in measure.aliases.items():
            value = flat.pop(alias, None)
            if value is None:
                continue
            if option in kwargs:
                raise ValueError(f"{alias}: expected either {alias} or {labels[option]}, got both")
            kwargs[option] = value
            labels[option] = alias
        try:
            checked = measure.check_options(**kwargs)
        except (TypeError, ValueError) as exc:
            raise _renamed(exc, labels) from None
        if seed is not None and "seed" in {f.name for f in dataclasses.fields(checked)}:
            checked = dataclasses.replace(checked, seed=seed)
        out[name] = checked
    if flat:
        raise TypeError(f"options: expected keyword arguments of layer_separability, got {sorted(flat)}")
    return out


def _renamed(exc: Exception, labels: Mapping[str, str]) -> Exception:
    """The same error with its leading ``option:`` replaced by the name the caller used."""
    text = str(exc)
    head, sep, rest = text.partition(":")
    if sep and head in labels:
        return type(exc)(f"{labels[head]}:{rest}")
    return exc
