"""The one timer of the benchmark scripts: best wall time of repeated calls."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def best_of(fn: Callable[[], Any], repeats: int = 2, *, warmup: bool = False) -> tuple[float, Any]:
    """``(best seconds over repeats calls of fn, the last call's result)``; with ``warmup`` one
    untimed call first (compilation, allocator and cache warm-up)."""
    if warmup:
        fn()
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def best_of_interleaved(fns: dict[str, Callable[[], Any]], repeats: int = 2, *, warmup: bool = True
                        ) -> dict[str, tuple[float, Any]]:
    """``{name: (best seconds, last result)}`` for several callables timed in turn: each round calls
    every one of them once, so that all see the same state of the machine (a method timed first,
    while the allocator and caches still warm up, or during a slow spell, would otherwise look
    slower than the same code timed later). With ``warmup`` each is called once, untimed, first.
    A callable that raises is dropped from later rounds; its entry is ``(nan, the exception)``."""
    if repeats < 1:
        raise ValueError(f"repeats: expected at least 1 timed call, got {repeats}")
    best: dict[str, float] = {name: float("inf") for name in fns}
    out: dict[str, Any] = {}
    failed: dict[str, BaseException] = {}

    def call(name: str) -> float:
        start = time.perf_counter()
        try:
            out[name] = fns[name]()
        except Exception as exc:  # noqa: BLE001 - reported to the caller as the method's result
            failed[name] = exc
            return float("nan")
        return time.perf_counter() - start

    if warmup:
        for name in fns:
            call(name)
    for _ in range(repeats):
        for name in fns:
            if name not in failed:
                best[name] = min(best[name], call(name))
    return {name: (float("nan"), failed[name]) if name in failed else (best[name], out[name]) for name in fns}
