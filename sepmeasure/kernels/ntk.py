"""Empirical neural tangent kernel of any torch model.

One public function, :func:`empirical_ntk`, with three implementations that compute the same
kernel and are checked against each other:

* ``"jacobian"`` — per-sample Jacobians with ``torch.func`` (``functional_call`` + ``jacrev``
  vmapped over samples) contracted over the parameters. The reference: works for every model.
  ``jacrev`` is written out as one vjp and one pullback per output so that vmap is never nested
  in vmap (nested, PReLU's backward batching rule silently mixes the two batch axes when their
  sizes agree).
* ``"ntvp"`` — NTK-vector products: a vjp gives ``J(x')ᵀ e`` for every output basis vector
  ``e``, a jvp pushes it through ``J(x)`` (Novak et al. 2022, *Fast Finite Width Neural Tangent
  Kernel*).
* ``"structured"`` — uses the structure of ``Linear`` and ``Conv1d``/``Conv2d`` layers (Novak et
  al. 2022, "structured derivatives"): with layer input ``a`` (or its patches) and output cotangent
  ``g_k = ∂f_k/∂z``, the weight contribution is
  ``Σ_{t,s} ⟨a_t(x), a_s(x')⟩ ⟨g_{k,t}(x), g_{k',s}(x')⟩`` (input Gram × cotangent Gram) and the
  bias contribution ``⟨Σ_t g_{k,t}(x), Σ_s g_{k',s}(x')⟩``, summed over layers and over every
  pair of calls of a layer that runs more than once. Every other parameter (PReLU slopes,
  normalisation affines, ...) falls back, layer by layer, to the Jacobian of just those
  parameters.

Each implementation is a private builder with the same signature, dispatched from
``_BUILDERS``; blocks of ``x1 × x2`` bound the memory.
"""
from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp, vmap

from .blocks import BlockGrid, TensorSink, fill_blocks, local_producer, swap_block
from ..validation import check_choice, check_features, check_int, compile_name_pattern, describe

__all__ = ["NTK_METHODS", "NTK_OUTPUTS", "ParameterSelector", "empirical_ntk", "select_parameters"]

NTK_METHODS: tuple[str, ...] = ("auto", "jacobian", "ntvp", "structured")
NTK_OUTPUTS: tuple[str, ...] = ("full", "trace")

ParameterSelector = Union[None, str, Sequence[str], Callable[[str, torch.Tensor], bool]]
"""What ``params=`` accepts; see :func:`select_parameters`."""

# Working memory one block of x1 × x2 may use when ``block_size`` is not given.
_BLOCK_MEMORY_BYTES = 1 << 30
# Rows used to weigh per-row against per-pair costs when choosing a contraction order.
_NOMINAL_ROWS = 256
_MAX_LISTED_NAMES = 25
_STRUCTURED_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)


# ----------------------------------------------------------------------------
# Parameter selection
# ----------------------------------------------------------------------------

def _list_names(names: Sequence[str]) -> str:
    shown = [repr(n) for n in names[:_MAX_LISTED_NAMES]]
    if len(names) > _MAX_LISTED_NAMES:
        shown.append(f"... and {len(names) - _MAX_LISTED_NAMES} more")
    return "[" + ", ".join(shown) + "]" if shown else "[] (the model has no parameters)"


def select_parameters(model: nn.Module, params: ParameterSelector = None,
                      *, name: str = "params") -> dict[str, torch.Tensor]:
    """Resolve a parameter selector to ``{name: parameter}`` in ``named_parameters()`` order.

    Parameters
    ----------
    model : nn.Module
        The model whose ``named_parameters()`` are selected from.
    params : str, sequence of str, callable, or None, default None
        ``"a.weight"`` selects that parameter (a tied parameter may be named by any of its
        names); ``"re:<pattern>"`` every parameter whose name fully matches the regular
        expression; a list the union of its items; a callable ``f(name, parameter) -> bool``
        every parameter for which it is true. ``None`` selects every parameter with
        ``requires_grad=True``.
    name : str, default "params"
        Argument name used in error messages.

    Returns
    -------
    dict of str to Parameter
        The selected parameters under their canonical (first) names.

    Raises
    ------
    TypeError
        ``model`` is not an ``nn.Module``; ``params`` (or an item of its list) is neither a string
        nor a callable.
    ValueError
        When nothing is selected (the message lists the parameter names), ``params`` is an empty
        list or tuple, an exact name does not exist (with close matches suggested), or a
        ``"re:<pattern>"`` is not a valid regular expression.

    Examples
    --------
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> list(select_parameters(model, "re:2\\\\..*"))
    ['2.weight', '2.bias']
    >>> list(select_parameters(model, lambda n, p: p.ndim == 1))
    ['0.bias', '2.bias']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {describe(model)}")
    canonical = dict(model.named_parameters())
    names = list(canonical)
    by_id = {id(p): n for n, p in canonical.items()}
    alias = {n: by_id[id(p)] for n, p in model.named_parameters(remove_duplicate=False)}
    all_names = list(alias)
    if params is None:
        chosen = {n for n, p in canonical.items() if p.requires_grad}
        if not chosen:
            raise ValueError(f"{name}: expected the model to have a parameter with requires_grad=True "
                             f"(or an explicit selection), got none. Parameters: {_list_names(names)}")
    else:
        items = list(params) if isinstance(params, (list, tuple)) else [params]
        if not items:
            raise ValueError(f"{name}: expected at least one selector, got an empty {type(params).__name__}")
        chosen = set()
        for spec in items:
            chosen |= _match_parameters(spec, canonical, alias, all_names, name)
        if not chosen:
            raise ValueError(f"{name}: expected a selector matching at least one parameter, got "
                             f"{describe(params)} which matches none. Parameters: {_list_names(names)}")
    return {n: canonical[n] for n in names if n in chosen}


def _match_parameters(spec: Any, canonical: dict[str, torch.Tensor], alias: dict[str, str],
                      all_names: list[str], name: str) -> set[str]:
    if isinstance(spec, str):
        if spec.startswith("re:"):
            pattern = compile_name_pattern(spec, name)
            return {alias[n] for n in all_names if pattern.fullmatch(n)}
        if spec in alias:
            return {alias[spec]}
        close = difflib.get_close_matches(spec, all_names, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"{name}: expected the name of a parameter, got {spec!r}{hint} "
                         f"Parameters: {_list_names(list(canonical))}")
    if callable(spec):
        return {n for n, p in canonical.items() if spec(n, p)}
    raise TypeError(f"{name}: expected a parameter name, 're:<pattern>', a callable (name, parameter) -> bool, "
                    f"or a list of these, got {describe(spec)}")


# ----------------------------------------------------------------------------
# The problem every builder works on
# ----------------------------------------------------------------------------

@dataclass
class _Problem:
    """A model as a function of the selected parameters, with everything else held constant."""

    model: nn.Module
    params: dict[str, torch.Tensor]          # selected parameters, detached, canonical names
    constants: dict[str, torch.Tensor]       # every parameter and buffer, detached
    n_outputs: int
    batch_dependent: bool
    activation_numel: int                    # numel of all leaf-module outputs for one sample
    n_rows: int                              # max(N1, N2)
    probe: torch.Tensor                      # a few rows of x1 for planning (all of x1 when batch-dependent)
    buffer_names: frozenset[str] = frozenset()
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.params.values())

    @property
    def itemsize(self) -> int:
        return next(iter(self.params.values())).element_size()

    def f_batch(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Outputs ``(n, K)`` of the model on the batch ``x`` with ``params`` substituted."""
        constants = self.constants
        if self.batch_dependent:  # training-mode normalisation updates its running statistics
            constants = {n: (t.clone() if n in self.buffer_names else t) for n, t in constants.items()}
        return functional_call(self.model, {**constants, **params}, (x,))

    def f_single(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Outputs ``(K,)`` of the model on one sample."""
        return self.f_batch(params, x.unsqueeze(0)).squeeze(0)


def _batch_dependent_modules(model: nn.Module) -> list[str]:
    """Modules whose output for one sample depends on the others in the batch."""
    found = []
    for n, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None):
            found.append(n)
    return found


def _random_modules(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0]


def _activation_numel(model: nn.Module, run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Run ``run()`` while summing the per-sample numel of every leaf module's output."""
    sizes: list[int] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.ndim >= 1 and output.shape[0] > 0:
            sizes.append(output.numel() // output.shape[0])

    handles = [m.register_forward_hook(hook) for m in model.modules() if next(m.children(), None) is None]
    try:
        out = run()
    finally:
        for h in handles:
            h.remove()
    return out, sum(sizes)


def _check_inputs(model: nn.Module, x1: Any, x2: Any, params: dict[str, torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    ref = next(iter(params.values()))
    x1 = check_features(x1, "x1", ndim=None)
    if x2 is not None:
        x2 = check_features(x2, "x2", ndim=None)
        if x2.shape[1:] != x1.shape[1:]:
            raise ValueError(f"x2: expected samples of shape {tuple(x1.shape[1:])} like x1, got {describe(x2)}")
    for nm, x in (("x1", x1), ("x2", x2)):
        if x is None:
            continue
        if x.device != ref.device:
            raise ValueError(f"{nm}: expected a tensor on {ref.device} like the model's parameters, got {describe(x)}")
        if x.dtype != ref.dtype:
            raise TypeError(f"{nm}: expected dtype {ref.dtype} like the model's parameters, got {describe(x)}")
    return x1, x2


def _make_problem(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None, selected: dict[str, torch.Tensor],
                  allow_batch_dependence: bool) -> _Problem:
    random_modules = _random_modules(model)
    if random_modules:
        raise ValueError(f"model: expected no random layers, got dropout in training mode at "
                         f"{_list_names(random_modules)}; call model.eval() first")
    dependent = _batch_dependent_modules(model)
    if dependent and not allow_batch_dependence:
        raise ValueError(
            f"model: expected every sample's output to depend on that sample only, got batch normalisation "
            f"using batch statistics at {_list_names(dependent)} (training mode or no running statistics), "
            f"so the kernel would depend on the batch; call model.eval(), or pass allow_batch_dependence=True "
            f"for the kernel of the batch outputs f(x1), f(x2)")
    constants = {n: t.detach() for n, t in model.named_parameters()}
    constants.update({n: t.detach() for n, t in model.named_buffers()})
    problem = _Problem(model=model, params={n: p.detach() for n, p in selected.items()}, constants=constants,
                       n_outputs=0, batch_dependent=bool(dependent), activation_numel=0,
                       n_rows=max(x1.shape[0], 0 if x2 is None else x2.shape[0]),
                       probe=x1 if dependent else x1[: min(x1.shape[0], 8)],
                       buffer_names=frozenset(n for n, _ in model.named_buffers()))
    for nm, x in (("x1", x1), ("x2", x2)):
        if x is None:
            continue
        probe = x if problem.batch_dependent else x[:2]
        try:
            with torch.no_grad():
                out, numel = _activation_numel(model, lambda: problem.f_batch(problem.params, probe))
        except Exception as exc:  # the model's own error, re-raised with the argument named
            raise ValueError(f"{nm}: expected inputs the model accepts, got {describe(x)}; applying the model "
                             f"to {nm}[:{probe.shape[0]}] raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != probe.shape[0]:
            raise ValueError(f"model: expected outputs of shape (N, K) for {nm} of {probe.shape[0]} rows, "
                             f"got {describe(out)}")
        problem.n_outputs = out.shape[1]
        problem.activation_numel = max(numel, 1)
    return problem


# ----------------------------------------------------------------------------
# Builders: plan(problem, output) -> plan; block(problem, plan, xa, xb, output) -> kernel block
# (xb is None for a diagonal block of a symmetric kernel, which lets a builder reuse xa's work)
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Plan:
    """What a builder prepared, and the memory it needs per row and per (row, row) pair."""

    bytes_per_row: float
    bytes_per_pair: float
    detail: Any = None


@dataclass(frozen=True)
class _Builder:
    plan: Callable[[_Problem, str], _Plan]
    block: Callable[[_Problem, _Plan, torch.Tensor, torch.Tensor | None, str], torch.Tensor]
    batch_dependent_ok: bool


def _contract(ja: dict[str, torch.Tensor], jb: dict[str, torch.Tensor], output: str) -> torch.Tensor:
    """``Σ_p J_a[a,k,p] J_b[b,l,p]`` → ``(na, nb, K, K)``, or its trace over ``k = l`` → ``(na, nb)``."""
    total = None
    for name, a in ja.items():
        b = jb[name]
        na, k = a.shape[:2]
        nb = b.shape[0]
        if output == "full":
            t = (a.reshape(na * k, -1) @ b.reshape(nb * k, -1).T).view(na, k, nb, k).permute(0, 2, 1, 3)
        else:
            t = torch.bmm(a.transpose(0, 1), b.permute(1, 2, 0)).sum(0)
        total = t if total is None else total + t
    return total


def _per_sample_jacobians(problem: _Problem, params: dict[str, torch.Tensor], x: torch.Tensor
                          ) -> dict[str, torch.Tensor]:
    """``{name: (n, K, numel)}``: the Jacobian of every sample's outputs w.r.t. ``params``."""
    if problem.batch_dependent:
        return _batch_jacobians(problem, params, x)
    jac = vmap(_jacobian_rows(problem, params))(x)
    return {n: j.reshape(x.shape[0], problem.n_outputs, -1) for n, j in jac.items()}


def _jacobian_rows(problem: _Problem, params: dict[str, torch.Tensor]
                   ) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """``x -> {name: (K, *shape)}``, the rows ``J(x)ᵀ e_k`` of one sample's Jacobian.

    This is ``jacrev`` written out: one vjp, then one pullback per output, so that it can be
    vmapped over samples without nesting vmap in vmap (some batching rules are wrong when nested:
    PReLU's backward mixes the two batch axes when their sizes agree).
    """
    ref = next(iter(params.values()))
    basis = torch.eye(problem.n_outputs, dtype=ref.dtype, device=ref.device)

    def rows(x: torch.Tensor) -> dict[str, torch.Tensor]:
        _, pullback = vjp(lambda p: problem.f_single(p, x), params)
        per_output = [pullback(basis[i])[0] for i in range(problem.n_outputs)]
        return {n: torch.stack([r[n] for r in per_output]) for n in params}

    return rows


def _batch_jacobians(problem: _Problem, params: dict[str, torch.Tensor], x: torch.Tensor
                     ) -> dict[str, torch.Tensor]:
    """Jacobian of the outputs of the batch ``x`` as a whole (batch statistics included)."""
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    with torch.enable_grad():
        out = problem.f_batch(leaves, x)
        rows = out.numel()
        jac = {n: torch.empty(rows, p.numel(), dtype=p.dtype, device=p.device) for n, p in leaves.items()}
        per_row = max(sum(p.numel() for p in leaves.values()) * 4, 1)
        chunk = max(1, min(rows, _BLOCK_MEMORY_BYTES // (per_row * out.element_size())))
        for start in range(0, rows, chunk):
            stop = min(rows, start + chunk)
            basis = torch.zeros(stop - start, rows, dtype=out.dtype, device=out.device)
            basis[torch.arange(stop - start, device=out.device), torch.arange(start, stop, device=out.device)] = 1
            grads = torch.autograd.grad(out, list(leaves.values()), grad_outputs=basis.view(-1, *out.shape),
                                        retain_graph=True, is_grads_batched=True, allow_unused=True,
                                        materialize_grads=True)
            for (n, _), g in zip(leaves.items(), grads):
                jac[n][start:stop] = g.reshape(stop - start, -1)
    return {n: j.view(x.shape[0], problem.n_outputs, -1) for n, j in jac.items()}


# --- "jacobian" ---------------------------------------------------------------

def _plan_jacobian(problem: _Problem, output: str) -> _Plan:
    k, size = problem.n_outputs, problem.itemsize
    per_row = size * (2 * k * problem.n_params + 4 * k * problem.activation_numel)
    per_pair = size * 2 * (k * k if output == "full" else 1)
    return _Plan(per_row, per_pair)


def _cached_rows(problem: _Problem, key: str, x: torch.Tensor,
                 compute: Callable[[torch.Tensor], Any]) -> Any:
    """``compute(x)``, reused while the same row block comes back (the outer loop over x1 blocks)."""
    ident = (x.data_ptr(), tuple(x.shape), x.stride())
    hit = problem.cache.get(key)
    if hit is not None and hit[0] == ident:
        return hit[1]
    problem.cache[key] = None   # free the previous block before computing the next
    value = compute(x)
    problem.cache[key] = (ident, value)
    return value


def _ntk_jacobian(problem: _Problem, plan: _Plan, xa: torch.Tensor, xb: torch.Tensor | None,
                  output: str) -> torch.Tensor:
    ja = _cached_rows(problem, "jacobian", xa, lambda x: _per_sample_jacobians(problem, problem.params, x))
    jb = ja if xb is None else _per_sample_jacobians(problem, problem.params, xb)
    return _contract(ja, jb, output)


# --- "ntvp" -------------------------------------------------------------------

def _plan_ntvp(problem: _Problem, output: str) -> _Plan:
    k, size = problem.n_outputs, problem.itemsize
    per_row = size * (2 * k * problem.n_params + 4 * k * problem.activation_numel)
    per_pair = size * 4 * k * problem.activation_numel
    return _Plan(per_row, per_pair)


def _ntk_ntvp(problem: _Problem, plan: _Plan, xa: torch.Tensor, xb: torch.Tensor | None,
              output: str) -> torch.Tensor:
    xb = xa if xb is None else xb
    k, na, nb = problem.n_outputs, xa.shape[0], xb.shape[0]
    params = problem.params
    # J(x_a)ᵀ e_k for every row a and output k: {name: (na·K, *shape)}
    tangents = _cached_rows(problem, "ntvp", xa, lambda x: {
        n: t.reshape(na * k, *t.shape[2:]) for n, t in vmap(_jacobian_rows(problem, params))(x).items()})

    def push(v: dict[str, torch.Tensor]) -> torch.Tensor:
        return jvp(lambda p: problem.f_batch(p, xb), (params,), (v,))[1]  # J(x_b) v

    pushed = vmap(push)(tangents).view(na, k, nb, k)         # Θ(x_b, x_a)_{lk} at [a, k, b, l]
    if output == "full":
        return pushed.permute(0, 2, 1, 3)
    return pushed.diagonal(dim1=1, dim2=3).sum(-1)


# --- "structured" -------------------------------------------------------------

@dataclass
class _Layer:
    """A Linear/Conv module whose weight and/or bias is computed structurally."""

    name: str
    module: nn.Module
    weight: str | None = None   # canonical parameter names, when selected and structured
    bias: str | None = None


@dataclass
class _Call:
    """One call of a tapped layer: its input and a zero tap added to its output."""

    layer: _Layer
    inputs: torch.Tensor
    tap: torch.Tensor


class _LayerTaps:
    """Forward hooks that record each call's input and add a zero *tap* to its output.

    The gradient of the outputs w.r.t. a tap is the output cotangent of that call. Handles are
    removed on exit, also on error.
    """

    def __init__(self, layers: Sequence[_Layer]) -> None:
        self.layers = list(layers)
        self.calls: list[_Call] = []
        self._handles: list[Any] = []

    def __enter__(self) -> _LayerTaps:
        for layer in self.layers:
            self._handles.append(layer.module.register_forward_hook(self._hook(layer)))
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, layer: _Layer) -> Callable[[nn.Module, Any, Any], torch.Tensor]:
        def hook(module: nn.Module, args: Any, output: Any) -> torch.Tensor:
            tap = torch.zeros_like(output, requires_grad=True)
            self.calls.append(_Call(layer, args[0].detach(), tap))
            return output + tap
        return hook


def _conv_patches(module: nn.Conv1d | nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    """``(n, C, *spatial) -> (n, T, C·Π kernel)``, in the order of ``weight.reshape(out, -1)``."""
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
        a = nn.functional.pad(a, pads, mode=mode)
    if one_d:
        a = a.unsqueeze(-2)
    kernel = (1, *module.kernel_size) if one_d else module.kernel_size
    dilation = (1, *module.dilation) if one_d else module.dilation
    stride = (1, *module.stride) if one_d else module.stride
    cols = nn.functional.unfold(a, kernel, dilation=dilation, stride=stride)   # (n, C·Πk, T)
    return cols.transpose(1, 2)


def _layer_arrays(call: _Call, grad: torch.Tensor, need_inputs: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Inputs ``A (n, T, d)`` (when needed) and cotangents ``G (K, n, T, o)`` of one call."""
    module, a = call.layer.module, call.inputs
    k, n = grad.shape[:2]
    if isinstance(module, nn.Linear):
        g = grad.reshape(k, n, -1, module.out_features)
        inputs = a.reshape(n, -1, module.in_features) if need_inputs else None
        return inputs, g
    g = grad.reshape(k, n, module.out_channels, -1).transpose(-1, -2)
    return (_conv_patches(module, a) if need_inputs else None), g


def _call_supported(call: _Call) -> bool:
    module, a = call.layer.module, call.inputs
    if isinstance(module, nn.Linear):
        return a.ndim >= 2 and a.shape[-1] == module.in_features
    want = 3 if isinstance(module, nn.Conv1d) else 4
    return a.ndim == want and module.groups == 1


@dataclass
class _Side:
    """Captured inputs and cotangents of every call for one block of samples."""

    inputs: list[torch.Tensor | None]     # per call: (n, T, d) or None
    cotangents: list[torch.Tensor]        # per call: (K, n, T, o)
    fallback: dict[str, torch.Tensor] | None


@dataclass(frozen=True)
class _Group:
    """One structured parameter and every call that uses it (a tied weight may span layers)."""

    param: str
    kind: str                 # "weight" or "bias"
    calls: tuple[int, ...]    # indices into the calls of one forward pass
    form: str = "gram"        # weights: "gram" or "outer"
    with_bias: bool = False   # a Gram-form weight whose bias (same calls, one position) rides along


@dataclass
class _Structured:
    layers: list[_Layer]
    call_layers: list[int]                # per call in forward order: index into layers
    groups: list[_Group]
    fallback: dict[str, torch.Tensor]     # parameters computed with the Jacobian


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


def _tapped_forward(problem: _Problem, layers: Sequence[_Layer], x: torch.Tensor,
                    leaves: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, list[_Call]]:
    with torch.enable_grad(), _LayerTaps(layers) as taps:
        out = functional_call(problem.model, {**problem.constants, **(leaves or {})}, (x,))
    return out, taps.calls


def _structured_layers(problem: _Problem) -> list[_Layer]:
    """Every Linear/Conv1d/Conv2d module (once, also when registered twice) with a selected parameter."""
    canonical = {id(p): n for n, p in problem.model.named_parameters()}
    layers, seen = [], set()
    for name, module in problem.model.named_modules():
        if type(module) not in _STRUCTURED_TYPES or id(module) in seen:
            continue
        seen.add(id(module))
        w = canonical.get(id(module.weight))
        b = canonical.get(id(module.bias)) if module.bias is not None else None
        layer = _Layer(name, module, w if w in problem.params else None, b if b in problem.params else None)
        if layer.weight or layer.bias:
            layers.append(layer)
    return layers


def _verified_parameters(problem: _Problem, layers: list[_Layer], probe: torch.Tensor) -> set[str]:
    """Parameters whose gradient, rebuilt from captured inputs and cotangents, equals autograd's.

    A parameter also used outside its layer's forward pass, or a layer whose input is not laid
    out as expected, fails the check and is left to the Jacobian.
    """
    candidates = {n for layer in layers for n in (layer.weight, layer.bias) if n}
    leaves = {n: problem.params[n].clone().requires_grad_(True) for n in candidates}
    out, calls = _tapped_forward(problem, layers, probe, leaves)
    unsupported = {id(c.layer) for c in calls if not _call_supported(c)}
    bad_names = {n for c in calls if id(c.layer) in unsupported for n in (c.layer.weight, c.layer.bias) if n}
    grads = _output_grads(out, [c.tap for c in calls] + list(leaves.values()))
    tap_grads, param_grads = grads[:len(calls)], dict(zip(leaves, grads[len(calls):]))
    rebuilt: dict[str, torch.Tensor] = {}
    for call, g in zip(calls, tap_grads):
        if id(call.layer) in unsupported:
            continue
        a, gg = _layer_arrays(call, g, need_inputs=call.layer.weight is not None)
        if call.layer.weight:
            rebuilt[call.layer.weight] = rebuilt.get(call.layer.weight, 0) + torch.einsum("knto,ntd->kod", gg, a)
        if call.layer.bias:
            rebuilt[call.layer.bias] = rebuilt.get(call.layer.bias, 0) + gg.sum(dim=(1, 2))
    tol = 1e-3 if problem.itemsize <= 4 else 1e-9
    verified = set()
    for name in sorted(candidates - bad_names):
        truth = param_grads[name].reshape(problem.n_outputs, -1)
        mine = rebuilt.get(name, torch.zeros_like(truth)).reshape_as(truth)
        err = float((mine - truth).norm()) / max(float(truth.norm()), 1e-30)
        if float(truth.norm()) == 0 and float(mine.norm()) == 0 or err <= tol:
            verified.add(name)
            continue
        owner = next(layer for layer in layers if name in (layer.weight, layer.bias))
        warnings.warn(f"params: {name!r} is used outside the forward pass of its layer {owner.name!r} (or the "
                      f"layer does not behave like a plain {type(owner.module).__name__}); its kernel "
                      f"contribution is computed with the Jacobian", stacklevel=5)
    return verified


def _plan_structured(problem: _Problem, output: str) -> _Plan:
    """Find the Linear/Conv layers, verify them on a probe batch, group the calls by parameter
    and pick a contraction order per weight."""
    probe = problem.probe
    layers = _structured_layers(problem)
    verified = _verified_parameters(problem, layers, probe) if layers else set()
    for layer in layers:
        layer.weight = layer.weight if layer.weight in verified else None
        layer.bias = layer.bias if layer.bias in verified else None
    kept = [layer for layer in layers if layer.weight or layer.bias]
    fallback = {n: p for n, p in problem.params.items() if n not in verified}
    k, size = problem.n_outputs, problem.itemsize
    row = 3 * k * problem.activation_numel            # the batched backward of a capture
    if fallback:
        row += 3 * k * sum(p.numel() for p in fallback.values()) + 4 * k * problem.activation_numel
    pair = float(k * k if output == "full" else 1)
    groups: list[_Group] = []
    call_layers: list[int] = []
    if kept:
        with torch.no_grad():
            _, calls = _tapped_forward(problem, kept, probe[:1])
        index = {id(layer): i for i, layer in enumerate(kept)}
        call_layers = [index[id(c.layer)] for c in calls]
        shapes = []   # (T, d, o) per call
        for c in calls:
            if isinstance(c.layer.module, nn.Linear):
                t = c.inputs[0].numel() // c.layer.module.in_features
                shapes.append((t, c.layer.module.in_features, c.layer.module.out_features))
            else:
                a = _conv_patches(c.layer.module, c.inputs)
                shapes.append((a.shape[1], a.shape[2], c.layer.module.out_channels))
            t, d, o = shapes[-1]
            row += t * d + k * t * o
        weights = {layer.weight for layer in kept if layer.weight}
        biases = {layer.bias for layer in kept if layer.bias}
        uses = {n: tuple(i for i, c in enumerate(calls) if n in (c.layer.weight, c.layer.bias))
                for n in weights | biases}
        merged_biases = set()
        for w in sorted(weights):
            mine = [shapes[i] for i in uses[w]]
            form, pair_mem, row_mem = _choose_form(mine, k, output, problem.n_rows)
            pair, row = max(pair, pair_mem), row + row_mem
            owner_biases = {calls[i].layer.bias for i in uses[w]}
            bias = next(iter(owner_biases)) if len(owner_biases) == 1 else None
            with_bias = (form == "gram" and bias is not None and uses.get(bias) == uses[w]
                         and all(t == 1 for t, _, _ in mine))
            if with_bias:
                merged_biases.add(bias)
            groups.append(_Group(w, "weight", uses[w], form, with_bias))
        groups += [_Group(b, "bias", uses[b]) for b in sorted(biases - merged_biases)]
    detail = _Structured(kept, call_layers, groups, fallback)
    return _Plan(size * row, size * 2 * pair, detail)


def _choose_form(shapes: Sequence[tuple[int, int, int]], k: int, output: str, n_rows: int
                 ) -> tuple[str, float, float]:
    """Pick the cheaper contraction order for one weight over all pairs of its calls.

    ``"gram"``: input Gram × cotangent Gram; ``"outer"``: the layer's weight gradient per sample
    and output, assembled from the captured inputs and cotangents, then contracted. Returns the
    form, its working memory per pair of rows and per row (in elements).
    """
    if all(t == 1 for t, _, _ in shapes):
        return "gram", float(k * k), 0.0
    kk = k * k if output == "full" else k
    gram = sum(t * s * d + k * o * t * s + kk * o * s for t, d, o in shapes for s, _, _ in shapes)
    _, d, o = shapes[0]
    n = max(1, min(n_rows, _NOMINAL_ROWS))
    outer = kk * o * d + 2 * sum(k * o * t * d for t, _, _ in shapes) / n
    if gram <= outer:
        mem = max(t * s + k * o * s for t, _, _ in shapes for s, _, _ in shapes)
        return "gram", float(mem), 0.0
    return "outer", float(k * k), float(k * o * d)


def _capture(problem: _Problem, detail: _Structured, x: torch.Tensor) -> _Side:
    out, calls = _tapped_forward(problem, detail.layers, x)
    index = {id(layer): i for i, layer in enumerate(detail.layers)}
    order = [index[id(c.layer)] for c in calls]
    if order != detail.call_layers:
        raise RuntimeError("model: expected the same sequence of Linear/Conv calls for every input, got "
                           f"{[detail.layers[i].name for i in order]} instead of "
                           f"{[detail.layers[i].name for i in detail.call_layers]}; use method='jacobian'")
    grads = _output_grads(out, [c.tap for c in calls]) if calls else []
    inputs, cotangents = [], []
    for call, g in zip(calls, grads):
        a, gg = _layer_arrays(call, g, need_inputs=call.layer.weight is not None)
        inputs.append(a)
        cotangents.append(gg)
    fallback = _per_sample_jacobians(problem, detail.fallback, x) if detail.fallback else None
    return _Side(inputs, cotangents, fallback)


def _cotangent_gram(ga: torch.Tensor, gb: torch.Tensor, output: str) -> torch.Tensor:
    """``⟨g_k(x_a), g_l(x_b)⟩`` → ``(na, nb, K, K)``, or ``Σ_k ⟨g_k(x_a), g_k(x_b)⟩`` → ``(na, nb)``;
    ``ga``: ``(K, na, o)``."""
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


def _outer_jacobian(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``Σ_t g_{k,t} ⊗ a_t`` → ``(n, K, o·d)``: the weight gradient of every sample and output."""
    k, n, t, o = g.shape
    return torch.bmm(g.permute(1, 0, 3, 2).reshape(n, k * o, t), a).view(n, k, -1)


def _ntk_structured(problem: _Problem, plan: _Plan, xa: torch.Tensor, xb: torch.Tensor | None,
                    output: str) -> torch.Tensor:
    detail: _Structured = plan.detail
    side_a = _cached_rows(problem, "structured", xa, lambda x: _capture(problem, detail, x))
    side_b = side_a if xb is None else _capture(problem, detail, xb)
    na, k = xa.shape[0], problem.n_outputs
    nb = na if xb is None else xb.shape[0]
    ref = next(iter(problem.params.values()))
    total = torch.zeros((na, nb, k, k) if output == "full" else (na, nb), dtype=ref.dtype, device=ref.device)
    for group in detail.groups:
        calls = group.calls
        if group.kind == "weight" and group.form == "gram":
            for i in calls:                 # every pair of calls, cross pairs included
                for j in calls:
                    total += _gram_term(side_a.inputs[i], side_a.cotangents[i], side_b.inputs[j],
                                        side_b.cotangents[j], output, group.with_bias)
        elif group.kind == "weight":
            ja = sum(_outer_jacobian(side_a.inputs[i], side_a.cotangents[i]) for i in calls)
            jb = ja if xb is None else sum(_outer_jacobian(side_b.inputs[i], side_b.cotangents[i]) for i in calls)
            total += _contract({group.param: ja}, {group.param: jb}, output)
        else:
            ga = sum(side_a.cotangents[i].sum(dim=2) for i in calls)
            gb = ga if xb is None else sum(side_b.cotangents[i].sum(dim=2) for i in calls)
            total += _cotangent_gram(ga, gb, output)
    if side_a.fallback is not None:
        total += _contract(side_a.fallback, side_b.fallback, output)
    return total


_BUILDERS: dict[str, _Builder] = {
    "jacobian": _Builder(_plan_jacobian, _ntk_jacobian, batch_dependent_ok=True),
    "ntvp": _Builder(_plan_ntvp, _ntk_ntvp, batch_dependent_ok=False),
    "structured": _Builder(_plan_structured, _ntk_structured, batch_dependent_ok=False),
}


def _resolve_method(method: str, problem: _Problem) -> str:
    if method == "auto":
        return "jacobian" if problem.batch_dependent else "structured"
    if problem.batch_dependent and not _BUILDERS[method].batch_dependent_ok:
        raise ValueError(f"method: expected 'jacobian' or 'auto' for a kernel that depends on the batch "
                         f"(batch normalisation using batch statistics), got {method!r}")
    return method


def _auto_block_size(plan: _Plan, n_rows: int) -> int:
    """Largest ``b`` with ``2·b·per_row + b²·per_pair ≤ budget``."""
    r, q, budget = plan.bytes_per_row, max(plan.bytes_per_pair, 1.0), float(_BLOCK_MEMORY_BYTES)
    b = (-2 * r + math.sqrt(4 * r * r + 4 * q * budget)) / (2 * q)
    return max(1, min(n_rows, int(b)))


# ----------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------

def empirical_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, *, method: str = "auto",
                  output: str = "full", params: ParameterSelector = None, block_size: int | None = None,
                  allow_batch_dependence: bool = False) -> torch.Tensor:
    r"""Empirical neural tangent kernel of ``model`` between the rows of ``x1`` and ``x2``.

    .. math::

        \Theta(x, x')_{k k'} = \sum_p \frac{\partial f_k(x)}{\partial \theta_p}
                                     \frac{\partial f_{k'}(x')}{\partial \theta_p}

    (Jacot et al. 2018; computed as in Novak et al. 2022, *Fast Finite Width Neural Tangent
    Kernel*), with θ the parameters selected by ``params``.

    Parameters
    ----------
    model : nn.Module
        Maps a batch ``(N, *features)`` to outputs ``(N, K)``. Its mode and ``requires_grad``
        flags are left as found; its parameters are not modified.
    x1 : Tensor of shape ``(N1, *features)``
    x2 : Tensor of shape ``(N2, *features)``, optional
        Default ``x1``: the kernel is then symmetric (only blocks on and above the diagonal are
        computed).
    method : {"auto", "jacobian", "ntvp", "structured"}, default "auto"
        ``"jacobian"``: per-sample Jacobians (``jacrev`` vmapped over samples) contracted over
        parameters, the reference. ``"ntvp"``: NTK-vector products, a vjp then a jvp for every output basis
        vector. ``"structured"``: for ``Linear``/``Conv1d``/``Conv2d`` weights and biases the
        input (patch) Gram times the output-cotangent Gram per layer, summed over layers and
        over every pair of calls of a layer used more than once; the contraction order for a
        weight applied at several positions (convolutions) is the cheaper of the Gram form and
        the per-sample weight gradient assembled from captured inputs and cotangents. Any other
        parameter falls back, per layer, to the Jacobian of just that parameter. A parameter
        that autograd shows is used outside its layer's forward pass also falls back (with a
        warning). ``"auto"``: ``"structured"``, or ``"jacobian"`` when the kernel depends on the
        batch.
    output : {"full", "trace"}, default "full"
        ``"full"``: ``Θ(x, x')_{kk'}``; ``"trace"``: ``Σ_k Θ(x, x')_{kk}``.
    params : str, list of str, callable, or None, default None
        Which parameters θ runs over; see :func:`select_parameters` (names, ``"re:<pattern>"``,
        a callable ``(name, parameter) -> bool``). Default: every parameter with
        ``requires_grad=True``.
    block_size : int, optional
        Rows of ``x1`` and of ``x2`` per block; memory is bounded by one block pair. Default:
        the largest block whose estimated working memory stays under 1 GiB.
    allow_batch_dependence : bool, default False
        Batch normalisation using batch statistics (training mode) makes a sample's output
        depend on the rest of the batch; that is an error unless this is true. The kernel is
        then ``J(x1) J(x2)ᵀ`` for the outputs of the whole batches ``x1`` and ``x2`` (method
        ``"jacobian"`` only, no blocks; running statistics are left untouched).

    Returns
    -------
    Tensor
        Shape ``(N1, N2, K, K)`` for ``output="full"`` and ``(N1, N2)`` for ``"trace"``, on the
        model's device and in its dtype.

    Raises
    ------
    ValueError
        Unknown ``method``/``output``; ``block_size`` < 1, or given for a batch-dependent kernel;
        inputs the model cannot be applied to (its error is named in the message) or outputs that
        are not ``(N, K)``; ``x1`` or ``x2`` 0-D, empty or with NaN/inf entries; ``x2`` samples of
        another shape than ``x1``'s; inputs on another device than the parameters; ``params``
        selecting nothing, an empty list, an unknown parameter name or an invalid
        ``"re:<pattern>"``; a batch-dependent model without ``allow_batch_dependence``, or with a
        ``method`` other than ``"jacobian"``/``"auto"``; dropout in training mode.
    TypeError
        ``model`` not an ``nn.Module``; ``block_size`` not an int (bools are refused);
        ``allow_batch_dependence`` not a bool; ``params`` (or an item of its list) neither a string
        nor a callable; ``x1`` or ``x2`` not a tensor, array or nested list of real numbers,
        or of another dtype than the parameters.
    RuntimeError
        ``method="structured"`` (or ``"auto"``) and the model calls its ``Linear``/``Conv`` layers in
        a different sequence for some inputs (use ``method="jacobian"``).

    Examples
    --------
    >>> from sepmeasure.models import MLP
    >>> model = MLP(4, [16, 16], 3)
    >>> x = torch.randn(5, 4)
    >>> empirical_ntk(model, x).shape
    torch.Size([5, 5, 3, 3])
    >>> k = empirical_ntk(model, x, x[:2], output="trace", method="structured")
    >>> ref = empirical_ntk(model, x, x[:2], output="trace", method="jacobian")
    >>> k.shape, bool(torch.allclose(k, ref, rtol=1e-4, atol=1e-5))
    (torch.Size([5, 2]), True)
    >>> empirical_ntk(model, x, output="trace", params="re:head\\..*").shape
    torch.Size([5, 5])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {describe(model)}")
    check_choice(method, "method", NTK_METHODS)
    check_choice(output, "output", NTK_OUTPUTS)
    if block_size is not None:
        block_size = check_int(block_size, "block_size", minimum=1)
    if not isinstance(allow_batch_dependence, bool):
        raise TypeError(f"allow_batch_dependence: expected a bool, got {describe(allow_batch_dependence)}")
    selected = select_parameters(model, params)
    x1, x2 = _check_inputs(model, x1, x2, selected)
    problem = _make_problem(model, x1, x2, selected, allow_batch_dependence)
    method = _resolve_method(method, problem)
    builder = _BUILDERS[method]
    if problem.batch_dependent and block_size is not None:
        raise ValueError(f"block_size: expected None for a kernel that depends on the batch (each of x1 and x2 "
                         f"is one batch), got {block_size}")
    plan = builder.plan(problem, output)

    n1 = x1.shape[0]
    symmetric = x2 is None
    n2 = n1 if symmetric else x2.shape[0]
    if problem.batch_dependent:
        size = max(n1, n2)
    else:
        size = block_size or _auto_block_size(plan, max(n1, n2))
    k = problem.n_outputs
    shape = (n1, n2, k, k) if output == "full" else (n1, n2)
    ref = next(iter(problem.params.values()))
    grid = BlockGrid(n1, n2, size, symmetric)
    sink = TensorSink(grid, torch.empty(shape, dtype=ref.dtype, device=ref.device))
    x2 = x1 if symmetric else x2

    def block(i: int, j: int) -> torch.Tensor:
        xa = x1[grid.rows(i, n1)]
        if symmetric and i == j:
            b = builder.block(problem, plan, xa, None, output)
            return (b + swap_block(b)) / 2
        return builder.block(problem, plan, xa, x2[grid.rows(j, n2)], output)

    fill_blocks(grid, sink, local_producer(block), desc=f"ntk ({method})")
    return sink.result
