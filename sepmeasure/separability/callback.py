"""Training callback: per-layer separability on a fixed training subset during :func:`~sepmeasure.training.fit`.

Zhang et al. 2023 (arXiv 2307.13962) relate the linear separability of hidden layers to
training performance over the course of training ("synchronicity"). This callback records
:func:`~sepmeasure.separability.tables.layer_separability` at chosen epochs or optimiser steps
on the same samples every time, so the rows of different epochs are directly comparable.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
import torch

from ..capture import record
from ..data import LabeledData, as_dataset
from ..training import Callback, TrainingState
from ..validation import check_int, describe
from .registry import REGISTRY, check_measures, resolve_options
from .tables import balanced_subsample, layer_separability

__all__ = ["SeparabilityCallback"]


class SeparabilityCallback(Callback):
    """Record per-layer separability of a fixed training subset at chosen epochs/steps.

    At the start of training the callback draws (with ``seed``) at most ``max_per_class``
    samples of every class from ``data`` (default: the training set given to ``fit``) and keeps
    them. Whenever it runs it records the chosen layers' activations on those samples with
    :func:`sepmeasure.capture.record` (model in eval mode, under ``no_grad``; the model's mode is
    restored) and appends the rows of :func:`layer_separability` to its table, with the
    ``epoch``, ``step`` and ``trigger`` columns of :class:`~sepmeasure.training.Callback`.

    Parameters
    ----------
    layers : selector, optional
        Which submodules to record (see :func:`sepmeasure.capture.select_layers`); default
        every leaf module.
    measures : sequence of str
        Measures of :func:`layer_separability`.
    pairs : "ovo", "ovr" or list of (class_a, class_b)
    max_per_class : int, optional
        Samples per class in the fixed subset (None: all of ``data``).
    seed : int
        Seeds the subset and the measures.
    pool : {"flatten", "mean", "none"} or callable
        How each layer's output is reduced per sample before measuring.
    data : optional
        Where the subset comes from (anything :func:`sepmeasure.data.as_dataset` accepts).
    epochs, steps
        When to run (see :class:`~sepmeasure.training.Callback`).
    batch_size : int
        Forward-pass batch size of the recording.
    **options
        Further keyword arguments of :func:`layer_separability`: ``options`` (``{measure name:
        {option: value}}``, checked here), its short forms (``md_lsm_method``, ``hull_tol``, ...),
        ``classes``, ``device``, ``progress``.

    Examples
    --------
    >>> from sepmeasure.models import MLP
    >>> from sepmeasure.data import load_dataset
    >>> from sepmeasure.training import fit
    >>> train = load_dataset("gaussians", size=120)
    >>> cb = SeparabilityCallback(layers=["layers.0.act"], measures=("hull_distance",), max_per_class=20,
    ...                           epochs=[0, 2])
    >>> history = fit(MLP(2, [8], train.n_classes), train, epochs=2, progress=False, callbacks=[cb])
    >>> sorted(cb.table["epoch"].unique().tolist())
    [0, 2]
    """

    name = "separability"

    def __init__(self, layers: Any = None, *, measures: Sequence[str] = ("md_lsm", "hull_distance", "linear_probe"),
                 pairs: Any = "ovo", max_per_class: int | None = 64, seed: int = 0, pool: Any = "flatten",
                 data: Any = None, epochs: str | Iterable[int] | None = "all", steps: Iterable[int] | None = None,
                 batch_size: int = 256, **options: Any) -> None:
        super().__init__(epochs=epochs, steps=steps)
        self.layers = layers
        self.measures = check_measures(measures)
        self.pairs = pairs
        self.max_per_class = None if max_per_class is None else check_int(max_per_class, "max_per_class", minimum=1)
        self.seed = check_int(seed, "seed", minimum=0)
        self.pool = pool
        self.data = data
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        bad = set(options) - set(TABLE_KEYWORDS)
        if bad:
            raise TypeError(f"options: expected keyword arguments of layer_separability, got {sorted(bad)}")
        aliases = {a for m in REGISTRY.values() for a in m.aliases}
        resolve_options(options.get("options"), {k: v for k, v in options.items() if k in aliases},
                        seed=self.seed)   # the measures' options are checked now, not at the first epoch
        self.options = options
        self.indices: torch.Tensor | None = None
        self._X: torch.Tensor | None = None
        self._y: torch.Tensor | None = None

    def on_train_begin(self, state: TrainingState) -> None:
        super().on_train_begin(state)
        source = as_dataset(self.data if self.data is not None else state.train, "data")
        X, y = _tensors_of(source)
        self.indices = balanced_subsample(y, self.max_per_class, self.seed)
        self._X, self._y = X[self.indices.to(X.device)], y[self.indices.to(y.device)]

    def measure(self, state: TrainingState) -> pd.DataFrame:
        if self._X is None:
            self.on_train_begin(state)
        acts = record(state.model, (self._X, self._y), layers=self.layers, pool=self.pool,
                      batch_size=self.batch_size, device=state.device, to=None)
        options = {"device": state.device, **self.options}
        return layer_separability(acts, self._y.to(options["device"]), measures=self.measures, pairs=self.pairs,
                                  seed=self.seed, **options)


# keyword arguments of layer_separability that the callback passes on (the others it sets itself)
TABLE_KEYWORDS = tuple(name for name, p in inspect.signature(layer_separability).parameters.items()
                       if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("max_per_class", "seed"))


def _tensors_of(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, LabeledData):
        return data.X, data.y
    xs, ys = [], []
    for i in range(len(data)):
        item = data[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise TypeError(f"data: expected dataset items (x, y), got {describe(item)} at index {i}")
        xs.append(torch.as_tensor(item[0]))
        ys.append(torch.as_tensor(item[1]))
    if not xs:
        raise ValueError("data: expected at least one sample, got an empty dataset")
    return torch.stack(xs), torch.stack(ys).long().reshape(-1)
