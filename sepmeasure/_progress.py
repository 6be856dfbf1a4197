"""One rule for every progress bar of the library.

A bar is shown when the caller asked for one (``progress=True``, the default of
the long-running functions), output goes to a person (a terminal, or a
Jupyter/IPython kernel, where ``tqdm.auto`` draws a widget) and the work has
taken longer than :data:`DELAY_S` seconds, so quick calls print nothing.
Inside :func:`silenced` (the study runner wraps every configuration in it) no
bar is shown at all, whatever the arguments say.
"""
from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

__all__ = ["DELAY_S", "progress_bar", "silenced", "wanted"]

DELAY_S = 1.0
"""Seconds of work before a bar appears."""

_SILENCED: contextvars.ContextVar[bool] = contextvars.ContextVar("sepmeasure_progress_silenced", default=False)


def _interactive() -> bool:
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):   # replaced or closed stderr
        return False


def wanted(progress: Any) -> bool:
    """Whether a bar asked for with ``progress`` would be shown here and now."""
    if not isinstance(progress, bool):
        raise TypeError(f"progress: expected True or False, got {progress!r}")
    return progress and not _SILENCED.get() and _interactive()


def progress_bar(iterable: Iterable | None = None, *, progress: bool, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled unless :func:`wanted` and shown after :data:`DELAY_S`."""
    kwargs.setdefault("delay", DELAY_S)
    return tqdm(iterable, disable=not wanted(progress), **kwargs)


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """No progress bars from the library inside this block (in this thread or task)."""
    token = _SILENCED.set(True)
    try:
        yield
    finally:
        _SILENCED.reset(token)
