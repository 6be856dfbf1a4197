"""Grids of configurations and their keys: expanding a grid spec, and the stable hash that names a
configuration's run file."""
from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..validation import describe

__all__ = ["expand_grid", "config_hash", "canonical_json", "json_value", "plain_rows", "column_value", "is_missing"]


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


def json_value(value: Any) -> Any:
    """``json.dumps`` default: NumPy scalars and arrays, tensors, sets, paths, dates and timestamps as JSON values."""
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


def canonical_json(obj: Any) -> str:
    """Sorted, compact JSON of ``obj`` (NumPy, tensors, sets, paths and dates turned into JSON values)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=json_value, allow_nan=True)


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
    return hashlib.sha256(canonical_json({"study": study, "config": dict(config)}).encode()).hexdigest()[:20]


def plain_rows(rows: Any, where: str) -> list[dict[str, Any]]:
    """Rows (a list of dicts or a DataFrame) as plain JSON values; a ``TypeError`` naming ``where`` otherwise."""
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
            out.append(json.loads(json.dumps({str(k): v for k, v in r.items()}, default=json_value,
                                             allow_nan=True)))
        except TypeError as exc:
            raise TypeError(f"{where}[{i}]: {exc}") from None
    return out


def is_missing(v: Any) -> bool:
    """None or NaN: a row's value that the configuration's own value may fill."""
    return v is None or (isinstance(v, float) and v != v)


def column_value(v: Any) -> Any:
    """A configuration value as a table cell: scalars as they are, anything else as canonical JSON."""
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return canonical_json(v)
