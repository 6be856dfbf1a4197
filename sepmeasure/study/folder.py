"""A study's output folder ``<out>/<study>/``: the check of an output path (shared by the API and
the command line), the lock that lets one run at a time write there, and the reading of what a
run left (``study.json`` and its tables), refusing a folder whose tables come from two runs.

A run marks ``study.json`` as being rewritten (``"writing_run"``) before it replaces the first
table, and writes the final ``study.json`` last, with its ``run_id`` and the SHA-256 of every
table file it wrote (``"checksums"``). :func:`verify_study_folder` refuses a folder that is
marked, or whose tables do not match those checksums (an interrupted run, a table edited or
damaged afterwards), with a :class:`StudyFolderError` that says which file and what to do.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..storage import atomic_write_text, host_name
from ..validation import describe
from .errors import StudyFolderBusyError, StudyFolderError
from .tables import TABLE_NAME, file_checksum

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX (Windows): folders are not locked there
    fcntl = None

__all__ = ["check_output_folder", "StudyFolderLock", "read_study_json", "verify_study_folder", "mark_writing",
           "LOCK_NAME"]

LOCK_NAME = ".lock"
"""The lock file in a study's folder; it names the process and host that hold it."""


def check_output_folder(out: Any, *, name: str = "out") -> Path:
    """Check that ``out`` can be an output folder (a path that is not a file, under no file).

    Parameters
    ----------
    out : str or os.PathLike
        The output folder; it need not exist yet.
    name : str, default "out"
        How the argument is named in messages (``"--out"`` on the command line).

    Returns
    -------
    Path

    Raises
    ------
    TypeError
        ``out`` is not a path.
    NotADirectoryError
        ``out`` or one of its parents is a file.

    Examples
    --------
    >>> check_output_folder("reports/new")
    PosixPath('reports/new')
    """
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a directory path, got {describe(out)}")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{name}: expected a directory, got a file at {str(path)!r}")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"{name}: expected a directory, but {str(parent)!r} is a file")
    return path


class StudyFolderLock:
    """An exclusive ``fcntl`` lock on a study folder, held while a run writes there.

    The lock file (``<folder>/.lock``) names the holder's process id, host and start time, so
    that a refused run can say who holds the folder. The operating system releases the lock when
    its holder dies, however it dies. (Where ``fcntl`` does not exist, folders are not locked.)

    Parameters
    ----------
    folder : path
        The study folder (created if missing).
    wait : bool, default False
        Wait for the holder to finish instead of raising :class:`StudyFolderBusyError`.
    announce : bool, default True
        When waiting, say so on stderr.

    Examples
    --------
    >>> import tempfile
    >>> with StudyFolderLock(tempfile.mkdtemp()) as lock:
    ...     lock.holder()["pid"] == os.getpid()
    True
    """

    def __init__(self, folder: str | os.PathLike, *, wait: bool = False, announce: bool = True) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.wait = wait
        self.announce = announce
        self._fd: int | None = None

    def holder(self) -> dict[str, Any]:
        """What the lock file says of its holder (``pid``, ``host``, ``since``; empty when unreadable)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _describe_holder(self) -> str:
        h = self.holder()
        if not h:
            return "a process whose lock file says nothing yet"
        return f"pid {h.get('pid')} on {h.get('host')}, since {h.get('since')}"

    def acquire(self) -> "StudyFolderLock":
        """Take the lock (waiting if ``wait``), then write this process into the lock file."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not self.wait:
                        raise StudyFolderBusyError(
                            f"{self.folder}: in use by another run ({self._describe_holder()}); wait for it to "
                            f"finish, or pass wait=True (--wait on the command line) to wait for it") from None
                    if self.announce:
                        print(f"{self.folder}: waiting for the run that holds it ({self._describe_holder()})",
                              file=sys.stderr, flush=True)
                    fcntl.flock(fd, fcntl.LOCK_EX)
            since = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": host_name(), "since": since}).encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Clear the lock file and release the lock."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> "StudyFolderLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _problem(path: Path, what: str) -> StudyFolderError:
    return StudyFolderError(f"{path}: {what}; run the study again to rewrite it")


def read_study_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``study.json`` and check its shape.

    Parameters
    ----------
    path : path
        The file.

    Returns
    -------
    dict
        Its content: at least ``name`` (str) and ``tables`` (list of table names); ``figures``
        and ``claims`` lists of dicts, ``seeds`` a list, ``checksums`` a dict of file name ->
        SHA-256 and ``run_id``/``writing_run`` strings where present.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    StudyFolderError
        Not UTF-8 JSON, not a JSON object, or a key of the wrong type.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "study.json"
    >>> _ = p.write_text('{"name": "s", "tables": ["results"]}')
    >>> read_study_json(p)["tables"]
    ['results']
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        meta = json.loads(raw.decode("utf-8"))
    except Exception as exc:  # anything a damaged file can raise
        raise _problem(path, f"not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(meta, dict):
        raise _problem(path, f"expected a JSON object, got {type(meta).__name__}")
    if not isinstance(meta.get("name"), str):
        raise _problem(path, f"'name': expected the study's name, got {describe(meta.get('name'))}")
    tables = meta.get("tables")
    if not isinstance(tables, list) or not all(isinstance(t, str) and TABLE_NAME.match(t) for t in tables):
        raise _problem(path, f"'tables': expected a list of table names, got {describe(tables)}")
    for key in ("figures", "claims"):
        value = meta.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise _problem(path, f"{key!r}: expected a list of objects, got {describe(value)}")
    if not isinstance(meta.get("seeds", []), list):
        raise _problem(path, f"'seeds': expected a list, got {describe(meta.get('seeds'))}")
    checksums = meta.get("checksums", {})
    if not isinstance(checksums, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in checksums.items()):
        raise _problem(path, f"'checksums': expected file name -> SHA-256, got {describe(checksums)}")
    for key in ("run_id", "writing_run"):
        if key in meta and not isinstance(meta[key], str):
            raise _problem(path, f"{key!r}: expected a string, got {describe(meta[key])}")
    return meta


def verify_study_folder(study_dir: str | os.PathLike) -> dict[str, Any]:
    """Check that a study folder holds one run: its ``study.json`` and every table it lists.

    With checksums (written by this version), every file of a listed table (its CSV and parquet
    copies, one of which may have been dropped) must be the one the run that wrote ``study.json``
    recorded; without (an older folder), every such file must be a readable table.

    Parameters
    ----------
    study_dir : path
        ``<out>/<study name>``.

    Returns
    -------
    dict
        The checked content of ``study.json`` (see :func:`read_study_json`).

    Raises
    ------
    StudyFolderError
        No or a damaged ``study.json``; a run that was interrupted (or is still running) while it
        rewrote the tables; a table missing, edited, damaged or of another run; an unreadable table
        in an older folder.

    Examples
    --------
    >>> import tempfile
    >>> from sepmeasure.study import Study
    >>> s = Study(name="v", run_one=lambda c: [{"v": 1}], quick={"a": 1}, full={"a": 1})
    >>> out = s.run(out=tempfile.mkdtemp(), progress=False).out_dir
    >>> verify_study_folder(out)["tables"]
    ['results', 'claims']
    """
    study_dir = Path(study_dir)
    meta_path = study_dir / "study.json"
    try:
        meta = read_study_json(meta_path)
    except FileNotFoundError:
        raise StudyFolderError(f"{study_dir}: expected a study folder with study.json (written by `sepmeasure "
                               f"study`)") from None
    if "writing_run" in meta:
        raise StudyFolderError(f"{study_dir}: run {meta['writing_run']} began rewriting its tables and has not "
                               f"finished (interrupted, or still running), so they may mix two runs; run the study "
                               f"again (or wait for the running one)")
    tables_dir = study_dir / "tables"
    if "checksums" in meta:
        _verify_checksums(tables_dir, meta)
    else:
        _verify_readable(tables_dir, meta["tables"])
    return meta


def _table_files(tables_dir: Path, name: str) -> list[Path]:
    """The files of table ``name`` that exist (its CSV and parquet copies; either may have been dropped)."""
    return [p for p in (tables_dir / f"{name}.csv", tables_dir / f"{name}.parquet") if p.is_file()]


def _verify_checksums(tables_dir: Path, meta: Mapping[str, Any]) -> None:
    checksums = meta["checksums"]
    run = meta.get("run_id", "?")
    for name in meta["tables"]:
        files = _table_files(tables_dir, name)
        if not files:
            raise _problem(tables_dir / f"{name}.csv", f"missing (run {run} wrote table {name!r})")
        for path in files:
            if checksums.get(path.name) != file_checksum(path):
                raise _problem(path, f"not the table run {run} wrote (edited, damaged, or written by another run; "
                                     f"the folder would mix runs)")


def _verify_readable(tables_dir: Path, names: list[str]) -> None:
    import pandas as pd

    for name in names:
        for path in _table_files(tables_dir, name):
            try:
                pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
            except pd.errors.EmptyDataError:
                continue
            except Exception as exc:
                raise _problem(path, f"not a readable table ({type(exc).__name__}: {str(exc)[:200]})") from None


def mark_writing(study_dir: str | os.PathLike, run_id: str) -> None:
    """Mark ``study.json`` (when there is one) as being rewritten by ``run_id``, before the first table
    is replaced; the run's final ``study.json`` removes the mark."""
    path = Path(study_dir) / "study.json"
    if not path.exists():
        return
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict):
        meta = {"name": Path(study_dir).name, "tables": []}
    meta["writing_run"] = run_id
    atomic_write_text(path, json.dumps(meta, indent=2))
