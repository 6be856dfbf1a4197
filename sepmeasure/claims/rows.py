"""The one row filter of claims and report figures: ``where``.

``where`` is ``None`` (every row), a dict ``{column: value or list/tuple/set of values}`` (rows
whose column equals the value, or is one of the values; all entries must hold), or a callable
``f(table) -> boolean mask`` (one boolean per row).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

Where = Mapping[str, Any] | Callable[[pd.DataFrame], Any] | None
"""A row filter: ``None``, ``{column: value or values}`` or ``f(table) -> bool mask``."""


def describe_rows(where: Where) -> str:
    """The filter in words, as a suffix: ``" where model = a, layer in [1, 2]"`` (empty for ``None``).

    Examples
    --------
    >>> describe_rows({"model": "a", "layer": [2, 1]})
    ' where model = a, layer in [1, 2]'
    >>> describe_rows(None)
    ''
    """
    if where is None:
        return ""
    if callable(where):
        return " (rows chosen by a filter function)"
    parts = []
    for k, v in where.items():
        if isinstance(v, (list, tuple, set, frozenset)):
            parts.append(f"{k} in {sorted(v, key=str)}")
        else:
            parts.append(f"{k} = {v}")
    return " where " + ", ".join(parts)


def select_rows(table: pd.DataFrame, where: Where, context: str = "the filter") -> pd.DataFrame:
    """The rows of ``table`` that ``where`` selects (the table itself for ``None`` or ``{}``).

    Parameters
    ----------
    table : pandas.DataFrame
    where : dict, callable or None
        See the module docstring.
    context : str
        Who filters, for error messages (``"claim 'depth'"``, ``"figure 'f'"``).

    Returns
    -------
    pandas.DataFrame
        The selected rows, index kept.

    Raises
    ------
    ValueError
        A dict names a column the table lacks; a callable does not return one boolean per row.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"model": ["a", "b", "a"], "acc": [1, 2, 3]})
    >>> select_rows(t, {"model": "a"})["acc"].tolist()
    [1, 3]
    >>> select_rows(t, lambda t: t["acc"] > 1)["acc"].tolist()
    [2, 3]
    """
    if not where:
        return table
    if callable(where):
        mask = np.asarray(where(table), dtype=bool)
        if mask.shape != (len(table),):
            raise ValueError(f"where: expected a boolean mask of length {len(table)} for {context}, "
                             f"got shape {mask.shape}")
        return table[mask]
    mask = np.ones(len(table), dtype=bool)
    for col, val in where.items():
        if col not in table.columns:
            raise ValueError(f"where: {context} filters on column '{col}', which the table lacks; "
                             f"columns: {list(table.columns)}")
        if isinstance(val, (list, tuple, set, frozenset)):
            mask &= table[col].isin(list(val)).to_numpy()
        else:
            mask &= (table[col] == val).to_numpy()
    return table[mask]
