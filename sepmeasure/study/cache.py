"""The run files of a study: ``runs/<hash>.json``, one per finished configuration.

:class:`Cache` is the only code that reads or writes them. A run file is JSON (never a pickle:
reading one cannot run code) and holds the cache format version, the study's name and version,
the configuration and its hash, the rows, the wall time, the environment, and the SHA-256
checksum of all of that. A file that fails any check (unreadable, not the schema, another format
or study version, another configuration's hash, a checksum that does not match its content) is
moved to ``runs/rejected/`` with a :class:`CacheWarning`, and its configuration is computed
again. Files in ``runs/`` that are not JSON run files (a planted ``<hash>.pkl``) are moved aside
unread.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..storage import atomic_path
from .errors import CacheWarning
from .grid import canonical_json, config_hash, json_value

__all__ = ["CACHE_FORMAT_VERSION", "Cache", "record_checksum", "read_run_file", "RunFileError"]

CACHE_FORMAT_VERSION = 2
"""Version of the run files (2: JSON with hash, study version and checksum); files of another
version are moved aside and re-run."""

_RUN_FILE = re.compile(r"^[0-9a-f]{20}\.json$")


class RunFileError(ValueError):
    """A run file failed a check (the message says which); it is moved aside, not used."""


def record_checksum(record: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a run record without its ``checksum`` field.

    Examples
    --------
    >>> record_checksum({"rows": [], "checksum": "x"}) == record_checksum({"rows": []})
    True
    """
    return hashlib.sha256(canonical_json({k: v for k, v in record.items() if k != "checksum"}).encode()).hexdigest()


def _check_rows(rows: Any) -> None:
    if not isinstance(rows, list):
        raise RunFileError(f"rows: expected a list of row dicts, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RunFileError(f"rows[{i}]: expected a dict (one row), got {type(row).__name__}")


def read_run_file(path: str | Path, *, study: str, version: str, key: str,
                  config: Mapping[str, Any]) -> dict[str, Any]:
    """Read and check one run file; the record, or a :class:`RunFileError` saying what is wrong.

    Parameters
    ----------
    path : path
        The file (``runs/<key>.json``).
    study, version : str
        The study's name and version the record must carry.
    key : str
        The configuration hash the record must carry (and be the hash of its configuration).
    config : dict
        The configuration the record must hold.

    Returns
    -------
    dict
        The record: ``format_version``, ``study``, ``study_version``, ``hash``, ``config``,
        ``rows``, ``wall_time_s``, ``environment``, ``finished_at``, ``checksum``.

    Raises
    ------
    RunFileError
        Unreadable (not UTF-8 JSON), not a JSON object, another cache format or study version,
        another study, a hash that is not ``key`` or not its configuration's, another
        configuration, rows that are not a list of dicts, a non-dict environment, a wall time
        that is not a number, a missing or wrong checksum.
    """
    try:
        record = json.loads(Path(path).read_bytes().decode("utf-8"))
    except Exception as exc:  # anything a damaged file can raise: it is unreadable
        raise RunFileError(f"unreadable ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(record, dict):
        raise RunFileError(f"not a run file (expected a JSON object, got {type(record).__name__})")
    if record.get("format_version") != CACHE_FORMAT_VERSION:
        raise RunFileError(f"written by cache format version {record.get('format_version')!r}, this is version "
                           f"{CACHE_FORMAT_VERSION}")
    if record.get("study") != study:
        raise RunFileError(f"written by study {record.get('study')!r}, this is {study!r}")
    if str(record.get("study_version")) != str(version):
        raise RunFileError(f"written by study version {record.get('study_version')!r}, this is {version!r}")
    if record.get("hash") != key:
        raise RunFileError(f"its hash {record.get('hash')!r} is not the file's configuration hash {key!r}")
    if not isinstance(record.get("config"), dict) or canonical_json(record["config"]) != canonical_json(config):
        raise RunFileError("its configuration differs from the one requested")
    if config_hash(study, record["config"]) != key:
        raise RunFileError("its hash is not the hash of its configuration")
    _check_rows(record.get("rows"))
    if not isinstance(record.get("environment", {}), dict):
        raise RunFileError(f"environment: expected a dict, got {type(record['environment']).__name__}")
    wall = record.get("wall_time_s")
    if wall is not None and (isinstance(wall, bool) or not isinstance(wall, (int, float)) or not math.isfinite(wall)):
        raise RunFileError(f"wall_time_s: expected a finite number, got {wall!r}")
    if "checksum" not in record:
        raise RunFileError("it has no checksum")
    if record["checksum"] != record_checksum(record):
        raise RunFileError("its checksum does not match its content (edited or damaged)")
    return record


class Cache:
    """The run files of one study in ``runs``: load a configuration's record, store a new one.

    Parameters
    ----------
    runs : path
        The study's ``runs/`` folder (created if missing).
    study, version : str
        The study's name and version, carried by every record.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> cache = Cache(pathlib.Path(tempfile.mkdtemp()) / "runs", study="s", version="1")
    >>> config = {"x": 1, "seed": 0}
    >>> key = config_hash("s", config)
    >>> cache.load(key, config) is None
    True
    >>> cache.store(key, config, {"rows": [{"value": 1}], "wall_time_s": 0.1, "environment": {}})["rows"]
    [{'value': 1}]
    >>> cache.load(key, config)["rows"]
    [{'value': 1}]
    """

    def __init__(self, runs: str | Path, *, study: str, version: str) -> None:
        self.runs = Path(runs)
        self.study = study
        self.version = str(version)
        self.runs.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """The run file of configuration ``key``."""
        return self.runs / f"{key}.json"

    def load(self, key: str, config: Mapping[str, Any]) -> dict[str, Any] | None:
        """The checked record of ``config``, or None (no file, or a file that failed a check: moved aside
        with a :class:`CacheWarning`)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return read_run_file(path, study=self.study, version=self.version, key=key, config=config)
        except RunFileError as exc:
            self._reject(path, str(exc))
            return None

    def store(self, key: str, config: Mapping[str, Any], outcome: Mapping[str, Any]) -> dict[str, Any]:
        """Write the record of ``config`` (``outcome``: rows, wall time, environment, finish time)
        atomically; return it as read back from JSON."""
        record = {"format_version": CACHE_FORMAT_VERSION, "study": self.study, "study_version": self.version,
                  "hash": key, "config": dict(config), **outcome}
        record = json.loads(json.dumps(record, default=json_value, allow_nan=True))
        record["checksum"] = record_checksum(record)
        with atomic_path(self.path(key)) as tmp:
            tmp.write_text(json.dumps(record, allow_nan=True), encoding="utf-8")
        return record

    def set_aside_foreign_files(self) -> int:
        """Move every file of ``runs/`` that is not a JSON run file (``<hash>.pkl``, ...) aside, unread."""
        moved = 0
        for path in sorted(self.runs.iterdir()):
            if path.is_file() and not path.name.startswith(".") and not _RUN_FILE.match(path.name):
                self._reject(path, "not a JSON run file (run files are JSON only; it was never loaded)")
                moved += 1
        return moved

    def _reject(self, path: Path, problem: str) -> None:
        rejected = self.runs / "rejected"
        rejected.mkdir(exist_ok=True)
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        target = rejected / f"{path.name}.{stamp}"
        path.replace(target)
        warnings.warn(f"{path}: {problem}; moved to {target} and its configuration is computed again",
                      CacheWarning, stacklevel=4)
