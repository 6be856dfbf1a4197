"""A zoo of user models written in plain torch (no sepmeasure classes).

These are the kinds of models a researcher brings: functional ``F.relu`` /
``torch.relu`` calls, BatchNorm, downsampling shortcuts, max-pooling,
``nn.TransformerEncoderLayer`` blocks. Every constructor takes size
parameters so that tests stay tiny.

>>> import torch
>>> resnet18(width=4, num_classes=3)(torch.randn(2, 3, 8, 8)).shape
torch.Size([2, 3])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """ResNet basic block: conv-BN-relu-conv-BN, plus identity or 1x1 shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return torch.relu(out)


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18: 3x3 stem, four stages of two basic blocks."""

    def __init__(self, width: int = 64, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers = []
        in_planes = width
        for i, mult in enumerate((1, 2, 4, 8)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(in_planes, width * mult, stride),
                      BasicBlock(width * mult, width * mult, 1)]
            in_planes = width * mult
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.layer4(out)
        out = F.adaptive_avg_pool2d(out, 1)
        out = torch.flatten(out, 1)
        return self.linear(out)


def resnet18(width: int = 64, num_classes: int = 10, in_channels: int = 3) -> ResNet18:
    """A CIFAR-style ResNet-18 in plain torch (``width`` channels in the first stage)."""
    return ResNet18(width=width, num_classes=num_classes, in_channels=in_channels)


class VGG(nn.Module):
    """VGG-style net: conv-BN-ReLU stages separated by max-pooling."""

    def __init__(self, widths=(8, 16), num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
                       nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.pool(x).flatten(1)
        return self.classifier(x)


def vgg(widths=(8, 16), num_classes: int = 10, in_channels: int = 3) -> VGG:
    """A small VGG-style net with max-pooling between stages."""
    return VGG(widths=tuple(widths), num_classes=num_classes, in_channels=in_channels)


class ViT(nn.Module):
    """ViT-style transformer: patch-embedding conv, CLS token, encoder layers."""

    def __init__(self, image_size: int = 8, patch: int = 2, dim: int = 16, depth: int = 2,
                 heads: int = 2, mlp_dim: int = 32, num_classes: int = 10,
                 in_channels: int = 3) -> None:
        super().__init__()
        n_tokens = (image_size // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, n_tokens + 1, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout=0.0,
                                           batch_first=True)
        self.enc = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)                      # [N, D, H', W']
        x = x.flatten(2).transpose(1, 2)             # [N, T, D]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.enc(x)
        x = self.norm(x)
        return self.head(x[:, 0])


def vit(image_size: int = 8, patch: int = 2, dim: int = 16, depth: int = 2, heads: int = 2,
        mlp_dim: int = 32, num_classes: int = 10, in_channels: int = 3) -> ViT:
    """A small ViT: ``(image_size / patch)**2 + 1`` tokens of ``dim`` features."""
    return ViT(image_size=image_size, patch=patch, dim=dim, depth=depth, heads=heads,
               mlp_dim=mlp_dim, num_classes=num_classes, in_channels=in_channels)


class BNMLP(nn.Module):
    """Fully connected net: Linear-BatchNorm1d-F.relu blocks, then a Linear head."""

    def __init__(self, in_features: int = 10, hidden=(16, 16), num_classes: int = 3,
                 bias: bool = True) -> None:
        super().__init__()
        dims = [in_features, *hidden]
        self.fcs = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(dims, dims[1:]))
        self.bns = nn.ModuleList(nn.BatchNorm1d(b) for b in dims[1:])
        self.head = nn.Linear(dims[-1], num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for fc, bn in zip(self.fcs, self.bns):
            x = F.relu(bn(fc(x)))
        return self.head(x)


def bn_mlp(in_features: int = 10, hidden=(16, 16), num_classes: int = 3,
           bias: bool = True) -> BNMLP:
    """An MLP with BatchNorm1d and functional ReLUs."""
    return BNMLP(in_features=in_features, hidden=tuple(hidden), num_classes=num_classes,
                 bias=bias)


class CNN1d(nn.Module):
    """1-D CNN: Conv1d-ReLU stages with average pooling, then global mean and Linear."""

    def __init__(self, in_channels: int = 1, widths=(4, 8), num_classes: int = 3,
                 kernel_size: int = 3) -> None:
        super().__init__()
        convs = []
        c = in_channels
        for w in widths:
            convs.append(nn.Conv1d(c, w, kernel_size, padding=kernel_size // 2))
            c = w
        self.convs = nn.ModuleList(convs)
        self.act = nn.ReLU()
        self.pool = nn.AvgPool1d(2)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = self.pool(self.act(conv(x)))
        return self.head(x.mean(dim=-1))


def cnn1d(in_channels: int = 1, widths=(4, 8), num_classes: int = 3,
          kernel_size: int = 3) -> CNN1d:
    """A small 1-D CNN (input ``[N, in_channels, L]``)."""
    return CNN1d(in_channels=in_channels, widths=tuple(widths), num_classes=num_classes,
                 kernel_size=kernel_size)


ZOO = {
    "resnet18": (lambda: resnet18(width=4, num_classes=3), (3, 8, 8)),
    "vgg": (lambda: vgg(widths=(4, 8), num_classes=3), (3, 8, 8)),
    "vit": (lambda: vit(image_size=8, patch=4, dim=8, depth=1, heads=2, mlp_dim=16,
                        num_classes=3), (3, 8, 8)),
    "bn_mlp": (lambda: bn_mlp(in_features=6, hidden=(8, 8), num_classes=3), (6,)),
    "cnn1d": (lambda: cnn1d(in_channels=2, widths=(4, 4), num_classes=3), (2, 8)),
}
"""Name → (constructor of a tiny instance, shape of one input sample)."""
