"""Standard models: MLP, CNN (1-D signals and 2-D images) and a small pre-activation ResNet.

Module names are stable and readable because users select layers by them:

* ``MLP``: ``layers.{i}.linear``, ``layers.{i}.act``, ``head``
* ``CNN``: ``layers.{i}.conv``, ``layers.{i}.act``, ``pool``, ``head``
* ``ResNet``: ``stem``, ``blocks.{i}.act1``, ``blocks.{i}.conv1``, ``blocks.{i}.act2``,
  ``blocks.{i}.conv2`` (plus ``blocks.{i}.norm1``/``norm2`` with ``norm="batch"``), ``act``,
  ``pool``, ``head``

Every model keeps the arguments it was built with in ``model.config``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.fx
from torch import nn

from ..validation import check_choice, check_int
from .layers import (add_channel_axis, check_parameter_count, check_size, check_widths, conv_parameters,
                     linear_parameters, make_conv)

__all__ = ["ACTIVATIONS", "make_activation", "MLP", "CNN", "ResNet", "GlobalAvgPool"]

ACTIVATIONS: tuple[str, ...] = ("relu", "leaky_relu", "prelu", "gelu", "tanh", "sigmoid", "elu", "softplus",
                                "identity")


def make_activation(name: str, channels: int | None = None) -> nn.Module:
    """A fresh activation module by name.

    ``"prelu"`` gets one slope per channel when ``channels`` is given (one shared slope otherwise);
    ``"identity"`` is an :class:`IdentityActivation` (a :class:`torch.nn.Identity`).

    Parameters
    ----------
    name : str
        One of ``ACTIVATIONS``.
    channels : int, optional
        Number of slopes of ``"prelu"`` (one per channel); ``None`` (or 0) gives one shared
        slope. Ignored by the other activations.

    Returns
    -------
    nn.Module
        A new module with torch's default settings (``nn.PReLU`` starts at slope 0.25).

    Raises
    ------
    TypeError
        ``channels`` is not an int.
    ValueError
        ``name`` is not one of ``ACTIVATIONS``; ``channels`` < 1 or > ``MAX_PARAMETERS`` (2**31).

    Examples
    --------
    >>> make_activation("leaky_relu")
    LeakyReLU(negative_slope=0.01)
    >>> make_activation("prelu", channels=4).weight.shape
    torch.Size([4])
    """
    check_choice(name, "name", ACTIVATIONS)
    if channels is not None:
        channels = check_size(channels, "channels")
    if name == "prelu":
        return nn.PReLU(num_parameters=channels or 1, init=0.25)
    return {
        "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid, "elu": nn.ELU, "softplus": nn.Softplus, "identity": IdentityActivation,
    }[name]()


class IdentityActivation(nn.Identity):
    """``nn.Identity`` in an activation's place (``make_activation("identity")``): an activation site
    of the traced graph whose every channel is linear, so it can be masked or linearized."""

    graph_activation = True
    graph_leaf = True


class GlobalAvgPool(nn.Module):
    """Mean over every axis after the channel axis: ``(N, C, ...) -> (N, C)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).mean(dim=2)


class _LinearBlock(nn.Module):
    def __init__(self, fan_in: int, fan_out: int, activation: str, bias: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(fan_in, fan_out, bias=bias)
        self.act = make_activation(activation, fan_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))


class MLP(nn.Module):
    """Fully connected network ``in_features -> widths[0] -> ... -> widths[-1] -> out_features``.

    Inputs of any shape ``(N, ...)`` are flattened to ``(N, in_features)``.

    Parameters
    ----------
    in_features : int
    widths : sequence of int
        Width of each hidden layer (empty: a linear model).
    out_features : int
    activation : str
        One of ``ACTIVATIONS``.
    bias : bool

    Examples
    --------
    >>> m = MLP(40, [32, 32], 10)
    >>> m(torch.randn(5, 40)).shape
    torch.Size([5, 10])
    >>> [n for n, _ in m.named_modules() if n.endswith("act")]
    ['layers.0.act', 'layers.1.act']
    """

    def __init__(self, in_features: int, widths: Sequence[int], out_features: int, activation: str = "relu",
                 bias: bool = True) -> None:
        super().__init__()
        in_features = check_size(in_features, "in_features")
        out_features = check_size(out_features, "out_features")
        widths = check_widths(widths, "widths")
        check_choice(activation, "activation", ACTIVATIONS)
        sizes = [in_features, *widths]
        check_parameter_count(linear_parameters([*sizes, out_features], bias) + (sum(widths) if activation == "prelu"
                                                                                 else 0),
                              "in_features, widths, out_features")
        self.config = {"model": "MLP", "in_features": in_features, "widths": list(widths),
                       "out_features": out_features, "activation": activation, "bias": bias}
        sizes = [in_features, *widths]
        self.layers = nn.ModuleList(_LinearBlock(a, b, activation, bias) for a, b in zip(sizes[:-1], sizes[1:]))
        self.head = nn.Linear(sizes[-1], out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


class _ConvBlock(nn.Module):
    def __init__(self, dim: int, c_in: int, c_out: int, kernel_size: int, stride: int, activation: str, bias: bool,
                 padding_mode: str) -> None:
        super().__init__()
        self.conv = make_conv(dim, c_in, c_out, kernel_size, stride=stride, bias=bias, padding_mode=padding_mode)
        self.act = make_activation(activation, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


# One node of the traced graph (sepmeasure.graph): torch.fx.wrap patches this module's name.
torch.fx.wrap("add_channel_axis")


class CNN(nn.Module):
    """Convolutional network for 1-D signals (``dim=1``) or 2-D images (``dim=2``).

    ``len(channels)`` conv layers (kernel ``kernel_size``, "same" padding, stride ``stride``),
    each followed by the activation, then global average pooling and a linear head.
    Inputs without a channel axis (``(N, L)`` or ``(N, H, W)``) get one.

    Examples
    --------
    >>> m = CNN(1, [8, 8], 10, dim=1)
    >>> m(torch.randn(3, 40)).shape
    torch.Size([3, 10])
    >>> CNN(1, [4], 10, dim=2)(torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(self, in_channels: int, channels: Sequence[int], out_features: int, dim: int = 1,
                 kernel_size: int = 3, stride: int = 1, activation: str = "relu", bias: bool = True,
                 padding_mode: str = "zeros") -> None:
        super().__init__()
        in_channels = check_size(in_channels, "in_channels")
        out_features = check_size(out_features, "out_features")
        channels = check_widths(channels, "channels")
        if not channels:
            raise ValueError("channels: expected at least one conv layer, got an empty sequence")
        check_choice(dim, "dim", (1, 2))
        kernel_size = check_size(kernel_size, "kernel_size")
        stride = check_int(stride, "stride", minimum=1)
        check_choice(activation, "activation", ACTIVATIONS)
        check_choice(padding_mode, "padding_mode", ("zeros", "circular", "reflect", "replicate"))
        check_parameter_count(conv_parameters([in_channels, *channels], kernel_size, dim, bias)
                              + linear_parameters([channels[-1], out_features], bias)
                              + (sum(channels) if activation == "prelu" else 0),
                              "in_channels, channels, kernel_size, out_features")
        self.dim = dim
        self.config = {"model": "CNN", "in_channels": in_channels, "channels": list(channels),
                       "out_features": out_features, "dim": dim, "kernel_size": kernel_size, "stride": stride,
                       "activation": activation, "bias": bias, "padding_mode": padding_mode}
        sizes = [in_channels, *channels]
        self.layers = nn.ModuleList(
            _ConvBlock(dim, a, b, kernel_size, stride, activation, bias, padding_mode)
            for a, b in zip(sizes[:-1], sizes[1:]))
        self.pool = GlobalAvgPool()
        self.head = nn.Linear(sizes[-1], out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = add_channel_axis(x, self.dim)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.pool(x))


class PreActBlock(nn.Module):
    """Pre-activation residual block: ``x + conv2(act2(conv1(act1(x))))`` (norms optional)."""

    def __init__(self, dim: int, width: int, kernel_size: int, activation: str, bias: bool, norm: str,
                 padding_mode: str, branch_scale: float) -> None:
        super().__init__()
        bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dim]
        if norm == "batch":
            self.norm1 = bn(width)
        self.act1 = make_activation(activation, width)
        self.conv1 = make_conv(dim, width, width, kernel_size, bias=bias, padding_mode=padding_mode)
        if norm == "batch":
            self.norm2 = bn(width)
        self.act2 = make_activation(activation, width)
        self.conv2 = make_conv(dim, width, width, kernel_size, bias=bias, padding_mode=padding_mode)
        with torch.no_grad():
            self.conv2.weight.mul_(branch_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x) if hasattr(self, "norm1") else x
        h = self.conv1(self.act1(h))
        h = self.norm2(h) if hasattr(self, "norm2") else h
        return x + self.conv2(self.act2(h))


MAX_BLOCKS = 10_000
"""The most residual blocks of a :class:`ResNet` (larger ``n_blocks`` are refused before any
block is built)."""


class ResNet(nn.Module):
    """Small pre-activation ResNet with identity skips, for 1-D signals or 2-D images.

    ``stem`` conv to ``width`` channels, ``n_blocks`` :class:`PreActBlock` s, a final activation
    ``act``, global average pooling and a linear head. Without normalisation (the default, so
    that every measure sees a batch-independent function) the second conv of each branch is
    scaled by ``1/sqrt(n_blocks)`` at initialisation to keep the forward pass stable in depth.

    Examples
    --------
    >>> m = ResNet(1, width=8, n_blocks=3, out_features=10)
    >>> m(torch.randn(2, 40)).shape
    torch.Size([2, 10])
    >>> "blocks.2.conv1" in dict(m.named_modules())
    True
    """

    def __init__(self, in_channels: int, width: int, n_blocks: int, out_features: int, dim: int = 1,
                 kernel_size: int = 3, activation: str = "relu", bias: bool = True, norm: str = "none",
                 padding_mode: str = "zeros") -> None:
        super().__init__()
        in_channels = check_size(in_channels, "in_channels")
        width = check_size(width, "width")
        n_blocks = check_int(n_blocks, "n_blocks", minimum=0, maximum=MAX_BLOCKS,
                             why="MAX_BLOCKS: each block is built as its own modules")
        out_features = check_size(out_features, "out_features")
        check_choice(dim, "dim", (1, 2))
        kernel_size = check_size(kernel_size, "kernel_size")
        check_choice(activation, "activation", ACTIVATIONS)
        check_choice(norm, "norm", ("none", "batch"))
        check_choice(padding_mode, "padding_mode", ("zeros", "circular", "reflect", "replicate"))
        prelu = width if activation == "prelu" else 0  # slopes of one activation
        per_block = (2 * conv_parameters([width, width], kernel_size, dim, bias) + (4 * width if norm == "batch" else 0)
                     + 2 * prelu)
        check_parameter_count(conv_parameters([in_channels, width], kernel_size, dim, bias) + n_blocks * per_block
                              + prelu + linear_parameters([width, out_features], bias),
                              "in_channels, width, n_blocks, kernel_size, out_features")
        self.dim = dim
        self.config = {"model": "ResNet", "in_channels": in_channels, "width": width, "n_blocks": n_blocks,
                       "out_features": out_features, "dim": dim, "kernel_size": kernel_size,
                       "activation": activation, "bias": bias, "norm": norm, "padding_mode": padding_mode}
        self.stem = make_conv(dim, in_channels, width, kernel_size, bias=bias, padding_mode=padding_mode)
        scale = 1.0 / math.sqrt(max(n_blocks, 1))
        self.blocks = nn.ModuleList(
            PreActBlock(dim, width, kernel_size, activation, bias, norm, padding_mode, scale) for _ in range(n_blocks))
        self.act = make_activation(activation, width)
        self.pool = GlobalAvgPool()
        self.head = nn.Linear(width, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(add_channel_axis(x, self.dim))
        for block in self.blocks:
            x = block(x)
        return self.head(self.pool(self.act(x)))
