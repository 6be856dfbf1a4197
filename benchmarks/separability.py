"""Hull distance: the batched native solver against a loop of single calls and cvxpy + Clarabel.

Pairwise cases (all 45 one-vs-one pairs of 10 classes, solved by one ``pairwise_hull_distances``
call), at the studies' size (60 points per class in 64-D) and at the mnist1d benchmark size
(400 points per class in 128-D):

* ``gaussian s``   — class means drawn from ``N(0, s^2 I)``, unit-variance points around them
  (seed 0); ``s = 2`` leaves small supports, ``s = 0.5`` large ones (more overlap);
* ``mnist1d layer`` — the second ReLU layer of an MLP trained for 8 epochs on mnist1d: 64 units
  with 60 samples per class (the first 60 of each class), and 128 units with 400 per class.

For each case it prints the best wall time over ``--repeats`` runs (default 3) of the batched
call, of a loop of 45 single ``hull_distance`` calls and of 45 cvxpy + Clarabel solves
(``method="reference"``, cvxpy's problem construction included, which is what a user of the
reference pays), both ratios, the worst disagreement of the distances (relative for separable
pairs, relative to the data's scale where the hulls meet) and whether every Clarabel distance
lies in the native certified interval ``[lower, upper + gap_ref]`` (``gap_ref`` = the
reference's own certified gap). The targets of the issue: >= 50x Clarabel at both sizes and
never slower than the loop of single calls. Torch runs with ``--threads`` threads (default 1,
Clarabel's solve is single-threaded too).

``--single`` adds the one-pair cases of two Gaussians (500 points per set in 64-D, 2000 in 512-D:
well-separated, near-separable, near and degenerate, overlapping) against Clarabel.

Run with ``python benchmarks/separability.py`` (``--quick``: the 60-point cases only).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import best_of  # noqa: E402
from sepmeasure.separability import hull_distance, pairwise_hull_distances  # noqa: E402

TARGET_CLARABEL = 50.0
SINGLE_TARGETS = {"well-separated": 50.0, "near-separable": 5.0, "near, degenerate": 5.0, "overlapping": 5.0}
NEAR_SHIFT = {(500, 64): 1.775390625, (2000, 512): 1.556640625}


def gaussian_classes(n: int, d: int, spread: float, seed: int = 0, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(k).repeat_interleave(n)
    means = spread * torch.randn(k, d, generator=g, dtype=torch.float64)
    return torch.randn(k * n, d, generator=g, dtype=torch.float64) + means[y], y


def mnist1d_layer(width: int, per_class: int, epochs: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    from sepmeasure.capture import record
    from sepmeasure.data import load_dataset
    from sepmeasure.models import MLP
    from sepmeasure.training import fit

    train = load_dataset("mnist1d", split="train", seed=0)
    torch.manual_seed(0)
    model = MLP(40, [width, width], 10)
    fit(model, train, epochs=epochs, lr=0.05, seed=0, progress=False)
    keep = torch.cat([torch.nonzero(train.y == c).flatten()[:per_class] for c in range(10)])
    acts = record(model, (train.X[keep], train.y[keep]), layers=["layers.1.act"], progress=False)
    return acts["layers.1.act"].to(torch.float64), train.y[keep]


def compare(native, ref) -> tuple[float, bool]:
    if ref.separable is False or native.separable is False:
        diff = abs(native.distance - ref.distance) / native.scale
    else:
        diff = abs(native.distance - ref.distance) / ref.distance
    slack = 1e-12 * native.scale
    inside = native.lower <= ref.upper + slack and ref.upper <= native.upper + ref.gap + slack
    return diff, inside


def single_loop(X: torch.Tensor, y: torch.Tensor) -> dict:
    return {(a, b): hull_distance(X[y == a], X[y == b]) for a in range(10) for b in range(a + 1, 10)}


def pairwise_case(name: str, X: torch.Tensor, y: torch.Tensor, repeats: int) -> dict:
    t_batch, batch = best_of(lambda: pairwise_hull_distances(X, y, progress=False), repeats)
    t_loop, loop = best_of(lambda: single_loop(X, y), repeats)
    t_ref, refs = best_of(lambda: pairwise_hull_distances(X, y, method="reference", progress=False), repeats)
    worst, inside, worst_loop = 0.0, True, 0.0
    for key, r in batch.items():
        diff, ok = compare(r, refs[key])
        worst, inside = max(worst, diff), inside and ok
        worst_loop = max(worst_loop, compare(r, loop[key])[0])
    return dict(name=name, n=int((y == 0).sum()), d=X.shape[1], t_batch=t_batch, t_loop=t_loop, t_ref=t_ref,
                worst=worst, worst_loop=worst_loop, inside=inside, n_sep=sum(bool(r.separable) for r in batch.values()),
                statuses=",".join(sorted({r.status for r in batch.values()})),
                rounds=max(r.iterations for r in batch.values()))


def gaussians(kind: str, n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, generator=g, dtype=torch.float64)
    B = torch.randn(n, d, generator=g, dtype=torch.float64)
    if kind == "near, degenerate":
        A[:, 0] = 0.025 + A[:, 0].abs()
        B[:, 0] = -0.025 - B[:, 0].abs()
        k = int(0.4 * n)
        A[:k, 0] = 0.025
        B[:k, 0] = -0.025
        return A, B
    shift = {"well-separated": 5.0, "overlapping": 0.5, "near-separable": NEAR_SHIFT.get((n, d), 1.5)}[kind]
    A[:, 0] += shift
    B[:, 0] -= shift
    return A, B


def single_cases(repeats: int) -> None:
    header = (f"{'case':<18} {'n':>5} {'d':>4} {'native':>8} {'clarabel':>9} {'speedup':>8} {'target':>7} "
              f"{'distance':>12} {'disagree':>9} {'inside':>6} {'status':>10}")
    print("\none pair of sets\n" + header + "\n" + "-" * len(header))
    for n, d in [(500, 64), (2000, 512)]:
        for kind, target in SINGLE_TARGETS.items():
            A, B = gaussians(kind, n, d)
            t_nat, native = best_of(lambda: hull_distance(A, B), repeats)
            t_ref, ref = best_of(lambda: hull_distance(A, B, method="reference"), max(1, repeats - 1))
            diff, inside = compare(native, ref)
            print(f"{kind:<18} {n:>5} {d:>4} {t_nat:>8.3f} {t_ref:>9.3f} {t_ref / t_nat:>7.1f}x "
                  f"{target if (n, d) == (2000, 512) else '':>7} {native.distance:>12.6g} {diff:>9.1e} "
                  f"{str(inside):>6} {native.status:>10}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the 60-point cases")
    parser.add_argument("--single", action="store_true", help="also the one-pair cases")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per solver; the best is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    if args.repeats < 2:
        parser.error("--repeats: expected at least 2 (the best of the runs is reported)")
    torch.set_num_threads(args.threads)
    warm_x, warm_y = gaussian_classes(20, 8, 1.0, k=3)             # warm-up: torch's linear algebra,
    pairwise_hull_distances(warm_x, warm_y, progress=False)        # cvxpy's imports and Clarabel
    pairwise_hull_distances(warm_x, warm_y, method="reference", progress=False)

    cases = [("gaussian 2", *gaussian_classes(60, 64, 2.0)), ("gaussian 0.5", *gaussian_classes(60, 64, 0.5)),
             ("mnist1d layer", *mnist1d_layer(64, 60))]
    if not args.quick:
        cases += [("gaussian 2", *gaussian_classes(400, 128, 2.0)), ("gaussian 0.5", *gaussian_classes(400, 128, 0.5)),
                  ("mnist1d layer", *mnist1d_layer(128, 400))]
    print(f"torch {torch.__version__}, {args.threads} thread(s), best of {args.repeats} runs; times in seconds\n")
    print("45 one-vs-one pairs of 10 classes")
    header = (f"{'case':<14} {'n':>4} {'d':>4} {'batched':>8} {'loop':>7} {'clarabel':>9} {'vs clarabel':>11} "
              f"{'vs loop':>8} {'separable':>9} {'disagree':>9} {'inside':>6} {'status':>10} {'rounds':>6}")
    print(header + "\n" + "-" * len(header))
    rows = []
    for name, X, y in cases:
        r = pairwise_case(name, X, y, args.repeats)
        rows.append(r)
        print(f"{name:<14} {r['n']:>4} {r['d']:>4} {r['t_batch']:>8.4f} {r['t_loop']:>7.4f} {r['t_ref']:>9.3f} "
              f"{r['t_ref'] / r['t_batch']:>10.1f}x {r['t_loop'] / r['t_batch']:>7.1f}x {r['n_sep']:>6}/45 "
              f"{r['worst']:>9.1e} {str(r['inside']):>6} {r['statuses']:>10} {r['rounds']:>6}", flush=True)
    print(f"\nratios (time of the other / batched time); target >= {TARGET_CLARABEL:.0f}x Clarabel, >= 1x the loop:")
    for r in rows:
        vs_ref, vs_loop = r["t_ref"] / r["t_batch"], r["t_loop"] / r["t_batch"]
        ok = vs_ref >= TARGET_CLARABEL and vs_loop >= 1.0 and r["inside"] and r["worst"] <= 1e-5
        print(f"  {r['name']:<14} ({r['n']}, {r['d']}): {vs_ref:6.1f}x Clarabel, {vs_loop:5.1f}x the loop, "
              f"disagreement {r['worst']:.1e} (loop {r['worst_loop']:.1e}), inside {r['inside']}: "
              f"{'met' if ok else 'not met'}")
    if args.single:
        single_cases(args.repeats)


if __name__ == "__main__":
    main()
