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
