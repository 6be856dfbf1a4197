"""Record the outputs of chosen submodules: hooks in, ``{layer name: Tensor}`` out.

Two entry points share one hook implementation:

* :class:`ActivationRecorder`, a context manager that hooks the selected
  submodules of a model while the ``with`` body runs the model however it
  likes, and always removes its hooks and restores the model's modes and
  ``requires_grad`` flags on exit (also when the body raises);
* :func:`record`, which runs a model over a whole data set (tensor, arrays,
  ``Dataset`` or ``DataLoader``) in eval mode under ``torch.no_grad()`` and
  writes every layer's activations into one preallocated buffer per layer,
  in memory or in ``.npy`` files on disk.

Layers are chosen with a *selector*: a module name (``"block.0.act"``), a
module type (``nn.ReLU``), a regular expression (``"re:block\\.\\d+\\.act"``),
a module instance, a callable ``(name, module) -> bool``, or a list of these.
A module that runs several times in one forward pass is recorded once per
call, under ``name``, ``name#1``, ``name#2``, ... in call order.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from sepmeasure._memory import empty_host
from sepmeasure._progress import progress_bar, wanted
from sepmeasure.pooling import (POOLS, FunctionalTaps, LayerLayouts, check_layout, check_pool,
                               functional_selection, pool_output)
from sepmeasure.inputs import BatchSource, cast_inputs, check_cast, check_finite, model_device, model_dtype
from sepmeasure.validation import check_choice, check_int, compile_name_pattern, describe, did_you_mean, list_names

__all__ = ["ActivationRecorder", "Activations", "LayerSelector", "record", "select_layers"]

LayerSelector = Union[
    None,
    str,
    type,
    nn.Module,
    Callable[[str, nn.Module], bool],
    Sequence[Any],
]
"""What ``layers=`` accepts; see :func:`select_layers`."""

PoolSpec = Union[str, Callable[[torch.Tensor], torch.Tensor]]


# ----------------------------------------------------------------------------
# Layer selection
# ----------------------------------------------------------------------------

def _list_names(names: Sequence[str]) -> str:
    return list_names(names, empty="[] (the model has no submodules)")


def _match_one(spec: Any, named: list[tuple[str, nn.Module]], name: str) -> list[int]:
    """Indices into ``named`` selected by one selector item."""
    names = [n for n, _ in named]
    if isinstance(spec, str):
        if spec.startswith("re:"):
            pattern = compile_name_pattern(spec, name)
            return [i for i, n in enumerate(names) if pattern.fullmatch(n)]
        if spec in names:
            return [names.index(spec)]
        hint = did_you_mean(spec, names)
        raise ValueError(f"{name}: expected the name of a submodule, got {spec!r}{hint} "
                         f"Available modules: {_list_names(names)}")
    if isinstance(spec, type):
        if not issubclass(spec, nn.Module):
            raise TypeError(f"{name}: expected an nn.Module subclass, got the type {spec.__name__}")
        return [i for i, (_, m) in enumerate(named) if isinstance(m, spec)]
    if isinstance(spec, nn.Module):
        for i, (_, m) in enumerate(named):
            if m is spec:
                return [i]
        raise ValueError(f"{name}: expected a submodule of the model, got a "
                         f"{type(spec).__name__} that is not one of its submodules")
    if callable(spec):
        return [i for i, (n, m) in enumerate(named) if spec(n, m)]
    raise TypeError(f"{name}: expected a module name, 're:<pattern>', an nn.Module subclass, a "
                    f"submodule, a callable (name, module) -> bool, or a list of these, "
                    f"got {describe(spec)}")


def select_layers(model: nn.Module, layers: LayerSelector = None,
                  *, name: str = "layers") -> list[tuple[str, nn.Module]]:
    """Resolve a layer selector to ``(name, module)`` pairs in registration order.

    Parameters
    ----------
    model : nn.Module
        The model whose submodules are searched (the model itself is not a
        candidate; names are those of ``model.named_modules()``).
    layers : str, type, nn.Module, callable, list of these, or None
        ``"a.b"`` selects the submodule with exactly that name;
        ``"re:<pattern>"`` every submodule whose name fully matches the
        regular expression; an ``nn.Module`` subclass every instance of it;
        a module instance that submodule; a callable ``f(name, module)``
        every submodule for which it returns true; a list or tuple the union
        of its items. ``None`` selects every leaf submodule (one without
        children).
    name : str
        Argument name used in error messages.

    Returns
    -------
    list of (str, nn.Module)
        The selected submodules, each once, in ``named_modules()`` order.

    Raises
    ------
    ValueError
        When nothing is selected (the message lists the available names), or
        an exact name does not exist (with close matches suggested).

    Examples
    --------
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.ReLU())
    >>> [n for n, _ in select_layers(model, nn.ReLU)]
    ['1', '3']
    >>> [n for n, _ in select_layers(model, ["re:[02]", "3"])]
    ['0', '2', '3']
    """
    named = [(n, m) for n, m in model.named_modules() if n != ""]
    if layers is None:
        chosen = [i for i, (_, m) in enumerate(named) if next(m.children(), None) is None]
    else:
        items = list(layers) if isinstance(layers, (list, tuple)) else [layers]
        if not items:
            raise ValueError(f"{name}: expected at least one selector, got an empty {type(layers).__name__}")
        chosen = sorted({i for spec in items for i in _match_one(spec, named, name)})
    if not chosen:
        raise ValueError(f"{name}: expected a selector matching at least one submodule, got "
                         f"{describe(layers)} which matches none. Available modules: "
                         f"{_list_names([n for n, _ in named])}")
    return [named[i] for i in chosen]


# ----------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------

# Pooling by layout lives in sepmeasure.pooling (pool_output, LayerLayouts, POOLS).


def _first_tensor(output: Any, layer: str) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"layers: expected layer {layer!r} to return a Tensor, or a tuple/list whose "
                    f"first element is a Tensor, got {describe(output)}")


def _as_device(value: Any, name: str) -> torch.device:
    if isinstance(value, torch.device):
        return value
    try:
        return torch.device(value)
    except (TypeError, RuntimeError) as exc:
        raise ValueError(f"{name}: expected a device such as 'cpu' or 'cuda', got {describe(value)}") from exc


# ----------------------------------------------------------------------------
# The recorder
# ----------------------------------------------------------------------------

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
                 to: torch.device | str | None = None, detach: bool = True, layout: Any = "auto") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {describe(model)}")
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
        self._to = None if to is None else _as_device(to, "to")
        self._detach = bool(detach)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._modes: list[tuple[nn.Module, bool]] = []
        self._grads: list[tuple[nn.Parameter, bool]] = []
        self._active = False
        self._sink: Sink = self._store
        self.outputs: dict[str, list[torch.Tensor]] = {}
        self._calls: dict[str, int] = {}
        self._fired: dict[str, int] = {n: 0 for n, _ in self._selected}
        self._suspended = False

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
            if self._taps is not None:
                self._taps.install(self.model)
            for name, module in self._selected:
                self._handles.append(module.register_forward_hook(self._make_hook(name)))
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._restore()

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
    def _new_forward_call(self, module: nn.Module, args: Any) -> None:
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
                               f"{len(silent)} that never ran: {_list_names(silent)} (a branch that "
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


# ----------------------------------------------------------------------------
# The result of record()
# ----------------------------------------------------------------------------

class Activations(Mapping[str, torch.Tensor]):
    """Activations of several layers over the same samples: a read-only ``{name: Tensor}``.

    Every value has shape ``[n_samples, *features]`` with row ``i`` belonging
    to input sample ``i``.

    Attributes
    ----------
    labels : Tensor or None
        The targets that came with the data, one per sample.
    layer_names : tuple of str
        Layer keys in forward order.
    n_samples : int
        Number of samples (rows) in every tensor.
    files : dict of str to Path
        For activations spilled to disk, the ``.npy`` file of each layer.

    Notes
    -----
    Equality is identity: comparing tensors element-wise is left to
    ``torch.equal`` on the values.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], labels: torch.Tensor | None = None,
                 files: Mapping[str, Path] | None = None) -> None:
        self._tensors = dict(tensors)
        self.labels = labels
        self.files = dict(files or {})
        sizes = {int(t.shape[0]) for t in self._tensors.values()}
        if labels is not None:
            sizes.add(int(labels.shape[0]))
        if len(sizes) > 1:
            raise ValueError(f"tensors: expected the same number of rows in every tensor and in "
                             f"labels, got {sorted(sizes)}")
        self.n_samples = sizes.pop() if sizes else 0

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(self._tensors)

    def __getitem__(self, key: str) -> torch.Tensor:
        try:
            return self._tensors[key]
        except KeyError:
            hint = did_you_mean(key, list(self._tensors))
            raise KeyError(f"expected one of the recorded layers {_list_names(list(self._tensors))}, "
                           f"got {key!r}{hint}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__

    def to(self, device: torch.device | str) -> Activations:
        """Return a copy with every tensor (and the labels) on ``device``."""
        dev = _as_device(device, "device")
        labels = None if self.labels is None else self.labels.to(dev)
        moved = {k: v.to(dev) for k, v in self._tensors.items()}
        files = {k: f for k, f in self.files.items() if moved[k] is self._tensors[k]}
        return Activations(moved, labels, files)

    def __repr__(self) -> str:
        if self.labels is None:
            lab = "None"
        else:
            lab = f"Tensor{list(self.labels.shape)} {str(self.labels.dtype).removeprefix('torch.')}"
        lines = [f"Activations(n_samples={self.n_samples}, layers={len(self)}, labels={lab})"]
        width = max((len(k) for k in self._tensors), default=0)
        for key, t in self._tensors.items():
            where = "file" if key in self.files else str(t.device)
            lines.append(f"  {key:<{width}}  {list(t.shape)}  "
                         f"{str(t.dtype).removeprefix('torch.')}  {where}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------
# Writing activations into preallocated buffers
# ----------------------------------------------------------------------------

def _numpy_dtype(dtype: torch.dtype, key: str) -> np.dtype:
    try:
        return torch.empty(0, dtype=dtype).numpy().dtype
    except TypeError as exc:
        raise TypeError(f"spill_to: expected activations with a NumPy-compatible dtype, got "
                        f"{dtype} for layer {key!r}; use spill_to=None or a pool that casts") from exc


def _file_name(key: str, taken: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", key.replace("#", "__call")) or "layer"
    name, k = f"{stem}.npy", 1
    while name in taken:
        name, k = f"{stem}_{k}.npy", k + 1
    taken.add(name)
    return name


def _open_spill_file(path: Path, key: str, shape: tuple[int, ...],
                     dtype: torch.dtype) -> tuple[torch.Tensor, np.memmap]:
    """A writable ``.npy`` memmap at ``path`` and a tensor sharing its memory."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=_numpy_dtype(dtype, key), shape=shape)
    return torch.from_numpy(array), array


class _BufferWriter:
    """Sink that copies each hook's output into its slice of a per-layer buffer."""

    def __init__(self, n_total: int, store: torch.device, spill_to: Path | None) -> None:
        self.n_total = n_total
        self.store = store
        self.spill_to = spill_to
        self.buffers: dict[str, torch.Tensor] = {}
        self.files: dict[str, Path] = {}
        self._taken: set[str] = set()
        self._arrays: list[np.memmap] = []
        self.start = self.stop = 0
        self.batch = 0
        self.written: set[str] = set()

    def begin(self, start: int, stop: int, batch: int) -> None:
        self.start, self.stop, self.batch = start, stop, batch
        self.written = set()

    def __call__(self, key: str, t: torch.Tensor, raw: torch.Tensor) -> None:
        rows = self.stop - self.start
        if t.ndim == 0 or t.shape[0] != rows:
            raise RuntimeError(f"layers: expected layer {key!r} to give a batch-first output with "
                               f"{rows} rows for batch {self.batch}, got shape {list(t.shape)}")
        buf = self.buffers.get(key)
        if buf is None:
            if self.batch > 0:
                raise RuntimeError(f"layers: expected the same layers to run for every batch, got "
                                   f"{key!r} running first in batch {self.batch}")
            buf = self._allocate(key, t)
        elif t.shape[1:] != buf.shape[1:]:
            raise RuntimeError(f"layers: expected layer {key!r} to give shape "
                               f"{[rows, *buf.shape[1:]]} for batch {self.batch} (the same features "
                               f"every batch), got {list(t.shape)}; use pool='mean' or a callable "
                               f"pool")
        buf[self.start:self.stop].copy_(t)
        self.written.add(key)

    def _allocate(self, key: str, t: torch.Tensor) -> torch.Tensor:
        shape = (self.n_total, *t.shape[1:])
        if self.spill_to is None:
            buf = empty_host(shape, t.dtype, self.store)
        else:
            path = self.spill_to / _file_name(key, self._taken)
            buf, array = _open_spill_file(path, key, shape, t.dtype)
            self._arrays.append(array)
            self.files[key] = path
        self.buffers[key] = buf
        return buf

    def end_batch(self) -> None:
        missing = [k for k in self.buffers if k not in self.written]
        if missing:
            raise RuntimeError(f"layers: expected the same layers to run for every batch, got no "
                               f"output from {_list_names(missing)} in batch {self.batch}")

    def finish(self, n_written: int) -> dict[str, torch.Tensor]:
        for array in self._arrays:
            array.flush()
        if n_written == self.n_total:
            return self.buffers
        return {k: b[:n_written] for k, b in self.buffers.items()}


def _spill_collected(tensors: Mapping[str, torch.Tensor],
                     spill_to: Path) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """Write already collected activations to ``.npy`` files; return views of them."""
    out: dict[str, torch.Tensor] = {}
    files: dict[str, Path] = {}
    taken: set[str] = set()
    for key, t in tensors.items():
        files[key] = spill_to / _file_name(key, taken)
        out[key], array = _open_spill_file(files[key], key, tuple(t.shape), t.dtype)
        out[key].copy_(t)
        array.flush()
    return out, files


# ----------------------------------------------------------------------------
# record()
# ----------------------------------------------------------------------------

def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    return a.index is None or b.index is None or a.index == b.index


def record(model: nn.Module, data: Any, layers: LayerSelector = None, pool: PoolSpec = "none",
           batch_size: int = 256, max_samples: int | None = None,
           device: torch.device | str | None = None, to: torch.device | str | None = "cpu",
           spill_to: str | Path | None = None, progress: bool = True, layout: Any = "auto") -> Activations:
    """Run ``model`` over ``data`` and return the selected layers' activations.

    The model runs in eval mode under ``torch.no_grad()``; its modes and
    ``requires_grad`` flags are restored afterwards. Each layer's output is
    pooled on the model's device and copied straight into its slice of a
    buffer of shape ``[n_samples, *features]`` allocated once, after the
    first batch, so memory is bounded by the result itself.

    Parameters
    ----------
    model : nn.Module
        The model. It is not moved: its parameters must already be on
        ``device``.
    data : Tensor, ndarray, tuple (X, y), Dataset or DataLoader
        The inputs, batch first. A ``Dataset``'s items are ``x`` or
        ``(x, y)``; a ``DataLoader`` is iterated as is (its own batch size
        and order; ``batch_size`` is ignored) and yields ``x`` or
        ``(x, y, ...)``. Arrays become tensors; floating-point inputs are
        cast to the dtype of the model's floating-point parameters when they
        all share one.
    layers : selector, optional
        Which submodules to record; see :func:`select_layers`. Default:
        every leaf submodule.
    pool : {"none", "flatten", "mean", "cls", "last"} or callable, default "none"
        How each output is reduced per sample; see :class:`ActivationRecorder`.
    layout : {"auto", "channels_first", "channels_last"} or mapping, default "auto"
        Which axes are channels, tokens or space, for ``pool``; see
        :class:`ActivationRecorder` (``"auto"``: from the traced graph; never guessed).
    batch_size : int, default 256
        Samples per forward pass for tensors, arrays and datasets.
    max_samples : int, optional
        Stop after this many samples (the last batch is truncated).
    device : device, optional
        Where the forward pass runs; inputs are moved there batch by batch.
        Default: the device of the model's parameters (cpu if it has none).
    to : device or None, default "cpu"
        Where activations are stored; ``None`` keeps them on ``device``.
    spill_to : path, optional
        Directory (created if needed) in which each layer's buffer is a
        ``.npy`` file opened with ``numpy.lib.format.open_memmap``; the
        returned tensors are views of those files. Requires ``to`` on cpu.
    progress : bool, default True
        Show a progress bar over batches (on a terminal or in a notebook, once recording has
        taken more than a second).

    Returns
    -------
    Activations
        ``{layer key: Tensor[n_samples, *features]}`` in forward order, with
        ``.labels`` (``Tensor[n_samples]`` or ``None``), ``.n_samples`` and,
        when spilled, ``.files``.

    Raises
    ------
    ValueError
        For inputs and labels of different lengths, NaN or inf in the inputs,
        a model on another device than ``device``, or bad arguments.
    RuntimeError
        If a selected layer does not run for every batch.

    Notes
    -----
    A ``DataLoader`` whose length is unknown (an ``IterableDataset``, a
    custom ``batch_sampler``) is collected batch by batch and concatenated
    at the end instead.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> X, y = torch.randn(100, 4), torch.randint(0, 2, (100,))
    >>> acts = record(model, (X, y), layers=["0", nn.ReLU], batch_size=32)
    >>> acts.layer_names, acts["1"].shape, acts.labels.shape
    (('0', '1'), torch.Size([100, 8]), torch.Size([100]))
    >>> print(acts)
    Activations(n_samples=100, layers=2, labels=Tensor[100] int64)
      0  [100, 8]  float32  cpu
      1  [100, 8]  float32  cpu
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {describe(model)}")
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    wanted(progress)  # checks the argument before any work
    if max_samples is not None:
        max_samples = check_int(max_samples, "max_samples", minimum=1)
    run_dev, store = _resolve_devices(model, device, to)
    spill_dir = _prepare_spill_dir(spill_to, store)
    source = BatchSource(data, batch_size, "data")
    in_dtype = model_dtype(model)
    if source.checked:
        check_cast(source.x, "data", in_dtype)  # a cast that would overflow is refused before any work
    n_total = source.n if max_samples is None or source.n is None else min(source.n, max_samples)
    recorder = ActivationRecorder(model, layers=layers, pool=pool, to=None if n_total else store, layout=layout)
    writer = _BufferWriter(n_total, store, spill_dir) if n_total else None
    n_batches = None if n_total is None else -(-n_total // source.batch_size)
    with recorder, torch.no_grad(), progress_bar(total=n_batches, progress=progress, desc="record",
                                                 unit="batch", leave=False) as bar:
        model.eval()
        if writer is not None:
            recorder._sink = writer
        limit = n_total if n_total is not None else max_samples
        written, labels = _run_batches(model, source, recorder, writer, limit, run_dev,
                                       in_dtype, store, bar)
    if written == 0:
        raise ValueError(f"data: expected at least one sample, got {describe(data)} which yields none")
    label_tensor = torch.cat(labels) if labels else None
    if label_tensor is not None and label_tensor.shape[0] != written:
        raise ValueError(f"data: expected labels with every batch or with none, got labels for "
                         f"{label_tensor.shape[0]} of {written} samples")
    if writer is not None:
        return Activations(writer.finish(written), label_tensor, writer.files)
    tensors = recorder.activations()
    if spill_dir is not None:
        tensors, files = _spill_collected(tensors, spill_dir)
        return Activations(tensors, label_tensor, files)
    return Activations(tensors, label_tensor)


def _resolve_devices(model: nn.Module, device: Any, to: Any) -> tuple[torch.device, torch.device]:
    """The device the forward pass runs on and the device activations are stored on."""
    model_dev = model_device(model)
    if device is None:
        run_dev = model_dev or torch.device("cpu")
    else:
        run_dev = _as_device(device, "device")
        devices = {t.device for t in (*model.parameters(), *model.buffers())}
        if devices and not any(_same_device(run_dev, d) for d in devices):
            raise ValueError(f"device: expected the device holding the model's parameters "
                             f"({', '.join(sorted(map(str, devices)))}), got {str(run_dev)!r}; "
                             f"move the model first with model.to({str(run_dev)!r})")
    return run_dev, run_dev if to is None else _as_device(to, "to")


def _prepare_spill_dir(spill_to: str | Path | None, store: torch.device) -> Path | None:
    if spill_to is None:
        return None
    if store.type != "cpu":
        raise ValueError(f"to: expected 'cpu' when spill_to is given (files live in host memory), "
                         f"got {str(store)!r}")
    spill_dir = Path(spill_to)
    spill_dir.mkdir(parents=True, exist_ok=True)
    return spill_dir


def _run_batches(model: nn.Module, source: BatchSource, recorder: ActivationRecorder,
                 writer: _BufferWriter | None, limit: int | None, run_dev: torch.device,
                 in_dtype: torch.dtype | None, store: torch.device,
                 bar: Any) -> tuple[int, list[torch.Tensor]]:
    """Feed every batch through ``model``; return the number of samples and the label batches."""
    written = 0
    labels: list[torch.Tensor] = []
    for index, (x, y) in enumerate(source):
        rows = x.shape[0] if limit is None else min(x.shape[0], limit - written)
        if rows < x.shape[0]:
            x = x[:rows]
            y = None if y is None else y[:rows]
        if not source.checked:
            check_finite(x, "data", f"batch {index}")
        x = cast_inputs(x, f"data (batch {index})", dtype=in_dtype, device=run_dev, check=not source.checked)
        if writer is not None:
            writer.begin(written, written + rows, index)
        model(x)
        if index == 0:
            recorder.check_fired()
        if writer is not None:
            writer.end_batch()
        if y is not None:
            labels.append(y.to(store))
        written += rows
        bar.update(1)
        if limit is not None and written >= limit:
            break
    return written, labels
