"""Empirical neural tangent kernel of any torch model.

One public function, :func:`empirical_ntk`, with three implementations that compute the same
kernel and are checked against each other, each a builder with the same signature dispatched from
``_BUILDERS``:

* ``"jacobian"`` — per-sample Jacobians with ``torch.func`` contracted over the parameters: the
  reference, for every model (``ntk_problem``).
* ``"ntvp"`` — NTK-vector products: a vjp gives ``J(x')ᵀ e`` for every output basis vector ``e``,
  a jvp pushes it through ``J(x)`` (Novak et al. 2022, *Fast Finite Width Neural Tangent Kernel*;
  ``ntk_problem``).
* ``"structured"`` — structured derivatives of dense, convolutional, attention and normalisation
  layers (``ntk_structured``), with a per-layer cost model choosing the contraction.

Blocks of ``x1 × x2`` bound the memory (``blocks``); ``out=`` writes them to a ``.npy`` file that
survives an interruption (``kernel_files``), and ``executor=`` spreads them over workers
(``block_executors``).
"""
from __future__ import annotations

import math
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from .ntk_problem import JACOBIAN, NTVP, Builder, NTKProblem, Plan
from .ntk_forms import NOMINAL_ROWS
from .ntk_structured import STRUCTURED, method_costs
from .block_executors import check_executor, producer
from .blocks import BlockGrid, KernelOverflowError, TensorSink, fill_blocks, swap_block
from .kernel_files import NpySink, fingerprint
from ..validation import (check_choice, check_features, check_int, compile_name_pattern, describe, did_you_mean,
                          list_names)

__all__ = ["NTK_METHODS", "NTK_OUTPUTS", "ParameterSelector", "empirical_ntk", "select_parameters"]

NTK_METHODS: tuple[str, ...] = ("auto", "jacobian", "ntvp", "structured")
NTK_OUTPUTS: tuple[str, ...] = ("full", "trace")

ParameterSelector = Union[None, str, Sequence[str], Callable[[str, torch.Tensor], bool]]
"""What ``params=`` accepts; see :func:`select_parameters`."""

# Working memory one block of x1 × x2 may use when ``block_size`` is not given.
_BLOCK_MEMORY_BYTES = 1 << 30
# Rows of x1 the structured plan is verified on (its rules are exact or not whatever the rows; every
# block re-checks what depends on the values, such as a factorisation over outputs).
_PROBE_ROWS = 4
# Largest output block written to a kernel file at once (the anonymous memory of an out-of-core kernel).
_OUT_BLOCK_BYTES = 256 << 20


# ----------------------------------------------------------------------------
# Parameter selection
# ----------------------------------------------------------------------------

def _list_names(names: Sequence[str]) -> str:
    return list_names(names, empty="[] (the model has no parameters)")


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
        hint = did_you_mean(spec, all_names)
        raise ValueError(f"{name}: expected the name of a parameter, got {spec!r}{hint} "
                         f"Parameters: {_list_names(list(canonical))}")
    if callable(spec):
        return {n for n, p in canonical.items() if spec(n, p)}
    raise TypeError(f"{name}: expected a parameter name, 're:<pattern>', a callable (name, parameter) -> bool, "
                    f"or a list of these, got {describe(spec)}")


# ----------------------------------------------------------------------------
# The problem every builder works on
# ----------------------------------------------------------------------------

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
                  allow_batch_dependence: bool) -> NTKProblem:
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
    problem = NTKProblem(model=model, params={n: p.detach() for n, p in selected.items()}, constants=constants,
                       n_outputs=0, batch_dependent=bool(dependent), activation_numel=0,
                       n_rows=max(x1.shape[0], 0 if x2 is None else x2.shape[0]),
                       probe=x1 if dependent else x1[: min(x1.shape[0], _PROBE_ROWS)],
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

_BUILDERS: dict[str, Builder] = {
    "jacobian": JACOBIAN,
    "ntvp": NTVP,
    "structured": STRUCTURED,
}


def _resolve_method(method: str, problem: NTKProblem, output: str) -> tuple[str, Plan]:
    """The method to use and its plan. ``"auto"`` plans ``"structured"`` and keeps it unless the
    cost model (:func:`~sepmeasure.kernels.ntk_structured.method_costs`) finds ``"jacobian"``
    cheaper for this model, output and size, or no layer is structured (then both compute the same
    Jacobians)."""
    if method == "auto":
        if problem.batch_dependent:
            return "jacobian", JACOBIAN.plan(problem, output)
        plan = STRUCTURED.plan(problem, output)
        if not plan.detail.sites and not plan.detail.broadcast:
            return "jacobian", JACOBIAN.plan(problem, output)
        costs = method_costs(problem, plan, output)
        if costs["jacobian"] < costs["structured"]:
            return "jacobian", JACOBIAN.plan(problem, output)
        return "structured", plan
    if problem.batch_dependent and not _BUILDERS[method].batch_dependent_ok:
        raise ValueError(f"method: expected 'jacobian' or 'auto' for a kernel that depends on the batch "
                         f"(batch normalisation using batch statistics), got {method!r}")
    return method, _BUILDERS[method].plan(problem, output)


# The last plans of every live model (up to _PLANS_PER_MODEL, one per method, output, input shape, ...),
# reused while nothing they depend on has changed (see _plan_key).
_PLANS: weakref.WeakKeyDictionary[nn.Module, OrderedDict[tuple, tuple[str, Plan]]] = weakref.WeakKeyDictionary()
_PLANS_PER_MODEL = 8
_PLANS_LOCK = threading.Lock()


def _plan_key(method: str, problem: NTKProblem, output: str, x1: torch.Tensor, x2: torch.Tensor | None) -> tuple:
    """Everything a plan depends on besides the values of the inputs.

    The module tree (each module's identity, type, mode, hooks and any replaced ``forward``), every
    parameter and buffer by storage, version counter (bumped by every in-place update: an optimizer
    step, ``load_state_dict``, ``copy_``), shape, strides, dtype and device, the selected parameters,
    the method, the output, the feature shape, dtype and device of the inputs and the block size the
    cost model weighs (``min(rows, NOMINAL_ROWS)``).
    """
    modules = tuple((name, type(m), id(m), m.training, tuple(m._forward_hooks), tuple(m._forward_pre_hooks),
                     id(m.__dict__.get("forward"))) for name, m in problem.model.named_modules())
    hooks = tuple(torch.nn.modules.module._global_forward_hooks) + tuple(
        torch.nn.modules.module._global_forward_pre_hooks)
    tensors = tuple((name, t.data_ptr(), t._version, tuple(t.shape), t.stride(), t.dtype, t.device)
                    for name, t in problem.constants.items())
    inputs = tuple(None if x is None else (tuple(x.shape[1:]), x.dtype, x.device) for x in (x1, x2))
    return (method, output, tuple(problem.params), modules, hooks, tensors, inputs, problem.n_outputs,
            min(problem.n_rows, NOMINAL_ROWS))


def _cached_method(method: str, problem: NTKProblem, output: str, x1: torch.Tensor, x2: torch.Tensor | None
                   ) -> tuple[str, Plan]:
    """:func:`_resolve_method`, reusing a plan of the model whose :func:`_plan_key` is unchanged.

    Planning verifies every structured rule on a probe batch (forward passes and three backward
    passes); for a few dozen inputs that is a large part of the work (ResNet-18 at width 8, 16
    inputs, trace: 0.11 s of planning against 0.28 s for the kernel with the plan reused). A plan
    refers to the model's modules but not to the model itself, so a model's entry goes when the model
    does; a model that is itself a structured layer is not cached (its plan would keep it alive).
    """
    if problem.batch_dependent:
        return _resolve_method(method, problem, output)
    key = _plan_key(method, problem, output, x1, x2)
    with _PLANS_LOCK:
        plans = _PLANS.get(problem.model)
        hit = None if plans is None else plans.get(key)
        if hit is not None:
            plans.move_to_end(key)
            return hit
    resolved, plan = _resolve_method(method, problem, output)
    if all(site.module is not problem.model for site in getattr(plan.detail, "sites", ())):
        with _PLANS_LOCK:
            plans = _PLANS.setdefault(problem.model, OrderedDict())
            plans[key] = (resolved, plan)
            while len(plans) > _PLANS_PER_MODEL:
                plans.popitem(last=False)
    return resolved, plan


def _auto_block_size(plan: Plan, n_rows: int, out_bytes_per_pair: float | None = None) -> int:
    """Largest ``b`` with ``2·b·per_row + b²·per_pair ≤ budget`` (and, writing to a file, whose
    output block of ``b²·out_bytes_per_pair`` stays within ``_OUT_BLOCK_BYTES``)."""
    r, q, budget = plan.bytes_per_row, max(plan.bytes_per_pair, 1.0), float(_BLOCK_MEMORY_BYTES)
    b = (-2 * r + math.sqrt(4 * r * r + 4 * q * budget)) / (2 * q)
    if out_bytes_per_pair is not None:
        b = min(b, math.sqrt(_OUT_BLOCK_BYTES / out_bytes_per_pair))
    return max(1, min(n_rows, int(b)))


# ----------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------

def empirical_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, *, method: str = "auto",
                  output: str = "full", params: ParameterSelector = None, block_size: int | None = None,
                  allow_batch_dependence: bool = False, out: str | os.PathLike | None = None,
                  executor: Any = None, progress: bool = True) -> torch.Tensor | np.memmap:
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
        vector. ``"structured"``: structured derivatives (see ``ntk_structured``) of ``Linear``
        (also on ``[N, *, D]`` token tensors), ``Conv1d``/``Conv2d`` (strided, padded, grouped,
        dilated), ``nn.MultiheadAttention`` self-attention projections, ``BatchNorm`` (running
        statistics)/``LayerNorm``/``GroupNorm`` affines and parameters broadcast over the batch;
        for each dense weight a cost model in multiply-adds and bytes picks the input-Gram ×
        cotangent-Gram contraction, per-sample weight gradients from captured inputs and output
        cotangents, or (when the cotangents factor over outputs) a factored form. Any other
        parameter falls back, per layer, to the Jacobian of just that parameter; so does one that
        autograd shows is used outside its layer (with a warning). ``"auto"``: whichever of
        ``"structured"`` and ``"jacobian"`` a cost model in multiply-adds and bytes finds cheaper
        for this model, output and number of rows (``ntk_structured.method_costs``; both compute
        the same kernel), and ``"jacobian"`` when the kernel depends on the batch.
    output : {"full", "trace"}, default "full"
        ``"full"``: ``Θ(x, x')_{kk'}``; ``"trace"``: ``Σ_k Θ(x, x')_{kk}``.
    params : str, list of str, callable, or None, default None
        Which parameters θ runs over; see :func:`select_parameters` (names, ``"re:<pattern>"``,
        a callable ``(name, parameter) -> bool``). Default: every parameter with
        ``requires_grad=True``.
    block_size : int, optional
        Rows of ``x1`` and of ``x2`` per block; memory is bounded by one block pair. Default:
        the largest block whose estimated working memory stays under 1 GiB.
    out : str or path, optional
        Write the kernel block by block into this ``.npy`` file (memory-mapped, so memory stays
        bounded by one block pair plus the working set) and return it memory-mapped read-only
        (``np.load(out, mmap_mode="r")``). Each finished block is recorded atomically in
        ``<out>.progress.json``: rerun the same call after an interruption (even ``kill -9``) and
        only the missing blocks are computed. A file of another computation is refused.
    executor : None, "local", "processes" or dask.distributed.Client, default None
        Where blocks are computed: here (``None``/``"local"``), on a pool of processes (one per
        CPU), or on a Dask cluster. The model and inputs are sent to each worker once; each task
        computes one block, which this process writes. The result equals the local one.
    progress : bool, default True
        A progress bar over blocks (shown for long runs, as in ``record`` and ``fit``).
    allow_batch_dependence : bool, default False
        Batch normalisation using batch statistics (training mode) makes a sample's output
        depend on the rest of the batch; that is an error unless this is true. The kernel is
        then ``J(x1) J(x2)ᵀ`` for the outputs of the whole batches ``x1`` and ``x2`` (method
        ``"jacobian"`` only, no blocks; running statistics are left untouched).

    Returns
    -------
    Tensor or numpy.memmap
        Shape ``(N1, N2, K, K)`` for ``output="full"`` and ``(N1, N2)`` for ``"trace"``, on the
        model's device and in its dtype; with ``out``, the file memory-mapped read-only.

    Raises
    ------
    ValueError
        Unknown ``method``/``output``; ``block_size`` < 1, or given for a batch-dependent kernel;
        inputs the model cannot be applied to (its error is named in the message) or outputs that
        are not ``(N, K)``; ``x1`` or ``x2`` 0-D, empty or with NaN/inf entries; ``x2`` samples of
        another shape than ``x1``'s; inputs on another device than the parameters; ``params``
        selecting nothing, an empty list, an unknown parameter name or an invalid
        ``"re:<pattern>"``; a batch-dependent model without ``allow_batch_dependence``, or with a
        ``method`` other than ``"jacobian"``/``"auto"``; dropout in training mode; ``out`` that
        exists and holds another computation (or has no progress record); an unknown
        ``executor``, or ``out``/``executor`` with a batch-dependent kernel.
    TypeError
        ``model`` not an ``nn.Module``; ``block_size`` not an int (bools are refused);
        ``allow_batch_dependence`` not a bool; ``params`` (or an item of its list) neither a string
        nor a callable; ``x1`` or ``x2`` not a tensor, array or nested list of real numbers,
        or of another dtype than the parameters.
    RuntimeError
        ``method="structured"`` (or ``"auto"``) and the model calls its layers in a different
        sequence for some inputs (use ``method="jacobian"``).

    Notes
    -----
    The plan of a call (for ``"structured"`` and ``"auto"``: which rule and contraction form each
    parameter gets, checked against autograd on a few rows) is kept with the model and reused by
    later calls while the modules, their modes and hooks, the parameters and buffers (storage and
    version counter, so any in-place update such as an optimizer step), the selection, ``method``,
    ``output`` and the inputs' feature shape are unchanged; the kernel itself is always computed
    afresh.

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
    if not isinstance(progress, bool):
        raise TypeError(f"progress: expected True or False, got {describe(progress)}")
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out: expected a path (str or os.PathLike), got {describe(out)}")
    executor = check_executor(executor)
    selected = select_parameters(model, params)
    x1, x2 = _check_inputs(model, x1, x2, selected)
    problem = _make_problem(model, x1, x2, selected, allow_batch_dependence)
    method, plan = _cached_method(method, problem, output, x1, x2)
    if problem.batch_dependent and (block_size is not None or out is not None or executor not in (None, "local")):
        raise ValueError(f"block_size, out, executor: expected None for a kernel that depends on the batch (each "
                         f"of x1 and x2 is one batch), got block_size={block_size}, out={out!r}, "
                         f"executor={describe(executor) if executor is not None else None}")

    n1 = x1.shape[0]
    symmetric = x2 is None
    n2 = n1 if symmetric else x2.shape[0]
    k = problem.n_outputs
    if problem.batch_dependent:
        size = max(n1, n2)
    else:
        size = block_size or _auto_block_size(plan, max(n1, n2), (k * k if output == "full" else 1)
                                              * problem.itemsize if out is not None else None)
    shape = (n1, n2, k, k) if output == "full" else (n1, n2)
    ref = next(iter(problem.params.values()))
    grid = BlockGrid(n1, n2, size, symmetric)
    job = NTKBlocks(model, x1, x2, method, output, list(problem.params), size, (problem, plan))
    if out is None:
        sink = TensorSink(grid, torch.empty(shape, dtype=ref.dtype, device=ref.device))
    else:
        key = fingerprint([x1, *([] if x2 is None else [x2]), *problem.params.values()], method=method,
                          output=output, params=list(problem.params), block_size=size, symmetric=symmetric)
        sink = NpySink(out, grid, shape, ref.dtype, key)
    fill_blocks(grid, sink, producer(executor, job), progress=progress, desc=f"ntk ({method})")
    result = sink.result if out is None else sink.result()
    _check_finite_kernel(result, x1, x2)
    return result


def _check_finite_kernel(K: torch.Tensor | np.ndarray, x1: torch.Tensor, x2: torch.Tensor | None) -> None:
    """An NTK of finite inputs and weights that overflowed its dtype is an error, not a returned inf/NaN
    (a kernel file is read in row chunks, once)."""
    if isinstance(K, torch.Tensor):
        finite = bool(torch.isfinite(K).all())
    else:
        rows = max(1, (64 << 20) // max(1, K[0].nbytes))
        finite = all(bool(np.isfinite(K[i:i + rows]).all()) for i in range(0, K.shape[0], rows))
    if not finite:
        top = max(float(x1.abs().max()), float(x2.abs().max()) if x2 is not None else 0.0)
        raise KernelOverflowError(f"x1, x2: the NTK overflows {K.dtype} for inputs of magnitude up to {top:.3g} (it "
                                  f"grows with the square of the output's gradients); rescale the inputs or use "
                                  f"float64")


class NTKBlocks:
    """The blocks of one NTK: ``blocks(i, j)`` is the block at rows ``i`` of ``x1`` and ``j`` of ``x2``.

    Picklable: a worker receives the model, inputs and settings once and prepares the problem and
    plan on its first block (here they are handed over already prepared). Blocks of one job are
    computed one at a time (the structured builder hooks the model's modules), also when the workers
    of a cluster are threads that share the job.
    """

    def __init__(self, model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None, method: str, output: str,
                 param_names: list[str], size: int, prepared: tuple[NTKProblem, Plan] | None = None) -> None:
        self.model, self.x1, self.x2 = model, x1, x2
        self.method, self.output, self.param_names, self.size = method, output, param_names, size
        self._prepared = prepared
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_prepared", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _prepared=None, _lock=threading.Lock())

    def _prepare(self) -> tuple[NTKProblem, Plan]:
        selected = select_parameters(self.model, self.param_names)
        problem = _make_problem(self.model, self.x1, self.x2, selected, False)
        self._prepared = (problem, _BUILDERS[self.method].plan(problem, self.output))
        return self._prepared

    def __call__(self, i: int, j: int) -> torch.Tensor:
        with self._lock:
            return self._block(i, j)

    def _block(self, i: int, j: int) -> torch.Tensor:
        problem, plan = self._prepared or self._prepare()
        builder = _BUILDERS[self.method]
        xa = self.x1[i:i + self.size]
        if self.x2 is None and i == j:
            b = builder.block(problem, plan, xa, None, self.output)
            return (b + swap_block(b)) / 2
        xb = (self.x1 if self.x2 is None else self.x2)[j:j + self.size]
        return builder.block(problem, plan, xa, xb, self.output)
