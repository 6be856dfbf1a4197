"""``record()``: run a model over a whole data set and keep the selected layers' activations.

The inputs come through :class:`sepmeasure.inputs.BatchSource` (one set of checks and casts);
an :class:`~.recorder.ActivationRecorder` hooks the layers and a :class:`~.activations.BufferWriter`
copies every batch into buffers allocated once (:class:`~.activations.Activations` is the result).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from sepmeasure._progress import progress_bar, wanted
from sepmeasure.inputs import (BatchSource, cast_inputs, check_cast, check_finite, model_device, model_dtype,
                               rejected_batch)
from sepmeasure.validation import check_int, describe

from .activations import Activations, BufferWriter, spill_collected
from .recorder import ActivationRecorder, PoolSpec, as_device, raised_by_torch
from .selection import LayerSelector

__all__ = ["record"]


def same_device(a: torch.device, b: torch.device) -> bool:
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
    writer = BufferWriter(n_total, store, spill_dir) if n_total else None
    recorder = ActivationRecorder(model, layers=layers, pool=pool, to=None if n_total else store, layout=layout,
                                  sink=writer)
    n_batches = None if n_total is None else -(-n_total // source.batch_size)
    with recorder, torch.no_grad(), progress_bar(total=n_batches, progress=progress, desc="record",
                                                 unit="batch", leave=False) as bar:
        model.eval()
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
        return Activations._make(writer.finish(written), label_tensor, writer.files)
    tensors = recorder.activations()
    if spill_dir is not None:
        tensors, files = spill_collected(tensors, spill_dir)
        return Activations._make(tensors, label_tensor, files)
    return Activations._make(tensors, label_tensor)


def _resolve_devices(model: nn.Module, device: Any, to: Any) -> tuple[torch.device, torch.device]:
    """The device the forward pass runs on and the device activations are stored on."""
    model_dev = model_device(model)
    if device is None:
        run_dev = model_dev or torch.device("cpu")
    else:
        run_dev = as_device(device, "device")
        devices = {t.device for t in (*model.parameters(), *model.buffers())}
        if devices and not any(same_device(run_dev, d) for d in devices):
            raise ValueError(f"device: expected the device holding the model's parameters "
                             f"({', '.join(sorted(map(str, devices)))}), got {str(run_dev)!r}; "
                             f"move the model first with model.to({str(run_dev)!r})")
    return run_dev, run_dev if to is None else as_device(to, "to")


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
                 writer: BufferWriter | None, limit: int | None, run_dev: torch.device,
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
        if index == 0:
            try:
                model(x)
            except RuntimeError as exc:  # a model that cannot take the inputs (a wrong width, rank or dtype)
                if not raised_by_torch(exc):
                    raise
                raise rejected_batch("data", x, exc) from exc
            recorder.check_fired()
        else:
            model(x)
        if writer is not None:
            writer.end_batch()
        if y is not None:
            labels.append(y.to(store))
        written += rows
        bar.update(1)
        if limit is not None and written >= limit:
            break
    return written, labels
