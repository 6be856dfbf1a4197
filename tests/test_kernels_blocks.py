"""The block-pair driver: which pairs it computes, how a sink mirrors them, and what it skips."""
from __future__ import annotations

import pytest
import torch

from sepmeasure.kernels.blocks import BlockGrid, TensorSink, fill_blocks, local_producer, swap_block


@pytest.mark.parametrize("n1,n2,size,symmetric", [(5, 5, 2, True), (5, 3, 2, False), (4, 4, 4, True),
                                                  (7, 7, 3, False), (1, 6, 5, False)])
def test_blocks_cover_every_entry_once(n1, n2, size, symmetric):
    grid = BlockGrid(n1, n2, size, symmetric)
    hits = torch.zeros(n1, n2, dtype=torch.int64)
    for i, j in grid.pairs():
        hits[grid.rows(i, n1), grid.rows(j, n2)] += 1
        if symmetric and i != j:
            hits[grid.rows(j, n2), grid.rows(i, n1)] += 1
    assert bool((hits == 1).all())
    if symmetric:
        assert all(j >= i for i, j in grid.pairs())


@pytest.mark.parametrize("trailing", [(), (3, 3)])
def test_symmetric_kernel_from_upper_blocks(trailing):
    n, size = 7, 3
    a = torch.randn(n, 4, *trailing[:1])
    full = torch.einsum("ad,bd->ab", a, a) if not trailing else torch.einsum("adk,bdl->abkl", a, a)
    grid = BlockGrid(n, n, size, symmetric=True)
    calls = []

    def block(i, j):
        calls.append((i, j))
        return full[grid.rows(i, n), grid.rows(j, n)].clone()

    sink = TensorSink(grid, torch.full_like(full, float("nan")))
    assert fill_blocks(grid, sink, local_producer(block)) == len(grid.pairs()) == 6
    assert calls == grid.pairs()
    assert torch.equal(sink.result, full)


def test_swap_block_swaps_samples_and_outputs():
    b = torch.randn(2, 3, 4, 5)
    assert torch.equal(swap_block(b)[1, 0, 2, 3], b[0, 1, 3, 2])
    m = torch.randn(2, 3)
    assert torch.equal(swap_block(m), m.T)


def test_finished_blocks_are_skipped():
    grid = BlockGrid(4, 4, 2, symmetric=False)

    class HalfDone(TensorSink):
        def finished(self):
            return {(0, 0), (2, 2)}

    sink = HalfDone(grid, torch.zeros(4, 4))
    seen = []
    n = fill_blocks(grid, sink, local_producer(lambda i, j: seen.append((i, j)) or torch.ones(2, 2)))
    assert n == 2 and seen == [(0, 2), (2, 0)]
    assert sink.result[:2, :2].sum() == 0 and sink.result[:2, 2:].sum() == 4
