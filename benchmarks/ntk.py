"""Empirical NTK: time and agreement of every method against ``method="jacobian"``, in one run.

* a 3×512 ReLU MLP on mnist1d inputs (40 features, 10 outputs), full kernel 256×256×10×10;
* the 1-D CNN ``CNN(1, [32, 32, 32], 10)`` on the same inputs;
* a 2048×2048 trace NTK of the MLP (default method and blocks), run in a fresh process so that
  its peak resident memory is its own, next to the size of the per-sample Jacobian it avoids.

Ratios are ``time(jacobian) / time(method)`` measured on the same inputs in this run (each time
the best of up to three runs after a warm-up; one run when it takes over 10 s); agreement is the
relative Frobenius error against the jacobian kernel.

Run: ``python benchmarks/ntk.py`` (``--quick`` for 64 rows instead of 256 and a 512-row trace).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

from sepmeasure.data import load_dataset
from sepmeasure.kernels import empirical_ntk
from sepmeasure.models import CNN, MLP
from sepmeasure.provenance import library_versions, seed_everything

# Rows per block for the two Jacobian-holding methods: large enough that they recompute little,
# small enough to fit in memory (jacobian: 2 × 128 per-sample Jacobians of the MLP ≈ 5.6 GB).
REFERENCE_BLOCKS = {"jacobian": 128, "ntvp": 64}


def peak_rss_gib() -> float:
    """Peak resident memory of this process (``VmHWM``; ``ru_maxrss``, which survives exec, elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # KiB on Linux


def reset_peak_rss() -> None:
    """Reset the peak to the current resident memory (Linux ``clear_refs``), where allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def inputs(n: int) -> torch.Tensor:
    return load_dataset("mnist1d", size=max(2 * n, 600), seed=0).X[:n].contiguous()


def timed(model: torch.nn.Module, x: torch.Tensor, method: str, output: str = "full") -> tuple[float, torch.Tensor]:
    """Best of up to three runs (one when a run takes more than 10 s), after a warm-up call."""
    block = REFERENCE_BLOCKS.get(method)
    empirical_ntk(model, x[:4], method=method, output=output)          # warm-up (first-call overheads)
    best, k = float("inf"), None
    for _ in range(3):
        start = time.perf_counter()
        k = empirical_ntk(model, x, method=method, output=output, block_size=block)
        elapsed = time.perf_counter() - start
        best = min(best, elapsed)
        if elapsed > 10:
            break
    return best, k


def compare(name: str, model: torch.nn.Module, x: torch.Tensor) -> list[dict]:
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"\n== {name}: {n_params} parameters, {x.shape[0]}×{x.shape[0]} full kernel")
    t_ref, ref = timed(model, x, "jacobian")
    rows = [{"model": name, "method": "jacobian", "seconds": t_ref, "speedup_vs_jacobian": 1.0, "rel_error": 0.0}]
    for method in ("ntvp", "structured"):
        t, k = timed(model, x, method)
        err = float((k - ref).norm() / ref.norm())
        rows.append({"model": name, "method": method, "seconds": t, "speedup_vs_jacobian": t_ref / t,
                     "rel_error": err})
    by = {r["method"]: r for r in rows}
    for r in rows:
        print(f"  {r['method']:>10}: {r['seconds']:9.2f} s   speed-up vs jacobian {r['speedup_vs_jacobian']:8.1f}×"
              f"   rel. error vs jacobian {r['rel_error']:.2e}")
    print(f"  structured vs ntvp: {by['ntvp']['seconds'] / by['structured']['seconds']:.1f}× faster")
    return rows


def trace_run(path: str) -> dict:
    """The large trace kernel of the inputs saved at ``path``; called in a fresh process."""
    seed_everything(0)
    model = MLP(40, [512, 512, 512], 10).eval()
    x = torch.load(path)
    n = x.shape[0]
    empirical_ntk(model, x[:4], output="trace")
    reset_peak_rss()
    before = peak_rss_gib()
    start = time.perf_counter()
    k = empirical_ntk(model, x, output="trace")
    seconds = time.perf_counter() - start
    peak = peak_rss_gib()
    n_params = sum(p.numel() for p in model.parameters())
    eig_min = float(torch.linalg.eigvalsh(k.double()).min())
    return {"n": n, "seconds": seconds, "peak_rss_before_gib": before, "peak_rss_gib": peak,
            "per_sample_jacobian_gib": n * 10 * n_params * 4 / 2**30, "symmetric": bool(torch.equal(k, k.T)),
            "min_eigenvalue": eig_min, "max_eigenvalue": float(k.diagonal().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 rows and a 512-row trace kernel")
    parser.add_argument("--trace-only", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trace_only is not None:
        print(json.dumps(trace_run(args.trace_only)))
        return
    n = 64 if args.quick else 256
    n_trace = 512 if args.quick else 2048
    print(f"torch {library_versions().get('torch')}, {torch.get_num_threads()} threads")
    seed_everything(0)
    x = inputs(n)
    rows = compare("MLP 3×512 (mnist1d, 10 outputs)", MLP(40, [512, 512, 512], 10), x)
    rows += compare("CNN(1, [32, 32, 32], 10) (mnist1d)", CNN(1, [32, 32, 32], 10), x)

    print(f"\n== trace NTK of the MLP, {n_trace}×{n_trace}, default method and blocks (fresh process)")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.pt")
        torch.save(inputs(n_trace), path)
        out = subprocess.run([sys.executable, __file__, "--trace-only", path], capture_output=True, text=True,
                             check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {r['seconds']:.1f} s; peak RSS {r['peak_rss_gib']:.2f} GiB (after set-up {r['peak_rss_before_gib']:.2f} "
          f"GiB, so the kernel needed {r['peak_rss_gib'] - r['peak_rss_before_gib']:.2f} GiB more); a per-sample "
          f"Jacobian of all {n_trace} samples would be {r['per_sample_jacobian_gib']:.1f} GiB")
    print(f"  symmetric: {r['symmetric']}; eigenvalues in [{r['min_eigenvalue']:.3g}, ...], "
          f"largest diagonal {r['max_eigenvalue']:.3g}")

    mlp = {row["method"]: row for row in rows if row["model"].startswith("MLP")}
    ok_jac = mlp["structured"]["speedup_vs_jacobian"] >= 100
    ok_ntvp = mlp["structured"]["seconds"] < mlp["ntvp"]["seconds"]
    print(f"\ntargets on the MLP: structured ≥100× faster than jacobian: {'met' if ok_jac else 'NOT met'} "
          f"({mlp['structured']['speedup_vs_jacobian']:.0f}×); faster than ntvp: {'met' if ok_ntvp else 'NOT met'}")
    print(f"peak RSS of this process (jacobian blocks of {REFERENCE_BLOCKS['jacobian']} rows): "
          f"{peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
