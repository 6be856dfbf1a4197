"""Neural path kernel and gate overlaps of ReLU networks and gated networks.

Lakshminarayanan & Singh 2021, *Disentangling deep neural networks with rectified linear units
using duality* (arXiv 2110.03403): the non-linearities of a ReLU network act as gates
``G_l(x) = 1[pre-activation > 0]``; for fixed gates the network is linear in the path space, and
learning the weights given the gates is characterised by the neural path kernel (NPK)

.. math::

    \\mathrm{NPK}(x, x') = \\sum_p \\phi_x(p)\\, \\phi_{x'}(p), \\qquad
    \\phi_x(p) = x_{p(0)} \\prod_l G_l(x)_{p(l)},

with ``p`` running over the paths from an input coordinate through one unit of each gated layer
to an output unit. For a bias-free fully connected network with one output this is
``⟨x, x'⟩ · Π_l ⟨G_l(x), G_l(x')⟩``.

Two kinds of models are understood (the *gate protocol*):

* a gated model implementing ``gates(x) -> list[Tensor]`` (one tensor per gated layer, shaped like
  that layer's value-network pre-activation, values in [0, 1]), ``value_forward(x, gates)`` and
  ``value_parameter_names()`` (DGN, DLGN with deep or shallow gating, DLGN with a constant value
  input);
* a plain network whose non-linearities are all ReLUs (``nn.ReLU`` modules or ``F.relu`` /
  ``torch.relu`` calls) and whose other operations are affine in eval mode (batch norm, average
  pooling, residual sums): the gates are ``1[input of the ReLU > 0]`` for every ReLU call of its
  traced graph, and its value network is the traced network with each ReLU's output replaced by
  (its input ⊙ an external gate) and each batch norm left out (its scale and shift are a weight
  and a bias: set to one and zero like the others); see :mod:`sepmeasure.kernels.traced_gates`.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.func import functional_call

from .blocks import BlockGrid, KernelOverflowError, TensorSink, fill_blocks, local_producer
from .traced_gates import TracedReLUNetwork
from ..validation import check_features, check_int, describe

__all__ = ["GateOverlap", "gate_overlap", "network_gates", "neural_path_kernel"]

# Working memory one block of (x1 row, x2 row) pairs may use.
_BLOCK_MEMORY_BYTES = 256 << 20
_GATE_CHUNK_ROWS = 1024
_MAX_LISTED = 5


def _is_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == "bias"


def _ones_and_zeros(named: Sequence[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Every weight set to one, every bias (a parameter named ``*.bias``) set to zero."""
    return {n: (torch.zeros_like(p) if _is_bias(n) else torch.ones_like(p)).detach() for n, p in named}


# ----------------------------------------------------------------------------
# Gate sources: plain ReLU networks (hooks) and gated models (the protocol)
# ----------------------------------------------------------------------------

# Plain ReLU networks: gates and value network from the traced graph (traced_gates.py).
_ReLUNetwork = TracedReLUNetwork


class _ValueForward(nn.Module):
    """``forward(x, gates) = model.value_forward(x, gates)``, so that ``functional_call`` can swap
    the value network's parameters without touching the model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, gates: list[torch.Tensor]) -> torch.Tensor:
        return self.model.value_forward(x, gates)


class _GatedNetwork:
    """A model implementing the gate protocol."""

    needs_linearity_check = False

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        names = model.value_parameter_names()
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise TypeError(f"model.value_parameter_names: expected a list of parameter names, got {describe(names)}")
        params = dict(model.named_parameters())
        missing = [n for n in names if n not in params]
        if missing:
            raise ValueError(f"model.value_parameter_names: expected names of the model's parameters, got "
                             f"{missing[:_MAX_LISTED]} which are not among them")
        self.value_names = list(names)
        self.wrapper = _ValueForward(model)
        self.names: list[str] = []

    def gates(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            gates = self.model.gates(x)
        if isinstance(gates, torch.Tensor) or not isinstance(gates, (list, tuple)):
            raise TypeError(f"model.gates: expected a list of tensors (one per gated layer), got {describe(gates)}")
        for i, g in enumerate(gates):
            if not isinstance(g, torch.Tensor) or g.ndim < 2 or g.shape[0] != x.shape[0]:
                raise ValueError(f"model.gates: expected gates[{i}] of shape ({x.shape[0]}, ...) for "
                                 f"{x.shape[0]} inputs, got {describe(g)}")
            if bool((g < 0).any()) or bool((g > 1).any()):
                raise ValueError(f"model.gates: expected gates[{i}] with values in [0, 1], got values in "
                                 f"[{float(g.min())}, {float(g.max())}]")
        self.names = [f"gates[{i}]" for i in range(len(gates))]
        return [g.detach() for g in gates]

    def value_ones(self, u: torch.Tensor, gates: Sequence[torch.Tensor]) -> torch.Tensor:
        named = [(n, p) for n, p in self.model.named_parameters() if n in set(self.value_names)]
        params = {f"model.{n}": t for n, t in _ones_and_zeros(named).items()}
        with torch.no_grad():
            return functional_call(self.wrapper, params, (u, list(gates)))

    def check_protocol(self, x: torch.Tensor) -> None:
        """``forward(x) == value_forward(x, gates(x))`` on a few inputs."""
        with torch.no_grad():
            direct = self.model(x)
            rebuilt = self.model.value_forward(x, self.model.gates(x))
        tol = 1e-4 if x.element_size() <= 4 else 1e-9
        if not torch.allclose(direct, rebuilt, rtol=tol, atol=tol * float(direct.abs().max().clamp_min(1))):
            raise ValueError("model: expected forward(x) == value_forward(x, gates(x)) (the gate protocol), got "
                             f"a largest difference of {float((direct - rebuilt).abs().max()):.3g}")


def _gate_source(model: nn.Module) -> _ReLUNetwork | _GatedNetwork:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {describe(model)}")
    protocol = [callable(getattr(model, a, None)) for a in ("gates", "value_forward", "value_parameter_names")]
    if any(protocol) and not all(protocol):
        raise TypeError("model: expected all of gates(x), value_forward(x, gates) and value_parameter_names() "
                        "(the gate protocol) or none of them, got only "
                        + ", ".join(a for a, ok in zip(("gates", "value_forward", "value_parameter_names"),
                                                       protocol) if ok))
    return _GatedNetwork(model) if all(protocol) else _ReLUNetwork(model)


def _check_inputs(model: nn.Module, x1: Any, x2: Any, name1: str = "x1",
                  name2: str = "x2") -> tuple[torch.Tensor, torch.Tensor | None]:
    ref = next(iter(model.parameters()), None)
    x1 = check_features(x1, name1, ndim=None)
    if x2 is not None:
        x2 = check_features(x2, name2, ndim=None)
        if x2.shape[1:] != x1.shape[1:]:
            raise ValueError(f"{name2}: expected samples of shape {tuple(x1.shape[1:])} like {name1}, "
                             f"got {describe(x2)}")
    if ref is not None:
        for name, x in ((name1, x1), (name2, x2)):
            if x is not None and (x.device != ref.device or x.dtype != ref.dtype):
                raise TypeError(f"{name}: expected a {ref.dtype} tensor on {ref.device} like the model's "
                                f"parameters, got {describe(x)}")
    return x1, x2


def _all_gates(source: _ReLUNetwork | _GatedNetwork, x: torch.Tensor, name: str) -> list[torch.Tensor]:
    """Gates of every row of ``x``, in chunks; the model's own error is re-raised naming ``name``."""
    parts: list[list[torch.Tensor]] = []
    for start in range(0, x.shape[0], _GATE_CHUNK_ROWS):
        chunk = x[start:start + _GATE_CHUNK_ROWS]
        try:
            parts.append(source.gates(chunk))
        except (TypeError, ValueError) as exc:
            if str(exc).startswith("model"):
                raise
            raise ValueError(f"{name}: expected inputs the model accepts, got {describe(x)}; the model raised "
                             f"{type(exc).__name__}: {exc}") from exc
        except RuntimeError as exc:
            raise ValueError(f"{name}: expected inputs the model accepts, got {describe(x)}; the model raised "
                             f"{type(exc).__name__}: {exc}") from exc
    return [torch.cat(layer) for layer in zip(*parts)] if parts and parts[0] else []


def network_gates(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The gates ``G_l(x)`` of every gated layer, by layer name.

    For a plain network: ``1[input > 0]`` of every ReLU call of its traced graph, named by the
    module (``"layers.0.act"``; a second call of the same module is ``"name#1"``) or, for a
    functional ``F.relu`` / ``torch.relu`` call, by its graph node (``"relu_3"``). For a gated
    model (the gate protocol): ``model.gates(x)``, named ``"gates[0]"``, ``"gates[1]"``, ...

    Parameters
    ----------
    model : nn.Module
        A ReLU network whose other operations are affine in eval mode (batch norm, average
        pooling, residual sums), or a gated model (see :func:`neural_path_kernel`).
    x : Tensor of shape ``(N, *features)``
        Inputs, in the dtype and on the device of the model's parameters.

    Returns
    -------
    dict of str to Tensor
        Each of shape ``(N, *layer shape)`` with values in [0, 1].

    Raises
    ------
    TypeError
        ``model`` is not an ``nn.Module``, or implements only part of the gate protocol
        (``gates``, ``value_forward``, ``value_parameter_names``); ``value_parameter_names()`` does
        not return a list of strings; ``model.gates(x)`` does not return a list of tensors;
        ``x`` is not a tensor, array or nested list of real numbers, or its dtype or device differs
        from the model's parameters.
    ValueError
        A non-linearity that is not a gate (tanh, GELU, leaky ReLU, max pooling, normalisation,
        dropout in training mode, ...); ``value_parameter_names()`` names parameters the model does
        not have; ``model.gates(x)`` returns a gate that is not ``(N, ...)`` or has values outside
        [0, 1]; ``x`` is 0-D, empty or has NaN/inf entries, or the model raises on it (its error is
        named in the message).

    Examples
    --------
    >>> from sepmeasure.models import MLP
    >>> g = network_gates(MLP(4, [8, 6], 2), torch.randn(3, 4))
    >>> {k: tuple(v.shape) for k, v in g.items()}
    {'layers.0.act': (3, 8), 'layers.1.act': (3, 6)}
    """
    source = _gate_source(model)
    x, _ = _check_inputs(model, x, None, "x")
    gates = _all_gates(source, x, "x")
    return dict(zip(source.names, gates))


def _pair_block_rows(source_row_bytes: int, budget: int = _BLOCK_MEMORY_BYTES) -> int:
    """Rows per side so that one block of pairs stays within ``budget``."""
    pairs = max(1, budget // max(source_row_bytes, 1))
    return max(1, int(pairs ** 0.5))


def _npk_block(source: _ReLUNetwork | _GatedNetwork, xa: torch.Tensor, ga: Sequence[torch.Tensor],
               xb: torch.Tensor, gb: Sequence[torch.Tensor]) -> torch.Tensor:
    na, nb = xa.shape[0], xb.shape[0]
    u = (xa[:, None] * xb[None, :]).reshape(na * nb, *xa.shape[1:])
    gates = [(a[:, None] * b[None, :]).reshape(na * nb, *a.shape[1:]) for a, b in zip(ga, gb)]
    out = source.value_ones(u, gates)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != na * nb:
        raise ValueError(f"model: expected outputs of shape (N, K), got {describe(out)}")
    return out.sum(dim=1).view(na, nb)


def _check_linear(source: _ReLUNetwork, x: torch.Tensor, gates: Sequence[torch.Tensor]) -> None:
    """With its gates fixed and biases zero, the value network must be linear in its input."""
    n = min(x.shape[0], 4)
    u, g = x[:n], [t[:n] for t in gates]
    gen = torch.Generator(device=x.device).manual_seed(0)
    w = torch.randn(u.shape, generator=gen, device=x.device, dtype=x.dtype) * u.abs().mean().clamp_min(1e-3)
    left = source.value_ones(u + w, g)
    right = source.value_ones(u, g) + source.value_ones(w, g)
    tol = 1e-4 if x.element_size() <= 4 else 1e-9
    scale = float(right.abs().max().clamp_min(1e-12))
    if float((left - right).abs().max()) > tol * scale:
        raise ValueError("model: expected a network that is linear in its input once its gates are fixed and its "
                         "biases are zero, got one that is not: it has a non-linearity that is not an nn.ReLU "
                         "module (e.g. torch.relu or torch.tanh called inside forward, or a constant offset); "
                         "the neural path kernel needs every non-linearity to be a gate")


def neural_path_kernel(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, *,
                       block_size: int | None = None) -> torch.Tensor:
    r"""Neural path kernel ``NPK(x, x')`` of a ReLU network or a gated network.

    Lakshminarayanan & Singh 2021 (arXiv 2110.03403):

    .. math::

        \mathrm{NPK}(x, x') = \sum_p w_p\, x_{p(0)} x'_{p(0)} \prod_l G_l(x)_{p(l)} G_l(x')_{p(l)},

    over the paths ``p`` from an input coordinate through one unit of each layer of the unrolled
    value network (convolutions, pooling, skip connections) to an output unit, summed over the
    ``K`` output units. It is computed generally, with no formula per architecture: the value
    network with **every weight set to one and every bias set to zero** is applied to the input
    ``x ⊙ x'`` with gates ``G(x) ⊙ G(x')``, and its outputs are summed. For a fully connected
    network this is ``K · ⟨x, x'⟩ · Π_l ⟨G_l(x), G_l(x')⟩`` (biases only shape the gates).

    Conventions: ``w_p`` is the product of the fixed weights of parameter-free linear maps on
    the path, counted once (``1/L`` for a global average pooling over ``L`` positions, ``1`` for
    an identity skip connection). Biases: the gates ``G_l(x)`` are those of the network as it
    is, biases included; the paths carry no bias (a bias would start a path at an inner unit,
    which the NPK does not count). For a gated model the gating network is used as it is and
    only the parameters in ``value_parameter_names()`` are set to one (zero for names ending in
    ``bias``); with ``value_input="ones"`` (the constant-value-input DLGN, not the
    shallow-features DLGN-SF) the value network ignores its input, so the
    kernel uses ``1 ⊙ 1``.

    Parameters
    ----------
    model : nn.Module
        A network whose non-linearities are all ReLUs, modules or functional calls (gates
        ``1[input > 0]`` of every call), whose other operations are affine in eval mode (Linear,
        convolutions, batch norm in eval mode, average pooling, residual sums), or a gated model implementing ``gates(x)``, ``value_forward(x, gates)`` and
        ``value_parameter_names()`` (soft gates in [0, 1] allowed). Left unmodified.
    x1 : Tensor of shape ``(N1, *features)``
        Inputs, in the dtype and on the device of the model's parameters.
    x2 : Tensor of shape ``(N2, *features)``, optional
        Default ``x1`` (the kernel is then symmetric).
    block_size : int, optional
        Rows of ``x1`` and ``x2`` per block of pairs (each pair runs once through the value
        network). Default: blocks of at most about 256 MiB.

    Returns
    -------
    Tensor of shape ``(N1, N2)``
        In the dtype and on the device of ``x1``.

    Raises
    ------
    TypeError
        ``model`` is not an ``nn.Module``, or implements only part of the gate protocol
        (``gates``, ``value_forward``, ``value_parameter_names``); ``value_parameter_names()`` does
        not return a list of strings; ``model.gates(x)`` does not return a list of tensors;
        ``x1`` or ``x2`` is not a tensor, array or nested list of real numbers, or its dtype or
        device differs from the model's parameters; ``block_size`` is not an int (bools are
        refused).
    ValueError
        A non-linearity that is not a gate (named, with its module); a network that is not linear
        in its input once its gates are fixed (a hidden non-linearity) or makes different ReLU
        calls for different inputs; a gated model whose ``forward(x)`` differs from
        ``value_forward(x, gates(x))``, whose ``value_parameter_names()`` names parameters it does
        not have, or whose gates are not ``(N, ...)`` with values in [0, 1]; a value network whose
        outputs are not ``(N, K)``; ``x1`` or ``x2`` is 0-D, empty or has NaN/inf entries, or the
        model raises on it (its error is named in the message); ``x2`` samples of another shape
        than ``x1``'s; ``block_size`` < 1.

    Examples
    --------
    >>> from sepmeasure.models import MLP
    >>> model = MLP(4, [8, 6], 1, bias=False)
    >>> x = torch.randn(3, 4)
    >>> k = neural_path_kernel(model, x)
    >>> g = list(network_gates(model, x).values())
    >>> closed = (x @ x.T) * (g[0] @ g[0].T) * (g[1] @ g[1].T)
    >>> bool(torch.allclose(k, closed, rtol=1e-5))
    True
    """
    source = _gate_source(model)
    x1, x2 = _check_inputs(model, x1, x2)
    if block_size is not None:
        block_size = check_int(block_size, "block_size", minimum=1)
    symmetric = x2 is None
    g1 = _all_gates(source, x1, "x1")
    g2 = g1 if symmetric else _all_gates(source, x2, "x2")
    if isinstance(source, _GatedNetwork):
        source.check_protocol(x1[:4])
    xs = x1 if symmetric else x2
    if source.needs_linearity_check:
        try:
            _check_linear(source, x1 * x1, [g * g for g in g1])
        except RuntimeError as exc:
            raise ValueError(f"model: expected the same ReLU calls for every input, got: {exc}") from exc
    row_bytes = x1.element_size() * 4 * (x1[0].numel() + sum(g[0].numel() for g in g1))
    size = block_size or _pair_block_rows(row_bytes)
    n1, n2 = x1.shape[0], xs.shape[0]
    grid = BlockGrid(n1, n2, size, symmetric)
    sink = TensorSink(grid, torch.empty(n1, n2, dtype=x1.dtype, device=x1.device))

    def block(i: int, j: int) -> torch.Tensor:
        a, b = grid.rows(i, n1), grid.rows(j, n2)
        return _npk_block(source, x1[a], [g[a] for g in g1], xs[b], [g[b] for g in g2])

    fill_blocks(grid, sink, local_producer(block), desc="npk")
    out = sink.result
    if not bool(torch.isfinite(out).all()):
        # finite inputs and gates in [0, 1]: only the value-input products can overflow
        top = max(float(x1.abs().max()), float(xs.abs().max()))
        raise KernelOverflowError(f"x1, x2: the neural path kernel overflows {out.dtype} (max "
                                  f"{torch.finfo(out.dtype).max:.3g}) for inputs of magnitude up to {top:.3g}; rescale "
                                  f"the inputs (the kernel is quadratic in them) or use float64")
    return out


# ----------------------------------------------------------------------------
# Gate overlaps
# ----------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class GateOverlap(Mapping[str, torch.Tensor]):
    """Per-layer active sub-network overlaps ``Ω_l(x, x') = Σ_i G_l,i(x) G_l,i(x')``.

    A read-only mapping ``{layer name: Tensor (N1, N2)}``; ``units[layer]`` is the number of
    gates in that layer (so ``Ω_l / units`` is the fraction of gates both inputs switch on).
    """

    overlaps: dict[str, torch.Tensor]
    units: dict[str, int]
    symmetric: bool

    def __getitem__(self, layer: str) -> torch.Tensor:
        return self.overlaps[layer]

    def __iter__(self) -> Iterator[str]:
        return iter(self.overlaps)

    def __len__(self) -> int:
        return len(self.overlaps)

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: one row per (layer, i, j) with ``overlap``, ``units`` and ``fraction``."""
        frames = []
        for layer, omega in self.overlaps.items():
            n1, n2 = omega.shape
            ii, jj = torch.meshgrid(torch.arange(n1), torch.arange(n2), indexing="ij")
            values = omega.detach().cpu().double().reshape(-1).numpy()
            frames.append(pd.DataFrame({
                "measure": "gate_overlap", "layer": layer, "i": ii.reshape(-1).numpy(),
                "j": jj.reshape(-1).numpy(), "overlap": values, "units": self.units[layer],
                "fraction": values / max(self.units[layer], 1)}))
        columns = ["measure", "layer", "i", "j", "overlap", "units", "fraction"]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def gate_overlap(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None) -> GateOverlap:
    r"""Active sub-network overlap of every gated layer.

    .. math::

        \Omega_l(x, x') = \sum_i G_{l,i}(x)\, G_{l,i}(x')

    (Lakshminarayanan & Singh 2021: the number of gates of layer ``l`` that both inputs switch
    on; for a bias-free fully connected network
    ``NPK(x, x') = K ⟨x, x'⟩ Π_l Ω_l(x, x')``).

    Parameters
    ----------
    model : nn.Module
        A ReLU network or a gated model (see :func:`neural_path_kernel`).
    x1 : Tensor of shape ``(N1, *features)``
        Inputs, in the dtype and on the device of the model's parameters.
    x2 : Tensor of shape ``(N2, *features)``, optional
        Default ``x1``.

    Returns
    -------
    GateOverlap
        A mapping ``{layer name: Tensor (N1, N2)}`` (names as in :func:`network_gates`), with
        ``units`` per layer and ``.to_frame()`` for a tidy table.

    Raises
    ------
    TypeError
        ``model`` is not an ``nn.Module``, or implements only part of the gate protocol
        (``gates``, ``value_forward``, ``value_parameter_names``); ``value_parameter_names()`` does
        not return a list of strings; ``model.gates(x)`` does not return a list of tensors;
        ``x1`` or ``x2`` is not a tensor, array or nested list of real numbers, or its dtype or
        device differs from the model's parameters.
    ValueError
        A non-linearity that is not a gate (as in :func:`network_gates`); ``value_parameter_names()``
        names parameters the model does not have; ``model.gates(x)`` returns a gate that is not
        ``(N, ...)`` or has values outside [0, 1]; ``x1`` or ``x2`` is 0-D, empty or has NaN/inf
        entries, or the model raises on it (its error is named in the message); ``x2`` samples of
        another shape than ``x1``'s.

    Examples
    --------
    >>> from sepmeasure.models import MLP
    >>> x = torch.randn(3, 4)
    >>> omega = gate_overlap(MLP(4, [8, 6], 2), x)
    >>> list(omega), tuple(omega["layers.0.act"].shape)
    (['layers.0.act', 'layers.1.act'], (3, 3))
    >>> sorted(omega.to_frame().columns)
    ['fraction', 'i', 'j', 'layer', 'measure', 'overlap', 'units']
    """
    source = _gate_source(model)
    x1, x2 = _check_inputs(model, x1, x2)
    g1 = _all_gates(source, x1, "x1")
    names = list(source.names)
    g2 = g1 if x2 is None else _all_gates(source, x2, "x2")
    overlaps, units = {}, {}
    for name, a, b in zip(names, g1, g2):
        fa, fb = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        overlaps[name] = fa @ fb.T
        units[name] = fa.shape[1]
    return GateOverlap(overlaps, units, x2 is None)
