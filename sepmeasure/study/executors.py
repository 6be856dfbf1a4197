"""Executors: where configurations run. Each is a thin adapter over a
:class:`concurrent.futures.Executor` (this process, a process pool, a Dask client's
``get_executor()``), registered by name in :data:`EXECUTORS`.

A process pool's workers run in their own process groups; while the pool (or a Dask cluster of
our own) is open, SIGTERM and SIGHUP raise :class:`StudyTerminated` in the main thread, and leaving the executor with an
exception (that one, ``KeyboardInterrupt``, an error) ends every worker and what it started,
instead of waiting for them.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
import socket
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlparse

from ..validation import check_choice, check_int, describe
from .errors import SchedulerUnreachableError, StudyError, StudyTerminated
from .worker import ConfigTask, init_pool_worker, run_payload, run_task

__all__ = ["EXECUTORS", "StudyExecutor", "LocalExecutor", "ProcessExecutor", "DaskExecutor", "make_executor",
           "check_executor", "TerminationSignals"]

Outcome = tuple[str, "dict[str, Any] | None", "str | None"]


class _InThisProcess(concurrent.futures.Executor):
    """A :class:`concurrent.futures.Executor` that runs each call when it is submitted."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future


class StudyExecutor:
    """Runs configurations on a :class:`concurrent.futures.Executor` and yields them as they finish.

    Subclasses set ``kind``, make ``self.futures`` (the executor) and say how a task is submitted
    (:meth:`submit`) and how many may be in flight at once (``in_flight``; None: all).
    """

    kind = ""
    in_flight: int | None = None

    def __init__(self) -> None:
        self.futures: concurrent.futures.Executor = _InThisProcess()

    def __enter__(self) -> "StudyExecutor":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(terminate=exc_type is not None)

    def close(self, *, terminate: bool = False) -> None:
        """Release the executor; ``terminate=True`` ends running work instead of waiting for it."""
        self.futures.shutdown(wait=not terminate, cancel_futures=True)

    def submit(self, task: ConfigTask) -> concurrent.futures.Future:
        """Start one task; its future's result is :func:`~sepmeasure.study.worker.run_task`'s."""
        return self.futures.submit(run_payload, task.payload())

    def map_unordered(self, tasks: Iterable[ConfigTask]) -> Iterator[Outcome]:
        """Yield ``(key, outcome, None)`` or ``(key, None, traceback)`` per task, as each finishes."""
        todo = iter(tasks)
        pending: dict[concurrent.futures.Future, str] = {}

        def fill() -> None:
            while self.in_flight is None or len(pending) < self.in_flight:
                task = next(todo, None)
                if task is None:
                    return
                pending[self.submit(task)] = task.key

        try:
            fill()
            while pending:
                done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    key = pending.pop(future)
                    try:
                        yield key, future.result(), None
                    except Exception:
                        yield key, None, traceback.format_exc()
                fill()
        finally:
            for future in pending:
                future.cancel()


class LocalExecutor(StudyExecutor):
    """Runs configurations one after another in this process."""

    kind = "local"
    in_flight = 1

    def submit(self, task: ConfigTask) -> concurrent.futures.Future:
        return self.futures.submit(run_task, task)


class TerminationSignals:
    """While installed, SIGTERM and SIGHUP raise :class:`StudyTerminated` in the main thread (in
    another thread, or where a signal cannot be caught, nothing changes); :meth:`restore` puts the
    previous handlers back.

    Examples
    --------
    >>> with TerminationSignals():
    ...     pass
    """

    def __init__(self, signums: Iterable[int] = (signal.SIGTERM, signal.SIGHUP)) -> None:
        self.signums = tuple(signums)
        self._previous: dict[int, Any] = {}

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        raise StudyTerminated(signum)

    def install(self) -> "TerminationSignals":
        """Install the handlers (main thread only)."""
        if threading.current_thread() is threading.main_thread():
            for signum in self.signums:
                with contextlib.suppress(ValueError, OSError):
                    self._previous[signum] = signal.signal(signum, self._raise)
        return self

    def restore(self) -> None:
        """Put back the handlers found by :meth:`install`."""
        for signum, handler in self._previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> "TerminationSignals":
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.restore()


def _pool_context() -> multiprocessing.context.BaseContext:
    """A fork server that has imported this package once (workers start fast and no thread state is
    forked), else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["sepmeasure.study"])
        return ctx
    return multiprocessing.get_context("spawn")


class ProcessExecutor(StudyExecutor):
    """Runs configurations in a pool of ``workers`` processes (started from a fork server or
    spawned; torch threads split between them; each worker in its own process group)."""

    kind = "processes"

    def __init__(self, workers: int | None = None) -> None:
        cpus = os.cpu_count() or 1
        self.workers = workers or cpus
        self._signals = TerminationSignals().install()
        self.futures = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers, mp_context=_pool_context(),
            initializer=init_pool_worker, initargs=(max(1, cpus // self.workers),))

    def worker_pids(self) -> list[int]:
        """Process ids of the pool's live workers."""
        processes = getattr(self.futures, "_processes", None) or {}
        return [p.pid for p in list(processes.values()) if p.pid is not None and p.is_alive()]

    def close(self, *, terminate: bool = False) -> None:
        try:
            if terminate:
                for pid in self.worker_pids():
                    with contextlib.suppress(OSError):
                        os.killpg(pid, signal.SIGKILL)  # the worker's group: it and what it started
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)    # in case it could not make its own group
            self.futures.shutdown(wait=not terminate, cancel_futures=True)
        finally:
            self._signals.restore()


_DASK_HINT = ("start a scheduler with `dask scheduler` and workers with `dask worker <address>` (each "
              "with sepmeasure installed), check the address and port (e.g. tcp://host:8786), or run "
              "without a cluster: --executor local or --executor processes")


def _probe(address: str, timeout: float) -> None:
    """Fail fast, with a hint, when a tcp:// scheduler address does not accept connections."""
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if parsed.scheme not in ("tcp", ""):
        return
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError as exc:
        raise SchedulerUnreachableError(f"scheduler: expected an address like tcp://host:8786, got "
                                        f"{address!r} ({exc}); {_DASK_HINT}") from None
    if not host or port is None:
        raise SchedulerUnreachableError(f"scheduler: expected an address like tcp://host:8786 (with a port), "
                                        f"got {address!r}; {_DASK_HINT}")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise SchedulerUnreachableError(f"scheduler: could not connect to a Dask scheduler at {address!r} within "
                                        f"{timeout:g} s ({exc}); {_DASK_HINT}") from None


class DaskExecutor(StudyExecutor):
    """Runs configurations on a Dask distributed cluster, through its client's
    :meth:`~distributed.Client.get_executor`.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``). Without one, a
        ``LocalCluster`` of ``workers`` single-threaded worker processes is started here.
    workers : int, optional
        Workers of the local cluster (ignored with ``scheduler``).
    connect_timeout : float
        Seconds to wait for the scheduler.
    """

    kind = "dask"

    def __init__(self, scheduler: str | None = None, workers: int | None = None,
                 connect_timeout: float = 5.0) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise StudyError("executor='dask' needs the 'distributed' package: "
                             "pip install 'dask[distributed]'") from exc
        self._cluster = None
        self._signals = TerminationSignals()
        if scheduler is None:
            self._signals.install()  # a cluster of our own: its processes end with us
            self._cluster = LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True,
                                         dashboard_address=":0")
            self.client = Client(self._cluster)
            self.address = self._cluster.scheduler_address
        else:
            if not isinstance(scheduler, str) or not scheduler:
                raise TypeError(f"scheduler: expected an address string like tcp://host:8786, got "
                                f"{describe(scheduler)}")
            _probe(scheduler, connect_timeout)
            try:
                self.client = Client(scheduler, timeout=f"{connect_timeout}s")
            except Exception as exc:
                raise SchedulerUnreachableError(f"scheduler: could not talk to a Dask scheduler at {scheduler!r} "
                                                f"({type(exc).__name__}: {exc}); {_DASK_HINT}") from None
            self.address = scheduler
        self.futures = self.client.get_executor(pure=False)

    def close(self, *, terminate: bool = False) -> None:
        with contextlib.suppress(Exception):
            self.futures.shutdown(wait=False)
        with contextlib.suppress(Exception):
            self.client.close()
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.close()
        self._signals.restore()


EXECUTORS: dict[str, type[StudyExecutor]] = {"local": LocalExecutor, "processes": ProcessExecutor,
                                             "dask": DaskExecutor}
"""The executors by name: adding one is one entry here (a :class:`StudyExecutor` subclass)."""


def check_executor(executor: Any, scheduler: Any, *, option: str = "executor") -> str:
    """Check an executor choice and its scheduler once, for the API and the command line; return its kind.

    Parameters
    ----------
    executor : str, StudyExecutor or None
        A name of :data:`EXECUTORS`, an executor from :func:`make_executor`, or None (``"dask"``
        when ``scheduler`` is given, else ``"local"``).
    scheduler : str or None
        A Dask scheduler address: only with ``executor="dask"`` (or None).
    option : str, default "executor"
        How the executor argument is named in messages (``"--executor"`` on the command line).

    Returns
    -------
    str
        The executor's kind.

    Raises
    ------
    ValueError
        An unknown name; a scheduler with another executor, or with an executor object.
    TypeError
        ``executor`` is neither a name nor an executor object.

    Examples
    --------
    >>> check_executor(None, "tcp://host:8786")
    'dask'
    >>> check_executor("processes", None)
    'processes'
    """
    sched = "--scheduler" if option.startswith("--") else "scheduler"
    if executor is None:
        return "dask" if scheduler is not None else "local"
    if isinstance(executor, str):
        check_choice(executor, option, tuple(EXECUTORS))
        if scheduler is not None and executor != "dask":
            if option.startswith("--"):
                raise ValueError(f"{sched}: only used with {option} dask, got {option} {executor}")
            raise ValueError(f"{sched}: only used with {option}='dask', got {option}={executor!r} and "
                             f"scheduler={scheduler!r}")
        return executor
    if isinstance(executor, StudyExecutor):
        if scheduler is not None:
            raise ValueError(f"{sched}: pass it to make_executor when giving an executor object")
        return executor.kind
    raise TypeError(f"{option}: expected one of {tuple(EXECUTORS)} or an executor from make_executor, got "
                    f"{describe(executor)}")


def make_executor(kind: str = "local", *, scheduler: str | None = None, workers: int | None = None,
                  connect_timeout: float = 5.0) -> StudyExecutor:
    """An executor for :meth:`Study.run` (a context manager; close it when done).

    Parameters
    ----------
    kind : {"local", "processes", "dask"}
        ``"local"``: sequential, in this process; ``"processes"``: a process pool of ``workers``;
        ``"dask"``: the Dask scheduler at ``scheduler`` (or a local cluster of ``workers``).
    scheduler : str, optional
        Dask scheduler address; only with ``kind="dask"``.
    workers : int, optional
        Pool size (processes) or local-cluster size (dask without ``scheduler``).
    connect_timeout : float, default 5.0
        Seconds to wait for the Dask scheduler before giving up with a hint.

    Returns
    -------
    StudyExecutor
        A ``LocalExecutor``, ``ProcessExecutor`` or ``DaskExecutor`` (its ``kind`` is ``kind``).

    Raises
    ------
    ValueError
        ``kind`` is not one of ``"local"``, ``"processes"``, ``"dask"``; ``workers`` < 1; ``scheduler`` is given with a ``kind`` other than ``"dask"``.
    TypeError
        ``workers`` is not an int (bools are refused); with ``kind="dask"``, ``scheduler`` is not a
        non-empty string.
    SchedulerUnreachableError
        ``kind="dask"`` and ``scheduler`` is not an address like ``tcp://host:8786``, does not
        accept connections within ``connect_timeout`` or no Dask client can be made for it.
    StudyError
        ``kind="dask"`` and the ``distributed`` package is not installed.

    Examples
    --------
    >>> with make_executor("local") as ex:
    ...     ex.kind
    'local'
    """
    if not isinstance(kind, str):
        check_choice(kind, "kind", tuple(EXECUTORS))
    check_executor(kind, scheduler, option="kind")
    if workers is not None:
        workers = check_int(workers, "workers", minimum=1)
    if kind == "local":
        return LocalExecutor()
    if kind == "processes":
        return ProcessExecutor(workers)
    return DaskExecutor(scheduler, workers, connect_timeout)
