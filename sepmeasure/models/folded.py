"""Folding a masked network: :func:`fold` and its :class:`FoldReport`.

:func:`fold` takes every linear unit (mask exactly 0, see :mod:`sepmeasure.models.masked`) out
of the non-linear trunk of a masked network. The package's own ``MLP`` and ``CNN`` have exact
dedicated folds (:mod:`sepmeasure.models.folded_mlp`: composed shortcuts;
:mod:`sepmeasure.models.folded_cnn`: a linear stream and an affine tail); any other masked
model is folded on its traced graph (:mod:`sepmeasure.models.folding`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import pandas as pd
from torch import nn

from ..validation import describe
from .folded_cnn import FoldedCNN, fold_cnn
from .folded_mlp import FoldedMLP, fold_mlp
from .folding import fold_traced
from .layers import check_input_shape, count_macs
from .linearity_mask import LinearityMask, mask_modules
from .standard import CNN, MLP

__all__ = ["fold", "FoldReport"]


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
        ``model`` is not a module, holds no :class:`LinearityMask` or cannot be traced; ``input_shape``
        is not a sequence of ints; an
        activation applied to kept (non-linear) units has parameters other than the per-channel
        slopes of ``nn.PReLU`` (e.g. a :class:`~sepmeasure.models.LinearizablePReLU`).
    ValueError
        ``input_shape`` is empty, has an entry < 1, holds more than ``MAX_INPUT_SIZE`` (2**24)
        entries, or (an MLP) does not hold ``in_features`` entries; a :class:`LinearityMask` is soft
        (``hard=False``).

    Examples
    --------
    >>> import torch
    >>> from sepmeasure.models import MLP, apply_masks
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
        input_shape = check_input_shape(input_shape)
    if isinstance(model, MLP):
        if input_shape is not None and math.prod(input_shape) != model.config["in_features"]:
            raise ValueError(f"input_shape: expected a shape of {model.config['in_features']} entries (the MLP's "
                             f"in_features), got {input_shape}")
        folded, units, n_linear = fold_mlp(model)
        shape = input_shape or (model.config["in_features"],)
        folded.report = _report(model, folded, "MLP", "composed_shortcuts", units, n_linear, shape, shape)
        return folded
    if not isinstance(collapse, bool):
        raise TypeError(f"collapse: expected a bool, got {describe(collapse)}")
    if isinstance(model, CNN):
        folded, units, n_linear, collapsed = fold_cnn(model, input_shape, collapse)
        method = "linear_stream" + ("+affine_tail" if collapsed else "")
        folded.report = _report(model, folded, "CNN", method, units, n_linear, input_shape, input_shape,
                                collapsed=collapsed)
        return folded
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a masked model (see apply_masks), got {describe(model)}")
    mask_modules(model, none_raises=TypeError)
    program, units, n_linear, kept = fold_traced(model, LinearityMask)
    program.report = _report(model, program, type(model).__name__, "traced", units, n_linear, input_shape,
                             input_shape or None, kept=tuple(kept))
    return program


def _count_parameters(model: nn.Module) -> int:
    """Parameters of ``model`` but the mask logits (they only decide the structure)."""
    skip = {id(m.logits) for _, m in mask_modules(model)}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def _report(model: nn.Module, folded: nn.Module, name: str, method: str, units: int, n_linear: int,
            input_shape: tuple[int, ...] | None, macs_shape: tuple[int, ...] | None,
            kept: tuple[tuple[str, str], ...] = (), collapsed: str = "") -> FoldReport:
    """The :class:`FoldReport` of ``model`` folded into ``folded`` (multiply-adds on ``macs_shape`` if given)."""
    macs = (count_macs(model, macs_shape), count_macs(folded, macs_shape)) if macs_shape is not None else (None, None)
    return FoldReport(name, method, units, n_linear, _count_parameters(model), _count_parameters(folded), macs[0],
                      macs[1], input_shape, kept, collapsed)
