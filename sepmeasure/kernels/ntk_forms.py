"""Per-call arrays and the contraction forms of a dense weight's NTK contribution, with their cost model
(internal API of ``sepmeasure.kernels``).

For a dense call ``z_t = W a_t + b`` with inputs ``A (n, T, d)`` and output cotangents ``G (K, n, T, o)``,
the weight contributes ``Θ_kl(x, x') = Σ_{t,s} ⟨a_t, a'_s⟩ ⟨g_{k,t}, g'_{l,s}⟩``: :func:`gram_term` computes it
as input Gram × cotangent Gram, :func:`outer_jacobian` builds the per-sample weight gradient to be contracted,
:func:`factored_term` uses cotangents that factor over outputs. :func:`choose_form` prices them.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .ntk_taps import Call

__all__ = ["ELEMENT_COST", "FORMS", "NOMINAL_ROWS", "CallShape", "choose_form", "conv_patches", "cotangent_gram",
           "dense_arrays", "factored_term", "factorize", "gram_term", "norm_jacobians", "outer_jacobian",
           "parallel_residual", "summed_outer"]

FORMS: tuple[str, ...] = ("gram", "outer", "factored")
# Rows used to weigh per-row against per-pair costs when choosing a form.
NOMINAL_ROWS = 256
# A multiply-add counts 1; writing and reading one element of an intermediate counts this much.
ELEMENT_COST = 4.0


def conv_patches(module: nn.Conv1d | nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    """``(n, C, *spatial) -> (n, T, C·Π kernel)``, in the order of ``weight.reshape(out, -1)``
    (for groups: the ``C/groups·Π kernel`` columns of each group one after the other)."""
    one_d = isinstance(module, nn.Conv1d)
    pads: list[int] = []   # F.pad order: last axis first
    for i in reversed(range(len(module.kernel_size))):
        if isinstance(module.padding, str):
            total = 0 if module.padding == "valid" else module.dilation[i] * (module.kernel_size[i] - 1)
            pads += [total // 2, total - total // 2]
        else:
            pads += [module.padding[i], module.padding[i]]
    # symmetric zero padding is left to unfold (no padded copy of the input)
    inside = module.padding_mode == "zeros" and all(pads[i] == pads[i + 1] for i in range(0, len(pads), 2))
    padding = tuple(reversed(pads[::2])) if inside else (0,) * len(module.kernel_size)
    if any(pads) and not inside:
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        a = F.pad(a, pads, mode=mode)
    if one_d:
        a = a.unsqueeze(-2)
        padding = (0, *padding)
    kernel = (1, *module.kernel_size) if one_d else module.kernel_size
    dilation = (1, *module.dilation) if one_d else module.dilation
    stride = (1, *module.stride) if one_d else module.stride
    cols = F.unfold(a.contiguous(), kernel, dilation=dilation, padding=padding, stride=stride)   # (n, C·Πk, T)
    return cols.transpose(1, 2)


def dense_arrays(call: Call, grad: torch.Tensor, need_inputs: bool
                  ) -> tuple[torch.Tensor | None, torch.Tensor, int]:
    """Inputs ``A (n, T, d)`` (when needed), cotangents ``G (K, n, T, o)`` and the group count."""
    module, a = call.site.module, call.inputs
    k, n = grad.shape[:2]
    if call.site.kind == "conv":
        g = grad.reshape(k, n, module.out_channels, -1).transpose(-1, -2)
        return (conv_patches(module, a) if need_inputs else None), g, module.groups
    d = a.shape[-1]
    return (a.reshape(n, -1, d) if need_inputs else None), grad.reshape(k, n, -1, grad.shape[-1]), 1


def norm_jacobians(call: Call, grad: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{name: (n, K, C)}`` for the scale and shift of one norm call.

    Reduced over the positions in the layout the cotangents come in (a product and a sum over the
    position axes; no transposed copy of the ``K``-fold cotangents).
    """
    module, xhat = call.site.module, call.inputs
    k, n = grad.shape[:2]
    if isinstance(module, nn.LayerNorm):      # (K, n, *positions, *normalized_shape)
        positions = tuple(range(2, grad.ndim - len(module.normalized_shape)))
    else:                                     # (K, n, C, *positions)
        positions = tuple(range(3, grad.ndim))
    out = {}
    if call.weight:
        w = grad * xhat
        out[call.weight] = (w.sum(dim=positions) if positions else w).reshape(k, n, -1).transpose(0, 1)
    if call.bias:
        out[call.bias] = (grad.sum(dim=positions) if positions else grad).reshape(k, n, -1).transpose(0, 1)
    return out


def outer_jacobian(a: torch.Tensor, g: torch.Tensor, groups: int) -> torch.Tensor:
    """``Σ_t g_{k,t} ⊗ a_t`` → ``(n, K, numel(W))``: the weight gradient of every sample and output."""
    k, n, t, o = g.shape
    if groups == 1:
        gp = g.permute(1, 0, 3, 2)                                       # (n, K, o, T)
        if k == 1 or o == 1 or gp.stride(1) == o * gp.stride(2):        # K·o is one axis: one product
            return torch.bmm(gp.reshape(n, k * o, t), a).view(n, k, -1)
        out = a.new_empty((n, k, o, a.shape[-1]))                        # else one product per output
        for i in range(k):
            out[:, i] = torch.bmm(gp[:, i], a)
        return out.view(n, k, -1)
    d = a.shape[-1] // groups
    gg = g.reshape(k, n, t, groups, o // groups).permute(1, 3, 0, 4, 2).reshape(n * groups, k * (o // groups), t)
    aa = a.reshape(n, t, groups, d).permute(0, 2, 1, 3).reshape(n * groups, t, d)
    j = torch.bmm(gg, aa).view(n, groups, k, o // groups, d)
    return j.transpose(1, 2).reshape(n, k, -1)


def summed_outer(a: torch.Tensor, g: torch.Tensor, groups: int) -> torch.Tensor:
    """``Σ_n Σ_t g_{k,t} ⊗ a_t`` → ``(K, numel(W))``: :func:`outer_jacobian` summed over samples, in one
    matrix product when ungrouped."""
    if groups != 1:
        return outer_jacobian(a, g, groups).sum(0)
    k, n, t, o = g.shape
    return (g.permute(0, 3, 1, 2).reshape(k * o, n * t) @ a.reshape(n * t, -1)).view(k, -1)


def cotangent_gram(ga: torch.Tensor, gb: torch.Tensor, output: str) -> torch.Tensor:
    """``⟨g_k(x_a), g_l(x_b)⟩`` → ``(na, nb, K, K)``, or its trace → ``(na, nb)``; ``ga``: ``(K, na, o)``."""
    k, na, o = ga.shape
    nb = gb.shape[1]
    if output == "full":
        return (ga.transpose(0, 1).reshape(na * k, o) @ gb.transpose(0, 1).reshape(nb * k, o).T
                ).view(na, k, nb, k).permute(0, 2, 1, 3)
    return torch.bmm(ga, gb.transpose(1, 2)).sum(0)


def gram_term(a1: torch.Tensor, g1: torch.Tensor, a2: torch.Tensor, g2: torch.Tensor, output: str,
               plus_one: bool) -> torch.Tensor:
    """``Σ_{t,s} ⟨a1_t, a2_s⟩ ⟨g1_{k,t}, g2_{l,s}⟩`` for one pair of calls (``+1`` adds the bias)."""
    na, t1, d = a1.shape
    nb, t2, _ = a2.shape
    k, o = g1.shape[0], g1.shape[3]
    if t1 == 1 and t2 == 1:
        s = a1[:, 0] @ a2[:, 0].T
        if plus_one:
            s = s + 1
        c = cotangent_gram(g1[:, :, 0], g2[:, :, 0], output)
        return c * (s[:, :, None, None] if output == "full" else s)
    s = (a1.reshape(na * t1, d) @ a2.reshape(nb * t2, d).T).view(na, t1, nb * t2)
    x = torch.bmm(g1.permute(1, 0, 3, 2).reshape(na, k * o, t1), s)             # [a, k·o, b·s]
    x = x.view(na, k, o, nb, t2).permute(3, 0, 1, 4, 2).reshape(nb, na * k, t2 * o)
    g2b = g2.permute(1, 2, 3, 0).reshape(nb, t2 * o, k)                           # [b, s·o, l]
    if output == "full":
        return torch.bmm(x, g2b).view(nb, na, k, k).permute(1, 0, 2, 3)
    return torch.einsum("bakq,bqk->ab", x.view(nb, na, k, t2 * o), g2b)


def factorize(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The best factorisation ``g_{k,n,t,o} ≈ w_ko c_{n,t,o}`` of cotangents ``(K, n, T, o)``: unit
    columns ``w (K, o)`` (``w_·o`` the top eigenvector of the ``K × K`` Gram of output ``o``'s
    cotangents; any unit vector where they vanish), ``c (n, T, o)`` (a view) and the relative residual.

    The cotangents are copied once into ``(o, K, n·T)`` order, where every step is a batched matrix
    product (the Gram, ``c = wᵀ g`` and the residual ``g - w c``); on the strided layouts the
    cotangents come in, the same products ran 6× slower than copy plus products.
    """
    k, n, t, o = g.shape
    m = g.permute(3, 0, 1, 2).reshape(o, k, n * t).contiguous()
    _, vectors = torch.linalg.eigh(torch.bmm(m, m.transpose(1, 2)))
    w = vectors[:, :, -1]                                                # (o, K), unit rows
    c = torch.bmm(w.unsqueeze(1), m)                                     # (o, 1, n·T)
    resid = torch.baddbmm(m, w.unsqueeze(2), c, alpha=-1)
    rel = float(resid.norm() / m.norm().clamp_min(torch.finfo(g.dtype).tiny))
    return w.T.contiguous(), c.view(o, n, t).permute(1, 2, 0), rel


def parallel_residual(g1: torch.Tensor, g2: torch.Tensor) -> float:
    """How far the cotangents of two output directions are from parallel, output by output.

    ``g1``, ``g2``: ``(1, n, T, o)`` for directions ``r1``, ``r2``. If the cotangents factor,
    ``g_{k,·,·,o} = w_ko c_o``, every direction's cotangent is ``(r·w_o) c_o``, so ``g2_o`` is a
    multiple of ``g1_o``; if for some ``o`` the ``g_{k,·,·,o}`` span two or more dimensions, two random
    directions give independent ``g1_o``, ``g2_o`` with probability one. Returns the relative
    residual ``‖g2 - P g2‖ / ‖g2‖`` of projecting each ``g2_o`` on ``g1_o`` (on ``0`` where ``g1_o``
    vanishes).
    """
    _, n, t, o = g1.shape
    a = g1[0].reshape(n * t, o)
    b = g2[0].reshape(n * t, o)
    aa = (a * a).sum(0)
    coef = torch.where(aa > 0, (a * b).sum(0) / aa.clamp_min(torch.finfo(a.dtype).tiny), torch.zeros_like(aa))
    resid = b - a * coef
    return float(resid.norm() / b.norm().clamp_min(torch.finfo(b.dtype).tiny))


def factored_term(ua: torch.Tensor, wa: torch.Tensor, ub: torch.Tensor | None, wb: torch.Tensor | None,
                  output: str) -> torch.Tensor:
    """``Σ_o wa_ko wb_lo ⟨ua_o, ub_o⟩`` from ``u (n, o, d)`` and each side's own columns ``w (K, o)``
    (``ub=None``: the block of ``ua`` with itself)."""
    if ub is None:
        ub, wb = ua, wa
    gram = torch.bmm(ua.transpose(0, 1), ub.permute(1, 2, 0))          # (o, na, nb)
    if output == "full":
        return torch.einsum("oab,ko,lo->abkl", gram, wa, wb)
    return torch.einsum("oab,o->ab", gram, (wa * wb).sum(0))


# ----------------------------------------------------------------------------
# Cost model
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class CallShape:
    """``T`` positions, ``d`` inputs per group, ``o`` outputs and ``groups`` of one dense call."""

    t: int
    d: int
    o: int
    groups: int = 1


def choose_form(shapes: Sequence[CallShape], k: int, output: str, n_rows: int, factorable: bool = False
                ) -> tuple[str, dict[str, float]]:
    """Pick the cheapest form for one dense weight over all pairs of its calls.

    Costs are multiply-adds plus ``ELEMENT_COST`` per element of every intermediate, for a block of
    ``n = min(n_rows, 256)`` rows against ``n`` rows (Novak et al. 2022 compare the same terms):

    * ``"outer"``: per-sample gradients ``n·K·Σ T·o·d`` per side, then ``n²·K²·o·d`` (``K`` for a
      trace) to contract them;
    * ``"gram"`` (ungrouped only): ``n²·T·T'·d`` for the input Gram, ``n²·K·o·T·T'`` and
      ``n²·K²·o·T'`` to contract it with the cotangents;
    * ``"factored"`` (one call whose cotangents factor over outputs): ``n·T·o·(d + K)`` per side and
      ``n²·o·(d + K²)``.

    Returns the form and every available form's cost.
    """
    n = float(max(1, min(n_rows, NOMINAL_ROWS)))
    kk = k * k if output == "full" else k
    numel = shapes[0].o * shapes[0].d
    build = sum(n * k * s.t * s.o * s.d for s in shapes)
    costs = {"outer": 2 * build + n * n * kk * numel + ELEMENT_COST * 2 * n * k * numel}
    if all(s.groups == 1 for s in shapes):
        gram = 0.0
        for s in shapes:
            for r in shapes:
                if s.t == 1 and r.t == 1:
                    gram += n * n * (s.d + kk * s.o) + ELEMENT_COST * n * n * kk
                else:
                    gram += (n * n * s.t * r.t * (s.d + k * s.o) + n * n * kk * s.o * r.t
                             + ELEMENT_COST * n * n * (s.t * r.t + k * s.o * r.t))
        costs["gram"] = gram
    if factorable and len(shapes) == 1:
        s = shapes[0]
        costs["factored"] = (2 * n * s.t * s.o * (s.d + k) + n * n * s.o * (s.d + kk)
                             + ELEMENT_COST * (2 * n * s.o * s.d + n * n * s.o))
    return min(costs, key=costs.get), costs


