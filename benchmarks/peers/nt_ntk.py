"""neural-tangents' empirical NTK of a model saved by ``benchmarks/ntk.py``, on the same weights and inputs.

Reads ``<case>.npz`` (weights under their torch names, ``x`` the inputs, ``kernel`` sepmeasure's
full kernel ``(N, N, K, K)``) and ``<case>.json`` (the layers in order), builds the same function in
JAX, and for each of neural-tangents' three implementations (Jacobian contraction, NTK-vector
products, structured derivatives) first checks that its kernel equals sepmeasure's (relative
Frobenius error, must be ≤ ``--tol``), then times it (jitted, compile excluded: one warm-up call,
then the best of ``--repeats`` calls). Writes ``{"versions", "cases": {case: {implementation:
{"seconds", "rel_error"}}}}`` to ``--out``.

Run in the peers' environment: ``.venv-peers/bin/python benchmarks/peers/nt_ntk.py DIR --out t.json``.
Runs without torch: layers supported are ``conv`` (1-D or 2-D, stride, padding, dilation, groups),
``linear``, ``relu``, ``tanh``, ``gap`` (mean over positions) and ``flatten``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import neural_tangents as nt

IMPLEMENTATIONS = {
    "jacobian_contraction": nt.NtkImplementation.JACOBIAN_CONTRACTION,
    "ntk_vector_products": nt.NtkImplementation.NTK_VECTOR_PRODUCTS,
    "structured_derivatives": nt.NtkImplementation.STRUCTURED_DERIVATIVES,
}


def make_apply(layers: list[dict]):
    def apply_fn(params, x):
        for layer in layers:
            kind = layer["type"]
            if kind == "conv":
                w = params[layer["weight"]]
                nd = w.ndim - 2
                spatial = "HW"[:nd] if nd == 2 else "H"
                dn = ("NC" + spatial, "OI" + spatial, "NC" + spatial)
                x = jax.lax.conv_general_dilated(
                    x, w, window_strides=layer["stride"], padding=[(p, p) for p in layer["padding"]],
                    rhs_dilation=layer["dilation"], dimension_numbers=dn, feature_group_count=layer["groups"])
                if layer.get("bias"):
                    x = x + params[layer["bias"]].reshape((1, -1) + (1,) * nd)
            elif kind == "linear":
                x = x @ params[layer["weight"]].T
                if layer.get("bias"):
                    x = x + params[layer["bias"]]
            elif kind == "relu":
                x = jax.nn.relu(x)
            elif kind == "tanh":
                x = jnp.tanh(x)
            elif kind == "gap":
                x = x.mean(axis=tuple(range(2, x.ndim)))
            elif kind == "flatten":
                x = x.reshape(x.shape[0], -1)
            else:
                raise ValueError(f"layer type: expected conv, linear, relu, tanh, gap or flatten, got {kind!r}")
        return x
    return apply_fn


def run_case(path: Path, repeats: int, tol: float) -> dict:
    layers = json.loads(path.with_suffix(".json").read_text())["layers"]
    data = np.load(path.with_suffix(".npz"))
    x = jnp.asarray(data["x"])
    ours = data["kernel"]
    params = {k: jnp.asarray(data[k]) for k in data.files if k not in ("x", "kernel")}
    apply_fn = make_apply(layers)
    result = {}
    for name, impl in IMPLEMENTATIONS.items():
        fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(), vmap_axes=0, implementation=impl))
        k = np.asarray(fn(x, None, params))                    # (N, N, K, K); also compiles
        err = float(np.linalg.norm(k - ours) / np.linalg.norm(ours))
        if not err <= tol:
            raise SystemExit(f"{path.stem}/{name}: kernel differs from sepmeasure's on the same weights "
                             f"(relative error {err:.2e} > {tol:g}); not timed")
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn(x, None, params))
            best = min(best, time.perf_counter() - start)
        result[name] = {"seconds": best, "rel_error": err}
        print(f"  {path.stem:>12} {name:>24}: {best:8.3f} s  rel. error vs sepmeasure {err:.1e}", file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="folder of <case>.npz / <case>.json written by benchmarks/ntk.py")
    parser.add_argument("--out", required=True, help="JSON file the timings are written to")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tol", type=float, default=1e-5)
    args = parser.parse_args()
    cases = sorted(Path(args.folder).glob("*.npz"))
    if not cases:
        raise SystemExit(f"folder: expected <case>.npz files in {args.folder}, found none")
    report = {"versions": {p: version(p) for p in ("jax", "jaxlib", "neural-tangents", "numpy")},
              "devices": [str(d) for d in jax.devices()],
              "cases": {c.stem: run_case(c, args.repeats, args.tol) for c in cases}}
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
