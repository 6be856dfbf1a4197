"""Options of the separability measures, as frozen dataclasses made from the measures' signatures.

Each public measure (:func:`~sepmeasure.separability.mdlsm.md_lsm`,
:func:`~sepmeasure.separability.hull.hull_distance`, ...) is the one place where its options and
their defaults are written. :func:`options_from_signature` turns the keyword arguments of such a
function into a frozen dataclass with the same names and defaults, so the measure registry
(:mod:`sepmeasure.separability.registry`), the per-layer tables and the training callback never
repeat a default. This module is internal to the separability package.
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["options_from_signature", "option_names", "check_option_names"]


def options_from_signature(name: str, func: Callable[..., Any], exclude: Iterable[str]) -> type:
    """A frozen dataclass ``name`` with one field per defaulted argument of ``func`` not in ``exclude``.

    Field names, order and defaults are those of ``func``'s signature (mutable defaults such as
    ``None`` are kept as they are); the annotations are kept as strings for the reader.

    Examples
    --------
    >>> def measure(A, B, method="auto", *, steps=10, hull=None):
    ...     pass
    >>> Opts = options_from_signature("Opts", measure, exclude=("hull",))
    >>> Opts()
    Opts(method='auto', steps=10)
    """
    skip = set(exclude)
    fields = []
    for p in inspect.signature(func).parameters.values():
        if p.name in skip or p.default is inspect.Parameter.empty:
            continue
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        annotation = p.annotation if p.annotation is not inspect.Parameter.empty else "Any"
        fields.append((p.name, annotation, dataclasses.field(default=p.default)))
    cls = dataclasses.make_dataclass(name, fields, frozen=True)
    cls.__module__ = func.__module__
    cls.__doc__ = (f"Options of :func:`{func.__module__}.{func.__name__}` (same names and defaults; "
                   f"see its docstring).")
    return cls


def option_names(options_class: type) -> tuple[str, ...]:
    """The field names of an options dataclass, in order."""
    return tuple(f.name for f in dataclasses.fields(options_class))


def check_option_names(given: dict[str, Any], options_class: type, measure: str) -> None:
    """Refuse names that are not options of ``measure`` (a ``TypeError`` listing the valid ones)."""
    names = option_names(options_class)
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise TypeError(f"options: expected options of {measure} ({', '.join(names)}), got {unknown}")
