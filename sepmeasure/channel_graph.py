"""The channel graph of a traced model, for path-length statistics (:mod:`sepmeasure.paths`).

Built from the one traced description of the model (:mod:`sepmeasure.graph`); see the
:mod:`sepmeasure.paths` docstring for what the channel graph is. The rules:

* a ``Linear`` or convolution is a fully connected map between channels; when its output
  goes only to one element-wise non-linearity (through per-channel maps such as batch norm),
  the two form one layer (the non-linearity's channels, reached by a full edge), otherwise
  it is a layer of linear channels of its own;
* an element-wise non-linearity (module or functional) is a layer joined channel to channel
  (an ``"identity"`` edge) to what it reads, unless merged as above;
* a sum of two tensors (a residual sum) is a layer of linear channels with two identity
  branches;
* per-channel affine maps (batch norm, identity, dropout, scaling, adding a constant),
  average pooling, reductions over space and reshapes (flatten) leave the channels as they
  are (space is ignored);
* anything else (max pooling, attention, normalisation over features, concatenation, an
  unknown leaf module) is an error naming the operation.

Each layer is named by the outermost module whose output it is (``"layers.0"`` for a block
``linear -> act``, ``"blocks.3"`` for a residual block's sum), else by its node's label
(the module name, or the node name of a functional call such as ``"relu_4"``).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .graph import GraphNode, ModelGraph

__all__ = ["channel_layers"]

_PASS = ("channelwise", "avg_pool", "reduce", "reshape")
_PASS_FUNCTIONS = ("dropout_train", "batch_norm_train")  # structure only: the channels are the same


def _module_flags(module: nn.Module, channels: int, where: str) -> tuple[bool, ...] | None:
    """Per-channel flags of a module activation, or ``None`` for a generic non-linear one."""
    if hasattr(module, "nonlinear_channels") and callable(module.nonlinear_channels):
        flags = torch.as_tensor(module.nonlinear_channels()).detach().cpu().reshape(-1)
        if flags.numel() != channels:
            raise ValueError(f"model: {where!r} reports {flags.numel()} channels, expected {channels}")
        return tuple(bool(f) for f in flags.tolist())
    if isinstance(module, nn.Identity):
        return (False,) * channels
    if isinstance(module, nn.LeakyReLU):
        return (module.negative_slope != 1.0,) * channels
    if isinstance(module, nn.PReLU):
        w = module.weight.detach().cpu().reshape(-1)
        w = w.expand(channels) if w.numel() == 1 else w
        return tuple(bool(v != 1) for v in w.tolist())
    return None


def _flags(graph: ModelGraph, node: GraphNode, channels: int) -> tuple[bool, ...]:
    if node.op == "call_module":
        flags = _module_flags(graph.model.get_submodule(node.target), channels, node.target)
        if flags is not None:
            return flags
    elif node.function == "leaky_relu":
        slope = node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
        if isinstance(slope, (int, float)):
            return (float(slope) != 1.0,) * channels
    return (True,) * channels


def _out_width(graph: ModelGraph, node: GraphNode) -> int:
    if node.op == "call_module":
        m = graph.model.get_submodule(node.target)
        for attr in ("out_features", "out_channels"):
            if isinstance(getattr(m, attr, None), int):
                return int(getattr(m, attr))
    width = graph.channels(node.name)
    if width is None:
        raise TypeError(f"model: unsupported layer {node.label!r} ({node.function}): its number of output "
                        f"channels is unknown; pass an example input so that shapes are known")
    return width


def _in_width(graph: ModelGraph, node: GraphNode) -> int | None:
    if node.op == "call_module":
        m = graph.model.get_submodule(node.target)
        for attr in ("in_features", "in_channels"):
            if isinstance(getattr(m, attr, None), int):
                return int(getattr(m, attr))
    return None


def _what(node: GraphNode) -> str:
    return node.module_type or node.function


def _names(graph: ModelGraph) -> dict[str, str]:
    """Each node's layer name: the outermost module whose output it is, else its label."""
    outputs: dict[str, set[str]] = {}
    names = {}
    for name, node in graph.nodes.items():
        names[name] = node.label
        for m in node.scope:  # outermost first
            if m not in outputs:
                outputs[m] = {o.name for o in graph.module_outputs(m)}
            if name in outputs[m]:
                names[name] = m.replace("@", "#")  # torch.fx names the k-th extra call of a module "name@k"
                break
    return names


def channel_layers(graph: ModelGraph) -> list[tuple[str, tuple[bool, ...], tuple[tuple[str, str], ...]]]:
    """``(name, non-linear flags, inputs)`` of every layer of the channel graph, input first."""
    names = _names(graph)
    layers: list[tuple[str, tuple[bool, ...], tuple[tuple[str, str], ...]]] = []
    width: dict[str, int] = {}
    taken: dict[str, int] = {}
    # at[node] = ("layer", layer name) or ("pending", source layer name, width, node) or ("input",)
    at: dict[str, tuple[Any, ...]] = {}

    def add(name: str, flags: tuple[bool, ...], inputs: tuple[tuple[str, str], ...]) -> str:
        k = taken.get(name, 0)
        taken[name] = k + 1
        unique = name if k == 0 else f"{name}#{k}"
        layers.append((unique, flags, inputs))
        width[unique] = len(flags)
        return unique

    def layer_of(src: str, consumer: GraphNode) -> str:
        state = at[src]
        if state[0] == "layer":
            return state[1]
        if state[0] == "pending":
            _, source, w, lin = state
            made = add(names[lin.name], (False,) * w, ((source, "full"),))
            at[src] = ("layer", made)
            return made
        raise TypeError(f"model: unsupported layer {consumer.label!r} ({_what(consumer)}) before the first linear "
                        f"or convolutional layer; expected the input to go through one first")

    def single_consumer(name: str) -> bool:
        return len(graph.users(name)) == 1

    inputs = [n for n in graph.nodes.values() if n.kind == "input"]
    if len(inputs) != 1:
        raise TypeError(f"model: expected a model with one tensor input, got {len(inputs)}")
    for node in graph.nodes.values():
        kind = node.kind
        if kind == "input":
            at[node.name] = ("input",)
        elif kind in ("constant",):
            continue
        elif kind in _PASS or (kind == "opaque" and node.function in _PASS_FUNCTIONS):
            src = node.inputs[0]
            state = at[src]
            # a pending linear map stays pending only along a chain with a single consumer
            if state[0] == "pending" and not single_consumer(src):
                at[node.name] = ("layer", layer_of(src, node))
            else:
                at[node.name] = state
        elif kind == "linear":
            src = node.inputs[0]
            if at[src][0] == "input":
                n_in = _in_width(graph, node)
                if n_in is None:
                    raise TypeError(f"model: unsupported layer {node.label!r} ({_what(node)}): its number of "
                                    f"input channels is unknown")
                add("input", (False,) * n_in, ())
                at[src] = ("layer", "input")
            source = layer_of(src, node)
            at[node.name] = ("pending", source, _out_width(graph, node), node)
        elif kind == "nonlinearity":
            src = node.inputs[0]
            state = at[src]
            if state[0] == "pending" and single_consumer(src):
                _, source, w, _lin = state
                at[node.name] = ("layer", add(names[node.name], _flags(graph, node, w), ((source, "full"),)))
            else:
                source = layer_of(src, node)
                w = width[source]
                at[node.name] = ("layer", add(names[node.name], _flags(graph, node, w), ((source, "identity"),)))
        elif kind == "sum":
            sources = [layer_of(s, node) for s in node.inputs]
            widths = {width[s] for s in sources}
            if len(widths) != 1:
                raise TypeError(f"model: unsupported layer {node.label!r} (a sum of {len(sources)} tensors with "
                                f"{sorted(widths)} channels); expected a residual sum of equal widths")
            w = widths.pop()
            at[node.name] = ("layer", add(names[node.name], (False,) * w, tuple((s, "identity") for s in sources)))
        elif kind == "output":
            if not node.inputs:
                raise TypeError("model: expected a model that returns a tensor, got none")
            last = layer_of(node.inputs[0], node)
            if layers[-1][0] != last:
                add("output", (False,) * width[last], ((last, "identity"),))
        else:
            raise TypeError(f"model: unsupported layer {node.label!r} ({_what(node)}); expected linear or "
                            f"convolutional layers, element-wise activations, per-channel affine maps (batch "
                            f"norm), average pooling, flattening and residual sums"
                            + (" (max pooling selects positions: it is not a per-channel map)"
                               if kind == "max_pool" else ""))
    return layers
