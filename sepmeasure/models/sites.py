"""Activation sites of any traced model, and replacing them by other modules.

Shared by :func:`~sepmeasure.models.make_linearizable` and
:func:`~sepmeasure.models.apply_masks`. A *site* is one element-wise non-linearity of the
model's traced graph (:mod:`sepmeasure.graph`): an activation module (named by its module
name, ``"layers.0.act"``) or a functional call inside ``forward`` (named by its graph node,
``"relu_3"``). A module that runs several times is one site per call, named ``name``,
``name#1``, ... (each call gets its own replacement).

Replacing sites keeps the model's class when every chosen site is a module called once (the
module is swapped in place of the old one); otherwise the result is the model's traced
program (a ``torch.fx.GraphModule`` with the same submodule names and the same class name),
in which each chosen call reads its new module.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch.fx as fx
from torch import nn

from ..graph import GraphNode, ModelGraph, trace_model
from ..validation import describe

__all__ = ["ActivationSite", "find_sites", "resolve_sites", "replace_sites"]


@dataclass(frozen=True)
class ActivationSite:
    """One element-wise non-linearity of a traced model.

    Attributes
    ----------
    name : str
        How it is selected: the module name, ``name#k`` for the ``k``-th extra call of a
        module, or the graph node name of a functional call.
    channels : int
        Number of channels it acts on.
    node : str
        Its graph node.
    module : str
        The module it calls (``""`` for a functional call).
    function : str
        What it computes (``"relu"``, ``"leaky_relu"``, ... or the module's class name).
    channel_axis : int
        1 (channels first, or ``[N, C]``) or -1 (channels last, ``[N, T, D]``).
    shared : bool
        A module called more than once.
    slope : float or None
        The negative slope of a functional ``leaky_relu`` call.
    plain : bool
        A functional call with no argument but the tensor (and ``inplace``).
    """

    name: str
    channels: int
    node: str
    module: str
    function: str
    channel_axis: int
    shared: bool
    slope: float | None = None
    plain: bool = True

    def activation(self, model: nn.Module) -> nn.Module | None:
        """The activation module of this site (``None`` for a functional call)."""
        return model.get_submodule(self.module) if self.module else None


def _site_channels(graph: ModelGraph, node: GraphNode) -> int:
    src = node.inputs[0]
    channels = graph.channels(src)
    if channels is None:
        raise ValueError(f"model: cannot tell how many channels {node.label!r} ({node.function}) acts on; the "
                         f"layer before it is not a Linear, convolution or batch norm")
    return channels


def find_sites(model: nn.Module, graph: ModelGraph | None = None) -> list[ActivationSite]:
    """Every activation site of ``model``, in execution order (see the module docstring)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {describe(model)}")
    graph = graph or trace_model(model)
    nodes = graph.nonlinearities()
    calls: dict[str, int] = {}
    for n in nodes:
        if n.target:
            calls[n.target] = calls.get(n.target, 0) + 1
    seen: dict[str, int] = {}
    sites = []
    for n in nodes:
        if n.target:
            k = seen.get(n.target, 0)
            seen[n.target] = k + 1
            name = n.target if k == 0 else f"{n.target}#{k}"
        else:
            name = n.name
        axis = -1 if n.layout == "channels_last" else 1
        slope = None
        if not n.target and n.function == "leaky_relu":
            slope = n.kwargs.get("negative_slope", n.args[1] if len(n.args) > 1 else 0.01)
            slope = float(slope) if isinstance(slope, (int, float)) else None
        plain = bool(n.target) or (len(n.args) <= 1 and set(n.kwargs) <= {"inplace"})
        sites.append(ActivationSite(name, _site_channels(graph, n), n.name, n.target, n.function, axis,
                                    calls.get(n.target, 0) > 1, slope, plain))
    return sites


def resolve_sites(model: nn.Module, layers: str | Iterable[str] | None, name: str = "layers",
                  graph: ModelGraph | None = None) -> list[ActivationSite]:
    """The sites selected by ``layers`` (all when ``None``); unknown names or names of modules without
    an activation are an error that lists the valid names."""
    if layers is not None and not isinstance(layers, (str, Iterable)):
        raise TypeError(f"{name}: expected an activation's name or an iterable of names, got {describe(layers)}")
    graph = graph or trace_model(model)
    sites = find_sites(model, graph)
    if not sites:
        hidden = [f"{n.target!r} ({n.module_type})" for n in graph.opaque_leaves()]
        if hidden:
            raise ValueError(f"model: expected element-wise activations in the traced graph, got none outside the "
                             f"leaf modules {', '.join(hidden[:5])}, whose insides (attention, normalisation, "
                             f"their own activations) the graph does not see; this tool does not apply to them")
    if layers is None:
        return sites
    wanted = [layers] if isinstance(layers, str) else list(layers)
    by_name = {s.name: s for s in sites}
    modules = dict(model.named_modules())
    for i, w in enumerate(wanted):
        if w in by_name:
            continue
        valid = ", ".join(repr(s.name) for s in sites)
        if isinstance(w, str) and w in modules:
            raise ValueError(f"{name}[{i}]: expected a layer with an activation (one of {valid}), got {w!r}, "
                             f"which is a {type(modules[w]).__name__} without an activation")
        raise ValueError(f"{name}[{i}]: expected the name of an activation layer (one of {valid}), got {w!r}")
    return [by_name[w] for w in dict.fromkeys(wanted)]


def _free_name(root: nn.Module, base: str) -> str:
    base = base.replace(".", "_").replace("#", "_call")
    name, k = base, 1
    while hasattr(root, name):
        name, k = f"{base}_{k}", k + 1
    return name


def replace_sites(model: nn.Module, new: dict[str, nn.Module], sites: list[ActivationSite], *,
                  inplace: bool) -> tuple[nn.Module, dict[str, str]]:
    """The model with site ``s`` computing ``new[s.name]`` instead; also each site's new module name.

    Module sites called once are swapped in place (the model keeps its class); functional calls and
    calls of shared modules are rewritten in the traced program (a ``GraphModule``).
    """
    chosen = [s for s in sites if s.name in new]
    rewrite = [s for s in chosen if not s.module or s.shared]
    if rewrite and inplace:
        raise ValueError("inplace: True needs every chosen activation to be a module called once; got "
                         + ", ".join(repr(s.name) for s in rewrite[:5])
                         + " (functional calls or shared modules; the result is a new traced program)")
    out = model if inplace else copy.deepcopy(model)
    names = {}
    for s in chosen:
        if s not in rewrite:
            out.set_submodule(s.module, new[s.name])
            names[s.name] = s.module
    if not rewrite:
        return out, names
    graph = trace_model(out)
    gm = graph.graph_module
    by_node = {s.node: s for s in rewrite}
    for node in list(gm.graph.nodes):
        site = by_node.get(node.name)
        if site is None:
            continue
        target = _free_name(out, site.name)
        out.add_module(target, new[site.name])
        gm.add_module(target, new[site.name])
        with gm.graph.inserting_after(node):
            repl = gm.graph.call_module(target, (node.args[0],))
        node.replace_all_uses_with(repl)
        gm.graph.erase_node(node)
        names[site.name] = target
    gm.graph.lint()
    result = fx.GraphModule(out, gm.graph, type(model).__name__)
    if hasattr(out, "config"):
        result.config = out.config
    return result, names
