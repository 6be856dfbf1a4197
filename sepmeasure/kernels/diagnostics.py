"""Diagnostics of kernel matrices, and a training callback that records them during ``fit``.

* :func:`kernel_target_alignment` / :func:`kernel_alignment` — centred alignment (Cortes, Mohri
  & Rostamizadeh 2012, *Algorithms for learning kernels based on centered alignment*);
* :func:`kernel_distance` — ``1 − ⟨K1, K2⟩_F / (‖K1‖_F ‖K2‖_F)`` (Fort et al. 2020, *Deep learning
  versus kernel learning*);
* :func:`kernel_spectrum` / :func:`effective_rank` — eigenvalues and the entropy effective rank
  (Roy & Vetterli 2007, *The effective rank: a measure of effective dimensionality*);
* :func:`kernel_velocity` — kernel distance between consecutive recorded epochs per epoch
  elapsed (Fort et al. 2020);
* :class:`~sepmeasure.kernels.callback.KernelDiagnostics` — a :class:`sepmeasure.training.Callback`
  recording the NTK or NPK of a fixed subset during training. It and :func:`kernel_diagnostics` share one compute
  function, so they cannot disagree.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..validation import as_tensor, check_features, check_labels, describe

__all__ = ["EFFECTIVE_RANK_DEFINITION", "KernelSpectrum", "effective_rank",
           "kernel_alignment", "kernel_diagnostics", "kernel_distance", "kernel_spectrum",
           "kernel_target_alignment", "kernel_velocity"]
# internal API of the kernels package: check_targets, kernel_rows (used by kernels.callback)

EFFECTIVE_RANK_DEFINITION = ("Roy & Vetterli 2007: exp(-sum_i p_i log p_i) with p_i = sigma_i / sum_j sigma_j, "
                             "sigma the singular values (|eigenvalues| of a symmetric kernel)")


# ----------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------

def _square(kernel: Any, name: str) -> torch.Tensor:
    k = check_features(kernel, name, ndim=2)
    if k.shape[0] != k.shape[1]:
        raise ValueError(f"{name}: expected a square (n, n) kernel matrix, got {describe(k)}; for a full NTK "
                         f"(n, n, K, K) pass output='trace' or its trace over the output axes")
    return k.double()


def _symmetric(kernel: Any, name: str) -> tuple[torch.Tensor, float]:
    """The symmetric part in float64, and the machine epsilon of the kernel's own dtype."""
    k = _square(kernel, name)
    eps = torch.finfo(kernel.dtype).eps if isinstance(kernel, torch.Tensor) and kernel.is_floating_point() \
        else torch.finfo(torch.float64).eps
    scale = float(k.abs().max())
    if float((k - k.T).abs().max()) > max(1e-6, 100 * eps) * max(scale, 1e-300):
        raise ValueError(f"{name}: expected a symmetric matrix, got one with max |K - K^T| = "
                         f"{float((k - k.T).abs().max()):.3g} (max |K| = {scale:.3g})")
    return (k + k.T) / 2, eps


def check_targets(y: Any, n: int, name: str, device: torch.device, *, n_name: str = "the kernel",
             min_classes: int = 2) -> torch.Tensor:
    """Labels ``(n,)`` → one-hot ``(n, C)``; targets ``(n, C)`` as given (float64).

    Labels need ``min_classes`` distinct classes: the centred target kernel of a single class
    is zero, so its alignment is undefined. An integer ``(n, 1)`` matrix is refused as
    ambiguous (labels with an extra axis, or a one-column integer target?).
    """
    t = as_tensor(y, name, device=device)
    if t.ndim == 1:
        labels = check_labels(t, name, n=n, n_name=n_name)
        n_classes = int(torch.unique(labels).numel())
        if n_classes < min_classes:
            raise ValueError(f"{name}: expected at least {min_classes} distinct classes (the centred target "
                             f"kernel of one class is zero, its alignment undefined), got {n_classes}")
        return nn.functional.one_hot(labels, int(labels.max()) + 1).double()
    if t.ndim == 2 and t.shape[1] == 1 and not t.is_floating_point():
        raise ValueError(f"{name}: expected 1-D class labels (n,) or a float target matrix (n, C), got an integer "
                         f"{describe(t)}; pass labels as y.reshape(-1) or targets as float")
    t = check_features(t, name, ndim=2)
    if t.shape[0] != n:
        raise ValueError(f"{name}: expected {n} rows (one per row of {n_name}), got {describe(t)}")
    return t.double()


def _unit(k: torch.Tensor) -> torch.Tensor:
    """``k`` divided by a power of two near its largest magnitude (exact), so that products and
    norms of kernels of magnitude 1e-200..1e200 neither overflow nor underflow."""
    top = float(k.abs().max()) if k.numel() else 0.0
    if top == 0.0 or not math.isfinite(top):
        return k
    return k * 2.0 ** -math.frexp(top)[1]


def _centre(k: torch.Tensor) -> torch.Tensor:
    """``H K H`` with ``H = I − 11ᵀ/n``."""
    return k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()


def _alignment(k: torch.Tensor, target: torch.Tensor, centered: bool) -> float:
    k, target = _unit(k), _unit(target)
    if centered:
        k, target = _unit(_centre(k)), _unit(_centre(target))
    denom = float(k.norm() * target.norm())
    return float((k * target).sum()) / denom if denom > 0 else math.nan


def _distance(k1: torch.Tensor, k2: torch.Tensor) -> float:
    k1, k2 = _unit(k1), _unit(k2)
    denom = float(k1.norm() * k2.norm())
    return 1.0 - float((k1 * k2).sum()) / denom if denom > 0 else math.nan


def _eigenvalues(k: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigvalsh(k).flip(0)


def _effective_rank(eigenvalues: torch.Tensor, eps: float) -> float:
    """Roy & Vetterli's effective rank; singular values below ``n · eps · σ_max`` (rounding of
    the kernel's own dtype, as in ``matrix_rank``) count as zero."""
    s = eigenvalues.abs()
    s = torch.where(s > s.numel() * eps * s.max(), s, torch.zeros_like(s))
    total = float(s.sum())
    if total <= 0:
        return math.nan
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


# ----------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------

def kernel_alignment(kernel1: torch.Tensor, kernel2: torch.Tensor, *, centered: bool = True) -> float:
    r"""(Centred) alignment of two kernel matrices.

    .. math::

        A(K_1, K_2) = \frac{\langle K_1^c, K_2^c\rangle_F}{\lVert K_1^c\rVert_F \lVert K_2^c\rVert_F},
        \qquad K^c = H K H,\; H = I - \tfrac{1}{n}\mathbf{1}\mathbf{1}^\top

    (Cortes, Mohri & Rostamizadeh 2012). ``centered=False`` gives the
    uncentred alignment of Cristianini et al. 2002.

    Parameters
    ----------
    kernel1, kernel2 : Tensor of shape ``(n, n)``
        The two kernel matrices (arrays and nested lists are accepted too); computed in float64
        on ``kernel1``'s device (``kernel2`` is moved there).
    centered : bool, default True
        Centre both kernels first (``False``: the uncentred alignment).

    Returns
    -------
    float
        In [-1, 1] (in [0, 1] for PSD kernels); NaN when a (centred) kernel is zero.

    Raises
    ------
    TypeError
        ``kernel1`` or ``kernel2`` is not a tensor, array or nested list of real numbers.
    ValueError
        ``kernel1`` or ``kernel2`` is not a square 2-D matrix, is empty or has NaN/inf entries;
        ``kernel2`` has another shape than ``kernel1``.

    Examples
    --------
    >>> k = torch.randn(5, 3); k = k @ k.T
    >>> round(kernel_alignment(k, 2 * k), 12)
    1.0
    """
    k1 = _square(kernel1, "kernel1")
    k2 = _square(kernel2, "kernel2").to(k1.device)
    if k1.shape != k2.shape:
        raise ValueError(f"kernel2: expected shape {tuple(k1.shape)} like kernel1, got {describe(kernel2)}")
    return _alignment(k1, k2, bool(centered))


def kernel_target_alignment(kernel: torch.Tensor, y: torch.Tensor, *, centered: bool = True) -> float:
    r"""Centred kernel–target alignment ``A(K, Y Yᵀ)`` (Cortes, Mohri & Rostamizadeh 2012).

    ``Y`` is the one-hot matrix of the labels ``y`` (or the given target matrix ``(n, C)``);
    see :func:`kernel_alignment` for the formula.

    Parameters
    ----------
    kernel : Tensor of shape ``(n, n)``
        The kernel matrix (arrays and nested lists are accepted too); computed in float64.
    y : Tensor of shape ``(n,)`` (integer labels) or ``(n, C)`` (targets)
        Non-negative class labels (one-hot encoded) or a real target matrix, one row per kernel
        row; moved to the kernel's device.
    centered : bool, default True
        Centre the kernel and ``Y Yᵀ`` first (``False``: the uncentred alignment).

    Returns
    -------
    float
        NaN when the centred kernel is zero (a constant kernel). Kernels of any magnitude
        (1e-200..1e200) give the alignment of the unit-scale kernel.

    Raises
    ------
    TypeError
        ``kernel`` is not a tensor, array or nested list of real numbers; ``y`` is not a tensor,
        array or nested list, holds booleans or complex numbers (labels) or complex numbers
        (targets).
    ValueError
        ``kernel`` is not a square 2-D matrix, is empty or has NaN/inf entries; ``y`` is neither
        1-D nor 2-D, or does not have one entry (row) per kernel row; labels are non-integer or
        negative, or (``centered``) of one class only; ``y`` is an integer ``(n, 1)`` matrix
        (labels with an extra axis or a one-column target: ambiguous); targets have NaN/inf
        entries.

    Examples
    --------
    >>> y = torch.tensor([0, 1, 1, 2])
    >>> onehot = torch.nn.functional.one_hot(y).double()
    >>> round(kernel_target_alignment(onehot @ onehot.T, y), 12)
    1.0
    """
    k = _square(kernel, "kernel")
    target = check_targets(y, k.shape[0], "y", k.device, min_classes=2 if centered else 1)
    return _alignment(k, target @ target.T, bool(centered))


def kernel_distance(kernel1: torch.Tensor, kernel2: torch.Tensor) -> float:
    r"""Kernel distance ``1 − ⟨K1, K2⟩_F / (‖K1‖_F ‖K2‖_F)`` (Fort et al. 2020).

    Invariant to scaling either kernel by a positive number; 0 for proportional kernels.
    Works for kernels of any (equal) shape, e.g. full NTKs ``(n, n, K, K)``.

    Parameters
    ----------
    kernel1, kernel2 : Tensor of one shape, at least 1-D
        The two kernels (arrays and nested lists are accepted too); computed in float64 on
        ``kernel1``'s device (``kernel2`` is moved there).

    Returns
    -------
    float
        In [0, 2]; NaN when a kernel is zero.

    Raises
    ------
    TypeError
        ``kernel1`` or ``kernel2`` is not a tensor, array or nested list of real numbers.
    ValueError
        ``kernel1`` or ``kernel2`` is 0-D, empty or has NaN/inf entries; ``kernel2`` has another
        shape than ``kernel1``.

    Examples
    --------
    >>> k = torch.randn(4, 4)
    >>> abs(kernel_distance(k, 3 * k)) < 1e-12
    True
    """
    k1 = check_features(kernel1, "kernel1", ndim=None).double()
    k2 = check_features(kernel2, "kernel2", ndim=None).double().to(k1.device)
    if k1.shape != k2.shape:
        raise ValueError(f"kernel2: expected shape {tuple(k1.shape)} like kernel1, got {describe(kernel2)}")
    return _distance(k1, k2)


@dataclass(frozen=True)
class KernelSpectrum:
    """Eigenvalues of a symmetric kernel matrix (descending) and its effective rank."""

    eigenvalues: torch.Tensor
    effective_rank: float
    definition: str = EFFECTIVE_RANK_DEFINITION

    @property
    def min_eigenvalue(self) -> float:
        """Most negative eigenvalue (a PSD kernel has none below rounding)."""
        return float(self.eigenvalues[-1])

    @property
    def trace(self) -> float:
        return float(self.eigenvalues.sum())

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: one row per eigenvalue (``measure="eigenvalue"``, ``index``) and one for
        the effective rank."""
        values = self.eigenvalues.detach().cpu().numpy()
        rows = [{"measure": "eigenvalue", "index": i, "value": float(v)} for i, v in enumerate(values)]
        rows.append({"measure": "effective_rank", "index": None, "value": self.effective_rank})
        return pd.DataFrame(rows, columns=["measure", "index", "value"])


def kernel_spectrum(kernel: torch.Tensor) -> KernelSpectrum:
    r"""Eigen-spectrum and effective rank of a symmetric kernel matrix.

    The effective rank is that of Roy & Vetterli 2007:
    ``erank(K) = exp(−Σ_i p_i log p_i)``, ``p_i = σ_i / Σ_j σ_j`` with ``σ`` the singular values
    (``|λ|`` for a symmetric matrix); it is ``n`` for the identity and 1 for a rank-one kernel.
    Singular values below ``n · eps · σ_max`` (``eps`` of the kernel's dtype) are rounding and
    count as zero.

    Parameters
    ----------
    kernel : Tensor of shape ``(n, n)``, symmetric
        The kernel matrix (arrays and nested lists are accepted too); symmetric up to
        ``max(1e-6, 100 eps) * max|K|``, and its symmetric part is used.

    Returns
    -------
    KernelSpectrum
        Eigenvalues (float64, descending) and effective rank (NaN for the zero matrix).

    Raises
    ------
    TypeError
        ``kernel`` is not a tensor, array or nested list of real numbers.
    ValueError
        ``kernel`` is not a square 2-D matrix, is empty, has NaN/inf entries or is not symmetric.

    Examples
    --------
    >>> s = kernel_spectrum(torch.eye(4))
    >>> round(s.effective_rank, 12), s.eigenvalues.tolist()
    (4.0, [1.0, 1.0, 1.0, 1.0])
    """
    k, eps = _symmetric(kernel, "kernel")
    eig = _eigenvalues(k)
    return KernelSpectrum(eig, _effective_rank(eig, eps))


def effective_rank(kernel: torch.Tensor) -> float:
    """Entropy effective rank of a symmetric kernel matrix (Roy & Vetterli 2007); see
    :func:`kernel_spectrum`.

    Parameters
    ----------
    kernel : Tensor of shape ``(n, n)``, symmetric
        The kernel matrix (arrays and nested lists are accepted too).

    Returns
    -------
    float
        Between 1 and ``n``; NaN for the zero matrix.

    Raises
    ------
    TypeError
        ``kernel`` is not a tensor, array or nested list of real numbers.
    ValueError
        ``kernel`` is not a square 2-D matrix, is empty, has NaN/inf entries or is not symmetric.

    Examples
    --------
    >>> v = torch.randn(6, 1)
    >>> round(effective_rank(v @ v.T), 6)
    1.0
    """
    return kernel_spectrum(kernel).effective_rank


def kernel_velocity(kernels: Sequence[torch.Tensor], epochs: Sequence[float]) -> pd.DataFrame:
    r"""Kernel velocity between consecutive recorded epochs (Fort et al. 2020).

    .. math::

        v(t_i) = \frac{S(K_{t_{i-1}}, K_{t_i})}{t_i - t_{i-1}}, \qquad
        S(K, K') = 1 - \frac{\langle K, K'\rangle_F}{\lVert K\rVert_F \lVert K'\rVert_F}

    Parameters
    ----------
    kernels : sequence of Tensor
        Kernels of one fixed set of inputs, in training order (all of one shape).
    epochs : sequence of float
        When each was recorded, strictly increasing (fractional epochs allowed).

    Returns
    -------
    pandas.DataFrame
        One row per consecutive pair: ``measure="kernel_velocity"``, ``epoch_from``, ``epoch``,
        ``distance``, ``value`` (distance per epoch).

    Raises
    ------
    TypeError
        ``kernels`` is a tensor or not a sequence; a kernel is not a tensor, array or nested list
        of real numbers.
    ValueError
        Fewer than 2 kernels; ``epochs`` is not a sequence (a string counts as none) of one
        number per kernel, or its times do not increase strictly; a kernel is 0-D, empty or has
        NaN/inf entries, or has another shape than the one before it (the message names the pair
        ``kernels[i-1], kernels[i]``, then ``kernel1``/``kernel2`` as in :func:`kernel_distance`).

    Examples
    --------
    >>> k = torch.eye(3)
    >>> kernel_velocity([k, k, 2 * k + 1], [0, 1, 3])[["epoch", "value"]].shape
    (2, 2)
    """
    if isinstance(kernels, (torch.Tensor, str, bytes)) or not isinstance(kernels, Sequence):
        raise TypeError(f"kernels: expected a sequence of kernel tensors, got {describe(kernels)}")
    if len(kernels) < 2:
        raise ValueError(f"kernels: expected at least 2 kernels (the velocity is between consecutive ones), "
                         f"got {len(kernels)}")
    if isinstance(epochs, (str, bytes)) or not isinstance(epochs, Sequence) or len(epochs) != len(kernels):
        raise ValueError(f"epochs: expected a sequence of {len(kernels)} numbers (one per kernel), "
                         f"got {describe(epochs)}")
    try:
        times = [float(e) for e in epochs]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"epochs: expected numbers (one per kernel), got {describe(epochs)}") from exc
    if not all(math.isfinite(t) for t in times):
        raise ValueError(f"epochs: expected finite times, got {times}")
    if any(b <= a for a, b in zip(times[:-1], times[1:])):
        raise ValueError(f"epochs: expected strictly increasing times, got {times}")
    rows = []
    for i in range(1, len(kernels)):
        try:
            d = kernel_distance(kernels[i - 1], kernels[i])
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"kernels[{i - 1}], kernels[{i}]: {exc}") from exc
        rows.append({"measure": "kernel_velocity", "epoch_from": times[i - 1], "epoch": times[i],
                     "distance": d, "value": d / (times[i] - times[i - 1])})
    return pd.DataFrame(rows, columns=["measure", "epoch_from", "epoch", "distance", "value"])


def kernel_rows(kernel: torch.Tensor, eps: float, targets: torch.Tensor | None, previous: torch.Tensor | None,
                 initial: torch.Tensor | None, elapsed: float | None) -> list[dict[str, Any]]:
    """The rows of :func:`kernel_diagnostics` and :class:`KernelDiagnostics` (one compute function)."""
    k = _unit(kernel.double())
    rows = []
    if targets is not None:
        rows.append({"measure": "alignment", "value": _alignment(k, targets @ targets.T, True)})
    rows.append({"measure": "effective_rank", "value": _effective_rank(_eigenvalues((k + k.T) / 2), eps)})
    if previous is not None:
        d = _distance(previous.double().to(k.device), k)
        rows.append({"measure": "distance_to_previous", "value": d})
        if elapsed is not None and elapsed > 0:
            rows.append({"measure": "kernel_velocity", "value": d / elapsed})
    if initial is not None:
        rows.append({"measure": "distance_to_initial", "value": _distance(initial.double().to(k.device), k)})
    return rows


def kernel_diagnostics(kernel: torch.Tensor, y: torch.Tensor | None = None, *,
                       previous: torch.Tensor | None = None, initial: torch.Tensor | None = None,
                       elapsed: float | None = None) -> pd.DataFrame:
    """All diagnostics of one kernel matrix as a tidy table (one row per measure).

    Rows: ``alignment`` (centred kernel–target alignment with the one-hot ``y``, when given),
    ``effective_rank`` (Roy & Vetterli 2007), ``distance_to_previous`` and ``kernel_velocity``
    (distance per ``elapsed`` epochs; when ``previous`` is given), ``distance_to_initial`` (when
    ``initial`` is given). See the functions of the same names for the formulas.

    Parameters
    ----------
    kernel : Tensor of shape ``(n, n)``, symmetric
        The kernel matrix (arrays and nested lists are accepted too); computed in float64.
    y : Tensor of shape ``(n,)`` or ``(n, C)``, optional
        Non-negative class labels or a target matrix, as in :func:`kernel_target_alignment`.
    previous, initial : Tensor of shape ``(n, n)``, optional
        An earlier kernel of the same inputs and the first one (moved to ``kernel``'s device).
    elapsed : float, optional
        Epochs between ``previous`` and ``kernel`` (> 0); without it no ``kernel_velocity`` row.

    Returns
    -------
    pandas.DataFrame
        Columns ``measure`` and ``value``, one row per measure in the order above.

    Raises
    ------
    TypeError
        ``kernel`` is not a tensor, array or nested list of real numbers; ``y`` is not a tensor,
        array or nested list, holds booleans or complex numbers (labels) or complex numbers
        (targets); ``previous`` or ``initial`` is not a tensor, array or nested list of real
        numbers; ``elapsed`` is not a number.
    ValueError
        ``kernel`` is not a square 2-D matrix, is empty, has NaN/inf entries or is not symmetric;
        ``y`` is neither 1-D nor 2-D, or does not have one entry (row) per kernel row; labels are
        non-integer or negative; targets have NaN/inf entries; ``previous`` or ``initial`` is not
        a square matrix of finite numbers of the shape of ``kernel``; ``elapsed`` is not a
        finite number > 0.

    Examples
    --------
    >>> k = torch.eye(4)
    >>> kernel_diagnostics(k, torch.tensor([0, 0, 1, 1]), initial=k)["measure"].tolist()
    ['alignment', 'effective_rank', 'distance_to_initial']
    """
    k, eps = _symmetric(kernel, "kernel")
    targets = None if y is None else check_targets(y, k.shape[0], "y", k.device)
    if previous is not None:
        previous = _square(previous, "previous")
    if initial is not None:
        initial = _square(initial, "initial")
    for name, other in (("previous", previous), ("initial", initial)):
        if other is not None and tuple(other.shape) != tuple(k.shape):
            raise ValueError(f"{name}: expected shape {tuple(k.shape)} like kernel, got {describe(other)}")
    if elapsed is not None:
        if isinstance(elapsed, bool) or not isinstance(elapsed, (int, float)):
            raise TypeError(f"elapsed: expected a number > 0, got {describe(elapsed)}")
        if not (math.isfinite(elapsed) and elapsed > 0):
            raise ValueError(f"elapsed: expected a finite number > 0, got {elapsed!r}")
    return pd.DataFrame(kernel_rows(k, eps, targets, previous, initial, elapsed), columns=["measure", "value"])
