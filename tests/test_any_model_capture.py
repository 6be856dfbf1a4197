"""Capture on plain-torch user models: layouts from the traced graph, functional activations.

Every recorded value is checked against a hand-written forward pass of the same model.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from sepmeasure import ActivationRecorder, record
from sepmeasure.graph import GraphTraceError, trace_model

import zoo


def vit_tokens(m: zoo.ViT, x: torch.Tensor) -> list[torch.Tensor]:
    """Hand-written ViT forward: the token tensor [N, T, D] after each encoder layer."""
    t = m.patch_embed(x).flatten(2).transpose(1, 2)
    t = torch.cat([m.cls_token.expand(x.shape[0], -1, -1), t], dim=1) + m.pos_embed
    out = []
    for layer in m.enc.layers:
        t = layer(t)
        out.append(t)
    return out


def test_transformer_token_outputs_are_averaged_over_tokens_not_features():
    m = zoo.vit(image_size=8, patch=2, dim=12, depth=2, heads=2, mlp_dim=8, num_classes=3).eval()
    x = torch.randn(5, 3, 8, 8)
    tokens = vit_tokens(m, x)
    assert tokens[0].shape == (5, 17, 12)
    acts = record(m, x, layers=r"re:enc\.layers\.\d+", pool="mean", progress=False)
    assert acts["enc.layers.0"].shape == (5, 12)
    for i, t in enumerate(tokens):
        assert_close(acts[f"enc.layers.{i}"], t.mean(1))
    cls = record(m, x, layers=["enc", "norm"], pool="cls", progress=False)
    assert_close(cls["enc"], tokens[-1][:, 0])
    assert_close(cls["norm"], m.norm(tokens[-1])[:, 0])
    last = record(m, x, layers="enc.layers.1.linear1", pool="last", progress=False)
    h = tokens[0]
    sa = m.enc.layers[1].norm1(h + m.enc.layers[1]._sa_block(h, None, None))
    assert_close(last["enc.layers.1.linear1"], m.enc.layers[1].linear1(sa)[:, -1])


def test_resnet_spatial_mean_and_functional_relus_by_node_name():
    m = zoo.resnet18(width=4, num_classes=3).eval()
    x = torch.randn(6, 3, 8, 8)
    stem = F.relu(m.bn1(m.conv1(x)))
    b0 = m.layer1[0]
    mid = F.relu(b0.bn1(b0.conv1(stem)))  # the F.relu inside the first block: node "relu_1"
    out0 = torch.relu(b0.bn2(b0.conv2(mid)) + stem)
    names = [n.name for n in trace_model(m).nonlinearities()]
    assert names[:3] == ["relu", "relu_1", "relu_2"] and len(names) == 17
    acts = record(m, x, layers=["relu", "relu_1", "layer1.0", "layer1.0.conv1", "linear"], pool="mean",
                  progress=False)
    assert_close(acts["relu"], stem.mean((2, 3)))
    assert_close(acts["relu_1"], mid.mean((2, 3)))
    assert_close(acts["layer1.0"], out0.mean((2, 3)))
    assert_close(acts["layer1.0.conv1"], b0.conv1(stem).mean((2, 3)))
    assert_close(acts["linear"], m(x))
    full = record(m, x, layers="relu_1", progress=False)
    assert_close(full["relu_1"], mid)
    assert "forward" not in m.__dict__  # the traced program is only swapped in while recording


def test_recorder_with_functional_node_and_restores_forward_on_error():
    m = zoo.bn_mlp(in_features=5, hidden=(7, 6), num_classes=2).eval()
    x = torch.randn(4, 5)
    with ActivationRecorder(m, layers=["relu_1", "bns.0"]) as rec:
        m(x[:2])
        m(x[2:])
    h0 = F.relu(m.bns[0](m.fcs[0](x)))
    assert_close(rec.activations()["relu_1"], F.relu(m.bns[1](m.fcs[1](h0))))
    assert_close(rec.activations()["bns.0"], m.bns[0](m.fcs[0](x)))
    assert "forward" not in m.__dict__
    with pytest.raises(RuntimeError, match="boom"):
        with ActivationRecorder(m, layers=["relu"]):
            raise RuntimeError("boom")
    assert "forward" not in m.__dict__ and not any(mod._forward_hooks for mod in m.modules())


def test_cnn1d_and_vgg_means_are_spatial():
    m = zoo.cnn1d(in_channels=2, widths=(3, 4), num_classes=2).eval()
    x = torch.randn(5, 2, 8)
    a0 = m.act(m.convs[0](x))
    acts = record(m, x, layers=["convs.0", "pool"], pool="mean", progress=False)
    assert_close(acts["convs.0"], m.convs[0](x).mean(-1))
    assert_close(acts["pool"], m.pool(a0).mean(-1))
    v = zoo.vgg(widths=(3, 5), num_classes=2).eval()
    x = torch.randn(3, 3, 8, 8)
    acts = record(v, x, layers=["features.3", "features.6"], pool="mean", progress=False)
    assert_close(acts["features.3"], v.features[:4](x).mean((2, 3)))
    assert_close(acts["features.6"], v.features[:7](x).mean((2, 3)))


class Tokens(nn.Module):
    """A model whose middle output's layout the graph cannot tell (a custom reshape)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.mix = nn.Identity()

    def forward(self, x):
        h = self.fc(x)                      # [N, T, 6], channels last
        h = h.reshape(h.shape[0], 6, -1)    # a reshape: layout no longer known
        return self.mix(h)


def test_unknown_layout_refuses_mean_and_layout_argument_decides():
    m = Tokens()
    x = torch.randn(3, 5, 4)
    with pytest.raises(ValueError, match=r"layout: cannot tell the layout of layer 'mix'.*\[3, 6, 5\]"):
        record(m, x, layers="mix", pool="mean", progress=False)
    h = m.fc(x).reshape(3, 6, -1)
    first = record(m, x, layers="mix", pool="mean", layout="channels_first", progress=False)
    assert_close(first["mix"], h.mean(2))
    last = record(m, x, layers=["mix", "fc"], pool="mean", layout={"mix": "channels_last"}, progress=False)
    assert_close(last["mix"], h.mean(1))
    assert_close(last["fc"], m.fc(x).mean(1))  # Linear on [N, T, D]: tokens averaged (auto)
    with pytest.raises(ValueError, match="layout: expected one of 'auto', 'channels_first', 'channels_last'"):
        record(m, x, layers="mix", pool="mean", layout="nchw", progress=False)
    with pytest.raises(ValueError, match=r"pool: 'cls' keeps one token .* got layer 'fc'"):
        record(m, x[:, 0], layers="fc", pool="cls", progress=False)


class Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


def test_untraceable_model_error_names_the_construct_and_the_remedy():
    with pytest.raises(GraphTraceError, match=r"data-dependent control flow.*test_any_model_capture\.py.*leaf"):
        trace_model(Branchy())
    # module hooks still work on a model that cannot be traced; 2-D outputs need no layout
    net = nn.Sequential(nn.Linear(3, 4), Branchy())
    acts = record(net, torch.randn(2, 3), layers="1", pool="mean", progress=False)
    assert acts["1"].shape == (2, 4)


def test_default_selection_records_every_layer_of_a_resnet_and_skips_empty_containers():
    """layers=None takes every leaf module but not an empty nn.Sequential (the identity shortcut of
    a ResNet block: its layout is its input's, which a hook cannot tell) nor an empty ModuleList
    (never called); pool="mean" then works on the whole ResNet-18 and on an MLP that keeps its
    layers in ModuleLists, and each recorded mean is the spatial mean of a hand-run forward pass."""
    torch.manual_seed(0)
    net = zoo.resnet18(width=4).double().eval()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    acts = record(net, x, pool="mean", progress=False)
    shortcut = net.layer1[0].shortcut
    assert isinstance(shortcut, torch.nn.Sequential) and len(shortcut) == 0
    assert "layer1.0.shortcut" not in acts and "layer2.0.shortcut.0" in acts
    leaves = [n for n, m in net.named_modules() if n and next(m.children(), None) is None and n != "layer1.0.shortcut"
              and not (isinstance(m, torch.nn.Sequential) and len(m) == 0)]
    assert sorted(acts) == sorted(leaves)
    stem = net.bn1(net.conv1(x))
    torch.testing.assert_close(acts["bn1"], stem.mean(dim=(2, 3)))
    torch.testing.assert_close(acts["linear"], net(x))

    class ListMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fcs = torch.nn.ModuleList([torch.nn.Linear(4, 5), torch.nn.Linear(5, 2)])
            self.unused = torch.nn.ModuleList()

        def forward(self, x):
            return self.fcs[1](torch.relu(self.fcs[0](x)))

    m = ListMLP().double()
    z = torch.randn(6, 4, dtype=torch.float64)
    got = record(m, z, pool="mean", progress=False)
    assert sorted(got) == ["fcs.0", "fcs.1"]
    torch.testing.assert_close(got["fcs.1"], m(z))


def test_recorder_sink_must_be_callable_and_a_childless_sequential_subclass_is_a_layer():
    with pytest.raises(TypeError, match=r"sink: expected a callable sink\(key, tensor, raw\), got str"):
        ActivationRecorder(nn.Linear(2, 2), sink="file.npy")

    class Doubler(nn.Sequential):          # no children, its own forward: a layer, recorded by default
        def forward(self, x):
            return 2 * x

    net = nn.Sequential(nn.Linear(3, 3), Doubler(), nn.Sequential())
    x = torch.randn(4, 3)
    acts = record(net, x, progress=False)
    assert sorted(acts) == ["0", "1"]
    assert_close(acts["1"], 2 * net[0](x))
