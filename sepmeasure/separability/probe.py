"""Logistic-regression probes in torch: the baseline separability score most papers report.

The probe is fitted by full-batch L-BFGS on standardised features, so it runs on whatever
device the features are on (CPU or CUDA) and gives the same answer up to floating point.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from ..validation import check_features, check_fraction, check_int, check_labels, check_positive, check_seed, describe
from .heldout import check_test_sets
from .options import check_option_names, options_from_signature
from .pointsets import check_point_sets

__all__ = ["ProbeResult", "fit_logistic", "linear_probe", "wilson_interval"]


@dataclass(frozen=True, eq=False)
class ProbeResult:
    """Held-out accuracy of a logistic-regression probe separating ``A`` (label 1) from ``B`` (label 0).

    Attributes
    ----------
    accuracy : float
        Fraction of held-out points classified correctly.
    lower, upper : float
        95% Wilson score interval for the probe's accuracy on new samples (a statistical
        interval, not a certificate).
    train_accuracy : float
    normal : Tensor of shape (d,)
        Weight vector of the probe in the input coordinates (unit norm, float64).
    bias : float
        ``A`` is predicted where ``x @ normal + bias > 0``.
    n_train, n_test : int
    seed : int or None
        Seed of the split; None when the held-out sets were given (``test=``).
    """

    accuracy: float
    lower: float
    upper: float
    train_accuracy: float
    normal: torch.Tensor
    bias: float
    n_train: int
    n_test: int
    seed: int | None


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default), computed by scipy.

    ``scipy.stats.binomtest(successes, n).proportion_ci(method="wilson")`` at the confidence
    level ``2 * Phi(z) - 1``; the bounds are exactly 0 at ``successes == 0`` and 1 at
    ``successes == n``.

    Parameters
    ----------
    successes : int
        Number of successes, between 0 and ``n``.
    n : int
        Number of trials.
    z : float, default 1.959963984540054
        Standard-normal quantile of the two-sided level (the default gives 95%).

    Returns
    -------
    (lower, upper) : tuple of float
        The interval, clipped to [0, 1]; ``(0.0, 1.0)`` when ``n == 0``.

    Raises
    ------
    TypeError
        ``successes`` or ``n`` is not an int.
    ValueError
        ``n < 0``, or ``successes`` is not between 0 and ``n``; ``z`` is not a number > 0.

    Examples
    --------
    >>> lo, hi = wilson_interval(8, 10)
    >>> round(lo, 4), round(hi, 4)
    (0.4902, 0.9433)
    """
    n = check_int(n, "n", minimum=0)
    successes = check_int(successes, "successes", minimum=0)
    if successes > n:
        raise ValueError(f"successes: expected at most n = {n}, got {successes}")
    z = check_positive(z, "z")
    return _wilson(successes, n, z)


def _wilson(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """scipy's Wilson interval (``binomtest(...).proportion_ci(method="wilson")``) at the level of ``z``."""
    if n == 0:
        return 0.0, 1.0
    from scipy.stats import binomtest, norm

    ci = binomtest(successes, n).proportion_ci(confidence_level=float(2 * norm.cdf(z) - 1), method="wilson")
    lo = 0.0 if successes == 0 else max(0.0, float(ci.low))
    hi = 1.0 if successes == n else min(1.0, float(ci.high))
    return lo, hi


def fit_logistic(X: torch.Tensor, y: torch.Tensor, *, l2: float = 1e-3, max_iter: int = 100,
                 weights: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    r"""Fit binary logistic regression by L-BFGS; return ``(w, b)`` in the input coordinates.

    Minimises :math:`\frac{1}{N}\sum_i \omega_i\,\ell(y_i, x_i^\top w + b) + \frac{\lambda}{2}\|w\|^2`
    on standardised features (``l2`` is :math:`\lambda` there), then maps the weights back.

    Parameters
    ----------
    X : Tensor or array of shape (N, d)
        Features; fitted in float64 on their device.
    y : Tensor or array of shape (N,)
        Labels in {0, 1} (moved to ``X``'s device).
    l2 : float, default 1e-3
        Ridge penalty on the standardised weights (>= 0).
    max_iter : int, default 100
        L-BFGS iterations (>= 1).
    weights : Tensor or array of shape (N,), optional
        Non-negative per-sample weights (default: balanced classes).

    Returns
    -------
    w : Tensor of shape (d,)
        Weights in the input coordinates (float64, on ``X``'s device).
    b : float
        Bias: class 1 is predicted where ``X @ w + b > 0``.

    Raises
    ------
    TypeError
        ``X``, ``y`` or ``weights`` is not a tensor, array or nested list of numbers (``X`` or
        ``weights`` complex, ``y`` boolean or complex); ``l2`` is not a real number; ``max_iter`` is
        not an int (bools are refused).
    ValueError
        ``X`` is not 2-D, has no rows or has NaN/inf entries; ``y`` is not 1-D, holds non-integer
        values, is not one label per row of ``X`` or holds labels other than 0 and 1; ``l2`` is not a
        finite number >= 0; ``max_iter`` < 1; ``weights`` is not 1-D, has NaN/inf entries, negative
        entries or not one entry per row of ``X``.

    Examples
    --------
    >>> X = torch.tensor([[0.0], [1.0], [3.0], [4.0]])
    >>> w, b = fit_logistic(X, torch.tensor([0, 0, 1, 1]))
    >>> bool(w[0] > 0), ((X.double() @ w + b) > 0).long().tolist()
    (True, [0, 0, 1, 1])
    """
    X = check_features(X, "X").to(torch.float64)
    y = check_labels(y, "y", n=X.shape[0], n_name="X", device=X.device)
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError(f"y: expected binary labels in {{0, 1}}, got values {torch.unique(y).tolist()}")
    l2 = check_positive(l2, "l2", strict=False)
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    if weights is not None:
        weights = check_features(weights, "weights", ndim=1, device=X.device)
        if weights.shape[0] != X.shape[0] or bool((weights < 0).any()):
            raise ValueError(f"weights: expected {X.shape[0]} non-negative per-sample weights (one per row of X), "
                             f"got {describe(weights)}")
    return logistic_core(X, y, l2=l2, max_iter=max_iter, weights=weights)


def logistic_core(X: torch.Tensor, y: torch.Tensor, *, l2: float, max_iter: int,
                  weights: torch.Tensor | None = None, dtype: torch.dtype = torch.float64
                  ) -> tuple[torch.Tensor, float]:
    """:func:`fit_logistic` of checked inputs (``X`` float64, ``y`` 0/1 on ``X``'s device; no checks here),
    computed in ``dtype``."""
    X = X.to(dtype)
    yf = y.to(dtype)
    mean = X.mean(0)
    std = X.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    Xs = (X - mean) / std
    if weights is None:
        n1 = float(yf.sum())
        n0 = yf.numel() - n1
        weights = torch.where(yf > 0, 0.5 * yf.numel() / max(n1, 1.0), 0.5 * yf.numel() / max(n0, 1.0))
    weights = weights.to(X)
    w = torch.zeros(X.shape[1], dtype=X.dtype, device=X.device, requires_grad=True)
    b = torch.zeros((), dtype=X.dtype, device=X.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-14)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = Xs @ w + b
        loss = (weights * torch.nn.functional.binary_cross_entropy_with_logits(logits, yf, reduction="none")).mean()
        loss = loss + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w_in = (w.detach() / std)
    b_in = float(b.detach() - (w.detach() * mean / std).sum())
    if not (bool(torch.isfinite(w_in).all()) and math.isfinite(b_in)):
        raise ValueError(f"l2: the logistic fit overflowed with l2={l2!r} (its weights are not finite); expected "
                         f"a smaller penalty (the features are standardised, so l2 is on a unit scale)")
    return w_in, b_in


def linear_probe(A: Any, B: Any, *, test_fraction: float = 0.3, seed: int = 0, l2: float = 1e-3,
                 max_iter: int = 100, test: Any = None) -> ProbeResult:
    """Held-out accuracy of a logistic-regression probe telling ``A`` from ``B``.

    Each set is split at random (seeded, stratified) into a training part and a held-out part
    of about ``test_fraction`` of its points (at least one point of each set is held out and at
    least one kept for training). The probe is fitted on the training part with balanced class
    weights; its accuracy on the held-out part is reported with a 95% Wilson interval.

    Parameters
    ----------
    A, B : Tensor of shape (n, d) and (m, d), each with at least 2 points.
        The two point sets (rows are points), on the same device; ``A`` is the positive class.
    test_fraction : float in (0, 1), default 0.3
        Share of each set held out for testing.
    seed : int, default 0
        Seeds the split (>= 0).
    l2, max_iter : float and int, default 1e-3 and 100
        See :func:`fit_logistic`.
    test : (A_test, B_test), optional
        Held-out sets given by the caller (same columns and device): the probe is fitted on all of
        ``A`` and ``B`` (no split; ``test_fraction`` and ``seed`` are not used) and its accuracy is
        measured on ``A_test`` (label 1) and ``B_test``.

    Returns
    -------
    ProbeResult
        Held-out ``accuracy`` with its 95% Wilson interval ``lower``/``upper``,
        ``train_accuracy``, the unit ``normal`` of shape ``(d,)`` and ``bias``, ``n_train``,
        ``n_test``.

    Raises
    ------
    TypeError
        ``A`` or ``B`` is not a tensor, array or nested list of real numbers; ``test_fraction`` or
        ``l2`` is not a real number; ``seed`` or ``max_iter`` is not an int (bools are refused).
    ValueError
        ``A`` or ``B`` is not 2-D, has no rows or has NaN/inf entries; ``B`` has another number of
        columns than ``A`` or lies on another device; ``test_fraction`` is not in (0, 1); ``seed`` is
        negative; ``A`` or ``B`` has fewer than 2 points; ``l2`` is not a finite number >= 0 or
        ``max_iter`` < 1 (raised by :func:`fit_logistic`).

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> A = torch.randn(50, 3, generator=g) + 4
    >>> B = torch.randn(50, 3, generator=g)
    >>> linear_probe(A, B).accuracy
    1.0
    """
    A, B = check_point_sets(A, B)
    options = check_probe_options(test_fraction=test_fraction, seed=seed, l2=l2, max_iter=max_iter)
    if test is not None:
        return linear_probe_core(A, B, options, test=check_test_sets(test, A))
    for name, S in (("A", A), ("B", B)):
        if S.shape[0] < 2:
            raise ValueError(f"{name}: expected at least 2 points for a held-out probe, got {S.shape[0]}")
    return linear_probe_core(A, B, options)


ProbeOptions = options_from_signature("ProbeOptions", linear_probe, exclude=("A", "B", "test"))


def check_probe_options(**given: Any) -> Any:
    """Check the options of :func:`linear_probe` (any subset, by name); return a ``ProbeOptions``."""
    check_option_names(given, ProbeOptions, "linear_probe")
    o = ProbeOptions(**given)
    return dataclasses.replace(o, test_fraction=check_fraction(o.test_fraction, "test_fraction"),
                               seed=check_seed(o.seed),
                               l2=check_positive(o.l2, "l2", strict=False),
                               max_iter=check_int(o.max_iter, "max_iter", minimum=1))


def linear_probe_core(A: torch.Tensor, B: torch.Tensor, options: Any,
                      test: tuple[torch.Tensor, torch.Tensor] | None = None) -> ProbeResult:
    """:func:`linear_probe` of checked sets (at least 2 points each without ``test``), checked ``ProbeOptions``."""
    parts = []
    if test is not None:
        parts = [(A, test[0], 1), (B, test[1], 0)]
    else:
        g = torch.Generator().manual_seed(options.seed)
        for S, label in ((A, 1), (B, 0)):
            n = S.shape[0]
            k = min(max(1, round(options.test_fraction * n)), n - 1)
            order = torch.randperm(n, generator=g).to(S.device)
            parts.append((S[order[k:]], S[order[:k]], label))
    Xtr = torch.cat([p[0] for p in parts])
    ytr = torch.cat([torch.full((p[0].shape[0],), p[2], device=A.device) for p in parts])
    Xte = torch.cat([p[1] for p in parts])
    yte = torch.cat([torch.full((p[1].shape[0],), p[2], device=A.device) for p in parts])
    w, b = logistic_core(Xtr, ytr, l2=options.l2, max_iter=options.max_iter)
    pred_te = ((Xte.to(torch.float64) @ w + b) > 0).long()
    pred_tr = ((Xtr.to(torch.float64) @ w + b) > 0).long()
    correct = int((pred_te == yte).sum())
    lo, hi = _wilson(correct, yte.numel())
    norm = float(w.norm())
    normal = w / norm if norm > 0 else w
    return ProbeResult(accuracy=correct / yte.numel(), lower=lo, upper=hi,
                       train_accuracy=float((pred_tr == ytr).double().mean()), normal=normal,
                       bias=b / norm if norm > 0 else b, n_train=int(ytr.numel()), n_test=int(yte.numel()),
                       seed=options.seed if test is None else None)
