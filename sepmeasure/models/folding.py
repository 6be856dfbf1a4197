"""Folding the linear units of any traced masked model (:func:`~sepmeasure.models.fold`).

The package's own masked ``MLP`` and ``CNN`` have exact dedicated folds (composed shortcuts,
a linear stream; see :mod:`sepmeasure.models.folded_mlp` and :mod:`sepmeasure.models.folded_cnn`).
Any other masked model is folded on its traced graph (:mod:`sepmeasure.graph`), each
:class:`LinearityMask` on its own:

* every unit non-linear: the mask is replaced by its activation;
* every unit linear, between two ``Linear`` layers (possibly with a batch norm in eval mode
  after the first) that feed only each other: the three collapse into one ``Linear``,
  composed in float64 (``W = W2 diag(s) W1``, ``b = W2 (s b1 + t) + b2`` with the batch norm
  ``s z + t``): a layer of parameters and multiply-adds is gone;
* every unit linear elsewhere: the mask is removed (the identity), nothing is composed, and
  the report says why: inside a residual branch the linear map meets the skip connection at
  the sum, and between convolutions a composed kernel differs from the two at zero-padded
  borders;
* some units linear, some not: kept as an activation on the non-linear channels only.

Every kept mask is listed in ``FoldReport.kept`` with the reason.
"""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
from torch import nn

from ..graph import trace_model
from ..graph import copy_graph_attributes
from .layers import along_channels

__all__ = ["PartialActivation", "fold_traced"]


class PartialActivation(nn.Module):
    """``activation`` on the channels where ``nonlinear`` is true, the identity elsewhere."""

    graph_leaf = True  # one node of the traced graph (sepmeasure.graph)

    def __init__(self, activation: nn.Module, nonlinear: torch.Tensor, channel_axis: int = 1) -> None:
        super().__init__()
        self.activation = activation
        self.channel_axis = channel_axis
        self.register_buffer("nonlinear", nonlinear.clone().bool())

    def nonlinear_channels(self) -> torch.Tensor:
        return self.nonlinear.clone()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.where(along_channels(self.nonlinear, z, self.channel_axis), self.activation(z), z)


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _compose(lin1: nn.Linear, bn: nn.Module | None, lin2: nn.Linear) -> nn.Linear:
    f64 = torch.float64
    w1 = lin1.weight.detach().to(f64)
    b1 = lin1.bias.detach().to(f64) if lin1.bias is not None else torch.zeros(w1.shape[0], dtype=f64,
                                                                             device=w1.device)
    if bn is not None:
        s = bn.weight.detach().to(f64) if bn.affine else torch.ones_like(b1)
        s = s / torch.sqrt(bn.running_var.detach().to(f64) + bn.eps)
        t = (bn.bias.detach().to(f64) if bn.affine else torch.zeros_like(b1)) - bn.running_mean.detach().to(f64) * s
    else:
        s, t = torch.ones_like(b1), torch.zeros_like(b1)
    w2 = lin2.weight.detach().to(f64)
    b2 = lin2.bias.detach().to(f64) if lin2.bias is not None else torch.zeros(w2.shape[0], dtype=f64,
                                                                             device=w2.device)
    out = nn.Linear(w1.shape[1], w2.shape[0]).to(device=lin2.weight.device, dtype=lin2.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(w2 @ (s[:, None] * w1))
        out.bias.copy_(w2 @ (s * b1 + t) + b2)
    return out


def _free(root: nn.Module, base: str) -> str:
    base = base.replace(".", "_")
    name, k = base, 1
    while hasattr(root, name):
        name, k = f"{base}_{k}", k + 1
    return name


def fold_traced(model: nn.Module, mask_type: type) -> tuple[nn.Module, int, int, list[tuple[str, str]]]:
    """The folded program of a masked traced model; ``(program, units, linear units, kept)``."""
    graph = trace_model(copy.deepcopy(model))  # the folded program shares nothing with the masked model
    gm = graph.graph_module
    root = nn.Module()
    for name, child in gm.named_children():
        _add(gm, root, name, child)
    modules = dict(gm.named_modules())
    units = n_linear = 0
    kept: list[tuple[str, str]] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), mask_type):
            continue
        mask = modules[node.target]
        if not mask.hard:
            raise ValueError(f"model: fold needs binary masks, got a soft (non-binary) mask at {node.target!r} "
                             f"(hard=False); set hard=True first")
        with torch.no_grad():
            nonlinear = mask.mask() != 0
        units += nonlinear.numel()
        n_linear += int((~nonlinear).sum())
        site = node.target
        name = _free(root, node.target + "_folded")
        if bool(nonlinear.all()):
            _add(gm, root, name, mask.activation)
            node.target = name
            continue
        if bool(nonlinear.any()):
            _add(gm, root, name, PartialActivation(mask.activation, nonlinear, mask.channel_axis))
            node.target = name
            kept.append((site, f"{int((~nonlinear).sum())} of {nonlinear.numel()} units linear, "
                                      f"mixed with non-linear ones in the same layer: they stay in place as "
                                      f"identities (only MLP and CNN get a separate linear stream)"))
            continue
        # every unit linear: compose Linear [-> BatchNorm eval] -> mask -> Linear when nothing else reads them
        before, bn = node.args[0], None
        if isinstance(before, fx.Node) and before.op == "call_module" and \
                isinstance(modules.get(before.target), nn.modules.batchnorm._BatchNorm) and \
                not modules[before.target].training and modules[before.target].running_mean is not None and \
                _single_user(before) is node:
            bn, before = before, before.args[0]
        after = _single_user(node)
        lin1 = modules.get(before.target) if isinstance(before, fx.Node) and before.op == "call_module" else None
        lin2 = modules.get(after.target) if after is not None and after.op == "call_module" else None
        chain_ok = isinstance(lin1, nn.Linear) and isinstance(lin2, nn.Linear) and \
            _single_user(before) is (bn if bn is not None else node)
        if chain_ok:
            merged = _compose(lin1, modules[bn.target] if bn is not None else None, lin2)
            mname = _free(root, f"{before.target}_{after.target}_composed")
            _add(gm, root, mname, merged)
            with gm.graph.inserting_before(after):
                new = gm.graph.call_module(mname, (before.args[0],))
            after.replace_all_uses_with(new)
            for dead in (after, node, bn, before):
                if dead is not None:
                    gm.graph.erase_node(dead)
            continue
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)
        why = ("inside a residual branch or between convolutions: the linear map cannot be composed with its "
               "neighbours (the skip joins at the sum; composed convolutions differ at zero-padded borders)")
        if isinstance(lin1, nn.Linear) and isinstance(lin2, nn.Linear):
            why = "its input or output is also read elsewhere, so the two Linear layers cannot be composed"
        kept.append((site, f"all {nonlinear.numel()} units linear; the activation is removed but {why}"))
    copy_graph_attributes(gm, root)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    program = fx.GraphModule(root, gm.graph, type(model).__name__ + "Folded")
    return program, units, n_linear, kept


def _add(gm: fx.GraphModule, root: nn.Module, name: str, module: nn.Module) -> None:
    """Register a new module on the program being rewritten and on the root it will be built from."""
    gm.add_module(name, module)
    root.add_module(name, module)
