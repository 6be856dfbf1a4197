"""Kernel diagnostics during training: :class:`KernelDiagnostics`, a :class:`~sepmeasure.training.Callback`
that records the NTK or NPK diagnostics of :mod:`sepmeasure.kernels.diagnostics` on a fixed subset."""
from __future__ import annotations

from typing import Any

import torch

from ..training import Callback, TrainingState
from ..validation import as_tensor, check_choice, check_features, check_int, describe
from .blocks import KernelOverflowError
from .diagnostics import check_targets, kernel_rows
from .npk import neural_path_kernel
from .ntk import ParameterSelector, empirical_ntk

__all__ = ["KernelDiagnostics"]


class KernelDiagnostics(Callback):
    """Record the NTK or NPK diagnostics of a fixed subset during :func:`sepmeasure.training.fit`.

    At each chosen epoch (and step) the kernel of the model (in eval mode; the mode is restored)
    on a fixed subset is computed, and rows are recorded for: the centred alignment with the
    one-hot targets, the effective rank, the kernel distance to the previous recording and to
    the first recording (the initialisation when epoch 0 is recorded), and the kernel velocity
    (distance to the previous recording per epoch elapsed; fractional epochs for step-based
    recordings). Uses the same compute function as :func:`kernel_diagnostics`.

    Parameters
    ----------
    kernel : {"ntk", "npk"}
        ``"ntk"``: the trace NTK ``Σ_k Θ_kk`` (:func:`empirical_ntk`); ``"npk"``: the neural path
        kernel (:func:`neural_path_kernel`).
    x, y : Tensor, optional
        The fixed subset. Default: ``n`` training samples drawn once with ``seed`` at the start
        of training.
    n : int
        Subset size when ``x`` is not given.
    seed : int
    epochs, steps
        When to record (see :class:`sepmeasure.training.Callback`).
    method, params
        Passed to :func:`empirical_ntk`.
    keep_kernels : bool
        Keep every recorded kernel (on the CPU, in the model's dtype) in ``self.kernels`` as
        ``[(epoch, step, K)]``.

    Examples
    --------
    >>> from sepmeasure.models import MLP
    >>> from sepmeasure.data import load_dataset
    >>> from sepmeasure.training import fit
    >>> cb = KernelDiagnostics("ntk", n=32, epochs=[0, 1])
    >>> h = fit(MLP(2, [16], 2), load_dataset("two_moons", size=100), epochs=1, callbacks=[cb], progress=False)
    >>> sorted(set(cb.table["measure"]))
    ['alignment', 'distance_to_initial', 'distance_to_previous', 'effective_rank', 'kernel_velocity']
    """

    def __init__(self, kernel: str = "ntk", x: torch.Tensor | None = None, y: torch.Tensor | None = None, *,
                 n: int = 256, seed: int = 0, epochs: Any = "all", steps: Any = None, method: str = "auto",
                 params: ParameterSelector = None, keep_kernels: bool = False) -> None:
        super().__init__(epochs=epochs, steps=steps)
        self.kernel = check_choice(kernel, "kernel", ("ntk", "npk"))
        self.n = check_int(n, "n", minimum=1)
        self.seed = check_int(seed, "seed", minimum=0)
        self.method = method
        self.params = params
        self.keep_kernels = bool(keep_kernels)
        if (x is None) != (y is None):
            raise ValueError(f"y: expected x and y to be given together, got x={describe(x)} and y={describe(y)}")
        self._x = None if x is None else check_features(x, "x", ndim=None)
        if self._x is not None and self._x.ndim < 2:
            raise ValueError(f"x: expected a batch of inputs (n, ...), at least 2-D, got {describe(self._x)}")
        self._y = None if y is None else check_targets(y, self._x.shape[0], "y", self._x.device, n_name="x").cpu()
        self._given = x is not None
        self._previous: tuple[float, torch.Tensor] | None = None
        self._initial: torch.Tensor | None = None
        self.kernels: list[tuple[int, int, torch.Tensor]] = []

    def on_train_begin(self, state: TrainingState) -> None:
        super().on_train_begin(state)
        self._previous, self._initial, self.kernels = None, None, []
        if self._given:
            return
        data = state.train
        gen = torch.Generator().manual_seed(self.seed)
        idx = torch.randperm(len(data), generator=gen)[: min(self.n, len(data))]
        if hasattr(data, "X") and hasattr(data, "y"):
            xs, ys = data.X[idx.to(data.X.device)], data.y[idx.to(data.y.device)]
        else:
            items = [data[int(i)] for i in idx]
            xs = torch.stack([torch.as_tensor(it[0]) for it in items])
            ys = torch.as_tensor([int(it[1]) for it in items])
        self._x = xs.detach().cpu()
        # a subset drawn from the training data may hold one class: its alignment rows are NaN
        self._y = check_targets(ys.cpu(), xs.shape[0], "train labels", torch.device("cpu"), min_classes=1)

    def measure(self, state: TrainingState) -> list[dict[str, Any]]:
        model = state.model
        model.eval()
        ref = next(iter(model.parameters()))
        x = self._x.to(device=ref.device, dtype=ref.dtype)
        what = "the fixed subset x" if self._given else "the subset drawn from the training data"
        overflow = (f"x: expected inputs whose {self.kernel.upper()} is finite in {ref.dtype}, got a kernel that "
                    f"overflows on {what} (inputs of magnitude up to {float(self._x.abs().max()):.3g}); rescale "
                    f"the inputs")
        try:
            if self.kernel == "ntk":
                k = empirical_ntk(model, x, method=self.method, output="trace", params=self.params)
            else:
                k = neural_path_kernel(model, x)
        except KernelOverflowError as exc:   # named after the kernels' own arguments x1, x2
            raise ValueError(overflow) from exc
        eps = torch.finfo(k.dtype).eps
        k = k.detach().cpu()     # kept in its own dtype: the rank tolerance depends on it
        now = state.step / max(state.steps_per_epoch, 1)
        previous = self._previous[1] if self._previous is not None else None
        elapsed = now - self._previous[0] if self._previous is not None else None
        rows = kernel_rows(k, eps, self._y, previous, self._initial, elapsed)
        self._previous = (now, k)
        if self._initial is None:
            self._initial = k
        if self.keep_kernels:
            self.kernels.append((state.epoch, state.step, k))
        return [{"kernel": self.kernel, "n": k.shape[0], **r} for r in rows]
