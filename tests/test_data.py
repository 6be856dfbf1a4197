"""Embedded datasets and user-data adapters."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from sepmeasure.data import DATASETS, LabeledData, Split, as_dataset, load_dataset, load_npz


@pytest.mark.parametrize("name", DATASETS)
def test_every_dataset_loads_deterministically(name):
    kw = {"size": 300} if name != "digits" else {}
    a = load_dataset(name, split="both", seed=3, **kw)
    b = load_dataset(name, split="both", seed=3, **kw)
    assert isinstance(a, Split)
    for pa, pb in zip(a, b):
        assert torch.equal(pa.X, pb.X) and torch.equal(pa.y, pb.y)
        assert pa.X.dtype == torch.float32 and pa.y.dtype == torch.int64
        assert torch.isfinite(pa.X).all()
    assert set(torch.unique(a.test.y).tolist()) <= set(torch.unique(a.train.y).tolist())


@pytest.mark.parametrize("name", ["two_moons", "xor", "spirals", "gaussians", "mnist1d"])
def test_seed_changes_the_data(name):
    a = load_dataset(name, size=200, seed=0)
    b = load_dataset(name, size=200, seed=1)
    assert not torch.equal(a.X, b.X)


def test_shapes_of_the_embedded_sets():
    m = load_dataset("mnist1d", split="both", size=1000)
    assert m.train.input_shape == (40,) and m.train.n_classes == 10
    assert len(m.train) + len(m.test) == 1000
    d = load_dataset("digits", split="both")
    assert d.train.input_shape == (1, 8, 8) and d.train.n_classes == 10
    assert len(d.train) + len(d.test) == 1797
    for name in ("two_moons", "xor", "spirals", "gaussians"):
        assert load_dataset(name, size=100).input_shape == (2,)


def test_split_is_disjoint_and_stratified():
    from sklearn.datasets import load_digits

    raw = load_digits()
    train, test = load_dataset("digits", split="both", standardize=False, seed=5)
    flat = raw.data.astype(np.float32) / 16.0
    # every row of train and test is a distinct original row: together they are a permutation
    both = np.concatenate([train.X.reshape(len(train), -1).numpy(), test.X.reshape(len(test), -1).numpy()])
    key = lambda a: sorted(map(bytes, a))  # noqa: E731
    assert key(both) == key(flat)
    counts = np.bincount(raw.target)
    np.testing.assert_allclose(np.bincount(test.y.numpy()), np.round(0.2 * counts))


def test_standardisation_is_fitted_on_train_only():
    raw = load_dataset("gaussians", split="both", size=400, standardize=False, seed=2)
    std = load_dataset("gaussians", split="both", size=400, standardize="feature", seed=2)
    mu, sd = raw.train.X.mean(0), raw.train.X.std(0, unbiased=False)
    torch.testing.assert_close(std.train.X, (raw.train.X - mu) / sd, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(std.test.X, (raw.test.X - mu) / sd, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(std.train.X.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    assert not torch.allclose(std.test.X.mean(0), torch.zeros(2), atol=1e-5)


def test_global_standardisation_for_images():
    raw = load_dataset("digits", split="both", standardize=False)
    std = load_dataset("digits", split="both")
    mu, sd = raw.train.X.mean(), raw.train.X.std(unbiased=False)
    torch.testing.assert_close(std.test.X, (raw.test.X - mu) / sd, rtol=1e-5, atol=1e-5)


def test_mnist1d_leaves_global_random_state_alone():
    import random

    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    load_dataset("mnist1d", size=120, seed=9)
    assert np.random.rand() == expected_np and random.random() == expected_py


def test_xor_labels_follow_the_quadrants():
    d = load_dataset("xor", size=2000, noise=0.0, standardize=False)
    expected = ((d.X[:, 0] > 0) != (d.X[:, 1] > 0)).long()
    assert torch.equal(d.y, expected)


def test_npz_adapter(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 3)), np.arange(60) % 3
    p = tmp_path / "mine.npz"
    np.savez(p, X=X, y=y)
    train, test = load_npz(p, split="both", seed=1)
    assert len(train) + len(test) == 60
    # together the two parts hold every (row, label) pair of the file once, rows still with their labels
    pairs = lambda d: sorted(zip(map(bytes, d.X.numpy()), d.y.tolist()))  # noqa: E731
    original = sorted(zip(map(bytes, X.astype(np.float32)), y.tolist()))
    assert sorted(pairs(train) + pairs(test)) == original
    assert np.bincount(test.y.numpy()).tolist() == [4, 4, 4]   # stratified: 20% of each class of 20
    via_name = load_dataset(str(p), split="train", seed=1)
    assert torch.equal(via_name.X, train.X)
    d = as_dataset(p)
    assert isinstance(d, LabeledData) and len(d) == 60
    np.testing.assert_allclose(d.X.numpy(), X.astype(np.float32))
    assert d.y.tolist() == y.tolist()
    q = tmp_path / "split.npz"
    np.savez(q, X=X[:40], y=y[:40], X_test=X[40:], y_test=y[40:])
    tr, te = load_npz(q)
    assert (len(tr), len(te)) == (40, 20)
    # given test arrays are used as they are, in order, without standardisation
    assert np.array_equal(tr.X.numpy(), X[:40].astype(np.float32)) and tr.y.tolist() == y[:40].tolist()
    assert np.array_equal(te.X.numpy(), X[40:].astype(np.float32)) and te.y.tolist() == y[40:].tolist()


def test_npz_without_keys_is_an_error(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, features=np.zeros((3, 2)), labels=np.zeros(3))
    with pytest.raises(KeyError, match=r"'X' and 'y'.*features"):
        load_npz(p)
    with pytest.raises(KeyError, match="'X' and 'y'"):
        as_dataset(p)


def test_array_and_dataset_adapters():
    X, y = np.random.randn(10, 4).astype(np.float32), np.arange(10) % 2
    d = as_dataset((X, y))
    assert isinstance(d, LabeledData) and d.n_classes == 2
    assert np.array_equal(d.X.numpy(), X) and d.y.tolist() == y.tolist()
    d2 = as_dataset((torch.from_numpy(X), torch.from_numpy(y)))
    assert torch.equal(d.X, d2.X) and torch.equal(d.y, d2.y)

    class Mine(Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.zeros(2), 0

    mine = Mine()
    assert as_dataset(mine) is mine


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda: load_dataset("mnist2d"), ValueError, r"name: expected one of .*mnist1d.*got 'mnist2d'"),
        (lambda: load_dataset("two_moon"), ValueError, r"did you mean 'two_moons'"),
        (lambda: load_dataset("xor", split="valid"), ValueError, r"split: expected one of"),
        (lambda: load_dataset("xor", seed=-1), ValueError, r"seed: expected an int >= 0"),
        (lambda: load_dataset("xor", noise=-0.1), ValueError, r"noise: expected a finite number >= 0"),
        (lambda: load_dataset("xor", test_fraction=1.5), ValueError, r"test_fraction"),
        (lambda: load_dataset("xor", test_fraction="a"), TypeError, r"test_fraction: expected a real number"),
        (lambda: load_dataset("xor", turns=3), TypeError, r"options: .*turns"),
        (lambda: as_dataset((np.zeros((5, 2)), np.zeros(4))), ValueError, r"data\[1\] \(y\): expected 5 labels"),
        (lambda: as_dataset((np.full((3, 2), np.nan), np.zeros(3))), ValueError, r"data\[0\] \(X\): expected finite"),
        (lambda: as_dataset((np.zeros((3, 2)), np.array([0.5, 1, 0]))), ValueError, r"integer class labels"),
        (lambda: as_dataset(42), TypeError, r"data: expected a LabeledData"),
        (lambda: load_npz("/nonexistent/file.npz"), FileNotFoundError, r"path: expected an existing"),
    ],
)
def test_bad_input_is_named(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_subset_takes_index_tensors_from_any_device(device):
    data = load_dataset("gaussians", size=40, seed=0)
    idx = torch.tensor([3, 1, 4, 1, 5])
    ref = data.subset(idx)
    assert torch.equal(ref.X, data.X[idx]) and torch.equal(ref.y, data.y[idx])
    on_device = data.to(device)
    for index in (idx, idx.to(device)):
        for source in (data, on_device):
            got = source.subset(index)
            assert got.X.device == source.X.device and got.y.device == source.y.device
            assert torch.equal(got.X.cpu(), ref.X) and torch.equal(got.y.cpu(), ref.y)
    assert torch.equal(data.subset(slice(1, 3)).y, data.y[1:3])


def test_npz_checks_test_arrays_and_refuses_generator_options(tmp_path):
    X, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    path = tmp_path / "d.npz"
    np.savez(path, X=X, y=y)
    with pytest.raises(ValueError, match=r"name: .*d\.npz.* takes none of the generator options; got \['size'\]"):
        load_dataset(str(path), size=10)
    with pytest.raises(ValueError, match=r"got \['noise', 'turns'\]"):
        load_dataset(str(path), noise=0.1, turns=2)
    bad = tmp_path / "bad.npz"
    np.savez(bad, X=X, y=y, X_test=X[:5, :2], y_test=y[:5])
    with pytest.raises(ValueError, match=r"X_test'\] with the sample shape of 'X' \[3\], got \[2\]"):
        load_npz(bad)
    lone = tmp_path / "lone.npz"
    np.savez(lone, X=X, y=y, y_test=y[:5])
    with pytest.raises(KeyError, match="has 'y_test' but no 'X_test'"):
        load_npz(lone)
    short = tmp_path / "short.npz"
    np.savez(short, X=X, y=y, X_test=X[:5], y_test=y[:4])
    with pytest.raises(ValueError, match=r"y_test'\].*X_test'\]"):
        load_npz(short)
