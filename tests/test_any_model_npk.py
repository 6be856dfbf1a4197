"""Gates and the neural path kernel on plain-torch user models (traced graphs).

Lakshminarayanan & Singh 2021: NPK(x, x') = sum over paths of phi_x(p) phi_x'(p) with
phi_x(p) = x_{p(0)} prod_l G_l(x)_{p(l)}; the package computes it with every weight set to one
and every bias to zero (batch norm in eval mode is a per-channel scale and shift: a weight and
a bias, so it drops out). For a fully connected net with K outputs every path is (input
coordinate i, unit u_1, ..., unit u_L, output k), so

    NPK(x, x') = sum_k sum_i x_i x'_i prod_l sum_u G_l,u(x) G_l,u(x') = K <x, x'> prod_l <G_l(x), G_l(x')>.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sepmeasure import gate_overlap, network_gates, neural_path_kernel

import zoo

F64 = torch.float64


def randomize_batch_norm(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)


def test_batchnorm_mlp_npk_closed_form():
    m = zoo.bn_mlp(in_features=5, hidden=(7, 6), num_classes=3).to(F64)
    randomize_batch_norm(m)
    m.eval()
    x = torch.randn(6, 5, dtype=F64)
    # gates by a hand-written forward pass (F.relu calls: graph nodes 'relu', 'relu_1')
    z1 = m.bns[0](m.fcs[0](x))
    z2 = m.bns[1](m.fcs[1](F.relu(z1)))
    g1, g2 = (z1 > 0).to(F64), (z2 > 0).to(F64)
    gates = network_gates(m, x)
    assert list(gates) == ["relu", "relu_1"]
    assert torch.equal(gates["relu"], g1) and torch.equal(gates["relu_1"], g2)
    k = neural_path_kernel(m, x)
    closed = 3 * (x @ x.T) * (g1 @ g1.T) * (g2 @ g2.T)
    torch.testing.assert_close(k, closed, rtol=1e-12, atol=1e-10)
    x2 = torch.randn(4, 5, dtype=F64)
    h1, h2 = network_gates(m, x2).values()
    torch.testing.assert_close(neural_path_kernel(m, x, x2), 3 * (x @ x2.T) * (g1 @ h1.T) * (g2 @ h2.T),
                               rtol=1e-12, atol=1e-10)
    omega = gate_overlap(m, x)
    torch.testing.assert_close(omega["relu_1"], g2 @ g2.T)


def resnet_gates_by_hand(m: zoo.ResNet18, x: torch.Tensor) -> list[torch.Tensor]:
    out = []
    z = m.bn1(m.conv1(x))
    out.append(z > 0)
    h = F.relu(z)
    for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
        for blk in layer:
            z = blk.bn1(blk.conv1(h))
            out.append(z > 0)
            z = blk.bn2(blk.conv2(F.relu(z))) + blk.shortcut(h)
            out.append(z > 0)
            h = F.relu(z)
    return [g.to(x.dtype) for g in out]


def resnet_value_by_hand(m: zoo.ResNet18, u: torch.Tensor, gates: list[torch.Tensor]) -> torch.Tensor:
    """The value network with every weight one, no bias, no batch norm, gates fixed; summed over outputs."""
    def conv(mod: nn.Conv2d, t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, torch.ones_like(mod.weight), stride=mod.stride, padding=mod.padding)

    g = iter(gates)
    h = conv(m.conv1, u) * next(g)
    for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
        for blk in layer:
            mid = conv(blk.conv1, h) * next(g)
            short = conv(blk.shortcut[0], h) if len(blk.shortcut) else h
            h = (conv(blk.conv2, mid) + short) * next(g)
    return h.mean((2, 3)).sum(1) * m.linear.out_features


def test_resnet18_npk_against_a_hand_written_value_network():
    m = zoo.resnet18(width=2, num_classes=3).to(F64)
    randomize_batch_norm(m)
    m.eval()
    x = torch.randn(3, 3, 8, 8, dtype=F64)
    by_hand = resnet_gates_by_hand(m, x)
    gates = network_gates(m, x)
    assert len(gates) == 17 and list(gates)[:3] == ["relu", "relu_1", "relu_2"]
    for got, want in zip(gates.values(), by_hand):
        assert torch.equal(got, want)
    k = neural_path_kernel(m, x)
    want = torch.empty(3, 3, dtype=F64)
    for i in range(3):
        for j in range(3):
            want[i, j] = resnet_value_by_hand(m, (x[i] * x[j])[None], [g[i] * g[j] for g in by_hand])[0]
    torch.testing.assert_close(k, want, rtol=1e-10, atol=1e-10)


def test_shared_relu_module_gives_one_gate_per_call():
    m = zoo.cnn1d(in_channels=2, widths=(3, 4), num_classes=2).to(F64)
    x = torch.randn(3, 2, 8, dtype=F64)
    gates = network_gates(m, x)
    assert list(gates) == ["act", "act#1"]
    assert torch.equal(gates["act"], (m.convs[0](x) > 0).to(F64))
    assert neural_path_kernel(m, x).shape == (3, 3)


class GELUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.head = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(F.gelu(self.fc(x)))


@pytest.mark.parametrize("make, x_shape, message", [
    (lambda: zoo.vgg().eval(), (2, 3, 8, 8), r"non-linearity MaxPool2d at 'features\.3' \(max pooling\)"),
    (zoo.vit, (2, 3, 8, 8), r"non-linearity TransformerEncoder at 'enc', LayerNorm at 'norm'"),
    (GELUNet, (2, 3), r"non-linearity gelu at 'gelu'"),
    (lambda: zoo.bn_mlp().train(), (4, 10), r"BatchNorm1d at 'bns\.0' \(batch statistics in training mode: "
                                            r"call model\.eval\(\)\)"),
])
def test_operations_that_break_the_gate_view_are_named(make, x_shape, message):
    m = make()
    x = torch.randn(*x_shape)
    for fn in (neural_path_kernel, gate_overlap, network_gates):
        with pytest.raises(ValueError, match=message):
            fn(m, x)
