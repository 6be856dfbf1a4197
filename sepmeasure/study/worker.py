"""What runs one configuration, wherever it runs (this process, a pool worker, a Dask worker):
seed, set the torch threads, call ``run_one``, time it and return plain rows with provenance."""
from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .._progress import silenced
from ..provenance import environment_info, seed_everything
from .grid import plain_rows

__all__ = ["ConfigTask", "run_task", "run_payload", "environment", "init_pool_worker"]


@dataclass(frozen=True)
class ConfigTask:
    """One configuration to run: the function, its configuration and how to call it.

    Attributes
    ----------
    key : str
        The configuration's hash (its run file's name).
    run_one : callable
        ``run_one(config)`` or ``run_one(config, device=...)``.
    config : dict
        The configuration, seed included.
    device : str or None
        Passed as ``device=`` when ``pass_device``; recorded in the provenance.
    pass_device : bool
        Whether ``run_one`` takes a ``device`` keyword.
    threads : int or None
        Intra-op torch threads while it runs (None: leave torch's setting alone).
    """

    key: str
    run_one: Callable[..., Any]
    config: dict[str, Any]
    device: str | None = None
    pass_device: bool = False
    threads: int | None = None

    def payload(self) -> bytes:
        """The task pickled with cloudpickle, so that functions from study scripts (loaded by path,
        or from test modules) travel by value and need not be importable on the worker."""
        import cloudpickle

        module_name = getattr(self.run_one, "__module__", None)
        module = sys.modules.get(module_name) if module_name else None
        if (module is not None and module_name not in ("__main__", "builtins")
                and module_name != "sepmeasure" and not module_name.startswith("sepmeasure.")):
            with contextlib.suppress(ValueError):  # already registered, or a package builtin
                cloudpickle.register_pickle_by_value(module)
        return cloudpickle.dumps(self)


@functools.lru_cache(maxsize=8)
def environment(device: str) -> dict[str, Any]:
    """Library versions, git commit, platform, device and host (cached per device)."""
    env = environment_info(device)
    env["host"] = socket.gethostname()
    return env


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op torch threads (None: leave the setting alone); restore afterwards."""
    if not threads:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_task(task: ConfigTask) -> dict[str, Any]:
    """Seed, run one configuration, time it; returns its plain rows and provenance."""
    seed_everything(int(task.config.get("seed", 0)))
    start = time.perf_counter()
    with _torch_threads(task.threads), silenced():   # the runner shows one bar over configurations
        config = dict(task.config)
        out = task.run_one(config, device=task.device) if task.pass_device else task.run_one(config)
    wall = time.perf_counter() - start
    rows = plain_rows(out, "run_one(config) returned rows")
    return {"rows": rows, "wall_time_s": wall, "environment": environment(task.device or "cpu"),
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def run_payload(payload: bytes) -> dict[str, Any]:
    """Entry point on pool and Dask workers: the task this process pickled (:meth:`ConfigTask.payload`)."""
    import cloudpickle

    return run_task(cloudpickle.loads(payload))


def init_pool_worker(threads: int) -> None:
    """Pool worker start-up: its own process group (so that the pool can end it and anything it
    starts as a whole), and ``threads`` torch threads."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    try:
        import torch

        torch.set_num_threads(max(1, threads))
    except Exception:  # pragma: no cover - torch is a dependency
        pass
