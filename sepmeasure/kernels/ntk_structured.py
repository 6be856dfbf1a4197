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

The sites and the tapped forward pass are in ``ntk_taps``, the contraction forms and their cost
model in ``ntk_forms``. Every rule is verified on a probe batch (the gradients it rebuilds must equal autograd's; a
broadcast parameter must leave other samples untouched; an attention rewrite must give the
module's output); any parameter that fails, or that no rule covers, falls back to the Jacobian of
just those parameters.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from .ntk_forms import (ELEMENT_COST, FORMS, NOMINAL_ROWS, CallShape, choose_form, dense_arrays,
                        factored_term, factorize, gram_term, norm_jacobians, outer_jacobian,
                        parallel_residual, summed_outer)
from .ntk_problem import (Builder, NTKProblem, Plan, cached_rows, contract, differentiable_attention,
                          per_sample_jacobians)
from .ntk_taps import Call, Site, find_sites, output_grads, tapped_forward

__all__ = ["BATCHED_TAP_NUMEL", "FORMS", "STRUCTURED", "CallShape", "choose_form", "method_costs"]

# The cotangents of all K outputs come from one batched backward pass (rather than K passes) when the
# tapped calls' outputs hold fewer than this many elements per sample on average. Measured alternately,
# the whole kernel with one pass against K: ResNet-18 width 8 (taps of 3 700 elements on average)
# 0.80-0.93x the time at 16-64 inputs, width 16 (7 500) 0.86-0.97x, the ViT (2 900) 0.83-0.92x, the
# CIFAR CNN (13 300: three convolutions, two of them at 32 x 32 or 16 x 16) 0.98-1.24x.
BATCHED_TAP_NUMEL = 10_000


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


@dataclass
class _Structured:
    sites: list[Site]
    call_sites: list[tuple[int, str]]          # per call in forward order: (site index, part)
    weights: list[_Weight]
    outer_biases: set[str]                      # dense biases computed as per-sample gradients
    broadcast: dict[str, torch.Tensor]          # parameters substituted by one copy per sample
    fallback: dict[str, torch.Tensor]           # parameters computed with the Jacobian
    costs: dict[str, dict[str, float]] = field(default_factory=dict)
    forward_macs: float = 0.0                   # multiply-adds of the structured calls, per sample
    channels_last: bool = False                 # run 4-D inputs in the channels-last memory format
    batched: bool = False                       # all outputs' cotangents in one backward pass


def _broadcast_candidates(problem: NTKProblem, covered: set[str]) -> dict[str, torch.Tensor]:
    return {n: p for n, p in problem.params.items() if n not in covered and p.ndim >= 2 and p.shape[0] == 1}


def _expand(params: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    return {name: p.expand(n, *p.shape[1:]).clone().requires_grad_(True) for name, p in params.items()}


def _rebuilt_gradients(problem: NTKProblem, calls: list[Call], tap_grads: list[torch.Tensor]
                       ) -> dict[str, torch.Tensor]:
    """Σ over samples of the per-sample gradients each rule rebuilds: ``{name: (R, numel)}`` for
    cotangents ``(R, n, ...)`` (``R`` output directions)."""
    rebuilt: dict[str, torch.Tensor] = {}

    def add(name: str, value: torch.Tensor) -> None:
        rebuilt[name] = rebuilt.get(name, 0) + value.reshape(value.shape[0], -1)

    for call, g in zip(calls, tap_grads):
        if call.site.kind == "norm":
            for name, j in norm_jacobians(call, g).items():
                add(name, j.sum(0))
            continue
        a, gg, groups = dense_arrays(call, g, need_inputs=call.weight is not None)
        if call.weight:
            add(call.weight, summed_outer(a, gg, groups))
        if call.bias:
            add(call.bias, gg.sum(dim=(1, 2)))
    return rebuilt


def _close(mine: torch.Tensor, truth: torch.Tensor, tol: float, floor: float = 0.0) -> bool:
    scale = max(float(truth.norm()), floor)
    return (scale == 0 and float(mine.norm()) == 0) or float((mine - truth).norm()) <= tol * max(scale, 1e-30)


def _verify(problem: NTKProblem, sites: list[Site], probe: torch.Tensor, broadcast: dict[str, torch.Tensor],
            channels_last: bool = False, plain: torch.Tensor | None = None
            ) -> tuple[set[str], list[Site], list[Call], list[torch.Tensor], bool]:
    """Parameters whose structured gradients equal autograd's on ``probe``, the sites kept, the
    probe's calls and their cotangents ``(3, n, ...)`` for three random combinations of the outputs
    (one per sample, then two shared by all samples), and
    whether the channels-last memory format is used.

    When the tapped model's output differs from the model's (an attention rewrite, or per-sample
    copies of a parameter, that does not compute the same function), those are dropped first; a
    model that fails in the channels-last format (a ``view`` of a convolution's output) runs in its own.
    """
    tol = 1e-3 if problem.itemsize <= 4 else 1e-9
    if channels_last:
        # the channels-last format is checked on the outputs only; autograd's parameter gradients are
        # taken in the model's own format (in torch 2.13 on the CPU, with one thread, the weight gradient
        # of a strided 1 x 1 convolution from 4 to 8 channels in channels-last corrupts the heap)
        with torch.no_grad():
            plain = problem.f_batch(problem.params, probe)
        try:
            out, _ = tapped_forward(problem, sites, probe, _expand(broadcast, probe.shape[0]), True)
            fits = out.shape == plain.shape and _close(out.detach(), plain, tol)
        except RuntimeError:
            fits = False
        return (*_verify(problem, sites, probe, broadcast, plain=plain)[:4], fits)
    candidates = {n for s in sites for n in s.roles.values()}
    leaves = {n: problem.params[n].clone().requires_grad_(True) for n in candidates}
    copies = _expand(broadcast, probe.shape[0])
    if plain is None:
        with torch.no_grad():
            plain = problem.f_batch(problem.params, probe)
    try:
        out, calls = tapped_forward(problem, sites, probe, {**leaves, **copies}, channels_last)
        same = out.shape == plain.shape and _close(out.detach(), plain, tol)
    except RuntimeError:
        same = False
    if not same:
        if any(s.kind == "attention" for s in sites):
            return _verify(problem, [s for s in sites if s.kind != "attention"], probe, broadcast, plain=plain)
        if broadcast:
            return _verify(problem, sites, probe, {}, plain=plain)
        return set(), [], [], [], False
    # the rules are linear in the cotangent: checking them for one random combination of the outputs
    # (its own for every sample) checks them for all (a wrong rule agrees only on a subspace of measure
    # zero), in one backward pass; two more combinations, the same for every sample, tell which
    # cotangents factor over outputs (see parallel_residual)
    gen = torch.Generator(out.device).manual_seed(0)
    direction = torch.randn(out.shape, generator=gen, dtype=out.dtype, device=out.device)
    shared = torch.randn((2, out.shape[1]), generator=gen, dtype=out.dtype, device=out.device)
    taps = [c.tap for c in calls]
    pairs = [torch.autograd.grad(out, taps, grad_outputs=r.expand_as(out), retain_graph=True, allow_unused=True,
                                 materialize_grads=True) for r in shared] if taps else []
    grads = torch.autograd.grad(out, taps + list(leaves.values()), grad_outputs=direction, allow_unused=True,
                                materialize_grads=True)
    # per call (3, n, ...): the checking direction, then the two shared ones
    tap_grads = [torch.stack([g, *(p[i] for p in pairs)]) for i, g in enumerate(grads[:len(calls)])]
    param_grads = dict(zip(leaves, grads[len(calls):]))
    rebuilt = _rebuilt_gradients(problem, calls, [g[:1] for g in tap_grads])
    # a gradient that vanishes exactly (a bias a later normalisation removes) is compared on the scale of all
    floor = 1e-3 * max((float(g.norm()) for g in param_grads.values()), default=0.0)
    verified = set()
    for name in sorted(candidates):
        truth = param_grads[name].reshape(1, -1)
        if _close(rebuilt.get(name, torch.zeros_like(truth)).reshape_as(truth), truth, tol, floor):
            verified.add(name)
            continue
        owner = next(s for s in sites if name in s.roles.values())
        warnings.warn(f"params: {name!r} is used outside the forward pass of its layer {owner.name!r} (or the "
                      f"layer does not behave like a plain {type(owner.module).__name__}); its kernel "
                      f"contribution is computed with the Jacobian", stacklevel=6)
    verified |= {n for n in copies if _separates_samples(problem, n, probe)}
    return verified, sites, calls, tap_grads, channels_last


def _separates_samples(problem: NTKProblem, name: str, probe: torch.Tensor) -> bool:
    """A per-sample copy is exact when sample 0's outputs do not depend on the other samples' copies."""
    if probe.shape[0] < 2:
        return False
    copies = _expand({name: problem.params[name]}, probe.shape[0])
    out, _ = tapped_forward(problem, [], probe, copies)
    g = torch.autograd.grad(out[0].sum(), copies[name], allow_unused=True, materialize_grads=True)[0]
    return float(g[1:].abs().max()) == 0.0


def _factors(call: Call, tap_grad: torch.Tensor, k: int, tol: float) -> bool:
    """Whether the cotangents of ``call`` factor over the ``k`` outputs on the probe, from its
    cotangents ``(3, n, ...)`` of :func:`_verify` (the last two: random output directions shared
    by all samples, :func:`parallel_residual`)."""
    if k < 2:
        return False
    _, g, _ = dense_arrays(call, tap_grad, need_inputs=False)
    if g.shape[1] * g.shape[2] < 2:
        return False
    return parallel_residual(g[1:2], g[2:3]) <= tol


def _batched_cotangents(out: torch.Tensor, tapped: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """:func:`output_grads` in one batched pass, or ``None`` where that pass raises or where an
    operation has no batching rule (PyTorch warns of a performance drop and loops over the outputs
    itself). Other warnings are passed on."""
    try:
        with warnings.catch_warnings(record=True) as caught, differentiable_attention():
            warnings.simplefilter("always")
            grads = output_grads(out, tapped, batched=True)
    except RuntimeError:
        return None
    looped = False
    for w in caught:
        if "batching rule" in str(w.message):
            looped = True
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return None if looped else grads


def _plan_structured(problem: NTKProblem, output: str) -> Plan:
    """Find the sites, verify them on a probe batch, group the calls by parameter and pick a form
    per dense weight by the cost model."""
    probe = problem.probe
    sites = find_sites(problem)
    covered = {n for s in sites for n in s.roles.values()}
    broadcast = _broadcast_candidates(problem, covered)
    channels_last = probe.ndim == 4 and any(type(s.module) is nn.Conv2d for s in sites)
    verified, sites, calls, tap_grads, channels_last = (
        _verify(problem, sites, probe, broadcast, channels_last) if (sites or broadcast)
        else (set(), [], [], [], False))
    for site in sites:
        site.roles = {r: n for r, n in site.roles.items() if n in verified}
    sites = [s for s in sites if s.roles]
    site_ids = {id(s) for s in sites}
    kept = [i for i, c in enumerate(calls) if id(c.site) in site_ids]
    calls, tap_grads = [calls[i] for i in kept], [tap_grads[i] for i in kept]
    broadcast = {n: p for n, p in broadcast.items() if n in verified}
    fallback = {n: p for n, p in problem.params.items() if n not in verified}
    k, size = problem.n_outputs, problem.itemsize
    # per row: the autograd graph and one backward pass's transients (output_grads runs one output at a
    # time), the K cotangents and the inputs of every call (below), the gradients of the broadcast copies
    row = 3 * problem.activation_numel + k * sum(p.numel() for p in broadcast.values())
    if fallback:
        row += 3 * k * sum(p.numel() for p in fallback.values()) + 4 * k * problem.activation_numel
    pair = float(k * k if output == "full" else 1)
    detail = _Structured(sites, [], [], set(), broadcast, fallback, channels_last=channels_last)
    if not sites:
        return Plan(size * row, size * 2 * pair, detail)
    mean_numel = sum(c.tap[0].numel() for c in calls) / len(calls)
    if k > 1 and mean_numel < BATCHED_TAP_NUMEL:     # the first block checks that it runs (_capture)
        detail.batched = True
        row += (k - 1) * problem.activation_numel        # the K outputs' transients at once
    index = {id(s): i for i, s in enumerate(sites)}
    detail.call_sites = [(index[id(c.site)], c.part) for c in calls]
    shapes: dict[int, CallShape] = {}
    for i, c in enumerate(calls):
        if c.site.kind == "norm":
            row += k * 2 * c.inputs[0].numel()
            detail.forward_macs += c.inputs[0].numel() / max(c.inputs[0].shape[0], 1)
            continue
        a, g, groups = dense_arrays(Call(c.site, c.part, c.inputs[:1], c.tap), tap_grads[i][:, :1], need_inputs=True)
        shapes[i] = CallShape(a.shape[1], a.shape[2] // groups, g.shape[3], groups)
        detail.forward_macs += a.shape[1] * a.shape[2] * g.shape[3] / groups
        row += a.shape[1] * a.shape[2] + k * a.shape[1] * g.shape[3]
    weights = sorted({c.weight for c in calls if c.weight and c.site.kind != "norm"})
    uses = {w: tuple(i for i, c in enumerate(calls) if c.weight == w) for w in weights}
    merged = set()
    tol = 1e-5 if problem.itemsize <= 4 else 1e-11
    for w in weights:
        mine = [shapes[i] for i in uses[w]]
        factorable = len(uses[w]) == 1 and _factors(calls[uses[w][0]], tap_grads[uses[w][0]], k, tol)
        form, costs = choose_form(mine, k, output, problem.n_rows, factorable=factorable)
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
        detail.weights.append(_Weight(w, uses[w], form, mine[0].groups, bias if with_bias else None))
    detail.outer_biases = {c.bias for c in calls if c.bias and c.site.kind != "norm"} - merged
    return Plan(size * row, size * 2 * pair, detail)


def method_costs(problem: NTKProblem, plan: Plan, output: str) -> dict[str, float]:
    """Estimated cost of one ``n × n`` block (``n = min(n_rows, 256)``) by ``"jacobian"`` and by
    ``"structured"`` with this plan, in the units of :func:`choose_form`.

    With ``F`` the forward multiply-adds per sample (the structured calls' plus one per activation
    element), ``P`` the selected parameters and ``K`` the outputs:

    * ``"jacobian"``: per-sample Jacobians, ``2·n·(F + 2·K·F)`` to build and ``ELEMENT_COST·2·n·K·P``
      to store, then ``n²·K²·P`` (``K`` for a trace) to contract;
    * ``"structured"``: the cotangents at every tap, ``2·n·(F + K·F)``, the chosen form of every
      dense weight, ``n²·K²·P_e`` for the elementwise and broadcast parameters, and for the
      fallback parameters the Jacobian's terms with ``P`` their count.
    """
    detail: _Structured = plan.detail
    k = problem.n_outputs
    n = float(max(1, min(problem.n_rows, NOMINAL_ROWS)))
    kk = k * k if output == "full" else k
    forward = detail.forward_macs + problem.activation_numel

    def jacobian_terms(p: float) -> float:
        return 2 * n * (forward + 2 * k * forward) + ELEMENT_COST * 2 * n * k * p + n * n * kk * p

    dense = {w.param for w in detail.weights} | detail.outer_biases | {w.bias for w in detail.weights if w.bias}
    n_fallback = sum(p.numel() for p in detail.fallback.values())
    n_other = sum(p.numel() for name, p in problem.params.items() if name not in dense and name not in detail.fallback)
    structured = 2 * n * (forward + k * forward) + sum(detail.costs[w.param][w.form] for w in detail.weights)
    structured += n * n * kk * n_other + ELEMENT_COST * 2 * n * k * n_other
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
    factored: dict[str, tuple[torch.Tensor, torch.Tensor]]   # weight → (w (K, o), u (n, o, d))
    jacobians: dict[str, torch.Tensor]                # name → (n, K, numel): outer-form parameters


def _capture(problem: NTKProblem, detail: _Structured, x: torch.Tensor) -> _Side:
    copies = _expand(detail.broadcast, x.shape[0])

    def tapped_pass() -> tuple[torch.Tensor, list[Call], list[torch.Tensor]]:
        with differentiable_attention():
            out, calls = tapped_forward(problem, detail.sites, x, copies, detail.channels_last)
        return out, calls, [c.tap for c in calls] + list(copies.values())

    out, calls, tapped = tapped_pass()
    index = {id(s): i for i, s in enumerate(detail.sites)}
    order = [(index[id(c.site)], c.part) for c in calls]
    if order != detail.call_sites:
        names = [detail.sites[i].name + (f".{p}_proj" if p else "") for i, p in order]
        expected = [detail.sites[i].name + (f".{p}_proj" if p else "") for i, p in detail.call_sites]
        raise RuntimeError(f"model: expected the same sequence of layer calls for every input, got {names} "
                           f"instead of {expected}; use method='jacobian'")
    grads = _batched_cotangents(out, tapped) if detail.batched else None
    if detail.batched and grads is None:    # the batched pass does not run on this model: never again
        detail.batched = False
        out, calls, tapped = tapped_pass()
    if grads is None:
        with differentiable_attention():
            grads = output_grads(out, tapped) if tapped else []
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
                a, g, groups = dense_arrays(calls[i], tap_grads[i], need_inputs=True)
                add(weight.param, outer_jacobian(a, g, groups))
        elif weight.form == "factored":
            i = weight.calls[0]
            a, g, groups = dense_arrays(calls[i], tap_grads[i], need_inputs=True)
            w, c, resid = factorize(g)      # this block's own columns (an output dead on the probe is alive here)
            if resid <= (1e-5 if problem.itemsize <= 4 else 1e-11):
                side.factored[weight.param] = (w, torch.bmm(c.transpose(1, 2), a))       # w (K, o), u (n, o, d)
            else:   # not factored for these inputs: the exact per-sample gradient instead
                add(weight.param, outer_jacobian(a, g, groups))
    for i, call in enumerate(calls):
        if call.site.kind == "norm":
            for name, j in norm_jacobians(call, tap_grads[i]).items():
                add(name, j)
            continue
        need = i in gram_calls
        if need or call.bias in detail.outer_biases:
            a, g, _ = dense_arrays(call, tap_grads[i], need_inputs=need)
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
                    total += gram_term(side_a.inputs[i], side_a.cotangents[i], side_b.inputs[j],
                                        side_b.cotangents[j], output, weight.bias is not None)
        elif weight.param in side_a.factored and weight.param in side_b.factored:
            wa, ua = side_a.factored[weight.param]
            wb, ub = (None, None) if xb is None else side_b.factored[weight.param]
            total += factored_term(ua, wa, ub, wb, output)
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
    w, u = side.factored[weight.param]                    # (K, o), (n, o, d)
    return (w.T[None, :, :, None] * u[:, :, None, :]).permute(0, 2, 1, 3).reshape(u.shape[0], w.shape[0], -1)


STRUCTURED = Builder(_plan_structured, _ntk_structured, batch_dependent_ok=False)

