r"""Held-out separability: a direction fitted on one sample, its AUC on another.

In-sample separability of a few dozen points in tens of dimensions saturates (any two such
sets are nearly separable), so the measures can also be read on held-out points: the direction
``w`` a measure returns for ``(A, B)`` scores new points ``A_test`` and ``B_test`` and

.. math:: \widehat{\mathrm{AUC}} = \frac{1}{n'm'}\#\{(i,j): w^\top a'_i > w^\top b'_j\}

is the fraction of test pairs it orders correctly (ties count for neither side, as in
:func:`~sepmeasure.separability.mdlsm.md_lsm`). Its interval is DeLong's (DeLong, DeLong and
Clarke-Pearson 1988): with the placements :math:`V_i = \frac{1}{m'}\#\{j: s(a'_i) > s(b'_j)\}`
and :math:`W_j = \frac{1}{n'}\#\{i: s(a'_i) > s(b'_j)\}`,
:math:`\widehat{\mathrm{Var}} = s_V^2/n' + s_W^2/m'` (sample variances) and the interval is
:math:`\widehat{\mathrm{AUC}} \pm z\sqrt{\widehat{\mathrm{Var}}}` clipped to ``[0, 1]`` — a
normal approximation that is degenerate (zero width) when the test AUC is 0 or 1, and
``[0, 1]`` when a test set has fewer than 2 points. It is a statistical interval for the AUC of
the fitted direction on new points, not a certificate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..validation import check_features, check_fraction, check_int, check_labels, describe
from ._results import CertifiedResult
from .pointsets import check_direction, check_point_sets

__all__ = ["HeldOutAUC", "held_out_auc", "delong_interval"]
# internal API of the separability package: check_test_sets, held_out_auc_core, stratified_split
# (the studies' per-layer rows of these measures: sepmeasure.separability.layer_rows)

_Z95 = 1.959963984540054


@dataclass(frozen=True, eq=False, repr=False)
class HeldOutAUC(CertifiedResult):
    """Test AUC of a fitted direction, with DeLong's 95% interval.

    Attributes
    ----------
    value : float
        Fraction of the test pairs ``(a', b')`` with ``a' @ normal > b' @ normal``; NaN when the fit
        returned no direction.
    lower, upper : float
        DeLong's 95% interval (statistical, see the module notes).
    interval : str
        ``"DeLong 95%"``.
    normal : Tensor of shape (d,) or None
        The direction (float64), fitted on the training sets.
    n_a, n_b : int
        Sizes of the test sets.
    train_value : float
        The fit's own (in-sample) value, NaN when the fit has none.
    fit : object
        The in-sample result the direction comes from (e.g. an :class:`~sepmeasure.separability.mdlsm.MDLSM`),
        or None.
    """

    value: float
    lower: float
    upper: float
    interval: str
    normal: torch.Tensor | None
    n_a: int
    n_b: int
    train_value: float
    fit: Any

    _tensor_fields = ("normal", "fit")
    _repr_fields = ("value", "lower", "upper", "train_value", "n_a", "n_b")


def delong_interval(sa: Any, sb: Any, level: float = 0.95) -> tuple[float, float, float]:
    """Strict AUC of the scores ``sa`` (positives) against ``sb`` and DeLong's interval.

    Parameters
    ----------
    sa, sb : Tensor or array of shape (n,) and (m,)
        Scores of the positive and the negative test points.
    level : float in (0, 1), default 0.95
        Two-sided level of the interval.

    Returns
    -------
    (auc, lower, upper) : tuple of float
        ``auc`` counts ``sa_i > sb_j`` (ties count for neither side); the interval is
        ``auc ± z sqrt(var)`` clipped to [0, 1], ``[0, 1]`` when ``n < 2`` or ``m < 2``.

    Raises
    ------
    TypeError
        ``sa`` or ``sb`` is not a tensor or array of real numbers; ``level`` is not a number.
    ValueError
        ``sa`` or ``sb`` is not 1-D, is empty or has NaN/inf entries; ``level`` is not in (0, 1).

    Examples
    --------
    >>> auc, lo, hi = delong_interval([0.9, 0.8, 0.4], [0.5, 0.1])
    >>> round(auc, 4), round(lo, 4), round(hi, 4)
    (0.8333, 0.3714, 1.0)
    """
    a = check_features(sa, "sa", ndim=1)
    b = check_features(sb, "sb", ndim=1, device=a.device)
    level = check_fraction(level, "level")
    return _delong(a.to(torch.float64), b.to(torch.float64), level)


def _delong(sa: torch.Tensor, sb: torch.Tensor, level: float = 0.95) -> tuple[float, float, float]:
    n, m = sa.numel(), sb.numel()
    sb_sorted = torch.sort(sb).values.contiguous()
    sa_sorted = torch.sort(sa).values.contiguous()
    v = torch.searchsorted(sb_sorted, sa.contiguous(), right=False).to(torch.float64) / m       # b below a_i
    w = (n - torch.searchsorted(sa_sorted, sb.contiguous(), right=True)).to(torch.float64) / n  # a above b_j
    auc = float(v.mean())
    if n < 2 or m < 2:
        return auc, 0.0, 1.0
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2)) if level != 0.95 else _Z95
    var = float(v.var(unbiased=True)) / n + float(w.var(unbiased=True)) / m
    half = z * math.sqrt(max(var, 0.0))
    return auc, max(0.0, auc - half), min(1.0, auc + half)


def held_out_auc(direction: Any, A_test: Any, B_test: Any) -> HeldOutAUC:
    """Test AUC of a direction on held-out sets, with DeLong's 95% interval (see the module notes).

    Use it with the direction of any fitted result: ``md_lsm(A, B).normal``,
    ``hull_distance(A, B).normal``, ``linear_probe(A, B).normal``.

    Parameters
    ----------
    direction : Tensor or array of shape (d,)
        The direction (positives score higher), on the device of the test sets.
    A_test, B_test : Tensor or array of shape (n, d) and (m, d)
        Held-out positive and negative points.

    Returns
    -------
    HeldOutAUC
        ``value`` (strict test AUC), DeLong ``lower``/``upper``, ``normal`` (the unit direction),
        ``n_a``, ``n_b``; ``train_value`` NaN and ``fit`` None.

    Raises
    ------
    TypeError
        An argument is not a tensor, array or nested list of real numbers.
    ValueError
        ``A_test`` or ``B_test`` is not 2-D, has no rows or has NaN/inf entries, or they differ in
        columns or device; ``direction`` is not 1-D with one entry per column, has NaN/inf entries or
        lies on another device.

    Examples
    --------
    >>> import torch
    >>> r = held_out_auc(torch.tensor([1.0, 0.0]), torch.tensor([[2.0, 0.0], [0.5, 1.0]]),
    ...                  torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
    >>> r.value
    0.75
    """
    A_test, B_test = check_point_sets(A_test, B_test, names=("A_test", "B_test"))
    w = check_direction(direction, A_test.shape[1], A_test.device, name="direction")
    return held_out_auc_core(w, A_test, B_test)


def held_out_auc_core(normal: torch.Tensor | None, A_test: torch.Tensor, B_test: torch.Tensor,
                      fit: Any = None, train_value: float = math.nan) -> HeldOutAUC:
    """:func:`held_out_auc` of checked inputs (``normal`` None gives NaN)."""
    n, m = A_test.shape[0], B_test.shape[0]
    if normal is None or not float(normal.norm()) > 0:
        nan = math.nan
        return HeldOutAUC(value=nan, lower=nan, upper=nan, interval="DeLong 95%", normal=None, n_a=n, n_b=m,
                          train_value=train_value, fit=fit)
    w = normal.to(device=A_test.device, dtype=torch.float64)
    w = w / w.norm()
    auc, lo, hi = _delong(A_test.to(torch.float64) @ w, B_test.to(torch.float64) @ w)
    return HeldOutAUC(value=auc, lower=lo, upper=hi, interval="DeLong 95%", normal=w, n_a=n, n_b=m,
                      train_value=train_value, fit=fit)


def check_test_sets(test: Any, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``test = (A_test, B_test)`` against the training set ``A`` (columns, device); cast to its dtype."""
    if not isinstance(test, (tuple, list)) or len(test) != 2:
        raise TypeError(f"test: expected a pair (A_test, B_test) of point sets, got {describe(test)}")
    At, Bt = check_point_sets(test[0], test[1], names=("test[0]", "test[1]"))
    _, At = check_point_sets(A, At, names=("A", "test[0]"))  # the columns and device of A, its dtype promoted
    return At, Bt.to(At.dtype)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train, test) row indices holding out about ``fraction`` of every class (seeded).

    scikit-learn's ``train_test_split(..., stratify=labels)``; every class needs at least 2 rows.
    """
    from sklearn.model_selection import train_test_split

    y = check_labels(labels, "labels").cpu().numpy()
    fraction = check_fraction(fraction, "held_out")
    seed = check_int(seed, "seed", minimum=0, maximum=2**32 - 1,
                     why="the split is scikit-learn's train_test_split, whose random_state is 32-bit")
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < 2:
        raise ValueError(f"held_out: expected at least 2 rows of every class to hold some out, got "
                         f"{int(counts.min())} of class {int(classes[counts.argmin()])}")
    n_test = max(len(classes), int(round(fraction * y.shape[0])))
    n_test = min(n_test, y.shape[0] - len(classes))
    train, test = train_test_split(np.arange(y.shape[0]), test_size=n_test, stratify=y, random_state=seed)
    return torch.as_tensor(np.sort(train)), torch.as_tensor(np.sort(test))
