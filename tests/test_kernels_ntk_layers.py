"""Structured NTK rules of every layer type against the "jacobian" reference, over a grid of shapes,
strides, paddings, groups, dilations and dtypes (float32 ≤ 1e-5 relative, float64 ≤ 1e-10)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sepmeasure.kernels import empirical_ntk

sys.path.insert(0, str(Path(__file__).parent))
import zoo  # noqa: E402
from ntk_helpers import plan_of, randomise_batchnorm, rel_err  # noqa: E402

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def check(model, shape, dtype, n1=4, n2=3, structured_all=True):
    torch.manual_seed(1)
    model = model.to(dtype).eval()
    x1, x2 = torch.randn(n1, *shape, dtype=dtype), torch.randn(n2, *shape, dtype=dtype)
    if structured_all:
        assert not plan_of(model, x1).fallback, "every parameter should have a structured rule"
    for other in (x2, None):
        for output in ("full", "trace"):
            ref = empirical_ntk(model, x1, other, method="jacobian", output=output)
            got = empirical_ntk(model, x1, other, method="structured", output=output)
            assert rel_err(got, ref) <= TOL[dtype], (output, other is None)


class ConvNet(nn.Module):
    def __init__(self, dim, c_in, c_mid, kernel, stride, padding, groups, dilation, padding_mode="zeros"):
        super().__init__()
        conv = nn.Conv1d if dim == 1 else nn.Conv2d
        self.conv = conv(c_in, c_mid, kernel, stride=stride, padding=padding, groups=groups, dilation=dilation,
                         padding_mode=padding_mode)
        self.conv2 = conv(c_mid, 4, 1, groups=2 if groups > 1 else 1)
        self.head = nn.LazyLinear(3)

    def forward(self, x):
        return self.head(torch.tanh(self.conv2(torch.relu(self.conv(x)))).flatten(1))


CONVS = [  # dim, c_in, c_mid, kernel, stride, padding, groups, dilation, spatial
    (1, 2, 4, 3, 1, 0, 1, 1, (9,)),
    (1, 4, 6, 3, 2, 1, 2, 1, (10,)),
    (1, 3, 6, 2, 1, "same", 3, 2, (8,)),
    (2, 2, 4, 3, 1, 1, 1, 1, (5, 5)),
    (2, 2, 4, (2, 3), (2, 1), (1, 0), 2, 1, (6, 5)),
    (2, 4, 8, 3, 1, 2, 4, 2, (5, 6)),
    (2, 3, 6, 3, 2, 1, 1, 1, (7, 7)),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("spec", CONVS, ids=lambda s: "x".join(map(str, s[:8])))
def test_convolutions(spec, dtype):
    *args, spatial = spec
    model = ConvNet(*args)
    model(torch.randn(1, args[1], *spatial))          # materialise the lazy head
    check(model, (args[1], *spatial), dtype)


class Norms(nn.Module):
    def __init__(self, norm):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.norm = norm
        self.head = nn.Linear(4 * 16, 3)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.conv(x))).flatten(1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("norm", ["batch", "group", "layer", "layer_last"])
def test_normalisation_affines(norm, dtype):
    layer = {"batch": lambda: randomise_batchnorm(nn.BatchNorm2d(4)), "group": lambda: nn.GroupNorm(2, 4),
             "layer": lambda: nn.LayerNorm([4, 4, 4]), "layer_last": lambda: nn.LayerNorm(4)}[norm]()
    if norm != "batch":
        with torch.no_grad():
            layer.weight.normal_()
            layer.bias.normal_()
    check(Norms(layer), (2, 4, 4), dtype)


class Tokens(nn.Module):
    """Linear layers on [N, T, D] tokens, a LayerNorm over features, a BatchNorm1d on (N, C)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 5)
        self.norm = nn.LayerNorm(5)
        self.mix = nn.Linear(5, 4, bias=False)
        self.bn = randomise_batchnorm(nn.BatchNorm1d(4))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.tanh(self.mix(self.norm(torch.relu(self.proj(x)))))
        return self.head(self.bn(h.mean(1)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_linear_on_tokens(dtype):
    check(Tokens(), (6, 3), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_and_broadcast_parameters(batch_first, dtype):
    if batch_first:
        model = zoo.vit(image_size=4, patch=2, dim=8, depth=2, heads=2, mlp_dim=12, num_classes=3, in_channels=2)
        with torch.no_grad():
            model.cls_token.normal_()
        check(model, (2, 4, 4), dtype)
    else:
        class SeqFirst(nn.Module):
            def __init__(self):
                super().__init__()
                self.attn = nn.MultiheadAttention(6, 3)
                self.head = nn.Linear(6, 3)

            def forward(self, x):            # x: (N, T, E); attention wants (T, N, E)
                h = x.transpose(0, 1)
                return self.head(torch.tanh(self.attn(h, h, h, need_weights=False)[0]).mean(0))
        check(SeqFirst(), (5, 6), dtype)


def test_zoo_resnet_is_fully_structured():
    model = zoo.resnet18(width=2, num_classes=3, in_channels=2)
    randomise_batchnorm(model)
    check(model, (2, 8, 8), torch.float64, n1=3, n2=2)


@pytest.mark.filterwarnings("ignore:params. 'attn:UserWarning")
def test_attention_with_weights_falls_back():
    class Weights(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            out, w = self.attn(x, x, x)          # need_weights=True: not rewritten
            return self.head(out.mean(1)) + w.sum((1, 2))[:, None]
    model = Weights().double().eval()
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    detail = plan_of(model, x)
    assert "attn.in_proj_weight" in detail.fallback
    check(model, (5, 4), torch.float64, structured_all=False)
