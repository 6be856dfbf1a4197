"""Empirical NTK: time and agreement of every method against ``method="jacobian"``, in one run.

* a 3×512 ReLU MLP on mnist1d inputs (40 features, 10 outputs), full kernel 256×256×10×10;
* the 1-D CNN ``CNN(1, [32, 32, 32], 10)`` on the same inputs;
* a 2048×2048 trace NTK of the MLP (default method and blocks), run in a fresh process so that
  its peak resident memory is its own, next to the size of the per-sample Jacobian it avoids.

Ratios are ``time(jacobian) / time(method)`` measured on the same inputs in this run (each time
the best of up to three runs after a warm-up; one run when it takes over 10 s); agreement is the
relative Frobenius error against the jacobian kernel.

* against the peers and against sepmeasure's own explicit methods, on the same weights and inputs
  (float32): the CIFAR-shaped CNN (3 convs 3→32→64→64, strides 1/2/2, global average pool, linear
  to 10) at 32 and 64 inputs, the MLP at 64, the plain-torch CIFAR ResNet-18 of ``tests/zoo.py``
  (width 8, BatchNorm in eval with random running statistics) and a ViT (patch conv 3→32, kernel 4,
  stride 4 on 32×32 inputs, class token and position embedding, 4 ``nn.TransformerEncoderLayer``
  of width 32, 4 heads, feed-forward 64, LayerNorm, linear head to 10; eval mode) at 16 inputs.
  sepmeasure's ``method="auto"`` is timed with each explicit method (``structured``, ``ntvp``,
  ``jacobian``; trace and full kernels for ResNet-18 and the ViT) and ``auto / best explicit`` is
  printed against the target of 1.2. The peers run as subprocesses in their own environment
  (``.venv-peers``, which ``make bench`` creates; ``PEERS_PYTHON`` names another interpreter),
  each reading the same ``.npz`` of weights and inputs: neural-tangents' three implementations on
  the models rewritten in JAX (``benchmarks/peers/nt_ntk.py``) and nngeometry's Gram matrix and
  Jacobian contraction on the models rebuilt in torch (``benchmarks/peers/nngeometry_ntk.py``).
  Each peer's kernel is checked against ours (float64 reference) before it is timed; a model a peer
  refuses is printed with its reason. Without that environment only our columns are printed.

These comparisons print ``time ours (auto) / time reference`` (below 1: ours faster) and the
speed-up, each time the best of ``--repeats`` (3) runs after a warm-up (the peers: compile or
first call excluded; ours: the model's plan reused, as by any later call on unchanged weights; the
time with planning included is printed beside it).

Run: ``python benchmarks/ntk.py`` (``--quick`` for 64 rows instead of 256, a 512-row trace and 8
inputs in the peers' comparison; ``--peers-only`` for that comparison alone, ``--models cnn mlp
resnet18 vit`` a selection of it, ``--peers-n 32 64`` the CNN's sizes).
"""
from __future__ import annotations

import argparse
import copy
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
from sepmeasure.kernels import ntk as ntk_module
from sepmeasure.models import CNN, MLP
from sepmeasure.provenance import library_versions, seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import zoo  # noqa: E402
from _timing import best_of_interleaved  # noqa: E402

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


PEERS_DIR = Path(__file__).resolve().parent / "peers"
# The peers' interpreter: ``make bench`` passes its PEERS_VENV's as PEERS_PYTHON.
DEFAULT_PEERS_PYTHON = Path(__file__).resolve().parent.parent / ".venv-peers" / "bin" / "python"
PEER_SCRIPTS = {"neural-tangents": PEERS_DIR / "nt_ntk.py", "nngeometry": PEERS_DIR / "nngeometry_ntk.py"}
PEER_MISSING = 3      # a peer script's exit status when its library is not installed
EXPLICIT_METHODS = ("structured", "ntvp", "jacobian")
VIT_KWARGS = {"image_size": 32, "patch": 4, "dim": 32, "depth": 4, "heads": 4, "mlp_dim": 64, "num_classes": 10}


def peers_python() -> Path:
    return Path(os.environ.get("PEERS_PYTHON") or DEFAULT_PEERS_PYTHON)


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


def resnet18(width: int = 8) -> nn.Module:
    """The plain-torch CIFAR ResNet-18 of the tests, BatchNorm in eval with random running statistics
    and affines (so that BatchNorm is not the identity)."""
    model = zoo.resnet18(width).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model


def vit() -> nn.Module:
    """The ViT of the issue: patch conv 3→32 (kernel 4, stride 4) on 32×32 inputs, class token and
    position embedding, 4 ``nn.TransformerEncoderLayer`` (d_model 32, 4 heads, feed-forward 64,
    dropout 0), LayerNorm, linear head to 10; eval mode (``tests/zoo.py``'s ``vit``)."""
    model = zoo.vit(**VIT_KWARGS).eval()
    with torch.no_grad():
        model.cls_token.normal_(0, 0.02)    # zero at initialisation, which would hide its kernel term
    return model


def export_layers(model: nn.Sequential) -> list[dict]:
    """The layer list ``benchmarks/peers/nt_ntk.py`` rebuilds in JAX and ``nngeometry_ntk.py`` in torch
    (weights under torch names)."""
    spec = []
    for name, m in model.named_children():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            spec.append({"type": "conv", "name": name, "weight": f"{name}.weight", "shape": list(m.weight.shape),
                         "bias": f"{name}.bias" if m.bias is not None else None, "stride": list(m.stride),
                         "padding": list(m.padding), "dilation": list(m.dilation), "groups": m.groups})
        elif isinstance(m, nn.Linear):
            spec.append({"type": "linear", "name": name, "weight": f"{name}.weight", "shape": list(m.weight.shape),
                         "bias": f"{name}.bias" if m.bias is not None else None})
        elif isinstance(m, (nn.ReLU, nn.Tanh, nn.Flatten, GlobalAvgPool)):
            spec.append({"type": {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Flatten: "flatten",
                                  GlobalAvgPool: "gap"}[type(m)], "name": name})
        else:
            raise ValueError(f"model: expected Conv, Linear, ReLU, Tanh, Flatten or GlobalAvgPool children, "
                             f"got {type(m).__name__} at {name!r}")
    return spec


def write_case(path: Path, model: nn.Module, x: torch.Tensor, kernel: torch.Tensor, arch: str, kwargs: dict) -> None:
    """``path.npz`` (the state dict under its torch names, ``x``, our ``kernel``) and ``path.json`` (``arch``,
    its ``kwargs`` or, for ``"sequential"``, its ``layers``, and which arrays are ``params``): what the peer
    scripts read."""
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    np.savez(path.with_suffix(".npz"), x=x.cpu().numpy(), kernel=kernel.cpu().numpy(), **state)
    spec = {"arch": arch, "kwargs": kwargs, "params": [k for k, _ in model.named_parameters()]}
    if arch == "sequential":
        spec["layers"] = export_layers(model)
    path.with_suffix(".json").write_text(json.dumps(spec))


def time_ours(model: nn.Module, x: torch.Tensor, output: str, repeats: int) -> dict:
    """``method="auto"`` and each explicit method on ``x``: best of ``repeats`` after a warm-up, and the
    relative error against the float64 jacobian kernel (returned as ``"ref64"``)."""
    ref64 = empirical_ntk(model.double(), x.double(), method="jacobian", output=output, block_size=64,
                          progress=False)
    model.float()
    row: dict = {"ref64": ref64}
    # the methods in turn, round by round: all of them see the same state of the machine
    calls = {method: (lambda m=method: empirical_ntk(model, x, method=m, output=output, progress=False))
             for method in ("auto", *EXPLICIT_METHODS)}

    cold = copy.deepcopy(model)

    def auto_cold() -> torch.Tensor:      # a copy of the model whose plans are dropped first: planning included
        ntk_module._PLANS.pop(cold, None)
        return empirical_ntk(cold, x, method="auto", output=output, progress=False)

    results = best_of_interleaved({**calls, "auto_cold": auto_cold}, repeats)
    row["auto_cold"] = results.pop("auto_cold")[0]
    for method, (t, k) in results.items():
        if isinstance(k, Exception):
            if method in ("auto", "jacobian"):
                raise k
            row[method], row[f"{method}_error"] = float("nan"), f"{type(k).__name__}: {str(k).splitlines()[0]}"
            continue
        row[method] = t
        row[f"{method}_rel_error"] = float((k.double() - ref64).norm() / ref64.norm())
    best = min((m for m in EXPLICIT_METHODS if f"{m}_error" not in row), key=lambda m: row[m])
    row["best_explicit"] = best
    row["auto_over_best"] = row["auto"] / row[best]
    return row


def run_peer(peer: str, folder: str, repeats: int) -> tuple[dict | None, str]:
    """One peer script on the cases in ``folder``: ``(its report, "")`` or ``(None, why not)``."""
    python = peers_python()
    if not python.exists():
        return None, (f"no peers' environment at {python.parent.parent} (`make peers` creates it from "
                      f"benchmarks/peers/requirements*.txt)")
    out_json = Path(folder) / f"{peer}.json"
    proc = subprocess.run([str(python), str(PEER_SCRIPTS[peer]), folder, "--out", str(out_json),
                           "--repeats", str(repeats)], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")})
    if proc.returncode == PEER_MISSING:
        return None, proc.stderr.strip().splitlines()[-1]
    if proc.returncode != 0:
        return None, f"run failed:\n{proc.stderr[-3000:]}"
    return json.loads(out_json.read_text()), ""


def peer_line(peer: str, report: dict, case: str, t_ours: float) -> str:
    rows = report["cases"].get(case, {})
    timed_ = {m: r for m, r in rows.items() if "seconds" in r}
    parts = [f"{m} {r['seconds']:.3f} s (err {r['rel_error']:.1e})" if "seconds" in r else f"{m} {r['error']}"
             for m, r in rows.items()]
    line = f"    {peer:>15}: " + ", ".join(parts)
    if timed_:
        fastest = min(timed_, key=lambda m: timed_[m]["seconds"])
        t = timed_[fastest]["seconds"]
        line += (f"\n    {'':>15}  → time ours (auto) / {peer} fastest ({fastest}) {t_ours / t:.2f} "
                 f"(speed-up {t / t_ours:.2f}×)")
    return line


def peers(sizes: list[int], quick: bool, repeats: int = 3, models: list[str] | None = None) -> dict:
    """sepmeasure against neural-tangents and nngeometry on the same weights and inputs, and against its
    own explicit methods; returns the rows printed."""
    seed_everything(0)
    n_big = 8 if quick else 16
    builders = {
        "cnn": lambda: [(f"cnn_{n}", cifar_cnn().eval(), torch.randn(n, 3, 32, 32), "sequential", {})
                        for n in sizes],
        "mlp": lambda: [(f"mlp_{sizes[-1]}", nn.Sequential(
            nn.Linear(40, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
            nn.Linear(512, 10)).eval(), inputs(sizes[-1]), "sequential", {})],
        "resnet18": lambda: [(f"resnet18_{n_big}", resnet18(8), torch.randn(n_big, 3, 32, 32), "resnet18",
                              {"width": 8})],
        "vit": lambda: [(f"vit_{n_big}", vit(), torch.randn(n_big, 3, 32, 32), "vit", VIT_KWARGS)],
    }
    ours: dict[str, dict[str, dict]] = {}
    reports: dict[str, tuple[dict | None, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key in models or list(builders):
            for case, model, x, arch, kwargs in builders[key]():
                # trace and full for the two large models (the targets), full elsewhere
                outputs = ("trace", "full") if arch != "sequential" else ("full",)
                ours[case] = {output: time_ours(model, x, output, repeats) for output in outputs}
                ours[case]["params"] = sum(p.numel() for p in model.parameters())
                ours[case]["n"] = x.shape[0]
                write_case(Path(tmp) / case, model, x, ours[case]["full"]["ref64"], arch, kwargs)
        for peer in PEER_SCRIPTS:
            reports[peer] = run_peer(peer, tmp, repeats)
    versions = {peer: r["versions"] for peer, (r, _) in reports.items() if r}
    if versions:
        print("  peers: " + "; ".join(", ".join(f"{p} {v}" for p, v in vs.items() if v) for vs in versions.values()))
    for peer, (report, why) in reports.items():
        if report is None:
            print(f"  {peer} not run, our columns only: {why}")
    for case, row in ours.items():
        print(f"\n  {case} ({row['params']} parameters, {row['n']} inputs, float32)")
        for output in ("trace", "full"):
            if output not in row:
                continue
            r = row[output]
            print(f"    {output:>5}: auto {r['auto']:7.3f} s (err {r['auto_rel_error']:.1e}; planning included "
                  f"{r['auto_cold']:.3f} s), "
                  + ", ".join(f"{m} {r[m]:7.3f} s" for m in EXPLICIT_METHODS)
                  + f"; jacobian / auto {r['jacobian'] / r['auto']:.2f}× ({r['jacobian'] / r['auto_cold']:.2f}× "
                    f"planning included), structured err "
                    f"{r.get('structured_rel_error', float('nan')):.1e}")
            for m in EXPLICIT_METHODS:
                if f"{m}_error" in r:
                    print(f"           {m} failed: {r[f'{m}_error'][:160]}")
            print(f"           auto / best explicit ({r['best_explicit']}) {r['auto_over_best']:.2f} "
                  f"(target ≤ 1.2: {'met' if r['auto_over_best'] <= 1.2 else 'NOT met'})")
        if any(report for report, _ in reports.values()):
            print("    full kernel, the peers on the same weights and inputs:")
        for peer, (report, why) in reports.items():
            if report is not None:
                print(peer_line(peer, report, case, row["full"]["auto"]))
    for row in ours.values():
        for output in ("trace", "full"):
            row.get(output, {}).pop("ref64", None)
    return {"ours": ours, "peers": {peer: r for peer, (r, _) in reports.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 rows and a 512-row trace kernel")
    parser.add_argument("--trace-only", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--peers-only", action="store_true",
                        help="only the comparison with the peers and the explicit methods (CNN, MLP, ResNet-18, ViT)")
    parser.add_argument("--peers-n", type=int, nargs="+", default=None, help="inputs of the CNN comparison")
    parser.add_argument("--models", nargs="+", choices=("cnn", "mlp", "resnet18", "vit"), default=None,
                        help="only these models in the comparison with the peers")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method in that comparison")
    args = parser.parse_args()
    if args.trace_only is not None:
        print(json.dumps(trace_run(args.trace_only)))
        return
    sizes = args.peers_n or ([8] if args.quick else [32, 64])
    header = (f"== against neural-tangents and nngeometry (full kernels) and the explicit methods (trace and full "
              f"for ResNet-18 and the ViT), float32, {torch.get_num_threads()} threads (CNN sizes {sizes})")
    if args.peers_only:
        print(header)
        peers(sizes, args.quick, args.repeats, args.models)
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
    print("\n" + header)
    peers(sizes, args.quick, args.repeats, args.models)
    print(f"peak RSS of this process (jacobian blocks of {REFERENCE_BLOCKS['jacobian']} rows): "
          f"{peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
