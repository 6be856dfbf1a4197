"""Embedded datasets and adapters for a user's own data.

Embedded (nothing is downloaded):

* ``"mnist1d"`` — generated locally by the ``mnist1d`` package: 40-sample 1-D signals, 10 classes.
* ``"digits"`` — scikit-learn's 8x8 handwritten digits as ``1x8x8`` images, 10 classes.
* 2-D synthetic sets ``"two_moons"``, ``"xor"``, ``"spirals"``, ``"gaussians"`` with
  ``size``/``noise``/``seed`` arguments.

A user's own data comes in as ``(X, y)`` tensors or arrays, an ``.npz`` file with ``X``/``y``
keys, or any :class:`torch.utils.data.Dataset`; :func:`as_dataset` turns each of them into
something every function of the library accepts.
"""
from __future__ import annotations

import functools
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .inputs import check_cast, labeled_pair, read_npz
from .validation import (check_choice, check_features, check_fraction, check_int, check_labels, check_positive,
                         check_seed, describe,
                         did_you_mean)

__all__ = ["LabeledData", "Split", "load_dataset", "load_npz", "as_dataset", "DATASETS", "MAX_GENERATED_SIZE"]

MAX_GENERATED_SIZE = 10 ** 7
"""The largest ``size`` a synthetic generator is asked for (it holds every sample in memory)."""


@dataclass(eq=False)
class LabeledData(Dataset):
    """A labelled dataset held as two tensors.

    Attributes
    ----------
    X : Tensor of shape ``(N, *input_shape)``, floating point.
    y : Tensor of shape ``(N,)``, int64 class labels.
    name : str
    meta : dict
        Provenance: generator, seed, split, standardisation statistics.

    Examples
    --------
    >>> import torch
    >>> d = LabeledData(torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 2, 2]))
    >>> len(d), d.n_classes, d.input_shape
    (6, 3, (3,))
    """

    X: torch.Tensor
    y: torch.Tensor
    name: str = "data"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.X = check_features(self.X, f"{self.name}.X", ndim=None)
        self.y = check_labels(self.y, f"{self.name}.y", n=self.X.shape[0], n_name=f"{self.name}.X")

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def __getitem__(self, index):
        return self.X[index], self.y[index]

    def __repr__(self) -> str:
        return (f"LabeledData(name={self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
                f"n_classes={self.n_classes})")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.X.shape[1:])

    @property
    def n_features(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def n_classes(self) -> int:
        return int(self.y.max()) + 1 if len(self) else 0

    def subset(self, index: torch.Tensor | np.ndarray | slice) -> "LabeledData":
        """Rows ``index`` as a new :class:`LabeledData` (meta copied); a tensor index may live on any device."""
        if isinstance(index, torch.Tensor):
            return LabeledData(self.X[index.to(self.X.device)], self.y[index.to(self.y.device)], self.name,
                               dict(self.meta))
        return LabeledData(self.X[index], self.y[index], self.name, dict(self.meta))

    def to(self, device: torch.device | str) -> "LabeledData":
        return LabeledData(self.X.to(device), self.y.to(device), self.name, dict(self.meta))


class Split(NamedTuple):
    """A train/test pair returned by ``load_dataset(..., split="both")``."""

    train: LabeledData
    test: LabeledData


# ----------------------------------------------------------------------------- generators
# Each returns (X, y) as NumPy arrays, deterministic in ``seed``.

def _mnist1d(size: int | None, seed: int, noise: float | None) -> tuple[np.ndarray, np.ndarray]:
    n = 5000 if size is None else size
    return _mnist1d_cached(n, seed)


@functools.lru_cache(maxsize=8)
def _mnist1d_cached(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = n
    args.seed = seed
    args.train_split = 1.0
    # make_dataset reseeds Python's and NumPy's global generators; leave them as they were.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    X = d["x"].astype(np.float32)
    X.setflags(write=False)
    y = d["y"].astype(np.int64)
    y.setflags(write=False)
    return X, y


def _digits(size: int | None, seed: int, noise: float | None) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    X = (d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    if size is not None and size < len(y):
        idx = np.random.default_rng(seed).permutation(len(y))[:size]
        X, y = X[np.sort(idx)], y[np.sort(idx)]
    return X, y


def _two_moons(size, seed, noise, **_):
    from sklearn.datasets import make_moons

    X, y = make_moons(n_samples=size or 1000, noise=0.1 if noise is None else noise, random_state=seed)
    return X.astype(np.float32), y.astype(np.int64)


def _xor(size, seed, noise, **_):
    rng = np.random.default_rng(seed)
    n = size or 1000
    X = rng.uniform(-1, 1, size=(n, 2))
    y = ((X[:, 0] > 0) != (X[:, 1] > 0)).astype(np.int64)
    X = X + rng.normal(scale=0.05 if noise is None else noise, size=X.shape)
    return X.astype(np.float32), y


def _spirals(size, seed, noise, n_classes: int = 2, turns: float = 1.5, **_):
    rng = np.random.default_rng(seed)
    n = size or 1000
    y = np.arange(n) % n_classes
    t = rng.uniform(0.05, 1.0, size=n)
    angle = 2 * np.pi * turns * t + 2 * np.pi * y / n_classes
    X = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1)
    X = X + rng.normal(scale=0.02 if noise is None else noise, size=X.shape)
    perm = rng.permutation(n)
    return X[perm].astype(np.float32), y[perm].astype(np.int64)


def _gaussians(size, seed, noise, n_classes: int = 2, dim: int = 2, separation: float = 3.0, **_):
    rng = np.random.default_rng(seed)
    n = size or 1000
    means = rng.normal(size=(n_classes, dim))
    means *= separation / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    y = np.arange(n) % n_classes
    X = means[y] + rng.normal(scale=1.0 if noise is None else noise, size=(n, dim))
    perm = rng.permutation(n)
    return X[perm].astype(np.float32), y[perm].astype(np.int64)


_GENERATORS = {
    "mnist1d": (_mnist1d, "feature"),
    "digits": (_digits, "global"),
    "two_moons": (_two_moons, "feature"),
    "xor": (_xor, "feature"),
    "spirals": (_spirals, "feature"),
    "gaussians": (_gaussians, "feature"),
}
DATASETS: tuple[str, ...] = tuple(_GENERATORS)


# ----------------------------------------------------------------------------- splitting
def _split_indices(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified random split: each class contributes ``round(test_fraction * n_c)`` test points."""
    rng = np.random.default_rng(seed + 7919)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(test_fraction * len(idx)))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _standardize(train: np.ndarray, test: np.ndarray, how: str | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Standardise with statistics fitted on ``train`` only."""
    if how is None or how == "none":
        return train, test, {"standardize": None}
    if how == "feature":
        mean = train.mean(axis=0, keepdims=True)
        std = train.std(axis=0, keepdims=True)
    else:
        mean = np.asarray(train.mean(), dtype=train.dtype).reshape((1,) * train.ndim)
        std = np.asarray(train.std(), dtype=train.dtype).reshape((1,) * train.ndim)
    std = np.where(std > 1e-12, std, 1.0).astype(train.dtype)
    stats = {"standardize": how, "mean": mean.squeeze(0) if how == "feature" else float(mean.item()),
             "std": std.squeeze(0) if how == "feature" else float(std.item())}
    return (train - mean) / std, (test - mean) / std, stats


def load_dataset(name: str, split: str = "train", seed: int = 0, *, size: int | None = None,
                 noise: float | None = None, test_fraction: float = 0.2,
                 standardize: str | None | bool = True, **options: Any) -> LabeledData | Split:
    """Load an embedded dataset (or an ``.npz`` file) with a deterministic train/test split.

    Parameters
    ----------
    name : str
        One of ``DATASETS`` (``"mnist1d"``, ``"digits"``, ``"two_moons"``, ``"xor"``,
        ``"spirals"``, ``"gaussians"``) or a path to an ``.npz`` file (see :func:`load_npz`).
    split : {"train", "test", "both"}, default "train"
        Which part to return; ``"both"`` returns a :class:`Split` ``(train, test)``.
    seed : int, default 0
        Seeds generation (synthetic sets and mnist1d), subsampling and the split; ``>= 0``.
    size : int, optional
        Number of samples before splitting (default: 5000 for mnist1d, all 1797 digits,
        1000 for the synthetic sets); ``>= 4``. Not used for ``.npz`` files.
    noise : float, optional
        Noise scale of the synthetic sets (ignored by mnist1d and digits), ``>= 0``; default:
        0.1 (two_moons), 0.05 (xor), 0.02 (spirals), 1.0 (gaussians). Not used for ``.npz`` files.
    test_fraction : float, default 0.2
        Share of each class held out for ``"test"``, strictly between 0 and 1.
    standardize : bool, "feature", "global", "none" or None, default True
        Standardisation fitted on the training part only and applied to both parts.
        ``True`` picks the dataset's default (per feature; one global scale for images; none
        for ``.npz`` files, whose data is taken as given); ``False``, ``None`` and ``"none"``
        leave the data as generated.
    **options
        Generator options: ``n_classes`` (spirals, gaussians; default 2), ``turns`` (spirals;
        default 1.5), ``dim`` (gaussians; default 2), ``separation`` (gaussians; distance of the
        class means from the origin, default 3.0). Not used for ``.npz`` files.

    Returns
    -------
    LabeledData or Split
        ``X`` of shape ``(n, *input_shape)`` (``(n, 40)`` for mnist1d, ``(n, 1, 8, 8)`` for
        digits, ``(n, 2)`` for the 2-D sets, ``(n, dim)`` for gaussians), float32; ``y`` of
        shape ``(n,)``, int64. ``meta`` records the dataset, its arguments, the split and the
        standardisation statistics.

    Raises
    ------
    TypeError
        ``name`` is neither a string nor a path; ``seed`` or ``size`` is not an int (bools are
        refused); ``noise`` or ``test_fraction`` is not a real number; ``options`` holds an option the dataset does
        not take (mnist1d, digits, two_moons and xor take none).
    ValueError
        ``name`` is neither one of ``DATASETS`` nor a path ending in ``.npz`` (the message
        suggests a close name); ``split`` is not ``"train"``, ``"test"`` or ``"both"``;
        ``seed < 0``; ``size < 4``; ``noise`` is negative or not finite; ``test_fraction`` is
        not strictly between 0 and 1; ``standardize`` is not one of the accepted values; the
        train or test part would be empty (few samples and an extreme ``test_fraction``; the
        message names ``test_fraction`` and the data).
    FileNotFoundError, KeyError
        For an ``.npz`` path, as :func:`load_npz` raises them (as well as its ``TypeError`` and
        ``ValueError``).

    Examples
    --------
    >>> train, test = load_dataset("two_moons", split="both", size=200, seed=1)
    >>> len(train), len(test), train.input_shape, train.n_classes
    (160, 40, (2,), 2)
    >>> load_dataset("digits").X.shape
    torch.Size([1438, 1, 8, 8])
    """
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"name: expected a dataset name or .npz path, got {describe(name)}")
    check_choice(split, "split", ("train", "test", "both"))
    seed = check_seed(seed, "seed")
    if size is not None:
        size = check_int(size, "size", minimum=4, maximum=MAX_GENERATED_SIZE,
                         why="the generators hold every sample in memory")
    if noise is not None:
        check_positive(noise, "noise", strict=False)
    test_fraction = check_fraction(test_fraction, "test_fraction")
    if str(name).endswith(".npz"):
        ignored = {k: v for k, v in (("size", size), ("noise", noise), *options.items()) if v is not None}
        if ignored:
            raise ValueError(f"name: {str(name)!r} is an .npz file, which takes none of the generator options; "
                             f"got {sorted(ignored)}")
        # user data is taken as given unless a standardisation is named explicitly
        return load_npz(name, split=split, seed=seed, test_fraction=test_fraction,
                        standardize=None if standardize is True else standardize)
    if name not in _GENERATORS:
        hint = did_you_mean(name, DATASETS, n=1)
        raise ValueError(f"name: expected one of {', '.join(map(repr, DATASETS))} or a path to an .npz file, "
                         f"got {name!r}{hint}")
    generator, default_std = _GENERATORS[name]
    if name in ("mnist1d", "digits"):
        unknown = set(options)
    else:
        allowed = {"spirals": {"n_classes", "turns"}, "gaussians": {"n_classes", "dim", "separation"}}
        unknown = set(options) - allowed.get(name, set())
    if unknown:
        raise TypeError(f"options: dataset {name!r} takes no option(s) {sorted(unknown)}")
    _check_generator_options(options, size or 1000)
    with np.errstate(over="ignore", invalid="ignore"):  # huge scales are refused just below, naming them
        X, y = generator(size, seed, noise, **options)
    if not np.isfinite(X).all():
        given = [k for k in ("noise", "separation", "turns") if k in options or (k == "noise" and noise is not None)]
        values = {k: (noise if k == "noise" else options[k]) for k in given}
        raise ValueError(f"{', '.join(given) or 'options'}: expected scales whose samples stay finite in {X.dtype}, "
                         f"got {values} ({int((~np.isfinite(X)).sum())} NaN/inf features)")
    how = default_std if standardize is True else (None if standardize is False else standardize)
    check_choice(how, "standardize", (None, "none", "feature", "global"))
    meta = {"dataset": name, "seed": seed, "size": len(y), "noise": noise, "test_fraction": test_fraction,
            **options}
    return _make_split(X, y, name, split, seed, test_fraction, how, meta)


def _check_generator_options(options: dict[str, Any], n: int) -> None:
    """The options of the synthetic generators, checked before anything is allocated (``n`` samples)."""
    if "n_classes" in options:
        check_int(options["n_classes"], "n_classes", minimum=2, maximum=max(n // 2, 2),
                  why=f"at least two of the {n} samples per class")
    if "dim" in options:
        check_int(options["dim"], "dim", minimum=1, maximum=max(MAX_GENERATED_SIZE // n, 1),
                  why=f"size * dim <= {MAX_GENERATED_SIZE} values, held in memory")
    for key in ("separation", "turns"):
        if key in options:
            check_positive(options[key], key, strict=False)


def _make_split(X: np.ndarray, y: np.ndarray, name: str, split: str, seed: int, test_fraction: float,
                how: str | None, meta: dict) -> LabeledData | Split:
    tr, te = _split_indices(y, test_fraction, seed)
    if not len(tr) or not len(te):
        raise ValueError(f"test_fraction: expected a split of {name!r} ({len(y)} samples, "
                         f"{len(np.unique(y))} classes) that leaves samples in both parts, got {len(tr)} train and "
                         f"{len(te)} test samples with test_fraction={test_fraction}")
    Xtr, Xte, stats = _standardize(X[tr], X[te], how)
    meta = {**meta, **stats}
    train = LabeledData(torch.from_numpy(np.ascontiguousarray(Xtr)), torch.from_numpy(y[tr].copy()), name,
                        {**meta, "split": "train"})
    test = LabeledData(torch.from_numpy(np.ascontiguousarray(Xte)), torch.from_numpy(y[te].copy()), name,
                       {**meta, "split": "test"})
    return {"train": train, "test": test, "both": Split(train, test)}[split]


def load_npz(path: str | os.PathLike, split: str = "both", seed: int = 0, *, test_fraction: float = 0.2,
             standardize: str | None | bool = None) -> LabeledData | Split:
    """Load a user's ``.npz`` file with arrays ``X`` and ``y`` (and optionally ``X_test``/``y_test``).

    Without ``X_test``/``y_test`` the file is split like an embedded dataset. ``standardize``
    defaults to ``None`` (user data is taken as given); ``"feature"``/``"global"`` fit on train.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file. ``X`` has shape ``(N, *input_shape)`` (any real dtype; stored as
        float32), ``y`` shape ``(N,)`` (integer class labels); ``X_test``/``y_test`` likewise.
    split : {"train", "test", "both"}, default "both"
        Which part to return; ``"both"`` returns a :class:`Split` ``(train, test)``.
    seed : int, default 0
        Seeds the stratified split (not used when the file holds ``X_test``/``y_test``).
    test_fraction : float, default 0.2
        Share of each class held out for ``"test"`` (not used when the file holds
        ``X_test``/``y_test``).
    standardize : bool, "feature", "global", "none" or None, default None
        Standardisation fitted on the training part and applied to both parts; ``True`` means
        ``"feature"``; ``False``, ``None`` and ``"none"`` leave the data as given.

    Returns
    -------
    LabeledData or Split
        Named after the file's stem; ``meta`` records the path, the seed, the split and the
        standardisation statistics.

    Raises
    ------
    FileNotFoundError
        ``path`` is not an existing file.
    KeyError
        The file has no array ``X`` or no array ``y``, or has ``X_test`` without ``y_test``.
    ValueError
        ``split`` is not ``"train"``, ``"test"`` or ``"both"``; ``standardize`` is not one of the
        accepted values; ``X`` (``X_test``) has no rows or NaN/inf entries; ``y`` (``y_test``) is
        not 1-D, holds non-integer values, or does not have one label per row of ``X``
        (``X_test``); the train or test part of the split would be empty.
    TypeError
        ``X`` (``X_test``) does not hold real numbers; ``y`` (``y_test``) holds booleans,
        complex numbers or non-numbers.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "toy.npz")
    >>> np.savez(p, X=np.random.randn(50, 3), y=np.arange(50) % 2)
    >>> load_npz(p, split="train").X.shape
    torch.Size([40, 3])
    """
    check_choice(split, "split", ("train", "test", "both"))
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a path to an .npz file (str or os.PathLike), got {describe(path)}")
    seed = check_seed(seed, "seed")
    test_fraction = check_fraction(test_fraction, "test_fraction")
    p = Path(path)
    arrays = read_npz(p, "path", optional=("X_test", "y_test"))
    name = p.stem
    X = _float32_features(arrays["X"], f"{name}.npz['X']")
    y = check_labels(arrays["y"], f"{name}.npz['y']", n=X.shape[0], n_name=f"{name}.npz['X']").numpy()
    how = None if standardize in (None, False) else ("feature" if standardize is True else standardize)
    check_choice(how, "standardize", (None, "none", "feature", "global"))
    meta = {"dataset": str(p), "seed": seed}
    if "y_test" in arrays and "X_test" not in arrays:
        raise KeyError(f"path: {str(p)!r} has 'y_test' but no 'X_test'")
    if "X_test" in arrays:
        if "y_test" not in arrays:
            raise KeyError(f"path: {str(p)!r} has 'X_test' but no 'y_test'")
        Xte = _float32_features(arrays["X_test"], f"{name}.npz['X_test']")
        if Xte.shape[1:] != X.shape[1:]:
            raise ValueError(f"path: expected {name}.npz['X_test'] with the sample shape of 'X' {list(X.shape[1:])}, "
                             f"got {list(Xte.shape[1:])}")
        yte = check_labels(arrays["y_test"], f"{name}.npz['y_test']", n=Xte.shape[0],
                           n_name=f"{name}.npz['X_test']").numpy()
        Xtr, Xte, stats = _standardize(X, Xte, how)
        train = LabeledData(torch.from_numpy(Xtr), torch.from_numpy(y), name, {**meta, **stats, "split": "train"})
        test = LabeledData(torch.from_numpy(Xte), torch.from_numpy(yte), name, {**meta, **stats, "split": "test"})
        return {"train": train, "test": test, "both": Split(train, test)}[split]
    return _make_split(X, y, name, split, seed, test_fraction, how, meta)


def _float32_features(array: np.ndarray, name: str) -> np.ndarray:
    """Checked features of a file as float32; values beyond float32's range are refused, not made inf."""
    X = check_features(array, name, ndim=None)
    check_cast(X, name, torch.float32)
    return X.numpy().astype(np.float32)


def as_dataset(data: Any, name: str = "data") -> Dataset:
    """Turn a user's data into a dataset the library accepts.

    Accepts a :class:`LabeledData` (returned as is), a pair ``(X, y)`` of tensors or arrays,
    a path to an ``.npz`` file (all of its ``X``/``y``), or any
    :class:`torch.utils.data.Dataset` (returned as is; its items must be ``(x, y)`` pairs
    for training).

    Parameters
    ----------
    data : LabeledData, (X, y) pair, str, os.PathLike or Dataset
        In a pair (tuple or list of two), ``X`` is a tensor or array of shape
        ``(N, *input_shape)`` and ``y`` one of ``N`` integer class labels. A path must end in
        ``.npz``; its arrays ``X`` and ``y`` are used as given (float64 ``X`` becomes float32).
    name : str, default "data"
        Name of the :class:`LabeledData` built from a pair, and of ``data`` in error messages
        (data from a file is named after the file's stem).

    Returns
    -------
    Dataset
        ``data`` itself for a :class:`LabeledData` or a Dataset, otherwise a new
        :class:`LabeledData` (float ``X``, int64 ``y``).

    Raises
    ------
    TypeError
        ``data`` is none of the accepted kinds; ``X`` does not hold real numbers, or ``y``
        holds booleans, complex numbers or non-numbers.
    ValueError
        A path that does not end in ``.npz``; ``X`` with no rows or NaN/inf entries; ``y``
        not 1-D, with non-integer values, or not one label per row of ``X``.
    KeyError
        The ``.npz`` file has no array ``X`` or no array ``y``.
    FileNotFoundError
        The ``.npz`` file does not exist (raised by :func:`numpy.load`).

    Examples
    --------
    >>> import numpy as np
    >>> as_dataset((np.zeros((4, 2)), [0, 1, 0, 1])).n_classes
    2
    """
    if isinstance(data, LabeledData):
        return data
    if isinstance(data, (str, os.PathLike)):
        p = Path(data)
        if p.suffix != ".npz":
            raise ValueError(f"{name}: expected a path to an .npz file, got {str(p)!r}")
        arrays = read_npz(p, name)
        X = arrays["X"]
        if X.dtype == np.float64:
            X = _float32_features(X, f"{p.stem}.npz['X']")
        return LabeledData(X, arrays["y"], p.stem)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        X, y = labeled_pair(data, name)
        return LabeledData(X, y, name)
    if isinstance(data, Dataset):
        return data
    raise TypeError(f"{name}: expected a LabeledData, an (X, y) pair, an .npz path or a torch Dataset, "
                    f"got {describe(data)}")
