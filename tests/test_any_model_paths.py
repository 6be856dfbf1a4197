"""Path lengths and linearizable units on plain-torch user models (traced graphs).

Closed forms: the normalized walk of a CIFAR ResNet-18 (1 + 8 x 1.5 = 13); hand-built channel
graphs checked by path enumeration; every conversion keeps the function exactly at init.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sepmeasure import (LinearizablePReLU, LinearizationSchedule, PathGraph, SparsityPrior, average_path_length,
                        fit, load_dataset, make_linearizable, nonlinear_fraction, path_graph,
                        path_length_distribution, snap_linear)

import zoo


def test_resnet18_normalized_apl_closed_form():
    # The package's normalized walk (paths.py): start at a uniform output channel, walk back, at a
    # residual sum take each branch with probability 1/2, count the non-linear channels passed.
    # ResNet-18: the stem ReLU is on every path (1). Each of the 8 blocks ends in a ReLU after its
    # sum (on every path: 1) and holds one ReLU inside its branch (taken with probability 1/2:
    # 0.5); the shortcut (identity or 1x1 conv + BN) holds none. Hence 1 + 8 * (1 + 0.5) = 13.
    net = zoo.resnet18()  # width 64, as in the paper's setting
    apl = average_path_length(net, normalized=True)
    assert float(apl) == pytest.approx(13.0, abs=1e-12)
    assert apl.max_length == 17  # 1 + 8 * 2: every branch taken
    # the distribution: 9 + Binomial(8, 1/2)
    d = path_length_distribution(net, normalized=True)
    from scipy.stats import binom
    want = [0.0] * 9 + list(binom.pmf(range(9), 8, 0.5))
    assert d.probabilities.tolist() == pytest.approx(want, abs=1e-12)


class TinyRes(nn.Module):
    """Stem conv+ReLU, one identity block and one downsampling block (1x1 conv shortcut), F.relu calls."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(1, 2, 3, padding=1)
        self.a1, self.a2 = nn.Conv1d(2, 2, 3, padding=1), nn.Conv1d(2, 2, 3, padding=1)
        self.b1, self.b2 = nn.Conv1d(2, 3, 3, padding=1), nn.Conv1d(3, 3, 3, padding=1)
        self.short = nn.Conv1d(2, 3, 1)
        self.bn = nn.BatchNorm1d(3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        h = F.relu(self.stem(x))
        h = torch.relu(h + self.a2(F.relu(self.a1(h))))
        h = F.relu(self.bn(self.b2(torch.relu(self.b1(h)))) + self.short(h))
        return self.head(h.mean(-1))


def tiny_res_graph() -> PathGraph:
    """TinyRes's channel graph written by hand (names are free; only the structure matters)."""
    return PathGraph.from_layers([
        {"name": "x", "width": 1},
        {"name": "stem", "nonlinear": [True] * 2, "inputs": ["x"]},
        {"name": "a1", "nonlinear": [True] * 2, "inputs": ["stem"]},
        {"name": "a2", "width": 2, "inputs": ["a1"]},
        {"name": "sum1", "width": 2, "inputs": [("stem", "identity"), ("a2", "identity")]},
        {"name": "r1", "nonlinear": [True] * 2, "inputs": [("sum1", "identity")]},
        {"name": "b1", "nonlinear": [True] * 3, "inputs": ["r1"]},
        {"name": "b2", "width": 3, "inputs": ["b1"]},
        {"name": "short", "width": 3, "inputs": ["r1"]},
        {"name": "sum2", "width": 3, "inputs": [("b2", "identity"), ("short", "identity")]},
        {"name": "r2", "nonlinear": [True] * 3, "inputs": [("sum2", "identity")]},
        {"name": "head", "width": 2, "inputs": ["r2"]},
    ])


@pytest.mark.parametrize("normalized", [False, True])
def test_small_residual_graph_against_enumeration_of_a_hand_built_graph(normalized):
    traced = path_length_distribution(TinyRes(), normalized=normalized)
    by_hand = path_length_distribution(tiny_res_graph(), normalized=normalized, method="enumeration")
    assert traced.probabilities.tolist() == pytest.approx(by_hand.probabilities.tolist(), abs=1e-12)
    assert traced.log10_paths == pytest.approx(by_hand.log10_paths, rel=1e-12)
    assert [layer.width for layer in path_graph(TinyRes()).layers] == [1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 2]


def test_chains_and_shared_modules():
    # two ReLU layers on every path: 2 (functional F.relu with BatchNorm1d; a shared nn.ReLU called twice)
    for make in (zoo.bn_mlp, zoo.cnn1d):
        for normalized in (False, True):
            assert float(average_path_length(make(), normalized=normalized)) == pytest.approx(2.0)
    names = [layer.name for layer in path_graph(zoo.cnn1d()).layers]
    assert names == ["input", "act", "act#1", "head"]


def test_path_tools_refuse_max_pooling_and_attention_naming_them():
    with pytest.raises(TypeError, match=r"unsupported layer 'features\.3' \(MaxPool2d\).*max pooling"):
        average_path_length(zoo.vgg())
    with pytest.raises(TypeError, match=r"unsupported layer 'cat' \(cat\)"):
        average_path_length(zoo.vit())


def test_make_linearizable_on_resnet18_same_function_and_path_lengths():
    net = zoo.resnet18(width=4, num_classes=3).double().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    lin = make_linearizable(net)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(lin(x), net(x), rtol=0, atol=1e-12)
    table = nonlinear_fraction(lin)
    assert len(table) == 17 and table.nonlinear_fraction.tolist() == [1.0] * 17
    assert float(average_path_length(lin, normalized=True)) == pytest.approx(13.0)
    # freezing the ReLU inside every block's branch at slope 1: each block now adds only its final ReLU
    inner = ["relu_1", "relu_3", "relu_5", "relu_7", "relu_9", "relu_11", "relu_13", "relu_15"]
    for name in inner:
        unit = lin.get_submodule(name)
        unit.freeze_channels(torch.ones(unit.channels, dtype=torch.bool))
    assert float(average_path_length(lin, normalized=True)) == pytest.approx(1.0 + 8.0)


def test_linearizable_tools_on_a_functional_mlp_and_a_shared_activation():
    net = zoo.bn_mlp(in_features=2, hidden=(6, 5), num_classes=2)
    lin = make_linearizable(net)
    assert isinstance(lin, torch.fx.GraphModule) and lin.__class__.__name__ == "BNMLP"
    assert [type(lin.get_submodule(n)).__name__ for n in ("relu", "relu_1")] == ["LinearizablePReLU"] * 2
    net.eval()
    lin.eval()
    x = torch.randn(7, 2)
    torch.testing.assert_close(lin(x), net(x), rtol=0, atol=1e-6)
    prior = SparsityPrior(1.0, eps=1e-12)
    assert float(prior(lin).detach()) == pytest.approx(11.0, rel=1e-5)  # 6 + 5 channels at alpha = 0
    with torch.no_grad():
        lin.get_submodule("relu").slope[2] = 0.995
    assert snap_linear(lin, 1e-2) == 1
    assert nonlinear_fraction(lin).nonlinear_channels.tolist() == [5, 5]
    lin.train()
    schedule = LinearizationSchedule(SparsityPrior(0.01), start_epoch=1)
    fit(lin, load_dataset("two_moons", size=64), epochs=1, penalty=schedule.prior, callbacks=[schedule],
        progress=False)
    assert set(schedule.table.layer) == {"relu", "relu_1"}
    # one module called twice becomes two units (one per call), the rest of the model untouched
    cnn = zoo.cnn1d(in_channels=2, widths=(3, 3), num_classes=2)
    lc = make_linearizable(cnn)
    units = [n for n, m in lc.named_modules() if isinstance(m, LinearizablePReLU)]
    assert len(units) == 2 and len({id(lc.get_submodule(n)) for n in units}) == 2
    x = torch.randn(5, 2, 8)
    torch.testing.assert_close(lc(x), cnn(x), rtol=0, atol=1e-6)
    assert isinstance(cnn.act, nn.ReLU)


def test_make_linearizable_refuses_a_transformer_without_visible_activations():
    with pytest.raises(ValueError, match=r"none outside the leaf modules 'enc' \(TransformerEncoder\)"):
        make_linearizable(zoo.vit())
