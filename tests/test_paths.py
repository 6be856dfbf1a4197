"""Path-length statistics: closed forms, brute-force enumeration, models, speed, bad input."""
from __future__ import annotations

import math
import time
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom
from torch import nn

from sepmeasure.models import CNN, MLP, ResNet
from sepmeasure.models.gated import DGN, DLGN
from sepmeasure.models.linearizable import make_linearizable
from sepmeasure.models.masked import apply_masks
from sepmeasure.paths import (PathGraph, PathLayer, average_path_length, path_graph, path_length_distribution)


def _chain(flags_per_layer, in_width=3, out_width=2) -> PathGraph:
    specs = [{"name": "in", "width": in_width}]
    specs += [{"name": f"h{i}", "nonlinear": f} for i, f in enumerate(flags_per_layer)]
    specs += [{"name": "out", "width": out_width}]
    return PathGraph.from_layers(specs)


def _residual_chain(n: int) -> PathGraph:
    """Width-1 residual stream; block i's branch holds one non-linear width-1 layer."""
    specs = [{"name": "x0", "width": 1}]
    for i in range(n):
        specs.append({"name": f"b{i}", "nonlinear": [True], "inputs": [f"x{i}"]})
        specs.append({"name": f"x{i + 1}", "width": 1, "inputs": [(f"x{i}", "identity"), (f"b{i}", "identity")]})
    specs.append({"name": "out", "width": 1})
    return PathGraph.from_layers(specs)


def _brute_force(graph: PathGraph):
    """Every input-to-output path, enumerated forward from the input (independent of the library code).

    Returns {length: (number of paths, total backward-walk probability)} with exact fractions.
    """
    layers = graph.layers
    consumers = {layer.name: [] for layer in layers}
    for layer in layers:
        for src, kind in layer.inputs:
            consumers[src].append((layer, kind))
    out_name = layers[-1].name
    result: dict[int, list] = {}

    def extend(layer, c, length, prob):
        length += int(layer.nonlinear[c])
        if layer.name == out_name:
            entry = result.setdefault(length, [0, Fraction(0)])
            entry[0] += 1
            entry[1] += prob * Fraction(1, layer.width)  # the walk starts at a uniform output channel
            return
        for nxt, kind in consumers[layer.name]:
            # the walk from nxt back to (layer, c): branch 1/m, then channel 1/|source| within a full branch
            step = Fraction(1, len(nxt.inputs)) * (Fraction(1, layer.width) if kind == "full" else 1)
            targets = range(nxt.width) if kind == "full" else [c]
            for t in targets:
                extend(nxt, t, length, prob * step)

    for c in range(layers[0].width):
        extend(layers[0], c, 0, Fraction(1))
    return result


# ----------------------------------------------------------------------------- closed forms
@settings(max_examples=30, deadline=None)
@given(flags=st.lists(st.lists(st.booleans(), min_size=1, max_size=6), min_size=1, max_size=7),
       in_width=st.integers(1, 4), out_width=st.integers(1, 4))
def test_plain_chain_gives_the_sum_of_nonlinear_fractions(flags, in_width, out_width):
    g = _chain(flags, in_width, out_width)
    expected = sum(sum(f) / len(f) for f in flags)
    for normalized in (False, True):
        assert float(average_path_length(g, normalized=normalized)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n", [1, 2, 5, 12])
def test_residual_blocks_give_half_n_and_binomial(n):
    g = _residual_chain(n)
    want = binom.pmf(np.arange(n + 1), n, 0.5)
    for normalized in (False, True):
        d = path_length_distribution(g, normalized=normalized)
        np.testing.assert_allclose(d.probabilities, want, rtol=0, atol=1e-12)
        assert float(average_path_length(g, normalized=normalized)) == pytest.approx(n / 2, abs=1e-12)
        assert d.std == pytest.approx(math.sqrt(n) / 2, abs=1e-9)
    assert path_length_distribution(g).log10_paths == pytest.approx(n * math.log10(2))


def test_real_resnet_with_one_nonlinear_channel_per_branch_is_binomial():
    n = 6
    net = make_linearizable(ResNet(1, width=1, n_blocks=n, out_features=1))
    for i in range(n):
        net.blocks[i].act1.freeze_channels(torch.tensor([True]))  # act1 linear, act2 (ReLU) non-linear
    net.act.freeze_channels(torch.tensor([True]))
    want = binom.pmf(np.arange(n + 1), n, 0.5)
    for normalized in (False, True):
        np.testing.assert_allclose(path_length_distribution(net, normalized=normalized).probabilities, want,
                                   atol=1e-12)


def test_normalized_and_unnormalized_differ_where_branch_widths_differ():
    """One residual block whose branch has 4 channels: 4 of 5 paths go through the branch."""
    g = PathGraph.from_layers([
        {"name": "x0", "width": 1},
        {"name": "b", "nonlinear": [True] * 4, "inputs": ["x0"]},
        {"name": "x1", "width": 1, "inputs": [("x0", "identity"), "b"]},
        {"name": "out", "width": 1},
    ])
    assert float(average_path_length(g)) == pytest.approx(4 / 5)
    assert float(average_path_length(g, normalized=True)) == pytest.approx(1 / 2)


# ----------------------------------------------------------------------------- brute force
@st.composite
def _random_graphs(draw):
    n_layers = draw(st.integers(2, 6))
    specs = [{"name": "L0", "nonlinear": draw(st.lists(st.booleans(), min_size=1, max_size=3))}]
    for i in range(1, n_layers):
        flags = draw(st.lists(st.booleans(), min_size=1, max_size=3))
        width = len(flags)
        n_inputs = draw(st.integers(1, min(3, i)))
        sources = draw(st.lists(st.integers(0, i - 1), min_size=n_inputs, max_size=n_inputs))
        inputs = []
        for s in sources:
            kind = "identity" if len(specs[s]["nonlinear"]) == width and draw(st.booleans()) else "full"
            inputs.append((f"L{s}", kind))
        specs.append({"name": f"L{i}", "nonlinear": flags, "inputs": inputs})
    return PathGraph.from_layers(specs)


@settings(max_examples=50, deadline=None)
@given(graph=_random_graphs())
def test_dynamic_programming_agrees_with_brute_force(graph):
    paths = _brute_force(graph)
    total = sum(count for count, _ in paths.values())
    longest = max(paths)
    counts = np.array([paths.get(k, [0, 0])[0] for k in range(longest + 1)], dtype=float) / total
    walk = np.array([float(paths.get(k, [0, Fraction(0)])[1]) for k in range(longest + 1)])
    assert walk.sum() == pytest.approx(1.0)
    for normalized, want in ((False, counts), (True, walk)):
        for method in ("dp", "enumeration"):
            d = path_length_distribution(graph, normalized=normalized, method=method)
            got = np.zeros(max(len(d.probabilities), len(want)))
            got[:len(d.probabilities)] = d.probabilities
            ref = np.zeros_like(got)
            ref[:len(want)] = want
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
            assert float(average_path_length(graph, normalized=normalized, method=method)) == pytest.approx(
                float(np.dot(np.arange(len(want)), want)), abs=1e-12)
        assert path_length_distribution(graph, normalized).log10_paths == pytest.approx(math.log10(total))


# ----------------------------------------------------------------------------- models
def test_mlp_cnn_and_gated_models():
    assert float(average_path_length(MLP(4, [8, 8, 8], 2))) == 3.0
    assert float(average_path_length(MLP(4, [8, 8], 2, activation="identity"))) == 0.0
    assert float(average_path_length(CNN(1, [4, 4], 3, activation="gelu"), normalized=True)) == 2.0
    for cls in (DGN, DLGN):
        for arch in ("mlp", "cnn"):
            assert float(average_path_length(cls(4, [5, 5, 5], 2, arch=arch))) == 3.0
    g = path_graph(DLGN(4, [5, 6], 2, value_input="ones"))
    assert [layer.name for layer in g.layers] == ["input", "value.layers.0", "value.layers.1", "value.head"]


def test_masked_and_linearizable_models_count_their_linear_channels():
    masked = apply_masks(MLP(4, [4, 5], 2))
    masked.layers[0].act.set_nonlinear(torch.tensor([True, False, False, True]))
    masked.layers[1].act.set_nonlinear(torch.tensor([False] * 5))
    for normalized in (False, True):
        assert float(average_path_length(masked, normalized=normalized)) == pytest.approx(0.5)
    lin = make_linearizable(CNN(1, [4, 4], 3))
    lin.layers[1].act.freeze_channels(torch.tensor([True, True, True, False]))
    assert float(average_path_length(lin)) == pytest.approx(1.25)
    prelu = MLP(3, [2], 2, activation="prelu")  # one shared slope, set to 1: linear
    with torch.no_grad():
        prelu.layers[0].act.weight.fill_(1.0)
    assert float(average_path_length(prelu)) == 0.0


def test_models_and_flag_tensors_on_device(device):
    masked = apply_masks(MLP(4, [4, 5], 2)).to(device)
    masked.layers[0].act.set_nonlinear(torch.tensor([True, False, False, True], device=device))
    assert float(average_path_length(masked)) == pytest.approx(1.5)
    lin = make_linearizable(CNN(1, [4, 4], 3)).to(device)
    lin.layers[1].act.freeze_channels(torch.tensor([True, True, True, False], device=device))
    assert float(average_path_length(lin)) == pytest.approx(1.25)
    # flags given as tensors on the device, e.g. straight from nonlinear_channels()
    flags = masked.layers[0].act.nonlinear_channels()
    assert flags.device.type == device.type
    g = PathGraph.from_layers([{"name": "x", "width": 4}, {"name": "h", "nonlinear": flags},
                               {"name": "l", "linear": torch.tensor([True, False], device=device)},
                               {"name": "y", "width": 1}])
    assert [layer.nonlinear for layer in g.layers[1:3]] == [(True, False, False, True), (False, True)]
    assert float(average_path_length(g)) == pytest.approx(1.0)


def test_resnet_graph_and_closed_form():
    # every block: act1 and act2 non-linear on the branch, the skip has none; then the final act
    n = 7
    for normalized in (False, True):
        d = path_length_distribution(ResNet(1, width=3, n_blocks=n, out_features=2), normalized=normalized)
        if normalized:  # each block adds 2 with probability 1/2: 1 + 2 * Binomial(n, 1/2)
            want = np.zeros(2 * n + 2)
            want[1 + 2 * np.arange(n + 1)] = binom.pmf(np.arange(n + 1), n, 0.5)
            np.testing.assert_allclose(d.probabilities, want, atol=1e-12)
        else:  # a branch holds 3 * 3 = 9 paths, the skip 1: the branch is taken with probability 9/10
            assert d.mean == pytest.approx(1 + 2 * n * 9 / 10)


def test_sequential_models():
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Dropout(0.1), nn.Linear(4, 4), nn.Identity(),
                        nn.Linear(4, 2))
    assert float(average_path_length(seq)) == 1.0
    conv = nn.Sequential(nn.Conv1d(1, 3, 3), nn.Tanh(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(3, 2))
    assert float(average_path_length(conv)) == 1.0


def test_deep_resnet_distribution_is_fast():
    net = ResNet(1, width=16, n_blocks=60, out_features=10)
    start = time.perf_counter()
    d = path_length_distribution(net, normalized=True)
    u = path_length_distribution(net, normalized=False)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, elapsed
    assert d.mean == pytest.approx(61.0)
    # counting paths: the stem gives 16 per channel, each block maps a uniform count a to
    # a + 16 * 16 a (skip plus conv-act-conv branch), the head sums 16 channels into 10 outputs;
    # a block's branch holds 256 of its 257 paths, each with 2 non-linear channels, then the final act
    assert u.log10_paths == pytest.approx(math.log10(16 * 10) + 60 * math.log10(257), rel=1e-12)
    assert u.mean == pytest.approx(1 + 2 * 60 * 256 / 257, rel=1e-12)


def test_wide_deep_graphs_do_not_overflow():
    flags = [[True] * 50 + [False] * 50] * 200
    g = _chain(flags, 100, 10)
    d = path_length_distribution(g)
    assert d.log10_paths == pytest.approx(math.log10(100) * 201 + 1)  # 100^201 * 10 paths
    assert d.mean == pytest.approx(100.0) and np.isfinite(d.probabilities).all()


def test_tables():
    g = _chain([[True, False], [True]])
    assert g.to_frame().nonlinear_fraction.tolist() == [0.0, 0.5, 1.0, 0.0]
    frame = path_length_distribution(g).to_frame()
    assert frame.probability.sum() == pytest.approx(1.0) and frame.length.tolist() == [0, 1, 2]
    # every path has the non-linear channel of h1; half of them also the one of h0
    assert frame.probability.tolist() == pytest.approx([0.0, 0.5, 0.5], abs=1e-12)
    assert frame.normalized.tolist() == [False] * 3


# ----------------------------------------------------------------------------- bad input
def test_unsupported_layers_are_named():
    net = MLP(3, [4, 4], 2)
    net.layers[1].act = nn.Softmax(dim=1)
    with pytest.raises(TypeError, match=r"unsupported layer 'layers\.1\.act' \(Softmax\)"):
        average_path_length(net)
    with pytest.raises(TypeError, match=r"unsupported layer '2' \(MaxPool1d\)"):
        average_path_length(nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(),
                                          nn.Linear(2, 2)))
    with pytest.raises(TypeError, match=r"unsupported layer '0' \(ReLU\) before the first"):
        average_path_length(nn.Sequential(nn.ReLU(), nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="unsupported model"):
        average_path_length(nn.LSTM(3, 4))
    with pytest.raises(TypeError, match="unsupported model"):
        path_graph("resnet")


def test_graph_validation_errors():
    with pytest.raises(ValueError, match="identity branch needs equal widths"):
        PathGraph.from_layers([{"name": "a", "width": 2}, {"name": "b", "width": 3, "inputs": [("a", "identity")]}])
    with pytest.raises(ValueError, match="not defined before it"):
        PathGraph.from_layers([{"name": "a", "width": 2}, {"name": "b", "width": 3, "inputs": ["c"]}])
    with pytest.raises(ValueError, match="unique name"):
        PathGraph.from_layers([{"name": "a", "width": 2}, {"name": "a", "width": 3}])
    with pytest.raises(ValueError, match="input kind"):
        PathGraph.from_layers([{"name": "a", "width": 2}, {"name": "b", "width": 2, "inputs": [("a", "skip")]}])
    with pytest.raises(ValueError, match="at least 2"):
        PathGraph([PathLayer("a", (False,))])
    with pytest.raises(ValueError, match="expected 'width'"):
        PathGraph.from_layers([{"name": "a", "nonlinear": True}, {"name": "b", "width": 1}])
    with pytest.raises(ValueError, match="at least one input branch"):
        PathGraph([PathLayer("a", (False,)), PathLayer("b", (True,))])
    with pytest.raises(ValueError, match="unknown keys"):
        PathGraph.from_layers([{"name": "a", "width": 1, "skip": True}, {"name": "b", "width": 1}])
    with pytest.raises(ValueError, match="method"):
        path_length_distribution(_chain([[True]]), method="sample")
    with pytest.raises(TypeError, match="normalized"):
        average_path_length(_chain([[True]]), normalized="yes")
    with pytest.raises(ValueError, match="enumeration"):
        path_length_distribution(_chain([[True] * 20] * 5, 20, 20), method="enumeration")
