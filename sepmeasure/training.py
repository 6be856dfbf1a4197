"""Training loop with measurement callbacks.

:func:`fit` trains a classifier and returns a tidy history (one row per epoch and split);
:class:`Callback` objects get the model at chosen epochs or steps, so measures can run
during training and land in a table of their own (``callback.table``, and all of them
together in ``history.attrs["measurements"]``).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from ._progress import progress_bar, wanted
from .data import LabeledData, as_dataset
from .inputs import check_cast, dataset_batches, model_device, model_dtype, rejected_batch, tensor_batches
from .provenance import environment_info, seed_everything
from .validation import check_choice, check_int, check_positive, check_seed, describe

__all__ = ["fit", "evaluate", "Callback", "TrainingState"]


class TrainingState:
    """What a callback sees: the model, where training stands, and the data."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, train: Dataset,
                 test: Dataset | None, device: torch.device, epochs: int, steps_per_epoch: int) -> None:
        self.model = model
        self.optimizer = optimizer
        self.train = train
        self.test = test
        self.device = device
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0
        self.step = 0
        self.last_loss: float = math.nan
        self.history: list[dict[str, Any]] = []


def _iterable(value: Any, name: str, alternatives: str) -> Iterable[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name}: expected {alternatives} an iterable of ints, got {describe(value)}")
    return value


class Callback:
    """Base class: runs :meth:`measure` at chosen epochs and/or steps and collects its rows.

    Parameters
    ----------
    epochs : "all", iterable of int, or None
        Epochs after which to run (0 = before the first update). ``"all"`` runs after every epoch.
    steps : iterable of int, optional
        Global optimiser steps after which to run (1 = after the first update), e.g. the
        early steps of training.

    Notes
    -----
    Subclasses implement :meth:`measure`, which returns a list of dicts (rows) or a DataFrame;
    ``epoch`` and ``step`` columns are added. A callback may also override :meth:`on_step_end`
    (called after every optimiser step, e.g. to clamp parameters) or :meth:`penalty`.

    Examples
    --------
    >>> class Norm(Callback):
    ...     def measure(self, state):
    ...         return [{"measure": "weight_norm", "value": sum(p.norm().item() for p in state.model.parameters())}]
    >>> cb = Norm(epochs="all")
    """

    name: str | None = None

    def __init__(self, epochs: str | Iterable[int] | None = "all", steps: Iterable[int] | None = None) -> None:
        if epochs is not None and not (isinstance(epochs, str) and epochs == "all"):
            epochs = {check_int(e, "epochs[i]", minimum=0) for e in _iterable(epochs, "epochs", '"all", None or')}
        self.epochs = epochs
        self.steps = None if steps is None else {check_int(s, "steps[i]", minimum=1)
                                                 for s in _iterable(steps, "steps", "None or")}
        self.rows: list[dict[str, Any]] = []

    def measure(self, state: TrainingState) -> list[dict[str, Any]] | pd.DataFrame | None:
        return None

    def on_step_end(self, state: TrainingState) -> None:
        """Called after every optimiser step."""

    def on_train_begin(self, state: TrainingState) -> None:
        self.rows = []

    def wants_epoch(self, epoch: int) -> bool:
        return self.epochs == "all" or (self.epochs is not None and epoch in self.epochs)

    def wants_step(self, step: int) -> bool:
        return self.steps is not None and step in self.steps

    def run(self, state: TrainingState, trigger: str) -> None:
        was_training = state.model.training
        try:
            out = self.measure(state)
        finally:
            state.model.train(was_training)
        if out is None:
            return
        rows = out.to_dict("records") if isinstance(out, pd.DataFrame) else list(out)
        label = self.name or type(self).__name__
        for r in rows:
            self.rows.append({"callback": label, "epoch": state.epoch, "step": state.step, "trigger": trigger, **r})

    @property
    def table(self) -> pd.DataFrame:
        """Everything this callback measured, one row per measurement."""
        return pd.DataFrame(self.rows)


def _batches(data: Dataset, batch_size: int, shuffle: bool, generator: torch.Generator, device: torch.device,
             name: str, dtype: torch.dtype | None) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches; tensor-backed data is sliced directly (much faster than a DataLoader).

    Both paths draw the same permutation, so they see identical batches. Inputs are cast to
    ``dtype`` (the model's); :func:`_prepare` has checked that the cast of a
    :class:`LabeledData` keeps its values finite, batches of other Datasets are checked as they
    arrive.
    """
    order = torch.randperm(len(data), generator=generator) if shuffle else torch.arange(len(data))
    if isinstance(data, LabeledData):
        X = data.X if dtype is None or not torch.is_floating_point(data.X) else data.X.to(dtype)
        return tensor_batches(X, data.y, order, batch_size, device)
    return dataset_batches(data, order, batch_size, device, name, dtype=dtype)


def _prepare(data: Any, name: str, model: nn.Module) -> Dataset:
    """``data`` as a Dataset whose inputs survive the cast to the model's dtype (named ``name``)."""
    data = as_dataset(data, name)
    if isinstance(data, LabeledData):
        check_cast(data.X, name, model_dtype(model))
    return data


def _forward(model: nn.Module, xb: torch.Tensor, name: str, first: bool) -> torch.Tensor:
    """``model(xb)``; on the first batch a model that cannot take the inputs (a wrong width or rank,
    say) is reported naming ``name``, with torch's message, instead of a bare torch traceback."""
    if not first:
        return model(xb)
    try:
        return model(xb)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as exc:
        raise rejected_batch(name, xb, exc) from exc


def _check_outputs(out: torch.Tensor, data: Dataset, yb: torch.Tensor, first: bool, name: str) -> None:
    """Labels must index the model's outputs (cross-entropy's contract).

    The labels of a :class:`LabeledData` are checked once, on its first batch; those of another
    Dataset on every batch, as they arrive.
    """
    if isinstance(data, LabeledData):
        if not first:
            return
        yb = data.y
    if out.ndim != 2:
        raise ValueError(f"model: expected logits of shape (N, n_classes) for cross-entropy, got an output of "
                         f"shape {list(out.shape)} for a batch of {name}")
    hi = int(yb.max()) if yb.numel() else -1
    if hi >= out.shape[1]:
        raise ValueError(f"{name}: expected class labels below {out.shape[1]}, the number of outputs of the "
                         f"model, got a label {hi}")


def evaluate(model: nn.Module, data: Any, batch_size: int = 1024, device: torch.device | str | None = None,
             loss_fn: Callable | None = None) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` on ``data`` in eval mode (the mode is restored).

    Parameters
    ----------
    model : nn.Module
        Maps a batch of inputs to class logits ``(N, n_classes)``. It is not moved: its
        parameters must be on ``device``.
    data : data
        Anything :func:`sepmeasure.data.as_dataset` accepts: :class:`LabeledData`, ``(X, y)``,
        an ``.npz`` path, or a Dataset of ``(x, y)`` items.
    batch_size : int, default 1024
        Samples per forward pass.
    device : device or str, optional
        Where the batches are sent (default: the device of the model's parameters; cpu if it
        has none).
    loss_fn : callable, optional
        ``loss_fn(logits, y, reduction="sum")``; cross-entropy by default.

    Returns
    -------
    dict
        ``"loss"``: the mean loss per sample; ``"accuracy"``: the share of samples whose
        largest logit is the label's; ``"n"``: the number of samples.

    Raises
    ------
    TypeError
        ``data`` that :func:`sepmeasure.data.as_dataset` refuses with a ``TypeError`` (see
        there); a Dataset whose items are not ``(x, y)`` pairs; ``loss_fn`` is not callable.
    ValueError, KeyError, FileNotFoundError
        ``data`` that :func:`sepmeasure.data.as_dataset` refuses (see there).

    Examples
    --------
    >>> from sepmeasure.models import MLP
    >>> from sepmeasure.data import load_dataset
    >>> r = evaluate(MLP(2, [8], 2), load_dataset("xor", size=100))
    >>> sorted(r)
    ['accuracy', 'loss', 'n']
    """
    return _evaluate(model, data, batch_size, device, loss_fn, "data")


def _evaluate(model: nn.Module, data: Any, batch_size: int, device: torch.device | str | None,
              loss_fn: Callable | None, name: str) -> dict[str, float]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {describe(model)}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable loss_fn(logits, y, reduction=...), got {describe(loss_fn)}")
    data = _prepare(data, name, model)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    device = torch.device(device) if device is not None else (model_device(model) or torch.device("cpu"))
    return _evaluate_core(model, data, batch_size, device, loss_fn, name)


@torch.no_grad()
def _evaluate_core(model: nn.Module, data: Dataset, batch_size: int, device: torch.device,
                   loss_fn: Callable | None, name: str) -> dict[str, float]:
    """:func:`evaluate` on checked arguments (``data`` from :func:`_prepare`)."""
    check_targets = loss_fn is None
    loss_fn = loss_fn or nn.functional.cross_entropy
    dtype = model_dtype(model)
    was_training = model.training
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    try:
        for index, (xb, yb) in enumerate(_batches(data, batch_size, False, torch.Generator(), device, name, dtype)):
            out = _forward(model, xb, name, index == 0)
            if check_targets:
                _check_outputs(out, data, yb, index == 0, name)
            loss_sum += float(loss_fn(out, yb, reduction="sum"))
            correct += int((out.argmax(dim=1) == yb).sum())
            total += int(yb.shape[0])
    finally:
        model.train(was_training)
    return {"loss": loss_sum / max(total, 1), "accuracy": correct / max(total, 1), "n": total}


def _make_optimizer(name: str, params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def fit(model: nn.Module, train: Any, test: Any = None, *, epochs: int = 10, lr: float = 0.05,
        optimizer: str = "sgd", batch_size: int = 128, seed: int = 0, callbacks: Sequence[Callback] = (),
        device: torch.device | str | None = None, progress: bool = True, momentum: float = 0.9,
        weight_decay: float = 0.0, penalty: Callable[[nn.Module], torch.Tensor] | None = None,
        loss_fn: Callable | None = None, eval_batch_size: int = 1024) -> pd.DataFrame:
    """Train a classifier with mini-batch SGD or Adam; return a tidy history.

    Parameters
    ----------
    model : nn.Module
        Maps a batch of inputs to class logits ``(N, n_classes)``. Moved to ``device``.
    train, test : data
        Anything :func:`sepmeasure.data.as_dataset` accepts: :class:`LabeledData`, ``(X, y)``,
        an ``.npz`` path, or a Dataset of ``(x, y)`` items. ``test`` is optional (default
        None: the history has no ``"test"`` rows).
    epochs : int, default 10
        Passes over ``train``; ``>= 0`` (0: only the measurements before training).
    lr : float, default 0.05
        Learning rate, > 0.
    optimizer : {"sgd", "adam"}, default "sgd"
    batch_size : int, default 128
        Training samples per optimiser step, ``>= 1``; the last batch of an epoch may be smaller.
    momentum : float, default 0.9
        SGD's momentum, in [0, 1] (not used by Adam).
    weight_decay : float, default 0.0
        L2 weight decay of the optimiser, ``>= 0``.
    seed : int, default 0
        Seeds Python, NumPy and torch before training and the shuffling generator; ``>= 0``.
    callbacks : sequence of Callback, default ()
        Run at their chosen epochs/steps; their rows are in ``callback.table`` and in
        ``history.attrs["measurements"]``.
    device : device, optional
        Where to train (default: the model's device).
    progress : bool, default True
        Progress bar over epochs (shown on a terminal or in a notebook, once training has
        taken more than a second).
    penalty : callable, optional
        ``penalty(model) -> scalar tensor`` added to the loss at every step (e.g. a mask or
        sparsity prior).
    loss_fn : callable, optional
        ``loss_fn(logits, y, reduction=...)``; cross-entropy by default.
    eval_batch_size : int, default 1024
        Samples per forward pass of the full-pass evaluations after each epoch (see
        :func:`evaluate`).

    Returns
    -------
    pandas.DataFrame
        Columns ``epoch, step, split, loss, accuracy, seconds``: for every epoch 0..epochs,
        the full-pass loss and accuracy (eval mode) on ``"train"`` and ``"test"``; ``seconds``
        is the training time elapsed. ``attrs`` holds ``config``, ``environment`` (library
        versions, git commit, device) and ``measurements`` (a DataFrame).

    Raises
    ------
    TypeError
        ``model`` is not an ``nn.Module``; ``epochs``, ``batch_size`` or ``seed`` is not an int
        (bools are refused); ``progress`` is not a bool; ``lr`` or ``weight_decay`` is not a
        real number; an entry of ``callbacks`` is not a :class:`Callback`; a Dataset whose items
        are not ``(x, y)`` pairs; ``train`` or ``test`` that :func:`sepmeasure.data.as_dataset`
        refuses with a ``TypeError``.
    ValueError
        ``epochs < 0``, ``batch_size < 1``, ``seed < 0`` or ``seed >= 2**63``; ``lr`` is not a
        finite number > 0; ``lr`` or ``weight_decay`` exceeds the largest value of the model's
        dtype; ``weight_decay`` is negative or not finite; ``momentum`` is not in [0, 1]; ``optimizer`` is not ``"sgd"`` or
        ``"adam"``; ``model`` has no parameter with ``requires_grad=True``; ``train`` or
        ``test`` that :func:`sepmeasure.data.as_dataset` refuses with a ``ValueError``.
    KeyError, FileNotFoundError
        An ``.npz`` path given as ``train`` or ``test`` that :func:`sepmeasure.data.as_dataset`
        refuses (see there).
    FloatingPointError
        Training diverged: the loss (penalty included) is NaN or infinite at some step.

    Examples
    --------
    >>> from sepmeasure.models import MLP
    >>> from sepmeasure.data import load_dataset
    >>> train, test = load_dataset("two_moons", split="both", size=200)
    >>> h = fit(MLP(2, [16], 2), train, test, epochs=2, progress=False)
    >>> list(h.columns), len(h)
    (['epoch', 'step', 'split', 'loss', 'accuracy', 'seconds'], 6)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {describe(model)}")
    train = _prepare(train, "train", model)
    test = _prepare(test, "test", model) if test is not None else None
    epochs = check_int(epochs, "epochs", minimum=0)
    wanted(progress)  # checks the argument before any work
    lr = check_positive(lr, "lr")
    dtype = model_dtype(model) or torch.float32
    for name, value in (("lr", lr), ("weight_decay", weight_decay)):
        if isinstance(value, (int, float)) and value > torch.finfo(dtype).max:
            raise ValueError(f"{name}: expected a coefficient the model's dtype {dtype} can hold "
                             f"(<= {torch.finfo(dtype).max:.3g}), got {value!r}")
    check_choice(optimizer, "optimizer", ("sgd", "adam"))
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    seed = check_seed(seed, "seed")
    eval_batch_size = check_int(eval_batch_size, "eval_batch_size", minimum=1)
    check_positive(weight_decay, "weight_decay", strict=False)
    if check_positive(momentum, "momentum", strict=False) > 1:
        raise ValueError(f"momentum: expected a heavy-ball coefficient in [0, 1] (above 1 every step grows the "
                         f"velocity), got {momentum!r}")
    if penalty is not None and not callable(penalty):
        raise TypeError(f"penalty: expected a callable penalty(model) -> scalar tensor, got {describe(penalty)}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable loss_fn(logits, y, reduction=...), got {describe(loss_fn)}")
    if isinstance(callbacks, Callback) or not isinstance(callbacks, Iterable):
        raise TypeError(f"callbacks: expected a list of sepmeasure.training.Callback, got {describe(callbacks)}")
    callbacks = list(callbacks)
    for i, cb in enumerate(callbacks):
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks[{i}]: expected a sepmeasure.training.Callback, got {describe(cb)}")
    device = torch.device(device) if device is not None else (model_device(model) or torch.device("cpu"))
    check_targets = loss_fn is None
    loss_fn = loss_fn or nn.functional.cross_entropy

    generator = seed_everything(seed)
    model.to(device)
    dtype = model_dtype(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: expected at least one parameter with requires_grad=True, got none")
    opt = _make_optimizer(optimizer, params, lr, momentum, weight_decay)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    state = TrainingState(model, opt, train, test, device, epochs, steps_per_epoch)
    config = {"epochs": epochs, "lr": lr, "optimizer": optimizer, "batch_size": batch_size, "seed": seed,
              "momentum": momentum if optimizer == "sgd" else None, "weight_decay": weight_decay,
              "model": getattr(model, "config", type(model).__name__), "n_train": len(train),
              "n_test": len(test) if test is not None else 0}

    elapsed = 0.0

    def log_epoch() -> None:
        for split, data in (("train", train), ("test", test)):
            if data is None:
                continue
            r = _evaluate_core(model, data, eval_batch_size, device, None if check_targets else loss_fn, split)
            state.history.append({"epoch": state.epoch, "step": state.step, "split": split, "loss": r["loss"],
                                  "accuracy": r["accuracy"], "seconds": elapsed})
        for cb in callbacks:
            if cb.wants_epoch(state.epoch):
                cb.run(state, "epoch")

    for cb in callbacks:
        cb.on_train_begin(state)
    was_training = model.training
    log_epoch()
    bar = progress_bar(total=epochs, progress=progress, desc="fit", unit="epoch", leave=False)
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            start = time.perf_counter()
            for xb, yb in _batches(train, batch_size, True, generator, device, "train", dtype):
                opt.zero_grad(set_to_none=True)
                out = _forward(model, xb, "train", state.step == 0)
                if check_targets:
                    _check_outputs(out, train, yb, state.step == 0, "train")
                loss = loss_fn(out, yb)
                if penalty is not None:
                    loss = loss + penalty(model)
                loss_value = loss.detach()
                if not torch.isfinite(loss_value):
                    raise FloatingPointError(f"training diverged: loss is {loss_value.item()} at epoch {epoch}, "
                                             f"step {state.step + 1}; try a smaller lr (got {lr})")
                loss.backward()
                opt.step()
                state.step += 1
                state.last_loss = float(loss_value)
                for cb in callbacks:
                    cb.on_step_end(state)
                    if cb.wants_step(state.step):
                        cb.run(state, "step")
            elapsed += time.perf_counter() - start
            state.epoch = epoch
            log_epoch()
            bar.update(1)
            bar.set_postfix(loss=f"{state.last_loss:.3f}", refresh=False)
    finally:
        bar.close()
        model.train(was_training)

    history = pd.DataFrame(state.history, columns=["epoch", "step", "split", "loss", "accuracy", "seconds"])
    measured = [pd.DataFrame(cb.rows) for cb in callbacks if cb.rows]
    history.attrs["config"] = config
    history.attrs["environment"] = environment_info(device)
    history.attrs["measurements"] = pd.concat(measured, ignore_index=True) if measured else pd.DataFrame()
    return history
