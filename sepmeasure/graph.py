"""The traced description of a model that every tool shares (``torch.fx``).

:func:`trace_model` traces any ``nn.Module`` with ``torch.fx`` symbolic tracing into a
:class:`ModelGraph`: one :class:`GraphNode` per operation, in execution order, saying what
kind of operation it is (a non-linearity, module or functional; a linear map such as
``Linear`` or a convolution; a per-channel affine map such as ``BatchNorm`` in eval mode;
average or max pooling; a residual sum; a concatenation; a reshape; an opaque leaf module),
which nodes feed it, and the **layout** of the tensor it produces:

* ``"channels_first"``: ``[N, C, *spatial]`` (convolutions, batch norm, pooling);
* ``"channels_last"``: ``[N, *tokens, D]`` (``Linear`` on sequences, ``LayerNorm``,
  attention, Transformer layers, ``Embedding``, RNNs with ``batch_first=True``);
* ``"flat"``: ``[N, D]`` or ``[N]``, where the two agree;
* ``"unknown"``: a tensor of three or more axes whose layout the graph cannot tell.

Layouts follow the data: element-wise operations and residual sums keep their input's
layout, ``flatten(2)`` keeps channels first, ``transpose``/``permute`` move the channel axis.
The layout names the meaning of the axes, not the memory format: a ``[N, C, H, W]`` tensor
in ``torch.channels_last`` memory format is still ``"channels_first"`` here.

The package's own ``MLP``, ``CNN`` and ``ResNet`` are traced like any other model; capture
(layouts, functional activations), the linearizable and masked rewrites, folding, path
lengths and gates all read this one description.
"""
from __future__ import annotations

import contextlib
import io
import linecache
import operator
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .validation import describe

__all__ = ["GraphNode", "ModelGraph", "GraphTraceError", "trace_model", "copy_graph_attributes", "LAYOUTS",
           "NONLINEARITIES", "RELU_FAMILY"]

LAYOUTS = ("channels_first", "channels_last", "flat", "unknown")
NONLINEARITIES = ("relu", "leaky_relu", "prelu", "gelu", "tanh", "sigmoid", "silu", "elu", "softplus", "hardtanh",
                  "relu6")
"""Canonical names of the element-wise non-linearities the graph recognises (module or functional)."""
RELU_FAMILY = ("relu", "leaky_relu", "prelu")
"""Non-linearities that are a channel-wise PReLU ``max(0, z) + alpha min(0, z)`` exactly."""

_ACT_MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.PReLU: "prelu", nn.GELU: "gelu", nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid", nn.SiLU: "silu", nn.ELU: "elu", nn.Softplus: "softplus", nn.Hardtanh: "hardtanh",
    nn.ReLU6: "relu6",
}
_ACT_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu_: "relu", torch.relu_: "relu", F.leaky_relu: "leaky_relu",
    F.prelu: "prelu", torch.prelu: "prelu", F.gelu: "gelu", torch.tanh: "tanh", F.tanh: "tanh",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.silu: "silu", F.elu: "elu", F.softplus: "softplus",
    F.hardtanh: "hardtanh", F.relu6: "relu6",
}
_ACT_METHODS = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "sigmoid": "sigmoid", "tanh_": "tanh",
                "sigmoid_": "sigmoid"}
_CHANNELS_FIRST_MODULES = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm,
                           nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
                           nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
                           nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Upsample, nn.LocalResponseNorm)
_TOKEN_MODULES = (nn.LayerNorm, nn.Embedding, nn.MultiheadAttention, nn.TransformerEncoderLayer,
                  nn.TransformerDecoderLayer, nn.TransformerEncoder, nn.TransformerDecoder, nn.Transformer,
                  nn.RNNBase)
_ELEMENTWISE_FUNCTIONS = {F.dropout, torch.clone, operator.neg, torch.neg, F.dropout1d, F.dropout2d}
_ELEMENTWISE_METHODS = {"contiguous", "clone", "detach", "float", "double", "to", "type_as", "neg"}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "transpose", "permute", "squeeze", "unsqueeze", "expand",
                    "movedim", "t", "unflatten", "repeat", "expand_as"}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.transpose, torch.permute, torch.squeeze,
                      torch.unsqueeze, torch.movedim, operator.getitem}
_AVGPOOL_FUNCTIONS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                      F.adaptive_avg_pool3d}
_MAXPOOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
                      F.adaptive_max_pool3d}
_REDUCE_METHODS = {"mean": "mean", "sum": "sum"}
_SUM_FUNCTIONS = {operator.add, torch.add, operator.iadd, operator.sub, torch.sub}
_SCALE_FUNCTIONS = {operator.mul, torch.mul, operator.truediv, torch.div, operator.imul}


class GraphTraceError(TypeError):
    """``torch.fx`` could not trace the model; the message names the construct and what to do."""


@dataclass(frozen=True)
class GraphNode:
    """One operation of a traced model.

    Attributes
    ----------
    name : str
        The fx node's unique name (``"relu_1"``); for a module call, ``target`` is its module name.
    op : str
        The fx opcode: ``placeholder``, ``call_module``, ``call_function``, ``call_method``,
        ``get_attr`` or ``output``.
    kind : str
        ``input``, ``output``, ``constant`` (parameters, shapes, Python values),
        ``nonlinearity`` (element-wise), ``linear`` (mixes channels: Linear, convolution),
        ``channelwise`` (per-channel affine: BatchNorm, identity, dropout, scaling by a
        constant, adding a constant), ``avg_pool``, ``max_pool``, ``reduce`` (mean/sum over axes),
        ``sum`` (of two tensors: a residual sum), ``concat``, ``reshape`` or ``opaque``.
    function : str
        What it computes: a name of :data:`NONLINEARITIES`, ``"linear"``, ``"conv2d"``,
        ``"batch_norm"``, ``"add"``, ... or the module type's name.
    target : str
        The module name for ``call_module`` (as ``model.get_submodule`` takes it), else ``""``.
    module_type : str
        The module's class name for ``call_module``, else ``""``.
    inputs : tuple of str
        Names of the tensor nodes it reads (constants excluded).
    scope : tuple of str
        The enclosing modules, outermost first (from ``nn_module_stack``).
    shape : tuple of int or None
        The output's shape for the example input given to :func:`trace_model`.
    layout : str
        One of :data:`LAYOUTS` (see the module docstring), or ``""`` for non-tensor nodes.
    """

    name: str
    op: str
    kind: str
    function: str
    target: str = ""
    module_type: str = ""
    inputs: tuple[str, ...] = ()
    scope: tuple[str, ...] = ()
    shape: tuple[int, ...] | None = None
    layout: str = ""
    args: tuple[Any, ...] = field(default=(), repr=False, compare=False)
    kwargs: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def label(self) -> str:
        """The module name for module calls, the node name otherwise (how the tools name it)."""
        return self.target or self.name


class _Tracer(fx.Tracer):
    """Leaves: torch.nn's own modules (not containers), modules marking themselves ``graph_leaf``,
    and whatever the caller names."""

    def __init__(self, leaf_types: tuple[type, ...], leaf_names: frozenset[str]) -> None:
        super().__init__()
        self.leaf_types = leaf_types
        self.leaf_names = leaf_names

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if getattr(type(m), "graph_leaf", False) or module_qualified_name in self.leaf_names:
            return True
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _user_frame(exc: BaseException) -> str:
    """``file:line (code)`` of the innermost frame of the exception outside torch itself."""
    frames = traceback.extract_tb(exc.__traceback__)
    torch_dir = torch.__file__.rsplit("/", 1)[0]
    user = [f for f in frames if not f.filename.startswith(torch_dir) and not f.filename.endswith("/graph.py")]
    if not user:
        return ""
    f = user[-1]
    code = (f.line or linecache.getline(f.filename, f.lineno)).strip()
    return f" at {f.filename}:{f.lineno} ({code})"


def _construct(exc: BaseException) -> str:
    text = str(exc)
    if "control flow" in text:
        return "data-dependent control flow (an `if`, `while` or `assert` on a tensor value or shape)"
    if "iterat" in text:
        return "iteration over a tensor (a `for` loop or unpacking whose length depends on the input)"
    if "len(" in text or "__len__" in text:
        return "len() of a tensor"
    return f"an operation torch.fx cannot trace symbolically ({type(exc).__name__}: {text.splitlines()[0][:200]})"


def trace_model(model: nn.Module, example_input: torch.Tensor | None = None, *,
                leaf_modules: Iterable[str | type] = ()) -> "ModelGraph":
    """Trace ``model`` with ``torch.fx`` into the one description the tools share.

    Parameters
    ----------
    model : nn.Module
        Any module whose ``forward`` takes one tensor. It is not modified.
    example_input : Tensor, optional
        A batch the model accepts; when given, every node's output shape is recorded (by
        propagating fake tensors: nothing is computed, no batch-norm statistic changes), which
        sharpens layouts (e.g. ``transpose`` on a 3-D tensor) and channel counts.
    leaf_modules : iterable of str or type, optional
        Module names or types to keep as single nodes instead of tracing into them (for
        modules with data-dependent control flow inside).

    Returns
    -------
    ModelGraph

    Raises
    ------
    TypeError
        ``model`` is not an ``nn.Module``; :class:`GraphTraceError` (a ``TypeError``) when
        torch.fx cannot trace it: the message names the construct and where it is, and says
        what to do (mark the module holding it as a leaf with ``leaf_modules``, or use the
        tools that work by module, such as :func:`~sepmeasure.record` by module name).

    Examples
    --------
    >>> from torch import nn
    >>> import torch.nn.functional as F
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv, self.fc = nn.Conv1d(2, 4, 3), nn.Linear(4, 3)
    ...     def forward(self, x):
    ...         return self.fc(F.relu(self.conv(x)).mean(-1))
    >>> g = trace_model(Net(), torch.randn(1, 2, 8))
    >>> [(n.label, n.kind, n.layout) for n in g.tensor_nodes()]  # doctest: +NORMALIZE_WHITESPACE
    [('x', 'input', 'channels_first'), ('conv', 'linear', 'channels_first'),
     ('relu', 'nonlinearity', 'channels_first'), ('mean', 'reduce', 'flat'), ('fc', 'linear', 'flat')]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {describe(model)}")
    names = [m for m in leaf_modules if isinstance(m, str)]
    types = tuple(m for m in leaf_modules if isinstance(m, type))
    tracer = _Tracer(types, frozenset(names))
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # noqa: BLE001 - every tracing failure becomes one clear error
        raise GraphTraceError(
            f"model: cannot trace {type(model).__name__} with torch.fx: {_construct(exc)}{_user_frame(exc)}. "
            f"Mark the module that holds it as a leaf (leaf_modules=['name'] of trace_model, or a class "
            f"attribute graph_leaf = True), or use the tools that work by module (record by module name, "
            f"empirical_ntk)") from exc
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    shapes: dict[str, tuple[int, ...]] = {}
    if example_input is not None:
        shapes = _propagate_shapes(gm, example_input)
    return ModelGraph(model, gm, shapes)


def _propagate_shapes(gm: fx.GraphModule, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.shape_prop import ShapeProp

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints a traceback before raising
            ShapeProp(gm, fake_mode=mode).propagate(x)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"example_input: expected an input the model accepts, got {describe(x)}; the model "
                         f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
    out = {}
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            out[node.name] = tuple(int(s) for s in meta.shape)
    return out


def _is_shape_query(node: fx.Node) -> bool:
    """``x.shape``, ``x.size()``, ``x.dim()``, ``x.ndim``: Python values, not tensors."""
    if node.op == "call_function" and node.target is getattr:
        return len(node.args) > 1 and node.args[1] in ("shape", "ndim", "dtype", "device")
    return node.op == "call_method" and node.target in ("size", "dim", "numel")


class ModelGraph:
    """A traced model (see :func:`trace_model`): nodes in execution order, by name.

    Attributes
    ----------
    model : nn.Module
        The traced model (not copied).
    graph_module : torch.fx.GraphModule
        The traced program; it shares the model's leaf modules and parameters.
    nodes : dict of str to GraphNode
        Every node, in execution order.
    """

    def __init__(self, model: nn.Module, gm: fx.GraphModule, shapes: dict[str, tuple[int, ...]]) -> None:
        self.model = model
        self.graph_module = gm
        self._fx = {n.name: n for n in gm.graph.nodes}
        self.nodes: dict[str, GraphNode] = {}
        self._tensor: set[str] = set()
        self._has_shapes = bool(shapes)
        modules = dict(gm.named_modules())
        for node in gm.graph.nodes:
            desc = self._describe(node, modules, shapes)
            self.nodes[node.name] = desc
            if desc.kind not in ("constant", "output"):
                self._tensor.add(node.name)
        self._users = {name: [u.name for u in n.users] for name, n in self._fx.items()}

    # -- building ------------------------------------------------------------
    def _layout_of(self, name: str) -> str:
        node = self.nodes.get(name)
        return node.layout if node is not None else ""

    def _describe(self, node: fx.Node, modules: dict[str, nn.Module],
                  shapes: dict[str, tuple[int, ...]]) -> GraphNode:
        stack = node.meta.get("nn_module_stack") or {}
        scope = tuple(str(k) for k in stack.keys())
        inputs = tuple(a.name for a in node.all_input_nodes if a.name in self._tensor)
        shape = shapes.get(node.name)
        kind, function, target, mtype, layout = self._classify(node, modules, inputs, shape)
        if kind not in ("constant", "output") and shape is not None and len(shape) <= 2:
            layout = "flat"
        return GraphNode(node.name, node.op, kind, function, target, mtype, inputs, scope, shape,
                         layout if kind not in ("constant", "output") else "", tuple(node.args), dict(node.kwargs))

    def _classify(self, node: fx.Node, modules: dict[str, nn.Module], inputs: tuple[str, ...],
                  shape: tuple[int, ...] | None) -> tuple[str, str, str, str, str]:
        first = self._layout_of(inputs[0]) if inputs else "unknown"
        if node.op == "placeholder":
            return "input", "input", "", "", self._input_layout(node, modules)
        if node.op == "output":
            return "output", "output", "", "", ""
        if node.op == "get_attr":
            return "constant", "parameter", "", "", ""
        if not inputs or (shape is None and self._has_shapes) or _is_shape_query(node):
            return "constant", str(getattr(node.target, "__name__", node.target)), "", "", ""
        if node.op == "call_module":
            m = modules[node.target]
            kind, function = self._classify_module(m, first)
            return kind, function, node.target, type(m).__name__, self._module_layout(m, first)
        fn = node.target
        name = str(getattr(fn, "__name__", fn))
        if node.op == "call_method":
            if fn in _ACT_METHODS:
                return "nonlinearity", _ACT_METHODS[fn], "", "", first
            if fn in _ELEMENTWISE_METHODS:
                return "channelwise", fn, "", "", first
            if fn in _RESHAPE_METHODS:
                return "reshape", fn, "", "", self._reshape_layout(node, fn, first, shape)
            if fn in _REDUCE_METHODS:
                return "reduce", fn, "", "", "flat" if shape is not None and len(shape) <= 2 else "unknown"
            if fn in ("add", "sub", "mul", "div", "add_", "mul_"):
                return self._binary(node, fn.rstrip("_"), inputs, first)
            return "opaque", fn, "", "", "unknown"
        if fn in _ACT_FUNCTIONS:
            return "nonlinearity", _ACT_FUNCTIONS[fn], "", "", first
        if fn in _ELEMENTWISE_FUNCTIONS:
            return "channelwise", name, "", "", first
        if fn in _AVGPOOL_FUNCTIONS:
            return "avg_pool", name, "", "", "channels_first"
        if fn in _MAXPOOL_FUNCTIONS:
            return "max_pool", name, "", "", "channels_first"
        if fn in (torch.cat, torch.concat, torch.stack):
            return "concat", name, "", "", self._common_layout(inputs)
        if fn in _RESHAPE_FUNCTIONS or getattr(fn, "graph_reshape", False):
            return "reshape", name, "", "", self._reshape_layout(node, name, first, shape)
        if fn in (torch.mean, torch.sum):
            return "reduce", name, "", "", "flat" if shape is not None and len(shape) <= 2 else "unknown"
        if fn in _SUM_FUNCTIONS or fn in _SCALE_FUNCTIONS:
            op = "add" if fn in (operator.add, torch.add, operator.iadd) else (
                "sub" if fn in (operator.sub, torch.sub) else ("mul" if fn in (operator.mul, torch.mul,
                                                                              operator.imul) else "div"))
            return self._binary(node, op, inputs, first)
        if fn is F.linear:
            return "linear", "linear", "", "", "channels_last"
        if fn in (F.conv1d, F.conv2d, F.conv3d):
            return "linear", name, "", "", "channels_first"
        if fn is F.batch_norm:
            return "channelwise", "batch_norm", "", "", "channels_first"
        if fn is F.layer_norm:
            return "opaque", "layer_norm", "", "", "channels_last"
        return "opaque", name, "", "", "unknown"

    def _binary(self, node: fx.Node, op: str, inputs: tuple[str, ...], first: str) -> tuple[str, str, str, str, str]:
        tensor_args = [a for a in node.args if isinstance(a, fx.Node) and a.name in self._tensor]
        if len(tensor_args) >= 2 and op in ("add", "sub"):
            return "sum", op, "", "", self._common_layout(inputs)
        if len(tensor_args) >= 2:
            return "opaque", op, "", "", self._common_layout(inputs)
        return "channelwise", op, "", "", first

    def _common_layout(self, inputs: Sequence[str]) -> str:
        layouts = {self._layout_of(i) for i in inputs} - {"", "flat"}
        if not layouts:
            return "flat" if inputs else "unknown"
        return layouts.pop() if len(layouts) == 1 else "unknown"

    @staticmethod
    def _classify_module(m: nn.Module, first: str) -> tuple[str, str]:
        if hasattr(m, "nonlinear_channels") and callable(m.nonlinear_channels):
            return "nonlinearity", type(m).__name__
        if getattr(type(m), "graph_activation", False):  # an activation slot holding the identity
            return "nonlinearity", "identity"
        for t, name in _ACT_MODULES.items():
            if type(m) is t:
                return "nonlinearity", name
        if isinstance(m, (nn.Linear, nn.Bilinear)) and not isinstance(m, nn.Bilinear):
            return "linear", "linear"
        if isinstance(m, nn.modules.conv._ConvNd):
            return "linear", type(m).__name__.lower()
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            running = m.track_running_stats and m.running_mean is not None
            return ("channelwise", "batch_norm") if not m.training and running else (
                "opaque", "batch_norm_train")
        if isinstance(m, (nn.Identity, nn.Flatten, nn.Unflatten)):
            return ("reshape", "flatten") if isinstance(m, (nn.Flatten, nn.Unflatten)) else ("channelwise", "identity")
        if isinstance(m, nn.modules.dropout._DropoutNd):
            return ("channelwise", "dropout") if not m.training or m.p == 0 else ("opaque", "dropout_train")
        if isinstance(m, (nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd)):
            return "avg_pool", type(m).__name__
        if isinstance(m, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)):
            return "max_pool", type(m).__name__
        return "opaque", type(m).__name__

    @staticmethod
    def _module_layout(m: nn.Module, first: str) -> str:
        layout = module_type_layout(m)
        if layout:
            return layout
        if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            return "flat"
        if isinstance(m, (nn.Identity, nn.modules.dropout.Dropout, nn.AlphaDropout)) or m.__class__ in _ACT_MODULES \
                or hasattr(m, "nonlinear_channels") or getattr(type(m), "graph_activation", False):
            return first
        return "unknown"

    def _input_layout(self, node: fx.Node, modules: dict[str, nn.Module]) -> str:
        """An input's layout from its first consumer that fixes one (a conv: channels first)."""
        frontier, seen = list(node.users), set()
        while frontier:
            u = frontier.pop(0)
            if u in seen:
                continue
            seen.add(u)
            if u.op == "call_module":
                layout = module_type_layout(modules[u.target])
                if layout:
                    return layout
            if u.op == "call_function" and u.target in (F.conv1d, F.conv2d, F.conv3d):
                return "channels_first"
        return "unknown"

    def _reshape_layout(self, node: fx.Node, fn: str, first: str, shape: tuple[int, ...] | None) -> str:
        if shape is not None and len(shape) <= 2:
            return "flat"
        in_shape = None
        src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if src is not None:
            in_shape = self.nodes[src.name].shape if src.name in self.nodes else None
        args = [a for a in node.args[1:]]
        if fn == "flatten":
            start = node.kwargs.get("start_dim", args[0] if args else 0)
            if isinstance(start, int) and start >= 2 and first == "channels_first":
                return "channels_first"
            return "unknown"
        if fn in ("transpose", "movedim") and len(args) >= 2 and in_shape is not None and \
                all(isinstance(a, int) for a in args[:2]) and first in ("channels_first", "channels_last"):
            nd = len(in_shape)
            a, b = (d % nd for d in args[:2])
            axis = 1 if first == "channels_first" else nd - 1
            if fn == "transpose":
                axis = b if axis == a else (a if axis == b else axis)
            else:
                order = [d for d in range(nd) if d != a]
                order.insert(b, a)
                axis = order.index(axis)
            return "channels_first" if axis == 1 else ("channels_last" if axis == nd - 1 else "unknown")
        if fn in ("contiguous",):
            return first
        return "unknown"

    # -- queries ---------------------------------------------------------------
    def tensor_nodes(self) -> list[GraphNode]:
        """Every node that produces a tensor (inputs included), in execution order."""
        return [n for n in self.nodes.values() if n.name in self._tensor]

    def nonlinearities(self) -> list[GraphNode]:
        """The element-wise non-linearities, module or functional, in execution order."""
        return [n for n in self.nodes.values() if n.kind == "nonlinearity"]

    def users(self, name: str) -> list[str]:
        """Names of the nodes that read node ``name``."""
        return list(self._users[name])

    def output_nodes(self) -> list[str]:
        """The tensor nodes the model returns."""
        out = [n for n in self.nodes.values() if n.kind == "output"]
        return list(out[0].inputs) if out else []

    def module_outputs(self, module: str) -> list[GraphNode]:
        """Nodes whose value leaves module ``module`` (its outputs), one per call in execution order.

        A leaf module's outputs are its ``call_module`` nodes; a container's are the nodes inside
        its scope read by a node outside it (or returned by the model).
        """
        leaf = [n for n in self.nodes.values() if n.op == "call_module" and n.target == module]
        if leaf:
            return leaf
        inside = {n.name for n in self.nodes.values() if module in n.scope}
        outs = []
        for name in inside:
            if any(u not in inside for u in self._users[name]):
                outs.append(self.nodes[name])
        order = list(self.nodes)
        return sorted(outs, key=lambda n: order.index(n.name))

    def module_layout(self, module: str) -> str:
        """Layout of what module ``module`` returns: from the graph, or from its type when the
        module is inside a leaf; ``"unknown"`` when neither tells."""
        outs = [n for n in self.module_outputs(module) if n.layout]
        layouts = {n.layout for n in outs}
        if len(layouts) == 1:
            return layouts.pop()
        if layouts:
            return "unknown"
        try:
            m = self.model.get_submodule(module)
        except AttributeError:
            return "unknown"
        return module_type_layout(m) or "unknown"

    def channels(self, name: str) -> int | None:
        """Number of channels of node ``name``'s output (axis 1 or the last axis by its layout), from
        its shape, else from the nearest ``Linear``/conv/batch norm before it; ``None`` if unknown."""
        node = self.nodes[name]
        if node.shape is not None and len(node.shape) >= 2:
            return node.shape[-1] if node.layout == "channels_last" else node.shape[1]
        seen = set()
        todo = [name]
        while todo:
            cur = self.nodes[todo.pop()]
            if cur.name in seen:
                continue
            seen.add(cur.name)
            if cur.op == "call_module":
                m = self.model.get_submodule(cur.target) if cur.target else None
                for attr in ("out_features", "out_channels", "num_features", "channels"):
                    if isinstance(getattr(m, attr, None), int):
                        return int(getattr(m, attr))
            if cur.kind in ("nonlinearity", "channelwise", "avg_pool", "max_pool", "sum") and cur.inputs:
                todo.extend(cur.inputs)
        return None

    def opaque_leaves(self) -> list[GraphNode]:
        """``call_module`` nodes of leaf modules the graph does not see into and cannot classify."""
        return [n for n in self.nodes.values() if n.kind == "opaque" and n.op == "call_module"]

    def to_frame(self) -> pd.DataFrame:
        """One row per node: ``node, label, op, kind, function, inputs, shape, layout``."""
        return pd.DataFrame([{"node": n.name, "label": n.label, "op": n.op, "kind": n.kind, "function": n.function,
                              "inputs": ", ".join(n.inputs), "shape": n.shape, "layout": n.layout}
                             for n in self.nodes.values()])

    def __repr__(self) -> str:
        kinds: dict[str, int] = {}
        for n in self.nodes.values():
            kinds[n.kind] = kinds.get(n.kind, 0) + 1
        return f"ModelGraph({type(self.model).__name__}, {len(self.nodes)} nodes, {kinds})"


def module_type_layout(m: nn.Module) -> str:
    """Layout of a module's output from its type alone (``""`` when its type does not fix one)."""
    if isinstance(m, _CHANNELS_FIRST_MODULES):
        return "channels_first"
    if isinstance(m, nn.Linear):
        return "channels_last"
    if isinstance(m, _TOKEN_MODULES):
        batch_first = getattr(m, "batch_first", None)
        if batch_first is None and isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
            batch_first = m.self_attn.batch_first
        if batch_first is None and isinstance(m, nn.TransformerEncoder):
            batch_first = m.layers[0].self_attn.batch_first if len(m.layers) else None
        if batch_first is None and isinstance(m, nn.TransformerDecoder):
            batch_first = m.layers[0].self_attn.batch_first if len(m.layers) else None
        if batch_first is False:
            return "unknown"  # [T, N, D]: the batch is not the first axis
        return "channels_last"
    return ""


def copy_graph_attributes(gm: fx.GraphModule, root: nn.Module) -> None:
    """Register on ``root`` every attribute the graph of ``gm`` reads (``get_attr`` nodes), at the same path:
    parameters as parameters, tensors as buffers, anything else as a plain attribute."""
    for target in [n.target for n in gm.graph.nodes if n.op == "get_attr"]:
        *path, last = target.split(".")
        s, d = gm, root
        for p in path:
            s = getattr(s, p)
            if not hasattr(d, p):
                d.add_module(p, nn.Module())
            d = getattr(d, p)
        value = getattr(s, last)
        if isinstance(value, nn.Parameter):
            d.register_parameter(last, value)
        elif isinstance(value, torch.Tensor):
            d.register_buffer(last, value)
        else:
            setattr(d, last, value)
