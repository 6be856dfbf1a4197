"""Studies: grids of configurations run through one function, cached per configuration, executed
locally, in a process pool or on a Dask cluster, summarised into tables and judged by claims.

A :class:`Study` is

* a grid of configurations for a ``"quick"`` and a ``"full"`` mode (every configuration is
  run once per seed; the seed lands in the configuration as ``config["seed"]``),
* ``run_one(config) -> rows`` (a list of dicts or a DataFrame) that trains and measures one
  configuration (it may also take ``device=``),
* ``summarize(results) -> {name: table}`` that turns the tidy rows of every configuration into
  the study's tables, and
* :mod:`claims <sepmeasure.claims>` that are evaluated on those tables, and figure specs
  (:class:`sepmeasure.report.FigureSpec`) that the report draws from them.

:meth:`Study.run` writes, under ``<out>/<study name>/``:

``runs/<hash>.json`` (or ``.pkl`` / ``.parquet``)
    One file per finished configuration, keyed by a stable hash of the study name and the
    configuration (sorted JSON), written atomically (temporary file + rename). The file holds
    the cache format version, the study version, the configuration, the rows, the wall time
    and the environment (library versions, git commit, device, host). A run that is killed
    resumes from these files without recomputing or duplicating anything; a file written by
    another format or study version, or an unreadable one, is ignored with a warning and its
    configuration re-run.
``tables/<name>.csv`` (and ``.parquet`` when pyarrow is importable)
    ``results`` (every row of every configuration, with the configuration's factors (a row's own
    value of a factor wins unless it is missing) and the provenance columns ``seed``,
    ``config_hash``, ``wall_time_s``, ``device``, ``host``, ``git_commit`` and ``version_*``),
    the tables of ``summarize``, and ``claims`` (one row per claim and group: effect, interval,
    verdict, rule).
``study.json``
    What the report needs besides the tables: title, paper, claims' statements, figure specs,
    mode, seeds, counts and times.

Examples
--------
>>> import tempfile
>>> def run_one(config):
...     return [{"measure": "square", "value": config["x"] ** 2 + config["seed"]}]
>>> study = Study(name="squares", run_one=run_one, quick={"x": [1, 2]}, full={"x": [1, 2, 3]},
...               seeds={"quick": 2, "full": 3})
>>> result = study.run("quick", out=tempfile.mkdtemp(), progress=False)
>>> result.tables["results"][["x", "seed", "value"]].values.tolist()
[[1, 0, 1], [1, 1, 2], [2, 0, 4], [2, 1, 5]]
>>> result.n_computed, study.run("quick", out=result.out_dir.parent, progress=False).n_computed
(4, 0)
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as _dt
import functools
import hashlib
import inspect
import itertools
import json
import multiprocessing
import os
import pickle
import re
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from ._progress import silenced
from .claims import Claim, ClaimResult, claims_frame
from .provenance import environment_info, seed_everything
from .storage import atomic_path, atomic_write_text
from .validation import check_choice, check_int, describe

__all__ = [
    "CACHE_FORMAT_VERSION",
    "EXECUTORS",
    "MODES",
    "Study",
    "StudyResult",
    "StudyError",
    "StudyRunError",
    "SchedulerUnreachableError",
    "CacheWarning",
    "expand_grid",
    "config_hash",
    "make_executor",
    "write_tables",
]

CACHE_FORMAT_VERSION = 1
"""Version of the per-configuration cache files; files of another version are re-run."""

EXECUTORS: tuple[str, ...] = ("local", "processes", "dask")
MODES: tuple[str, ...] = ("quick", "full")
CACHE_FORMATS: dict[str, str] = {"json": ".json", "pickle": ".pkl", "parquet": ".parquet"}
PROVENANCE_COLUMNS: tuple[str, ...] = ("config_hash", "wall_time_s", "finished_at")
_TABLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class StudyError(RuntimeError):
    """A study could not run or could not be summarised."""


class StudyRunError(StudyError):
    """Some configurations of a study failed (the others are cached)."""

    def __init__(self, message: str, failures: Sequence[tuple[dict, str]]) -> None:
        super().__init__(message)
        self.failures = list(failures)


class SchedulerUnreachableError(StudyError, ConnectionError):
    """The Dask scheduler address given could not be reached."""


class CacheWarning(UserWarning):
    """A cached configuration was ignored (incompatible version or unreadable) and is re-run."""


# --------------------------------------------------------------------------------------------
# grids and keys


def expand_grid(spec: Mapping[str, Any] | Sequence[Mapping[str, Any]], name: str = "grid") -> list[dict[str, Any]]:
    """Configurations from a grid spec.

    A dict is a Cartesian product over its **list** values; every other value, tuples included,
    is a constant (write a constant sequence as a tuple: ``"classes": (0, 1, 2)``). A list of
    dicts is taken as it is (each dict may itself be a product).

    Parameters
    ----------
    spec : dict or list of dicts
        ``{factor name: value or list of values}``, or a list of such dicts.
    name : str, default "grid"
        Argument name used in error messages.

    Returns
    -------
    list of dict
        One dict per configuration, factors in the order of ``spec`` (the last factor varies
        fastest); the configurations of a list of dicts one after the other.

    Raises
    ------
    TypeError
        ``spec`` is neither a dict nor a list (or other sequence) of dicts; a factor name is not a
        string.
    ValueError
        A factor has an empty list of values.

    Examples
    --------
    >>> expand_grid({"width": [8, 16], "depth": [1, 2], "epochs": 3})[:2]
    [{'width': 8, 'depth': 1, 'epochs': 3}, {'width': 8, 'depth': 2, 'epochs': 3}]
    >>> expand_grid({"widths": [(8, 8), (16,)], "classes": (0, 1)})
    [{'widths': (8, 8), 'classes': (0, 1)}, {'widths': (16,), 'classes': (0, 1)}]
    >>> len(expand_grid([{"model": "mlp", "width": [8, 16]}, {"model": "cnn"}]))
    3
    """
    if isinstance(spec, Mapping):
        for key in spec:
            if not isinstance(key, str):
                raise TypeError(f"{name}: expected str factor names, got {describe(key)}")
        keys = list(spec)
        axes = [v if isinstance(v, list) else [v] for v in spec.values()]
        for k, axis in zip(keys, axes):
            if not axis:
                raise ValueError(f"{name}['{k}']: expected at least one value, got an empty list")
        return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]
    if isinstance(spec, Sequence) and not isinstance(spec, (str, bytes)):
        out: list[dict[str, Any]] = []
        for i, item in enumerate(spec):
            if not isinstance(item, Mapping):
                raise TypeError(f"{name}[{i}]: expected a dict of factor -> value(s), got {describe(item)}")
            out.extend(expand_grid(item, f"{name}[{i}]"))
        return out
    raise TypeError(f"{name}: expected a dict of factor -> values or a list of such dicts, got {describe(spec)}")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "detach") and hasattr(value, "tolist"):  # torch tensors
        return value.detach().cpu().tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    if isinstance(value, (Path, _dt.datetime, _dt.date)):
        return str(value)
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    raise TypeError(f"expected JSON-serialisable values (numbers, strings, lists, dicts), got {describe(value)}")


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default, allow_nan=True)


def config_hash(study: str, config: Mapping[str, Any]) -> str:
    """Stable key of one configuration: SHA-256 of the sorted JSON of study name and configuration.

    Parameters
    ----------
    study : str
        The study's name.
    config : dict
        The configuration (its seed included). NumPy scalars and arrays, tensors, sets, paths,
        dates and timestamps are turned into JSON values first.

    Returns
    -------
    str
        The first 20 hexadecimal digits of the hash.

    Raises
    ------
    TypeError
        ``config`` is not a dict, or a value of it (or ``study``) cannot be turned into JSON.

    Examples
    --------
    >>> config_hash("s", {"a": 1, "b": [1, 2]}) == config_hash("s", {"b": [1, 2], "a": 1})
    True
    >>> len(config_hash("s", {"a": 1}))
    20
    """
    return hashlib.sha256(_canonical({"study": study, "config": dict(config)}).encode()).hexdigest()[:20]


def _plain_rows(rows: Any, where: str) -> list[dict[str, Any]]:
    if rows is None:
        return []
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")
    if isinstance(rows, Mapping) or not isinstance(rows, Sequence):
        raise TypeError(f"{where}: expected a list of dicts or a DataFrame, got {describe(rows)}")
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise TypeError(f"{where}[{i}]: expected a dict (one row), got {describe(r)}")
        try:
            out.append(json.loads(json.dumps({str(k): v for k, v in r.items()}, default=_json_default,
                                             allow_nan=True)))
        except TypeError as exc:
            raise TypeError(f"{where}[{i}]: {exc}") from None
    return out


# --------------------------------------------------------------------------------------------
# running one configuration (in this process, a pool worker, or a Dask worker)


@functools.lru_cache(maxsize=8)
def _environment(device: str) -> dict[str, Any]:
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


def _execute(run_one: Callable, config: dict[str, Any], device: str | None, pass_device: bool,
             threads: int | None = None) -> dict[str, Any]:
    """Seed, run one configuration, time it; returns plain rows and provenance."""
    seed_everything(int(config.get("seed", 0)))
    start = time.perf_counter()
    with _torch_threads(threads), silenced():   # the runner shows one bar over configurations
        out = run_one(dict(config), device=device) if pass_device else run_one(dict(config))
    wall = time.perf_counter() - start
    rows = _plain_rows(out, "run_one(config) returned rows")
    return {"rows": rows, "wall_time_s": wall, "environment": _environment(device or "cpu"),
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _execute_payload(payload: bytes) -> dict[str, Any]:
    """Entry point on pool and Dask workers: unpickle (cloudpickle) and run."""
    import cloudpickle

    run_one, config, device, pass_device, threads = cloudpickle.loads(payload)
    return _execute(run_one, config, device, pass_device, threads)


def _init_pool_worker(threads: int) -> None:
    try:
        import torch

        torch.set_num_threads(max(1, threads))
    except Exception:  # pragma: no cover - torch is a dependency
        pass


def _pickle_payload(run_one: Callable, config: dict, device: str | None, pass_device: bool,
                    threads: int | None) -> bytes:
    """Pickle the task so that functions from study scripts (loaded by path, or from test modules)
    travel by value and need not be importable on the worker."""
    import cloudpickle

    module_name = getattr(run_one, "__module__", None)
    module = sys.modules.get(module_name) if module_name else None
    if (module is not None and module_name not in ("__main__", "builtins")
            and module_name != "sepmeasure" and not module_name.startswith("sepmeasure.")):
        with contextlib.suppress(ValueError):  # already registered, or a package builtin
            cloudpickle.register_pickle_by_value(module)
    return cloudpickle.dumps((run_one, config, device, pass_device, threads))


# --------------------------------------------------------------------------------------------
# executors


class LocalExecutor:
    """Runs configurations one after another in this process."""

    kind = "local"

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        pass

    def map_unordered(self, run_one: Callable, tasks: Sequence[tuple[Any, dict]], device: str | None,
                      pass_device: bool, threads: int | None = None) -> Iterator[tuple[Any, dict | None, str | None]]:
        for key, config in tasks:
            try:
                yield key, _execute(run_one, config, device, pass_device, threads), None
            except Exception:
                yield key, None, traceback.format_exc()


def _pool_context() -> multiprocessing.context.BaseContext:
    """A fork server that has imported this package once (workers start fast and no thread state is
    forked), else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["sepmeasure.study"])
        return ctx
    return multiprocessing.get_context("spawn")


class ProcessExecutor(LocalExecutor):
    """Runs configurations in a pool of ``workers`` processes (started from a fork server or
    spawned; torch threads split between them)."""

    kind = "processes"

    def __init__(self, workers: int | None = None) -> None:
        cpus = os.cpu_count() or 1
        self.workers = workers or cpus
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.workers, mp_context=_pool_context(),
            initializer=_init_pool_worker, initargs=(max(1, cpus // self.workers),))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def map_unordered(self, run_one, tasks, device, pass_device, threads=None):
        futures = {self._pool.submit(_execute_payload,
                                     _pickle_payload(run_one, config, device, pass_device, threads)): key
                   for key, config in tasks}
        try:
            for fut in concurrent.futures.as_completed(futures):
                try:
                    yield futures[fut], fut.result(), None
                except Exception:
                    yield futures[fut], None, traceback.format_exc()
        finally:
            for fut in futures:
                fut.cancel()


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


class DaskExecutor(LocalExecutor):
    """Runs configurations on a Dask distributed cluster.

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
        if scheduler is None:
            self._cluster = LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True,
                                         dashboard_address=":0")
            self.client = Client(self._cluster)
            self.address = self._cluster.scheduler_address
            return
        if not isinstance(scheduler, str) or not scheduler:
            raise TypeError(f"scheduler: expected an address string like tcp://host:8786, got {describe(scheduler)}")
        _probe(scheduler, connect_timeout)
        try:
            self.client = Client(scheduler, timeout=f"{connect_timeout}s")
        except Exception as exc:
            raise SchedulerUnreachableError(f"scheduler: could not talk to a Dask scheduler at {scheduler!r} "
                                            f"({type(exc).__name__}: {exc}); {_DASK_HINT}") from None
        self.address = scheduler

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.close()

    def map_unordered(self, run_one, tasks, device, pass_device, threads=None):
        from distributed import as_completed

        futures = {}
        for key, config in tasks:
            fut = self.client.submit(_execute_payload,
                                     _pickle_payload(run_one, config, device, pass_device, threads), pure=False)
            futures[fut.key] = (key, fut)
        try:
            for fut in as_completed([f for _, f in futures.values()]):
                key = futures[fut.key][0]
                try:
                    yield key, fut.result(), None
                except Exception:
                    yield key, None, traceback.format_exc()
        finally:
            for _, fut in futures.values():
                fut.cancel()


def make_executor(kind: str = "local", *, scheduler: str | None = None, workers: int | None = None,
                  connect_timeout: float = 5.0) -> LocalExecutor:
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
    LocalExecutor
        A ``LocalExecutor``, ``ProcessExecutor`` or ``DaskExecutor`` (its ``kind`` is ``kind``).

    Raises
    ------
    ValueError
        ``kind`` is not one of ``"local"``, ``"processes"``, ``"dask"`` (the message names it
        ``executor``); ``workers`` < 1; ``scheduler`` is given with a ``kind`` other than ``"dask"``.
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
    check_choice(kind, "executor", EXECUTORS)
    if workers is not None:
        workers = check_int(workers, "workers", minimum=1)
    if scheduler is not None and kind != "dask":
        raise ValueError(f"scheduler: only used with executor='dask', got executor={kind!r} and "
                         f"scheduler={scheduler!r}")
    if kind == "local":
        return LocalExecutor()
    if kind == "processes":
        return ProcessExecutor(workers)
    return DaskExecutor(scheduler, workers, connect_timeout)


# --------------------------------------------------------------------------------------------
# the cache


def _cache_file(runs: Path, key: str, fmt: str) -> Path:
    return runs / f"{key}{CACHE_FORMATS[fmt]}"


def _write_record(path: Path, record: dict[str, Any], fmt: str) -> None:
    if fmt == "json":
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(record, default=_json_default, allow_nan=True), encoding="utf-8")
    elif fmt == "pickle":
        with atomic_path(path) as tmp:
            tmp.write_bytes(pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))
    else:
        frame = pd.DataFrame(record["rows"])
        frame.attrs["sepmeasure_cache"] = json.dumps({k: v for k, v in record.items() if k != "rows"},
                                                     default=_json_default)
        with atomic_path(path, suffix=".parquet") as tmp:
            frame.to_parquet(tmp)


def _read_record(path: Path, fmt: str) -> dict[str, Any]:
    if fmt == "json":
        return json.loads(path.read_text(encoding="utf-8"))
    if fmt == "pickle":
        with path.open("rb") as fh:
            return pickle.load(fh)
    frame = pd.read_parquet(path)
    record = json.loads(frame.attrs["sepmeasure_cache"])
    record["rows"] = _plain_rows(frame, str(path))
    return record


def _load_cached(runs: Path, key: str, study: "Study", config: dict[str, Any]) -> dict[str, Any] | None:
    """The cached record of ``config``, or None (absent, incompatible or unreadable: warned)."""
    for fmt in (study.cache_format, *(f for f in CACHE_FORMATS if f != study.cache_format)):
        path = _cache_file(runs, key, fmt)
        if not path.exists():
            continue
        try:
            record = _read_record(path, fmt)
        except Exception as exc:
            warnings.warn(f"{path}: unreadable cache file ({type(exc).__name__}: {exc}); re-running this "
                          f"configuration", CacheWarning, stacklevel=3)
            return None
        problem = None
        if not isinstance(record, dict) or "rows" not in record:
            problem = "not a sepmeasure cache record"
        elif record.get("format_version") != CACHE_FORMAT_VERSION:
            problem = (f"written by cache format version {record.get('format_version')!r}, this is version "
                       f"{CACHE_FORMAT_VERSION}")
        elif str(record.get("study_version")) != str(study.version):
            problem = f"written by study version {record.get('study_version')!r}, this is {study.version!r}"
        elif _canonical(record.get("config")) != _canonical(config):
            problem = "its configuration differs from the one requested"
        if problem:
            warnings.warn(f"{path}: ignoring cached result ({problem}); re-running this configuration",
                          CacheWarning, stacklevel=3)
            return None
        return record
    return None


def _remove_stale_temporaries(folder: Path) -> int:
    """Remove temporary files left by a writer that was killed mid-write."""
    removed = 0
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp*"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed += 1
    return removed


# --------------------------------------------------------------------------------------------
# the study


def _has_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def write_tables(tables: Mapping[str, pd.DataFrame], folder: str | os.PathLike) -> list[Path]:
    """Write each table to ``folder/<name>.csv`` (and ``.parquet`` when pyarrow is importable), atomically.

    A table that pyarrow cannot store is written as CSV only, with a warning.

    Parameters
    ----------
    tables : dict of str to pandas.DataFrame
        The tables by name (letters, digits, ``_``, ``-``, ``.``; starting with a letter or digit).
    folder : path
        Where to write; created if missing.

    Returns
    -------
    list of Path
        The files written, in order.

    Raises
    ------
    ValueError
        A table name is not a string of the characters above.
    TypeError
        A table is not a pandas DataFrame.

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> [p.name for p in write_tables({"t": pd.DataFrame({"a": [1]})}, tempfile.mkdtemp())][:1]
    ['t.csv']
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    parquet = _has_pyarrow()
    for name, table in tables.items():
        if not isinstance(name, str) or not _TABLE_NAME.match(name):
            raise ValueError(f"tables: expected names of letters, digits, '_', '-', '.', got {name!r}")
        if not isinstance(table, pd.DataFrame):
            raise TypeError(f"tables['{name}']: expected a pandas DataFrame, got {describe(table)}")
        path = folder / f"{name}.csv"
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)
        written.append(path)
        if parquet:
            ppath = folder / f"{name}.parquet"
            try:
                with atomic_path(ppath, suffix=".parquet") as tmp:
                    _stringify_objects(table).to_parquet(tmp, index=False)
                written.append(ppath)
            except Exception as exc:  # a column pyarrow cannot store: the CSV is the record
                warnings.warn(f"{ppath}: not written ({type(exc).__name__}: {exc})", stacklevel=2)
    return written


def _stringify_objects(table: pd.DataFrame) -> pd.DataFrame:
    out = table.copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(lambda v: v if v is None or isinstance(v, str) else json.dumps(v, default=str))
    return out


@dataclass(frozen=True)
class StudyResult:
    """What :meth:`Study.run` produced.

    Attributes
    ----------
    name, mode : str
    tables : dict of str -> DataFrame
        ``results`` (every row), the tables of ``summarize``, and ``claims``.
    claims : tuple of ClaimResult
    n_configurations, n_cached, n_computed : int
        Configurations in the grid, found in the cache, computed now.
    wall_time_s : float
        Time of this call.
    out_dir : Path
        ``<out>/<study name>``.
    """

    name: str
    mode: str
    tables: Mapping[str, pd.DataFrame]
    claims: tuple[ClaimResult, ...]
    n_configurations: int
    n_cached: int
    n_computed: int
    wall_time_s: float
    out_dir: Path

    def verdicts(self) -> dict[str, str]:
        """``{claim name: verdict}``."""
        return {c.claim: c.verdict for c in self.claims}


def _accepts_device(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "device" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def _column_value(v: Any) -> Any:
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return _canonical(v)


@dataclass(frozen=True, kw_only=True)
class Study:
    """A grid of configurations, the function that runs one, and the claims judged on the results.

    Parameters
    ----------
    name : str
        Folder name under the output directory (letters, digits, ``_``, ``-``).
    run_one : callable
        ``run_one(config) -> list of dicts | DataFrame`` (tidy rows), optionally with a
        ``device=`` keyword. It must be deterministic given ``config["seed"]`` (the runner also
        seeds Python, NumPy and torch with it before each call).
    quick, full : dict or list of dicts
        The grids of the two modes (see :func:`expand_grid`: lists are axes, tuples and other
        values constants); must not contain ``"seed"``.
    seeds : dict
        Seeds per mode, e.g. ``{"quick": 3, "full": 5}``; seeds are ``0 .. n-1``.
    title, paper, description : str
        For the report: the study's title, the paper it reproduces, and a paragraph on the setup.
    claims : sequence of Claim
        Evaluated on the tables after every configuration has finished.
    summarize : callable, optional
        ``summarize(results) -> {name: DataFrame}``: the study's tables from the ``results``
        table. ``results`` itself is always written.
    figures : sequence of FigureSpec
        Figures the report draws from the tables.
    version : str
        Bump it when ``run_one`` changes what it computes: cached results of another version are
        re-run.
    cache_format : {"json", "pickle", "parquet"}
        How each configuration's rows are cached (parquet needs pyarrow).

    Examples
    --------
    >>> import tempfile
    >>> from sepmeasure.claims import MonotoneTrend
    >>> from sepmeasure.report import write_study_report
    >>> def run_one(config):
    ...     return [{"measure": "square", "value": config["x"] ** 2 + 0.1 * config["seed"]}]
    >>> grows = MonotoneTrend(name="grows", paper="(example)", statement="the value grows with x",
    ...                       x="x", y="value")
    >>> study = Study(name="squares", run_one=run_one, quick={"x": [1, 2, 3]}, full={"x": [1, 2, 3, 4]},
    ...               seeds={"quick": 3, "full": 5}, claims=[grows])
    >>> result = study.run("quick", out=tempfile.mkdtemp(), progress=False)
    >>> result.verdicts()
    {'grows': 'supported'}
    >>> write_study_report(result.out_dir)["html"].name
    'report.html'
    """

    name: str
    run_one: Callable[..., Any]
    quick: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    full: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    seeds: Mapping[str, int] = field(default_factory=lambda: {"quick": 3, "full": 5})
    title: str = ""
    paper: str = ""
    description: str = ""
    claims: Sequence[Claim] = ()
    summarize: Callable[[pd.DataFrame], Mapping[str, pd.DataFrame]] | None = None
    figures: Sequence[Any] = ()
    version: str = "1"
    cache_format: str = "json"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _STUDY_NAME.match(self.name):
            raise ValueError(f"name: expected letters, digits, '_' or '-' (a folder name), got {self.name!r}")
        if not callable(self.run_one):
            raise TypeError(f"run_one: expected a callable run_one(config) -> rows, got {describe(self.run_one)}")
        for mode in MODES:
            grid = expand_grid(getattr(self, mode), mode)
            if any("seed" in c for c in grid):
                raise ValueError(f"{mode}: expected a grid without 'seed' (seeds come from `seeds`), got a "
                                 f"configuration with 'seed'")
        if not isinstance(self.seeds, Mapping) or set(self.seeds) != set(MODES):
            raise ValueError(f"seeds: expected a dict with keys 'quick' and 'full', got {self.seeds!r}")
        for mode in MODES:
            check_int(self.seeds[mode], f"seeds['{mode}']", minimum=1)
        claims = tuple(self.claims)
        for i, c in enumerate(claims):
            if not isinstance(c, Claim):
                raise TypeError(f"claims[{i}]: expected a sepmeasure.claims.Claim, got {describe(c)}")
        names = [c.name for c in claims]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"claims: expected unique claim names, got duplicates {dupes}")
        object.__setattr__(self, "claims", claims)
        figures = tuple(self.figures)
        for i, f in enumerate(figures):
            if not dataclasses.is_dataclass(f):
                raise TypeError(f"figures[{i}]: expected a sepmeasure.report.FigureSpec, got {describe(f)}")
        object.__setattr__(self, "figures", figures)
        if self.summarize is not None and not callable(self.summarize):
            raise TypeError(f"summarize: expected a callable results -> {{name: DataFrame}}, "
                            f"got {describe(self.summarize)}")
        check_choice(self.cache_format, "cache_format", tuple(CACHE_FORMATS))
        object.__setattr__(self, "version", str(self.version))

    # -- configurations -----------------------------------------------------------------------
    def configurations(self, mode: str = "quick", seeds: int | Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Every configuration of ``mode``, once per seed (seed last, as ``config["seed"]``).

        Parameters
        ----------
        mode : {"quick", "full"}, default "quick"
            Which grid.
        seeds : int or list of int, optional
            Number of seeds (``0..n-1``) or the seeds themselves; default ``self.seeds[mode]``.

        Returns
        -------
        list of dict
            The grid's configurations in order, each repeated for every seed.

        Raises
        ------
        ValueError
            ``mode`` is not ``"quick"`` or ``"full"``; ``seeds`` is an int < 1, or a list with a
            negative or repeated seed.
        TypeError
            ``seeds`` is neither an int nor a non-empty list of ints (bools are refused).

        Examples
        --------
        >>> s = Study(name="t", run_one=lambda c: [], quick={"w": [1, 2]}, full={"w": [1, 2, 4]})
        >>> [(c["w"], c["seed"]) for c in s.configurations("quick", seeds=2)]
        [(1, 0), (1, 1), (2, 0), (2, 1)]
        """
        check_choice(mode, "mode", MODES)
        seed_list = self._seed_list(mode, seeds)
        return [{**c, "seed": s} for c in expand_grid(getattr(self, mode), mode) for s in seed_list]

    def _seed_list(self, mode: str, seeds: int | Sequence[int] | None) -> list[int]:
        if seeds is None:
            return list(range(self.seeds[mode]))
        if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
            return list(range(check_int(seeds, "seeds", minimum=1)))
        if isinstance(seeds, Sequence) and not isinstance(seeds, str) and len(seeds) > 0:
            out = [check_int(s, f"seeds[{i}]", minimum=0) for i, s in enumerate(seeds)]
            if len(set(out)) != len(out):
                raise ValueError(f"seeds: expected distinct seeds, got {list(seeds)}")
            return out
        raise TypeError(f"seeds: expected a number of seeds (int >= 1) or a list of seeds, got {describe(seeds)}")

    # -- running --------------------------------------------------------------------------------
    def run(self, mode: str = "quick", *, seeds: int | Sequence[int] | None = None, out: str | os.PathLike = "reports",
            executor: str | LocalExecutor = "local", scheduler: str | None = None, workers: int | None = None,
            device: str | None = None, threads: int | None = None, progress: bool = True) -> StudyResult:
        """Run every configuration not yet cached, then summarise, evaluate claims and write tables.

        Parameters
        ----------
        mode : {"quick", "full"}
        seeds : int or list of int, optional
            Number of seeds (``0..n-1``) or the seeds themselves; default ``self.seeds[mode]``.
        out : path
            Output root; the study writes into ``out/<name>/``.
        executor : {"local", "processes", "dask"} or an executor from :func:`make_executor`
        scheduler : str, optional
            Dask scheduler address (``executor="dask"``).
        workers : int, optional
            Processes of the pool, or workers of a local Dask cluster.
        device : str, optional
            Passed to ``run_one(config, device=...)`` when it accepts it; recorded in every row.
        threads : int, optional
            Intra-op torch threads while a configuration runs (restored afterwards); default:
            torch's setting (a process pool splits the cores between its workers). Small models
            on a few cores often run fastest with 1.
        progress : bool
            Show a progress bar (configurations done / total, ETA).

        Returns
        -------
        StudyResult

        Raises
        ------
        ValueError
            ``mode`` is not ``"quick"`` or ``"full"``; ``threads`` < 1; ``executor`` is an unknown
            name; ``scheduler`` is given with an executor other than ``"dask"`` or with an executor
            object; ``seeds`` is an int < 1, or a list with a negative or repeated seed; ``workers``
            < 1 (when configurations are left to compute); ``summarize`` returns a table named
            ``"claims"`` (reserved) or a name that is not letters, digits, ``_``, ``-``, ``.``.
        TypeError
            ``threads`` or ``workers`` is not an int (bools are refused); ``executor`` is neither a
            name nor an executor from :func:`make_executor`; ``out`` is not a path; ``seeds`` is
            neither an int nor a non-empty list of ints; a configuration holds a value that cannot
            be turned into JSON; ``summarize`` returns something other than a dict of DataFrames;
            with ``executor="dask"``, ``scheduler`` is not a non-empty string.
        NotADirectoryError
            ``out`` (or one of its parents) is a file.
        StudyRunError
            When some configurations failed (those that finished stay cached); ``failures`` holds
            each failed configuration with its traceback.
        SchedulerUnreachableError
            When the Dask scheduler cannot be reached.
        StudyError
            ``summarize(results)`` raised; a claim's table does not exist or the claim could not be
            evaluated on it; ``executor="dask"`` without the ``distributed`` package.
        """
        started = time.perf_counter()
        check_choice(mode, "mode", MODES)
        if threads is not None:
            threads = check_int(threads, "threads", minimum=1)
        if isinstance(executor, str):
            check_choice(executor, "executor", EXECUTORS)
            if scheduler is not None and executor != "dask":
                raise ValueError(f"scheduler: only used with executor='dask', got executor={executor!r} and "
                                 f"scheduler={scheduler!r}")
        elif isinstance(executor, LocalExecutor):
            if scheduler is not None:
                raise ValueError("scheduler: pass it to make_executor when giving an executor object")
        else:
            raise TypeError(f"executor: expected one of {EXECUTORS} or an executor from make_executor, got "
                            f"{describe(executor)}")
        out_root = _check_out_dir(out)
        configs = self.configurations(mode, seeds)
        study_dir = out_root / self.name
        runs = study_dir / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(runs)
        for folder in (study_dir, study_dir / "tables", study_dir / "figures"):
            _remove_stale_temporaries(folder)

        keys = [config_hash(self.name, c) for c in configs]
        records: dict[str, dict[str, Any]] = {}
        todo: list[tuple[str, dict]] = []
        seen: set[str] = set()
        for key, config in zip(keys, configs):
            if key in seen:
                continue  # the same configuration twice in a grid runs once
            seen.add(key)
            cached = _load_cached(runs, key, self, config)
            if cached is not None:
                records[key] = cached
            else:
                todo.append((key, config))
        n_cached = len(records)
        failures = self._compute(todo, records, runs, executor, scheduler, workers, device, threads, progress,
                                 total=len(set(keys)))
        if failures:
            first_cfg, first_tb = failures[0]
            raise StudyRunError(
                f"study '{self.name}': {len(failures)} of {len(set(keys))} configurations failed "
                f"({len(records)} finished and are cached; run again to retry only the failed ones). "
                f"First failure, config {_canonical(first_cfg)}:\n{first_tb}", failures)

        results = self._results_table(configs, keys, records)
        tables = self._tables(results)
        claim_results = self._evaluate_claims(tables)
        tables = {**tables, "claims": claims_frame(claim_results)}
        write_tables(tables, study_dir / "tables")
        wall = time.perf_counter() - started
        self._write_metadata(study_dir, mode, configs, keys, records, n_cached, tables, wall, executor, device)
        return StudyResult(name=self.name, mode=mode, tables=tables, claims=tuple(claim_results),
                           n_configurations=len(set(keys)), n_cached=n_cached,
                           n_computed=len(set(keys)) - n_cached, wall_time_s=wall, out_dir=study_dir)

    def _compute(self, todo, records, runs, executor, scheduler, workers, device, threads, progress, total):
        failures: list[tuple[dict, str]] = []
        if not todo:
            return failures
        from tqdm.auto import tqdm

        configs = dict(todo)
        owned = not isinstance(executor, LocalExecutor)
        ex = make_executor(executor, scheduler=scheduler, workers=workers) if owned else executor
        bar = tqdm(total=total, initial=total - len(todo), desc=self.name, unit="config", disable=not progress,
                   dynamic_ncols=True)
        try:
            stream = ex.map_unordered(self.run_one, todo, device, _accepts_device(self.run_one), threads)
            for key, outcome, error in stream:
                if error is not None:
                    failures.append((configs[key], error))
                    bar.set_postfix(failed=len(failures))
                else:
                    record = {"format_version": CACHE_FORMAT_VERSION, "study": self.name,
                              "study_version": self.version, "hash": key, "config": configs[key], **outcome}
                    _write_record(_cache_file(runs, key, self.cache_format), record, self.cache_format)
                    records[key] = json.loads(json.dumps(record, default=_json_default, allow_nan=True))
                bar.update(1)
        finally:
            bar.close()
            if owned:
                ex.close()
        return failures

    def _results_table(self, configs, keys, records) -> pd.DataFrame:
        rows: list[dict[str, Any]] = []
        for key, config in zip(keys, configs):
            record = records[key]
            env = record.get("environment", {}) or {}
            factors = {k: _column_value(v) for k, v in config.items()}
            prov = {"config_hash": key, "wall_time_s": record.get("wall_time_s"),
                    "finished_at": record.get("finished_at"), **env}
            for r in record["rows"]:
                # a row's own value wins, except a missing one (None/NaN), which the configuration fills
                rows.append({**factors, **{k: v for k, v in r.items() if not (_missing(v) and k in factors)},
                             **{k: v for k, v in prov.items() if k not in r}})
        frame = pd.DataFrame(rows)
        if frame.empty:
            frame = pd.DataFrame(columns=list(configs[0]) if configs else ["seed"])
        return frame

    def _tables(self, results: pd.DataFrame) -> dict[str, pd.DataFrame]:
        tables: dict[str, pd.DataFrame] = {"results": results}
        if self.summarize is None:
            return tables
        try:
            made = self.summarize(results.copy())
        except Exception as exc:
            raise StudyError(f"study '{self.name}': summarize(results) failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(made, Mapping):
            raise TypeError(f"summarize: expected a dict of name -> DataFrame, got {describe(made)}")
        for name, table in made.items():
            if name == "claims":
                raise ValueError("summarize: the table name 'claims' is reserved for the claim verdicts")
            if not isinstance(table, pd.DataFrame):
                raise TypeError(f"summarize()['{name}']: expected a pandas DataFrame, got {describe(table)}")
            tables[name] = table
        return tables

    def _evaluate_claims(self, tables: Mapping[str, pd.DataFrame]) -> list[ClaimResult]:
        out = []
        for claim in self.claims:
            if claim.table not in tables:
                raise StudyError(f"claim '{claim.name}': expected a table named '{claim.table}', the study has "
                                 f"{sorted(tables)}")
            try:
                out.append(claim.evaluate(tables[claim.table]))
            except Exception as exc:
                raise StudyError(f"claim '{claim.name}' could not be evaluated on table '{claim.table}': "
                                 f"{type(exc).__name__}: {exc}") from exc
        return out

    def _write_metadata(self, study_dir, mode, configs, keys, records, n_cached, tables, wall, executor, device):
        kind = executor if isinstance(executor, str) else getattr(executor, "kind", type(executor).__name__)
        compute = sum(float(records[k].get("wall_time_s") or 0.0) for k in set(keys))
        meta = {
            "format_version": CACHE_FORMAT_VERSION,
            "name": self.name, "title": self.title or self.name, "paper": self.paper,
            "description": self.description, "study_version": self.version, "mode": mode,
            "seeds": sorted({c["seed"] for c in configs}),
            "n_configurations": len(set(keys)), "n_cached": n_cached, "n_computed": len(set(keys)) - n_cached,
            "wall_time_s": wall, "compute_time_s": compute, "executor": kind,
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "environment": _environment(device or "cpu"),
            "tables": list(tables),
            "claims": [{"name": c.name, "kind": c.kind, "paper": c.paper, "statement": c.statement,
                        "measured": c.description, "rule": c.rule, "table": c.table, "caveat": c.caveat}
                       for c in self.claims],
            "figures": [_figure_dict(f) for f in self.figures],
        }
        atomic_write_text(study_dir / "study.json", json.dumps(meta, indent=2, default=_json_default))


def _figure_dict(spec: Any) -> dict[str, Any]:
    if hasattr(spec, "to_dict"):
        return spec.to_dict()
    return dataclasses.asdict(spec)


def _check_out_dir(out: Any) -> Path:
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out: expected a directory path, got {describe(out)}")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"out: expected a directory, got a file at {str(path)!r}; pass another --out")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"out: expected a directory, but {str(parent)!r} is a file")
    path.mkdir(parents=True, exist_ok=True)
    return path
