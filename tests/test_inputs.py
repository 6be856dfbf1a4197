"""The one input path: labels, casts, detaching and .npz files, through every public entry point."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from sepmeasure import as_dataset, evaluate, fit, load_dataset, load_npz, pairwise_hull_distances, record
from sepmeasure.inputs import BatchSource, cast_inputs, check_cast, check_labels, model_device, model_dtype, read_npz
from sepmeasure.models import MLP
from sepmeasure.validation import MAX_CLASSES, did_you_mean, list_names


# ----------------------------------------------------------------------------
# Labels (issue 19, item 4)
# ----------------------------------------------------------------------------

BAD_LABELS = [
    (np.array([0, 1, 2 ** 64 - 1], dtype=np.uint64), r"within int64"),
    (torch.tensor([0.0, 1.0, 1e30], dtype=torch.float64), r"within int64"),
    ((torch.arange(6) % 3).double() * 1e30, r"within int64"),
    (np.array([0, 1, -1]), r">= 0 \(class indices\), got a minimum of -1"),
    (torch.tensor([0, 1, 2 ** 62]), rf"below {MAX_CLASSES}"),
    (torch.tensor([0.0, 1.0, 2.0 ** 62]), rf"below {MAX_CLASSES}"),
    (np.array([0.0, 0.5, 1.0]), r"integer class labels, got non-integer"),
    (np.array([0.0, np.nan, 1.0]), r"integer class labels"),
]


@pytest.mark.parametrize("labels, pattern", BAD_LABELS)
def test_out_of_range_labels_are_named_errors(labels, pattern):
    with pytest.raises(ValueError, match=r"^y: expected " + ".*" + pattern):
        check_labels(labels, "y")
    n = len(labels)
    with pytest.raises(ValueError, match=r"data\[1\] \(y\): .*" + pattern):
        as_dataset((np.zeros((n, 2)), labels))


def test_float_labels_only_when_exactly_integral():
    assert check_labels(np.array([0.0, 2.0, 1.0]), "y").tolist() == [0, 2, 1]
    assert check_labels(np.array([3, 1], dtype=np.uint64), "y").dtype == torch.int64
    assert check_labels(np.array([MAX_CLASSES - 1, 0]), "y").tolist() == [MAX_CLASSES - 1, 0]
    with pytest.raises(ValueError, match=r"integer class labels"):
        check_labels(torch.tensor([1.0 + 2 ** -20]), "y")


def test_pairwise_hull_distances_refuses_labels_that_would_merge():
    # float labels of 1e30 used to be cast to INT64_MIN and merge three classes into one pair
    X = torch.randn(12, 2)
    with pytest.raises(ValueError, match=r"labels: expected class labels within int64"):
        pairwise_hull_distances(X, (torch.arange(12) % 3).double() * 1e30)


def test_fit_and_evaluate_name_labels_beyond_the_outputs():
    X = torch.randn(8, 2)
    y = torch.tensor([0, 1, 5, 0, 1, 0, 1, 0])
    with pytest.raises(ValueError, match=r"^data: expected class labels below 2, the number of outputs"):
        evaluate(MLP(2, [4], 2), (X, y))
    with pytest.raises(ValueError, match=r"^train: expected class labels below 2.*got a label 5"):
        fit(MLP(2, [4], 2), (X, y), epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"^test: expected class labels below 2"):
        fit(MLP(2, [4], 2), (X, y % 2), (X, y), epochs=1, progress=False)
    # a Dataset's labels are checked batch by batch, the bad one in the second batch
    ds = TensorDataset(X, y)
    with pytest.raises(ValueError, match=r"^data: expected class labels below 2"):
        evaluate(MLP(2, [4], 2), ds, batch_size=2)
    negative = TensorDataset(X, -y)
    with pytest.raises(ValueError, match=r"^data: the labels of batch 0: expected class labels >= 0"):
        evaluate(MLP(2, [4], 2), negative, batch_size=2)


def test_a_custom_loss_may_take_other_targets():
    # the bound on the outputs is cross-entropy's; a one-logit binary loss takes labels 0 and 1
    X, y = torch.randn(10, 2), torch.arange(10) % 2

    def bce(out, target, reduction="mean"):
        return nn.functional.binary_cross_entropy_with_logits(out[:, 0], target.float(), reduction=reduction)

    h = fit(MLP(2, [4], 1), (X, y), epochs=1, loss_fn=bce, progress=False)
    assert np.isfinite(h.loss).all()


# ----------------------------------------------------------------------------
# Casts and gradients (issue 19, items 5 and 6)
# ----------------------------------------------------------------------------

def _moons64():
    d = load_dataset("two_moons", size=60, seed=0)
    return d.X.double(), d.y


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_fit_and_evaluate_cast_floating_inputs_to_the_model_dtype(dtype):
    X, y = _moons64()
    torch.manual_seed(0)
    model = MLP(2, [8], 2)
    ref_model = MLP(2, [8], 2)
    ref_model.load_state_dict(model.state_dict())
    Xd = X.to(dtype)
    h = fit(model, (Xd, y), epochs=2, progress=False, batch_size=16)
    # the reference gets the same values already in float32
    h_ref = fit(ref_model, (Xd.float(), y), epochs=2, progress=False, batch_size=16)
    cols = ["epoch", "step", "split", "loss", "accuracy"]
    pd.testing.assert_frame_equal(h[cols], h_ref[cols])
    assert evaluate(model, (Xd, y)) == evaluate(model, (Xd.float(), y))


def test_record_fit_and_evaluate_refuse_a_cast_that_overflows():
    X = torch.randn(6, 2, dtype=torch.float64)
    X[2, 1] = 1e200
    y = torch.arange(6) % 2
    model = MLP(2, [4], 2)
    with pytest.raises(ValueError, match=r"^data: expected inputs that stay finite when cast to the model's dtype "
                                         r"torch.float32.*got 1 entries.*1e\+200"):
        record(model, X, progress=False)
    with pytest.raises(ValueError, match=r"^data \(batch 1\): expected inputs that stay finite.*float32"):
        record(model, TensorDataset(X), batch_size=2, progress=False)
    with pytest.raises(ValueError, match=r"^train: expected inputs that stay finite.*float32"):
        fit(model, (X, y), epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"^test: expected inputs that stay finite"):
        fit(model, (X.float().clamp(-1, 1), y), (X, y), epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"^data: expected inputs that stay finite"):
        evaluate(model, (X, y))
    with pytest.raises(ValueError, match=r"^data: expected inputs that stay finite"):
        evaluate(model, TensorDataset(X, y), batch_size=4)
    # a float64 model takes the same input as it is
    acts = record(model.double(), X, layers="head", progress=False)
    assert torch.isfinite(acts["head"]).sum() >= 0 and acts["head"].dtype == torch.float64


def test_load_npz_refuses_values_beyond_float32(tmp_path):
    X = np.random.default_rng(0).normal(size=(10, 2))
    X[3, 0] = -1e300
    p = tmp_path / "big.npz"
    np.savez(p, X=X, y=np.arange(10) % 2)
    with pytest.raises(ValueError, match=r"big\.npz\['X'\]: expected inputs that stay finite.*float32"):
        load_npz(p)
    with pytest.raises(ValueError, match=r"big\.npz\['X'\]: expected inputs that stay finite"):
        as_dataset(p)


def test_inputs_that_require_grad_are_detached():
    X, y = _moons64()
    X = X.float().requires_grad_(True)
    torch.manual_seed(0)
    model = MLP(2, [8], 2)
    other = MLP(2, [8], 2)
    other.load_state_dict(model.state_dict())
    d = as_dataset((X, y))
    assert not d.X.requires_grad
    h = fit(model, (X, y), epochs=2, progress=False)
    h_ref = fit(other, (X.detach(), y), epochs=2, progress=False)
    assert h.loss.tolist() == h_ref.loss.tolist()
    assert X.grad is None
    acts = record(model, X, layers="head", progress=False)
    assert not acts["head"].requires_grad


def test_cast_inputs_and_model_helpers():
    assert model_device(nn.ReLU()) is None and model_dtype(nn.ReLU()) is None
    m = nn.Linear(2, 2).double()
    assert model_dtype(m) == torch.float64 and model_device(m) == torch.device("cpu")
    ints = torch.arange(4)
    assert cast_inputs(ints, "x", dtype=torch.float32).dtype == torch.int64   # indices keep their dtype
    assert cast_inputs(torch.ones(2, dtype=torch.float64), "x", dtype=torch.float16).dtype == torch.float16
    with pytest.raises(ValueError, match=r"^x: expected inputs that stay finite when cast.*float16"):
        check_cast(torch.tensor([1.0, 7e4]), "x", torch.float16)
    check_cast(torch.tensor([1.0, 6e4]), "x", torch.float16)   # float16's max is 65504
    check_cast(torch.tensor([1e300]), "x", torch.float64)        # no cast, nothing to check


def test_shared_message_helpers():
    assert did_you_mean("two_moon", ["two_moons", "xor"]) == "; did you mean 'two_moons'?"
    assert did_you_mean("zzz", ["two_moons"]) == ""
    assert list_names([]) == "[]" and list_names([], empty="none") == "none"
    assert list_names(list("abc")) == "['a', 'b', 'c']"
    assert list_names([str(i) for i in range(30)]).endswith("... and 5 more]")


def test_batch_source_counts_and_checks():
    x = torch.randn(10, 3)
    s = BatchSource((x, torch.arange(10)), 4)
    assert s.n == 10 and s.checked and [b[0].shape[0] for b in s] == [4, 4, 2]
    s = BatchSource(DataLoader(TensorDataset(x), batch_size=3, drop_last=True), 99)
    assert s.n == 9 and not s.checked
    with pytest.raises(ValueError, match=r"^data: expected at least one sample in X"):
        BatchSource(torch.zeros(0, 3), 4)


# ----------------------------------------------------------------------------
# .npz files that cannot be read (issue 19, item 9)
# ----------------------------------------------------------------------------

def _good_npz(path):
    np.savez(path, X=np.random.default_rng(0).normal(size=(20, 3)), y=np.arange(20) % 2)
    return path


@pytest.mark.parametrize("damage", ["truncated", "random", "object", "npy", "empty", "member"])
def test_unreadable_npz_files_are_named(tmp_path, damage):
    p = tmp_path / "bad.npz"
    if damage == "truncated":
        data = _good_npz(tmp_path / "good.npz").read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif damage == "random":
        p.write_bytes(np.random.default_rng(1).bytes(500))
    elif damage == "object":
        np.savez(p, X=np.array([[1.0, 2.0]] * 4), y=np.array([0, 1, "a", None], dtype=object))
    elif damage == "npy":
        with open(p, "wb") as f:
            np.save(f, np.zeros(3))
    elif damage == "empty":
        p.write_bytes(b"")
    else:   # a zip archive whose member is not an .npy file
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("X.npy", b"not an array")
            z.writestr("y.npy", b"nor this")
        p.write_bytes(buf.getvalue())
    for call, name in ((lambda: load_npz(p), "path"), (lambda: as_dataset(p), "data"),
                       (lambda: load_dataset(str(p)), "path")):
        with pytest.raises(ValueError, match=rf"^{name}: expected a readable \.npz file.*could not read '.*bad\.npz'"):
            call()
    if damage in ("random", "empty"):
        # neither a zip archive nor an .npy file: said so (np.load took it for a pickle and said that)
        with pytest.raises(ValueError, match=r"not an \.npz archive: it starts with neither the zip nor the \.npy"):
            load_npz(p)


def test_read_npz_never_unpickles(tmp_path, monkeypatch):
    p = tmp_path / "obj.npz"
    np.savez(p, X=np.zeros((2, 2)), y=np.array([{"a": 1}, {"b": 2}], dtype=object))
    with pytest.raises(ValueError, match=r"object \(pickled\) data"):
        read_npz(p, "path")


class _Items(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.zeros(2), float(i % 2)


def test_dataset_float_labels_are_checked_and_used_as_classes():
    # float labels from a Dataset become int64 classes when exactly integral
    r = evaluate(MLP(2, [4], 2), _Items(), batch_size=3)
    assert r["n"] == 4


# ----------------------------------------------------------------------------
# Fuzzing the .npz reader
# ----------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_NPZ_ERRORS = (ValueError, KeyError, TypeError)


def _valid_npz_bytes() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(3)
    np.savez(buf, X=rng.normal(size=(12, 3)), y=np.arange(12) % 3)
    return buf.getvalue()


_VALID = _valid_npz_bytes()


def _assert_named_or_loaded(path, call):
    try:
        out = call()
    except _NPZ_ERRORS as exc:
        message = str(exc.args[0]) if exc.args else ""
        # the argument (the file, or the split asked of it) or the file's array is named
        assert message.startswith(("path: ", "test_fraction: ")) or "fuzz.npz" in message, message
        return
    train, test = out
    for part in (train, test):
        assert part.X.dtype == torch.float32 and torch.isfinite(part.X).all()
        assert part.y.dtype == torch.int64 and (part.y >= 0).all() and len(part.y) == len(part.X)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, len(_VALID)), flips=st.lists(st.tuples(st.integers(0, len(_VALID) - 1),
                                                                 st.integers(1, 255)), max_size=4))
def test_fuzzed_npz_files_load_or_fail_with_a_named_error(tmp_path, cut, flips):
    data = bytearray(_VALID[:cut] if cut < len(_VALID) and not flips else _VALID)
    for at, xor in flips:
        data[at] ^= xor
    path = tmp_path / "fuzz.npz"
    path.write_bytes(bytes(data))
    _assert_named_or_loaded(path, lambda: load_npz(path))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(X=st.one_of(st.just(np.zeros((0, 2))), st.lists(st.floats(allow_nan=True, allow_infinity=True,
                                                                  width=64), min_size=1, max_size=12).map(
           lambda v: np.array(v).reshape(-1, 1))),
       y=st.lists(st.one_of(st.integers(-3, 2 ** 63 - 1), st.floats(-5, 1e30)), min_size=0, max_size=12))
def test_fuzzed_npz_contents_load_or_fail_with_a_named_error(tmp_path, X, y):
    path = tmp_path / "fuzz.npz"
    np.savez(path, X=X, y=np.array(y))
    _assert_named_or_loaded(path, lambda: load_npz(path, test_fraction=0.5))
