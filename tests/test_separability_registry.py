"""The measure registry: options from the measures' signatures, one entry per measure, cores without re-checks."""
from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

import sepmeasure.separability.hull as hull_module
import sepmeasure.separability.mdlsm as mdlsm_module
import sepmeasure.separability.probe as probe_module
import sepmeasure.separability.subset as subset_module
from sepmeasure.separability import (SeparabilityCallback, hull_distance, layer_separability, linear_probe, md_lsm,
                                     separable_subset_fraction)
from sepmeasure.separability.registry import MEASURES, REGISTRY, Measure, resolve_options

PUBLIC = {"md_lsm": md_lsm, "hull_distance": hull_distance, "linear_probe": linear_probe,
          "separable_subset": separable_subset_fraction}


def three_classes(seed=0, n=12, d=4, sep=1.5):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(3).repeat_interleave(n)
    X = torch.randn(3 * n, d, generator=g) + sep * torch.nn.functional.one_hot(y, d).float()
    return X, y


def test_every_measure_is_registered_with_the_defaults_of_its_public_function():
    assert set(REGISTRY) == set(MEASURES) == set(PUBLIC)
    for name, entry in REGISTRY.items():
        params = inspect.signature(PUBLIC[name]).parameters
        opts = entry.options()
        for f in dataclasses.fields(opts):
            assert params[f.name].default == getattr(opts, f.name), (name, f.name)
        # the checked defaults are the defaults
        assert entry.check_options() == opts
        assert entry.returns


def test_options_mapping_reaches_the_measures_and_equals_direct_calls():
    X, y = three_classes()
    options = {"md_lsm": {"method": "approx", "steps": 10, "n_starts": 1},
               "separable_subset": {"steps": 5}, "linear_probe": {"test_fraction": 0.5, "l2": 0.1},
               "hull_distance": {"tol": 1e-4}}
    table = layer_separability({"x": X}, y, measures=MEASURES, options=options, seed=2, progress=False)
    A, B = X[y == 0], X[y == 2]
    rows = table[(table.class_a == 0) & (table.class_b == 2)].set_index("measure")
    h = hull_distance(A, B, tol=1e-4)
    # where the hulls meet, any distance below zero_tol * scale is the answer (the batched rounds of the
    # table stop there, like the single call, but not at the same point)
    assert rows.loc["hull_distance", "value"] == pytest.approx(h.distance, rel=1e-4, abs=h.zero_tol * h.scale)
    assert rows.loc["md_lsm", "value"] == md_lsm(A, B, method="approx", steps=10, n_starts=1, seed=2).value
    assert rows.loc["separable_subset", "value"] == separable_subset_fraction(A, B, steps=5, seed=2).value
    p = linear_probe(A, B, test_fraction=0.5, l2=0.1, seed=2)
    assert rows.loc["linear_probe", "value"] == p.accuracy
    assert rows.loc["linear_probe", "method"] == "logistic probe (held-out 0.5, Wilson 95%)"
    # the short forms are the same options
    short = layer_separability({"x": X}, y, measures=MEASURES, md_lsm_method="approx", hull_tol=1e-4,
                               probe_test_fraction=0.5, seed=2, progress=False)
    full = layer_separability({"x": X}, y, measures=MEASURES, seed=2, progress=False,
                              options={"md_lsm": {"method": "approx"}, "hull_distance": {"tol": 1e-4},
                                       "linear_probe": {"test_fraction": 0.5}})
    assert short.drop(columns="seconds").equals(full.drop(columns="seconds"))


def test_bad_options_name_what_the_caller_wrote():
    X, y = three_classes()
    with pytest.raises(ValueError, match=r"options\['md_lsm'\]\['steps'\]: expected an int >= 0, got -1"):
        layer_separability({"x": X}, y, options={"md_lsm": {"steps": -1}})
    with pytest.raises(TypeError, match=r"options: expected options of md_lsm .*got \['colour'\]"):
        layer_separability({"x": X}, y, options={"md_lsm": {"colour": 1}})
    with pytest.raises(ValueError, match=r"options: expected measure names .*got \['auc'\]"):
        layer_separability({"x": X}, y, options={"auc": {}})
    with pytest.raises(ValueError, match=r"options\['md_lsm'\]\['seed'\]: expected no seed here"):
        layer_separability({"x": X}, y, options={"md_lsm": {"seed": 3}})
    with pytest.raises(ValueError, match=r"md_lsm_method: expected either md_lsm_method or "
                                         r"options\['md_lsm'\]\['method'\], got both"):
        layer_separability({"x": X}, y, md_lsm_method="approx", options={"md_lsm": {"method": "exact"}})
    with pytest.raises(TypeError, match=r"options\['hull_distance'\]: expected a mapping"):
        layer_separability({"x": X}, y, options={"hull_distance": 3})
    with pytest.raises(TypeError, match="options: expected a mapping"):
        layer_separability({"x": X}, y, options=[1])


def test_callback_takes_options_and_short_forms_and_checks_them_at_once():
    SeparabilityCallback(options={"md_lsm": {"steps": 5}}, hull_tol=1e-5)
    with pytest.raises(ValueError, match=r"options\['md_lsm'\]\['steps'\]"):
        SeparabilityCallback(options={"md_lsm": {"steps": -5}})
    with pytest.raises(ValueError, match="hull_max_iter: expected an int >= 1"):
        SeparabilityCallback(hull_max_iter=0)
    with pytest.raises(TypeError, match="options: expected keyword arguments of layer_separability"):
        SeparabilityCallback(md_lsm_steps=5)


def test_tables_call_the_cores_without_checking_each_pair_again(monkeypatch):
    X, y = three_classes()
    calls = []
    for module in (mdlsm_module, subset_module, probe_module, hull_module):
        real = module.check_point_sets
        monkeypatch.setattr(module, "check_point_sets", lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k))
    layer_separability({"x": X}, y, measures=MEASURES, progress=False)
    assert calls == []
    md_lsm(X[:5], X[5:10])                      # the public functions still check
    assert calls == [1]


def test_a_new_measure_is_one_registry_entry(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class GapOptions:
        power: float = 1.0

    def check(**given):
        return GapOptions(**given)

    def compute(pair, options):
        return float((pair.A.mean(0) - pair.B.mean(0)).norm()) ** options.power

    def row(gap, options):
        return {"value": gap, "lower": gap, "upper": gap, "method": "mean gap", "status": "exact"}

    monkeypatch.setitem(REGISTRY, "mean_gap", Measure("mean_gap", GapOptions, check, compute, row,
                                                      "distance of the means"))
    X, y = three_classes()
    table = layer_separability({"x": X}, y, measures=("mean_gap",), options={"mean_gap": {"power": 2.0}},
                               progress=False)
    expected = float((X[y == 1].mean(0) - X[y == 2].mean(0)).norm()) ** 2
    assert table[(table.class_a == 1) & (table.class_b == 2)]["value"].item() == pytest.approx(expected)
    assert set(resolve_options()) == set(REGISTRY)


def test_wilson_interval_from_scipy_equals_the_closed_form():
    """The interval now comes from scipy; the closed form it replaced, written out here, gives the
    same numbers (to float64 rounding) on every count up to n = 60 and three levels."""
    import math

    from sepmeasure.separability import wilson_interval

    def closed_form(k, n, z):
        p = k / n
        denom = 1 + z * z / n
        center = (p + z * z / (2 * n)) / denom
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
        return (0.0 if k == 0 else max(0.0, center - half)), (1.0 if k == n else min(1.0, center + half))

    for z in (1.959963984540054, 1.0, 2.5758293035489):
        for n in range(1, 61):
            for k in range(n + 1):
                lo, hi = wilson_interval(k, n, z)
                elo, ehi = closed_form(k, n, z)
                assert lo == pytest.approx(elo, abs=2e-15) and hi == pytest.approx(ehi, abs=2e-15), (k, n, z)
