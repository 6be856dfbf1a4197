"""The block-pair driver shared by every blockwise kernel (internal API of ``sepmeasure.kernels``).

A kernel ``K(x1, x2)`` of ``N1 × N2`` samples is computed as blocks of ``size`` rows of ``x1``
times ``size`` rows of ``x2``. The driver enumerates the block pairs (for a symmetric kernel,
``x2 = x1``, only the pairs on and above the diagonal), takes computed blocks from a *producer*
(in this process, or from workers, in any order) and hands them to a *sink*: an in-memory tensor
(:class:`TensorSink`) or a ``.npy`` file on disk (:class:`NpySink`, in ``kernel_files``). A sink
writes the mirror image of an off-diagonal block of a symmetric kernel itself and says which blocks
it already holds, so an interrupted computation resumes with the missing ones.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from .._progress import progress_bar

__all__ = ["BlockGrid", "BlockPair", "BlockSink", "KernelOverflowError", "Producer", "TensorSink", "fill_blocks",
           "local_producer", "swap_block"]


class KernelOverflowError(ValueError):
    """A kernel of finite inputs whose entries overflow its dtype (raised by the NTK and the NPK, whose
    messages name their inputs ``x1, x2``; callers that pass other arguments re-raise naming those)."""

BlockPair = tuple[int, int]


@dataclass(frozen=True)
class BlockGrid:
    """Block pairs of an ``n1 × n2`` kernel in blocks of ``size`` rows (upper triangle when symmetric)."""

    n1: int
    n2: int
    size: int
    symmetric: bool

    def pairs(self) -> list[BlockPair]:
        """Start rows ``(i, j)`` of every block to compute, row-block-major."""
        rows = range(0, self.n1, self.size)
        cols = range(0, self.n2, self.size)
        return [(i, j) for i in rows for j in cols if not self.symmetric or j >= i]

    def rows(self, i: int, n: int) -> slice:
        """The slice of ``n`` rows that block start ``i`` covers."""
        return slice(i, min(i + self.size, n))


def swap_block(block: torch.Tensor) -> torch.Tensor:
    """``K(x_b, x_a)`` from ``K(x_a, x_b)``: swap the sample axes (and the output axes of a 4-D block)."""
    return block.permute(1, 0, 3, 2) if block.ndim == 4 else block.transpose(0, 1)


class BlockSink(Protocol):
    """Where finished blocks go."""

    def finished(self) -> set[BlockPair]:
        """Blocks already held (skipped by :func:`fill_blocks`)."""

    def write(self, pair: BlockPair, block: torch.Tensor) -> None:
        """Store one block (and its mirror image for a symmetric kernel)."""


class TensorSink:
    """Blocks into one tensor ``result`` of shape ``(n1, n2, ...)``."""

    def __init__(self, grid: BlockGrid, result: torch.Tensor) -> None:
        self.grid = grid
        self.result = result

    def finished(self) -> set[BlockPair]:
        return set()

    def write(self, pair: BlockPair, block: torch.Tensor) -> None:
        i, j = pair
        rows, cols = self.grid.rows(i, self.grid.n1), self.grid.rows(j, self.grid.n2)
        self.result[rows, cols] = block
        if self.grid.symmetric and i != j:
            self.result[cols, rows] = swap_block(block)


Producer = Callable[[list[BlockPair]], Iterable[tuple[BlockPair, torch.Tensor]]]


def local_producer(compute: Callable[[int, int], torch.Tensor]) -> Producer:
    """A producer computing each block in this process, in order (so row-block caches stay warm)."""
    def produce(pairs: list[BlockPair]) -> Iterator[tuple[BlockPair, torch.Tensor]]:
        for i, j in pairs:
            yield (i, j), compute(i, j)
    return produce


def fill_blocks(grid: BlockGrid, sink: BlockSink, produce: Producer, *, progress: bool = True,
                desc: str = "kernel") -> int:
    """Compute every block of ``grid`` the sink does not hold yet and write it; return how many.

    A progress bar over blocks is shown when there is more than one block to compute and
    ``progress`` asks for it (see ``sepmeasure._progress``).

    Examples
    --------
    >>> grid = BlockGrid(3, 3, 2, symmetric=True)
    >>> out = torch.zeros(3, 3)
    >>> x = torch.arange(3.0)
    >>> def block(i, j):
    ...     return torch.outer(x[grid.rows(i, 3)], x[grid.rows(j, 3)])
    >>> fill_blocks(grid, TensorSink(grid, out), local_producer(block))
    3
    >>> bool(torch.equal(out, torch.outer(x, x)))
    True
    """
    done = sink.finished()
    todo = [p for p in grid.pairs() if p not in done]
    bar = progress_bar(total=len(todo), progress=progress and len(todo) > 1, desc=desc, unit="block",
                       leave=False)
    try:
        for pair, block in produce(todo):
            sink.write(pair, block)
            bar.update(1)
    finally:
        bar.close()
    return len(todo)
