"""The recorder: :class:`ActivationRecorder`, hooks in, ``{layer key: Tensor}`` out.

A context manager that hooks the selected submodules of a model (:mod:`.selection`) while
the ``with`` body runs the model however it likes, pools each output
(:mod:`sepmeasure.pooling`) and keeps it or hands it to a sink; it always removes its hooks
and restores the model's modes and ``requires_grad`` flags on exit.
"""
from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from typing import Any, Union

import torch
from torch import nn

from sepmeasure.pooling import FunctionalTaps, LayerLayouts, check_layout, check_pool, functional_selection, pool_output
from sepmeasure.validation import describe

from .selection import LayerSelector, module_names, select_layers

__all__ = ["ActivationRecorder", "PoolSpec", "Sink", "as_device"]

PoolSpec = Union[str, Callable[[torch.Tensor], torch.Tensor]]


def _first_tensor(output: Any, layer: str) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"layers: expected layer {layer!r} to return a Tensor, or a tuple/list whose "
                    f"first element is a Tensor, got {describe(output)}")


_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))


def raised_by_torch(exc: BaseException) -> bool:
    """A ``RuntimeError`` torch raised on inputs a model cannot take (a width, rank or dtype mismatch):
    its innermost frame lies in torch, not in the model's own code or in sepmeasure (those errors
    pass through unchanged)."""
    if not isinstance(exc, RuntimeError) or isinstance(exc, torch.OutOfMemoryError):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(_TORCH_DIR + os.sep)


def as_device(value: Any, name: str) -> torch.device:
    """``value`` as a ``torch.device``; a ``ValueError`` naming ``name`` when it is none."""
    if isinstance(value, torch.device):
        return value
    try:
        return torch.device(value)
    except (TypeError, RuntimeError) as exc:
        raise ValueError(f"{name}: expected a device such as 'cpu' or 'cuda', got {describe(value)}") from exc



Sink = Callable[[str, torch.Tensor, torch.Tensor], None]


class ActivationRecorder:
    """Context manager that records the outputs of selected submodules.

    Inside the ``with`` block every call of ``model(...)`` is one *forward
    call*; each selected submodule's output is taken (the first element when
    it returns a tuple or list), detached, pooled, moved to ``to`` and kept.
    Hooks are removed on exit, also when the body raises, and every
    submodule's ``training`` flag and every parameter's ``requires_grad`` are
    restored to what they were on entry. Results stay readable after exit.

    Parameters
    ----------
    model : nn.Module
        The model; it is not moved or copied.
    layers : selector, optional
        Which submodules to record; see :func:`select_layers`. Default: every
        leaf submodule.
    pool : {"none", "flatten", "mean", "cls", "last"} or callable, default "none"
        ``"none"`` keeps each output as is; ``"flatten"`` reshapes
        ``[N, ...]`` to ``[N, D]``; ``"mean"`` averages the spatial axes of a
        channels-first output (``[N, C, *spatial] -> [N, C]``) and the token
        axes of a channels-last one (``[N, T, D] -> [N, D]``), identity for
        2-D outputs; ``"cls"`` / ``"last"`` keep the first / last token of a
        channels-last ``[N, T, D]`` output; a callable is applied to the
        output tensor. Pooling runs on the module's device, before any move.
    layout : {"auto", "channels_first", "channels_last"} or mapping, default "auto"
        Which axes of a layer's output are channels, tokens or space (used by
        ``"mean"``, ``"cls"``, ``"last"``). ``"auto"`` reads it from the
        model's traced graph (:func:`sepmeasure.graph.trace_model`, traced once
        with the first forward call's input): conv, batch-norm and pooling
        outputs are channels first; ``Linear`` on sequences, ``LayerNorm``,
        attention, Transformer layers, ``Embedding`` and whatever is computed
        from them element-wise are channels last; module types decide for
        modules the graph does not see into. Where it cannot be told for an
        output of three or more axes, those pools raise a ``ValueError``
        naming ``layout`` (they never guess). A mapping
        ``{layer name: layout}`` sets it per layer (``"auto"`` elsewhere).
    to : device, optional
        Where recorded tensors are stored; ``None`` keeps them where the
        module produced them.
    detach : bool, default True
        Detach recorded tensors from the autograd graph.
    sink : callable, optional
        ``sink(key, tensor, raw)`` receives every recorded output (pooled,
        detached; ``raw`` is the module's output before pooling) instead of
        the recorder keeping it in :attr:`outputs`; :func:`~sepmeasure.record`
        passes one that writes into preallocated buffers.

    Attributes
    ----------
    selected : tuple of str
        Names of the selected submodules (registration order).
    outputs : dict of str to list of Tensor
        Per layer key, one tensor per forward call in which it ran.
    layer_names : list of str
        Recorded keys in the order they first ran, with ``name#k`` for the
        ``k``-th extra call of a module within one forward call.

    Functional operations (``F.relu(x)`` inside ``forward``) have no module
    to hook: name them by their graph node name (``"relu_1"``, as listed by
    ``trace_model(model).nonlinearities()``) in ``layers``. The model is then
    run, inside the ``with`` block, through its traced program (same modules
    and parameters) with a tap after each such node.

    Notes
    -----
    A module's calls are counted per call of ``model(...)`` (a forward
    pre-hook on ``model`` resets the count), so the model must be called
    through ``model(...)``, not ``model.forward(...)``. Recorded tensors
    that share memory with the module's output are copied, so later
    in-place operations in the forward pass do not change them.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> with ActivationRecorder(model, layers=nn.ReLU) as rec:
    ...     _ = model(torch.randn(5, 4))
    ...     _ = model(torch.randn(3, 4))
    >>> rec.layer_names
    ['1']
    >>> rec.activations()["1"].shape
    torch.Size([8, 8])
    >>> len(model[1]._forward_hooks)
    0
    """

    def __init__(self, model: nn.Module, layers: LayerSelector = None, pool: PoolSpec = "none",
                 to: torch.device | str | None = None, detach: bool = True, layout: Any = "auto",
                 sink: Sink | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {describe(model)}")
        if sink is not None and not callable(sink):
            raise TypeError(f"sink: expected a callable sink(key, tensor, raw), got {describe(sink)}")
        self.model = model
        self._pool_spec = check_pool(pool)
        self._layout_spec = check_layout(layout)
        graph, functional, layers = functional_selection(model, layers)
        self._selected = select_layers(model, layers, name="layers") if layers is not None or not functional else []
        self._functional = functional
        self._taps = None
        if functional:
            leaves = {n.target for n in graph.nodes.values() if n.op == "call_module"}
            containers = [n for n, _ in self._selected if n not in leaves]
            self._taps = FunctionalTaps(graph, functional, containers)
            self._selected = [(n, m) for n, m in self._selected if n in leaves] + \
                [(n, tap) for n, taps in self._taps.taps.items() for tap in taps]
        self._layouts = LayerLayouts(model, self._layout_spec, self._pool_spec, graph)
        self._modules = {n: (None if n in functional else m) for n, m in self._selected}
        self._selected = list(dict.fromkeys(self._selected))
        self._to = None if to is None else as_device(to, "to")
        self._detach = bool(detach)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._modes: list[tuple[nn.Module, bool]] = []
        self._grads: list[tuple[nn.Parameter, bool]] = []
        self._active = False
        self._sink: Sink = self._store if sink is None else sink
        self.outputs: dict[str, list[torch.Tensor]] = {}
        self._calls: dict[str, int] = {}
        self._fired: dict[str, int] = {n: 0 for n, _ in self._selected}
        self._suspended = False
        self._running: tuple[tuple[int, ...], torch.dtype | None] | None = None

    def _pool(self, t: torch.Tensor, key: str, name: str) -> torch.Tensor:
        layout, why = self._layouts.of(name, self._modules.get(name))
        return pool_output(t, self._pool_spec, layout, key, why)

    # -- properties ---------------------------------------------------------
    @property
    def selected(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for n, _ in self._selected))

    @property
    def layer_names(self) -> list[str]:
        return list(self.outputs)

    # -- context manager ----------------------------------------------------
    def __enter__(self) -> ActivationRecorder:
        if self._active:
            raise RuntimeError("ActivationRecorder: expected an inactive recorder, got one already "
                               "inside a `with` block")
        self._modes = [(m, m.training) for m in self.model.modules()]
        self._grads = [(p, p.requires_grad) for p in self.model.parameters()]
        self._active = True
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._new_forward_call))
            self._handles.append(self.model.register_forward_hook(self._forward_done))
            if self._taps is not None:
                self._taps.install(self.model)
            for name, module in self._selected:
                self._handles.append(module.register_forward_hook(self._make_hook(name)))
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        running, self._running = self._running, None
        self._restore()
        if running is not None and exc is not None and raised_by_torch(exc):
            # a forward call of the model failed under the recorder (inputs of another dtype or shape than
            # the model takes, say): report it naming the model, with torch's message
            shape, dtype = running
            params = sorted({str(p.dtype) for p in self.model.parameters()})
            raise ValueError(f"model: expected a model that accepts its inputs, got one "
                             f"(parameters {', '.join(params) or 'none'}) that raised RuntimeError on an input of "
                             f"shape {shape} and dtype {dtype} under the recorder: {exc}") from exc

    def _restore(self) -> None:
        if self._taps is not None and self._active:
            self._taps.remove(self.model)
        try:
            while self._handles:
                self._handles.pop().remove()
        finally:
            for module, mode in self._modes:
                module.training = mode
            for param, flag in self._grads:
                param.requires_grad_(flag)
            self._modes, self._grads = [], []
            self._active = False

    # -- hooks --------------------------------------------------------------
    def _forward_done(self, module: nn.Module, args: Any, output: Any) -> None:
        self._running = None

    def _new_forward_call(self, module: nn.Module, args: Any) -> None:
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        self._running = (tuple(first.shape), first.dtype) if first is not None else ((), None)
        self._calls.clear()
        self._suspended = True  # tracing runs the leaf modules on fake tensors: not a forward call
        try:
            self._layouts.prepare(args)
        finally:
            self._suspended = False

    def _make_hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self._suspended:
                return
            raw = _first_tensor(output, name)
            k = self._calls.get(name, 0)
            self._calls[name] = k + 1
            self._fired[name] += 1
            t = raw.detach() if self._detach and raw.requires_grad else raw
            key = name if k == 0 else f"{name}#{k}"
            self._sink(key, self._pool(t, key, name), raw)

        return hook

    def _store(self, key: str, t: torch.Tensor, raw: torch.Tensor) -> None:
        if self._to is not None:
            t = t.to(self._to)
        if t.untyped_storage().data_ptr() == raw.untyped_storage().data_ptr():
            t = t.clone()
        self.outputs.setdefault(key, []).append(t)

    # -- results ------------------------------------------------------------
    def check_fired(self) -> None:
        """Raise ``RuntimeError`` naming every selected layer that never ran."""
        silent = [n for n, count in self._fired.items() if count == 0]
        if silent:
            raise RuntimeError(f"layers: expected every selected layer to run at least once, got "
                               f"{len(silent)} that never ran: {module_names(silent)} (a branch that "
                               f"was not taken, or a model that was not called?)")

    def activations(self) -> dict[str, torch.Tensor]:
        """Recorded outputs, concatenated over forward calls along dim 0.

        Returns
        -------
        dict of str to Tensor
            Keys in :attr:`layer_names` order; each value has shape
            ``[sum of batch sizes, *pooled feature shape]``.

        Raises
        ------
        RuntimeError
            If a selected layer never ran, or a layer's outputs cannot be
            concatenated along dim 0.
        """
        self.check_fired()
        out: dict[str, torch.Tensor] = {}
        for key, parts in self.outputs.items():
            if len(parts) == 1:
                out[key] = parts[0]
                continue
            try:
                out[key] = torch.cat(parts, dim=0)
            except RuntimeError as exc:
                shapes = sorted({tuple(p.shape) for p in parts})
                raise RuntimeError(f"layers: expected the outputs of {key!r} to share their shape "
                                   f"after dim 0, got shapes {shapes}; use pool='mean' or a "
                                   f"callable pool") from exc
        return out

    def clear(self) -> None:
        """Forget everything recorded so far (hooks stay installed)."""
        self.outputs = {}
        self._calls.clear()
        self._fired = {n: 0 for n in self._fired}

    def __repr__(self) -> str:
        state = "active" if self._active else "inactive"
        return (f"ActivationRecorder({type(self.model).__name__}, layers={list(self.selected)}, "
                f"{state}, recorded={self.layer_names})")
