r"""The ``"structured"`` NTK builder: structured derivatives of the layers of real models.

Novak et al. 2022 (*Fast Finite Width Neural Tangent Kernel*, "structured derivatives"): the
Jacobian of a layer's output w.r.t. its parameters has a structure that makes the per-sample
Jacobian unnecessary. One forward pass records each layer call's input and adds a zero *tap* to its
output; one backward pass, batched over the K outputs, gives the output cotangents
``g_k = ∂f_k/∂z`` at every tap. Then, per parameter:

* **dense** layers, ``z_t = W a_t + b`` at positions ``t`` — ``Linear`` on ``[N, D]`` or
  ``[N, *, D]`` token tensors, ``Conv1d``/``Conv2d`` (patches ``a_t``: strided, padded, grouped,
  dilated), the packed ``in_proj_weight`` and the ``out_proj`` of ``nn.MultiheadAttention``
  self-attention (used through ``F.linear``, not an ``nn.Linear``). The weight's contribution
  ``Θ_kl(x, x') = Σ_{t,s} ⟨a_t, a'_s⟩ ⟨g_{k,t}, g'_{l,s}⟩`` is computed in the cheapest of three
  forms, by a cost model in multiply-adds and bytes: ``"gram"`` (input Gram × cotangent Gram),
  ``"outer"`` (the per-sample weight gradient ``Σ_t g_{k,t} ⊗ a_t``, one batched matmul per call,
  then contracted) and ``"factored"`` (when the cotangents factor over outputs,
  ``g_{k,t,o} = w_{k,o} c_{t,o}``, as in front of a pooled linear read-out: ``Σ_o w_ko w_lo
  ⟨u_o, u'_o⟩`` with ``u_o = Σ_t c_{t,o} a_t``). The bias enters as ``Σ_t g_{k,t}``.
* **elementwise** affine layers, ``z = γ ⊙ x̂ + β`` per channel — ``BatchNorm`` (running
  statistics), ``LayerNorm``, ``GroupNorm``: ``∂f_k/∂γ_c = Σ_p g_{k,c,p} x̂_{c,p}``,
  ``∂f_k/∂β_c = Σ_p g_{k,c,p}``.
* **broadcast** parameters with a leading axis of 1 used across the batch (a ViT's class token and
  position embedding): replaced by one copy per sample, whose gradient is the per-sample one.

Every rule is verified on a probe batch (the gradients it rebuilds must equal autograd's; a
broadcast parameter must leave other samples untouched; an attention rewrite must give the
module's output); any parameter that fails, or that no rule covers, falls back to the Jacobian of
just those parameters.
"""
from __future__ import annotations

import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from .ntk_problem import Builder, NTKProblem, Plan, cached_rows, contract, per_sample_jacobians

__all__ = ["FORMS", "STRUCTURED", "choose_form", "method_costs"]

FORMS: tuple[str, ...] = ("gram", "outer", "factored")
# Rows used to weigh per-row against per-pair costs when choosing a form.
_NOMINAL_ROWS = 256
# A multiply-add counts 1; writing and reading one element of an intermediate counts this much.
_ELEMENT_COST = 4.0
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


# ----------------------------------------------------------------------------
# Sites: where selected parameters enter the model
# ----------------------------------------------------------------------------

@dataclass
class _Site:
    """A module whose selected parameters a rule covers. ``roles`` maps role → canonical name."""

    name: str
    module: nn.Module
    kind: str                         # "linear", "conv", "norm", "attention"
    roles: dict[str, str] = field(default_factory=dict)


@dataclass
class _Call:
    """One dense or norm call: its (detached) input and the zero tap added to its output."""

    site: _Site
    part: str                         # "" or, for attention, "in" / "out"
    inputs: torch.Tensor
    tap: torch.Tensor

    @property
    def weight(self) -> str | None:
        return self.site.roles.get(self.part + "weight")

    @property
    def bias(self) -> str | None:
        return self.site.roles.get(self.part + "bias")


def _sites(problem: NTKProblem) -> list[_Site]:
    canonical = {id(p): n for n, p in problem.model.named_parameters()}
    found, seen = [], set()
    for name, module in problem.model.named_modules():
        if id(module) in seen:
            continue
        seen.add(id(module))
        kind = _kind(module)
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
            found.append(_Site(name, module, kind, roles))
    return found


def _kind(module: nn.Module) -> str | None:
    if type(module) is nn.Linear:
        return "linear"
    if type(module) in (nn.Conv1d, nn.Conv2d):
        return "conv"
    if isinstance(module, _NORMS) and (not isinstance(module, nn.modules.batchnorm._BatchNorm)
                                       or module.running_mean is not None):
        return "norm"
    if isinstance(module, nn.MultiheadAttention) and _attention_supported(module):
        return "attention"
    return None


def _attention_supported(m: nn.MultiheadAttention) -> bool:
    return (m._qkv_same_embed_dim and m.in_proj_weight is not None and m.bias_k is None and m.bias_v is None
            and not m.add_zero_attn)


def _normalised(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
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

class _Taps:
    """Forward hooks (and, for self-attention, a temporary forward) that record every call.

    Handles are removed and forwards restored on exit, also on error.
    """

    def __init__(self, sites: Sequence[_Site]) -> None:
        self.sites = list(sites)
        self.calls: list[_Call] = []
        self._undo: list[Callable[[], None]] = []

    def __enter__(self) -> _Taps:
        for site in self.sites:
            if site.kind == "attention":
                module = site.module
                previous = module.__dict__.get("forward")
                module.forward = types.MethodType(self._attention_forward(site), module)
                self._undo.append(lambda m=module, f=previous: _restore_forward(m, f))
            else:
                h = site.module.register_forward_hook(self._hook(site))
                self._undo.append(h.remove)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo = []

    def _tapped(self, site: _Site, part: str, inputs: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        tap = torch.zeros_like(output, requires_grad=True)
        self.calls.append(_Call(site, part, inputs.detach(), tap))
        return output + tap

    def _hook(self, site: _Site) -> Callable[[nn.Module, Any, Any], torch.Tensor]:
        def hook(module: nn.Module, args: Any, output: Any) -> torch.Tensor:
            x = args[0]
            recorded = _normalised(module, x) if site.kind == "norm" else x
            return self._tapped(site, "", recorded, output)
        return hook

    def _attention_forward(self, site: _Site) -> Callable[..., Any]:
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


def _restore_forward(module: nn.Module, previous: Any) -> None:
    if previous is None:
        module.__dict__.pop("forward", None)
    else:
        module.forward = previous


def _tapped_forward(problem: NTKProblem, sites: Sequence[_Site], x: torch.Tensor,
                    leaves: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[_Call]]:
    with torch.enable_grad(), _Taps(sites) as taps:
        out = functional_call(problem.model, {**problem.constants, **leaves}, (x,))
    return out, taps.calls


def _output_grads(out: torch.Tensor, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``[(K, *t.shape)]``: the gradient of every output column ``k`` (summed over samples)."""
    n, k = out.shape
    basis = torch.eye(k, dtype=out.dtype, device=out.device).unsqueeze(1).expand(k, n, k).contiguous()
    try:
        return list(torch.autograd.grad(out, list(inputs), grad_outputs=basis, is_grads_batched=True,
                                        allow_unused=True, materialize_grads=True))
    except RuntimeError:  # an op without a batching rule for its backward: one pass per output
        per_k = [torch.autograd.grad(out, list(inputs), grad_outputs=basis[i], retain_graph=True,
                                     allow_unused=True, materialize_grads=True) for i in range(k)]
        return [torch.stack(g) for g in zip(*per_k)]


# ----------------------------------------------------------------------------
# Per-call arrays
# ----------------------------------------------------------------------------

def _conv_patches(module: nn.Conv1d | nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
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
    if any(pads):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        a = F.pad(a, pads, mode=mode)
    if one_d:
        a = a.unsqueeze(-2)
    kernel = (1, *module.kernel_size) if one_d else module.kernel_size
    dilation = (1, *module.dilation) if one_d else module.dilation
    stride = (1, *module.stride) if one_d else module.stride
    cols = F.unfold(a, kernel, dilation=dilation, stride=stride)   # (n, C·Πk, T)
    return cols.transpose(1, 2)


def _dense_arrays(call: _Call, grad: torch.Tensor, need_inputs: bool
                  ) -> tuple[torch.Tensor | None, torch.Tensor, int]:
    """Inputs ``A (n, T, d)`` (when needed), cotangents ``G (K, n, T, o)`` and the group count."""
    module, a = call.site.module, call.inputs
    k, n = grad.shape[:2]
    if call.site.kind == "conv":
        g = grad.reshape(k, n, module.out_channels, -1).transpose(-1, -2)
        return (_conv_patches(module, a) if need_inputs else None), g, module.groups
    d = a.shape[-1]
    return (a.reshape(n, -1, d) if need_inputs else None), grad.reshape(k, n, -1, grad.shape[-1]), 1


def _norm_jacobians(call: _Call, grad: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{name: (n, K, C)}`` for the scale and shift of one norm call."""
    module, xhat = call.site.module, call.inputs
    k, n = grad.shape[:2]
    if isinstance(module, nn.LayerNorm):
        c = xhat[0].new_empty(module.normalized_shape).numel()
        g = grad.reshape(k, n, -1, c).transpose(-1, -2)            # (K, n, C, P)
        xh = xhat.reshape(n, -1, c).transpose(-1, -2)
    else:
        g = grad.reshape(k, n, grad.shape[2], -1)
        xh = xhat.reshape(n, xhat.shape[1], -1)
    out = {}
    if call.weight:
        out[call.weight] = torch.einsum("kncp,ncp->nkc", g, xh)
    if call.bias:
        out[call.bias] = g.sum(-1).transpose(0, 1)
    return out


def _outer_jacobian(a: torch.Tensor, g: torch.Tensor, groups: int) -> torch.Tensor:
    """``Σ_t g_{k,t} ⊗ a_t`` → ``(n, K, numel(W))``: the weight gradient of every sample and output."""
    k, n, t, o = g.shape
    if groups == 1:
        return torch.bmm(g.permute(1, 0, 3, 2).reshape(n, k * o, t), a).view(n, k, -1)
    d = a.shape[-1] // groups
    gg = g.reshape(k, n, t, groups, o // groups).permute(1, 3, 0, 4, 2).reshape(n * groups, k * (o // groups), t)
    aa = a.reshape(n, t, groups, d).permute(0, 2, 1, 3).reshape(n * groups, t, d)
    j = torch.bmm(gg, aa).view(n, groups, k, o // groups, d)
    return j.transpose(1, 2).reshape(n, k, -1)


def _cotangent_gram(ga: torch.Tensor, gb: torch.Tensor, output: str) -> torch.Tensor:
    """``⟨g_k(x_a), g_l(x_b)⟩`` → ``(na, nb, K, K)``, or its trace → ``(na, nb)``; ``ga``: ``(K, na, o)``."""
    k, na, o = ga.shape
    nb = gb.shape[1]
    if output == "full":
        return (ga.transpose(0, 1).reshape(na * k, o) @ gb.transpose(0, 1).reshape(nb * k, o).T
                ).view(na, k, nb, k).permute(0, 2, 1, 3)
    return torch.bmm(ga, gb.transpose(1, 2)).sum(0)


def _gram_term(a1: torch.Tensor, g1: torch.Tensor, a2: torch.Tensor, g2: torch.Tensor, output: str,
               plus_one: bool) -> torch.Tensor:
    """``Σ_{t,s} ⟨a1_t, a2_s⟩ ⟨g1_{k,t}, g2_{l,s}⟩`` for one pair of calls (``+1`` adds the bias)."""
    na, t1, d = a1.shape
    nb, t2, _ = a2.shape
    k, o = g1.shape[0], g1.shape[3]
    if t1 == 1 and t2 == 1:
        s = a1[:, 0] @ a2[:, 0].T
        if plus_one:
            s = s + 1
        c = _cotangent_gram(g1[:, :, 0], g2[:, :, 0], output)
        return c * (s[:, :, None, None] if output == "full" else s)
    s = (a1.reshape(na * t1, d) @ a2.reshape(nb * t2, d).T).view(na, t1, nb * t2)
    x = torch.bmm(g1.permute(1, 0, 3, 2).reshape(na, k * o, t1), s)             # [a, k·o, b·s]
    x = x.view(na, k, o, nb, t2).permute(3, 0, 1, 4, 2).reshape(nb, na * k, t2 * o)
    g2b = g2.permute(1, 2, 3, 0).reshape(nb, t2 * o, k)                           # [b, s·o, l]
    if output == "full":
        return torch.bmm(x, g2b).view(nb, na, k, k).permute(1, 0, 2, 3)
    return torch.einsum("bakq,bqk->ab", x.view(nb, na, k, t2 * o), g2b)


def _factor(g: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``c = Σ_k w_ko g_k`` for unit columns ``w`` (K, o), and the relative residual of ``g ≈ w c``."""
    c = torch.einsum("knto,ko->nto", g, w)
    resid = g - w[:, None, None, :] * c
    return c, float(resid.norm() / g.norm().clamp_min(torch.finfo(g.dtype).tiny))


def _factored_term(ua: torch.Tensor, ub: torch.Tensor | None, w: torch.Tensor, output: str) -> torch.Tensor:
    """``Σ_o w_ko w_lo ⟨u_a,o, u_b,o⟩`` from ``u (n, o, d)``."""
    gram = torch.bmm(ua.transpose(0, 1), (ua if ub is None else ub).permute(1, 2, 0))   # (o, na, nb)
    if output == "full":
        return torch.einsum("oab,ko,lo->abkl", gram, w, w)
    return torch.einsum("oab,o->ab", gram, (w * w).sum(0))


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

    Costs are multiply-adds plus ``_ELEMENT_COST`` per element of every intermediate, for a block of
    ``n = min(n_rows, 256)`` rows against ``n`` rows (Novak et al. 2022 compare the same terms):

    * ``"outer"``: per-sample gradients ``n·K·Σ T·o·d`` per side, then ``n²·K²·o·d`` (``K`` for a
      trace) to contract them;
    * ``"gram"`` (ungrouped only): ``n²·T·T'·d`` for the input Gram, ``n²·K·o·T·T'`` and
      ``n²·K²·o·T'`` to contract it with the cotangents;
    * ``"factored"`` (one call whose cotangents factor over outputs): ``n·T·o·(d + K)`` per side and
      ``n²·o·(d + K²)``.

    Returns the form and every available form's cost.
    """
    n = float(max(1, min(n_rows, _NOMINAL_ROWS)))
    kk = k * k if output == "full" else k
    numel = shapes[0].o * shapes[0].d
    build = sum(n * k * s.t * s.o * s.d for s in shapes)
    costs = {"outer": 2 * build + n * n * kk * numel + _ELEMENT_COST * 2 * n * k * numel}
    if all(s.groups == 1 for s in shapes):
        gram = 0.0
        for s in shapes:
            for r in shapes:
                if s.t == 1 and r.t == 1:
                    gram += n * n * (s.d + kk * s.o) + _ELEMENT_COST * n * n * kk
                else:
                    gram += (n * n * s.t * r.t * (s.d + k * s.o) + n * n * kk * s.o * r.t
                             + _ELEMENT_COST * n * n * (s.t * r.t + k * s.o * r.t))
        costs["gram"] = gram
    if factorable and len(shapes) == 1:
        s = shapes[0]
        costs["factored"] = (2 * n * s.t * s.o * (s.d + k) + n * n * s.o * (s.d + kk)
                             + _ELEMENT_COST * (2 * n * s.o * s.d + n * n * s.o))
    return min(costs, key=costs.get), costs


# ----------------------------------------------------------------------------
# Plan
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Weight:
    """A dense weight and every call that uses it, with the form chosen for it."""

    param: str
    calls: tuple[int, ...]
    form: str
    groups: int
    bias: str | None = None            # a gram-form bias computed with the weight (one position)
    w: torch.Tensor | None = None      # factored form: unit columns (K, o)


@dataclass
class _Structured:
    sites: list[_Site]
    call_sites: list[tuple[int, str]]          # per call in forward order: (site index, part)
    weights: list[_Weight]
    outer_biases: set[str]                      # dense biases computed as per-sample gradients
    broadcast: dict[str, torch.Tensor]          # parameters substituted by one copy per sample
    fallback: dict[str, torch.Tensor]           # parameters computed with the Jacobian
    costs: dict[str, dict[str, float]] = field(default_factory=dict)
    forward_macs: float = 0.0                   # multiply-adds of the structured calls, per sample


def _broadcast_candidates(problem: NTKProblem, covered: set[str]) -> dict[str, torch.Tensor]:
    return {n: p for n, p in problem.params.items() if n not in covered and p.ndim >= 2 and p.shape[0] == 1}


def _expand(params: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    return {name: p.expand(n, *p.shape[1:]).clone().requires_grad_(True) for name, p in params.items()}


def _rebuilt_gradients(problem: NTKProblem, calls: list[_Call], tap_grads: list[torch.Tensor]
                       ) -> dict[str, torch.Tensor]:
    """Σ over samples of the per-sample gradients each rule rebuilds: ``{name: (K, numel)}``."""
    rebuilt: dict[str, torch.Tensor] = {}

    def add(name: str, value: torch.Tensor) -> None:
        rebuilt[name] = rebuilt.get(name, 0) + value.reshape(problem.n_outputs, -1)

    for call, g in zip(calls, tap_grads):
        if call.site.kind == "norm":
            for name, j in _norm_jacobians(call, g).items():
                add(name, j.sum(0))
            continue
        a, gg, groups = _dense_arrays(call, g, need_inputs=call.weight is not None)
        if call.weight:
            add(call.weight, _outer_jacobian(a, gg, groups).sum(0))
        if call.bias:
            add(call.bias, gg.sum(dim=(1, 2)))
    return rebuilt


def _close(mine: torch.Tensor, truth: torch.Tensor, tol: float, floor: float = 0.0) -> bool:
    scale = max(float(truth.norm()), floor)
    return (scale == 0 and float(mine.norm()) == 0) or float((mine - truth).norm()) <= tol * max(scale, 1e-30)


def _verify(problem: NTKProblem, sites: list[_Site], probe: torch.Tensor, broadcast: dict[str, torch.Tensor]
            ) -> tuple[set[str], list[_Site], list[_Call], list[torch.Tensor]]:
    """Parameters whose structured gradients equal autograd's on ``probe``, the sites kept, and the
    probe's calls and output cotangents.

    When the tapped model's output differs from the model's (an attention rewrite, or per-sample
    copies of a parameter, that does not compute the same function), those are dropped first.
    """
    tol = 1e-3 if problem.itemsize <= 4 else 1e-9
    candidates = {n for s in sites for n in s.roles.values()}
    leaves = {n: problem.params[n].clone().requires_grad_(True) for n in candidates}
    copies = _expand(broadcast, probe.shape[0])
    with torch.no_grad():
        plain = problem.f_batch(problem.params, probe)
    try:
        out, calls = _tapped_forward(problem, sites, probe, {**leaves, **copies})
        same = out.shape == plain.shape and _close(out.detach(), plain, tol)
    except RuntimeError:
        same = False
    if not same:
        if any(s.kind == "attention" for s in sites):
            return _verify(problem, [s for s in sites if s.kind != "attention"], probe, broadcast)
        if broadcast:
            return _verify(problem, sites, probe, {})
        return set(), [], [], []
    grads = _output_grads(out, [c.tap for c in calls] + list(leaves.values()))
    tap_grads = grads[:len(calls)]
    param_grads = dict(zip(leaves, grads[len(calls):]))
    rebuilt = _rebuilt_gradients(problem, calls, tap_grads)
    # a gradient that vanishes exactly (a bias a later normalisation removes) is compared on the scale of all
    floor = 1e-3 * max((float(g.norm()) for g in param_grads.values()), default=0.0)
    verified = set()
    for name in sorted(candidates):
        truth = param_grads[name].reshape(problem.n_outputs, -1)
        if _close(rebuilt.get(name, torch.zeros_like(truth)).reshape_as(truth), truth, tol, floor):
            verified.add(name)
            continue
        owner = next(s for s in sites if name in s.roles.values())
        warnings.warn(f"params: {name!r} is used outside the forward pass of its layer {owner.name!r} (or the "
                      f"layer does not behave like a plain {type(owner.module).__name__}); its kernel "
                      f"contribution is computed with the Jacobian", stacklevel=6)
    verified |= {n for n in copies if _separates_samples(problem, n, probe)}
    return verified, sites, calls, tap_grads


def _separates_samples(problem: NTKProblem, name: str, probe: torch.Tensor) -> bool:
    """A per-sample copy is exact when sample 0's outputs do not depend on the other samples' copies."""
    if probe.shape[0] < 2:
        return False
    copies = _expand({name: problem.params[name]}, probe.shape[0])
    out, _ = _tapped_forward(problem, [], probe, copies)
    g = torch.autograd.grad(out[0].sum(), copies[name], allow_unused=True, materialize_grads=True)[0]
    return float(g[1:].abs().max()) == 0.0


def _factorization(call: _Call, tap_grad: torch.Tensor, tol: float) -> torch.Tensor | None:
    """Unit columns ``w (K, o)`` with ``g_{k,·,·,o} = w_ko c_o`` on the probe, or None.

    ``w_·o`` is the top eigenvector of the ``K × K`` Gram of the cotangents of output ``o``; the
    factorisation is accepted when it reproduces every cotangent to ``tol`` (relative).
    """
    _, g, _ = _dense_arrays(call, tap_grad, need_inputs=False)
    k, n, t, o = g.shape
    if k < 2 or n * t < 2:
        return None
    m = g.permute(3, 0, 1, 2).reshape(o, k, n * t)
    _, vectors = torch.linalg.eigh(torch.bmm(m, m.transpose(1, 2)))
    w = vectors[:, :, -1].T.contiguous()                                 # (K, o)
    _, resid = _factor(g, w)
    return w if resid <= tol else None


def _plan_structured(problem: NTKProblem, output: str) -> Plan:
    """Find the sites, verify them on a probe batch, group the calls by parameter and pick a form
    per dense weight by the cost model."""
    probe = problem.probe
    sites = _sites(problem)
    covered = {n for s in sites for n in s.roles.values()}
    broadcast = _broadcast_candidates(problem, covered)
    verified, sites, calls, tap_grads = (_verify(problem, sites, probe, broadcast) if (sites or broadcast)
                                         else (set(), [], [], []))
    for site in sites:
        site.roles = {r: n for r, n in site.roles.items() if n in verified}
    sites = [s for s in sites if s.roles]
    site_ids = {id(s) for s in sites}
    kept = [i for i, c in enumerate(calls) if id(c.site) in site_ids]
    calls, tap_grads = [calls[i] for i in kept], [tap_grads[i] for i in kept]
    broadcast = {n: p for n, p in broadcast.items() if n in verified}
    fallback = {n: p for n, p in problem.params.items() if n not in verified}
    k, size = problem.n_outputs, problem.itemsize
    row = 3 * k * problem.activation_numel + k * sum(p.numel() for p in broadcast.values())
    if fallback:
        row += 3 * k * sum(p.numel() for p in fallback.values()) + 4 * k * problem.activation_numel
    pair = float(k * k if output == "full" else 1)
    detail = _Structured(sites, [], [], set(), broadcast, fallback)
    if not sites:
        return Plan(size * row, size * 2 * pair, detail)
    index = {id(s): i for i, s in enumerate(sites)}
    detail.call_sites = [(index[id(c.site)], c.part) for c in calls]
    shapes: dict[int, CallShape] = {}
    for i, c in enumerate(calls):
        if c.site.kind == "norm":
            row += k * 2 * c.inputs[0].numel()
            detail.forward_macs += c.inputs[0].numel() / max(c.inputs[0].shape[0], 1)
            continue
        a, g, groups = _dense_arrays(c, tap_grads[i][:, :1], need_inputs=True)
        shapes[i] = CallShape(a.shape[1], a.shape[2] // groups, g.shape[3], groups)
        detail.forward_macs += a.shape[1] * a.shape[2] * g.shape[3] / groups
        row += a.shape[1] * a.shape[2] + k * a.shape[1] * g.shape[3]
    weights = sorted({c.weight for c in calls if c.weight and c.site.kind != "norm"})
    uses = {w: tuple(i for i, c in enumerate(calls) if c.weight == w) for w in weights}
    tol = 1e-5 if size <= 4 else 1e-11
    merged = set()
    for w in weights:
        mine = [shapes[i] for i in uses[w]]
        factor = None
        if len(uses[w]) == 1 and choose_form(mine, k, output, problem.n_rows, factorable=True)[0] == "factored":
            factor = _factorization(calls[uses[w][0]], tap_grads[uses[w][0]], tol)
        form, costs = choose_form(mine, k, output, problem.n_rows, factorable=factor is not None)
        detail.costs[w] = costs
        biases = {calls[i].bias for i in uses[w]}
        bias = next(iter(biases)) if len(biases) == 1 else None
        bias_uses = tuple(i for i, c in enumerate(calls) if c.bias == bias) if bias else ()
        with_bias = form == "gram" and bias is not None and bias_uses == uses[w] and all(s.t == 1 for s in mine)
        if with_bias:
            merged.add(bias)
        if form == "gram":
            pair = max(pair, max(s.t * r.t + k * s.o * r.t for s in mine for r in mine))
        elif form == "outer":
            row += k * mine[0].o * mine[0].d * mine[0].groups
        else:
            row += mine[0].o * mine[0].d + k * mine[0].t * mine[0].o
            pair = max(pair, float(mine[0].o))
        detail.weights.append(_Weight(w, uses[w], form, mine[0].groups, bias if with_bias else None,
                                      factor if form == "factored" else None))
    detail.outer_biases = {c.bias for c in calls if c.bias and c.site.kind != "norm"} - merged
    return Plan(size * row, size * 2 * pair, detail)


def method_costs(problem: NTKProblem, plan: Plan, output: str) -> dict[str, float]:
    """Estimated cost of one ``n × n`` block (``n = min(n_rows, 256)``) by ``"jacobian"`` and by
    ``"structured"`` with this plan, in the units of :func:`choose_form`.

    With ``F`` the forward multiply-adds per sample (the structured calls' plus one per activation
    element), ``P`` the selected parameters and ``K`` the outputs:

    * ``"jacobian"``: per-sample Jacobians, ``2·n·(F + 2·K·F)`` to build and ``_ELEMENT_COST·2·n·K·P``
      to store, then ``n²·K²·P`` (``K`` for a trace) to contract;
    * ``"structured"``: the cotangents at every tap, ``2·n·(F + K·F)``, the chosen form of every
      dense weight, ``n²·K²·P_e`` for the elementwise and broadcast parameters, and for the
      fallback parameters the Jacobian's terms with ``P`` their count.
    """
    detail: _Structured = plan.detail
    k = problem.n_outputs
    n = float(max(1, min(problem.n_rows, _NOMINAL_ROWS)))
    kk = k * k if output == "full" else k
    forward = detail.forward_macs + problem.activation_numel

    def jacobian_terms(p: float) -> float:
        return 2 * n * (forward + 2 * k * forward) + _ELEMENT_COST * 2 * n * k * p + n * n * kk * p

    dense = {w.param for w in detail.weights} | detail.outer_biases | {w.bias for w in detail.weights if w.bias}
    n_fallback = sum(p.numel() for p in detail.fallback.values())
    n_other = sum(p.numel() for name, p in problem.params.items() if name not in dense and name not in detail.fallback)
    structured = 2 * n * (forward + k * forward) + sum(detail.costs[w.param][w.form] for w in detail.weights)
    structured += n * n * kk * n_other + _ELEMENT_COST * 2 * n * k * n_other
    if n_fallback:
        structured += jacobian_terms(n_fallback)
    return {"jacobian": jacobian_terms(problem.n_params), "structured": structured}


# ----------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------

@dataclass
class _Side:
    """What one block of samples contributes: per-call dense arrays and per-sample Jacobians."""

    inputs: dict[int, torch.Tensor]                   # call → A (n, T, d), for gram-form weights
    cotangents: dict[int, torch.Tensor]               # call → G (K, n, T, o), for gram-form weights
    factored: dict[str, torch.Tensor]                 # weight → u (n, o, d)
    jacobians: dict[str, torch.Tensor]                # name → (n, K, numel): outer-form parameters


def _capture(problem: NTKProblem, detail: _Structured, x: torch.Tensor) -> _Side:
    copies = _expand(detail.broadcast, x.shape[0])
    out, calls = _tapped_forward(problem, detail.sites, x, copies)
    index = {id(s): i for i, s in enumerate(detail.sites)}
    order = [(index[id(c.site)], c.part) for c in calls]
    if order != detail.call_sites:
        names = [detail.sites[i].name + (f".{p}_proj" if p else "") for i, p in order]
        expected = [detail.sites[i].name + (f".{p}_proj" if p else "") for i, p in detail.call_sites]
        raise RuntimeError(f"model: expected the same sequence of layer calls for every input, got {names} "
                           f"instead of {expected}; use method='jacobian'")
    tapped = [c.tap for c in calls] + list(copies.values())
    grads = _output_grads(out, tapped) if tapped else []
    tap_grads = grads[:len(calls)]
    side = _Side({}, {}, {}, {})

    def add(name: str, j: torch.Tensor) -> None:
        side.jacobians[name] = side.jacobians[name] + j if name in side.jacobians else j

    for name, g in zip(copies, grads[len(calls):]):
        add(name, g.transpose(0, 1).reshape(x.shape[0], problem.n_outputs, -1))
    gram_calls = {i for w in detail.weights if w.form == "gram" for i in w.calls}
    for weight in detail.weights:
        if weight.form == "outer":
            for i in weight.calls:
                a, g, groups = _dense_arrays(calls[i], tap_grads[i], need_inputs=True)
                add(weight.param, _outer_jacobian(a, g, groups))
        elif weight.form == "factored":
            i = weight.calls[0]
            a, g, groups = _dense_arrays(calls[i], tap_grads[i], need_inputs=True)
            c, resid = _factor(g, weight.w)
            if resid <= (1e-5 if problem.itemsize <= 4 else 1e-11):
                side.factored[weight.param] = torch.bmm(c.transpose(1, 2), a)       # (n, o, d)
            else:   # not factored for these inputs: the exact per-sample gradient instead
                add(weight.param, _outer_jacobian(a, g, groups))
    for i, call in enumerate(calls):
        if call.site.kind == "norm":
            for name, j in _norm_jacobians(call, tap_grads[i]).items():
                add(name, j)
            continue
        need = i in gram_calls
        if need or call.bias in detail.outer_biases:
            a, g, _ = _dense_arrays(call, tap_grads[i], need_inputs=need)
            if need:
                side.inputs[i], side.cotangents[i] = a, g
            if call.bias in detail.outer_biases:
                add(call.bias, g.sum(dim=2).transpose(0, 1))
    if detail.fallback:
        side.jacobians.update(per_sample_jacobians(problem, detail.fallback, x))
    return side


def _ntk_structured(problem: NTKProblem, plan: Plan, xa: torch.Tensor, xb: torch.Tensor | None,
                    output: str) -> torch.Tensor:
    detail: _Structured = plan.detail
    side_a = cached_rows(problem, "structured", xa, lambda x: _capture(problem, detail, x))
    side_b = side_a if xb is None else _capture(problem, detail, xb)
    na, k = xa.shape[0], problem.n_outputs
    nb = na if xb is None else xb.shape[0]
    ref = next(iter(problem.params.values()))
    total = torch.zeros((na, nb, k, k) if output == "full" else (na, nb), dtype=ref.dtype, device=ref.device)
    for weight in detail.weights:
        if weight.form == "gram":
            for i in weight.calls:                 # every pair of calls, cross pairs included
                for j in weight.calls:
                    total += _gram_term(side_a.inputs[i], side_a.cotangents[i], side_b.inputs[j],
                                        side_b.cotangents[j], output, weight.bias is not None)
        elif weight.param in side_a.factored and weight.param in side_b.factored:
            total += _factored_term(side_a.factored[weight.param],
                                    None if xb is None else side_b.factored[weight.param], weight.w, output)
        elif weight.form == "factored":   # one side was not factored: compare the exact gradients
            ja, jb = (_unfactor(s, weight) for s in (side_a, side_b))
            total += contract({weight.param: ja}, None if xb is None else {weight.param: jb}, output)
    # a factored weight whose factorisation failed on some side has its exact gradient in
    # side.jacobians; it was contracted above (through _unfactor) and must not count twice
    factored = {w.param for w in detail.weights if w.form == "factored"}
    names = [n for n in side_a.jacobians if n in side_b.jacobians and n not in factored]
    if names:
        total += contract({n: side_a.jacobians[n] for n in names},
                          None if xb is None else {n: side_b.jacobians[n] for n in names}, output)
    return total


def _unfactor(side: _Side, weight: _Weight) -> torch.Tensor:
    if weight.param in side.jacobians:
        return side.jacobians[weight.param]
    u = side.factored[weight.param]                       # (n, o, d)
    return (weight.w.T[None, :, :, None] * u[:, :, None, :]).permute(0, 2, 1, 3).reshape(u.shape[0],
                                                                                          weight.w.shape[0], -1)


STRUCTURED = Builder(_plan_structured, _ntk_structured, batch_dependent_ok=False)
