"""Folding a masked :class:`~sepmeasure.models.CNN`: linear channels run in a linear stream.

Convolutions are not composed (with zero padding at every layer a composed, larger kernel
differs from the original at the borders); instead the linear channels run in an exact linear
stream beside the non-linear trunk (:class:`FoldedCNN`), and the all-linear end of the network
may be composed into one affine map (:func:`collapse_linear_tail`).
"""
from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..inputs import model_device
from .layers import add_channel_axis, along_channels, module_macs, restrict_activation
from .linearity_mask import layer_masks
from .standard import CNN

if TYPE_CHECKING:
    from .folded import FoldReport

__all__ = ["FoldedCNN", "fold_cnn", "collapse_linear_tail"]


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
            z = z + along_channels(bias, z, 1)
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
        a, r = add_channel_axis(x, self.dim), None
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


def fold_cnn(model: CNN, input_shape: tuple[int, ...] | None,
             collapse: bool = True) -> tuple[FoldedCNN, int, int, str]:
    """``model`` folded (see :func:`~sepmeasure.models.fold`), its number of units and of linear units, and
    what was composed into an affine tail (empty when nothing was)."""
    device = model_device(model) or torch.device("cpu")
    layers = layer_masks(model)
    in_trunk = torch.arange(model.config["in_channels"], device=device)
    in_linear = torch.zeros(0, dtype=torch.long, device=device)
    folded_layers = []
    n_units = n_linear = 0
    for block, (name, nonlinear, act) in zip(model.layers, layers):
        out_trunk = torch.nonzero(nonlinear).flatten()
        out_linear = torch.nonzero(~nonlinear).flatten()
        n_units += nonlinear.numel()
        n_linear += int(out_linear.numel())
        act_n = restrict_activation(act, out_trunk, name) if out_trunk.numel() else None
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
        folded, collapsed = collapse_linear_tail(folded, input_shape, model.config["bias"])
    return folded, n_units, n_linear, collapsed

def collapse_linear_tail(folded: FoldedCNN, input_shape: tuple[int, ...],
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
    x0 = add_channel_axis(torch.zeros(1, *input_shape, dtype=ref.dtype, device=ref.device), folded.dim)
    shapes = [(tuple(x0.shape[1:]), None)]
    a, r = x0, None
    with torch.no_grad():
        for layer in layers:
            a, r = layer(a, r)
            shapes.append(tuple(tuple(h.shape[1:]) if h is not None else None for h in (a, r)))
    per_module = module_macs(folded, input_shape)
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
