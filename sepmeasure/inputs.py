"""The one path from a user's data to checked batches.

Whatever a user passes — a tensor, an array, nested lists, a pair ``(X, y)``, an ``.npz`` path,
a :class:`~torch.utils.data.Dataset` or a :class:`~torch.utils.data.DataLoader` — comes in
here and leaves as tensors that have passed one set of checks with one set of messages:

* :func:`labeled_pair` — a pair ``(X, y)`` of features and class labels (``data.as_dataset``);
* :func:`read_npz` — the arrays of an ``.npz`` file, every read error naming the file;
* :class:`BatchSource` — batches ``(x, y or None)`` of any kind of data, with the sample count
  when it is known (``capture.record``);
* :func:`tensor_batches`, :func:`dataset_batches` — labelled mini-batches for training
  (``training.fit``, ``training.evaluate``);
* :func:`cast_inputs` — detach, move and cast a floating input to a model's dtype, refusing a
  cast that overflows; :func:`model_device`, :func:`model_dtype` — where and in what a model
  computes.

The label check every measure uses is :func:`check_labels` (integer-valued, ``>= 0``, within
int64 and below :data:`~sepmeasure.validation.MAX_CLASSES`, optionally below a model's number
of outputs; float labels only when exactly integral); features go through
:func:`check_features`. Both are re-exported here from :mod:`sepmeasure.validation`.

Inputs that require grad are detached on the way in; measures read values and never
differentiate through a user's data.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .validation import MAX_CLASSES, check_features, check_labels, describe

__all__ = [
    "BatchSource",
    "MAX_CLASSES",
    "cast_inputs",
    "check_cast",
    "rejected_batch",
    "check_features",
    "check_finite",
    "check_labels",
    "dataset_batches",
    "labeled_pair",
    "model_device",
    "model_dtype",
    "read_npz",
    "split_batch",
    "tensor_batches",
    "to_tensor",
]


# ----------------------------------------------------------------------------
# The model's side: device and dtype
# ----------------------------------------------------------------------------

def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter (or buffer); ``None`` for a model with neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return None


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype shared by all floating-point parameters of ``model``; ``None`` if none or several."""
    dtypes = {p.dtype for p in model.parameters() if torch.is_floating_point(p)}
    return dtypes.pop() if len(dtypes) == 1 else None


# ----------------------------------------------------------------------------
# Tensors
# ----------------------------------------------------------------------------

def to_tensor(value: Any, name: str, what: str) -> torch.Tensor:
    """``value`` as a tensor (arrays without a copy where possible), detached; ``what`` it is in messages."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(f"{name}: expected {what} to be a Tensor or array of numbers, got {describe(value)}")
        return torch.from_numpy(np.ascontiguousarray(value))
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name}: expected {what} to be a Tensor or array, got {describe(value)}") from exc


def check_finite(x: torch.Tensor, name: str, where: str) -> None:
    """Refuse NaN or inf entries of a floating (or complex) ``x``; ``where`` says which part of ``name``."""
    if (torch.is_floating_point(x) or x.is_complex()) and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: expected finite inputs, got {n_bad} NaN/inf entries in {where}")


def rejected_batch(name: str, x: torch.Tensor, exc: BaseException) -> ValueError:
    """The error for a model that cannot take the batch ``x`` of argument ``name`` (a wrong width,
    rank or dtype): it names the argument and keeps torch's message ``exc``."""
    return ValueError(f"{name}: expected inputs the model accepts, got a batch of shape {tuple(x.shape)} and "
                      f"dtype {x.dtype}; the model raised RuntimeError: {exc}")


def check_cast(x: torch.Tensor, name: str, dtype: torch.dtype | None) -> None:
    """Refuse a cast of the finite floating ``x`` to ``dtype`` that would turn values into inf.

    Only the two extreme values are cast (the cast is monotone), so nothing of the size of ``x``
    is allocated. ``1e200`` in float64 for a float32 model is refused, naming ``name``.
    """
    if (dtype is None or not torch.is_floating_point(x) or not dtype.is_floating_point or x.dtype == dtype
            or x.numel() == 0 or torch.finfo(dtype).max >= torch.finfo(x.dtype).max):
        return
    lo, hi = torch.aminmax(x.detach())
    if bool(torch.isfinite(torch.stack([lo, hi]).to(dtype)).all()):
        return
    limit = torch.finfo(dtype).max
    n_bad = int((x.detach().abs() > limit).sum())
    raise ValueError(f"{name}: expected inputs that stay finite when cast to the model's dtype {dtype} "
                     f"(magnitudes up to {limit:.3g}), got {n_bad} entries beyond that (largest magnitude "
                     f"{max(abs(float(lo)), abs(float(hi))):.3g}) in {describe(x)}")


def cast_inputs(x: torch.Tensor, name: str, *, dtype: torch.dtype | None = None,
                device: torch.device | None = None, non_blocking: bool = False,
                check: bool = True) -> torch.Tensor:
    """Detach ``x``, move it to ``device`` and cast it to ``dtype`` when it is floating point.

    ``x`` is taken to be finite (checked at the boundary); with ``check`` a cast that would
    overflow is refused first (see :func:`check_cast`). Integer inputs keep their dtype (a model
    may take indices).
    """
    x = x.detach()
    cast = dtype if dtype is not None and torch.is_floating_point(x) and x.dtype != dtype else None
    if check and cast is not None:
        check_cast(x, name, cast)
    return x.to(device=device or x.device, dtype=cast or x.dtype, non_blocking=non_blocking)


# ----------------------------------------------------------------------------
# Labelled pairs and .npz files
# ----------------------------------------------------------------------------

def labeled_pair(data: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a pair ``(X, y)``: ``X`` finite real features with at least one row, ``y`` one class label per row."""
    X = check_features(data[0], f"{name}[0] (X)", ndim=None)
    y = check_labels(data[1], f"{name}[1] (y)", n=X.shape[0], n_name=f"{name}[0] (X)")
    return X, y


def read_npz(path: str | os.PathLike, name: str, keys: Iterable[str] = ("X", "y"),
             optional: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """The arrays ``keys`` (required) and ``optional`` (when present) of the ``.npz`` file ``path``.

    Never unpickles (``allow_pickle=False``). A missing file is a ``FileNotFoundError``, a file
    without one of ``keys`` a ``KeyError``, and a file that cannot be read as an ``.npz`` archive
    of numeric arrays (truncated, not a zip archive, object arrays, a damaged member) a
    ``ValueError``; every message names ``name`` and the file.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{name}: expected an existing .npz file, got {str(p)!r}")
    required, extra = list(keys), list(optional)
    with open(p, "rb") as fh:
        head = fh.read(6)
    if not (head.startswith(b"PK") or head.startswith(b"\x93NUMPY")):
        # np.load takes anything else for a pickle and refuses it as such: say what it is not
        raise ValueError(f"{name}: expected a readable .npz file of numeric arrays, could not read {str(p)!r} "
                         f"(not an .npz archive: it starts with neither the zip nor the .npy signature, "
                         f"got {head!r})")
    try:
        f = np.load(p, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single .npy array, not an archive of named arrays")
        with f:
            present = set(f.files)
            if not set(required) <= present:
                raise KeyError(f"{name}: expected an .npz file with arrays "
                               f"{' and '.join(map(repr, required))}, got keys {sorted(present)} in {str(p)!r}")
            arrays = {k: f[k] for k in (*required, *extra) if k in present}
        for k, a in arrays.items():
            if not isinstance(a, np.ndarray):
                raise ValueError(f"its member {k!r} is not an .npy array")
        return arrays
    except KeyError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as exc:
        reason = str(exc) or type(exc).__name__
        if "pickle" in reason or "Object arrays" in reason:
            reason = f"it holds object (pickled) data, which is never loaded: {reason}"
        raise ValueError(f"{name}: expected a readable .npz file of numeric arrays, could not read "
                         f"{str(p)!r} ({reason})") from exc


# ----------------------------------------------------------------------------
# Batches of any kind of data (record)
# ----------------------------------------------------------------------------

def split_batch(batch: Any, index: int, name: str, *,
                labels: str = "optional") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split one batch of a loader into ``(x, y)``; ``labels`` is ``"optional"`` or ``"required"``."""
    if labels == "required":
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(f"{name}: expected dataset items (x, y), got a batch of type {type(batch).__name__}")
    if isinstance(batch, (torch.Tensor, np.ndarray)):
        return to_tensor(batch, name, "the inputs"), None
    if isinstance(batch, (tuple, list)) and batch:
        x = to_tensor(batch[0], name, "the inputs")
        y = None if len(batch) < 2 or batch[1] is None else to_tensor(batch[1], name, "the labels")
        if y is not None and (y.ndim == 0 or y.shape[0] != x.shape[0]):
            raise ValueError(f"{name}: expected labels with one entry per input row in batch {index} "
                             f"({x.shape[0]}), got {describe(y)}")
        return x, y
    raise TypeError(f"{name}: expected batches that are a Tensor x or a tuple (x, y, ...), got "
                    f"{describe(batch)} in batch {index}")


def _loader_size(loader: DataLoader) -> int | None:
    if loader.batch_size is None:
        return None
    try:
        n = len(loader.sampler)  # type: ignore[arg-type]
    except TypeError:
        return None
    return (n // loader.batch_size) * loader.batch_size if loader.drop_last else n


class BatchSource:
    """Batches ``(x, y or None)`` from whatever ``data`` is, with the sample count when known.

    ``data`` is a tensor or array ``X``, a pair ``(X, y)`` or ``(X,)``, a Dataset (items ``x``
    or ``(x, y)``) or a DataLoader (iterated as is). Tensors and arrays are checked once, here
    (at least one row, finite values; ``y`` one entry per row); batches of a Dataset or
    DataLoader are checked as they arrive (``checked`` is then ``False`` and the caller runs
    :func:`check_finite` on each). Labels are passed through unchanged: they may be any
    per-sample targets.
    """

    def __init__(self, data: Any, batch_size: int, name: str = "data") -> None:
        self.name = name
        self.n: int | None
        self.batch_size = batch_size
        if isinstance(data, DataLoader):
            self._iter: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor | None]]] = \
                lambda: (split_batch(b, i, name) for i, b in enumerate(data))
            self.n = _loader_size(data)
            self.batch_size = data.batch_size or 1
            self.checked = False
        elif isinstance(data, Dataset):
            loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)
            self._iter = lambda: (split_batch(b, i, name) for i, b in enumerate(loader))
            self.n = _loader_size(loader)
            self.checked = False
        else:
            x, y = self._arrays(data)
            self._iter = lambda: ((x[i:i + batch_size], None if y is None else y[i:i + batch_size])
                                  for i in range(0, x.shape[0], batch_size))
            self.n = int(x.shape[0])
            self.x = x
            self.checked = True

    def _arrays(self, data: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        name = self.name
        if isinstance(data, (tuple, list)):
            if not 1 <= len(data) <= 2:
                raise ValueError(f"{name}: expected X or a tuple (X, y), got a {type(data).__name__} "
                                 f"of length {len(data)}")
            x = data[0]
            y = data[1] if len(data) == 2 else None
        else:
            x, y = data, None
        if not isinstance(x, (torch.Tensor, np.ndarray)):
            raise TypeError(f"{name}: expected a Tensor, array, (X, y) tuple, Dataset or DataLoader, "
                            f"got {describe(data)}")
        x = to_tensor(x, name, "X")
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"{name}: expected at least one sample in X, got {describe(x)}")
        check_finite(x, name, "X")
        if y is not None:
            y = to_tensor(y, name, "y")
            if y.ndim == 0 or y.shape[0] != x.shape[0]:
                raise ValueError(f"{name}: expected y with one entry per row of X ({x.shape[0]}), "
                                 f"got {describe(y)}")
        return x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        return self._iter()


# ----------------------------------------------------------------------------
# Labelled mini-batches (fit, evaluate)
# ----------------------------------------------------------------------------

def tensor_batches(X: torch.Tensor, y: torch.Tensor, order: torch.Tensor, batch_size: int,
                   device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of checked tensors ``X``, ``y`` in ``order``, sent to ``device``.

    ``X`` and ``y`` may live on different devices; a non-blocking copy into host memory returns
    before the data has arrived, so copies to the CPU are blocking.
    """
    non_blocking = device.type != "cpu"
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield (X[idx.to(X.device)].to(device, non_blocking=non_blocking),
               y[idx.to(y.device)].to(device, non_blocking=non_blocking))


def dataset_batches(data: Dataset, order: torch.Tensor, batch_size: int, device: torch.device, name: str, *,
                    dtype: torch.dtype | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of a Dataset of ``(x, y)`` items in ``order``, each checked as it arrives.

    Inputs must be finite and survive the cast to ``dtype``; labels are checked with
    :func:`check_labels` and returned as int64.
    """
    loader = DataLoader(data, batch_size=batch_size, sampler=order.tolist())
    for index, batch in enumerate(loader):
        x, y = split_batch(batch, index, name, labels="required")
        check_finite(x, name, f"batch {index}")
        y = check_labels(y, f"{name}: the labels of batch {index}")
        yield cast_inputs(x, name, dtype=dtype, device=device), y.to(device)
