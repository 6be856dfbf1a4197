"""nngeometry's empirical NTK of a model saved by ``benchmarks/ntk.py``, on the same weights and inputs.

Reads the folder that ``benchmarks/ntk.py`` writes for ``benchmarks/peers/nt_ntk.py``: per case
``<case>.npz`` (the model's state dict under its torch names, ``x`` the inputs, ``kernel``
sepmeasure's float64 full kernel ``(N, N, K, K)``) and ``<case>.json`` (``arch``: ``"sequential"``
with its ``layers``, or ``"resnet18"`` / ``"vit"`` with their ``kwargs``, built from ``tests/zoo.py``).
It rebuilds the model in torch (float32, eval mode), loads the state dict strictly, and computes the
full NTK with nngeometry's hook-based Jacobian generator (``TorchHooksJacobianBackend``) in two ways:

* ``gram``: ``GramMatrix(model, (x,))``, an ``FMatDense`` whose ``(K, N, K, N)`` tensor nngeometry
  assembles layer by layer from captured inputs and output cotangents (its NTK route);
* ``jacobian_contraction``: the generator's per-sample Jacobian ``(K, N, P)`` contracted over
  parameters.

Both take all ``N`` inputs as one batch (nngeometry's fastest setting). For each, it first checks
that the kernel equals sepmeasure's (relative Frobenius error ≤ ``--tol``), then times it: one
warm-up call, then the best of ``--repeats``. A model nngeometry refuses (a layer type it does not
know, such as ``nn.MultiheadAttention``'s ``out_proj``, or parameters outside its known layers, such
as a class token) or computes differently is reported with the reason, not timed. Writes
``{"versions", "cases": {case: {implementation: {"seconds", "rel_error"} or {"error"}}}}`` to
``--out``.

Run in the peers' environment: ``.venv-peers/bin/python benchmarks/peers/nngeometry_ntk.py DIR
--out t.json``; exits with status 3 and says so when nngeometry or torch is not installed there.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

MISSING = 3   # exit status: the peer library is not installed in this environment
try:
    import numpy as np
except ImportError:
    np = None

ZOO_DIR = Path(__file__).resolve().parents[2] / "tests"


def build_model(spec: dict):
    """The torch model described by a case's ``.json`` (``arch`` and its ``layers`` or ``kwargs``)."""
    import torch
    from collections import OrderedDict
    from torch import nn

    arch = spec.get("arch", "sequential")
    if arch == "sequential":
        class GlobalAvgPool(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x.mean(dim=tuple(range(2, x.ndim)))

        mods = {}
        for i, layer in enumerate(spec["layers"]):
            kind = layer["type"]
            name = layer.get("name", str(i))
            if kind == "conv":
                conv = {1: nn.Conv1d, 2: nn.Conv2d}[len(layer["stride"])]
                shape = layer["shape"]         # (out, in / groups, *kernel)
                mods[name] = conv(shape[1] * layer["groups"], shape[0], tuple(shape[2:]), stride=layer["stride"],
                                  padding=layer["padding"], dilation=layer["dilation"], groups=layer["groups"],
                                  bias=layer["bias"] is not None)
            elif kind == "linear":
                shape = layer["shape"]
                mods[name] = nn.Linear(shape[1], shape[0], bias=layer["bias"] is not None)
            elif kind in ("relu", "tanh", "flatten", "gap"):
                mods[name] = {"relu": nn.ReLU, "tanh": nn.Tanh, "flatten": nn.Flatten, "gap": GlobalAvgPool}[kind]()
            else:
                raise ValueError(f"layer type: expected conv, linear, relu, tanh, gap or flatten, got {kind!r}")
        return nn.Sequential(OrderedDict(mods))   # the torch names: the state dict's keys
    if arch in ("resnet18", "vit"):
        sys.path.insert(0, str(ZOO_DIR))
        import zoo
        return getattr(zoo, arch)(**spec.get("kwargs", {}))
    raise ValueError(f"arch: expected 'sequential', 'resnet18' or 'vit', got {arch!r}")


def load_case(path: Path):
    """``(model, x, our kernel)`` of one case: the model in eval mode with the saved weights, float32."""
    import torch

    spec = json.loads(path.with_suffix(".json").read_text())
    data = np.load(path.with_suffix(".npz"))
    model = build_model(spec)
    state = {k: torch.from_numpy(np.array(data[k])) for k in data.files if k not in ("x", "kernel")}
    model.load_state_dict(state, strict=True)
    return model.float().eval(), torch.from_numpy(np.array(data["x"])).float(), np.array(data["kernel"])


def implementations():
    import torch
    from nngeometry.backend import TorchHooksJacobianBackend
    from nngeometry.gram import GramMatrix
    from nngeometry.object import FMatDense

    def gram(model, x):
        g = GramMatrix(model, (x,), representation=FMatDense).to_torch()      # (K, N, K, N)
        return g.permute(1, 3, 0, 2)

    def jacobian_contraction(model, x):
        j = TorchHooksJacobianBackend(model=model).get_jacobian((x,))          # (K, N, P)
        return torch.einsum("kip,ljp->ijkl", j, j)

    return {"gram": gram, "jacobian_contraction": jacobian_contraction}


def run_case(path: Path, repeats: int, tol: float) -> dict:
    model, x, ours = load_case(path)
    result = {}
    for name, fn in implementations().items():
        try:
            k = fn(model, x).detach().double().numpy()
        except Exception as exc:  # noqa: BLE001 - what nngeometry says is the result
            msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
            result[name] = {"error": f"refused ({msg})"}
            print(f"  {path.stem:>12} {name:>22}: {result[name]['error']}", file=sys.stderr)
            continue
        if k.shape != ours.shape:
            result[name] = {"error": f"kernel of shape {k.shape}, expected {ours.shape}"}
            continue
        err = float(np.linalg.norm(k - ours) / np.linalg.norm(ours))
        if not err <= tol:
            result[name] = {"error": f"kernel differs from sepmeasure's on the same weights (relative error "
                                     f"{err:.2e} > {tol:g}); not timed", "rel_error": err}
            print(f"  {path.stem:>12} {name:>22}: {result[name]['error']}", file=sys.stderr)
            continue
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            fn(model, x)
            best = min(best, time.perf_counter() - start)
        result[name] = {"seconds": best, "rel_error": err}
        print(f"  {path.stem:>12} {name:>22}: {best:8.3f} s  rel. error vs sepmeasure {err:.1e}", file=sys.stderr)
    return result


def versions() -> dict:
    out = {}
    for p in ("nngeometry", "torch", "numpy"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="folder of <case>.npz / <case>.json written by benchmarks/ntk.py")
    parser.add_argument("--out", required=True, help="JSON file the timings are written to")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--cases", nargs="+", default=None, help="only these cases (file stems)")
    args = parser.parse_args(argv)
    cases = sorted(Path(args.folder).glob("*.npz"))
    if args.cases:
        cases = [c for c in cases if c.stem in args.cases]
    if not cases:
        raise SystemExit(f"folder: expected <case>.npz files in {args.folder}, found none")
    missing = [p for p, v in versions().items() if v is None]
    if missing:
        print(f"not installed in {sys.prefix}: {', '.join(missing)} (see benchmarks/peers/requirements*.txt)",
              file=sys.stderr)
        raise SystemExit(MISSING)
    import torch
    torch.manual_seed(0)
    report = {"versions": versions(), "threads": torch.get_num_threads(),
              "cases": {c.stem: run_case(c, args.repeats, args.tol) for c in cases}}
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
