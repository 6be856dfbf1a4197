"""Arguments of the separability measures that used to reach torch, pandas or the allocator."""
from __future__ import annotations

import pytest
import torch

import sepmeasure as sm

A = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
B = torch.randn(6, 3, generator=torch.Generator().manual_seed(1)) + 1.0


@pytest.mark.parametrize("measure", [sm.md_lsm, sm.separable_subset_fraction])
@pytest.mark.parametrize("method", ["exact", "approx"])
@pytest.mark.parametrize("kwargs, pattern", [
    (dict(n_starts=10**12), r"n_starts: expected an int <= 10000"),
    (dict(steps=10**12), r"steps: expected an int <= 1000000"),
    (dict(seed=2**70), r"seed: expected an int <= 9223372036854775807"),
])
def test_search_sizes_and_seeds_are_bounded_before_anything_is_allocated(measure, method, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        measure(A, B, method=method, **kwargs)
    r = measure(A, B, method=method, n_starts=3, steps=30, seed=2**63 - 1)   # the bounds themselves are valid
    assert 0.5 <= r.value <= 1


def test_linear_probe_seed_and_an_overflowing_penalty():
    with pytest.raises(ValueError, match="seed: expected an int <= "):
        sm.linear_probe(A, B, seed=2**70)
    with pytest.raises(ValueError, match="l2: the logistic fit overflowed with l2=1e\\+300"):
        sm.linear_probe(A, B, l2=1e300)
    strong = sm.linear_probe(A, B, l2=1e6)           # a large finite penalty still fits
    assert bool(torch.isfinite(strong.normal).all())


def test_layer_separability_seed_and_summary_columns():
    X = torch.randn(12, 3, generator=torch.Generator().manual_seed(2))
    y = torch.arange(12) % 3
    with pytest.raises(ValueError, match="seed: expected an int <= "):
        sm.layer_separability({"x": X}, y, measures=("linear_probe",), seed=2**70, progress=False)
    table = sm.layer_separability({"x": X}, y, measures=("linear_probe",), progress=False)
    assert len(sm.separability_summary(table)) == 1
    with pytest.raises(ValueError, match="table: expected numeric columns value, lower and upper, got value of dtype"):
        sm.separability_summary(table.astype({"value": str}))


def test_classes_must_be_a_sequence_of_int_labels():
    X = torch.randn(12, 3, generator=torch.Generator().manual_seed(3))
    y = torch.arange(12) % 3
    for bad, error, pattern in (("ab", TypeError, "classes: expected a sequence of int labels, got str"),
                                (3, TypeError, "classes: expected a sequence of int labels, got int"),
                                ([0, 1.5], TypeError, r"classes\[1\]: expected an int, got float")):
        with pytest.raises(error, match=pattern):
            sm.pairwise_hull_distances(X, y, pairs="ovr", classes=bad, progress=False)
    by_list = sm.pairwise_hull_distances(X, y, pairs="ovr", classes=[0, 1], progress=False)
    by_tensor = sm.pairwise_hull_distances(X, y, pairs="ovr", classes=torch.tensor([0, 1]), progress=False)
    assert len(by_list) == len(by_tensor) == 2


def test_a_held_out_split_seed_beyond_32_bits_is_named():
    """The held-out split is scikit-learn's train_test_split (32-bit random_state): a larger seed
    is an error naming seed, not scikit-learn's InvalidParameterError; the largest one works."""
    X = torch.randn(30, 3, generator=torch.Generator().manual_seed(4))
    y = torch.arange(30) % 2
    with pytest.raises(ValueError, match=r"seed: expected an int <= 4294967295 \(the split is scikit-learn"):
        sm.layer_separability({"x": X}, y, measures=("linear_probe",), held_out=0.3, seed=2**40, progress=False)
    t = sm.layer_separability({"x": X}, y, measures=("linear_probe",), held_out=0.3, seed=2**32 - 1, progress=False)
    assert len(t) == 1
