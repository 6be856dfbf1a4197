"""Folding a masked :class:`~sepmeasure.models.MLP`: linear units become composed shortcuts.

Every linear unit is affine in earlier trunk activations, so its map is composed (in float64)
into the layers it feeds; only the non-linear units remain as trunk nodes
(:class:`FoldedMLP`). The recursion is written out in :func:`~sepmeasure.models.fold`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .layers import restrict_activation
from .linearity_mask import layer_masks
from .standard import MLP

if TYPE_CHECKING:
    from .folded import FoldReport

__all__ = ["FoldedMLP", "fold_mlp"]


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


def fold_mlp(model: MLP) -> tuple[FoldedMLP, int, int]:
    """``model`` folded (see :func:`~sepmeasure.models.fold`), its number of units and of linear units."""
    ref = next(model.parameters())
    dtype, device = ref.dtype, ref.device
    f64 = torch.float64
    has_bias = model.head.bias is not None
    layers = layer_masks(model)
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
                                      restrict_activation(act, nl_idx, name)))
            kept[l] = nl_idx.tolist()
            dims[l] = int(nl_idx.numel())
            prev_trunk = l
        else:
            prev_trunk = None
        # columns of the next layer's weight: original unit indices of the trunk / linear parts
        prev_trunk_units, prev_linear_units = nl_idx, li_idx
        lin_maps = {s: m[li_idx] for s, m in maps.items()} if li_idx.numel() else {}
        lin_bias = b[li_idx]
    return FoldedMLP(model.config["in_features"], trunk, output, kept, None), n_units, n_linear
