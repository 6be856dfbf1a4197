"""Dynamic programming vs path enumeration for path-length distributions.

For channel graphs small enough to enumerate (at most a few hundred thousand paths), times
``path_length_distribution(graph, method="dp")`` against ``method="enumeration"`` (the
reference that walks every path) on the same graph, both variants, and reports the median
of several repetitions and the ratio enumeration / dp. It also checks that both give the
same distribution, and times the DP alone on deep ResNets, where enumeration is impossible.

Run with ``python benchmarks/paths.py``.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sepmeasure.models import MLP, ResNet  # noqa: E402
from sepmeasure.paths import path_graph, path_length_distribution  # noqa: E402


def _median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    cases = {
        "MLP 4-[6,6,6,6]-3 (15552 paths)": MLP(4, [6, 6, 6, 6], 3),
        "ResNet width 2, 6 blocks": ResNet(1, width=2, n_blocks=6, out_features=2),
        "ResNet width 3, 4 blocks": ResNet(1, width=3, n_blocks=4, out_features=2),
    }
    print(f"{'graph':38s} {'variant':12s} {'paths':>9s} {'dp [ms]':>9s} {'enum [ms]':>10s} {'enum/dp':>8s}")
    for name, model in cases.items():
        graph = path_graph(model)
        for normalized in (False, True):
            dp = path_length_distribution(graph, normalized, method="dp")
            ref = path_length_distribution(graph, normalized, method="enumeration")
            n = max(len(dp.probabilities), len(ref.probabilities))
            a, b = np.zeros(n), np.zeros(n)
            a[:len(dp.probabilities)], b[:len(ref.probabilities)] = dp.probabilities, ref.probabilities
            if not np.allclose(a, b, rtol=0, atol=1e-12):
                raise SystemExit(f"{name}: dp and enumeration disagree")
            t_dp = _median_seconds(lambda: path_length_distribution(graph, normalized, method="dp"), 7)
            t_enum = _median_seconds(lambda: path_length_distribution(graph, normalized, method="enumeration"), 3)
            variant = "normalized" if normalized else "all paths"
            print(f"{name:38s} {variant:12s} {10 ** dp.log10_paths:9.0f} {1e3 * t_dp:9.2f} {1e3 * t_enum:10.1f} "
                  f"{t_enum / t_dp:8.0f}")
    print()
    for blocks in (50, 100, 200):
        model = ResNet(1, width=16, n_blocks=blocks, out_features=10)
        t = _median_seconds(lambda: path_length_distribution(model, True), 3)
        print(f"ResNet width 16, {blocks:3d} blocks: dp {1e3 * t:7.1f} ms "
              f"(10^{path_length_distribution(model).log10_paths:.0f} paths)")


if __name__ == "__main__":
    main()
