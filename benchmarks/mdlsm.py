"""MD-LSM against the linear classifiers it must never fall below, and the 2-D sweep against brute force.

MD-LSM is the best in-sample AUC over linear scores, so on the same points it is at least the
in-sample AUC (strict count: ties are no success) of every fitted linear classifier. For
overlapping Gaussians ``A ~ N(+s e_1, I)``, ``B ~ N(-s e_1, I)`` (s = 0.5, seed 0) at
(n per class, d) = (1000, 128) and (5000, 512), the script fits scikit-learn's
``LogisticRegression``, ``LinearSVC`` and ``LinearDiscriminantAnalysis`` and prints for each its
AUC and fit time, then ``md_lsm``'s value, certified upper bound and time, and the ratios
``md_lsm time / logistic-regression fit time`` and ``md_lsm value - best baseline AUC`` (never
negative). The targets of the separability issue: at most 30x one logistic-regression fit at
(1000, 128) and at most 1 s at (5000, 512).

The 2-D part compares ``method="sweep"`` (exact, O(nm log nm)) with a brute-force count over
every critical direction (perpendicular to each a_i - b_j, both signs, and their bisectors) on
100 x 120 overlapping points.

Run with ``python benchmarks/mdlsm.py`` (``--quick``: the smaller size only; ``--repeats``: timed calls of
each, the best reported, default 3) on an idle machine.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import best_of  # noqa: E402
from sepmeasure.separability import md_lsm  # noqa: E402


def strict_auc(score_a: np.ndarray, score_b: np.ndarray) -> float:
    """Fraction of pairs (a, b) with score(a) > score(b), ties counted as failures (MD-LSM's count)."""
    b_sorted = np.sort(score_b)
    return float(np.searchsorted(b_sorted, score_a, side="left").sum()) / (len(score_a) * len(score_b))


def high_dimensional(n: int, d: int, s: float = 0.5, repeats: int = 3) -> None:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    g = torch.Generator().manual_seed(0)
    A = torch.randn(n, d, generator=g, dtype=torch.float64)
    B = torch.randn(n, d, generator=g, dtype=torch.float64)
    A[:, 0] += s
    B[:, 0] -= s
    X = torch.cat([A, B]).numpy()
    y = np.r_[np.ones(n), np.zeros(n)]
    baselines = {
        "LogisticRegression": lambda: LogisticRegression(max_iter=1000).fit(X, y),
        "LinearSVC": lambda: LinearSVC(max_iter=5000).fit(X, y),
        "LDA": lambda: LinearDiscriminantAnalysis().fit(X, y),
    }
    print(f"\n== {n} x {n} points in {d}-D, shift {s}, float64, {torch.get_num_threads()} threads")
    best_auc, lr_time = 0.0, None
    for name, fit in baselines.items():
        t, model = best_of(fit, repeats)
        scores = model.decision_function(X)
        auc = strict_auc(scores[:n], scores[n:])
        best_auc = max(best_auc, auc)
        lr_time = t if name == "LogisticRegression" else lr_time
        print(f"{name:20s} AUC {auc:.5f}  fit {t:7.3f} s")
    t, r = best_of(lambda: md_lsm(A, B), repeats)
    print(f"{'md_lsm':20s} value {r.value:.5f} (upper {r.upper:.4f}, {r.method}/{r.status}) {t:7.3f} s")
    print(f"md_lsm - best baseline AUC = {r.value - best_auc:+.5f} (never negative);  "
          f"md_lsm time / LogisticRegression fit = {t / lr_time:.1f}x")


def brute_force_2d(A: np.ndarray, B: np.ndarray) -> float:
    diffs = (A[:, None, :] - B[None, :, :]).reshape(-1, 2)
    angles = np.arctan2(diffs[:, 1], diffs[:, 0])
    crit = np.sort(np.mod(np.concatenate([angles + np.pi / 2, angles - np.pi / 2]), 2 * np.pi))
    mids = np.concatenate([crit, (crit + np.roll(crit, -1) + 2 * np.pi * (np.arange(len(crit)) == len(crit) - 1)) / 2])
    best = 0
    for chunk in np.array_split(mids, max(1, len(mids) // 2000)):
        W = np.stack([np.cos(chunk), np.sin(chunk)], 1)
        best = max(best, int(((diffs @ W.T) > 0).sum(0).max()))
    return best / len(diffs)


def two_dimensional() -> None:
    g = torch.Generator().manual_seed(1)
    A = torch.randn(100, 2, generator=g, dtype=torch.float64) + torch.tensor([0.4, 0.0], dtype=torch.float64)
    B = torch.randn(120, 2, generator=g, dtype=torch.float64) - torch.tensor([0.4, 0.0], dtype=torch.float64)
    t, r = best_of(lambda: md_lsm(A, B, method="sweep"))
    t_ref, ref = best_of(lambda: brute_force_2d(A.numpy(), B.numpy()), repeats=1)
    print(f"\n== 2-D, 100 x 120 overlapping points: sweep {r.value:.6f} ({r.status}, lower == upper: "
          f"{r.lower == r.upper}) in {t:.3f} s; brute force over all critical directions {ref:.6f} in "
          f"{t_ref:.2f} s ({t_ref / t:.0f}x the sweep)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the smaller size only")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed calls of each fit and of md_lsm; the best is reported (default 3)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats: expected a positive number of timed calls, got {args.repeats}")
    two_dimensional()
    high_dimensional(1000, 128, repeats=args.repeats)
    if not args.quick:
        high_dimensional(5000, 512, repeats=args.repeats)


if __name__ == "__main__":
    main()
