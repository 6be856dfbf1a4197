"""The engine of the bad-input catalogue: arguments, mutations, outcome classification.

A :class:`Recipe` names one public callable of :mod:`sepmeasure`, a small valid call (each
argument built fresh by a factory, under ``torch.manual_seed(0)``, so every call sees the same
model and data) and a check of its result. :func:`mutations` derives the bad and edge inputs of
each argument from its *kind* (features, labels, a count, a choice ...); :func:`run_case` calls
the function once and classifies what happened:

* ``"result"``: it returned, the result passed the recipe's check (finite numbers by default)
  and, where the mutation keeps the values (layout, dtype of integer-valued data, list input) or
  the measure is invariant to it (scale, for scale-invariant measures), it equals the result of
  the unmutated call;
* ``"error"``: it raised a ``ValueError``/``TypeError``/``LookupError``/``OSError`` (or an
  exception class of sepmeasure) from a frame inside the ``sepmeasure`` package, whose message
  names the mutated argument;
* ``"other"``: anything else: a silent NaN/inf, a result differing from the unmutated one, a
  result where the input must be refused, a traceback from inside torch/numpy/cvxpy, an error
  that does not name the argument, or a call that ran past its time limit.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import re
import signal
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

import sepmeasure

PACKAGE_DIR = os.path.dirname(os.path.abspath(sepmeasure.__file__)) + os.sep
CLEAR_ERROR_TYPES = (ValueError, TypeError, LookupError, OSError)
CALL_TIME_LIMIT_S = 5.0
"""A call that runs longer is stopped and counted as a hang (``other``)."""


# ----------------------------------------------------------------------------
# Recipes
# ----------------------------------------------------------------------------

@dataclass
class Arg:
    """One argument of a recipe: a factory of its valid value and the kind that picks its mutations.

    ``invariant`` lists mutation groups under which the measure's result must not change
    (``"scale"``: multiplying the argument by a positive constant); ``expect`` overrides the
    expectation of single mutations (``{"ndim+1": "either"}`` where a higher rank is valid);
    ``skip`` drops mutations that make no sense for this argument; ``aliases`` are other names
    an error message may use for it (a field of it, say).
    """

    make: Callable[[], Any]
    kind: str
    invariant: frozenset[str] = frozenset()
    expect: Mapping[str, str] = field(default_factory=dict)
    skip: frozenset[str] = frozenset()
    aliases: tuple[str, ...] = ()


@dataclass
class Recipe:
    """A small valid call of ``name`` and how to judge its results.

    ``call(**kwargs)`` makes the call (default: ``getattr(sepmeasure, name)(**kwargs)``, with
    the names in ``positional`` passed by position); ``check(result)`` raises ``AssertionError``
    for a wrong result (default: every number in it is finite); ``key(result)`` is what is
    compared with the unmutated call's (default: every number in it).
    """

    name: str
    args: Mapping[str, Arg]
    positional: tuple[str, ...] = ()
    call: Callable[..., Any] | None = None
    check: Callable[[Any], None] | None = None
    key: Callable[[Any], Any] | None = None
    rtol: float = 1e-4
    atol: float = 1e-6
    time_limit: float = CALL_TIME_LIMIT_S
    joint_scale: tuple[str, ...] = ()
    """Arguments scaled together (``"A+B"`` cases): the result must not change (a scale-invariant measure)."""
    variant: str = ""
    """A second recipe of the same name (another way to call it) has a variant: its id is ``name/variant``."""

    @property
    def id(self) -> str:
        return f"{self.name}/{self.variant}" if self.variant else self.name

    def invoke(self, kwargs: Mapping[str, Any]) -> Any:
        if self.call is not None:
            return self.call(**kwargs)
        fn = getattr(sepmeasure, self.name)
        pos = [kwargs[k] for k in self.positional if k in kwargs]
        kw = {k: v for k, v in kwargs.items() if k not in self.positional}
        return fn(*pos, **kw)


# ----------------------------------------------------------------------------
# Mutations
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Mutation:
    """``apply(value)`` turns the valid value into the mutated one.

    ``expect``: ``"error"`` (the input must be refused with a clear error), ``"either"`` (a
    correct result or a clear error), ``"same"`` (a correct result equal to the unmutated one,
    or a clear error). ``group`` is what ``Arg.invariant`` refers to.
    """

    label: str
    apply: Callable[[Any], Any]
    expect: str
    group: str = ""


def _poison(x: torch.Tensor, value: float) -> torch.Tensor:
    x = x.clone().double() if not x.is_floating_point() else x.clone()
    x.view(-1)[0] = value
    return x


def _scale(x: torch.Tensor, s: float) -> torch.Tensor:
    x = x.double() if s > 1e30 or s < 1e-30 else x.to(torch.promote_types(x.dtype, torch.float32))
    return x * s


def _noncontiguous(x: torch.Tensor) -> torch.Tensor:
    y = torch.stack([x, x], dim=-1)[..., 0]
    assert not y.is_contiguous() or x.numel() <= 1
    return y


def _requires_grad(x: torch.Tensor) -> torch.Tensor:
    x = x.clone() if x.is_floating_point() else x.float()
    return x.requires_grad_(True)


def _tensor_common() -> list[Mutation]:
    return [
        Mutation("str", lambda x: "abc", "error", "type"),
        Mutation("int", lambda x: 3, "error", "type"),
        Mutation("none", lambda x: None, "error", "type"),
        Mutation("list", lambda x: x.tolist(), "same", "layout"),
        Mutation("noncontiguous", _noncontiguous, "same", "layout"),
        Mutation("empty", lambda x: x[:0], "error", "empty"),
    ]


def _features() -> list[Mutation]:
    return _tensor_common() + [
        Mutation("ndim+1", lambda x: x.unsqueeze(0), "error", "shape"),
        Mutation("ndim-1", lambda x: x.reshape(-1), "error", "shape"),
        Mutation("scalar", lambda x: x.reshape(-1)[0], "error", "shape"),
        Mutation("nan", lambda x: _poison(x, math.nan), "error", "nonfinite"),
        Mutation("inf", lambda x: _poison(x, math.inf), "error", "nonfinite"),
        Mutation("-inf", lambda x: _poison(x, -math.inf), "error", "nonfinite"),
        Mutation("x1e30", lambda x: _scale(x, 1e30), "either", "scale"),
        Mutation("x1e200", lambda x: _scale(x, 1e200), "either", "scale"),
        Mutation("x1e-200", lambda x: _scale(x, 1e-200), "either", "scale"),
        Mutation("float16", lambda x: x.half(), "same", "dtype"),
        Mutation("float64", lambda x: x.double(), "same", "dtype"),
        Mutation("int64", lambda x: x.round().long(), "same", "dtype"),
        Mutation("bool", lambda x: x != 0, "either", "dtype"),
        Mutation("complex", lambda x: x.to(torch.complex64), "error", "dtype"),
        Mutation("requires_grad", _requires_grad, "same", "layout"),
        Mutation("wrong_width", lambda x: torch.cat([x, x], dim=-1), "error", "shape"),
    ]


def _labels() -> list[Mutation]:
    return _tensor_common() + [
        Mutation("ndim+1", lambda y: y.unsqueeze(1), "error", "shape"),
        Mutation("scalar", lambda y: y[0], "error", "shape"),
        Mutation("one_class", lambda y: torch.zeros_like(y), "error", "classes"),
        Mutation("float_integral", lambda y: y.double(), "same", "dtype"),
        Mutation("float_fractional", lambda y: y.double() + 0.5, "error", "dtype"),
        Mutation("nan", lambda y: _poison(y, math.nan), "error", "nonfinite"),
        Mutation("negative", lambda y: torch.where(y == y.max(), -1, y), "error", "range"),
        Mutation("huge", lambda y: torch.where(y == y.max(), 2 ** 62, y), "error", "range"),
        Mutation("uint64_max", lambda y: torch.where(y == y.max(), torch.tensor(2 ** 64 - 1, dtype=torch.uint64),
                                                     y.to(torch.uint64)), "error", "range"),
        Mutation("beyond_int64", lambda y: torch.where(y == y.max(), 1e30, y.double()), "error", "range"),
        Mutation("bool", lambda y: y != 0, "either", "dtype"),
        Mutation("wrong_length", lambda y: y[:-1], "error", "shape"),
        # a label beyond the classes seen: a valid class index for most functions, not for a classifier
        Mutation("beyond_outputs", lambda y: torch.where(y == y.max(), y.max() + 3, y), "either", "range"),
        Mutation("int32", lambda y: y.int(), "same", "dtype"),
    ]


def _square_kernel() -> list[Mutation]:
    out = [m for m in _features() if m.label not in ("wrong_width",)]
    out += [
        Mutation("not_square", lambda k: k[:, :-1], "error", "shape"),
        Mutation("not_symmetric", lambda k: k + torch.triu(torch.ones_like(k), 1), "either", "shape"),
    ]
    return out


def _count() -> list[Mutation]:
    """A positive integer (a number of steps, points, epochs, a block size)."""
    return [
        Mutation("str", lambda v: "3", "error", "type"),
        Mutation("float", lambda v: 2.5, "error", "type"),
        Mutation("bool", lambda v: True, "error", "type"),
        Mutation("zero", lambda v: 0, "either", "range"),
        Mutation("negative", lambda v: -3, "error", "range"),
        Mutation("huge", lambda v: 10 ** 12, "either", "huge"),
        Mutation("beyond_int64", lambda v: 2 ** 70, "either", "huge"),
    ]


def _positive() -> list[Mutation]:
    """A positive real number (a tolerance, a time limit, a learning rate, a margin)."""
    return [
        Mutation("str", lambda v: "0.1", "error", "type"),
        Mutation("nan", lambda v: math.nan, "error", "nonfinite"),
        Mutation("inf", lambda v: math.inf, "either", "nonfinite"),
        Mutation("negative", lambda v: -1.0, "error", "range"),
        Mutation("zero", lambda v: 0.0, "either", "range"),
        Mutation("huge", lambda v: 1e300, "either", "huge"),
        Mutation("tiny", lambda v: 1e-300, "either", "huge"),
    ]


def _fraction() -> list[Mutation]:
    return [
        Mutation("str", lambda v: "0.5", "error", "type"),
        Mutation("nan", lambda v: math.nan, "error", "nonfinite"),
        Mutation("negative", lambda v: -0.5, "error", "range"),
        Mutation("zero", lambda v: 0.0, "either", "range"),
        Mutation("one", lambda v: 1.0, "either", "range"),
        Mutation("above_one", lambda v: 1.5, "error", "range"),
    ]


def _seed() -> list[Mutation]:
    return [
        Mutation("str", lambda v: "0", "error", "type"),
        Mutation("float", lambda v: 0.5, "error", "type"),
        Mutation("negative", lambda v: -1, "either", "range"),
        Mutation("huge", lambda v: 2 ** 70, "either", "huge"),
    ]


def _choice() -> list[Mutation]:
    return [
        Mutation("unknown", lambda v: "no-such-choice", "error", "value"),
        Mutation("int", lambda v: 3, "error", "type"),
        Mutation("none", lambda v: None, "either", "type"),
    ]


def _name() -> list[Mutation]:
    """A free-form name (of a claim, a study, a column): anything may be accepted, nothing may crash."""
    return [
        Mutation("int", lambda v: 3, "either", "type"),
        Mutation("empty", lambda v: "", "either", "empty"),
        Mutation("none", lambda v: None, "either", "type"),
    ]


def _flag() -> list[Mutation]:
    return [Mutation("str", lambda v: "no", "either", "type")]


def _shape() -> list[Mutation]:
    """An input shape (a tuple of positive ints)."""
    return [
        Mutation("str", lambda v: "abc", "error", "type"),
        Mutation("negative", lambda v: (-3,) + tuple(v)[1:], "error", "range"),
        Mutation("zero", lambda v: (0,) + tuple(v)[1:], "error", "range"),
        Mutation("float", lambda v: (2.5,) + tuple(v)[1:], "error", "type"),
        Mutation("huge", lambda v: tuple(10 ** 9 for _ in v), "error", "huge"),
        Mutation("empty", lambda v: (), "error", "empty"),
    ]


def _model() -> list[Mutation]:
    return [
        Mutation("str", lambda m: "mlp", "error", "type"),
        Mutation("none", lambda m: None, "error", "type"),
        Mutation("float64", lambda m: m.double(), "either", "dtype"),
        Mutation("float16", lambda m: m.half(), "either", "dtype"),
        Mutation("linear", lambda m: torch.nn.Linear(2, 2), "either", "type"),
        # an empty Sequential is the identity: a valid (gate-free, parameter-free) network
        Mutation("empty_sequential", lambda m: torch.nn.Sequential(), "either", "empty"),
    ]


def _sequence() -> list[Mutation]:
    """A sequence of items (kernels, epochs, layer names)."""
    return [
        Mutation("str", lambda v: "abc", "error", "type"),
        Mutation("int", lambda v: 3, "error", "type"),
        Mutation("empty", lambda v: [], "error", "empty"),
        Mutation("none", lambda v: None, "error", "type"),
    ]


def _mapping() -> list[Mutation]:
    return [
        Mutation("str", lambda v: "abc", "error", "type"),
        Mutation("int", lambda v: 3, "error", "type"),
        Mutation("empty", lambda v: {}, "error", "empty"),
    ]


def _object() -> list[Mutation]:
    """An object of a given class (a dataset, a recorder, a graph)."""
    return [
        Mutation("str", lambda v: "abc", "error", "type"),
        Mutation("int", lambda v: 3, "error", "type"),
        Mutation("none", lambda v: None, "error", "type"),
    ]


def _poison_frame(frame: pd.DataFrame, value: float) -> pd.DataFrame:
    frame = frame.copy()
    col = frame.select_dtypes("number").columns[-1]
    frame[col] = frame[col].astype(float)
    frame.loc[frame.index[0], col] = value
    return frame


def _frame() -> list[Mutation]:
    """A table (pandas DataFrame) of results."""
    return [
        Mutation("str", lambda v: "abc", "error", "type"),
        Mutation("dict", lambda v: {"a": [1]}, "error", "type"),
        Mutation("no_columns", lambda v: pd.DataFrame(), "error", "empty"),
        Mutation("no_rows", lambda v: v.iloc[:0], "either", "empty"),
        Mutation("nan", lambda v: _poison_frame(v, math.nan), "either", "nonfinite"),
        Mutation("inf", lambda v: _poison_frame(v, math.inf), "either", "nonfinite"),
        Mutation("huge", lambda v: _poison_frame(v, 1e300), "either", "huge"),
        Mutation("strings", lambda v: v.astype(str), "either", "dtype"),
    ]


def _path() -> list[Mutation]:
    return [
        Mutation("int", lambda v: 3, "error", "type"),
        Mutation("missing", lambda v: "/nonexistent/sepmeasure-catalogue/x.npz", "error", "value"),
        Mutation("empty", lambda v: "", "error", "empty"),
    ]


KINDS: dict[str, Callable[[], list[Mutation]]] = {
    "features": _features, "labels": _labels, "kernel": _square_kernel, "count": _count,
    "positive": _positive, "fraction": _fraction, "seed": _seed, "choice": _choice, "name": _name,
    "flag": _flag, "shape": _shape, "model": _model, "sequence": _sequence, "mapping": _mapping,
    "object": _object, "path": _path, "frame": _frame, "fixed": lambda: [],
}


def mutations(arg: Arg) -> list[Mutation]:
    out = []
    for m in KINDS[arg.kind]():
        if m.label in arg.skip or m.group in arg.skip:
            continue
        expect = arg.expect.get(m.label, arg.expect.get(m.group, m.expect))
        if expect == "either" and m.group in arg.invariant:
            expect = "same"
        out.append(dataclasses.replace(m, expect=expect))
    return out


# ----------------------------------------------------------------------------
# Checking results
# ----------------------------------------------------------------------------

def numbers(value: Any, _depth: int = 0) -> list[float]:
    """Every real number in a result (tensors, arrays, frames, dataclasses, mappings, sequences)."""
    if _depth > 6 or value is None or isinstance(value, (str, bytes, bool, torch.nn.Module)):
        return []
    if isinstance(value, (int, float, np.integer, np.floating)):
        return [float(value)]
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.numel() > 10 ** 6:
            return []
        return value.detach().double().reshape(-1).tolist()
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iuf" or value.size > 10 ** 6:
            return []
        return value.astype(np.float64).reshape(-1).tolist()
    if isinstance(value, pd.DataFrame):
        num = value.select_dtypes("number")
        return num.to_numpy(dtype=np.float64).reshape(-1).tolist()
    if isinstance(value, pd.Series):
        return numbers(value.to_numpy(), _depth + 1) if value.dtype.kind in "iuf" else []
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = []
        for f in dataclasses.fields(value):
            if f.name in ("seconds", "wall_time_s", "iterations"):
                continue  # timings and solver iterations vary between calls
            out += numbers(getattr(value, f.name), _depth + 1)
        return out
    if isinstance(value, Mapping):
        out = []
        for k in sorted(value, key=repr):
            out += numbers(value[k], _depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            out += numbers(v, _depth + 1)
        return out
    return []


def check_finite(result: Any) -> None:
    bad = [v for v in numbers(result) if not math.isfinite(v)]
    if bad:
        raise AssertionError(f"{len(bad)} non-finite number(s) in the result, e.g. {bad[0]}")


def same(a: Any, b: Any, rtol: float, atol: float) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return False
    return bool(np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True))


# ----------------------------------------------------------------------------
# Running one case
# ----------------------------------------------------------------------------

class CallTimeout(BaseException):
    """Raised in the calling thread when a call runs past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float):
    if not hasattr(signal, "setitimer"):
        yield
        return

    def _alarm(signum, frame):
        raise CallTimeout(f"ran past {seconds} s")

    old = signal.signal(signal.SIGALRM, _alarm)
    start = time.monotonic()
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if outer > 0:  # an enclosing timer (pytest-timeout's, say) keeps running with what it had left
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 1e-3))


@dataclass
class Outcome:
    name: str
    arg: str
    mutation: str
    expect: str
    outcome: str  # "result", "error", "other"
    detail: str
    seconds: float

    @property
    def case(self) -> str:
        return f"{self.name}[{self.arg}={self.mutation}]"


def _raised_in_package(exc: BaseException) -> tuple[bool, str]:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return False, "?"
    last = frames[-1]
    return os.path.abspath(last.filename).startswith(PACKAGE_DIR), f"{last.filename}:{last.lineno}"


def names_argument(message: str, names: Sequence[str]) -> bool:
    return any(re.search(rf"(?<![\w]){re.escape(n)}(?![\w])", message) for n in names)


def classify_error(exc: BaseException, names: Sequence[str]) -> tuple[str, str]:
    where_ok, where = _raised_in_package(exc)
    kind = type(exc).__name__
    lines = str(exc).strip().splitlines() or [""]
    text = f"{kind}: {lines[0][:300]}"
    if isinstance(exc, CallTimeout):
        return "other", f"hang: {exc}"
    from_sepmeasure = type(exc).__module__.startswith("sepmeasure")
    if not (isinstance(exc, CLEAR_ERROR_TYPES) or from_sepmeasure):
        return "other", f"{text} (at {where})"
    if not where_ok:
        return "other", f"{text} (raised outside sepmeasure, at {where})"
    if names and not names_argument(str(exc), names):
        return "other", f"{text} (does not name {names[0]!r}, at {where})"
    return "error", text


def _build(recipe: Recipe) -> dict[str, Any]:
    torch.manual_seed(0)
    return {k: a.make() for k, a in recipe.args.items()}


def _call(recipe: Recipe, kwargs: Mapping[str, Any]) -> tuple[Any, BaseException | None, float]:
    t0 = time.perf_counter()
    sink = io.StringIO()
    try:
        with time_limit(recipe.time_limit), warnings.catch_warnings(), \
                contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            result = recipe.invoke(kwargs)
        return result, None, time.perf_counter() - t0
    except (Exception, CallTimeout) as exc:  # noqa: BLE001 - every failure is classified
        return None, exc, time.perf_counter() - t0


def _judge_result(recipe: Recipe, result: Any) -> str | None:
    try:
        (recipe.check or check_finite)(result)
    except AssertionError as exc:
        return f"wrong result: {exc}"
    except Exception as exc:  # noqa: BLE001
        return f"result check failed: {type(exc).__name__}: {exc}"
    return None


def baseline(recipe: Recipe) -> tuple[Any, Outcome]:
    result, exc, dt = _call(recipe, _build(recipe))
    if exc is not None:
        return None, Outcome(recipe.id, "-", "valid", "same", "other",
                             f"the valid call failed: {type(exc).__name__}: {exc}", dt)
    problem = _judge_result(recipe, result)
    if problem:
        return None, Outcome(recipe.id, "-", "valid", "same", "other", f"the valid call: {problem}", dt)
    return result, Outcome(recipe.id, "-", "valid", "same", "result", "", dt)


JOINT_SCALES = (1e30, 1e200, 1e-200)


def joint_mutations(recipe: Recipe) -> list[Mutation]:
    if not recipe.joint_scale:
        return []
    return [Mutation(f"x{s:g}", (lambda v, s=s: _scale(v, s)), "same", "scale") for s in JOINT_SCALES]


def run_case(recipe: Recipe, arg: str, mutation: Mutation, base: Any) -> Outcome:
    kwargs = _build(recipe)
    targets = arg.split("+")
    spec = recipe.args[targets[0]]
    try:
        for t in targets:
            kwargs[t] = mutation.apply(kwargs[t])
    except Exception as exc:  # noqa: BLE001 - a mutation that does not apply to this value
        return Outcome(recipe.id, arg, mutation.label, mutation.expect, "other",
                       f"mutation could not be built: {type(exc).__name__}: {exc}", 0.0)
    result, exc, dt = _call(recipe, kwargs)
    out = lambda o, d: Outcome(recipe.id, arg, mutation.label, mutation.expect, o, d, dt)  # noqa: E731
    if exc is not None:
        return out(*classify_error(exc, tuple(targets) + spec.aliases))
    if mutation.expect == "error":
        return out("other", "accepted: returned a result where a clear error was expected")
    problem = _judge_result(recipe, result)
    if problem:
        return out("other", problem)
    if mutation.expect == "same" and base is not None:
        key = recipe.key or numbers
        try:
            a, b = key(result), key(base)
        except Exception as e:  # noqa: BLE001
            return out("other", f"result key failed: {type(e).__name__}: {e}")
        if not same(a, b, recipe.rtol, recipe.atol):
            return out("other", f"result differs from the unmutated call: {_short(a)} vs {_short(b)}")
    return out("result", "")


def _short(v: Any) -> str:
    text = repr(np.asarray(v, dtype=np.float64).reshape(-1)[:6].tolist())
    return text if len(text) < 160 else text[:157] + "..."


def cases(recipe: Recipe) -> list[tuple[str, Mutation]]:
    """Every ``(argument, mutation)`` of a recipe (``"A+B"`` for a joint mutation)."""
    out = [(arg, m) for arg, spec in recipe.args.items() for m in mutations(spec)]
    out += [("+".join(recipe.joint_scale), m) for m in joint_mutations(recipe)]
    return out


def case_id(recipe: Recipe, arg: str, mutation: Mutation) -> str:
    return f"{recipe.id}[{arg}={mutation.label}]"


def run_recipe(recipe: Recipe, skip: Callable[[str], str | None] = lambda case: None) -> list[Outcome]:
    """The valid call, then every case; ``skip(case_id)`` returning a reason leaves a case unrun
    (it is reported as ``other`` with that reason)."""
    base, first = baseline(recipe)
    outcomes = [first]
    for arg, m in cases(recipe):
        reason = skip(case_id(recipe, arg, m))
        if reason:
            outcomes.append(Outcome(recipe.id, arg, m.label, m.expect, "other", f"not run: {reason}", 0.0))
        else:
            outcomes.append(run_case(recipe, arg, m, base))
    return outcomes
