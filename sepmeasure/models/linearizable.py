"""Linearizable channels: channel-wise PReLU driven to linearity by a sparsity prior.

Mehmeti-Göpel & Disselhoff 2023, *Nonlinear Advantage: Trained Networks Might Not Be As
Complex as You Think* (ICML 2023, arXiv 2211.17180). Every activation becomes a channel-wise
PReLU ``y = max(0, z) + alpha_c min(0, z)``; a channel with ``alpha_c = 1`` is the identity,
i.e. linear. A sparsity prior ``omega * sum_c |1 - alpha_c|^p`` (``p = 0.5`` by default)
added to the loss drives slopes to 1; channels that come within a tolerance of 1 are snapped
to exactly 1 and frozen there for the rest of training. :class:`LinearizationSchedule`
switches the prior on at a chosen epoch (early vs late linearization).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd
import torch
from torch import nn

from ..training import Callback, TrainingState
from ..validation import check_int, check_positive, describe
from .layers import along_channels, check_channel_axis, check_channels, check_float32, check_size, modules_of_type
from .sites import ActivationSite, replace_sites, resolve_sites

__all__ = ["LinearizablePReLU", "SparsityPrior", "LinearizationSchedule", "make_linearizable", "snap_linear",
           "nonlinear_fraction"]


class LinearizablePReLU(nn.Module):
    """Channel-wise PReLU ``y = max(0, z) + alpha_c min(0, z)`` whose channels can be frozen at ``alpha = 1``.

    Channels along axis 1 (inputs ``(N, C)`` or ``(N, C, *spatial)``), or along the last axis
    with ``channel_axis=-1`` (channels-last inputs ``(N, *tokens, C)``). Frozen channels
    (buffer ``frozen``) use exactly ``alpha = 1`` in the forward pass whatever the stored slope,
    so they receive no gradient and stay linear under any optimiser (momentum, weight decay).

    Parameters
    ----------
    channels : int
    init : float
        Initial slope of every channel (0: ReLU).
    channel_axis : {1, -1}
        The axis of the channels.

    Examples
    --------
    >>> act = LinearizablePReLU(2, init=0.0)
    >>> act(torch.tensor([[-2.0, 3.0]]))
    tensor([[-0., 3.]], grad_fn=<WhereBackward0>)
    >>> act.freeze_channels(torch.tensor([True, False])); act(torch.tensor([[-2.0, -3.0]]))
    tensor([[-2., -0.]], grad_fn=<WhereBackward0>)
    """

    graph_leaf = True  # one node of the traced graph (sepmeasure.graph): its shape checks are not traced

    def __init__(self, channels: int, init: float = 0.0, channel_axis: int = 1) -> None:
        super().__init__()
        self.channels = check_size(channels, "channels")
        self.channel_axis = check_channel_axis(channel_axis)
        if isinstance(init, bool) or not isinstance(init, (int, float)) or not math.isfinite(init):
            raise TypeError(f"init: expected a finite real number, got {describe(init)}")
        check_float32(init, "init")
        self.slope = nn.Parameter(torch.full((self.channels,), float(init)))
        self.register_buffer("frozen", torch.zeros(self.channels, dtype=torch.bool))

    def effective_slope(self) -> torch.Tensor:
        """``alpha`` as used in the forward pass: 1 on frozen channels, the parameter elsewhere."""
        return torch.where(self.frozen, torch.ones_like(self.slope), self.slope)

    def nonlinear_channels(self) -> torch.Tensor:
        """Boolean ``(channels,)``: ``alpha != 1`` (a channel with ``alpha = 1`` is the identity)."""
        with torch.no_grad():
            return self.effective_slope() != 1

    @torch.no_grad()
    def freeze_channels(self, channels: torch.Tensor) -> None:
        """Set ``alpha = 1`` on the given channels (boolean mask) and freeze them there."""
        channels = torch.as_tensor(channels, device=self.frozen.device)
        if channels.shape != (self.channels,) or channels.dtype != torch.bool:
            raise ValueError(f"channels: expected a boolean tensor of shape ({self.channels},), "
                             f"got {describe(channels)}")
        self.frozen |= channels
        self.slope[self.frozen] = 1.0

    @torch.no_grad()
    def pin_frozen(self) -> None:
        """Write ``alpha = 1`` back into the stored slope of frozen channels (after optimiser steps)."""
        self.slope[self.frozen] = 1.0

    @torch.no_grad()
    def snap(self, tolerance: float) -> int:
        """Freeze every channel with ``|1 - alpha| <= tolerance`` at exactly 1; return how many were new."""
        close = ((self.slope - 1).abs() <= tolerance) & ~self.frozen
        self.freeze_channels(close)
        return int(close.sum())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        check_channels(z, self.channels, self.channel_axis)
        alpha = along_channels(self.effective_slope().to(z.dtype), z, self.channel_axis)
        return torch.where(z >= 0, z, alpha * z)

    def extra_repr(self) -> str:
        axis = "" if self.channel_axis == 1 else ", channel_axis=-1"
        return f"channels={self.channels}, frozen={int(self.frozen.sum())}{axis}"


def _units(model: nn.Module) -> list[tuple[str, LinearizablePReLU]]:
    return modules_of_type(model, LinearizablePReLU, "LinearizablePReLU activations (see make_linearizable)")


class SparsityPrior:
    """``omega * sum over channels of |1 - alpha_c|^p``, smoothed at ``alpha_c = 1``.

    Mehmeti-Göpel & Disselhoff 2023 (arXiv 2211.17180), the sparsity prior on non-linear
    channels. ``|u|^p`` with ``p < 1`` has an infinite derivative at ``u = 0``; this prior
    uses ``(u^2 + eps^2)^(p/2) - eps^p`` instead, which equals ``|u|^p`` up to
    ``O(eps^p)``, is 0 at ``u = 0``, and has a bounded derivative (at most
    ``p * eps^(p-1)`` in size). Frozen channels contribute nothing. The sum runs over every
    :class:`LinearizablePReLU` channel of the model. Use as
    ``fit(model, ..., penalty=SparsityPrior(1e-3))``; while ``active`` is False (see
    :class:`LinearizationSchedule`) it returns 0.

    Parameters
    ----------
    weight : float
        ``omega`` (>= 0).
    p : float
        Exponent in (0, 2].
    eps : float
        Smoothing at ``alpha = 1`` (> 0).
    active : bool

    Examples
    --------
    >>> from sepmeasure.models import MLP
    >>> m = make_linearizable(MLP(4, [3], 2))
    >>> round(float(SparsityPrior(1.0, eps=1e-12)(m).detach()), 4)  # three channels with alpha = 0
    3.0
    """

    def __init__(self, weight: float = 1e-3, p: float = 0.5, eps: float = 1e-3, active: bool = True) -> None:
        self.weight = check_positive(weight, "weight", strict=False)
        self.p = check_positive(p, "p")
        if self.p > 2:
            raise ValueError(f"p: expected a number in (0, 2], got {p!r}")
        self.eps = check_positive(eps, "eps")
        self.active = bool(active)

    def __call__(self, model: nn.Module) -> torch.Tensor:
        units = _units(model)
        if not self.active or self.weight == 0:
            return units[0][1].slope.sum() * 0.0
        total = None
        for _, m in units:
            u = 1 - m.slope
            term = ((u * u + self.eps ** 2) ** (self.p / 2) - self.eps ** self.p) * (~m.frozen)
            total = term.sum() if total is None else total + term.sum()
        return self.weight * total


def snap_linear(model: nn.Module, tolerance: float = 1e-2) -> int:
    """Freeze at exactly ``alpha = 1`` every channel within ``tolerance`` of 1; return how many were new.

    Parameters
    ----------
    model : nn.Module
        A model with :class:`LinearizablePReLU` activations (see :func:`make_linearizable`).
    tolerance : float, default 1e-2
        Channels with ``|1 - alpha| <= tolerance`` are frozen; ``>= 0``.

    Returns
    -------
    int
        How many channels were frozen by this call (channels frozen before are not counted).

    Raises
    ------
    TypeError
        ``tolerance`` is not a real number.
    ValueError
        ``tolerance`` is negative or not finite; ``model`` holds no :class:`LinearizablePReLU`.

    Examples
    --------
    >>> from sepmeasure.models import MLP
    >>> m = make_linearizable(MLP(4, [3], 2))
    >>> with torch.no_grad():
    ...     m.layers[0].act.slope[1] = 0.999
    >>> snap_linear(m, 1e-2), nonlinear_fraction(m).nonlinear_channels.tolist()
    (1, [2])
    """
    tolerance = check_positive(tolerance, "tolerance", strict=False)
    return sum(m.snap(tolerance) for _, m in _units(model))


def nonlinear_fraction(model: nn.Module) -> pd.DataFrame:
    """Per linearizable layer: how many channels are non-linear (``alpha != 1``).

    Parameters
    ----------
    model : nn.Module
        A model with :class:`LinearizablePReLU` activations (see :func:`make_linearizable`).

    Returns
    -------
    pandas.DataFrame
        One row per :class:`LinearizablePReLU`: ``layer, channels, nonlinear_channels,
        frozen_channels, nonlinear_fraction``.

    Raises
    ------
    ValueError
        ``model`` holds no :class:`LinearizablePReLU`.

    Examples
    --------
    >>> from sepmeasure.models import MLP
    >>> nonlinear_fraction(make_linearizable(MLP(4, [3, 5], 2))).nonlinear_fraction.tolist()
    [1.0, 1.0]
    """
    rows = []
    for name, m in _units(model):
        nl = int(m.nonlinear_channels().sum())
        rows.append({"layer": name, "channels": m.channels, "nonlinear_channels": nl,
                     "frozen_channels": int(m.frozen.sum()), "nonlinear_fraction": nl / m.channels})
    return pd.DataFrame(rows)


def _initial_slopes(site: ActivationSite, act: nn.Module | None, init: float | None) -> torch.Tensor:
    """The slopes the converted activation starts from, in float64 so no precision is lost."""
    f64 = torch.float64
    channels, name = site.channels, site.name
    if init is not None:
        return torch.full((channels,), float(init), dtype=f64)
    if act is None and site.function == "relu":
        return torch.zeros(channels, dtype=f64)
    if act is None and site.function == "leaky_relu" and site.slope is not None:
        return torch.full((channels,), float(site.slope), dtype=f64)
    if isinstance(act, nn.ReLU):
        return torch.zeros(channels, dtype=f64)
    if isinstance(act, nn.LeakyReLU):
        return torch.full((channels,), float(act.negative_slope), dtype=f64)
    if isinstance(act, nn.PReLU):
        return act.weight.detach().to(device="cpu", dtype=f64).expand(channels).clone()
    if isinstance(act, nn.Identity):
        return torch.ones(channels, dtype=f64)
    what = type(act).__name__ if act is not None else f"a functional {site.function}"
    raise ValueError(f"model: cannot convert {name!r} ({what}) to a PReLU exactly; expected ReLU, "
                     f"LeakyReLU, PReLU or Identity, or pass init=<slope> to replace it anyway")


def make_linearizable(model: nn.Module, layers: str | Iterable[str] | None = None, *, init: float | None = None,
                      inplace: bool = False) -> nn.Module:
    """Replace the activations of a standard ``MLP``/``CNN``/``ResNet`` by :class:`LinearizablePReLU`.

    ReLU, LeakyReLU and PReLU become a channel-wise PReLU with the same slopes (the network's
    function is unchanged); an ``Identity`` becomes a PReLU frozen at ``alpha = 1``. Other
    activations are an error unless ``init`` gives the slope to start from.

    Parameters
    ----------
    model : MLP, CNN or ResNet
    layers : str or iterable of str, optional
        Activation modules to convert (default: all), e.g. ``"layers.0.act"``.
    init : float, optional
        Start every converted channel at this slope instead of matching the old activation.
    inplace : bool, default False
        Modify ``model`` itself instead of a deep copy.

    Returns
    -------
    nn.Module
        The converted model (same class; ``config["linearizable"]`` lists the converted layers);
        the new activations take the device and dtype of the model's parameters.

    Raises
    ------
    TypeError
        ``init`` is neither None nor a finite real number; ``model`` is not a
        :class:`~sepmeasure.models.MLP`, :class:`~sepmeasure.models.CNN` or
        :class:`~sepmeasure.models.ResNet`.
    ValueError
        An entry of ``layers`` is not the name of one of the model's activations (the message
        lists the valid names); a selected activation is already a :class:`LinearizablePReLU`;
        without ``init``, a selected activation is not ReLU, LeakyReLU, PReLU or Identity
        (e.g. GELU, Tanh or a :class:`~sepmeasure.models.LinearityMask`).

    Examples
    --------
    >>> from sepmeasure.models import MLP
    >>> net = MLP(40, [16], 10)
    >>> lin = make_linearizable(net)
    >>> x = torch.randn(3, 40)
    >>> torch.allclose(lin(x), net(x))
    True
    """
    if init is not None and (isinstance(init, bool) or not isinstance(init, (int, float)) or not math.isfinite(init)):
        raise TypeError(f"init: expected a finite real number or None, got {describe(init)}")
    sites = resolve_sites(model, layers)
    for site in sites:
        if isinstance(site.activation(model), LinearizablePReLU):
            raise ValueError(f"layers: {site.name!r} is already linearizable")
    slopes = {s.name: _initial_slopes(s, s.activation(model), init) for s in sites}
    ref = next(model.parameters(), None)
    units = {}
    for site in sites:
        act = LinearizablePReLU(site.channels, channel_axis=site.channel_axis)
        if ref is not None:
            act.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            act.slope.copy_(slopes[site.name])
        if isinstance(site.activation(model), nn.Identity):
            act.freeze_channels(torch.ones(site.channels, dtype=torch.bool, device=act.frozen.device))
        units[site.name] = act
    out, names = replace_sites(model, units, sites, inplace=inplace)
    if hasattr(out, "config"):
        out.config = {**out.config, "linearizable": [names[s.name] for s in sites]}
    return out


class LinearizationSchedule(Callback):
    """Switch a :class:`SparsityPrior` on at ``start_epoch`` and snap channels close to 1 after each epoch.

    Mehmeti-Göpel & Disselhoff 2023 compare linearizing early (prior from the start) with
    linearizing late (prior after the network has trained). The prior is active during
    epochs ``start_epoch, start_epoch + 1, ...`` (1-based); after each of those epochs (and,
    with ``snap_every_step``, after each step) channels with ``|1 - alpha| <= tolerance`` are
    frozen at 1. After every optimiser step the slopes of frozen channels are written back to
    exactly 1. Rows: the non-linear fraction of every layer at every epoch.

    Examples
    --------
    >>> from sepmeasure.training import fit
    >>> from sepmeasure.data import load_dataset
    >>> from sepmeasure.models import MLP
    >>> prior = SparsityPrior(0.01)
    >>> sched = LinearizationSchedule(prior, start_epoch=2)
    >>> m = make_linearizable(MLP(2, [8], 2))
    >>> h = fit(m, load_dataset("two_moons", size=100), epochs=2, penalty=prior, callbacks=[sched], progress=False)
    >>> sched.table[["epoch", "layer", "active"]].values.tolist()  # active: during the next epoch
    [[0, 'layers.0.act', False], [1, 'layers.0.act', True], [2, 'layers.0.act', True]]
    """

    def __init__(self, prior: SparsityPrior, start_epoch: int = 1, tolerance: float = 1e-2,
                 snap_every_step: bool = False) -> None:
        super().__init__(epochs="all")
        if not isinstance(prior, SparsityPrior):
            raise TypeError(f"prior: expected a SparsityPrior, got {describe(prior)}")
        self.prior = prior
        self.start_epoch = check_int(start_epoch, "start_epoch", minimum=1)
        self.tolerance = check_positive(tolerance, "tolerance", strict=False)
        self.snap_every_step = bool(snap_every_step)

    def on_step_end(self, state: TrainingState) -> None:
        for _, m in _units(state.model):
            if self.snap_every_step and self.prior.active:
                m.snap(self.tolerance)
            m.pin_frozen()

    def measure(self, state: TrainingState) -> pd.DataFrame:
        snapped = {}
        if self.prior.active and state.epoch >= self.start_epoch:
            snapped = {name: m.snap(self.tolerance) for name, m in _units(state.model)}
        self.prior.active = state.epoch + 1 >= self.start_epoch
        table = nonlinear_fraction(state.model)
        table["snapped_now"] = [snapped.get(name, 0) for name in table.layer]
        table["active"] = self.prior.active
        return table
