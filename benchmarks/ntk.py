"""Empirical NTK: time and agreement of every method against ``method="jacobian"``, in one run.

* a 3×512 ReLU MLP on mnist1d inputs (40 features, 10 outputs), full kernel 256×256×10×10;
* the 1-D CNN ``CNN(1, [32, 32, 32], 10)`` on the same inputs;
* a 2048×2048 trace NTK of the MLP (default method and blocks), run in a fresh process so that
  its peak resident memory is its own, next to the size of the per-sample Jacobian it avoids.

Ratios are ``time(jacobian) / time(method)`` measured on the same inputs in this run (each time
the best of up to three runs after a warm-up; one run when it takes over 10 s); agreement is the
relative Frobenius error against the jacobian kernel.

* against neural-tangents (``--peers``): the CIFAR-shaped CNN (3 convs 3→32→64→64, strides 1/2/2,
  global average pool, linear to 10) and the MLP, full kernels on the same weights and inputs
  (float32), sepmeasure's ``method="auto"`` against neural-tangents' three implementations, run in
  the peers' own environment ``.venv-peers`` (``benchmarks/peers``) as a subprocess reading the same
  ``.npz``; it checks its kernel equals ours (float64 reference) before timing. Without that
  environment only our columns are printed.

* against ``method="jacobian"``: a plain-torch CIFAR-style ResNet-18 of width 8 (BatchNorm in eval
  with random running statistics), 16 inputs, trace and full kernels.

Both comparisons print ``time ours / time reference`` (below 1: ours faster) and the speed-up, each
time the best of 3 runs after a warm-up.

Run: ``python benchmarks/ntk.py`` (``--quick`` for 64 rows instead of 256 and a 512-row trace;
``--peers-only`` for the neural-tangents and ResNet-18 comparisons alone, ``--peers-n 32 64`` the CNN's
sizes).
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
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sepmeasure.data import load_dataset
from sepmeasure.kernels import empirical_ntk
from sepmeasure.models import CNN, MLP
from sepmeasure.provenance import library_versions, seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import zoo  # noqa: E402
from _timing import best_of  # noqa: E402

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


PEERS_PYTHON = Path(__file__).resolve().parent.parent / ".venv-peers" / "bin" / "python"
PEERS_SCRIPT = Path(__file__).resolve().parent / "peers" / "nt_ntk.py"


class GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=tuple(range(2, x.ndim)))


def cifar_cnn(widths=(32, 64, 64), strides=(1, 2, 2), in_channels: int = 3, classes: int = 10) -> nn.Sequential:
    """The issue's CIFAR-shaped CNN: 3×3 convs (padding 1) with ReLU, global average pool, linear."""
    layers: list[nn.Module] = []
    chans = (in_channels, *widths)
    for a, b, s in zip(chans, chans[1:], strides):
        layers += [nn.Conv2d(a, b, 3, stride=s, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, GlobalAvgPool(), nn.Linear(chans[-1], classes))


def resnet_case(n: int = 16, width: int = 8, repeats: int = 3) -> dict:
    """ResNet-18 (BatchNorm in eval, random running statistics) against ``method="jacobian"``: trace and
    full kernels of ``n`` CIFAR-shaped inputs, float32, best of ``repeats`` after a warm-up."""
    seed_everything(0)
    model = zoo.resnet18(width).eval()   # the plain-torch CIFAR ResNet-18 of the tests
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    x = torch.randn(n, 3, 32, 32)
    rows = {}
    for output in ("trace", "full"):
        ref64 = empirical_ntk(model.double(), x.double(), method="jacobian", output=output, progress=False)
        model.float()
        row = {}
        for method in ("auto", "structured", "jacobian"):
            t, k = best_of(lambda: empirical_ntk(model, x, method=method, output=output, progress=False), repeats,
                           warmup=True)
            row[method] = t
            row[f"{method}_rel_error"] = float((k.double() - ref64).norm() / ref64.norm())
        rows[output] = row
        print(f"  resnet18 width {width}, {n} inputs, {output:>5}: auto {row['auto']:7.3f} s, structured "
              f"{row['structured']:7.3f} s (err {row['structured_rel_error']:.1e}), jacobian {row['jacobian']:7.3f} s "
              f"(err {row['jacobian_rel_error']:.1e})"
              f" → time ours (auto) / jacobian {row['auto'] / row['jacobian']:.2f} "
              f"(speed-up {row['jacobian'] / row['auto']:.2f}×)")
    return rows


def export_layers(model: nn.Sequential) -> list[dict]:
    """The layer list ``benchmarks/peers/nt_ntk.py`` rebuilds in JAX (weights under torch names)."""
    spec = []
    for name, m in model.named_children():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            spec.append({"type": "conv", "weight": f"{name}.weight", "bias": f"{name}.bias" if m.bias is not None
                         else None, "stride": list(m.stride), "padding": list(m.padding),
                         "dilation": list(m.dilation), "groups": m.groups})
        elif isinstance(m, nn.Linear):
            spec.append({"type": "linear", "weight": f"{name}.weight",
                         "bias": f"{name}.bias" if m.bias is not None else None})
        elif isinstance(m, (nn.ReLU, nn.Tanh, nn.Flatten, GlobalAvgPool)):
            spec.append({"type": {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Flatten: "flatten",
                                  GlobalAvgPool: "gap"}[type(m)]})
        else:
            raise ValueError(f"model: expected Conv, Linear, ReLU, Tanh, Flatten or GlobalAvgPool children, "
                             f"got {type(m).__name__} at {name!r}")
    return spec


def peers(sizes: list[int], quick: bool, repeats: int = 3) -> dict:
    """sepmeasure against neural-tangents on the same weights and inputs; returns the rows printed."""
    seed_everything(0)
    cases = {}
    cnn = cifar_cnn().eval()
    mlp = nn.Sequential(nn.Linear(40, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512),
                        nn.ReLU(), nn.Linear(512, 10)).eval()
    for n in sizes:
        cases[f"cnn_{n}"] = (cnn, torch.randn(n, 3, 32, 32))
    cases[f"mlp_{sizes[-1]}"] = (mlp, inputs(sizes[-1]))
    ours: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case, (model, x) in cases.items():
            ref64 = empirical_ntk(model.double(), x.double(), method="jacobian", block_size=64, progress=False)
            model.float()
            row = {}
            for method in ("auto", "structured", "jacobian"):
                t, k = best_of(lambda: empirical_ntk(model, x, method=method, progress=False), repeats, warmup=True)
                row[method] = t
                row[f"{method}_rel_error"] = float((k.double() - ref64).norm() / ref64.norm())
            ours[case] = row
            weights = {n: p.detach().numpy() for n, p in model.named_parameters()}
            np.savez(Path(tmp) / f"{case}.npz", x=x.numpy(), kernel=ref64.numpy(), **weights)
            (Path(tmp) / f"{case}.json").write_text(json.dumps({"layers": export_layers(model)}))
        theirs = None
        if PEERS_PYTHON.exists():
            out_json = Path(tmp) / "peers.json"
            proc = subprocess.run([str(PEERS_PYTHON), str(PEERS_SCRIPT), tmp, "--out", str(out_json),
                                   "--repeats", str(repeats)], capture_output=True, text=True,
                                  env={**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")})
            if proc.returncode != 0:
                print(f"  neural-tangents run failed:\n{proc.stderr[-3000:]}")
            else:
                theirs = json.loads(out_json.read_text())
        else:
            print(f"  no peers' environment at {PEERS_PYTHON} (see benchmarks/peers/requirements.txt): our columns only")
    if theirs:
        print(f"  neural-tangents {theirs['versions']['neural-tangents']}, jax {theirs['versions']['jax']} "
              f"on {theirs['devices']}")
    for case, row in ours.items():
        line = (f"  {case:>8}: auto {row['auto']:7.3f} s (err {row['auto_rel_error']:.1e}), structured "
                f"{row['structured']:7.3f} s, jacobian {row['jacobian']:7.3f} s")
        if theirs:
            nt_row = theirs["cases"][case]
            fastest = min(nt_row, key=lambda m: nt_row[m]["seconds"])
            t_nt = nt_row[fastest]["seconds"]
            line += (f"; neural-tangents fastest ({fastest}) {t_nt:7.3f} s → time ours (auto) / neural-tangents "
                     f"{row['auto'] / t_nt:.2f} (speed-up {t_nt / row['auto']:.2f}×)")
            row["neural_tangents"] = nt_row
        print(line)
    return {"ours": ours, "peers": theirs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 rows and a 512-row trace kernel")
    parser.add_argument("--trace-only", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--peers-only", action="store_true", help="only the comparison with neural-tangents")
    parser.add_argument("--peers-n", type=int, nargs="+", default=None, help="inputs of the CNN comparison")
    args = parser.parse_args()
    if args.trace_only is not None:
        print(json.dumps(trace_run(args.trace_only)))
        return
    sizes = args.peers_n or ([8] if args.quick else [32, 64])
    if args.peers_only:
        print(f"== against neural-tangents, full kernels, float32 (sizes {sizes})")
        peers(sizes, args.quick)
        print("\n== ResNet-18 (plain torch, BatchNorm in eval) against method='jacobian', float32")
        resnet_case()
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
    print(f"\n== against neural-tangents, full kernels, float32 (sizes {sizes})")
    peers(sizes, args.quick)
    print("\n== ResNet-18 (plain torch, BatchNorm in eval) against method='jacobian', float32")
    resnet_case(n=8 if args.quick else 16)
    print(f"peak RSS of this process (jacobian blocks of {REFERENCE_BLOCKS['jacobian']} rows): "
          f"{peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
