"""Standard models: shapes, module names, activations, hand-written forward passes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sepmeasure.models import ACTIVATIONS, CNN, MLP, ResNet, make_activation


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_mlp_matches_a_hand_written_forward(activation, device):
    m = MLP(12, [7, 5], 3, activation=activation).to(device).double()
    x = torch.randn(4, 3, 4, device=device, dtype=torch.float64)  # flattened to 12
    h = x.reshape(4, -1)
    for i in range(2):
        lin = getattr(m.layers[i], "linear")
        z = h @ lin.weight.T + lin.bias
        act = m.layers[i].act
        if activation == "prelu":
            h = torch.where(z > 0, z, act.weight * z)
        else:
            ref = {"relu": torch.relu, "leaky_relu": lambda t: torch.where(t > 0, t, 0.01 * t),
                   "gelu": nn.functional.gelu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
                   "elu": nn.functional.elu, "softplus": nn.functional.softplus, "identity": lambda t: t}[activation]
            h = ref(z)
    expected = h @ m.head.weight.T + m.head.bias
    torch.testing.assert_close(m(x), expected, rtol=1e-12, atol=1e-12)


def test_module_names_are_stable():
    names = dict(MLP(4, [3, 3], 2).named_modules())
    assert {"layers.0.linear", "layers.0.act", "layers.1.act", "head"} <= set(names)
    names = dict(CNN(1, [4, 4], 2).named_modules())
    assert {"layers.0.conv", "layers.1.act", "pool", "head"} <= set(names)
    names = dict(ResNet(1, 4, 3, 2, norm="batch").named_modules())
    assert {"stem", "blocks.2.conv1", "blocks.2.act2", "blocks.0.norm1", "act", "pool", "head"} <= set(names)


def test_prelu_is_channelwise():
    m = MLP(4, [6], 2, activation="prelu")
    assert m.layers[0].act.weight.shape == (6,)
    c = CNN(1, [5], 2, activation="prelu")
    assert c.layers[0].act.weight.shape == (5,)


@pytest.mark.parametrize("dim, shape", [(1, (3, 40)), (1, (3, 1, 40)), (2, (3, 8, 8)), (2, (3, 1, 8, 8))])
def test_cnn_accepts_inputs_with_or_without_channel_axis(dim, shape, device):
    m = CNN(1, [4, 6], 10, dim=dim).to(device)
    x = torch.randn(*shape, device=device)
    out = m(x)
    assert out.shape == (3, 10)
    # hand-written: conv -> act -> conv -> act -> mean -> head
    h = x if x.ndim == dim + 2 else x.unsqueeze(1)
    for layer in m.layers:
        h = torch.relu(layer.conv(h))
    torch.testing.assert_close(out, m.head(h.flatten(2).mean(2)))


def test_resnet_matches_a_hand_written_forward(device):
    m = ResNet(1, 6, 2, 3, dim=1).to(device).double()
    x = torch.randn(2, 20, device=device, dtype=torch.float64)
    h = m.stem(x.unsqueeze(1))
    for b in m.blocks:
        h = h + b.conv2(torch.relu(b.conv1(torch.relu(h))))
    expected = m.head(torch.relu(h).mean(2))
    torch.testing.assert_close(m(x), expected, rtol=1e-12, atol=1e-12)


def test_circular_padding_makes_the_cnn_shift_invariant():
    m = CNN(1, [4, 4], 3, padding_mode="circular").double()
    x = torch.randn(2, 16, dtype=torch.float64)
    torch.testing.assert_close(m(x), m(torch.roll(x, 5, dims=1)), rtol=1e-12, atol=1e-12)


def test_config_is_recorded():
    m = MLP(4, [3], 2, activation="tanh", bias=False)
    assert m.config == {"model": "MLP", "in_features": 4, "widths": [3], "out_features": 2,
                        "activation": "tanh", "bias": False}
    assert m.head.bias is None


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda: MLP(4, [3], 2, activation="swish"), ValueError, r"activation: expected one of .*got 'swish'"),
        (lambda: make_activation("relu6"), ValueError, r"^name: expected one of"),
        (lambda: MLP(4, 3, 2), TypeError, r"widths: expected a sequence of ints"),
        (lambda: MLP(4, [3, 0], 2), ValueError, r"widths\[1\]: expected an int >= 1"),
        (lambda: MLP(0, [3], 2), ValueError, r"in_features: expected an int >= 1"),
        (lambda: CNN(1, [], 2), ValueError, r"channels: expected at least one"),
        (lambda: CNN(1, [3], 2, dim=3), ValueError, r"dim: expected one of 1, 2"),
        (lambda: ResNet(1, 4, 2, 2, norm="layer"), ValueError, r"norm: expected one of"),
    ],
)
def test_bad_arguments_are_named(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_make_activation_checks_channels():
    assert make_activation("prelu", channels=3).weight.shape == (3,)
    with pytest.raises(ValueError, match="channels: expected an int >= 1, got -1"):
        make_activation("prelu", channels=-1)
    with pytest.raises(TypeError, match="channels: expected an int"):
        make_activation("relu", channels=2.5)
