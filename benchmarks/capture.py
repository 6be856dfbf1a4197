"""Overhead of ``record()`` over plain forward passes.

For each model, times ``record(model, X, layers=<every activation module>,
pool="mean", batch_size=B)`` against a loop of forward passes over the same
data with the same batch size, in eval mode under ``torch.no_grad()``.
Reports the median of several interleaved repetitions after a warm-up, and
the ratio record / forward against the target.

A third column, *floor*, is the same forward loop with hand-written hooks
that only pool and copy each output into a preallocated buffer: the work any
recorder has to do to return the activations, with buffers from plain
``torch.empty``. ``floor / forward`` is the cost of materialising the result,
which for wide MLPs is dominated by the kernel handing out and zeroing fresh
pages on first write. ``record`` allocates its large buffers through
``sepmeasure._memory.empty_host``, which advises transparent huge pages (one
fault per 2 MiB instead of per 4 KiB), so ``record / floor`` can be below one.

The column *warm* is the floor loop writing into buffers kept from one
repetition to the next: the same copies without any new pages. The gap
between *warm* and *record* is what obtaining fresh memory from the kernel
costs on the machine at hand.

Every case runs with one torch thread and with torch's default thread count
(the CLI and the test suite use one thread by default).

glibc returns freed heap memory to the kernel once the free block on top of
the heap exceeds a threshold that adapts to past allocations, which makes
plain forward loops over large intermediate tensors alternate between fast
and page-faulting runs depending on unrelated allocations. The script pins
the malloc thresholds (where glibc is present) so that every timed loop sees
the same allocator behaviour.

Run with ``python benchmarks/capture.py``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sepmeasure.capture import record  # noqa: E402

TARGET = 1.10
REPEATS = 11
BATCH_SIZE = 256


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(40, 512), nn.ReLU(),
        nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, 10),
    )


def cnn1d() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(1, 64, 5, padding=2), nn.ReLU(),
        nn.Conv1d(64, 64, 5, padding=2), nn.ReLU(),
        nn.Conv1d(64, 64, 5, padding=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(64 * 40, 10),
    )


def pin_malloc_thresholds() -> bool:
    """Fix glibc's trim and mmap thresholds (they otherwise adapt at run time)."""
    name = ctypes.util.find_library("c")
    if not sys.platform.startswith("linux") or name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_trim_threshold, 1 << 30)) and bool(
            libc.mallopt(m_mmap_threshold, 32 << 20))
    except (OSError, AttributeError):
        return False


_WARM_BUFFERS: dict[tuple[int, nn.Module], torch.Tensor] = {}


def warm_floor_loop(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """The floor loop writing into buffers kept from one repetition to the next (no new pages)."""
    floor_loop(model, x, batch_size, buffers=_WARM_BUFFERS)


def floor_loop(model: nn.Module, x: torch.Tensor, batch_size: int,
               buffers: dict | None = None) -> None:
    acts = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    start = [0]
    buffers = {} if buffers is None else buffers

    def hook(module: nn.Module, args, out: torch.Tensor) -> None:
        pooled = out.flatten(2).mean(-1) if out.ndim > 2 else out
        key = (x.shape[0], module)
        buf = buffers.get(key)
        if buf is None:
            buf = buffers[key] = torch.empty((x.shape[0], *pooled.shape[1:]), dtype=pooled.dtype)
        buf[start[0]:start[0] + pooled.shape[0]].copy_(pooled)

    handles = [m.register_forward_hook(hook) for m in acts]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                start[0] = i
                model(x[i:i + batch_size])
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()


def forward_loop(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            model(x[i:i + batch_size])
    model.train(was_training)


def run_record(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    record(model, x, layers=nn.ReLU, pool="mean", batch_size=batch_size)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def compare(model: nn.Module, x: torch.Tensor, batch_size: int) -> dict[str, list[float]]:
    """Seconds per repetition of the forward loop, the floor and record, interleaved."""
    loops = {"forward": forward_loop, "floor": floor_loop, "warm": warm_floor_loop, "record": run_record}
    for fn in loops.values():
        fn(model, x, batch_size)
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(REPEATS):
        for name, fn in loops.items():
            times[name].append(timed(fn, model, x, batch_size))
    return times


def main() -> int:
    torch.manual_seed(0)
    pinned = pin_malloc_thresholds()
    cases = [
        ("MLP 40-512-512-512-10, N=20000", mlp(), torch.randn(20000, 40)),
        ("CNN1d 3x Conv1d(64), [8000, 1, 40]", cnn1d(), torch.randn(8000, 1, 40)),
    ]
    default_threads = torch.get_num_threads()
    print(f"record(pool='mean', layers=nn.ReLU) vs forward loop; batch_size={BATCH_SIZE}, "
          f"median of {REPEATS}, torch {torch.__version__}, "
          f"malloc thresholds {'pinned' if pinned else 'default'}")
    header = (f"{'model':<36} {'thr':>3} {'forward s':>9} {'floor s':>8} {'record s':>9} "
              f"{'rec/fwd':>8} {'target':>7} {'met':>4} {'floor/fwd':>9} {'warm/fwd':>8} "
              f"{'rec/floor':>9} {'rec/fwd min':>11}")
    print(header)
    print("-" * len(header))
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        for name, model, x in cases:
            times = compare(model, x, BATCH_SIZE)
            fwd, flo, warm, rec = (statistics.median(times[k]) for k in ("forward", "floor", "warm", "record"))
            ratio = rec / fwd
            print(f"{name:<36} {threads:>3} {fwd:>9.4f} {flo:>8.4f} {rec:>9.4f} {ratio:>8.3f} "
                  f"{TARGET:>7.2f} {'yes' if ratio <= TARGET else 'no':>4} {flo / fwd:>9.3f} "
                  f"{warm / fwd:>8.3f} {rec / flo:>9.3f} "
                  f"{min(times['record']) / min(times['forward']):>11.3f}")
    torch.set_num_threads(default_threads)
    print("ratios use medians; the last column uses the fastest repetition of each, which is "
          "less affected by other processes competing for the CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
