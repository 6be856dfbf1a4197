"""Gated networks: deep gated networks (DGN) and deep linearly gated networks (DLGN).

A gated network separates *which units are on* from *what the units compute*
(Lakshminarayanan & Singh 2021, "Disentangling deep neural networks with rectified linear
units using duality", arXiv 2110.03403; Yadav, Ramaswamy & Lakshminarayanan 2024,
"Half-Space Feature Learning in Neural Networks"):

* a **gating network** with its own weights produces pre-activations ``q_l`` and gates
  ``G_l = 1[q_l > 0]`` (hard) or ``G_l = sigmoid(beta * q_l)`` (soft);
* a **value network** of the same shape computes ``h_l = (W_l h_{l-1} + b_l) * G_l(x)``
  and ends in a linear head (after global average pooling for convolutional networks).

In a :class:`DGN` the gating network is a ReLU network, ``q_l = W^g_l relu(q_{l-1}) + b^g_l``
with ``relu(q_0) = x``; in a :class:`DLGN` it is deep *linear*, ``q_l = W^g_l q_{l-1} + b^g_l``
with ``q_0 = x`` (``gating="deep"``), or *shallow*, ``q_l = W^g_l x + b^g_l`` for every ``l``
(``gating="shallow"``: the DLGN with shallow features, DLGN-SF, of Lakshminarayanan & Singh
2021), so every gate is the indicator of a half-space of the input
(:func:`effective_halfspaces`). Independently of the gating, ``value_input="ones"`` feeds the
value network a constant input: all information about ``x`` then flows through the gates
(a variant of this package, not the papers' DLGN-SF).

Gate protocol (used by the neural path kernel): every gated model implements

* ``gates(x) -> list[Tensor]``, one tensor per gated layer, shaped like that layer's
  value pre-activation (``(N, width)`` or ``(N, C, *spatial)``), values in ``[0, 1]``;
* ``value_forward(x, gates) -> Tensor`` with ``forward(x) == value_forward(x, gates(x))``;
* ``value_parameter_names() -> list[str]``: the value network's parameters, all named
  ``"value.*"``; the gating network's parameters are named ``"gating.*"``.

Module names: ``gating.layers.{i}`` (``nn.Linear`` or a convolution), ``value.layers.{i}``,
``value.pool`` (convolutional networks only) and ``value.head``.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..training import Callback, TrainingState
from ..validation import check_choice, check_int, describe
from .layers import add_channel_axis, check_parameter_count, check_size, check_widths, linear_parameters, make_conv
from .standard import CNN, MLP, GlobalAvgPool

__all__ = ["DGN", "DLGN", "GatedNetwork", "BetaAnnealing", "EffectiveHalfSpaces", "effective_halfspaces"]

GATES = ("hard", "soft")
ARCHS = ("mlp", "cnn")
VALUE_INPUTS = ("x", "ones")
GATINGS = ("deep", "shallow")


def _check_beta(beta: float, name: str = "beta") -> float:
    """Soft gates need ``beta > 0``: ``sigmoid(beta * q)`` with ``beta <= 0`` is not a gate of ``q > 0``."""
    is_scalar_tensor = isinstance(beta, torch.Tensor) and beta.numel() == 1
    if isinstance(beta, bool) or not (isinstance(beta, numbers.Real) or is_scalar_tensor):
        raise TypeError(f"{name}: expected a real number > 0, got {describe(beta)}")
    value = float(beta)
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number > 0 (soft gates are sigmoid(beta * q)), got {value!r}")
    return value


class _Stack(nn.Module):
    """The affine layers of one side (gating or value) of a gated network.

    ``shallow=True``: every layer reads the network's input (``sizes[0]`` features), as the
    gating network of a DLGN with shallow features does.
    """

    def __init__(self, arch: str, sizes: list[int], dim: int, kernel_size: int, stride: int, bias: bool,
                 padding_mode: str, shallow: bool = False) -> None:
        super().__init__()
        fan_in = [sizes[0]] * (len(sizes) - 1) if shallow else sizes[:-1]
        if arch == "mlp":
            self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(fan_in, sizes[1:]))
        else:
            self.layers = nn.ModuleList(
                make_conv(dim, a, b, kernel_size, stride=stride, bias=bias, padding_mode=padding_mode)
                for a, b in zip(fan_in, sizes[1:]))


class _ValueNetwork(_Stack):
    def __init__(self, arch: str, sizes: list[int], out_features: int, dim: int, kernel_size: int, stride: int,
                 bias: bool, padding_mode: str) -> None:
        super().__init__(arch, sizes, dim, kernel_size, stride, bias, padding_mode)
        if arch == "cnn":
            self.pool = GlobalAvgPool()
        self.head = nn.Linear(sizes[-1], out_features, bias=bias)

    def forward(self, h: torch.Tensor, gates: Sequence[torch.Tensor]) -> torch.Tensor:
        for layer, g in zip(self.layers, gates):
            h = layer(h) * g
        if hasattr(self, "pool"):
            h = self.pool(h)
        return self.head(h)


class GatedNetwork(nn.Module):
    """Common machinery of :class:`DGN` and :class:`DLGN` (see the module docstring).

    Not meant to be built directly; ``gating_kind`` is ``"relu"`` (DGN) or ``"linear"`` (DLGN).
    """

    gating_kind: str = "relu"
    model_name: str = "GatedNetwork"

    def __init__(self, in_features: int, widths: Sequence[int], out_features: int, arch: str = "mlp", *,
                 gate: str = "soft", beta: float = 4.0, value_input: str = "x", gating: str = "deep",
                 bias: bool = True, dim: int = 1, kernel_size: int = 3, stride: int = 1, padding_mode: str = "zeros",
                 freeze_gating: bool = False, freeze_value: bool = False) -> None:
        super().__init__()
        check_choice(arch, "arch", ARCHS)
        in_features = check_size(in_features, "in_features")
        out_features = check_size(out_features, "out_features")
        widths = check_widths(widths, "widths")
        if not widths:
            raise ValueError("widths: expected at least one gated layer, got an empty sequence")
        check_choice(gate, "gate", GATES)
        beta = _check_beta(beta)
        check_choice(value_input, "value_input", VALUE_INPUTS)
        check_choice(gating, "gating", GATINGS)
        if gating == "shallow" and self.gating_kind != "linear":
            raise ValueError(f"gating: 'shallow' (every gating layer reads the input) is defined for a DLGN, got it "
                             f"for a {self.model_name}, whose gating network is a ReLU chain; use DLGN(..., "
                             f"gating='shallow')")
        check_choice(dim, "dim", (1, 2))
        kernel_size = check_size(kernel_size, "kernel_size")
        stride = check_int(stride, "stride", minimum=1)
        sizes = [in_features, *widths]
        taps = 1 if arch == "mlp" else kernel_size ** dim  # weights per (input, output) channel pair
        gating_fan_in = [in_features] * len(widths) if gating == "shallow" else sizes[:-1]
        count = (sum((a * taps + bool(bias)) * b for a, b in zip(sizes[:-1], widths))  # value layers
                 + sum((a * taps + bool(bias)) * b for a, b in zip(gating_fan_in, widths))  # gating layers
                 + linear_parameters([widths[-1], out_features], bias))  # head
        check_parameter_count(count, "in_features, widths, kernel_size, out_features")
        if gating == "shallow" and arch == "cnn" and stride != 1:
            raise ValueError(f"stride: expected 1 with gating='shallow' and arch='cnn' (each gating convolution "
                             f"reads the input, so its gates match the value layer's positions only without "
                             f"striding), got {stride}")
        check_choice(padding_mode, "padding_mode", ("zeros", "circular", "reflect", "replicate"))
        self.arch = arch
        self.dim = dim
        self.in_features = in_features
        self.value_input = value_input
        self.gating_structure = gating
        self._gate = gate
        self.config = {"model": self.model_name, "arch": arch, "in_features": in_features, "widths": list(widths),
                       "out_features": out_features, "gate": gate, "beta": beta, "value_input": value_input,
                       "gating": gating, "bias": bias, "dim": dim, "kernel_size": kernel_size, "stride": stride,
                       "padding_mode": padding_mode}
        sizes = [in_features, *widths]
        self.gating = _Stack(arch, sizes, dim, kernel_size, stride, bias, padding_mode, shallow=gating == "shallow")
        self.value = _ValueNetwork(arch, sizes, out_features, dim, kernel_size, stride, bias, padding_mode)
        self.register_buffer("beta_", torch.tensor(beta))
        self.freeze_gating(freeze_gating)
        self.freeze_value(freeze_value)

    # ----------------------------------------------------------------- settings
    @property
    def beta(self) -> float:
        """Inverse temperature of soft gates ``sigmoid(beta * q)`` (must be > 0)."""
        return float(self.beta_)

    @beta.setter
    def beta(self, value: float) -> None:
        value = _check_beta(value)
        with torch.no_grad():
            self.beta_.fill_(value)
        self.config["beta"] = value

    @property
    def gate(self) -> str:
        """``"hard"`` (``1[q > 0]``, no gradient into the gating network) or ``"soft"`` (``sigmoid(beta q)``)."""
        return self._gate

    @gate.setter
    def gate(self, value: str) -> None:
        check_choice(value, "gate", GATES)
        self._gate = value
        self.config["gate"] = value

    @property
    def n_gated_layers(self) -> int:
        return len(self.value.layers)

    def freeze_gating(self, frozen: bool = True) -> "GatedNetwork":
        """Stop (or resume) training the gating network's parameters; returns ``self``."""
        for p in self.gating.parameters():
            p.requires_grad_(not frozen)
        return self

    def freeze_value(self, frozen: bool = True) -> "GatedNetwork":
        """Stop (or resume) training the value network's parameters; returns ``self``."""
        for p in self.value.parameters():
            p.requires_grad_(not frozen)
        return self

    def value_parameter_names(self) -> list[str]:
        """Names (as in ``named_parameters()``) of the value network's parameters, all ``"value.*"``."""
        return [n for n, _ in self.named_parameters() if n.startswith("value.")]

    # ----------------------------------------------------------------- computation
    def _prepare(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {describe(x)}")
        if self.arch == "mlp":
            if x.ndim < 2 or math.prod(x.shape[1:]) != self.in_features:
                raise ValueError(f"{name}: expected a batch of inputs with {self.in_features} features each, "
                                 f"got {describe(x)}")
            return x.reshape(x.shape[0], -1)
        x = add_channel_axis(x, self.dim)
        if x.ndim != self.dim + 2 or x.shape[1] != self.in_features:
            raise ValueError(f"{name}: expected a batch of shape (N, {self.in_features}, "
                             f"{', '.join(['L'] * self.dim)}) (or without the channel axis when it is 1), "
                             f"got {describe(x)}")
        return x

    def _gating_step(self, q: torch.Tensor) -> torch.Tensor:
        return torch.relu(q) if self.gating_kind == "relu" else q

    def gating_pre_activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The gating network's pre-activations ``q_1, ..., q_L`` (one tensor per gated layer).

        ``gating="deep"``: ``q_l = W_l s(q_{l-1}) + b_l`` with ``s(q_0) = x`` (``s`` the ReLU of a
        DGN, the identity of a DLGN); ``gating="shallow"``: ``q_l = W_l x + b_l`` for every ``l``.
        """
        x = self._prepare(x)
        if self.gating_structure == "shallow":
            return [layer(x) for layer in self.gating.layers]
        h, out = x, []
        for layer in self.gating.layers:
            q = layer(h)
            out.append(q)
            h = self._gating_step(q)
        return out

    def gates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Gates ``G_l(x)``: ``1[q_l > 0]`` (hard, exactly 0/1) or ``sigmoid(beta q_l)`` (soft).

        Returns one tensor per gated layer, shaped like that layer's value pre-activation:
        ``(N, width_l)`` (``arch="mlp"``) or ``(N, C_l, *spatial_l)`` (``arch="cnn"``).
        """
        qs = self.gating_pre_activations(x)
        if self._gate == "hard":
            return [(q > 0).to(q.dtype) for q in qs]
        beta = self.beta_.to(qs[0].dtype)
        return [torch.sigmoid(beta * q) for q in qs]

    def _value_input(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x) if self.value_input == "ones" else x

    def value_forward(self, x: torch.Tensor, gates: Sequence[torch.Tensor]) -> torch.Tensor:
        """Value network output ``(N, out_features)`` with externally given gates.

        ``h_0 = x`` (or ones of the same shape when ``value_input="ones"``),
        ``h_l = (W_l h_{l-1} + b_l) * gates[l]``, output ``head(h_L)`` (after global average
        pooling for ``arch="cnn"``). ``forward(x) == value_forward(x, gates(x))``.
        """
        x = self._prepare(x)
        if not isinstance(gates, (list, tuple)) or len(gates) != self.n_gated_layers:
            raise ValueError(f"gates: expected a list of {self.n_gated_layers} tensors (one per gated layer), "
                             f"got {describe(gates)}")
        return self._value_pass(self._value_input(x), gates, check=True)

    def _value_pass(self, h: torch.Tensor, gates: Sequence[torch.Tensor], check: bool = False) -> torch.Tensor:
        for i, (layer, g) in enumerate(zip(self.value.layers, gates)):
            h = layer(h)
            if check and (not isinstance(g, torch.Tensor) or g.shape != h.shape):
                raise ValueError(f"gates[{i}]: expected a tensor of shape {tuple(h.shape)} (the value "
                                 f"pre-activation of gated layer {i}), got {describe(g)}")
            h = h * g
        if hasattr(self.value, "pool"):
            h = self.value.pool(h)
        return self.value.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._prepare(x)
        return self._value_pass(self._value_input(x), self.gates(x))


class DGN(GatedNetwork):
    """Deep gated network: a ReLU gating network gates a value network of the same shape.

    Lakshminarayanan & Singh 2021 (arXiv 2110.03403), the deep gated network: the gating network
    computes ``q_l = W^g_l relu(q_{l-1}) + b^g_l`` (``relu(q_0) = x``) and the gates
    ``G_l = 1[q_l > 0]`` (hard) or ``sigmoid(beta q_l)`` (soft); the value network computes
    ``h_l = (W_l h_{l-1} + b_l) * G_l`` and ``y = head(h_L)`` (``head(GAP(h_L))`` for CNNs).
    With the gating and value weights of a ReLU network and hard gates, the DGN *is* that
    ReLU network (:meth:`from_relu_network`).

    Parameters
    ----------
    in_features : int
        Input features (``arch="mlp"``; inputs are flattened) or input channels (``arch="cnn"``;
        inputs ``(N, L)``/``(N, H, W)`` get a channel axis).
    widths : sequence of int
        Width (channels) of each gated layer.
    out_features : int
    arch : {"mlp", "cnn"}
        Fully connected layers, or "same"-padded convolutions followed by global average
        pooling and a linear head (``dim`` 1 or 2).
    gate : {"hard", "soft"}
        Hard gates pass no gradient into the gating network; soft gates train it.
    beta : float
        Inverse temperature of soft gates, > 0 (change it later with ``model.beta = ...`` or
        anneal it with :class:`BetaAnnealing`).
    value_input : {"x", "ones"}
        What the value network sees: the input, or a constant input of ones.
    gating : {"deep", "shallow"}
        ``"deep"``: the gating layers form a chain (layer ``l`` reads layer ``l-1``);
        ``"shallow"`` (:class:`DLGN` only): every gating layer reads the input. Convolutional
        shallow gating needs ``stride=1``.
    bias, dim, kernel_size, stride, padding_mode
        As in :class:`sepmeasure.models.MLP` / :class:`sepmeasure.models.CNN` (both sides).
    freeze_gating, freeze_value : bool
        Build with the gating (value) parameters frozen; see :meth:`freeze_gating`.

    Examples
    --------
    >>> m = DGN(40, [16, 16], 10)
    >>> [g.shape for g in m.gates(torch.randn(3, 40))]
    [torch.Size([3, 16]), torch.Size([3, 16])]
    >>> m(torch.randn(3, 40)).shape
    torch.Size([3, 10])
    >>> DGN(1, [4], 10, arch="cnn", dim=2)(torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    gating_kind = "relu"
    model_name = "DGN"

    @classmethod
    def from_relu_network(cls, net: nn.Module, *, copy_value: bool = False, gate: str = "hard", beta: float = 4.0,
                          freeze_gating: bool = True) -> "DGN":
        """A DGN whose gating network is a copy of a trained ReLU ``MLP`` or ``CNN``.

        Decoupled learning (Lakshminarayanan & Singh 2021): the gates of a trained network are
        kept fixed and only the value network is trained. With ``copy_value=True`` the value
        network also gets the network's weights, and with hard gates the DGN's output equals
        ``net``'s output exactly.

        Parameters
        ----------
        net : MLP or CNN
            A standard model whose every activation is ``nn.ReLU``.
        copy_value : bool
            Also copy the weights (and head) into the value network; otherwise the value network
            is freshly initialised.
        gate, beta : see :class:`DGN`.
        freeze_gating : bool
            Freeze the copied gating network (default).

        Examples
        --------
        >>> net = MLP(40, [16, 16], 10)
        >>> dgn = DGN.from_relu_network(net, copy_value=True)
        >>> x = torch.randn(5, 40)
        >>> torch.equal(dgn(x), net(x))
        True
        """
        if isinstance(net, MLP):
            arch, block_attr, cfg = "mlp", "linear", net.config
            kwargs = {"in_features": cfg["in_features"]}
        elif isinstance(net, CNN):
            arch, block_attr, cfg = "cnn", "conv", net.config
            kwargs = {"in_features": cfg["in_channels"], "dim": cfg["dim"], "kernel_size": cfg["kernel_size"],
                      "stride": cfg["stride"], "padding_mode": cfg["padding_mode"]}
        else:
            raise TypeError(f"net: expected a sepmeasure.models.MLP or CNN with ReLU activations, got {describe(net)}")
        widths = cfg["widths"] if arch == "mlp" else cfg["channels"]
        if not widths:
            raise ValueError("net: expected at least one hidden layer to copy into the gating network, got none")
        for i, block in enumerate(net.layers):
            if type(block.act) is not nn.ReLU:
                raise ValueError(f"net: expected nn.ReLU activations, got {type(block.act).__name__} "
                                 f"at 'layers.{i}.act'")
        ref = next(net.parameters())
        model = cls(out_features=cfg["out_features"], widths=widths, arch=arch, gate=gate, beta=beta,
                    bias=cfg["bias"], **kwargs).to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            for i, block in enumerate(net.layers):
                src = getattr(block, block_attr)
                model.gating.layers[i].load_state_dict(src.state_dict())
                if copy_value:
                    model.value.layers[i].load_state_dict(src.state_dict())
            if copy_value:
                model.value.head.load_state_dict(net.head.state_dict())
        model.config["from_relu_network"] = {"copy_value": copy_value, "source": dict(cfg)}
        return model.freeze_gating(freeze_gating)


class DLGN(GatedNetwork):
    """Deep linearly gated network: a deep *linear* gating network gates a value network.

    Lakshminarayanan & Singh 2021 (arXiv 2110.03403) and Yadav, Ramaswamy & Lakshminarayanan
    2024: ``q_0 = x``, ``q_l = W^g_l q_{l-1} + b^g_l`` (no non-linearity, ``gating="deep"``), or
    the DLGN with shallow features (DLGN-SF, ``gating="shallow"``): ``q_l = W^g_l x + b^g_l``
    for every ``l``, each gating layer's own linear map of the input, so its gates carry no
    depth-induced alignment at initialisation. Gates ``G_l = 1[q_l > 0]`` or
    ``sigmoid(beta q_l)``, value network ``h_l = (W_l h_{l-1} + b_l) * G_l``. Every ``q_l`` is an
    affine function of ``x``, so each hard gate is the indicator of a half-space of the input
    (:func:`effective_halfspaces`). With ``value_input="ones"`` the value network's input is a
    constant (all information about ``x`` flows through the gates); this is a separate option,
    not the papers' DLGN-SF.

    Parameters are those of :class:`DGN`.

    Examples
    --------
    >>> m = DLGN(40, [16, 16], 10, value_input="ones")
    >>> m(torch.randn(3, 40)).shape
    torch.Size([3, 10])
    >>> from sepmeasure.models.halfspaces import effective_halfspaces
    >>> hs = effective_halfspaces(m)
    >>> hs.normals[1].shape, hs.offsets[1].shape
    (torch.Size([16, 40]), torch.Size([16]))
    >>> sf = DLGN(40, [16, 16], 10, gating="shallow")
    >>> [layer.in_features for layer in sf.gating.layers]
    [40, 40]
    """

    gating_kind = "linear"
    model_name = "DLGN"


# --------------------------------------------------------------------------------- beta schedule
class BetaAnnealing(Callback):
    """Set the soft-gate ``beta`` of every gated network in the model before each epoch.

    ``beta`` for epoch ``e`` (1-based) is ``schedule(e)`` when ``schedule`` is given, otherwise
    it moves from ``start`` (epoch 1) to ``end`` (epoch ``n_epochs`` and after) geometrically
    (``mode="geometric"``) or linearly. Each setting is recorded as a row
    ``{"measure": "beta", "value": beta, "for_epoch": e}``.

    Examples
    --------
    >>> cb = BetaAnnealing(start=1.0, end=100.0, n_epochs=3)
    >>> [round(cb.beta_for_epoch(e), 6) for e in (1, 2, 3, 4)]
    [1.0, 10.0, 100.0, 100.0]
    """

    def __init__(self, start: float = 1.0, end: float = 100.0, n_epochs: int = 10, mode: str = "geometric",
                 schedule: Callable[[int], float] | None = None) -> None:
        super().__init__(epochs="all")
        self.start = _check_beta(start, "start")
        self.end = _check_beta(end, "end")
        self.n_epochs = check_int(n_epochs, "n_epochs", minimum=1)
        self.mode = check_choice(mode, "mode", ("geometric", "linear"))
        if schedule is not None and not callable(schedule):
            raise TypeError(f"schedule: expected a callable epoch -> beta, got {describe(schedule)}")
        self.schedule = schedule

    def beta_for_epoch(self, epoch: int) -> float:
        """The ``beta`` used while training epoch ``epoch`` (1-based)."""
        if self.schedule is not None:
            return _check_beta(self.schedule(epoch), f"schedule({epoch})")
        t = min(max(epoch - 1, 0), self.n_epochs - 1) / max(self.n_epochs - 1, 1)
        if self.mode == "geometric":
            return math.exp((1 - t) * math.log(self.start) + t * math.log(self.end))
        return (1 - t) * self.start + t * self.end

    def measure(self, state: TrainingState) -> list[dict]:
        gated = [m for m in state.model.modules() if isinstance(m, GatedNetwork)]
        if not gated:
            raise TypeError(f"BetaAnnealing: expected the trained model to contain a DGN or DLGN, got "
                            f"{describe(state.model)}")
        beta = self.beta_for_epoch(state.epoch + 1)
        for m in gated:
            m.beta = beta
        return [{"measure": "beta", "value": beta, "for_epoch": state.epoch + 1}]


def __getattr__(name: str):
    """``EffectiveHalfSpaces`` and ``effective_halfspaces`` live in :mod:`sepmeasure.models.halfspaces`
    (which reads :class:`DLGN` from here); they stay importable from this module."""
    if name in ("EffectiveHalfSpaces", "effective_halfspaces"):
        from . import halfspaces

        return getattr(halfspaces, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
