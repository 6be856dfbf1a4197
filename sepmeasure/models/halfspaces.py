"""The gates of a DLGN as half-spaces of the input (:func:`effective_halfspaces`).

Yadav, Ramaswamy & Lakshminarayanan 2024 (*Half-Space Feature Learning*): every pre-activation
of a deep *linear* gating network is an affine function of the input, so every hard gate of a
:class:`~sepmeasure.models.DLGN` is the indicator of a half-space ``{x : <normal, x> + offset > 0}``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from ..validation import describe
from .gated import DLGN
from .layers import check_input_shape

__all__ = ["EffectiveHalfSpaces", "effective_halfspaces"]


@dataclass(frozen=True)
class EffectiveHalfSpaces:
    """Each DLGN gate as a half-space ``{x : <normal, x> + offset > 0}`` of the input.

    Attributes
    ----------
    normals : list of Tensor
        ``normals[l]`` has shape ``(*gate_shape_l, *input_shape)``: for ``arch="mlp"``
        ``(width_l, in_features)``, for ``arch="cnn"`` ``(C_l, *spatial_l, C_in, *spatial_in)``.
    offsets : list of Tensor
        ``offsets[l]`` has shape ``gate_shape_l``.
    input_shape : tuple of int
        Shape of one (flattened / channel-axis) input sample.
    method : str
        ``"weight_products"`` (MLP: ``W_l ... W_1`` and ``b_l + W_l b_{l-1} + ...``),
        ``"layer_weights"`` (MLP with shallow gating: ``W_l`` and ``b_l``) or
        ``"basis_images"`` (CNN: the bias-free convolution stack, or with shallow gating the
        layer's own convolution, applied to the standard basis, which is the composed linear map).
    """

    normals: list[torch.Tensor]
    offsets: list[torch.Tensor]
    input_shape: tuple[int, ...]
    method: str

    def pre_activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``<normal, x> + offset`` for a batch ``x`` of shape ``(N, *input_shape)`` on the normals' device."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a Tensor of shape (N, *input_shape), got {describe(x)}")
        if self.normals and x.device != self.normals[0].device:
            raise ValueError(f"x: expected a tensor on the device of the half-spaces ({self.normals[0].device}), "
                             f"got one on {x.device}")
        flat = x.reshape(x.shape[0], -1)
        out = []
        for a, c in zip(self.normals, self.offsets):
            gate_shape = c.shape
            q = flat.to(a.dtype) @ a.reshape(math.prod(gate_shape), -1).T + c.reshape(1, -1)
            out.append(q.reshape(x.shape[0], *gate_shape))
        return out

    def to_frame(self) -> pd.DataFrame:
        """One row per gate: layer, unit (flat index), offset and the normal's Euclidean norm."""
        rows = []
        for layer, (a, c) in enumerate(zip(self.normals, self.offsets)):
            norms = a.reshape(c.numel(), -1).norm(dim=1).detach().cpu()
            for unit, (off, nrm) in enumerate(zip(c.reshape(-1).detach().cpu().tolist(), norms.tolist())):
                rows.append({"layer": layer, "unit": unit, "offset": off, "normal_norm": nrm})
        return pd.DataFrame(rows)


MAX_BASIS_SIZE = 2 ** 14
"""The most entries of one input sample of a convolutional DLGN in :func:`effective_halfspaces`
(its basis holds one image per entry: 2**14 x 2**14 float64, 2 GiB)."""


@torch.no_grad()
def effective_halfspaces(model: DLGN, input_shape: Sequence[int] | None = None) -> EffectiveHalfSpaces:
    """Effective normal and offset in input space of every gate of a DLGN.

    Yadav, Ramaswamy & Lakshminarayanan 2024 (*Half-Space Feature Learning*): with a deep
    linear gating network ``q_l = W_l q_{l-1} + b_l``, ``q_0 = x``,

    ``q_l = A_l x + c_l``,  ``A_l = W_l W_{l-1} ... W_1``,  ``c_l = W_l c_{l-1} + b_l`` (``c_0 = 0``),

    (with shallow gating, ``q_l = W_l x + b_l``: ``A_l = W_l``, ``c_l = b_l``), so the gate of unit ``i``
    of layer ``l`` is on exactly on the half-space
    ``{x : <A_l[i], x> + c_l[i] > 0}``. The products are formed in float64 and returned in the
    model's dtype, on its device.

    Parameters
    ----------
    model : DLGN
        A deep linearly gated network (``arch="mlp"`` or ``"cnn"``); a :class:`DGN` is refused.
    input_shape : sequence of int, optional
        Required for ``arch="cnn"``: the shape of one input sample with its channel axis,
        e.g. ``(1, 40)``; the map depends on the length. For ``arch="mlp"`` it is optional
        and, when given, must hold ``in_features`` entries (a non-empty tuple of ints >= 1).

    Returns
    -------
    EffectiveHalfSpaces
        One normal and one offset per gated layer (see its attributes for the shapes);
        ``method`` is ``"weight_products"`` (MLP), ``"layer_weights"`` (MLP, shallow gating) or
        ``"basis_images"`` (CNN).

    Raises
    ------
    TypeError
        ``model`` is not a :class:`DLGN`; ``input_shape`` is not a sequence of ints.
    ValueError
        ``input_shape`` is empty or has an entry < 1; ``arch="mlp"`` and it does not hold
        ``in_features`` entries; ``arch="cnn"`` and it is None, holds more than
        ``MAX_BASIS_SIZE`` (2**14) entries, or is not ``(in_channels, L)`` (``dim=1``) /
        ``(in_channels, H, W)`` (``dim=2``).

    Examples
    --------
    >>> m = DLGN(3, [4, 2], 2, gate="hard")
    >>> hs = effective_halfspaces(m)
    >>> x = torch.randn(6, 3)
    >>> [torch.allclose(a, q, atol=1e-6) for a, q in zip(hs.pre_activations(x), m.gating_pre_activations(x))]
    [True, True]
    """
    if not isinstance(model, DLGN):
        raise TypeError(f"model: expected a DLGN (a deep *linear* gating network), got {describe(model)}")
    if input_shape is not None:
        input_shape = check_input_shape(input_shape)
        if model.arch == "mlp" and math.prod(input_shape) != model.in_features:
            raise ValueError(f"input_shape: expected a shape of {model.in_features} entries (the DLGN's "
                             f"in_features), got {input_shape}")
        if model.arch == "cnn" and math.prod(input_shape) > MAX_BASIS_SIZE:
            raise ValueError(f"input_shape: expected at most MAX_BASIS_SIZE = 2**14 entries in one sample (a "
                             f"convolutional DLGN's half-spaces are read off a basis of one image per entry), "
                             f"got {input_shape} ({math.prod(input_shape)} entries)")
    ref = next(model.gating.parameters())
    dtype, device = ref.dtype, ref.device
    shallow = model.gating_structure == "shallow"
    if model.arch == "mlp":
        a = torch.eye(model.in_features, dtype=torch.float64, device=device)
        c = torch.zeros(model.in_features, dtype=torch.float64, device=device)
        normals, offsets = [], []
        for layer in model.gating.layers:
            w = layer.weight.to(torch.float64)
            bias = layer.bias.to(torch.float64) if layer.bias is not None else torch.zeros_like(w[:, 0])
            a, c = (w, bias) if shallow else (w @ a, w @ c + bias)
            normals.append(a.to(dtype))
            offsets.append(c.to(dtype))
        method = "layer_weights" if shallow else "weight_products"
        return EffectiveHalfSpaces(normals, offsets, (model.in_features,), method)
    if input_shape is None:
        raise ValueError("input_shape: expected the shape of one input sample, e.g. (1, 40), for a convolutional "
                         "DLGN, got None")
    shape = input_shape
    if len(shape) != model.dim + 1 or shape[0] != model.in_features:
        raise ValueError(f"input_shape: expected (in_channels={model.in_features}, "
                         f"{', '.join(['L'] * model.dim)}), got {tuple(input_shape)}")
    d = math.prod(shape)
    basis = torch.eye(d, dtype=torch.float64, device=device).reshape(d, *shape)
    zero = torch.zeros(1, *shape, dtype=torch.float64, device=device)
    normals, offsets = [], []
    h, h0 = basis, zero
    for layer in model.gating.layers:
        w = layer.weight.to(torch.float64)
        bias = layer.bias.to(torch.float64) if layer.bias is not None else None
        if shallow:  # every layer reads the input
            h, h0 = basis, zero
        h = layer._conv_forward(h, w, None)  # the linear part: applied to the standard basis
        h0 = layer._conv_forward(h0, w, bias)  # the affine part at x = 0
        gate_shape = h.shape[1:]
        normals.append(h.reshape(d, -1).T.reshape(*gate_shape, *shape).to(dtype))
        offsets.append(h0[0].to(dtype))
    return EffectiveHalfSpaces(normals, offsets, shape, "basis_images")
