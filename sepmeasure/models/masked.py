"""Masked linear / non-linear features (He et al. 2022) and folding of the linear ones.

He, Nie, Yao, Yin, Gong & Li 2022, *Exploring Linear Feature Disentanglement for Neural
Networks* (arXiv 2203.11700): a learnable mask decides, per unit (fully connected layer) or
per channel (convolution), whether the activation is applied,

``h = m * sigma(z) + (1 - m) * z``,  ``m in {0, 1}``,

so that unit is non-linear (``m = 1``) or linear (``m = 0``). The mask is binarised in the
forward pass (``m = 1[logit > 0]``) and trained through a straight-through estimator
(the gradient of ``sigmoid(logit)``); :class:`MaskPenalty` rewards linear units.

A linear unit needs no place in the non-linear trunk: :func:`fold` rebuilds a masked network
so that only non-linear units remain as trunk nodes and the linear units' affine maps are
composed into shortcuts to later layers (fully connected networks), or run as a separate
linear stream (convolutional networks). The folded network computes the same function.

Convention: a "linear unit" is a unit whose mask value in the forward pass is exactly 0.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import pandas as pd
import torch
from torch import nn

from ..validation import check_int, check_positive, describe
from .folding import fold_traced
from .sites import find_sites, replace_sites, resolve_sites
from .standard import CNN, MLP, ResNet, _add_channel_axis

__all__ = ["LinearityMask", "MaskPenalty", "apply_masks", "linear_fraction", "fold", "FoldReport", "FoldedMLP",
           "FoldedCNN", "activation_sites"]


# --------------------------------------------------------------------------------- sites
def activation_sites(model: nn.Module) -> list[tuple[str, int]]:
    """``(name, channels)`` of every activation site of a traced model (see :mod:`sepmeasure.models.sites`).

    Activation modules are named by their module name, functional calls (``F.relu``) by their
    graph node name.

    Examples
    --------
    >>> activation_sites(MLP(4, [3, 2], 1))
    [('layers.0.act', 3), ('layers.1.act', 2)]
    """
    return [(s.name, s.channels) for s in find_sites(model)]


def _nonlinear_flags(module: nn.Module, channels: int, device: torch.device) -> torch.Tensor:
    """Per-channel: is this activation module non-linear? (``Identity`` and slope-1 PReLU/LeakyReLU are linear.)"""
    if hasattr(module, "nonlinear_channels"):
        return module.nonlinear_channels().to(device)
    if isinstance(module, nn.Identity):
        return torch.zeros(channels, dtype=torch.bool, device=device)
    if isinstance(module, nn.LeakyReLU):
        return torch.full((channels,), module.negative_slope != 1.0, dtype=torch.bool, device=device)
    if isinstance(module, nn.PReLU):
        return (module.weight.detach() != 1).expand(channels).to(device)
    return torch.ones(channels, dtype=torch.bool, device=device)


# --------------------------------------------------------------------------------- mask module
class LinearityMask(nn.Module):
    """``h = m * activation(z) + (1 - m) * z`` with one learnable mask per unit/channel.

    He et al. 2022 (arXiv 2203.11700), the learnable mask module. ``m = 1[logit > 0]`` in the
    forward pass (``hard=True``), trained with a straight-through estimator: the backward pass
    uses the gradient of ``sigmoid(logit)``. With ``hard=False`` the mask is
    ``sigmoid(logit)`` itself (a soft mixture; such a model cannot be folded).

    Parameters
    ----------
    activation : nn.Module
        The wrapped element-wise activation ``sigma``.
    channels : int
        Number of units (``(N, C)`` inputs) or channels (``(N, C, *spatial)`` inputs; axis 1, or the
        last axis with ``channel_axis=-1``).
    init_logit : float
        Initial logit of every mask (> 0: all units start non-linear).
    hard : bool

    Examples
    --------
    >>> mask = LinearityMask(nn.ReLU(), 3)
    >>> mask.set_nonlinear(torch.tensor([True, False, True]))
    >>> mask(torch.tensor([[-1.0, -1.0, 2.0]]))
    tensor([[ 0., -1.,  2.]], grad_fn=<AddBackward0>)
    """

    graph_leaf = True  # one node of the traced graph (sepmeasure.graph): its shape checks are not traced

    def __init__(self, activation: nn.Module, channels: int, *, init_logit: float = 1.0, hard: bool = True,
                 channel_axis: int = 1) -> None:
        super().__init__()
        if channel_axis not in (1, -1) or isinstance(channel_axis, bool):
            raise ValueError(f"channel_axis: expected 1 or -1, got {channel_axis!r}")
        self.channel_axis = channel_axis
        if not isinstance(activation, nn.Module):
            raise TypeError(f"activation: expected an nn.Module, got {describe(activation)}")
        if isinstance(activation, LinearityMask):
            raise TypeError("activation: expected an activation, got a LinearityMask (masks do not nest)")
        channels = check_int(channels, "channels", minimum=1)
        if isinstance(init_logit, bool) or not isinstance(init_logit, (int, float)) or not math.isfinite(init_logit):
            raise TypeError(f"init_logit: expected a finite real number, got {describe(init_logit)}")
        self.activation = activation
        self.channels = channels
        self.hard = bool(hard)
        self.logits = nn.Parameter(torch.full((channels,), float(init_logit)))

    def mask(self) -> torch.Tensor:
        """The mask ``m`` of shape ``(channels,)`` used in the forward pass (differentiable)."""
        soft = torch.sigmoid(self.logits)
        if not self.hard:
            return soft
        binary = (self.logits > 0).to(soft.dtype)
        return binary + (soft - soft.detach())  # value: binary; gradient: that of sigmoid(logit)

    def probabilities(self) -> torch.Tensor:
        """``sigmoid(logit)``: the differentiable surrogate of the mask (used by :class:`MaskPenalty`)."""
        return torch.sigmoid(self.logits)

    def nonlinear_channels(self) -> torch.Tensor:
        """Boolean ``(channels,)``: mask value non-zero *and* the wrapped activation non-linear there."""
        with torch.no_grad():
            m = self.mask() != 0
        return m & _nonlinear_flags(self.activation, self.channels, m.device)

    @torch.no_grad()
    def set_nonlinear(self, nonlinear: torch.Tensor, magnitude: float | None = None) -> None:
        """Set the mask from a boolean vector (``True`` = non-linear unit).

        The logits become ``+magnitude`` / ``-magnitude`` (default: the largest current ``|logit|``,
        at least 1).
        """
        nonlinear = torch.as_tensor(nonlinear, device=self.logits.device)
        if nonlinear.shape != (self.channels,):
            raise ValueError(f"nonlinear: expected a boolean tensor of shape ({self.channels},), "
                             f"got {describe(nonlinear)}")
        mag = float(magnitude) if magnitude is not None else max(1.0, float(self.logits.abs().max()))
        self.logits.copy_(torch.where(nonlinear.bool(), mag, -mag).to(self.logits.dtype))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim < 2 or z.shape[self.channel_axis] != self.channels:
            want = f"(N, {self.channels}, ...)" if self.channel_axis == 1 else f"(N, ..., {self.channels})"
            raise ValueError(f"z: expected a tensor of shape {want}, got {describe(z)}")
        m = self.mask().to(z.dtype)
        if self.channel_axis == 1:
            m = m.reshape(1, self.channels, *([1] * (z.ndim - 2)))
        return m * self.activation(z) + (1 - m) * z

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hard={self.hard}"


def _masks(model: nn.Module) -> list[tuple[str, LinearityMask]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {describe(model)}")
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LinearityMask)]


class MaskPenalty:
    """Penalty rewarding linear units: ``weight * mean over all mask units of sigmoid(logit)``.

    The expected share of non-linear units under the straight-through surrogate; minimising
    it pushes mask logits below 0 (He et al. 2022 add such a sparsity term to the task loss).
    Usable as ``fit(model, ..., penalty=MaskPenalty(0.01))``.

    Examples
    --------
    >>> m = apply_masks(MLP(4, [3], 2))
    >>> float(MaskPenalty(0.5)(m).detach()) == 0.5 * float(torch.sigmoid(torch.tensor(1.0)))
    True
    """

    def __init__(self, weight: float = 0.01) -> None:
        self.weight = check_positive(weight, "weight", strict=False)

    def __call__(self, model: nn.Module) -> torch.Tensor:
        masks = _masks(model)
        if not masks:
            raise ValueError(f"model: expected a model with LinearityMask modules (see apply_masks), "
                             f"got {type(model).__name__} without any")
        probs = torch.cat([m.probabilities() for _, m in masks])
        return self.weight * probs.mean()


# --------------------------------------------------------------------------------- conversion
def apply_masks(model: nn.Module, layers: str | Iterable[str] | None = None, *, init_logit: float = 1.0,
                hard: bool = True, inplace: bool = False) -> nn.Module:
    """Wrap the activations of a standard ``MLP``/``CNN``/``ResNet`` in :class:`LinearityMask` modules.

    Parameters
    ----------
    model : MLP, CNN or ResNet
    layers : str or iterable of str, optional
        Activation modules to wrap (e.g. ``"layers.0.act"``); all of them by default. Naming a
        layer without an activation (``"head"``, ``"layers.0.linear"``) is an error.
    init_logit : float, default 1.0
        Initial logit of every mask (> 0: all units start non-linear); see :class:`LinearityMask`.
    hard : bool, default True
        Binary masks trained with a straight-through estimator; ``False``: soft masks
        ``sigmoid(logit)`` (such a model cannot be folded). See :class:`LinearityMask`.
    inplace : bool, default False
        Modify ``model`` itself instead of a deep copy.

    Returns
    -------
    nn.Module
        The masked model (same class, ``config["masked"]`` lists the wrapped layers); the mask of
        layer ``name`` is the module ``name`` and the original activation ``name + ".activation"``.

    Raises
    ------
    TypeError
        ``model`` is not a :class:`~sepmeasure.models.MLP`, :class:`~sepmeasure.models.CNN` or
        :class:`~sepmeasure.models.ResNet`; ``init_logit`` is not a finite real number (``inf``
        and ``nan`` included).
    ValueError
        An entry of ``layers`` is not the name of one of the model's activations (the message
        lists the valid names); a selected activation is already masked.

    Examples
    --------
    >>> m = apply_masks(MLP(40, [16, 16], 10))
    >>> type(m.layers[0].act).__name__
    'LinearityMask'
    >>> linear_fraction(m)[["layer", "units", "linear_units"]].values.tolist()
    [['layers.0.act', 16, 0], ['layers.1.act', 16, 0]]
    """
    if isinstance(init_logit, bool) or not isinstance(init_logit, (int, float)) or not math.isfinite(init_logit):
        raise TypeError(f"init_logit: expected a finite real number, got {describe(init_logit)}")
    sites = resolve_sites(model, layers)
    for site in sites:
        if isinstance(site.activation(model), LinearityMask):
            raise ValueError(f"layers: {site.name!r} is already masked")
    ref = next(model.parameters(), None)
    masks = {}
    for site in sites:
        act = site.activation(model)
        act = copy.deepcopy(act) if act is not None else _functional_activation(site)
        mask = LinearityMask(act, site.channels, init_logit=init_logit, hard=hard, channel_axis=site.channel_axis)
        if ref is not None:
            mask.to(device=ref.device, dtype=ref.dtype)
        masks[site.name] = mask
    out, names = replace_sites(model, masks, sites, inplace=inplace)
    if hasattr(out, "config"):
        out.config = {**out.config, "masked": [names[s.name] for s in sites]}
    return out


def _functional_activation(site) -> nn.Module:
    """The module computing a functional call's activation (for the mask to wrap)."""
    modules = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "silu": nn.SiLU,
               "elu": nn.ELU, "softplus": nn.Softplus, "hardtanh": nn.Hardtanh, "relu6": nn.ReLU6}
    if site.function == "leaky_relu" and site.slope is not None:
        return nn.LeakyReLU(site.slope)
    if site.function in modules and site.plain:
        return modules[site.function]()
    raise ValueError(f"model: cannot mask {site.name!r}: a functional {site.function} call with arguments the mask "
                     f"cannot reproduce; use the module form (e.g. nn.{site.function.title()}) in the model")


def linear_fraction(model: nn.Module) -> pd.DataFrame:
    """Per masked layer: how many units are linear (mask exactly 0 in the forward pass).

    Parameters
    ----------
    model : nn.Module
        A model with :class:`LinearityMask` modules (see :func:`apply_masks`).

    Returns
    -------
    pandas.DataFrame
        One row per :class:`LinearityMask`: ``layer, units, linear_units, linear_fraction, mask``
        (``"hard"`` or ``"soft"``; soft masks are never exactly 0, so their units count as
        non-linear).

    Raises
    ------
    ValueError
        ``model`` holds no :class:`LinearityMask`.

    Examples
    --------
    >>> m = apply_masks(MLP(4, [2], 2))
    >>> m.layers[0].act.set_nonlinear(torch.tensor([True, False]))
    >>> linear_fraction(m).linear_fraction.tolist()
    [0.5]
    """
    masks = _masks(model)
    if not masks:
        raise ValueError(f"model: expected a model with LinearityMask modules (see apply_masks), "
                         f"got {type(model).__name__} without any")
    rows = []
    for name, m in masks:
        with torch.no_grad():
            linear = int((m.mask() == 0).sum())
        rows.append({"layer": name, "units": m.channels, "linear_units": linear,
                     "linear_fraction": linear / m.channels, "mask": "hard" if m.hard else "soft"})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------- folding
@dataclass(frozen=True)
class FoldReport:
    """What :func:`fold` did and what it saved.

    ``parameters_*`` count the network's parameters (mask logits excluded: they only decide
    the structure); ``macs_*`` count multiply-adds of one sample through the weight matrices
    and convolutions (``None`` for a CNN or another model folded without ``input_shape``).
    ``kept`` lists ``(mask, reason)`` for every mask with linear units that could not be
    taken out of the network (other models than MLP and CNN; see
    :mod:`sepmeasure.models.folding`). ``collapsed`` says which all-linear end of a CNN was
    composed into one affine map (empty when none was).
    """

    model: str
    method: str
    units: int
    linear_units: int
    parameters_before: int
    parameters_after: int
    macs_before: int | None
    macs_after: int | None
    input_shape: tuple[int, ...] | None
    kept: tuple[tuple[str, str], ...] = ()
    collapsed: str = ""

    def to_frame(self) -> pd.DataFrame:
        """Tidy: one row per (measure, stage)."""
        rows = []
        for measure in ("parameters", "macs"):
            for stage in ("before", "after"):
                rows.append({"model": self.model, "method": self.method, "measure": measure, "stage": stage,
                             "value": getattr(self, f"{measure}_{stage}")})
        return pd.DataFrame(rows)

    def as_dict(self) -> dict:
        return asdict(self)


def _restrict_activation(act: nn.Module, index: torch.Tensor, where: str) -> nn.Module:
    """The activation applied only to the units ``index`` (per-channel parameters sliced)."""
    if isinstance(act, nn.PReLU):
        if act.weight.numel() == 1:
            return copy.deepcopy(act)
        out = nn.PReLU(num_parameters=int(index.numel())).to(device=act.weight.device, dtype=act.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(act.weight[index])
        return out
    if any(True for _ in act.parameters()):
        raise TypeError(f"model: cannot fold {where!r}: its activation {type(act).__name__} has parameters "
                        f"that are not known to be per-channel")
    return copy.deepcopy(act)


def _layer_masks(model: nn.Module) -> list[tuple[str, torch.Tensor, nn.Module]]:
    """Per hidden layer: (name, non-linear flags, the activation sigma applied to non-linear units)."""
    out = []
    for name, channels in activation_sites(model):
        act = model.get_submodule(name)
        if isinstance(act, LinearityMask):
            if not act.hard:
                raise ValueError(f"model: fold needs binary masks, got a soft (non-binary) mask at {name!r} "
                                 f"(hard=False); set hard=True first")
            with torch.no_grad():
                nonlinear = act.mask() != 0
            out.append((name, nonlinear, act.activation))
        else:
            out.append((name, torch.ones(channels, dtype=torch.bool, device=_device(model)), act))
    return out


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _count_parameters(model: nn.Module) -> int:
    skip = {id(m.logits) for _, m in _masks(model)}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


@torch.no_grad()
def _count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one sample through every ``nn.Linear`` and convolution (hooks on a forward pass)."""
    total = 0
    handles = []

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Linear):
            total += module.in_features * module.out_features * (output.numel() // output.shape[-1]) // output.shape[0]
        else:
            per_out = (module.in_channels // module.groups) * math.prod(module.kernel_size)
            total += per_out * output[0].numel()

    try:
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                handles.append(m.register_forward_hook(hook))
        p = next(model.parameters())
        model(torch.zeros(1, *input_shape, dtype=p.dtype, device=p.device))
    finally:
        for h in handles:
            h.remove()
    return int(total)


class _FoldedLayer(nn.Module):
    """``act(sum_s maps[s](a_s) + bias)``: a trunk layer fed by composed affine shortcuts."""

    def __init__(self, index: int, sources: dict[int, torch.Tensor], bias: torch.Tensor | None,
                 act: nn.Module | None) -> None:
        super().__init__()
        self.index = index
        self.sources = sorted(sources)
        self.maps = nn.ModuleDict()
        for s in self.sources:
            w = sources[s]
            lin = nn.Linear(w.shape[1], w.shape[0], bias=False).to(device=w.device, dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w)
            self.maps[f"from_{s}"] = lin
        self.bias = nn.Parameter(bias.clone()) if bias is not None else None
        self.act = act

    def forward(self, acts: dict[int, torch.Tensor]) -> torch.Tensor:
        z = None
        for s in self.sources:
            t = self.maps[f"from_{s}"](acts[s])
            z = t if z is None else z + t
        if self.bias is not None:
            z = z + self.bias
        return self.act(z) if self.act is not None else z


class FoldedMLP(nn.Module):
    """A masked MLP with its linear units folded away (built by :func:`fold`).

    Trunk node ``0`` is the input; trunk node ``l`` holds the non-linear units of hidden layer
    ``l`` (``trunk[k].index == l``). Each trunk layer and the ``output`` layer compute
    ``sum_s maps["from_s"](a_s) + bias`` over the earlier trunk nodes ``s`` they are connected to
    by a path of linear units. ``kept_units[l]`` are the original indices of the trunk units.
    """

    def __init__(self, in_features: int, trunk: list[_FoldedLayer], output: _FoldedLayer,
                 kept_units: dict[int, list[int]], report: FoldReport | None) -> None:
        super().__init__()
        self.in_features = in_features
        self.trunk = nn.ModuleList(trunk)
        self.output = output
        self.kept_units = kept_units
        self.report = report
        self.config = {"model": "FoldedMLP", "in_features": in_features,
                       "trunk_widths": {layer.index: len(kept_units[layer.index]) for layer in trunk}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acts = {0: x.reshape(x.shape[0], -1)}
        for layer in self.trunk:
            acts[layer.index] = layer(acts)
        return self.output(acts)


def _fold_mlp(model: MLP, input_shape: tuple[int, ...] | None) -> FoldedMLP:
    ref = next(model.parameters())
    dtype, device = ref.dtype, ref.device
    f64 = torch.float64
    has_bias = model.head.bias is not None
    layers = _layer_masks(model)
    linears = [b.linear for b in model.layers] + [model.head]
    dims = {0: model.config["in_features"]}
    # the input of the current layer: trunk part (source index, units) and linear part
    prev_trunk: int | None = 0
    prev_trunk_units = torch.arange(dims[0], device=device)
    prev_linear_units = torch.zeros(0, dtype=torch.long, device=device)
    lin_maps: dict[int, torch.Tensor] = {}  # linear units of the previous layer = sum_s A_s a_s + c
    lin_bias = torch.zeros(0, dtype=f64, device=device)
    trunk, kept = [], {0: list(range(dims[0]))}
    n_units = n_linear = 0
    for l, linear in enumerate(linears, start=1):
        w = linear.weight.detach().to(f64)
        b = linear.bias.detach().to(f64) if linear.bias is not None else torch.zeros(w.shape[0], dtype=f64,
                                                                                      device=device)
        maps: dict[int, torch.Tensor] = {}
        if prev_trunk is not None:
            maps[prev_trunk] = w[:, prev_trunk_units]
        if prev_linear_units.numel():
            w_lin = w[:, prev_linear_units]
            for s, a in lin_maps.items():
                maps[s] = maps[s] + w_lin @ a if s in maps else w_lin @ a
            b = b + w_lin @ lin_bias
        if l == len(linears):  # the head
            output = _FoldedLayer(l, {s: m.to(dtype) for s, m in maps.items()}, b.to(dtype) if has_bias else None,
                                  None)
            break
        name, nonlinear, act = layers[l - 1]
        n_units += nonlinear.numel()
        n_linear += int((~nonlinear).sum())
        nl_idx = torch.nonzero(nonlinear).flatten()
        li_idx = torch.nonzero(~nonlinear).flatten()
        if nl_idx.numel():
            trunk.append(_FoldedLayer(l, {s: m[nl_idx].to(dtype) for s, m in maps.items()},
                                      b[nl_idx].to(dtype) if has_bias else None,
                                      _restrict_activation(act, nl_idx, name)))
            kept[l] = nl_idx.tolist()
            dims[l] = int(nl_idx.numel())
            prev_trunk = l
        else:
            prev_trunk = None
        # columns of the next layer's weight: original unit indices of the trunk / linear parts
        prev_trunk_units, prev_linear_units = nl_idx, li_idx
        lin_maps = {s: m[li_idx] for s, m in maps.items()} if li_idx.numel() else {}
        lin_bias = b[li_idx]
    shape = input_shape or (model.config["in_features"],)
    folded = FoldedMLP(model.config["in_features"], trunk, output, kept, None)
    report = FoldReport("MLP", "composed_shortcuts", n_units, n_linear, _count_parameters(model),
                        _count_parameters(folded), _count_macs(model, shape), _count_macs(folded, shape), shape)
    folded.report = report
    return folded


class _FoldedConvLayer(nn.Module):
    """One conv layer split into a non-linear trunk part and a linear stream."""

    def __init__(self, conv: nn.Module, in_trunk: torch.Tensor, in_linear: torch.Tensor, out_trunk: torch.Tensor,
                 out_linear: torch.Tensor, act: nn.Module | None) -> None:
        super().__init__()
        self.trunk_from_trunk = self._part(conv, out_trunk, in_trunk)
        self.trunk_from_linear = self._part(conv, out_trunk, in_linear)
        self.linear_from_trunk = self._part(conv, out_linear, in_trunk)
        self.linear_from_linear = self._part(conv, out_linear, in_linear)
        bias = conv.bias.detach() if conv.bias is not None else None
        self.trunk_bias = nn.Parameter(bias[out_trunk].clone()) if bias is not None and out_trunk.numel() else None
        self.linear_bias = nn.Parameter(bias[out_linear].clone()) if bias is not None and out_linear.numel() else None
        self.n_trunk, self.n_linear = int(out_trunk.numel()), int(out_linear.numel())
        self.act = act

    @staticmethod
    def _part(conv: nn.Module, rows: torch.Tensor, cols: torch.Tensor) -> nn.Module | None:
        if not rows.numel() or not cols.numel():
            return None
        part = type(conv)(int(cols.numel()), int(rows.numel()), conv.kernel_size, stride=conv.stride,
                          padding=conv.padding, dilation=conv.dilation, bias=False, padding_mode=conv.padding_mode)
        part.to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            part.weight.copy_(conv.weight[rows][:, cols])
        return part

    @staticmethod
    def _sum(parts: list[tuple[nn.Module | None, torch.Tensor | None]], bias: torch.Tensor | None) -> torch.Tensor:
        z = None
        for conv, x in parts:
            if conv is None or x is None:
                continue
            t = conv(x)
            z = t if z is None else z + t
        if bias is not None:
            z = z + bias.reshape(1, -1, *([1] * (z.ndim - 2)))
        return z

    def forward(self, a: torch.Tensor | None, r: torch.Tensor | None) -> tuple[torch.Tensor | None,
                                                                                 torch.Tensor | None]:
        a_new = r_new = None
        if self.n_trunk:
            a_new = self.act(self._sum([(self.trunk_from_trunk, a), (self.trunk_from_linear, r)], self.trunk_bias))
        if self.n_linear:
            r_new = self._sum([(self.linear_from_trunk, a), (self.linear_from_linear, r)], self.linear_bias)
        return a_new, r_new


class _AffineTail(nn.Module):
    """The all-linear end of a folded CNN as one affine map: ``logits = A_N vec(a) + A_L vec(r) + c``.

    ``a`` and ``r`` are the trunk and linear-stream outputs of the last kept layer (or the input,
    ``a = x``, when every layer is linear); ``vec`` flattens channels and positions.
    """

    def __init__(self, from_trunk: torch.Tensor | None, from_linear: torch.Tensor | None,
                 bias: torch.Tensor | None) -> None:
        super().__init__()
        self.from_trunk = self._linear(from_trunk)
        self.from_linear = self._linear(from_linear)
        self.bias = nn.Parameter(bias.clone()) if bias is not None else None

    @staticmethod
    def _linear(w: torch.Tensor | None) -> nn.Linear | None:
        if w is None or not w.numel():
            return None
        lin = nn.Linear(w.shape[1], w.shape[0], bias=False).to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
        return lin

    def forward(self, a: torch.Tensor | None, r: torch.Tensor | None) -> torch.Tensor:
        out = None
        for lin, h in ((self.from_trunk, a), (self.from_linear, r)):
            if lin is None or h is None:
                continue
            t = lin(h.flatten(1))
            out = t if out is None else out + t
        if self.bias is not None:
            out = self.bias.expand(a.shape[0] if a is not None else r.shape[0], -1) if out is None else out + self.bias
        return out


class FoldedCNN(nn.Module):
    """A masked CNN whose linear channels run in a separate linear stream (built by :func:`fold`).

    Layer ``l`` maps (trunk ``a``, linear stream ``r``) to ``a' = sigma(conv_NN a + conv_NL r + b_N)``
    and ``r' = conv_LN a + conv_LL r + b_L``; the head reads ``GAP(a)`` and ``GAP(r)``. Only the
    non-linear channels pass through activations. With a ``tail`` (an all-linear end composed
    into one affine map, see :func:`fold`), ``layers`` stop before it and the tail replaces the
    remaining layers, the pooling and the head.
    """

    def __init__(self, dim: int, layers: list[_FoldedConvLayer], head_trunk: nn.Linear | None,
                 head_linear: nn.Linear | None, head_bias: torch.Tensor | None, report: FoldReport | None,
                 tail: _AffineTail | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.layers = nn.ModuleList(layers)
        self.head_trunk = head_trunk if tail is None else None
        self.head_linear = head_linear if tail is None else None
        self.head_bias = nn.Parameter(head_bias.clone()) if head_bias is not None and tail is None else None
        self.tail = tail
        self.report = report
        self.config = {"model": "FoldedCNN", "dim": dim,
                       "trunk_channels": [layer.n_trunk for layer in layers],
                       "linear_channels": [layer.n_linear for layer in layers],
                       "affine_tail_after": len(layers) if tail is not None else None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, r = _add_channel_axis(x, self.dim), None
        for layer in self.layers:
            a, r = layer(a, r)
        if self.tail is not None:
            return self.tail(a, r)
        out = None
        for head, h in ((self.head_trunk, a), (self.head_linear, r)):
            if head is None or h is None:
                continue
            t = head(h.flatten(2).mean(dim=2))
            out = t if out is None else out + t
        return out + self.head_bias if self.head_bias is not None else out


def _fold_cnn(model: CNN, input_shape: tuple[int, ...] | None, collapse: bool = True) -> FoldedCNN:
    device = _device(model)
    layers = _layer_masks(model)
    in_trunk = torch.arange(model.config["in_channels"], device=device)
    in_linear = torch.zeros(0, dtype=torch.long, device=device)
    folded_layers = []
    n_units = n_linear = 0
    for block, (name, nonlinear, act) in zip(model.layers, layers):
        out_trunk = torch.nonzero(nonlinear).flatten()
        out_linear = torch.nonzero(~nonlinear).flatten()
        n_units += nonlinear.numel()
        n_linear += int(out_linear.numel())
        act_n = _restrict_activation(act, out_trunk, name) if out_trunk.numel() else None
        folded_layers.append(_FoldedConvLayer(block.conv, in_trunk, in_linear, out_trunk, out_linear, act_n))
        in_trunk, in_linear = out_trunk, out_linear

    def head_part(cols: torch.Tensor) -> nn.Linear | None:
        if not cols.numel():
            return None
        lin = nn.Linear(int(cols.numel()), model.head.out_features, bias=False)
        lin.to(device=model.head.weight.device, dtype=model.head.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(model.head.weight[:, cols])
        return lin

    head_bias = model.head.bias.detach() if model.head.bias is not None else None
    folded = FoldedCNN(model.config["dim"], folded_layers, head_part(in_trunk), head_part(in_linear), head_bias,
                       None)
    collapsed = ""
    if input_shape is not None and collapse:
        folded, collapsed = _collapse_linear_tail(folded, input_shape, model.config["bias"])
    macs_before = _count_macs(model, input_shape) if input_shape is not None else None
    macs_after = _count_macs(folded, input_shape) if input_shape is not None else None
    method = "linear_stream" + ("+affine_tail" if collapsed else "")
    folded.report = FoldReport("CNN", method, n_units, n_linear, _count_parameters(model),
                               _count_parameters(folded), macs_before, macs_after, input_shape, (), collapsed)
    return folded


@torch.no_grad()
def _module_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[int, int]:
    """Multiply-adds of one sample per ``nn.Linear`` / convolution, keyed by ``id(module)``."""
    out: dict[int, int] = {}
    handles = []

    def hook(module, inputs, output):
        if isinstance(module, nn.Linear):
            n = module.in_features * module.out_features * (output.numel() // output.shape[-1]) // output.shape[0]
        else:
            n = (module.in_channels // module.groups) * math.prod(module.kernel_size) * output[0].numel()
        out[id(module)] = out.get(id(module), 0) + int(n)

    try:
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                handles.append(m.register_forward_hook(hook))
        p = next(model.parameters())
        model(torch.zeros(1, *input_shape, dtype=p.dtype, device=p.device))
    finally:
        for h in handles:
            h.remove()
    return out


def _collapse_linear_tail(folded: FoldedCNN, input_shape: tuple[int, ...],
                          has_bias: bool) -> tuple[FoldedCNN, str]:
    """Compose the all-linear end of a folded CNN into one affine map when that takes fewer multiply-adds.

    After the last layer with a non-linear channel every layer, the global average pooling and
    the head are affine, so the logits are an affine function of that layer's outputs (of the
    input itself when no channel is non-linear). Every cut ``k`` from that layer to the last is
    priced (the layers kept up to ``k`` plus ``(channels x positions of layer k) x classes`` for
    the map); the cheapest wins, and no cut is made when none is cheaper than the folded network.
    The map is read off the tail in float64: ``c = g(0)``, column ``i`` of ``A`` is ``g(e_i) - c``.
    """
    layers = list(folded.layers)
    n = len(layers)
    last_nonlinear = max((i + 1 for i, layer in enumerate(layers) if layer.n_trunk), default=0)
    ref = next(folded.parameters())
    x0 = _add_channel_axis(torch.zeros(1, *input_shape, dtype=ref.dtype, device=ref.device), folded.dim)
    shapes = [(tuple(x0.shape[1:]), None)]
    a, r = x0, None
    with torch.no_grad():
        for layer in layers:
            a, r = layer(a, r)
            shapes.append(tuple(tuple(h.shape[1:]) if h is not None else None for h in (a, r)))
    per_module = _module_macs(folded, input_shape)
    layer_macs = [sum(per_module.get(id(m), 0) for m in layer.modules()) for layer in layers]
    total = sum(per_module.values())
    classes = (folded.head_trunk or folded.head_linear).out_features
    best_k, best = None, total
    for k in range(last_nonlinear, n + 1):
        dims = sum(math.prod(s) for s in shapes[k] if s is not None)
        cost = sum(layer_macs[:k]) + dims * classes
        if cost < best:
            best_k, best = k, cost
    if best_k is None:
        return folded, ""
    f64 = torch.float64
    tail_layers = [copy.deepcopy(layer).to(f64) for layer in layers[best_k:]]
    heads = [(copy.deepcopy(h).to(f64) if h is not None else None) for h in (folded.head_trunk, folded.head_linear)]
    head_bias = folded.head_bias.detach().to(f64) if folded.head_bias is not None else None

    def g(a: torch.Tensor | None, r: torch.Tensor | None) -> torch.Tensor:
        for layer in tail_layers:
            a, r = layer(a, r)
        out = torch.zeros(a.shape[0] if a is not None else r.shape[0], classes, dtype=f64, device=ref.device)
        for head, h in zip(heads, (a, r)):
            if head is not None and h is not None:
                out = out + head(h.flatten(2).mean(dim=2))
        return out + head_bias if head_bias is not None else out

    shape_a, shape_r = shapes[best_k]
    d_a = math.prod(shape_a) if shape_a is not None else 0
    d_r = math.prod(shape_r) if shape_r is not None else 0
    with torch.no_grad():
        def zeros(m, shape):
            return torch.zeros(m, *shape, dtype=f64, device=ref.device) if shape is not None else None
        c = g(zeros(1, shape_a), zeros(1, shape_r))[0]
        eye = torch.eye(d_a + d_r, dtype=f64, device=ref.device)
        a_basis = eye[:, :d_a].reshape(d_a + d_r, *shape_a) if shape_a is not None else None
        r_basis = eye[:, d_a:].reshape(d_a + d_r, *shape_r) if shape_r is not None else None
        cols = g(a_basis, r_basis) - c  # (d_a + d_r, classes)
    w_a = cols[:d_a].T.to(ref.dtype) if d_a else None
    w_r = cols[d_a:].T.to(ref.dtype) if d_r else None
    tail = _AffineTail(w_a, w_r, c.to(ref.dtype) if has_bias else None)
    out = FoldedCNN(folded.dim, layers[:best_k], None, None, None, None, tail=tail)
    source = f"the outputs of layer {best_k}" if best_k else "the input"
    why = (f"layers {best_k + 1}-{n}, " if best_k < n else "") + "the pooling and the head"
    return out, f"{why} composed into one affine map from {source} ({d_a + d_r} x {classes})"


def fold(model: nn.Module, input_shape: Sequence[int] | None = None, *,
         collapse: bool = True) -> FoldedMLP | FoldedCNN:
    """An equivalent network in which every linear unit has left the non-linear trunk.

    He et al. 2022 (arXiv 2203.11700) observe that linear features need no further
    non-linearity and can be detached. For a masked ``MLP`` with layers
    ``z_l = W_l h_{l-1} + b_l``, ``h_l[N_l] = sigma(z_l[N_l])`` (non-linear units),
    ``h_l[L_l] = z_l[L_l]`` (linear units), write the trunk activations ``a_0 = x`` and
    ``a_l = sigma(z_l[N_l])``. Every linear unit is affine in earlier trunk activations,
    ``z_l[L_l] = sum_s A^l_s a_s + c^l``, with

    ``A^l_s = W_l[L_l, N_{l-1}] [s = l-1] + W_l[L_l, L_{l-1}] A^{l-1}_s``,
    ``c^l = b_l[L_l] + W_l[L_l, L_{l-1}] c^{l-1}``,

    and the same recursion with the rows ``N_l`` (or the head's rows) gives the composed
    shortcuts into each trunk layer (or the output). A stretch of all-linear layers thus
    collapses into one affine map from the last trunk layer before it. The compositions are
    formed in float64 and stored in the model's dtype.

    For a masked ``CNN`` the convolutions are not composed (with zero padding at every layer a
    composed, larger kernel differs from the original at the borders); instead the linear
    channels run in an exact linear stream beside the non-linear trunk
    (:class:`FoldedCNN`): only non-linear channels pass through activations. Past the last
    layer with a non-linear channel the rest of the network (linear layers, pooling, head) is one
    affine map of that layer's outputs (of the input when every channel is linear); with
    ``input_shape`` given and ``collapse=True`` it is composed into one ``Linear`` (read off in
    float64) wherever that takes fewer multiply-adds (``report.collapsed`` says where).

    Any other masked model (a ``ResNet``, a user's model masked by :func:`apply_masks`) is
    folded on its traced graph, mask by mask (:mod:`sepmeasure.models.folding`): an all-linear
    mask between two ``Linear`` layers (with a batch norm in eval mode between them or not) is
    composed away, other all-linear masks become identities, and the report's ``kept`` says
    for each mask that could not be taken out why (e.g. inside a residual branch).

    Parameters
    ----------
    model : nn.Module
        With :class:`LinearityMask` activations (see :func:`apply_masks`) in hard mode; layers
        without a mask count as fully non-linear.
    input_shape : sequence of int, optional
        Shape of one input sample, for counting multiply-adds (default for an MLP:
        ``(in_features,)``; for a CNN, MACs are reported only when it is given), e.g.
        ``(1, 40)`` for a 1-D CNN.
    collapse : bool, default True
        CNN only: compose the all-linear end into one affine map when that saves multiply-adds
        (needs ``input_shape``); ``False`` keeps every convolution in the linear stream.

    Returns
    -------
    FoldedMLP, FoldedCNN or torch.fx.GraphModule (other models)
        Computes the same outputs (float32: within 1e-5; float64: within 1e-10); its
        ``.report`` is a :class:`FoldReport` with parameter and multiply-add counts
        before and after.

    Raises
    ------
    TypeError
        ``model`` is not a module, holds no :class:`LinearityMask` or cannot be traced; an
        entry of ``input_shape`` is not an int; an
        activation applied to kept (non-linear) units has parameters other than the per-channel
        slopes of ``nn.PReLU`` (e.g. a :class:`~sepmeasure.models.LinearizablePReLU`).
    ValueError
        An entry of ``input_shape`` is < 1; a :class:`LinearityMask` is soft (``hard=False``).

    Examples
    --------
    >>> m = apply_masks(MLP(2, [3, 2], 1))
    >>> m.layers[0].act.set_nonlinear(torch.tensor([True, True, False]))
    >>> m.layers[1].act.set_nonlinear(torch.tensor([False, False]))
    >>> f = fold(m)
    >>> x = torch.randn(4, 2)
    >>> torch.allclose(f(x), m(x), atol=1e-6)
    True
    >>> f.report.parameters_before, f.report.parameters_after, f.report.macs_before, f.report.macs_after
    (20, 11, 14, 8)
    """
    if input_shape is not None:
        input_shape = tuple(check_int(s, f"input_shape[{i}]", minimum=1) for i, s in enumerate(input_shape))
    if isinstance(model, MLP):
        return _fold_mlp(model, input_shape)
    if not isinstance(collapse, bool):
        raise TypeError(f"collapse: expected a bool, got {describe(collapse)}")
    if isinstance(model, CNN):
        return _fold_cnn(model, input_shape, collapse)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a masked model (see apply_masks), got {describe(model)}")
    if not _masks(model):
        raise TypeError(f"model: expected a model with LinearityMask modules (see apply_masks), got "
                        f"{type(model).__name__} without any")
    program, units, n_linear, kept = fold_traced(model, LinearityMask)
    macs = (_count_macs(model, input_shape), _count_macs(program, input_shape)) if input_shape else (None, None)
    program.report = FoldReport(type(model).__name__, "traced", units, n_linear, _count_parameters(model),
                                _count_parameters(program), macs[0], macs[1], input_shape, tuple(kept))
    return program
