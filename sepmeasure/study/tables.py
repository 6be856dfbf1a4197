"""Tables of a study: the ``results`` table built from the run records, and the writing of every
table as CSV (and parquet when pyarrow is importable), atomically, with the checksum of each file
written so that a reader can tell that all of them come from one run."""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..storage import atomic_path
from ..validation import describe
from .grid import column_value, is_missing

__all__ = ["write_tables", "results_table", "file_checksum", "has_pyarrow", "stringify_objects", "TABLE_NAME"]

TABLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""What a table name may be (it becomes a file name)."""


def has_pyarrow() -> bool:
    """Whether pyarrow (for parquet) is importable."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def file_checksum(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hexadecimal).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
    >>> _ = p.write_bytes(b"a\\n1\\n")
    >>> file_checksum(p)[:12]
    '309b0e45a73d'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def results_table(configs: Sequence[Mapping[str, Any]], keys: Sequence[str],
                  records: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Every row of every configuration with the configuration's factors and the run's provenance.

    A row's own value of a factor wins, except a missing one (None/NaN), which the configuration
    fills; provenance columns (``config_hash``, ``wall_time_s``, ``finished_at`` and the
    environment) never replace a row's own column.
    """
    rows: list[dict[str, Any]] = []
    for key, config in zip(keys, configs):
        record = records[key]
        env = record.get("environment", {}) or {}
        factors = {k: column_value(v) for k, v in config.items()}
        prov = {"config_hash": key, "wall_time_s": record.get("wall_time_s"),
                "finished_at": record.get("finished_at"), **env}
        for r in record["rows"]:
            rows.append({**factors, **{k: v for k, v in r.items() if not (is_missing(v) and k in factors)},
                         **{k: v for k, v in prov.items() if k not in r}})
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame(columns=list(configs[0]) if configs else ["seed"])
    return frame


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
    parquet = has_pyarrow()
    for name, table in tables.items():  # every check before the first file is written
        if not isinstance(name, str) or not TABLE_NAME.match(name):
            raise ValueError(f"tables: expected names of letters, digits, '_', '-', '.', got {name!r}")
        if not isinstance(table, pd.DataFrame):
            raise TypeError(f"tables['{name}']: expected a pandas DataFrame, got {describe(table)}")
    for name, table in tables.items():
        path = folder / f"{name}.csv"
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)
        written.append(path)
        if parquet:
            ppath = folder / f"{name}.parquet"
            try:
                with atomic_path(ppath, suffix=".parquet") as tmp:
                    stringify_objects(table).to_parquet(tmp, index=False)
                written.append(ppath)
            except Exception as exc:  # a column pyarrow cannot store: the CSV is the record
                ppath.unlink(missing_ok=True)  # never leave another run's parquet beside this CSV
                warnings.warn(f"{ppath}: not written ({type(exc).__name__}: {exc})", stacklevel=2)
    return written


def stringify_objects(table: pd.DataFrame) -> pd.DataFrame:
    """A copy whose object columns hold strings (non-strings as JSON), which parquet can store."""
    out = table.copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(lambda v: v if v is None or isinstance(v, str) else json.dumps(v, default=str))
    return out
