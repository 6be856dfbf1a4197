"""Gates and the value network of a plain ReLU network, from its traced graph.

Internal to :mod:`sepmeasure.kernels.npk`. The model is traced once (:mod:`sepmeasure.graph`);
every ReLU call, module (``nn.ReLU``) or functional (``F.relu``, ``torch.relu``,
``x.relu()``), is a gated layer. Two programs are derived from the traced one:

* the **gate program** returns the input of every ReLU; the gates are ``1[input > 0]``;
* the **value program** takes the input and one gate tensor per ReLU, computes
  ``input ⊙ gate`` in place of each ReLU and leaves out every batch norm (in eval mode a
  per-channel map ``a_c z + b_c``: its scale is a weight of the path, set to one like every
  weight, its shift a bias, set to zero like every bias); it runs with every weight set to one
  and every bias to zero.

Allowed besides ReLUs: operations that are affine in the input in eval mode (Linear,
convolutions, batch norm in eval mode, average pooling, means and sums over axes, flatten
and other reshapes, concatenation, residual sums, scaling by constants, identity, dropout in
eval mode). Anything else (max pooling, softmax attention and other opaque leaf modules,
GELU/tanh/leaky ReLU, layer norm, batch norm or dropout in training mode, a product of two
tensors) is an error that names the operation and where it is.
"""
from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
import torch.fx as fx
from torch import nn
from torch.func import functional_call

from ..graph import GraphNode, ModelGraph, trace_model

__all__ = ["TracedReLUNetwork"]

_ALLOWED = ("input", "output", "constant", "linear", "channelwise", "avg_pool", "reduce", "reshape", "sum", "concat")
_MAX_LISTED = 5


def _problem(node: GraphNode) -> str | None:
    """Why ``node`` breaks the gate view, or ``None``."""
    if node.kind == "nonlinearity":
        return None if node.function == "relu" and node.module_type in ("", "ReLU") else "non-linearity"
    if node.kind in _ALLOWED:
        return None
    return "non-linearity"


def _what(node: GraphNode) -> str:
    """``Type at 'name'``, with what to do where there is something to do."""
    kind = node.module_type or node.function
    note = {"batch_norm_train": " (batch statistics in training mode: call model.eval())",
            "dropout_train": " (training mode: call model.eval())"}.get(node.function, "")
    if node.kind == "max_pool":
        note = " (max pooling)"
    return f"{kind} at {node.label!r}{note}"


def _is_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == "bias"


class TracedReLUNetwork:
    """Gates of every ReLU call of a traced network; its value network with weights one, biases zero."""

    needs_linearity_check = True

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        graph = trace_model(model)
        bad = [n for n in graph.nodes.values() if _problem(n)]
        if bad:
            shown = ", ".join(_what(n) for n in bad[:_MAX_LISTED])
            more = f" (and {len(bad) - _MAX_LISTED} more)" if len(bad) > _MAX_LISTED else ""
            raise ValueError(f"model: expected a network whose non-linearities are gates (ReLU, as nn.ReLU modules "
                             f"or F.relu / torch.relu calls) and whose other operations are affine in eval mode "
                             f"(Linear, convolutions, batch norm in eval mode, average pooling, residual sums), or a "
                             f"model implementing gates() and value_forward(), got the non-linearity {shown}{more}")
        relus = graph.nonlinearities()
        counts: dict[str, int] = {}
        self.names: list[str] = []
        for n in relus:
            if n.target:
                k = counts.get(n.target, 0)
                counts[n.target] = k + 1
                self.names.append(n.target if k == 0 else f"{n.target}#{k}")
            else:
                self.names.append(n.name)
        self._gate_program = self._gates_program(graph, relus)
        self._value_program = self._values_program(graph, relus)

    @staticmethod
    def _gates_program(graph: ModelGraph, relus: Sequence[GraphNode]) -> fx.GraphModule:
        gm = graph.graph_module
        new = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        wanted = {n.name for n in relus}
        found: dict[str, fx.Node] = {}
        for node in gm.graph.nodes:
            if node.op == "output":
                break
            env[node] = new.node_copy(node, lambda a: env[a])
            if node.name in wanted:
                found[node.name] = env[node.args[0]]
        new.output(tuple(found[n.name] for n in relus))
        return fx.GraphModule(gm, new, "GateProgram")

    @staticmethod
    def _values_program(graph: ModelGraph, relus: Sequence[GraphNode]) -> fx.GraphModule:
        gm = graph.graph_module
        new = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        order = {n.name: i for i, n in enumerate(relus)}
        first: fx.Node | None = None
        gate_inputs: list[fx.Node] = []
        for node in gm.graph.nodes:
            desc = graph.nodes[node.name]
            if node.op == "placeholder":
                env[node] = new.node_copy(node, lambda a: env[a])
                first = env[node]
                continue
            if first is not None and not gate_inputs:  # only placeholders so far: the gates come next
                gate_inputs = [new.placeholder(f"gate_{i}") for i in range(len(relus))]
            if node.name in order:
                env[node] = new.call_function(operator.mul, (env[node.args[0]], gate_inputs[order[node.name]]))
            elif desc.function == "batch_norm":
                env[node] = env[node.args[0]]
            else:
                env[node] = new.node_copy(node, lambda a: env[a])
        return fx.GraphModule(gm, new, "ValueProgram")

    def gates(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            inputs = self._gate_program(x)
        return [(z > 0).to(z.dtype) for z in inputs]

    def value_ones(self, u: torch.Tensor, gates: Sequence[torch.Tensor]) -> torch.Tensor:
        named = list(self._value_program.named_parameters())
        params = {n: (torch.zeros_like(p) if _is_bias(n) else torch.ones_like(p)).detach() for n, p in named}
        with torch.no_grad():
            return functional_call(self._value_program, params, (u, *gates))
