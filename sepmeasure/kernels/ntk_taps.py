"""Where selected parameters enter a model, and the tapped forward pass (internal API of ``sepmeasure.kernels``).

A :class:`Site` is a module whose parameters a structured rule covers (``Linear``, ``Conv1d``/``Conv2d``,
``BatchNorm``/``LayerNorm``/``GroupNorm`` affines, ``nn.MultiheadAttention`` self-attention projections).
:class:`Taps` records every call of a site during one forward pass — its input and a zero *tap* added to
its output — so that :func:`output_grads` gives the output cotangents ``∂f_k/∂z`` at every call.
"""
from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from .ntk_problem import NTKProblem

__all__ = ["NORMS", "Call", "Site", "Taps", "attention_supported", "find_sites", "normalised", "output_grads",
           "folded_batch_norm", "restore_forward", "site_kind", "tapped_forward"]

NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
# BatchNorm layers whose eval-mode forward the taps replace by the same per-channel affine map
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class Site:
    """A module whose selected parameters a rule covers. ``roles`` maps role → canonical name."""

    name: str
    module: nn.Module
    kind: str                         # "linear", "conv", "norm", "attention"
    roles: dict[str, str] = field(default_factory=dict)


@dataclass
class Call:
    """One dense or norm call: its (detached) input and the zero tap added to its output."""

    site: Site
    part: str                         # "" or, for attention, "in" / "out"
    inputs: torch.Tensor
    tap: torch.Tensor

    @property
    def weight(self) -> str | None:
        return self.site.roles.get(self.part + "weight")

    @property
    def bias(self) -> str | None:
        return self.site.roles.get(self.part + "bias")


def find_sites(problem: NTKProblem) -> list[Site]:
    canonical = {id(p): n for n, p in problem.model.named_parameters()}
    found, seen = [], set()
    for name, module in problem.model.named_modules():
        if id(module) in seen:
            continue
        seen.add(id(module))
        kind = site_kind(module)
        if kind is None:
            continue
        slots = {"weight": "weight", "bias": "bias"}
        if kind == "attention":
            slots = {"inweight": "in_proj_weight", "inbias": "in_proj_bias"}
            out = module.out_proj
            slots_out = {"outweight": out.weight, "outbias": out.bias}
        roles = {}
        for role, attr in slots.items():
            p = getattr(module, attr, None)
            n = canonical.get(id(p)) if isinstance(p, torch.Tensor) else None
            if n in problem.params:
                roles[role] = n
        if kind == "attention":
            for role, p in slots_out.items():
                n = canonical.get(id(p)) if p is not None else None
                if n in problem.params:
                    roles[role] = n
        if roles:
            found.append(Site(name, module, kind, roles))
    return found


def site_kind(module: nn.Module) -> str | None:
    if type(module) is nn.Linear:
        return "linear"
    if type(module) in (nn.Conv1d, nn.Conv2d):
        return "conv"
    if isinstance(module, NORMS) and (not isinstance(module, nn.modules.batchnorm._BatchNorm)
                                       or module.running_mean is not None):
        return "norm"
    if isinstance(module, nn.MultiheadAttention) and attention_supported(module):
        return "attention"
    return None


def attention_supported(m: nn.MultiheadAttention) -> bool:
    return (m._qkv_same_embed_dim and m.in_proj_weight is not None and m.bias_k is None and m.bias_v is None
            and not m.add_zero_attn)


def normalised(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x̂``: the input of a norm layer before its affine scale and shift."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x - module.running_mean.view(shape)) * torch.rsqrt(module.running_var.view(shape) + module.eps)
    if isinstance(module, nn.LayerNorm):
        return F.layer_norm(x, module.normalized_shape, None, None, module.eps)
    return F.group_norm(x, module.num_groups, None, None, module.eps)


# ----------------------------------------------------------------------------
# The tapped forward pass
# ----------------------------------------------------------------------------

class Taps:
    """Forward hooks (and, for self-attention, a temporary forward) that record every call.

    Handles are removed and forwards restored on exit, also on error.
    """

    def __init__(self, sites: Sequence[Site]) -> None:
        self.sites = list(sites)
        self.calls: list[Call] = []
        self._undo: list[Callable[[], None]] = []

    def __enter__(self) -> Taps:
        for site in self.sites:
            replacement = (self._attention_forward(site) if site.kind == "attention"
                           else self._batch_norm_forward(site) if folded_batch_norm(site.module) else None)
            if replacement is not None:
                module = site.module
                previous = module.__dict__.get("forward")
                module.forward = types.MethodType(replacement, module)
                self._undo.append(lambda m=module, f=previous: restore_forward(m, f))
            else:
                h = site.module.register_forward_hook(self._hook(site))
                self._undo.append(h.remove)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo = []

    def _tapped(self, site: Site, part: str, inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        tap = torch.zeros_like(output, requires_grad=True)
        self.calls.append(Call(site, part, inputs.detach(), tap))
        return output + tap

    def _hook(self, site: Site) -> Callable[[nn.Module, Any, Any], torch.Tensor]:
        def hook(module: nn.Module, args: Any, output: Any) -> torch.Tensor:
            x = args[0]
            recorded = normalised(module, x) if site.kind == "norm" else x
            return self._tapped(site, "", recorded, output)
        return hook

    def _batch_norm_forward(self, site: Site) -> Callable[..., torch.Tensor]:
        """Eval-mode BatchNorm as the per-channel affine map ``x·s + t`` (``s = γ/√(σ² + ε)``,
        ``t = β - μ·s``; the form the CPU kernel computes), tapped; ``x̂`` is recorded without a graph.

        The same function, but its backward pass is one multiplication instead of
        ``native_batch_norm_backward``: the K backward passes of ResNet-18 (width 8, 16 inputs) took
        0.15-0.17 s instead of 0.19-0.22 s, measured alternately.
        """
        taps = self

        def forward(m: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            inv = torch.rsqrt(m.running_var + m.eps)
            scale = inv if m.weight is None else m.weight * inv
            shift = -m.running_mean * scale if m.bias is None else m.bias - m.running_mean * scale
            with torch.no_grad():
                xhat = (x - m.running_mean.view(shape)) * inv.view(shape)
            return taps._tapped(site, "", xhat, torch.addcmul(shift.view(shape), x, scale.view(shape)))

        return forward

    def _attention_forward(self, site: Site) -> Callable[..., Any]:
        """Self-attention written with ``F.linear`` and ``scaled_dot_product_attention``, tapped."""
        original = type(site.module).forward
        taps = self

        def forward(m: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                    attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                    is_causal: bool = False) -> tuple[torch.Tensor, None]:
            if (need_weights or key_padding_mask is not None or attn_mask is not None or query is not key
                    or key is not value or query.ndim != 3 or (m.training and m.dropout > 0)):
                return original(m, query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
            x = query if m.batch_first else query.transpose(0, 1)                  # (N, T, E)
            n, t, e = x.shape
            proj = taps._tapped(site, "in", x, F.linear(x, m.in_proj_weight, m.in_proj_bias))
            q, k, v = proj.view(n, t, 3, m.num_heads, e // m.num_heads).permute(2, 0, 3, 1, 4)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal).transpose(1, 2).reshape(n, t, e)
            out = taps._tapped(site, "out", o, F.linear(o, m.out_proj.weight, m.out_proj.bias))
            return (out if m.batch_first else out.transpose(0, 1)), None

        return forward


def folded_batch_norm(module: nn.Module) -> bool:
    """A plain BatchNorm layer normalising with its running statistics (eval mode)."""
    return (type(module) in BATCH_NORMS and not module.training and module.running_mean is not None
            and module.running_var is not None)


def restore_forward(module: nn.Module, previous: Any) -> None:
    if previous is None:
        module.__dict__.pop("forward", None)
    else:
        module.forward = previous


def tapped_forward(problem: NTKProblem, sites: Sequence[Site], x: torch.Tensor, leaves: dict[str, torch.Tensor],
                   channels_last: bool = False) -> tuple[torch.Tensor, list[Call]]:
    """The model's outputs on ``x`` with ``leaves`` substituted, and every call of ``sites``.

    ``channels_last`` runs a 4-D input in the channels-last memory format (the same function; its
    convolutions and their backward passes are several times faster on the CPU).
    """
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.enable_grad(), Taps(sites) as taps:
        out = functional_call(problem.model, {**problem.constants, **leaves}, (x,))
    return out, taps.calls


def output_grads(out: torch.Tensor, inputs: Sequence[torch.Tensor], batched: bool = False) -> list[torch.Tensor]:
    """``[(K, *t.shape)]``: the gradient of every output column ``k`` (summed over samples).

    ``batched=False``: one backward pass per output (``retain_graph``). Each result is a view of a
    buffer laid out like the gradient itself with the output axis next to the innermost one: a
    channels-last ``(n, C, H, W)`` cotangent is stored as ``(n, H, W, K, C)``, so the per-sample
    ``(T, K·C)`` matrices the contraction forms multiply are views, not copies.

    ``batched=True``: one backward pass for all outputs (``is_grads_batched``, the outputs as a vmapped
    axis), each result laid out with the output axis outermost. Fewer, larger operations: faster where
    the layers are many and small (ResNet-18 at width 8, the ViT), slower where a few large ones dominate
    (the CIFAR CNN, whose ReLU backward broadcasts its mask over the outputs); see
    ``ntk_structured.BATCHED_TAP_NUMEL``.
    """
    n, k = out.shape
    inputs = list(inputs)
    if batched:
        basis = torch.eye(k, dtype=out.dtype, device=out.device).unsqueeze(1).expand(k, n, k)
        return list(torch.autograd.grad(out, inputs, grad_outputs=basis, is_grads_batched=True, allow_unused=True,
                                        materialize_grads=True))
    stacked: list[torch.Tensor | None] = [None] * len(inputs)
    onehot = torch.zeros_like(out)
    for i in range(k):
        onehot.zero_()
        onehot[:, i] = 1
        grads = torch.autograd.grad(out, inputs, grad_outputs=onehot, retain_graph=i < k - 1, allow_unused=True,
                                    materialize_grads=True)
        for j, g in enumerate(grads):
            if stacked[j] is None:
                stacked[j] = stack_buffer(g, k)
            stacked[j][i] = g
    return stacked


def stack_buffer(g: torch.Tensor, k: int) -> torch.Tensor:
    """An empty ``(k, *g.shape)`` tensor stored in ``g``'s axis order (outermost first) with the new
    axis placed just outside the innermost one."""
    if g.ndim == 0:
        return g.new_empty((k,))
    order = sorted(range(g.ndim), key=lambda d: (-g.stride(d), d))      # outermost axis first
    storage = [*order[:-1], -1, order[-1]]                              # -1: the new axis
    buf = g.new_empty([k if d == -1 else g.shape[d] for d in storage])
    return buf.permute(storage.index(-1), *(storage.index(d) for d in range(g.ndim)))
