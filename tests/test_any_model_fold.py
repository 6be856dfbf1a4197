"""apply_masks and fold on plain-torch user models: exact outputs, counted savings, what was kept and why."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sepmeasure import apply_masks, fold, linear_fraction

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


def test_bn_mlp_all_linear_layer_is_composed_away():
    d, h0, h1, k = 5, 7, 6, 3
    net = zoo.bn_mlp(in_features=d, hidden=(h0, h1), num_classes=k).to(F64)
    randomize_batch_norm(net)
    net.eval()
    masked = apply_masks(net)
    assert linear_fraction(masked).layer.tolist() == ["relu", "relu_1"]
    x = torch.randn(9, d, dtype=F64)
    torch.testing.assert_close(masked(x), net(x), rtol=0, atol=0)  # all units non-linear at init
    masked.get_submodule("relu").set_nonlinear(torch.zeros(h0, dtype=torch.bool))
    folded = fold(masked, input_shape=(d,))
    torch.testing.assert_close(folded(x), masked(x), rtol=1e-12, atol=1e-12)
    r = folded.report
    assert (r.units, r.linear_units, r.kept) == (h0 + h1, h0, ())
    # fcs.0 (d*h0 + h0), bns.0 (2*h0), fcs.1 (h0*h1 + h1), bns.1 (2*h1), head (h1*k + k) -> one composed Linear
    before = d * h0 + h0 + 2 * h0 + h0 * h1 + h1 + 2 * h1 + h1 * k + k
    after = d * h1 + h1 + 2 * h1 + h1 * k + k
    assert (r.parameters_before, r.parameters_after) == (before, after)
    assert (r.macs_before, r.macs_after) == (d * h0 + h0 * h1 + h1 * k, d * h1 + h1 * k)


def test_resnet18_keeps_linear_units_in_residual_branches_and_says_why():
    net = zoo.resnet18(width=4, num_classes=3).to(F64)
    randomize_batch_norm(net)
    net.eval()
    masked = apply_masks(net)
    assert len(linear_fraction(masked)) == 17
    masked.get_submodule("relu_1").set_nonlinear(torch.zeros(4, dtype=torch.bool))  # inside layer1.0's branch
    masked.get_submodule("relu_2").set_nonlinear(torch.tensor([True, False, True, False]))  # after the sum
    x = torch.randn(3, 3, 8, 8, dtype=F64)
    folded = fold(masked, input_shape=(3, 8, 8))
    torch.testing.assert_close(folded(x), masked(x), rtol=1e-12, atol=1e-12)
    kept = dict(folded.report.kept)
    assert list(kept) == ["relu_1", "relu_2"]
    assert "residual branch" in kept["relu_1"] and "2 of 4 units linear" in kept["relu_2"]
    r = folded.report
    assert r.parameters_before == r.parameters_after == sum(p.numel() for p in net.parameters())
    assert r.macs_before == r.macs_after > 0


def test_vgg_and_shared_activation_cnn_fold_exactly():
    v = zoo.vgg(widths=(3, 4), num_classes=2).to(F64)
    randomize_batch_norm(v)
    v.eval()
    masked = apply_masks(v)
    masked.features[2].set_nonlinear(torch.zeros(3, dtype=torch.bool))
    x = torch.randn(2, 3, 8, 8, dtype=F64)
    folded = fold(masked)
    torch.testing.assert_close(folded(x), masked(x), rtol=1e-12, atol=1e-12)
    assert [n for n, _ in folded.report.kept] == ["features.2"] and folded.report.macs_before is None
    c = zoo.cnn1d(in_channels=2, widths=(3, 3), num_classes=2).to(F64)
    mc = apply_masks(c)  # one nn.ReLU module called twice: two masks
    assert len(linear_fraction(mc)) == 2
    x = torch.randn(4, 2, 8, dtype=F64)
    torch.testing.assert_close(mc(x), c(x), rtol=0, atol=0)
    first = [n for n, m in mc.named_modules() if type(m).__name__ == "LinearityMask"][0]
    mc.get_submodule(first).set_nonlinear(torch.tensor([False, True, False]))
    torch.testing.assert_close(fold(mc)(x), mc(x), rtol=1e-12, atol=1e-12)


def test_masks_refused_where_the_graph_sees_no_activation():
    with pytest.raises(ValueError, match=r"none outside the leaf modules 'enc' \(TransformerEncoder\)"):
        apply_masks(zoo.vit())
