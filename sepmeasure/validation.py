"""Argument and tensor checks used at the public boundary of every function.

Every message names the argument, says what was expected and what was given.
Inner code trusts its inputs; these checks run once, at the boundary.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "as_tensor",
    "check_choice",
    "check_features",
    "check_labels",
    "check_positive",
    "check_int",
    "check_seed",
    "MAX_SEED",
    "check_probability",
    "check_fraction",
    "compile_name_pattern",
    "describe",
    "did_you_mean",
    "list_names",
    "MAX_CLASSES",
]

MAX_CLASSES = 2 ** 20
"""The largest number of classes a label vector may imply (labels are class indices ``0..MAX_CLASSES-1``).

The number of classes is derived as ``max(label) + 1`` and sizes one-hot matrices, class counts
and output layers, so a stray huge label (``2**62``, say) is refused instead of allocating for it.
"""

_MAX_LISTED_NAMES = 25


def describe(value: Any) -> str:
    """Short description of a value for an error message."""
    if isinstance(value, torch.Tensor):
        return f"Tensor of shape {tuple(value.shape)} and dtype {value.dtype} on {value.device}"
    if isinstance(value, np.ndarray):
        return f"ndarray of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(value).__name__} {text}"


def did_you_mean(value: Any, options: Sequence[str], *, n: int = 3) -> str:
    """The ``"; did you mean 'a' or 'b'?"`` hint for an unknown name, or ``""`` when nothing is close."""
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=n, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def list_names(names: Sequence[str], *, empty: str = "[]") -> str:
    """``['a', 'b', ... and 7 more]`` for an error message (at most 25 names shown); ``empty`` when none."""
    names = list(names)
    shown = [repr(n) for n in names[:_MAX_LISTED_NAMES]]
    if len(names) > _MAX_LISTED_NAMES:
        shown.append(f"... and {len(names) - _MAX_LISTED_NAMES} more")
    return "[" + ", ".join(shown) + "]" if shown else empty


def as_tensor(value: Any, name: str, *, dtype: torch.dtype | None = None,
              device: torch.device | str | None = None) -> torch.Tensor:
    """Convert tensors, arrays and nested sequences to a tensor, naming ``name`` on failure.

    A tensor that requires grad is detached: measures read values, they never differentiate
    through a user's inputs.
    """
    if isinstance(value, torch.Tensor):
        out = value.detach()
    elif isinstance(value, np.ndarray) or isinstance(value, (list, tuple)):
        try:
            out = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name}: expected a tensor or array of numbers, got {describe(value)}") from exc
    else:
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {describe(value)}")
    if dtype is not None or device is not None:
        out = out.to(dtype=dtype or out.dtype, device=device or out.device)
    return out


def check_features(value: Any, name: str, *, ndim: int | Sequence[int] | None = 2,
                   min_rows: int = 1, finite: bool = True, floating: bool = True,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Check a feature tensor: rank, non-emptiness, finiteness; return it as a float tensor.

    Integer inputs are converted to the default float dtype when ``floating``.
    """
    x = as_tensor(value, name, device=device)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name}: expected a {want}-dimensional tensor, got {describe(x)}")
    if x.ndim == 0 or x.shape[0] < min_rows:
        raise ValueError(f"{name}: expected at least {min_rows} row(s), got {describe(x)}")
    if floating and not torch.is_floating_point(x):
        if x.is_complex():
            raise TypeError(f"{name}: expected real numbers, got {describe(x)}")
        x = x.to(torch.get_default_dtype())
    if finite and torch.is_floating_point(x) and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: expected finite values, got {n_bad} NaN/inf entries in {describe(x)}")
    return x


def check_labels(value: Any, name: str, *, n: int | None = None, n_name: str = "the features",
                 min_classes: int = 1, device: torch.device | str | None = None,
                 n_outputs: int | None = None, outputs_name: str = "the model") -> torch.Tensor:
    """Check a 1-D vector of class labels (optionally of length ``n``); return it as int64.

    Labels are class indices: integer values (float labels only when exactly integral), ``>= 0``,
    below :data:`MAX_CLASSES` (so within int64 and ``max + 1`` is a sane number of classes) and,
    when ``n_outputs`` is given, below it (the number of logits a classifier produces). Every
    check happens before any cast, so no label wraps around or merges with another.

    Examples
    --------
    >>> check_labels([0.0, 2.0, 1.0], "y")
    tensor([0, 2, 1])
    >>> check_labels([0, -1], "y")
    Traceback (most recent call last):
    ...
    ValueError: y: expected class labels >= 0 (class indices), got a minimum of -1
    """
    y = as_tensor(value, name, device=device)
    if y.ndim != 1:
        raise ValueError(f"{name}: expected a 1-dimensional label vector, got {describe(y)}")
    if torch.is_floating_point(y):
        if not bool(torch.isfinite(y).all()) or not bool((y == y.round()).all()):
            raise ValueError(f"{name}: expected integer class labels, got non-integer values in {describe(y)}")
    elif y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"{name}: expected integer class labels, got {describe(y)}")
    if y.numel():
        # float64 holds every integer below 2**53 exactly, far above MAX_CLASSES, and has the
        # min/max that unsigned tensors lack, so the range is read before anything is cast
        v = y if y.dtype == torch.int64 else y.to(torch.float64)
        lo, hi = v.min().item(), v.max().item()
        if lo < 0:
            raise ValueError(f"{name}: expected class labels >= 0 (class indices), got a minimum of {lo:g}")
        if hi > torch.iinfo(torch.int64).max:
            raise ValueError(f"{name}: expected class labels within int64 (<= 2**63 - 1), got a maximum of {hi:g} "
                             f"in {describe(y)}")
        if hi >= MAX_CLASSES:
            raise ValueError(f"{name}: expected class labels below {MAX_CLASSES} (class indices; the number of "
                             f"classes is the largest label + 1), got a maximum of {hi:g}")
        if n_outputs is not None and hi >= n_outputs:
            raise ValueError(f"{name}: expected class labels below {n_outputs}, the number of outputs of "
                             f"{outputs_name}, got a label {int(hi)}")
    y = y.long()
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{name}: expected {n} labels (one per row of {n_name}), got {y.shape[0]}")
    n_classes = int(torch.unique(y).numel())
    if n_classes < min_classes:
        raise ValueError(f"{name}: expected at least {min_classes} distinct classes, got {n_classes}")
    return y


def check_choice(value: Any, name: str, choices: Iterable[Any]) -> Any:
    """Check that ``value`` is one of ``choices``."""
    options = list(choices)
    if value not in options:
        shown = ", ".join(repr(c) for c in options)
        raise ValueError(f"{name}: expected one of {shown}, got {value!r}")
    return value


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None,
              why: str = "") -> int:
    """Check an integer argument (bools are refused); ``why`` says where ``maximum`` comes from."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {describe(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        reason = f" ({why})" if why else ""
        raise ValueError(f"{name}: expected an int <= {maximum}{reason}, got {value}")
    return int(value)


MAX_SEED = 2 ** 63 - 1
"""The largest seed: torch and NumPy take seeds within int64."""


def check_seed(value: Any, name: str = "seed") -> int:
    """Check a random seed: an int in ``[0, 2**63 - 1]``."""
    return check_int(value, name, minimum=0, maximum=MAX_SEED, why="seeds are int64")


def check_positive(value: Any, name: str, *, strict: bool = True) -> float:
    """Check a positive (or non-negative) finite real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name}: expected a real number, got {describe(value)}")
    v = float(value)
    ok = (v > 0) if strict else (v >= 0)
    if not ok or not np.isfinite(v):
        rel = "> 0" if strict else ">= 0"
        raise ValueError(f"{name}: expected a finite number {rel}, got {value!r}")
    return v


def check_probability(value: Any, name: str) -> float:
    """Check a number in [0, 1]."""
    v = check_positive(value, name, strict=False)
    if v > 1:
        raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
    return v


def check_fraction(value: Any, name: str) -> float:
    """Check a number strictly between 0 and 1 (a share of the data, say)."""
    v = check_positive(value, name)
    if not v < 1:
        raise ValueError(f"{name}: expected a number in (0, 1), got {value!r}")
    return v


def compile_name_pattern(spec: str, name: str) -> re.Pattern:
    """Compile the regular expression of a ``"re:<pattern>"`` name selector (matched with fullmatch)."""
    try:
        return re.compile(spec[3:])
    except re.error as exc:
        raise ValueError(f"{name}: expected a valid regular expression after 're:', got {spec!r} ({exc})") from exc
