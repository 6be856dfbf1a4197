"""The mask module of He et al. 2022 (:class:`LinearityMask`) and reading masks off a model.

``h = m * sigma(z) + (1 - m) * z`` with one mask value ``m`` per unit or channel; see
:mod:`sepmeasure.models.masked` for putting masks into a model and training them, and
:mod:`sepmeasure.models.folded` for folding the linear units away.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..inputs import model_device
from ..validation import describe
from .layers import along_channels, check_channel_axis, check_channels, check_float32, check_size, modules_of_type
from .sites import find_sites

__all__ = ["LinearityMask", "mask_modules", "layer_masks"]


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
        self.channel_axis = check_channel_axis(channel_axis)
        if not isinstance(activation, nn.Module):
            raise TypeError(f"activation: expected an nn.Module, got {describe(activation)}")
        if isinstance(activation, LinearityMask):
            raise TypeError("activation: expected an activation, got a LinearityMask (masks do not nest)")
        channels = check_size(channels, "channels")
        if isinstance(init_logit, bool) or not isinstance(init_logit, (int, float)) or not math.isfinite(init_logit):
            raise TypeError(f"init_logit: expected a finite real number, got {describe(init_logit)}")
        check_float32(init_logit, "init_logit")
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
        check_channels(z, self.channels, self.channel_axis)
        m = along_channels(self.mask().to(z.dtype), z, self.channel_axis)
        return m * self.activation(z) + (1 - m) * z

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hard={self.hard}"


def mask_modules(model: nn.Module, none_raises: type[Exception] | None = None) -> list[tuple[str, LinearityMask]]:
    """``(name, mask)`` of every :class:`LinearityMask` of ``model`` (``named_modules`` order).

    ``none_raises``: the exception type raised (saying so) for a model without any mask.
    """
    what = None if none_raises is None else "LinearityMask modules (see apply_masks)"
    return modules_of_type(model, LinearityMask, what, none_raises or ValueError)


def layer_masks(model: nn.Module) -> list[tuple[str, torch.Tensor, nn.Module]]:
    """Per hidden layer: (name, non-linear flags, the activation sigma applied to non-linear units)."""
    out = []
    device = model_device(model) or torch.device("cpu")
    for site in find_sites(model):
        name, channels = site.name, site.channels
        act = model.get_submodule(name)
        if isinstance(act, LinearityMask):
            if not act.hard:
                raise ValueError(f"model: fold needs binary masks, got a soft (non-binary) mask at {name!r} "
                                 f"(hard=False); set hard=True first")
            with torch.no_grad():
                nonlinear = act.mask() != 0
            out.append((name, nonlinear, act.activation))
        else:
            out.append((name, torch.ones(channels, dtype=torch.bool, device=device), act))
    return out
