"""The :class:`Study`: a grid of configurations, the function that runs one, the tables made from
the results and the claims judged on them; :meth:`Study.run` reads plan -> compute -> summarise ->
judge -> write."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import inspect
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..claims import Claim, ClaimResult, claims_frame
from ..storage import atomic_write_text, remove_dead_temporaries
from ..validation import check_choice, check_int, describe
from .cache import CACHE_FORMAT_VERSION, Cache
from .errors import StudyError, StudyRunError
from .executors import StudyExecutor, check_executor, make_executor
from .folder import StudyFolderLock, check_output_folder, mark_writing
from .grid import canonical_json, config_hash, expand_grid, json_value
from .tables import file_checksum, results_table, write_tables
from .worker import ConfigTask, environment

__all__ = ["Study", "StudyResult", "RunOptions", "RunPlan", "MODES", "CACHE_FORMATS"]

MODES: tuple[str, ...] = ("quick", "full")
CACHE_FORMATS: dict[str, str] = {"json": ".json"}
"""Run file formats: JSON only (a pickle could run code when read)."""
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def _accepts_device(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "device" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _figure_dict(spec: Any) -> dict[str, Any]:
    if hasattr(spec, "to_dict"):
        return spec.to_dict()
    return dataclasses.asdict(spec)


@dataclass(frozen=True)
class RunOptions:
    """How :meth:`Study.run` computes (checked once, at the start of the run).

    Attributes
    ----------
    executor : str or StudyExecutor
        A name of :data:`~sepmeasure.study.EXECUTORS` or an executor object (not closed by the run).
    scheduler : str or None
        Dask scheduler address (``executor="dask"``).
    workers : int or None
        Pool or local-cluster size.
    device : str or None
        Passed to ``run_one(config, device=...)`` when it accepts it.
    threads : int or None
        Intra-op torch threads per configuration.
    progress : bool
        Show a progress bar.
    wait : bool
        Wait for another run that holds the study folder instead of stopping.
    """

    executor: str | StudyExecutor = "local"
    scheduler: str | None = None
    workers: int | None = None
    device: str | None = None
    threads: int | None = None
    progress: bool = True
    wait: bool = False

    @property
    def kind(self) -> str:
        """The executor's kind (``"local"``, ``"processes"``, ``"dask"``)."""
        return self.executor if isinstance(self.executor, str) else self.executor.kind


@dataclass
class RunPlan:
    """What one run has to do: every configuration with its key, the records found in the cache, and
    the configurations left to compute (each distinct key once)."""

    configs: list[dict[str, Any]]
    keys: list[str]
    records: dict[str, dict[str, Any]]
    todo: list[tuple[str, dict[str, Any]]]

    @property
    def n_configurations(self) -> int:
        return len(set(self.keys))

    @property
    def n_cached(self) -> int:
        return self.n_configurations - len(self.todo)


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
    cache_format : {"json"}
        How each configuration's run file is written: JSON only (a pickle could run code when it
        is read; see :mod:`sepmeasure.study.cache`).

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
            spec = getattr(self, mode)
            if isinstance(spec, (Mapping, list, tuple)) and not spec:
                raise ValueError(f"{mode}: expected a grid with at least one factor (e.g. {{'width': [8, 16]}}), "
                                 f"got an empty {type(spec).__name__}")
            grid = expand_grid(spec, mode)
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
            executor: str | StudyExecutor = "local", scheduler: str | None = None, workers: int | None = None,
            device: str | None = None, threads: int | None = None, progress: bool = True,
            wait: bool = False) -> StudyResult:
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
        wait : bool, default False
            When another run holds ``out/<name>/`` (one run per study folder at a time), wait for it
            to finish instead of raising :class:`StudyFolderBusyError`.

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
        StudyFolderBusyError
            Another run (its process id and host are named) holds the study folder and ``wait`` is
            False.
        StudyError
            ``summarize(results)`` raised; a claim's table does not exist or the claim could not be
            evaluated on it; ``executor="dask"`` without the ``distributed`` package.
        """
        started = time.perf_counter()
        check_choice(mode, "mode", MODES)
        if threads is not None:
            threads = check_int(threads, "threads", minimum=1)
        check_executor(executor, scheduler)
        options = RunOptions(executor=executor, scheduler=scheduler, workers=workers, device=device,
                             threads=threads, progress=progress, wait=bool(wait))
        out_root = check_output_folder(out)
        configs = self.configurations(mode, seeds)
        keys = [config_hash(self.name, c) for c in configs]  # every configuration can be turned into JSON
        study_dir = out_root / self.name
        with StudyFolderLock(study_dir, wait=options.wait, announce=progress):
            _remove_stale_temporaries(out_root, study_dir)
            cache = Cache(study_dir / "runs", study=self.name, version=self.version)
            plan = self._plan(cache, configs, keys)
            self._compute(plan, cache, options)
            tables = self._summarise(plan)
            claim_results = self._judge(tables)
            tables = {**tables, "claims": claims_frame(claim_results)}
            wall = time.perf_counter() - started
            self._write(study_dir, tables, self._metadata(mode, plan, tables, wall, options))
        return StudyResult(name=self.name, mode=mode, tables=tables, claims=tuple(claim_results),
                           n_configurations=plan.n_configurations, n_cached=plan.n_cached,
                           n_computed=plan.n_configurations - plan.n_cached, wall_time_s=wall, out_dir=study_dir)

    # -- the phases of a run ------------------------------------------------------------------------
    def _plan(self, cache: Cache, configs: list[dict[str, Any]], keys: list[str]) -> RunPlan:
        """Which configurations are cached and which are left (a configuration twice in a grid runs once)."""
        cache.set_aside_foreign_files()
        records: dict[str, dict[str, Any]] = {}
        todo: list[tuple[str, dict[str, Any]]] = []
        seen: set[str] = set()
        for key, config in zip(keys, configs):
            if key in seen:
                continue
            seen.add(key)
            cached = cache.load(key, config)
            if cached is not None:
                records[key] = cached
            else:
                todo.append((key, config))
        return RunPlan(configs=configs, keys=keys, records=records, todo=todo)

    def _compute(self, plan: RunPlan, cache: Cache, options: RunOptions) -> None:
        """Run what the plan left, storing each finished configuration as it comes; raise
        :class:`StudyRunError` when some failed (the others stay cached)."""
        if not plan.todo:
            return
        from tqdm.auto import tqdm

        configs = dict(plan.todo)
        pass_device = _accepts_device(self.run_one)
        tasks = [ConfigTask(key=key, run_one=self.run_one, config=config, device=options.device,
                            pass_device=pass_device, threads=options.threads) for key, config in plan.todo]
        failures: list[tuple[dict, str]] = []
        owned = isinstance(options.executor, str)
        ex = (make_executor(options.executor, scheduler=options.scheduler, workers=options.workers) if owned
              else options.executor)
        total = plan.n_configurations
        bar = tqdm(total=total, initial=total - len(tasks), desc=self.name, unit="config",
                   disable=not options.progress, dynamic_ncols=True)
        completed = False
        try:
            for key, outcome, error in ex.map_unordered(tasks):
                if error is not None:
                    failures.append((configs[key], error))
                    bar.set_postfix(failed=len(failures))
                else:
                    plan.records[key] = cache.store(key, configs[key], outcome)
                bar.update(1)
            completed = True
        finally:
            bar.close()
            if owned:
                ex.close(terminate=not completed)
        if failures:
            first_cfg, first_tb = failures[0]
            raise StudyRunError(
                f"study '{self.name}': {len(failures)} of {total} configurations failed "
                f"({len(plan.records)} finished and are cached; run again to retry only the failed ones). "
                f"First failure, config {canonical_json(first_cfg)}:\n{first_tb}", failures)

    def _summarise(self, plan: RunPlan) -> dict[str, pd.DataFrame]:
        """The ``results`` table and the tables of ``summarize``."""
        results = results_table(plan.configs, plan.keys, plan.records)
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

    def _judge(self, tables: Mapping[str, pd.DataFrame]) -> list[ClaimResult]:
        """Every claim evaluated on its table."""
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

    def _metadata(self, mode: str, plan: RunPlan, tables: Mapping[str, pd.DataFrame], wall: float,
                  options: RunOptions) -> dict[str, Any]:
        compute = sum(float(plan.records[k].get("wall_time_s") or 0.0) for k in set(plan.keys))
        return {
            "format_version": CACHE_FORMAT_VERSION,
            "name": self.name, "title": self.title or self.name, "paper": self.paper,
            "description": self.description, "study_version": self.version, "mode": mode,
            "seeds": sorted({c["seed"] for c in plan.configs}),
            "n_configurations": plan.n_configurations, "n_cached": plan.n_cached,
            "n_computed": plan.n_configurations - plan.n_cached,
            "wall_time_s": wall, "compute_time_s": compute, "executor": options.kind,
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "environment": environment(options.device or "cpu"),
            "tables": list(tables),
            "claims": [{"name": c.name, "kind": c.kind, "paper": c.paper, "statement": c.statement,
                        "measured": c.description, "rule": c.rule, "table": c.table, "caveat": c.caveat}
                       for c in self.claims],
            "figures": [_figure_dict(f) for f in self.figures],
        }

    def _write(self, study_dir: Path, tables: Mapping[str, pd.DataFrame], meta: dict[str, Any]) -> None:
        """Mark the folder as being rewritten, write the tables, then ``study.json`` with the run id and
        the checksum of every table file: a reader can tell a folder that mixes two runs."""
        run_id = uuid.uuid4().hex
        mark_writing(study_dir, run_id)
        written = write_tables(tables, study_dir / "tables")
        meta = {**meta, "run_id": run_id, "checksums": {p.name: file_checksum(p) for p in written}}
        atomic_write_text(study_dir / "study.json", json.dumps(meta, indent=2, default=json_value))


def _remove_stale_temporaries(out_root: Path, study_dir: Path) -> None:
    """Temporary files of killed writers: in the folders only a run writes (it holds the lock), every
    one not of a live process; elsewhere (reports, figures, the index) only those of dead writers."""
    for folder in (study_dir / "runs", study_dir / "tables"):
        remove_dead_temporaries(folder, unowned=True)
    for folder in (out_root, study_dir, study_dir / "figures"):
        remove_dead_temporaries(folder)
