"""Masked linear / non-linear features: the mask formula, its gradient, folding, counts, training."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sepmeasure.data import load_dataset
from sepmeasure.models import CNN, MLP, ResNet
from sepmeasure.models.masked import (FoldedMLP, LinearityMask, MaskPenalty, apply_masks, fold, linear_fraction)
from sepmeasure.training import evaluate, fit


@pytest.fixture(scope="module")
def mnist1d():
    return load_dataset("mnist1d", split="both", size=1000, seed=0)


def _randomize_masks(model: nn.Module, generator: torch.Generator, p_linear: float | None = None) -> None:
    for _, m in model.named_modules():
        if isinstance(m, LinearityMask):
            p = torch.rand((), generator=generator) if p_linear is None else torch.tensor(p_linear)
            m.set_nonlinear(torch.rand(m.channels, generator=generator) >= p)


# ----------------------------------------------------------------------------- the mask module
def test_mask_forward_is_the_mixture_formula(device):
    act = nn.GELU()
    mask = LinearityMask(act, 5).to(device)
    nonlinear = torch.tensor([True, False, False, True, True], device=device)
    mask.set_nonlinear(nonlinear)
    z = torch.randn(7, 5, 3, device=device)
    m = nonlinear.float()[None, :, None]
    expected = m * act(z) + (1 - m) * z
    assert torch.equal(mask(z), expected)
    assert set(mask.mask().detach().tolist()) <= {0.0, 1.0}


def test_straight_through_gradient_of_the_mask_logits(device):
    """d loss / d logit_c = sum over batch of g * (sigma(z) - z) * sigmoid'(logit_c)."""
    mask = LinearityMask(nn.Tanh(), 4).to(device, torch.float64)
    with torch.no_grad():
        mask.logits.copy_(torch.tensor([0.3, -0.7, 2.0, -0.1], dtype=torch.float64))
    z = torch.randn(6, 4, device=device, dtype=torch.float64)
    g = torch.randn(6, 4, device=device, dtype=torch.float64)
    (mask(z) * g).sum().backward()
    s = torch.sigmoid(mask.logits.detach())
    expected = (g * (torch.tanh(z) - z)).sum(0) * s * (1 - s)
    torch.testing.assert_close(mask.logits.grad, expected, rtol=1e-12, atol=1e-12)


def test_soft_mask_uses_sigmoid_of_the_logits(device):
    mask = LinearityMask(nn.ReLU(), 3, hard=False).to(device, torch.float64)
    with torch.no_grad():
        mask.logits.copy_(torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64))
    z = torch.randn(5, 3, device=device, dtype=torch.float64)
    m = torch.sigmoid(mask.logits.detach())
    torch.testing.assert_close(mask(z), m * torch.relu(z) + (1 - m) * z, rtol=0, atol=1e-14)


def test_all_nonlinear_masks_leave_the_network_unchanged(device):
    for net, x in ((MLP(6, [5, 4], 3, activation="gelu"), torch.randn(8, 6)),
                   (CNN(1, [3, 2], 3), torch.randn(8, 12)),
                   (ResNet(1, 3, 2, 3), torch.randn(8, 12))):
        net = net.to(device)
        masked = apply_masks(net)
        assert torch.equal(masked(x.to(device)), net(x.to(device)))
        assert type(net.get_submodule(masked.config["masked"][0])).__name__ != "LinearityMask"  # not in place


def test_all_linear_masks_make_the_network_affine(device):
    net = apply_masks(MLP(3, [6, 6], 2, activation="tanh")).to(device, torch.float64)
    _randomize_masks(net, torch.Generator().manual_seed(0), p_linear=1.0)
    x1, x2 = torch.randn(4, 3, device=device, dtype=torch.float64), torch.randn(4, 3, device=device,
                                                                                 dtype=torch.float64)
    torch.testing.assert_close(net(0.3 * x1 + 0.7 * x2), 0.3 * net(x1) + 0.7 * net(x2), rtol=1e-12, atol=1e-12)


def test_linear_fraction_table():
    net = apply_masks(MLP(4, [3, 5], 2))
    net.layers[0].act.set_nonlinear(torch.tensor([True, False, False]))
    net.layers[1].act.set_nonlinear(torch.tensor([True] * 5))
    table = linear_fraction(net)
    assert table.layer.tolist() == ["layers.0.act", "layers.1.act"]
    assert table.linear_units.tolist() == [2, 0]
    assert table.linear_fraction.tolist() == pytest.approx([2 / 3, 0.0])
    assert table["mask"].tolist() == ["hard", "hard"]


def test_mask_penalty_value_and_direction(device):
    net = apply_masks(MLP(4, [3, 5], 2), init_logit=0.5).to(device)
    with torch.no_grad():
        net.layers[0].act.logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
    logits = torch.cat([net.layers[0].act.logits, net.layers[1].act.logits]).detach()
    assert float(MaskPenalty(0.2)(net).detach()) == pytest.approx(0.2 * float(torch.sigmoid(logits).mean()))
    opt = torch.optim.SGD(net.parameters(), lr=50.0)
    for _ in range(30):
        opt.zero_grad()
        MaskPenalty(1.0)(net).backward()
        opt.step()
    assert linear_fraction(net).linear_fraction.tolist() == [1.0, 1.0]  # the penalty alone makes every unit linear


# ----------------------------------------------------------------------------- folding
@settings(max_examples=30, deadline=None)
@given(widths=st.lists(st.integers(1, 9), min_size=1, max_size=5), bias=st.booleans(),
       activation=st.sampled_from(["relu", "tanh", "gelu", "prelu", "leaky_relu"]),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2 ** 31 - 1))
def test_fold_mlp_is_exact(widths, bias, activation, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = apply_masks(MLP(6, widths, 3, activation=activation, bias=bias)).to(dtype)
    if activation == "prelu":  # per-channel slopes that differ, so slicing them is tested
        for block in net.layers:
            with torch.no_grad():
                block.act.activation.weight.uniform_(-0.5, 0.5, generator=g)
    _randomize_masks(net, g)
    folded = fold(net)
    x = torch.randn(50, 6, generator=g, dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(folded(x), net(x), rtol=0, atol=tol)
    # every trunk unit is a non-linear unit of the masked net, and all of them are there
    for layer in folded.trunk:
        nonlinear = torch.nonzero(net.layers[layer.index - 1].act.mask() != 0).flatten().tolist()
        assert folded.kept_units[layer.index] == nonlinear
    n_nonlinear = sum(int((b.act.mask() != 0).sum()) for b in net.layers)
    assert sum(len(v) for k, v in folded.kept_units.items() if k > 0) == n_nonlinear


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("widths, dim, stride, padding_mode, bias", [
    ([4], 1, 1, "zeros", True),
    ([5, 3, 6], 1, 1, "zeros", False),
    ([4, 4], 1, 2, "circular", True),
    ([3, 5], 2, 1, "zeros", True),
    ([2, 3, 2], 2, 2, "reflect", False),
])
def test_fold_cnn_is_exact(widths, dim, stride, padding_mode, bias, dtype, tol, device):
    g = torch.Generator().manual_seed(len(widths) * 10 + dim)
    for trial in range(4):
        net = apply_masks(CNN(2, widths, 3, dim=dim, stride=stride, padding_mode=padding_mode, bias=bias,
                              activation=["relu", "tanh", "prelu", "elu"][trial])).to(device, dtype)
        _randomize_masks(net, g, p_linear=[0.0, 1.0, None, None][trial])
        shape = (2,) + (11,) * dim
        folded = fold(net, input_shape=shape, collapse=False)
        x = torch.randn(9, *shape, generator=g, dtype=dtype).to(device)
        torch.testing.assert_close(folded(x), net(x), rtol=0, atol=tol)
        # the linear stream keeps every weight; only the PReLU slopes of linear channels go
        dropped_slopes = sum(int((b.act.mask() == 0).sum()) for b in net.layers) if trial == 2 else 0
        assert folded.report.parameters_after == folded.report.parameters_before - dropped_slopes
        assert folded.report.macs_after == folded.report.macs_before and not folded.report.collapsed
        # by default an all-linear end is composed into one affine map where that is cheaper: still exact
        collapsed = fold(net, input_shape=shape)
        torch.testing.assert_close(collapsed(x), net(x), rtol=0, atol=tol)
        assert collapsed.report.macs_after <= collapsed.report.macs_before
        assert bool(collapsed.report.collapsed) == (collapsed.report.macs_after < collapsed.report.macs_before)


def test_fold_counts_by_hand_mlp():
    # MLP 2 -> 3 -> 2 -> 1; layer 1: units 0, 1 non-linear, unit 2 linear; layer 2: both linear.
    for bias in (True, False):
        net = apply_masks(MLP(2, [3, 2], 1, bias=bias))
        net.layers[0].act.set_nonlinear(torch.tensor([True, True, False]))
        net.layers[1].act.set_nonlinear(torch.tensor([False, False]))
        f = fold(net)
        b = int(bias)
        # before: W1 2x3 (+3), W2 3x2 (+2), head 2x1 (+1); masks excluded
        assert f.report.parameters_before == 6 + 6 + 2 + b * (3 + 2 + 1)
        assert f.report.macs_before == 6 + 6 + 2
        # after: trunk 1 = W1[N] 2x2 (+2); output = shortcuts from trunk 1 (2) and from the input (2) (+1)
        assert f.report.parameters_after == 4 + 4 + b * (2 + 1)
        assert f.report.macs_after == 4 + 4
        assert [layer.index for layer in f.trunk] == [1]
        assert f.output.sources == [0, 1]
        assert (f.report.units, f.report.linear_units) == (5, 3)


def test_fold_collapses_an_all_linear_network_to_one_affine_map(device):
    net = apply_masks(MLP(5, [7, 7, 7], 3)).to(device, torch.float64)
    _randomize_masks(net, torch.Generator().manual_seed(1), p_linear=1.0)
    f = fold(net)
    assert len(f.trunk) == 0 and f.output.sources == [0]
    assert f.report.parameters_after == 5 * 3 + 3 and f.report.macs_after == 15
    # the single map is the product of the weights (an independent composition)
    w = net.head.weight @ net.layers[2].linear.weight @ net.layers[1].linear.weight @ net.layers[0].linear.weight
    torch.testing.assert_close(f.output.maps["from_0"].weight, w, rtol=1e-12, atol=1e-12)
    x = torch.randn(8, 5, dtype=torch.float64, device=device)
    torch.testing.assert_close(f(x), net(x), rtol=1e-12, atol=1e-12)
    # brute force: one multiply-add per weight of every Linear layer, against one per entry of the single map
    assert f.report.macs_before == sum(m.weight.numel() for m in net.modules() if isinstance(m, nn.Linear))
    assert f.report.macs_after == w.numel()


def test_fold_all_linear_middle_stretch_becomes_one_shortcut():
    net = apply_masks(MLP(4, [5, 6, 6, 5], 2))
    flags = [[True] * 5, [False] * 6, [False] * 6, [True] * 5]
    for block, f in zip(net.layers, flags):
        block.act.set_nonlinear(torch.tensor(f))
    folded = fold(net)
    assert [layer.index for layer in folded.trunk] == [1, 4]
    assert folded.trunk[1].sources == [1]  # layers 2 and 3 collapsed into one 5 -> 5 map
    assert folded.trunk[1].maps["from_1"].weight.shape == (5, 5)
    x = torch.randn(10, 4)
    torch.testing.assert_close(folded(x), net(x), rtol=0, atol=1e-5)


def _brute_force_macs(net: CNN, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one sample through a plain CNN, one by one: every output position of every conv
    (taps on the zero padding included, as fold's report counts them) and every head weight."""
    count = 0
    spatial = list(input_shape[1:])
    for block in net.layers:
        conv = block.conv
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        out_spatial = [sum(1 for start in range(-p, n + p) if start + k <= n + p and (start + p) % s == 0)
                       for n in spatial]
        positions = 1
        for n in out_spatial:
            positions *= n
        for _ in range(conv.out_channels * positions):
            for _ in range(conv.in_channels * k ** len(spatial)):
                count += 1
        spatial = out_spatial
    return count + net.head.in_features * net.head.out_features


@pytest.mark.parametrize("dim, stride, padding_mode, bias", [(1, 1, "zeros", True), (1, 2, "circular", False),
                                                            (2, 1, "zeros", True), (2, 2, "reflect", True)])
def test_fold_collapses_an_all_linear_cnn_to_one_affine_map(dim, stride, padding_mode, bias):
    g = torch.Generator().manual_seed(dim * 10 + stride)
    net = apply_masks(CNN(2, [3, 4, 3], 5, dim=dim, stride=stride, padding_mode=padding_mode, bias=bias))
    net = net.to(torch.float64)
    _randomize_masks(net, g, p_linear=1.0)
    shape = (2,) + (9,) * dim
    folded = fold(net, input_shape=shape)
    assert len(folded.layers) == 0 and folded.tail is not None and "from the input" in folded.report.collapsed
    x = torch.randn(6, *shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(folded(x), net(x), rtol=1e-12, atol=1e-12)
    # the map is the network's Jacobian (autograd, independent of the basis read-off) and its value at 0
    d = 2 * 9 ** dim
    jac = torch.autograd.functional.jacobian(lambda v: net(v.reshape(1, *shape))[0],
                                             torch.zeros(d, dtype=torch.float64))
    torch.testing.assert_close(folded.tail.from_trunk.weight, jac, rtol=1e-12, atol=1e-12)
    if bias:
        torch.testing.assert_close(folded.tail.bias, net(torch.zeros(1, *shape, dtype=torch.float64))[0])
    else:
        assert folded.tail.bias is None
    r = folded.report
    assert r.macs_before == _brute_force_macs(net, shape)
    assert r.macs_after == d * 5 < r.macs_before
    assert r.parameters_after == d * 5 + 5 * bias


def test_fold_collapses_the_linear_end_of_a_cnn_after_its_last_nonlinear_layer():
    g = torch.Generator().manual_seed(3)
    net = apply_masks(CNN(1, [4, 5, 3], 6, dim=1)).to(torch.float64)
    net.layers[0].act.set_nonlinear(torch.tensor([True, False, True, False]))
    for block in net.layers[1:]:
        block.act.set_nonlinear(torch.zeros(block.act.channels, dtype=torch.bool))
    shape = (1, 12)
    folded = fold(net, input_shape=shape)
    x = torch.randn(5, *shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(folded(x), net(x), rtol=1e-12, atol=1e-12)
    assert len(folded.layers) == 1 and "from the outputs of layer 1" in folded.report.collapsed
    # kept: layer 1 (4 output channels x 1 input channel x 3 taps x 12 positions), then (4 x 12) x 6 classes
    first = _brute_force_macs(CNN(1, [4], 1, dim=1), shape) - 4
    assert folded.report.macs_after == first + 4 * 12 * 6
    assert folded.report.macs_before == _brute_force_macs(net, shape)
    # a non-linear channel in the last layer leaves nothing to compose
    net.layers[2].act.set_nonlinear(torch.tensor([True, False, False]))
    kept = fold(net, input_shape=shape)
    assert kept.tail is None and kept.report.collapsed == "" and kept.report.macs_after == kept.report.macs_before
    torch.testing.assert_close(kept(x), net(x), rtol=1e-12, atol=1e-12)


def test_fold_keeps_the_convolutions_when_one_affine_map_costs_more():
    # one 1x1 channel and 20 classes: conv 30 + head 20 multiply-adds against 30 x 20 for the map
    net = apply_masks(CNN(1, [1], 20, dim=1, kernel_size=1))
    net.layers[0].act.set_nonlinear(torch.tensor([False]))
    f = fold(net, input_shape=(1, 30))
    assert f.tail is None and f.report.collapsed == "" and f.report.macs_after == f.report.macs_before == 50
    with pytest.raises(TypeError, match="collapse: expected a bool"):
        fold(net, input_shape=(1, 30), collapse="yes")


def test_fold_counts_by_hand_cnn():
    net = apply_masks(CNN(1, [2], 1, kernel_size=3, dim=1))
    net.layers[0].act.set_nonlinear(torch.tensor([True, False]))
    f = fold(net, input_shape=(1, 5))
    # conv 1 -> 2 channels, kernel 3: 6 weights + 2 biases; head 2 -> 1: 2 + 1
    assert f.report.parameters_before == 11 and f.report.parameters_after == 11
    assert f.report.macs_before == 2 * 3 * 5 + 2 and f.report.macs_after == 32
    assert fold(net).report.macs_before is None
    table = f.report.to_frame()
    assert set(table.measure) == {"parameters", "macs"} and len(table) == 4


def test_folded_model_on_cuda_device_matches(device):
    net = apply_masks(MLP(4, [6, 6], 2)).to(device)
    _randomize_masks(net, torch.Generator().manual_seed(3))
    f = fold(net)
    x = torch.randn(5, 4, device=device)
    assert f(x).device == x.device
    torch.testing.assert_close(f(x), net(x), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- bad input
def test_fold_on_soft_masks_is_an_error():
    net = apply_masks(MLP(3, [4], 2), hard=False)
    with pytest.raises(ValueError, match=r"soft \(non-binary\) mask at 'layers\.0\.act'"):
        fold(net)


def test_fold_unsupported_models():
    # a ResNet is folded on its traced graph now (it used to be refused); it says what it kept
    masked = apply_masks(ResNet(1, 3, 2, 2))
    masked.blocks[0].act2.set_nonlinear(torch.zeros(3, dtype=torch.bool))
    assert [name for name, _ in fold(masked).report.kept] == ["blocks.0.act2"]
    with pytest.raises(TypeError, match="model: expected a model with LinearityMask modules"):
        fold(ResNet(1, 3, 2, 2))
    with pytest.raises(TypeError, match="model"):
        fold(nn.Linear(3, 2))


@pytest.mark.parametrize("layer, message", [
    ("head", r"layers\[0\]: expected a layer with an activation .* got 'head', which is a Linear"),
    ("layers.0.linear", r"got 'layers\.0\.linear', which is a Linear without an activation"),
    ("layers.7.act", r"expected the name of an activation layer"),
])
def test_apply_masks_on_a_layer_without_activation_is_an_error(layer, message):
    with pytest.raises(ValueError, match=message):
        apply_masks(MLP(3, [4, 4], 2), layers=[layer])


def test_apply_masks_other_bad_input():
    masked = apply_masks(MLP(3, [4], 2))
    with pytest.raises(ValueError, match="already masked"):
        apply_masks(masked)
    # any traced model is accepted now (it used to be only MLP, CNN and ResNet)
    seq = apply_masks(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    assert linear_fraction(seq).layer.tolist() == ["1"]
    with pytest.raises(TypeError, match="model: cannot trace"):
        apply_masks(nn.LSTM(2, 2))
    with pytest.raises(TypeError, match="init_logit"):
        apply_masks(MLP(3, [4], 2), init_logit=float("nan"))
    only_second = apply_masks(ResNet(1, 3, 2, 2), layers="blocks.1.act2")
    assert linear_fraction(only_second).layer.tolist() == ["blocks.1.act2"]
    with pytest.raises(ValueError, match="without any"):
        linear_fraction(MLP(3, [4], 2))
    with pytest.raises(ValueError, match=r"nonlinear: expected a boolean tensor of shape \(4,\)"):
        masked.layers[0].act.set_nonlinear(torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="weight"):
        MaskPenalty(-1.0)


# ----------------------------------------------------------------------------- training on mnist1d
def test_masked_mlp_trains_on_mnist1d_and_folds(mnist1d, device):
    net = apply_masks(MLP(40, [32, 32], 10), init_logit=0.05).to(device)
    history = fit(net, mnist1d.train, mnist1d.test, epochs=12, optimizer="adam", lr=1e-2, batch_size=64,
                  penalty=MaskPenalty(0.01), progress=False, device=device)
    acc = history[history.split == "test"].accuracy.iloc[-1]
    assert acc >= 0.3, acc
    assert linear_fraction(net).linear_units.sum() > 0  # something to fold
    folded = fold(net)
    assert isinstance(folded, FoldedMLP)
    assert evaluate(folded, mnist1d.test, device=device)["accuracy"] == pytest.approx(acc, abs=0.01)
    x = mnist1d.test.X.to(device)
    torch.testing.assert_close(folded(x), net(x), rtol=0, atol=1e-4)


def test_masked_cnn_trains_on_mnist1d(mnist1d, device):
    net = apply_masks(CNN(1, [16, 16], 10, kernel_size=5)).to(device)
    history = fit(net, mnist1d.train, mnist1d.test, epochs=15, optimizer="adam", lr=1e-2, batch_size=64,
                  penalty=MaskPenalty(0.01), progress=False, device=device)
    assert history[history.split == "test"].accuracy.iloc[-1] >= 0.3


def test_non_models_and_non_iterable_layers_are_named():
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        linear_fraction("mlp")
    with pytest.raises(TypeError, match="layers: expected an activation's name or an iterable of names, got"):
        apply_masks(MLP(4, [3], 2), layers=3)
