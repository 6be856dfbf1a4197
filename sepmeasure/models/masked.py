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

Where the code lives: the mask module in :mod:`sepmeasure.models.linearity_mask`; putting
masks into a model, their penalty and counts here; :func:`fold` and :class:`FoldReport` in
:mod:`sepmeasure.models.folded` (the MLP in :mod:`~sepmeasure.models.folded_mlp`, the CNN in
:mod:`~sepmeasure.models.folded_cnn`, any other model on its traced graph in
:mod:`~sepmeasure.models.folding`). Every one of these names is importable from here.

Convention: a "linear unit" is a unit whose mask value in the forward pass is exactly 0.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import pandas as pd
import torch
from torch import nn

from ..validation import check_positive, describe
from .folded import FoldReport, fold
from .folded_cnn import FoldedCNN
from .folded_mlp import FoldedMLP
from .linearity_mask import LinearityMask, mask_modules
from .sites import find_sites, replace_sites, resolve_sites

__all__ = ["LinearityMask", "MaskPenalty", "apply_masks", "linear_fraction", "fold", "FoldReport", "FoldedMLP",
           "FoldedCNN", "activation_sites"]


# --------------------------------------------------------------------------------- sites
def activation_sites(model: nn.Module) -> list[tuple[str, int]]:
    """``(name, channels)`` of every activation site of a traced model (see :mod:`sepmeasure.models.sites`).

    Activation modules are named by their module name, functional calls (``F.relu``) by their
    graph node name.

    Examples
    --------
    >>> from sepmeasure.models import MLP
    >>> activation_sites(MLP(4, [3, 2], 1))
    [('layers.0.act', 3), ('layers.1.act', 2)]
    """
    return [(s.name, s.channels) for s in find_sites(model)]



# --------------------------------------------------------------------------------- penalty
class MaskPenalty:
    """Penalty rewarding linear units: ``weight * mean over all mask units of sigmoid(logit)``.

    The expected share of non-linear units under the straight-through surrogate; minimising
    it pushes mask logits below 0 (He et al. 2022 add such a sparsity term to the task loss).
    Usable as ``fit(model, ..., penalty=MaskPenalty(0.01))``.

    Examples
    --------
    >>> from sepmeasure.models import MLP
    >>> m = apply_masks(MLP(4, [3], 2))
    >>> float(MaskPenalty(0.5)(m).detach()) == 0.5 * float(torch.sigmoid(torch.tensor(1.0)))
    True
    """

    def __init__(self, weight: float = 0.01) -> None:
        self.weight = check_positive(weight, "weight", strict=False)

    def __call__(self, model: nn.Module) -> torch.Tensor:
        masks = mask_modules(model, none_raises=ValueError)
        probs = torch.cat([m.probabilities() for _, m in masks])
        return self.weight * probs.mean()


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
    >>> from sepmeasure.models import MLP
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
    >>> from sepmeasure.models import MLP
    >>> m = apply_masks(MLP(4, [2], 2))
    >>> m.layers[0].act.set_nonlinear(torch.tensor([True, False]))
    >>> linear_fraction(m).linear_fraction.tolist()
    [0.5]
    """
    masks = mask_modules(model, none_raises=ValueError)
    rows = []
    for name, m in masks:
        with torch.no_grad():
            linear = int((m.mask() == 0).sum())
        rows.append({"layer": name, "units": m.channels, "linear_units": linear,
                     "linear_fraction": linear / m.channels, "mask": "hard" if m.hard else "soft"})
    return pd.DataFrame(rows)
