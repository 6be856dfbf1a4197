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

Where it lives: :mod:`.selection` (selectors), :mod:`.recorder` (the hooks),
:mod:`.activations` (the result and its buffers), :mod:`.recording` (``record``); pooling by
layout is :mod:`sepmeasure.pooling`, turning data into batches :mod:`sepmeasure.inputs`.
"""
from __future__ import annotations

from .activations import Activations
from .recorder import ActivationRecorder
from .recording import record
from .selection import LayerSelector, select_layers

__all__ = ["ActivationRecorder", "Activations", "LayerSelector", "record", "select_layers"]
