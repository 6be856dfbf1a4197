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

``runs/<hash>.json``
    One JSON file per finished configuration (never a pickle), keyed by a stable hash of the
    study name and the configuration (sorted JSON), written atomically (temporary file, fsync,
    rename). The file holds the cache format version, the study's name and version, the
    configuration and its hash, the rows, the wall time, the environment (library versions, git
    commit, device, host) and a checksum of all of it. A run that is killed resumes from these
    files without recomputing or duplicating anything; a file that fails a check (unreadable,
    another format or study version, edited) is moved to ``runs/rejected/`` with a warning and
    its configuration re-run.
``tables/<name>.csv`` (and ``.parquet`` when pyarrow is importable)
    ``results`` (every row of every configuration, with the configuration's factors (a row's own
    value of a factor wins unless it is missing) and the provenance columns ``seed``,
    ``config_hash``, ``wall_time_s``, ``device``, ``host``, ``git_commit`` and ``version_*``),
    the tables of ``summarize``, and ``claims`` (one row per claim and group: effect, interval,
    verdict, rule).
``study.json``
    What the report needs besides the tables: title, paper, claims' statements, figure specs,
    mode, seeds, counts and times; the run's id and the checksum of every table file, so that
    :func:`verify_study_folder` refuses a folder whose tables come from two runs.
``.lock``
    Held by the run writing the folder (one at a time; it names the process and host).

The package's modules: :mod:`~sepmeasure.study.grid` (configurations, hashing),
:mod:`~sepmeasure.study.worker` (running one configuration), :mod:`~sepmeasure.study.executors`
(local, process pool, Dask), :mod:`~sepmeasure.study.cache` (run files),
:mod:`~sepmeasure.study.tables` (table writing), :mod:`~sepmeasure.study.folder` (output folder:
check, lock, verification) and :mod:`~sepmeasure.study.core` (:class:`Study`).

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

from .cache import CACHE_FORMAT_VERSION, Cache, read_run_file, RunFileError
from .core import CACHE_FORMATS, MODES, RunOptions, RunPlan, Study, StudyResult
from .errors import (CacheWarning, SchedulerUnreachableError, StudyError, StudyFolderBusyError, StudyFolderError,
                     StudyRunError, StudyTerminated)
from .executors import (EXECUTORS, DaskExecutor, LocalExecutor, ProcessExecutor, StudyExecutor, TerminationSignals,
                        check_executor, make_executor)
from .folder import StudyFolderLock, check_output_folder, read_study_json, verify_study_folder
from .grid import config_hash, expand_grid
from .tables import write_tables

__all__ = [
    "CACHE_FORMAT_VERSION",
    "CACHE_FORMATS",
    "EXECUTORS",
    "MODES",
    "Study",
    "StudyResult",
    "RunOptions",
    "RunPlan",
    "StudyError",
    "StudyRunError",
    "StudyFolderBusyError",
    "StudyFolderError",
    "StudyTerminated",
    "SchedulerUnreachableError",
    "CacheWarning",
    "Cache",
    "RunFileError",
    "read_run_file",
    "StudyExecutor",
    "LocalExecutor",
    "ProcessExecutor",
    "DaskExecutor",
    "TerminationSignals",
    "check_executor",
    "make_executor",
    "StudyFolderLock",
    "check_output_folder",
    "read_study_json",
    "verify_study_folder",
    "expand_grid",
    "config_hash",
    "write_tables",
]
