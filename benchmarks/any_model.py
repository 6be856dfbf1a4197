"""Every tool on plain-torch models: what each accepts or refuses, and what it costs on ResNet-18.

Part 1 runs each tool on every model of the test zoo (``tests/zoo.py``: CIFAR ResNet-18 with
functional ReLUs and BatchNorm, VGG with max pooling, a ViT of ``TransformerEncoderLayer``s,
an MLP with BatchNorm1d and ``F.relu``, a 1-D CNN; no sepmeasure classes) and prints
"accepted" or the first line of the refusal.

Part 2 times, on the CIFAR ResNet-18 (width 64, 11.2 M parameters, 32x32 inputs, eval mode),
each tool against one plain forward pass of the same batch (the ratio is what the tool costs
in forward passes; best of ``REPEAT`` runs). The NTK and NPK use a width-16 ResNet-18 on 16
inputs, their own sizes stated in the row.

Run with ``python benchmarks/any_model.py`` on an otherwise idle machine.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import sepmeasure as sm  # noqa: E402
from sepmeasure.graph import trace_model  # noqa: E402

import zoo  # noqa: E402
from _timing import best_of  # noqa: E402

REPEAT = 2


def best(fn) -> float:
    return best_of(fn, REPEAT)[0]


def _outcome(fn) -> str:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the message is what we report
        return f"refused: {type(exc).__name__}: {str(exc).splitlines()[0][:110]}"
    return "accepted"


def acceptance() -> None:
    print("== what each tool does with each zoo model")
    for name, (make, shape) in zoo.ZOO.items():
        model = make().eval()
        x = torch.randn(6, *shape)
        tools = {
            "trace_model": lambda: trace_model(model, x),
            "record(pool=mean)": lambda: sm.record(model, x, pool="mean", progress=False),  # every leaf module
            "empirical_ntk": lambda: sm.empirical_ntk(model, x[:3], output="trace"),
            "make_linearizable": lambda: sm.make_linearizable(model),
            "average_path_length": lambda: sm.average_path_length(model),
            "apply_masks+fold": lambda: sm.fold(sm.apply_masks(model), tuple(shape)),
            "neural_path_kernel": lambda: sm.neural_path_kernel(model, x),
        }
        for tool, fn in tools.items():
            print(f"{name:9s} {tool:20s} {_outcome(fn)}")


def resnet_costs() -> None:
    torch.manual_seed(0)
    model = zoo.resnet18(width=64).eval()
    n = 128
    x = torch.randn(n, 3, 32, 32)
    y = torch.arange(n) % 2
    with torch.no_grad():
        forward = best(lambda: model(x))
    params = sum(p.numel() for p in model.parameters())
    print(f"\n== ResNet-18 width 64 ({params / 1e6:.1f} M parameters), {n} inputs 3x32x32, float32, "
          f"{torch.get_num_threads()} threads; forward pass {forward:.3f} s")
    acts = sm.record(model, x, layers=["layer2", "layer3", "layer4"], pool="mean", progress=False)
    relus = [n.name for n in trace_model(model).nodes.values() if n.kind == "nonlinearity"]  # F.relu calls
    rows = {
        "trace_model (fx + shapes)": lambda: trace_model(model, x[:1]),
        "record 3 stages, pool=mean": lambda: sm.record(model, x, layers=["layer2", "layer3", "layer4"],
                                                        pool="mean", progress=False),
        f"record all {len(relus)} F.relu calls, pool=mean": lambda: sm.record(model, x, layers=relus, pool="mean",
                                                                           progress=False),
        "layer_separability md_lsm+probe, 3 layers": lambda: sm.layer_separability(
            acts, y, measures=("md_lsm", "linear_probe"), progress=False),
        "make_linearizable + average_path_length": lambda: sm.average_path_length(sm.make_linearizable(model)),
        "apply_masks + fold": lambda: sm.fold(sm.apply_masks(model), (3, 32, 32)),
    }
    for label, fn in rows.items():
        t = best(fn)
        print(f"{label:45s} {t:8.3f} s  {t / forward:7.2f} forward passes")
    small = zoo.resnet18(width=16).eval()
    xs = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        f_small = best(lambda: small(xs))
    for label, fn in {
        "empirical_ntk trace, width 16, 16 inputs": lambda: sm.empirical_ntk(small, xs, output="trace"),
        # float64: the NPK multiplies 17 layers' gate overlaps (up to 16 x 32 x 32 units each), beyond float32
        "neural_path_kernel (float64), width 16, 16 inputs": lambda: sm.neural_path_kernel(small.double(),
                                                                                         xs.double()),
    }.items():
        t = best(fn)
        print(f"{label:45s} {t:8.3f} s  {t / f_small:7.1f} forward passes of the width-16 net")


if __name__ == "__main__":
    acceptance()
    resnet_costs()
