"""Path-length statistics of a network's channel graph.

Mehmeti-Göpel & Disselhoff 2023, *Nonlinear Advantage: Trained Networks Might Not Be As
Complex as You Think* (ICML 2023, arXiv 2211.17180), "average path length"; Veit, Wilber &
Belongie 2016, *Residual Networks Behave Like Ensembles of Relatively Shallow Networks*
(the distribution of path lengths through a ResNet is binomial).

The **channel graph** of a network has one node per channel (unit) of each layer, marked
linear or non-linear. Consecutive layers are fully connected at channel level (a linear or
convolutional layer connects every input channel to every output channel; space is
ignored); a per-channel operation (an activation applied after a residual sum, an identity
skip) joins channel ``c`` to channel ``c``. A residual sum is a layer with two incoming
*branches*. The length of an input-to-output path is the number of non-linear channels on it.

* **unnormalized** average path length: the mean length over *all* input-to-output paths;
* **normalized** average path length: the expected length of the path traced by a backward
  random walk that starts at an output channel chosen uniformly, and at every layer picks one
  of the incoming branches uniformly (probability 1/2 at a residual sum) and, within it, one
  incoming channel uniformly.

Both are computed, together with the whole distribution of lengths, by dynamic programming
over layers (never by enumerating paths): per channel, the distribution of the lengths of
the paths (or walk) reaching it. A network with ``n`` layers of width ``w`` costs
``O(n * w * n)`` operations.

Supported models: any ``nn.Module`` that ``torch.fx`` can trace (:mod:`sepmeasure.graph`; the
package's own ``MLP``, ``CNN`` and ``ResNet`` go the same way), built into a channel graph by
the rules of :mod:`sepmeasure.channel_graph`: linear and convolutional layers, element-wise
activations (modules or functional calls such as ``F.relu``), per-channel affine maps (batch
norm, dropout, identity), average pooling, flattening and residual sums. ``DGN``/``DLGN``
count their value network (every gated unit non-linear). Per-channel linearity of an
activation: ``PReLU``/``LeakyReLU`` channels with slope exactly 1 are linear, a module with a
``nonlinear_channels()`` method (:class:`~sepmeasure.LinearityMask`,
:class:`~sepmeasure.models.linearizable.LinearizablePReLU`) says so itself, every other
element-wise activation is non-linear. Max pooling, attention and other operations that are
not per-channel maps are an error naming them.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .channel_graph import channel_layers
from .graph import GraphTraceError, trace_model
from .validation import check_choice, check_int, describe

__all__ = ["PathLayer", "PathGraph", "path_graph", "AveragePathLength", "PathLengthDistribution",
           "average_path_length", "path_length_distribution"]

EDGE_KINDS = ("full", "identity")

# --------------------------------------------------------------------------------- graph
@dataclass(frozen=True)
class PathLayer:
    """One layer of a channel graph.

    Attributes
    ----------
    name : str
    nonlinear : tuple of bool
        One flag per channel (the width is its length).
    inputs : tuple of (str, str)
        Incoming branches ``(source layer name, "full" | "identity")``; empty only for the
        input layer. Two or more branches make a residual sum.
    """

    name: str
    nonlinear: tuple[bool, ...]
    inputs: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"name: expected a layer name (str), got {describe(self.name)}")
        flags = self.nonlinear
        if isinstance(flags, (str, bytes, Mapping)) or not isinstance(flags, (Sequence, np.ndarray)):
            raise TypeError(f"nonlinear: expected a sequence of bools (one per channel), got {describe(flags)}")
        if not all(isinstance(f, (bool, np.bool_)) for f in flags):
            raise TypeError(f"nonlinear: expected a sequence of bools (one per channel), got {describe(flags)}")
        if len(flags) < 1:
            raise ValueError(f"nonlinear: expected at least one channel flag, got {describe(flags)}")
        inputs = self.inputs
        if isinstance(inputs, (str, bytes, Mapping)) or not isinstance(inputs, Sequence):
            raise TypeError(f"inputs: expected a sequence of (source layer name, kind) pairs, got {describe(inputs)}")
        pairs = []
        for i, branch in enumerate(inputs):
            if (isinstance(branch, (str, bytes)) or not isinstance(branch, Sequence) or len(branch) != 2
                    or not all(isinstance(part, str) for part in branch)):
                raise TypeError(f"inputs[{i}]: expected a (source layer name, kind) pair of str, got {describe(branch)}")
            pairs.append((branch[0], branch[1]))
        object.__setattr__(self, "nonlinear", tuple(bool(f) for f in flags))
        object.__setattr__(self, "inputs", tuple(pairs))

    @property
    def width(self) -> int:
        return len(self.nonlinear)


class PathGraph:
    """A channel graph: layers in topological order, the first is the input, the last the output.

    Build it from a model with :func:`path_graph`, or directly from layer descriptions with
    :meth:`from_layers`.

    Examples
    --------
    >>> g = PathGraph.from_layers([
    ...     {"name": "x", "width": 2},
    ...     {"name": "h", "nonlinear": [True, False, True]},
    ...     {"name": "y", "width": 1},
    ... ])
    >>> [layer.width for layer in g.layers], g.n_nonlinear_channels
    ([2, 3, 1], 2)
    """

    def __init__(self, layers: Sequence[PathLayer]) -> None:
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or len(layers) < 2:
            raise ValueError(f"layers: expected a sequence of at least 2 PathLayer (input ... output), "
                             f"got {describe(layers)}")
        seen: dict[str, PathLayer] = {}
        for i, layer in enumerate(layers):
            if not isinstance(layer, PathLayer):
                raise TypeError(f"layers[{i}]: expected a PathLayer, got {describe(layer)}")
            if layer.name in seen:
                raise ValueError(f"layers[{i}]: expected a unique name, got {layer.name!r} twice")
            if layer.width < 1:
                raise ValueError(f"layers[{i}] ({layer.name!r}): expected at least one channel, got 0")
            if i == 0 and layer.inputs:
                raise ValueError(f"layers[0] ({layer.name!r}): expected the input layer (no inputs), "
                                 f"got inputs {list(layer.inputs)}")
            if i > 0 and not layer.inputs:
                raise ValueError(f"layers[{i}] ({layer.name!r}): expected at least one input branch, got none "
                                 f"(only the first layer is an input)")
            for src, kind in layer.inputs:
                check_choice(kind, f"layers[{i}] ({layer.name!r}) input kind", EDGE_KINDS)
                if src not in seen:
                    raise ValueError(f"layers[{i}] ({layer.name!r}): expected inputs from earlier layers, got "
                                     f"{src!r}, which is not defined before it")
                if kind == "identity" and seen[src].width != layer.width:
                    raise ValueError(f"layers[{i}] ({layer.name!r}): an identity branch needs equal widths, got "
                                     f"{seen[src].width} channels in {src!r} and {layer.width} here")
            seen[layer.name] = layer
        self.layers: tuple[PathLayer, ...] = tuple(layers)

    @classmethod
    def from_layers(cls, specs: Sequence[Mapping[str, Any] | PathLayer]) -> "PathGraph":
        """A graph from plain layer descriptions.

        Each description is a mapping with ``name`` (default ``"layer{i}"``), the channels as
        either ``nonlinear`` (per-channel flags, or one bool for all) with an optional
        ``width``, or ``linear`` (per-channel flags), and ``inputs``: a list of source names
        (fully connected) or ``(name, "full" | "identity")`` pairs; by default the previous
        layer, fully connected. The first description is the input layer (linear by default,
        no inputs), the last the output.
        """
        layers: list[PathLayer] = []
        for i, spec in enumerate(specs):
            if isinstance(spec, PathLayer):
                layers.append(spec)
                continue
            if not isinstance(spec, Mapping):
                raise TypeError(f"specs[{i}]: expected a mapping or PathLayer, got {describe(spec)}")
            unknown = set(spec) - {"name", "width", "nonlinear", "linear", "inputs"}
            if unknown:
                raise ValueError(f"specs[{i}]: unknown keys {sorted(unknown)}; expected name, width, nonlinear, "
                                 f"linear, inputs")
            name = str(spec.get("name", f"layer{i}"))
            flags = _flags_from_spec(spec, i)
            default_inputs = [] if i == 0 else [(layers[-1].name, "full")]
            raw_inputs = spec.get("inputs", default_inputs)
            inputs = []
            for entry in raw_inputs:
                if isinstance(entry, str):
                    inputs.append((entry, "full"))
                elif isinstance(entry, Sequence) and len(entry) == 2:
                    inputs.append((str(entry[0]), str(entry[1])))
                else:
                    raise TypeError(f"specs[{i}].inputs: expected names or (name, kind) pairs, got {describe(entry)}")
            layers.append(PathLayer(name, flags, tuple(inputs)))
        return cls(layers)

    @property
    def n_channels(self) -> int:
        return sum(layer.width for layer in self.layers)

    @property
    def n_nonlinear_channels(self) -> int:
        return sum(sum(layer.nonlinear) for layer in self.layers)

    def to_frame(self) -> pd.DataFrame:
        """One row per layer: ``layer, width, nonlinear_channels, nonlinear_fraction, inputs``."""
        return pd.DataFrame([{"layer": layer.name, "width": layer.width,
                              "nonlinear_channels": int(sum(layer.nonlinear)),
                              "nonlinear_fraction": sum(layer.nonlinear) / layer.width,
                              "inputs": ", ".join(f"{s} ({k})" for s, k in layer.inputs)} for layer in self.layers])

    def __repr__(self) -> str:
        return (f"PathGraph({len(self.layers)} layers, {self.n_channels} channels, "
                f"{self.n_nonlinear_channels} non-linear)")


def _flags_from_spec(spec: Mapping[str, Any], i: int) -> tuple[bool, ...]:
    width = spec.get("width")
    if width is not None:
        width = check_int(width, f"specs[{i}].width", minimum=1)
    if "nonlinear" in spec and "linear" in spec:
        raise ValueError(f"specs[{i}]: expected either 'nonlinear' or 'linear' flags, got both")
    if "linear" in spec:
        raw, invert = spec["linear"], True
    else:
        raw, invert = spec.get("nonlinear", False), False
    if isinstance(raw, torch.Tensor):  # e.g. a module's nonlinear_channels(), possibly on a GPU
        raw = raw.detach().cpu()
    if isinstance(raw, (bool, np.bool_)):
        if width is None:
            raise ValueError(f"specs[{i}]: expected 'width' when the flags are one bool, got none")
        flags = [bool(raw)] * width
    else:
        flags = [bool(f) for f in np.asarray(raw, dtype=bool).reshape(-1)]
        if width is not None and len(flags) != width:
            raise ValueError(f"specs[{i}]: expected {width} flags (width), got {len(flags)}")
    return tuple((not f) if invert else f for f in flags)


# --------------------------------------------------------------------------------- from models
def _gated_graph(model: nn.Module) -> list[PathLayer]:
    value = model.value
    first = value.layers[0]
    n_in = first.in_features if isinstance(first, nn.Linear) else first.in_channels
    layers = [PathLayer("input", (False,) * n_in)]
    for i, layer in enumerate(value.layers):
        w = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        layers.append(PathLayer(f"value.layers.{i}", (True,) * w, ((layers[-1].name, "full"),)))
    layers.append(PathLayer("value.head", (False,) * value.head.out_features, ((layers[-1].name, "full"),)))
    return layers


_GATED = {"DGN": _gated_graph, "DLGN": _gated_graph}


def path_graph(model: nn.Module | PathGraph) -> PathGraph:
    """The channel graph of a supported model (see the module docstring).

    Parameters
    ----------
    model : nn.Module or PathGraph
        An ``MLP``, ``CNN``, ``ResNet``, ``DGN`` or ``DLGN`` of :mod:`sepmeasure.models`
        (recognised by ``config["model"]``, possibly masked or linearizable), an
        ``nn.Sequential`` of supported layers, or a :class:`PathGraph` (returned as is).

    Returns
    -------
    PathGraph
        Layers in topological order, from the input layer (``"input"``) to the output layer
        (``"head"``; ``"value.head"`` for gated networks; for an ``nn.Sequential``, its last
        linear, convolutional or activation layer).

    Raises
    ------
    TypeError
        An unsupported model; a model whose ``config["model"]`` names a supported family but
        that lacks the documented module structure; an activation that is neither a known
        element-wise activation nor a module with ``nonlinear_channels()``; a ``ResNet`` norm
        that is not a batch norm; an ``nn.Sequential`` without a linear or convolutional
        layer, or with another layer before the first one.
    ValueError
        An activation whose ``nonlinear_channels()`` gives another number of flags than the
        layer's width; an ``nn.Sequential`` with a child named ``"input"`` (the name of the
        graph's input layer).

    Examples
    --------
    >>> from sepmeasure.models import ResNet
    >>> g = path_graph(ResNet(1, width=4, n_blocks=2, out_features=3))
    >>> [layer.name for layer in g.layers][:6]
    ['input', 'stem', 'blocks.0.act1', 'blocks.0.act2', 'blocks.0.conv2', 'blocks.0']
    """
    if isinstance(model, PathGraph):
        return model
    config = getattr(model, "config", None)
    kind = config.get("model") if isinstance(config, dict) else None
    if isinstance(model, nn.Module) and kind in _GATED:
        try:
            return PathGraph(_GATED[kind](model))
        except AttributeError as exc:
            raise TypeError(f"model: a {kind} without the documented module structure ({exc})") from exc
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: unsupported model {describe(model)}; expected an nn.Module (any model torch.fx "
                        f"can trace) or a PathGraph")
    try:
        graph = trace_model(model)
    except GraphTraceError as exc:
        raise TypeError(f"model: unsupported model {type(model).__name__}: {exc}") from exc
    return PathGraph([PathLayer(name, flags, inputs) for name, flags, inputs in channel_layers(graph)])


# --------------------------------------------------------------------------------- results
@dataclass(frozen=True, eq=False)
class PathLengthDistribution:
    """Distribution of the number of non-linear channels on an input-to-output path.

    Attributes
    ----------
    probabilities : numpy.ndarray
        ``probabilities[k]``: share of paths (unnormalized) or probability under the backward
        random walk (normalized) of length ``k``; ``k = 0 .. max length``.
    normalized : bool
    log10_paths : float
        log10 of the number of input-to-output paths of the graph.
    n_layers, n_channels, n_nonlinear_channels : int
        Size of the graph.
    method : str
        ``"dynamic_programming"`` or ``"enumeration"`` (the reference).
    """

    probabilities: np.ndarray
    normalized: bool
    log10_paths: float
    n_layers: int
    n_channels: int
    n_nonlinear_channels: int
    method: str = "dynamic_programming"
    lengths: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lengths", np.arange(len(self.probabilities)))

    @property
    def mean(self) -> float:
        return float(np.dot(self.lengths, self.probabilities))

    @property
    def std(self) -> float:
        return float(math.sqrt(max(np.dot(self.lengths ** 2, self.probabilities) - self.mean ** 2, 0.0)))

    def to_frame(self) -> pd.DataFrame:
        """One row per length: ``length, probability, normalized``."""
        return pd.DataFrame({"length": self.lengths, "probability": self.probabilities,
                             "normalized": self.normalized})


@dataclass(frozen=True)
class AveragePathLength:
    """Average number of non-linear channels on an input-to-output path (see the module docstring)."""

    value: float
    normalized: bool
    std: float
    max_length: int
    log10_paths: float
    n_layers: int
    n_channels: int
    n_nonlinear_channels: int
    method: str = "dynamic_programming"

    def __float__(self) -> float:
        return float(self.value)


# --------------------------------------------------------------------------------- computation
def _dp_distribution(graph: PathGraph, normalized: bool) -> tuple[np.ndarray, float]:
    """Distribution over lengths summed (unnormalized) or averaged (normalized) over output channels.

    Per layer and channel, ``dist[c, k]`` is the (scaled) number of paths from the input to
    channel ``c`` with ``k`` non-linear channels (unnormalized), or the probability that the
    backward walk from ``c`` has ``k`` non-linear channels (normalized). Counts are kept as
    ``dist * exp(log_scale)`` to avoid overflow in deep and wide graphs. Returns the output's
    distribution and its log scale.
    """
    layers = graph.layers
    size = len(layers) + 1
    last_use = {}
    for i, layer in enumerate(layers):
        for src, _ in layer.inputs:
            last_use[src] = i
    state: dict[str, tuple[np.ndarray, float]] = {}
    for i, layer in enumerate(layers):
        flags = np.asarray(layer.nonlinear, dtype=bool)
        if not layer.inputs:
            dist = np.zeros((layer.width, size))
            dist[:, 0] = 1.0
            scale = 0.0
        else:
            m = len(layer.inputs)
            parts = []
            for src, kind in layer.inputs:
                d, s = state[src]
                if kind == "full":
                    inc = d.mean(axis=0, keepdims=True) if normalized else d.sum(axis=0, keepdims=True)
                else:
                    inc = d
                parts.append((inc / m if normalized else inc, s))
            scale = max(s for _, s in parts)
            dist = np.zeros((layer.width, size))
            for inc, s in parts:
                dist += inc * math.exp(s - scale)
        if flags.any():
            shifted = np.zeros_like(dist[flags])
            shifted[:, 1:] = dist[flags, :-1]
            dist[flags] = shifted
        if not normalized:
            top = float(dist.max())
            if top > 0:
                dist /= top
                scale += math.log(top)
        state[layer.name] = (dist, scale)
        for src, _ in layer.inputs:
            if last_use.get(src) == i and src != layers[-1].name:
                state.pop(src, None)
    out, scale = state[layers[-1].name]
    return (out.mean(axis=0) if normalized else out.sum(axis=0)), scale


_MAX_ENUMERATED_PATHS = 200_000


def _enumerate_distribution(graph: PathGraph, normalized: bool) -> tuple[np.ndarray, float]:
    """Reference: every path, walked backward from every output channel (slow; tiny graphs only)."""
    by_name = {layer.name: layer for layer in graph.layers}
    size = len(graph.layers) + 1
    acc = np.zeros(size)
    count = 0

    def walk(layer: PathLayer, c: int, length: int, prob: float) -> None:
        nonlocal count
        length += int(layer.nonlinear[c])
        if not layer.inputs:
            count += 1
            if count > _MAX_ENUMERATED_PATHS:
                raise ValueError(f"method: 'enumeration' is a reference for tiny graphs; this one has more than "
                                 f"{_MAX_ENUMERATED_PATHS} paths, use method='dp'")
            acc[length] += prob if normalized else 1.0
            return
        m = len(layer.inputs)
        for src, kind in layer.inputs:
            source = by_name[src]
            if kind == "identity":
                walk(source, c, length, prob / m)
            else:
                for u in range(source.width):
                    walk(source, u, length, prob / (m * source.width))

    out = graph.layers[-1]
    for c in range(out.width):
        walk(out, c, 0, 1.0 / out.width)
    return acc, 0.0


_METHODS = {"dp": _dp_distribution, "enumeration": _enumerate_distribution}


def _log10_paths(graph: PathGraph) -> float:
    dist, scale = _dp_distribution(graph, normalized=False)
    total = float(dist.sum())
    return (math.log(total) + scale) / math.log(10) if total > 0 else -math.inf


def path_length_distribution(model: nn.Module | PathGraph, normalized: bool = False, *,
                             method: str = "dp") -> PathLengthDistribution:
    """Distribution of the number of non-linear channels on the input-to-output paths.

    Mehmeti-Göpel & Disselhoff 2023 (arXiv 2211.17180), average path length; for a ResNet
    whose blocks each hold the same number of non-linear channels on the branch, the
    normalized distribution is binomial (Veit et al. 2016). Unnormalized: the share of all
    paths with length ``k``; normalized: the probability of length ``k`` under the backward
    random walk (uniform output channel, uniform branch at each residual sum, uniform channel
    within a branch). See the module docstring for the graph.

    Parameters
    ----------
    model : nn.Module or PathGraph
        A supported model (see :func:`path_graph`) or a graph.
    normalized : bool, default False
        Distribution under the backward random walk instead of over all paths.
    method : {"dp", "enumeration"}, default "dp"
        Dynamic programming over layers (default), or the reference that enumerates every
        path (tiny graphs only).

    Returns
    -------
    PathLengthDistribution
        ``probabilities`` of shape ``(max length + 1,)``, summing to 1.

    Raises
    ------
    ValueError
        ``method`` is not ``"dp"`` or ``"enumeration"``; ``method="enumeration"`` on a graph
        with more than 200,000 paths; a model that :func:`path_graph` refuses with a
        ``ValueError``.
    TypeError
        ``normalized`` is not a bool (NumPy bools are accepted); a model that
        :func:`path_graph` refuses with a ``TypeError``.

    Examples
    --------
    >>> g = PathGraph.from_layers([{"name": "x0", "width": 1}]
    ...     + sum([[{"name": f"b{i}", "nonlinear": [True], "inputs": [f"x{i}"]},
    ...             {"name": f"x{i + 1}", "width": 1, "inputs": [(f"x{i}", "identity"), (f"b{i}", "identity")]}]
    ...            for i in range(3)], [])
    ...     + [{"name": "out", "width": 1}])
    >>> path_length_distribution(g, normalized=True).probabilities.tolist()  # Binomial(3, 1/2)
    [0.125, 0.375, 0.375, 0.125]
    """
    check_choice(method, "method", tuple(_METHODS))
    if not isinstance(normalized, (bool, np.bool_)):
        raise TypeError(f"normalized: expected a bool, got {describe(normalized)}")
    graph = path_graph(model)
    dist, scale = _METHODS[method](graph, bool(normalized))
    total = float(dist.sum())
    log10_paths = _log10_paths(graph) if normalized or method != "dp" else (
        (math.log(total) + scale) / math.log(10))
    probs = dist / total
    nonzero = np.nonzero(probs > 0)[0]
    probs = probs[: (int(nonzero[-1]) + 1 if nonzero.size else 1)]
    return PathLengthDistribution(probs, bool(normalized), float(log10_paths), len(graph.layers), graph.n_channels,
                                  graph.n_nonlinear_channels,
                                  "dynamic_programming" if method == "dp" else "enumeration")


def average_path_length(model: nn.Module | PathGraph, normalized: bool = False, *,
                        method: str = "dp") -> AveragePathLength:
    """Average number of non-linear channels on an input-to-output path.

    Mehmeti-Göpel & Disselhoff 2023 (arXiv 2211.17180): with ``P`` the set of
    input-to-output paths of the channel graph and ``len(p)`` the number of non-linear
    channels on ``p``,

    * unnormalized: ``APL = (1 / |P|) * sum_{p in P} len(p)``;
    * normalized: ``APL = E[len(p)]`` for the path ``p`` drawn by the backward random walk
      (uniform output channel; uniform branch, i.e. 1/2 each at a residual sum; uniform
      channel within a branch).

    For a plain chain whose layer ``l`` has a share ``f_l`` of non-linear channels both are
    ``sum_l f_l``. Computed from :func:`path_length_distribution` (dynamic programming).

    Parameters
    ----------
    model : nn.Module or PathGraph
        A supported model (see :func:`path_graph`) or a graph.
    normalized : bool, default False
        Expected length under the backward random walk instead of the mean over all paths.
    method : {"dp", "enumeration"}, default "dp"
        Dynamic programming over layers, or the reference that enumerates every path (tiny
        graphs only).

    Returns
    -------
    AveragePathLength
        ``value`` plus the spread, the longest length and the graph's size; ``float()`` gives
        the value.

    Raises
    ------
    ValueError
        ``method`` is not ``"dp"`` or ``"enumeration"``; ``method="enumeration"`` on a graph
        with more than 200,000 paths; a model that :func:`path_graph` refuses with a
        ``ValueError``.
    TypeError
        ``normalized`` is not a bool (NumPy bools are accepted); a model that
        :func:`path_graph` refuses with a ``TypeError``.

    Examples
    --------
    >>> from sepmeasure.models import MLP
    >>> float(average_path_length(MLP(4, [8, 8, 8], 2)))  # three ReLU layers
    3.0
    """
    dist = path_length_distribution(model, normalized, method=method)
    return AveragePathLength(dist.mean, dist.normalized, dist.std, int(len(dist.probabilities) - 1),
                             dist.log10_paths, dist.n_layers, dist.n_channels, dist.n_nonlinear_channels,
                             dist.method)
