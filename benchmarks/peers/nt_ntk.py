"""neural-tangents' empirical NTK of a model saved by ``benchmarks/ntk.py``, on the same weights and inputs.

Reads ``<case>.npz`` (the state dict under its torch names, ``x`` the inputs, ``kernel`` sepmeasure's
full kernel ``(N, N, K, K)``) and ``<case>.json`` (``arch``: ``"sequential"`` with its layers in
order, or ``"resnet18"`` / ``"vit"`` with the ``kwargs`` of ``tests/zoo.py``'s constructors;
``params``: which arrays are parameters, the others being buffers such as BatchNorm's running
statistics), writes the same function in plain JAX (``jax.lax`` convolutions, BatchNorm in eval
as an affine map of the running statistics, the encoder layer of ``nn.TransformerEncoderLayer``
with post-norm, ReLU and packed ``in_proj`` attention: ``stax`` has no transformer encoder, so
none of the models goes through it), and for each of neural-tangents' three implementations
(Jacobian contraction, NTK-vector products, structured derivatives) first checks that its kernel
equals sepmeasure's (relative Frobenius error, must be ≤ ``--tol``), then times it (jitted,
compile excluded: one warm-up call, then the best of ``--repeats`` calls); an implementation that
fails or disagrees is reported with the reason instead. Writes ``{"versions", "cases": {case: {implementation: {"seconds", "rel_error"}
or {"error"}}}}`` to ``--out``; exits with status 3 and says so when jax or neural-tangents is not
installed.

Run in the peers' environment: ``.venv-peers/bin/python benchmarks/peers/nt_ntk.py DIR --out t.json``.
Runs without torch: sequential layers supported are ``conv`` (1-D or 2-D, stride, padding,
dilation, groups), ``linear``, ``relu``, ``tanh``, ``gap`` (mean over positions) and ``flatten``.
``--cases`` selects cases by name.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

MISSING = 3   # exit status: the peer library is not installed in this environment
try:
    import numpy as np
    import jax
    import jax.numpy as jnp
    import neural_tangents as nt
except ImportError as exc:
    print(f"not installed in {sys.prefix}: {exc.name} (see benchmarks/peers/requirements.txt)", file=sys.stderr)
    raise SystemExit(MISSING) from None

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


def _conv(x, w, stride, padding, b=None):
    nd = w.ndim - 2
    spatial = "HW"[:nd] if nd == 2 else "H"
    dn = ("NC" + spatial, "OI" + spatial, "NC" + spatial)
    x = jax.lax.conv_general_dilated(x, w, window_strides=(stride,) * nd, padding=[(padding, padding)] * nd,
                                     dimension_numbers=dn)
    return x if b is None else x + b.reshape((1, -1) + (1,) * nd)


def _batch_norm(x, p, buffers, name, eps=1e-5):
    """``nn.BatchNorm2d`` in eval mode: the running statistics' affine map."""
    scale = p[f"{name}.weight"] / jnp.sqrt(buffers[f"{name}.running_var"] + eps)
    shift = p[f"{name}.bias"] - buffers[f"{name}.running_mean"] * scale
    return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


def _layer_norm(x, p, name, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * p[f"{name}.weight"] + p[f"{name}.bias"]


def make_resnet18(buffers: dict):
    """``tests/zoo.py``'s CIFAR ResNet-18 (3×3 stem, four stages of two basic blocks, BatchNorm in eval)."""
    def block(p, x, prefix, stride):
        out = jax.nn.relu(_batch_norm(_conv(x, p[f"{prefix}.conv1.weight"], stride, 1), p, buffers, f"{prefix}.bn1"))
        out = _batch_norm(_conv(out, p[f"{prefix}.conv2.weight"], 1, 1), p, buffers, f"{prefix}.bn2")
        if f"{prefix}.shortcut.0.weight" in p:
            x = _batch_norm(_conv(x, p[f"{prefix}.shortcut.0.weight"], stride, 0), p, buffers, f"{prefix}.shortcut.1")
        return jax.nn.relu(out + x)

    def apply_fn(p, x):
        x = jax.nn.relu(_batch_norm(_conv(x, p["conv1.weight"], 1, 1), p, buffers, "bn1"))
        for stage in range(1, 5):
            x = block(p, x, f"layer{stage}.0", 1 if stage == 1 else 2)
            x = block(p, x, f"layer{stage}.1", 1)
        x = x.mean(axis=(2, 3))
        return x @ p["linear.weight"].T + p["linear.bias"]
    return apply_fn


def make_vit(kwargs: dict):
    """``tests/zoo.py``'s ViT: patch conv, class token, position embedding, post-norm encoder layers
    (``nn.TransformerEncoderLayer``: packed-projection self-attention, ReLU feed-forward), LayerNorm, head."""
    heads, depth, patch = kwargs["heads"], kwargs["depth"], kwargs["patch"]

    def attention(p, x, prefix):
        n, t, d = x.shape
        qkv = x @ p[f"{prefix}.in_proj_weight"].T + p[f"{prefix}.in_proj_bias"]
        q, k, v = (a.reshape(n, t, heads, d // heads).transpose(0, 2, 1, 3) for a in jnp.split(qkv, 3, axis=-1))
        w = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / jnp.sqrt(d // heads), axis=-1)
        out = (w @ v).transpose(0, 2, 1, 3).reshape(n, t, d)
        return out @ p[f"{prefix}.out_proj.weight"].T + p[f"{prefix}.out_proj.bias"]

    def apply_fn(p, x):
        x = _conv(x, p["patch_embed.weight"], patch, 0, p["patch_embed.bias"])
        x = x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1)           # [N, T, D]
        cls = jnp.broadcast_to(p["cls_token"], (x.shape[0], 1, x.shape[2]))
        x = jnp.concatenate([cls, x], axis=1) + p["pos_embed"]
        for i in range(depth):
            pre = f"enc.layers.{i}"
            x = _layer_norm(x + attention(p, x, f"{pre}.self_attn"), p, f"{pre}.norm1")
            ff = jax.nn.relu(x @ p[f"{pre}.linear1.weight"].T + p[f"{pre}.linear1.bias"])
            x = _layer_norm(x + ff @ p[f"{pre}.linear2.weight"].T + p[f"{pre}.linear2.bias"], p, f"{pre}.norm2")
        x = _layer_norm(x, p, "norm")
        return x[:, 0] @ p["head.weight"].T + p["head.bias"]
    return apply_fn


def run_case(path: Path, repeats: int, tol: float) -> dict:
    spec = json.loads(path.with_suffix(".json").read_text())
    data = np.load(path.with_suffix(".npz"))
    x = jnp.asarray(data["x"])
    ours = data["kernel"]
    names = spec.get("params") or [k for k in data.files if k not in ("x", "kernel")]
    params = {k: jnp.asarray(data[k]) for k in names}
    buffers = {k: jnp.asarray(data[k]) for k in data.files if k not in ("x", "kernel", *names)}
    arch = spec.get("arch", "sequential")
    if arch == "sequential":
        apply_fn = make_apply(spec["layers"])
    elif arch == "resnet18":
        apply_fn = make_resnet18(buffers)
    elif arch == "vit":
        apply_fn = make_vit(spec["kwargs"])
    else:
        raise SystemExit(f"{path.stem}: arch: expected 'sequential', 'resnet18' or 'vit', got {arch!r}")
    result = {}
    for name, impl in IMPLEMENTATIONS.items():
        fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(), vmap_axes=0, implementation=impl))
        try:
            k = np.asarray(fn(x, None, params))                # (N, N, K, K); also compiles
        except Exception as exc:  # noqa: BLE001 - what neural-tangents says is the result
            result[name] = {"error": f"failed ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"}
            print(f"  {path.stem:>12} {name:>24}: {result[name]['error']}", file=sys.stderr)
            continue
        err = float(np.linalg.norm(k - ours) / np.linalg.norm(ours))
        if not err <= tol:
            result[name] = {"error": f"kernel differs from sepmeasure's on the same weights (relative error "
                                     f"{err:.2e} > {tol:g}); not timed", "rel_error": err}
            print(f"  {path.stem:>12} {name:>24}: {result[name]['error']}", file=sys.stderr)
            continue
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
    parser.add_argument("--cases", nargs="+", default=None, help="only these cases (file stems)")
    args = parser.parse_args()
    cases = sorted(Path(args.folder).glob("*.npz"))
    if args.cases:
        cases = [c for c in cases if c.stem in args.cases]
    if not cases:
        raise SystemExit(f"folder: expected <case>.npz files in {args.folder}, found none")
    report = {"versions": {p: version(p) for p in ("jax", "jaxlib", "neural-tangents", "numpy")},
              "devices": [str(d) for d in jax.devices()],
              "cases": {c.stem: run_case(c, args.repeats, args.tol) for c in cases}}
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
