"""Kernels on disk: a block sink writing a standard ``.npy`` file that survives an interruption
(internal API of ``sepmeasure.kernels``).

The kernel is a memory-mapped ``.npy`` file (``np.load(path, mmap_mode="r")`` reads it), so the
blocks written go to the page cache of the file, not to the process's anonymous memory. Beside it,
``<path>.progress.json`` records which blocks are finished; it is replaced atomically after each
block has been written, so a process killed at any moment leaves a record of blocks that are all
complete, and a rerun computes only the others. A fingerprint of the computation (model
parameters, inputs, method, output, block size) is kept in the record: a rerun with anything
different is refused instead of mixing two kernels in one file.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..storage import atomic_write_text
from .blocks import BlockGrid, BlockPair, swap_block

__all__ = ["NpySink", "fingerprint", "progress_path"]


def progress_path(path: str | os.PathLike) -> Path:
    """Where the record of finished blocks of the kernel file ``path`` lives."""
    p = Path(path)
    return p.with_name(p.name + ".progress.json")


def fingerprint(tensors: Iterable[torch.Tensor], **settings: object) -> str:
    """SHA-256 over the bytes, shapes and dtypes of ``tensors`` and the ``settings``."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class NpySink:
    """Blocks into a memory-mapped ``.npy`` file, each finished block recorded atomically."""

    def __init__(self, path: str | os.PathLike, grid: BlockGrid, shape: tuple[int, ...], dtype: torch.dtype,
                 key: str) -> None:
        self.path = Path(path)
        self.grid = grid
        self.record_path = progress_path(self.path)
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        self._record = {"fingerprint": key, "shape": list(shape), "dtype": np_dtype.str,
                        "block_size": grid.size, "symmetric": grid.symmetric, "finished": []}
        if self.record_path.exists() and self.path.exists():
            old = json.loads(self.record_path.read_text(encoding="utf-8"))
            if {k: v for k, v in old.items() if k != "finished"} != {k: v for k, v in self._record.items()
                                                                    if k != "finished"}:
                raise ValueError(f"out: expected a new path or a kernel file of this same computation, got {str(path)!r}"
                                 f" which holds another (different model, inputs, method, output or block_size); "
                                 f"remove it and {self.record_path.name}, or choose another path")
            self._record["finished"] = old["finished"]
            self._map = np.load(self.path, mmap_mode="r+")
        elif self.path.exists():
            raise ValueError(f"out: expected a new path or a kernel file this function started, got {str(path)!r}, "
                             f"an existing file without its record {self.record_path.name}; remove it or choose "
                             f"another path")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._map = np.lib.format.open_memmap(self.path, mode="w+", dtype=np_dtype, shape=shape)
            self._map.flush()
            atomic_write_text(self.record_path, json.dumps(self._record))

    def finished(self) -> set[BlockPair]:
        return {(i, j) for i, j in self._record["finished"]}

    def write(self, pair: BlockPair, block: torch.Tensor) -> None:
        i, j = pair
        rows, cols = self.grid.rows(i, self.grid.n1), self.grid.rows(j, self.grid.n2)
        self._map[rows, cols] = block.detach().to("cpu").numpy()
        if self.grid.symmetric and i != j:
            self._map[cols, rows] = swap_block(block).detach().to("cpu").numpy()
        self._map.flush()
        self._record["finished"].append([i, j])
        atomic_write_text(self.record_path, json.dumps(self._record))

    def result(self) -> np.memmap:
        """The finished kernel, memory-mapped read-only."""
        self._map.flush()
        del self._map
        return np.load(self.path, mmap_mode="r")
