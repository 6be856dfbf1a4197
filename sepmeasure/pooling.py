"""Layout-aware pooling of recorded activations, and taps on functional operations.

Internal to :mod:`sepmeasure.capture`: what ``pool=`` and ``layout=`` of
:func:`~sepmeasure.record` and :class:`~sepmeasure.ActivationRecorder` mean.

* ``pool="mean"`` averages the spatial axes of a channels-first output
  (``[N, C, *spatial] -> [N, C]``) and the token axes of a channels-last one
  (``[N, *tokens, D] -> [N, D]``); 2-D outputs are kept as they are. Where the
  layout of an output with three or more axes cannot be told, it raises a
  ``ValueError`` naming ``layout``: it never guesses.
* ``pool="cls"`` / ``pool="last"`` keep the first / last token of a
  channels-last ``[N, T, D]`` output.

Layouts (see :mod:`sepmeasure.graph`) come from the traced graph of the model
(``layout="auto"``), with the module's type as the fallback for modules the
graph does not see into, or are given: one layout for every layer, or a
mapping ``{layer name: layout}``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .graph import GraphTraceError, ModelGraph, copy_graph_attributes, module_type_layout, trace_model
from .validation import describe

__all__ = ["POOLS", "LAYOUT_CHOICES", "check_pool", "check_layout", "pool_output", "LayerLayouts", "FunctionalTaps",
           "functional_selection"]

POOLS = ("none", "flatten", "mean", "cls", "last")
LAYOUT_CHOICES = ("auto", "channels_first", "channels_last")
_NEEDS_LAYOUT = ("mean", "cls", "last")


def check_pool(pool: Any) -> str | Callable[[torch.Tensor], torch.Tensor]:
    """``pool`` as given, once checked: a name of :data:`POOLS` or a callable."""
    if isinstance(pool, str):
        if pool not in POOLS:
            raise ValueError(f"pool: expected one of 'none', 'flatten', 'mean', got {pool!r} (for token "
                             f"sequences also 'cls' or 'last'; or a callable Tensor -> Tensor)")
        return pool
    if callable(pool):
        return pool
    raise TypeError(f"pool: expected one of {', '.join(map(repr, POOLS))} or a callable Tensor -> Tensor, "
                    f"got {describe(pool)}")


def check_layout(layout: Any) -> str | dict[str, str]:
    """``layout`` once checked: a name of :data:`LAYOUT_CHOICES` or a mapping of layer names to layouts."""
    if isinstance(layout, str):
        if layout not in LAYOUT_CHOICES:
            raise ValueError(f"layout: expected one of {', '.join(map(repr, LAYOUT_CHOICES))} or a mapping "
                             f"{{layer name: layout}}, got {layout!r}")
        return layout
    if isinstance(layout, Mapping):
        out = {}
        for k, v in layout.items():
            if not isinstance(k, str) or v not in LAYOUT_CHOICES:
                raise ValueError(f"layout: expected a mapping of layer names to one of "
                                 f"{', '.join(map(repr, LAYOUT_CHOICES))}, got {k!r}: {v!r}")
            out[k] = v
        return out
    raise TypeError(f"layout: expected one of {', '.join(map(repr, LAYOUT_CHOICES))} or a mapping "
                    f"{{layer name: layout}}, got {describe(layout)}")


def _layout_error(key: str, t: torch.Tensor, pool: str, why: str) -> ValueError:
    return ValueError(f"layout: cannot tell the layout of layer {key!r}'s output of shape {list(t.shape)} "
                      f"({why}), so pool={pool!r} does not know which axes are tokens or space; pass "
                      f"layout='channels_first' ([N, C, *spatial]) or layout='channels_last' ([N, *tokens, D]), "
                      f"or layout={{{key!r}: ...}} for this layer alone")


def pool_output(t: torch.Tensor, pool: str | Callable[[torch.Tensor], torch.Tensor], layout: str, key: str,
                why: str = "") -> torch.Tensor:
    """Reduce one layer's output ``t`` (batch first) by ``pool`` under ``layout``."""
    if callable(pool):
        out = pool(t)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"pool: expected the callable to return a Tensor, got {describe(out)}")
        return out
    if pool == "none":
        return t
    if pool == "flatten":
        return t.reshape(t.shape[0], -1) if t.ndim != 2 else t
    if pool == "mean":
        if t.ndim <= 2:
            return t
        if layout == "channels_first":
            return t.flatten(2).mean(-1) if t.is_contiguous() else t.mean(dim=tuple(range(2, t.ndim)))
        if layout == "channels_last":
            return t.mean(dim=tuple(range(1, t.ndim - 1)))
        raise _layout_error(key, t, pool, why or "the graph does not fix it")
    # cls / last: one token of [N, T, D]
    if t.ndim != 3 or layout != "channels_last":
        if t.ndim >= 3 and layout not in ("channels_first", "channels_last"):
            raise _layout_error(key, t, pool, why or "the graph does not fix it")
        raise ValueError(f"pool: {pool!r} keeps one token of a channels-last [N, T, D] output, got layer {key!r} "
                         f"with shape {list(t.shape)} and layout {layout!r}; use pool='mean' or 'flatten' there")
    return t[:, 0] if pool == "cls" else t[:, -1]


class LayerLayouts:
    """The layout of each recorded layer's output under ``layout=`` (traced lazily, once)."""

    def __init__(self, model: nn.Module, layout: str | dict[str, str], pool: Any,
                 graph: ModelGraph | None = None) -> None:
        self.model = model
        self.layout = layout
        self.needed = isinstance(pool, str) and pool in _NEEDS_LAYOUT
        self.graph = graph
        self._traced_with_shapes = False
        self._why = ""
        self._cache: dict[str, str] = {}

    def prepare(self, args: tuple[Any, ...]) -> None:
        """Trace the model with the first forward call's input (only when a layout is needed)."""
        if not self.needed or self._traced_with_shapes or self.layout in ("channels_first", "channels_last"):
            return
        self._traced_with_shapes = True
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        try:
            self.graph = trace_model(self.model, x)
        except GraphTraceError as exc:
            self._why = f"the model could not be traced: {str(exc).splitlines()[0][:200]}"
        except ValueError:
            try:
                self.graph = trace_model(self.model)
            except GraphTraceError as exc:
                self._why = f"the model could not be traced: {str(exc).splitlines()[0][:200]}"
        self._cache = {}

    def of(self, name: str, module: nn.Module | None) -> tuple[str, str]:
        """``(layout, why)`` of layer ``name`` (a module name or a graph node name)."""
        if isinstance(self.layout, str) and self.layout != "auto":
            return self.layout, ""
        if isinstance(self.layout, dict) and self.layout.get(name, "auto") != "auto":
            return self.layout[name], ""
        if name not in self._cache:
            layout = "unknown"
            if self.graph is not None:
                if name in self.graph.nodes and module is None:
                    layout = self.graph.nodes[name].layout or "unknown"
                else:
                    layout = self.graph.module_layout(name)
            elif module is not None:
                layout = module_type_layout(module) or "unknown"
            self._cache[name] = layout
        why = self._why or (f"{type(module).__name__} output, not fixed by the traced graph" if module is not None
                            else "not fixed by the traced graph")
        return self._cache[name], why


class _Tap(nn.Module):
    """Identity; a forward hook on it sees one functional operation's output."""

    def forward(self, x: Any) -> Any:
        return x


class FunctionalTaps:
    """A copy of the traced program with a tap after chosen nodes, run in place of ``model.forward``.

    Used when the recorded layers include functional operations (``F.relu`` calls, found by
    their graph node names). Container modules selected alongside them are tapped at their
    output nodes (their hooks would not fire in the traced program); leaf modules keep their
    own hooks, since the traced program calls the same module objects.
    """

    def __init__(self, graph: ModelGraph, nodes: list[str], containers: list[str]) -> None:
        gm = graph.graph_module
        new = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        self.root = nn.Module()
        for name, sub in gm.named_children():
            self.root.add_module(name, sub)
        targets: dict[str, list[str]] = {n: [n] for n in nodes}
        for c in containers:
            for out in graph.module_outputs(c):
                targets.setdefault(out.name, []).append(c)
        self.taps: dict[str, list[_Tap]] = {}
        count = 0
        for node in gm.graph.nodes:
            copied = new.node_copy(node, lambda n: env[n])
            env[node] = copied
            for label in targets.get(node.name, []):
                tap = _Tap()
                tap_name = f"sepmeasure_tap_{count}"
                count += 1
                self.root.add_module(tap_name, tap)
                self.taps.setdefault(label, []).append(tap)
                copied = new.call_module(tap_name, (copied,))
                env[node] = copied
        copy_graph_attributes(gm, self.root)
        self.program = fx.GraphModule(self.root, new, "TappedModel")
        self._saved: Any = None
        self._had_own = False

    def install(self, model: nn.Module) -> None:
        self._had_own = "forward" in model.__dict__
        self._saved = model.__dict__.get("forward")
        model.forward = self.program.forward

    def remove(self, model: nn.Module) -> None:
        if self._had_own:
            model.forward = self._saved
        else:
            model.__dict__.pop("forward", None)


def functional_selection(model: nn.Module, layers: Any) -> tuple[ModelGraph | None, list[str], Any]:
    """Split a layer selector into graph node names of functional operations and the rest.

    Returns ``(graph, functional node names, remaining selector or None)``; the model is traced
    only when a plain name in ``layers`` is not one of its modules.
    """
    if layers is None:
        return None, [], None
    items = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    modules = {n for n, _ in model.named_modules()}
    candidates = [s for s in items if isinstance(s, str) and not s.startswith("re:") and s not in modules]
    if not candidates:
        return None, [], layers
    try:
        graph = trace_model(model)
    except GraphTraceError:
        return None, [], layers
    functional = [s for s in candidates if s in graph.nodes and graph.nodes[s].op in ("call_function", "call_method")
                  and graph.nodes[s].layout != ""]
    if not functional:
        return None, [], layers
    rest = [s for s in items if s not in functional]
    return graph, list(dict.fromkeys(functional)), (rest or None)
