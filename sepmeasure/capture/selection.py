"""Layer selection: which submodules a recorder hooks (:func:`select_layers`).

A *selector* is a module name (``"block.0.act"``), a module type (``nn.ReLU``), a regular
expression (``"re:block\\.\\d+\\.act"``), a module instance, a callable
``(name, module) -> bool``, or a list of these.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Union

from torch import nn

from sepmeasure.validation import compile_name_pattern, describe, did_you_mean, list_names

__all__ = ["LayerSelector", "select_layers", "module_names"]

LayerSelector = Union[
    None,
    str,
    type,
    nn.Module,
    Callable[[str, nn.Module], bool],
    Sequence[Any],
]
"""What ``layers=`` accepts; see :func:`select_layers`."""


def module_names(names: Sequence[str]) -> str:
    """``names`` listed for an error message (saying so when the model has no submodules)."""
    return list_names(names, empty="[] (the model has no submodules)")


def _match_one(spec: Any, named: list[tuple[str, nn.Module]], name: str) -> list[int]:
    """Indices into ``named`` selected by one selector item."""
    names = [n for n, _ in named]
    if isinstance(spec, str):
        if spec.startswith("re:"):
            pattern = compile_name_pattern(spec, name)
            return [i for i, n in enumerate(names) if pattern.fullmatch(n)]
        if spec in names:
            return [names.index(spec)]
        hint = did_you_mean(spec, names)
        raise ValueError(f"{name}: expected the name of a submodule, got {spec!r}{hint} "
                         f"Available modules: {module_names(names)}")
    if isinstance(spec, type):
        if not issubclass(spec, nn.Module):
            raise TypeError(f"{name}: expected an nn.Module subclass, got the type {spec.__name__}")
        return [i for i, (_, m) in enumerate(named) if isinstance(m, spec)]
    if isinstance(spec, nn.Module):
        for i, (_, m) in enumerate(named):
            if m is spec:
                return [i]
        raise ValueError(f"{name}: expected a submodule of the model, got a "
                         f"{type(spec).__name__} that is not one of its submodules")
    if callable(spec):
        return [i for i, (n, m) in enumerate(named) if spec(n, m)]
    raise TypeError(f"{name}: expected a module name, 're:<pattern>', an nn.Module subclass, a "
                    f"submodule, a callable (name, module) -> bool, or a list of these, "
                    f"got {describe(spec)}")


#: Containers: with no children they are not layers (identity, or never called); subclasses with their
#: own forward are.
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def select_layers(model: nn.Module, layers: LayerSelector = None,
                  *, name: str = "layers") -> list[tuple[str, nn.Module]]:
    """Resolve a layer selector to ``(name, module)`` pairs in registration order.

    Parameters
    ----------
    model : nn.Module
        The model whose submodules are searched (the model itself is not a
        candidate; names are those of ``model.named_modules()``).
    layers : str, type, nn.Module, callable, list of these, or None
        ``"a.b"`` selects the submodule with exactly that name;
        ``"re:<pattern>"`` every submodule whose name fully matches the
        regular expression; an ``nn.Module`` subclass every instance of it;
        a module instance that submodule; a callable ``f(name, module)``
        every submodule for which it returns true; a list or tuple the union
        of its items. ``None`` selects every leaf submodule (one without
        children) except empty containers (an empty ``nn.Sequential``, e.g. a
        ResNet's identity shortcut, returns its input; an empty ``ModuleList`` or
        ``ModuleDict`` never runs).
    name : str
        Argument name used in error messages.

    Returns
    -------
    list of (str, nn.Module)
        The selected submodules, each once, in ``named_modules()`` order.

    Raises
    ------
    TypeError
        ``model`` is not an ``nn.Module``.
    ValueError
        When nothing is selected (the message lists the available names), or
        an exact name does not exist (with close matches suggested).

    Examples
    --------
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.ReLU())
    >>> [n for n, _ in select_layers(model, nn.ReLU)]
    ['1', '3']
    >>> [n for n, _ in select_layers(model, ["re:[02]", "3"])]
    ['0', '2', '3']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {describe(model)}")
    named = [(n, m) for n, m in model.named_modules() if n != ""]
    if layers is None:
        chosen = [i for i, (_, m) in enumerate(named) if next(m.children(), None) is None
                  and type(m) not in _CONTAINERS]
    else:
        items = list(layers) if isinstance(layers, (list, tuple)) else [layers]
        if not items:
            raise ValueError(f"{name}: expected at least one selector, got an empty {type(layers).__name__}")
        chosen = sorted({i for spec in items for i in _match_one(spec, named, name)})
    if not chosen:
        raise ValueError(f"{name}: expected a selector matching at least one submodule, got "
                         f"{describe(layers)} which matches none. Available modules: "
                         f"{module_names([n for n, _ in named])}")
    return [named[i] for i in chosen]
