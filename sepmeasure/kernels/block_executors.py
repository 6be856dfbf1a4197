"""Kernel blocks computed by workers (internal API of ``sepmeasure.kernels``).

A *job* is a picklable callable ``job(i, j) -> block`` (for the NTK: the model, its inputs and the
settings). It is sent to every worker once — through the pool's initializer for
``executor="processes"``, scattered with ``broadcast=True`` to a ``dask.distributed.Client`` — and
each task then names only its block. Finished blocks come back to the calling process, which
writes them (to memory or to a ``.npy`` file) as they arrive.
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import torch

from ..validation import describe
from .blocks import BlockPair, Producer, local_producer

__all__ = ["EXECUTORS", "check_executor", "producer"]

EXECUTORS: tuple[str, ...] = ("local", "processes")
"""Executors named by a string; a ``dask.distributed.Client`` is accepted as well."""

_JOB: Any = None     # the job of this worker process (set once by the pool initializer)


def _is_dask_client(value: Any) -> bool:
    return type(value).__name__ == "Client" and type(value).__module__.startswith("distributed")


def check_executor(executor: Any) -> Any:
    """``executor`` if it is ``None``, one of :data:`EXECUTORS` or a Dask client, else a named error."""
    if executor is None or (isinstance(executor, str) and executor in EXECUTORS) or _is_dask_client(executor):
        return executor
    raise ValueError(f"executor: expected None, 'local', 'processes' or a dask.distributed.Client, "
                     f"got {describe(executor)}")


def _set_job(job: Any) -> None:
    global _JOB
    _JOB = job
    torch.set_num_threads(1)


def _run_job(pair: BlockPair) -> tuple[BlockPair, torch.Tensor]:
    return pair, _JOB(*pair)


def _run_scattered(job: Any, pair: BlockPair) -> tuple[BlockPair, torch.Tensor]:
    return pair, job(*pair)


def producer(executor: Any, job: Callable[[int, int], torch.Tensor], workers: int | None = None) -> Producer:
    """A producer computing the blocks of ``job`` on ``executor`` (``None``/``"local"``: in order, here)."""
    if executor is None or executor == "local":
        return local_producer(job)
    if executor == "processes":
        def processes(pairs: list[BlockPair]) -> Iterator[tuple[BlockPair, torch.Tensor]]:
            if not pairs:
                return
            n = max(1, min(len(pairs), workers or os.cpu_count() or 1))
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(n, mp_context=context, initializer=_set_job, initargs=(job,)) as pool:
                for future in as_completed([pool.submit(_run_job, p) for p in pairs]):
                    yield future.result()
        return processes

    def dask(pairs: list[BlockPair]) -> Iterator[tuple[BlockPair, torch.Tensor]]:
        if not pairs:
            return
        from distributed import as_completed as dask_completed
        scattered = executor.scatter(job, broadcast=True)
        futures = [executor.submit(_run_scattered, scattered, p, pure=False) for p in pairs]
        for future in dask_completed(futures):
            yield future.result()
            future.release()
    return dask
