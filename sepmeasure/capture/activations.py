"""What :func:`~sepmeasure.capture.record` returns and how it is written.

:class:`Activations` is the read-only ``{layer key: Tensor[n_samples, ...]}`` of several
layers over the same samples; :class:`BufferWriter` is the recorder's sink that copies each
batch's outputs into one buffer per layer, allocated once, in memory or as a ``.npy`` file
(:func:`spill_collected` writes already collected tensors to such files).
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from sepmeasure._memory import empty_host
from sepmeasure.validation import check_labels, describe, did_you_mean

from .recorder import as_device
from .selection import module_names

__all__ = ["Activations", "BufferWriter", "spill_collected"]


class Activations(Mapping[str, torch.Tensor]):
    """Activations of several layers over the same samples: a read-only ``{name: Tensor}``.

    Every value has shape ``[n_samples, *features]`` with row ``i`` belonging
    to input sample ``i``.

    Attributes
    ----------
    labels : Tensor or None
        The targets that came with the data, one per sample.
    layer_names : tuple of str
        Layer keys in forward order.
    n_samples : int
        Number of samples (rows) in every tensor.
    files : dict of str to Path
        For activations spilled to disk, the ``.npy`` file of each layer.

    Notes
    -----
    Equality is identity: comparing tensors element-wise is left to
    ``torch.equal`` on the values.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], labels: torch.Tensor | None = None,
                 files: Mapping[str, Path] | None = None) -> None:
        if not isinstance(tensors, Mapping):
            raise TypeError(f"tensors: expected a mapping of layer names to tensors, got {describe(tensors)}")
        if not tensors:
            raise ValueError("tensors: expected at least one layer, got an empty mapping")
        for key, t in tensors.items():
            if not isinstance(key, str):
                raise TypeError(f"tensors: expected str layer names, got the key {key!r}")
            if not isinstance(t, torch.Tensor) or t.ndim < 1:
                raise TypeError(f"tensors[{key!r}]: expected a tensor of shape [n_samples, *features], "
                                f"got {describe(t)}")
        if labels is not None:
            # class labels (record stores whatever targets came with the data, unchecked)
            checked = check_labels(labels, "labels")
            labels = labels if isinstance(labels, torch.Tensor) else checked
        self._setup(tensors, labels, files)

    @classmethod
    def _make(cls, tensors: Mapping[str, torch.Tensor], labels: torch.Tensor | None = None,
              files: Mapping[str, Path] | None = None) -> Activations:
        """Built by :func:`record` and :meth:`to`: labels are the data's targets, stored as given."""
        self = cls.__new__(cls)
        self._setup(tensors, labels, files)
        return self

    def _setup(self, tensors: Mapping[str, torch.Tensor], labels: torch.Tensor | None,
               files: Mapping[str, Path] | None) -> None:
        self._tensors = dict(tensors)
        self.labels = labels
        self.files = dict(files or {})
        sizes = {int(t.shape[0]) for t in self._tensors.values()}
        if labels is not None:
            sizes.add(int(labels.shape[0]))
        if len(sizes) > 1:
            raise ValueError(f"tensors: expected the same number of rows in every tensor and in "
                             f"labels, got {sorted(sizes)}")
        self.n_samples = sizes.pop() if sizes else 0

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(self._tensors)

    def __getitem__(self, key: str) -> torch.Tensor:
        try:
            return self._tensors[key]
        except KeyError:
            hint = did_you_mean(key, list(self._tensors))
            raise KeyError(f"expected one of the recorded layers {module_names(list(self._tensors))}, "
                           f"got {key!r}{hint}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__

    def to(self, device: torch.device | str) -> Activations:
        """Return a copy with every tensor (and the labels) on ``device``."""
        dev = as_device(device, "device")
        labels = None if self.labels is None else self.labels.to(dev)
        moved = {k: v.to(dev) for k, v in self._tensors.items()}
        files = {k: f for k, f in self.files.items() if moved[k] is self._tensors[k]}
        return Activations._make(moved, labels, files)

    def __repr__(self) -> str:
        if self.labels is None:
            lab = "None"
        else:
            lab = f"Tensor{list(self.labels.shape)} {str(self.labels.dtype).removeprefix('torch.')}"
        lines = [f"Activations(n_samples={self.n_samples}, layers={len(self)}, labels={lab})"]
        width = max((len(k) for k in self._tensors), default=0)
        for key, t in self._tensors.items():
            where = "file" if key in self.files else str(t.device)
            lines.append(f"  {key:<{width}}  {list(t.shape)}  "
                         f"{str(t.dtype).removeprefix('torch.')}  {where}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------
# Writing activations into preallocated buffers
# ----------------------------------------------------------------------------

def _numpy_dtype(dtype: torch.dtype, key: str) -> np.dtype:
    try:
        return torch.empty(0, dtype=dtype).numpy().dtype
    except TypeError as exc:
        raise TypeError(f"spill_to: expected activations with a NumPy-compatible dtype, got "
                        f"{dtype} for layer {key!r}; use spill_to=None or a pool that casts") from exc


def _file_name(key: str, taken: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", key.replace("#", "__call")) or "layer"
    name, k = f"{stem}.npy", 1
    while name in taken:
        name, k = f"{stem}_{k}.npy", k + 1
    taken.add(name)
    return name


def _open_spill_file(path: Path, key: str, shape: tuple[int, ...],
                     dtype: torch.dtype) -> tuple[torch.Tensor, np.memmap]:
    """A writable ``.npy`` memmap at ``path`` and a tensor sharing its memory."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=_numpy_dtype(dtype, key), shape=shape)
    return torch.from_numpy(array), array


class BufferWriter:
    """Sink that copies each hook's output into its slice of a per-layer buffer."""

    def __init__(self, n_total: int, store: torch.device, spill_to: Path | None) -> None:
        self.n_total = n_total
        self.store = store
        self.spill_to = spill_to
        self.buffers: dict[str, torch.Tensor] = {}
        self.files: dict[str, Path] = {}
        self._taken: set[str] = set()
        self._arrays: list[np.memmap] = []
        self.start = self.stop = 0
        self.batch = 0
        self.written: set[str] = set()

    def begin(self, start: int, stop: int, batch: int) -> None:
        self.start, self.stop, self.batch = start, stop, batch
        self.written = set()

    def __call__(self, key: str, t: torch.Tensor, raw: torch.Tensor) -> None:
        rows = self.stop - self.start
        if t.ndim == 0 or t.shape[0] != rows:
            raise RuntimeError(f"layers: expected layer {key!r} to give a batch-first output with "
                               f"{rows} rows for batch {self.batch}, got shape {list(t.shape)}")
        buf = self.buffers.get(key)
        if buf is None:
            if self.batch > 0:
                raise RuntimeError(f"layers: expected the same layers to run for every batch, got "
                                   f"{key!r} running first in batch {self.batch}")
            buf = self._allocate(key, t)
        elif t.shape[1:] != buf.shape[1:]:
            raise RuntimeError(f"layers: expected layer {key!r} to give shape "
                               f"{[rows, *buf.shape[1:]]} for batch {self.batch} (the same features "
                               f"every batch), got {list(t.shape)}; use pool='mean' or a callable "
                               f"pool")
        buf[self.start:self.stop].copy_(t)
        self.written.add(key)

    def _allocate(self, key: str, t: torch.Tensor) -> torch.Tensor:
        shape = (self.n_total, *t.shape[1:])
        if self.spill_to is None:
            buf = empty_host(shape, t.dtype, self.store)
        else:
            path = self.spill_to / _file_name(key, self._taken)
            buf, array = _open_spill_file(path, key, shape, t.dtype)
            self._arrays.append(array)
            self.files[key] = path
        self.buffers[key] = buf
        return buf

    def end_batch(self) -> None:
        missing = [k for k in self.buffers if k not in self.written]
        if missing:
            raise RuntimeError(f"layers: expected the same layers to run for every batch, got no "
                               f"output from {module_names(missing)} in batch {self.batch}")

    def finish(self, n_written: int) -> dict[str, torch.Tensor]:
        for array in self._arrays:
            array.flush()
        if n_written == self.n_total:
            return self.buffers
        return {k: b[:n_written] for k, b in self.buffers.items()}


def spill_collected(tensors: Mapping[str, torch.Tensor],
                     spill_to: Path) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """Write already collected activations to ``.npy`` files; return views of them."""
    out: dict[str, torch.Tensor] = {}
    files: dict[str, Path] = {}
    taken: set[str] = set()
    for key, t in tensors.items():
        files[key] = spill_to / _file_name(key, taken)
        out[key], array = _open_spill_file(files[key], key, tuple(t.shape), t.dtype)
        out[key].copy_(t)
        array.flush()
    return out, files
