"""Building blocks the model families share (internal to :mod:`sepmeasure.models`).

* :func:`check_widths`: the hidden widths (or channels) argument of a model;
* :func:`check_size` and :func:`check_parameter_count`: sizes bounded by :data:`MAX_PARAMETERS`
  before anything is allocated;
* :func:`make_conv`: a 1-D or 2-D convolution padded by ``kernel_size // 2`` on each side;
* :func:`add_channel_axis`: the channel axis a 1-D signal or a 2-D image may lack;
* :func:`check_channel_axis`, :func:`check_channels` and :func:`along_channels`: per-channel
  modules (masks, linearizable activations) on channels-first or channels-last inputs;
* :func:`modules_of_type`: the modules of one type in a model (its masks, its linearizable units);
* :func:`restrict_activation`: an activation applied to some of its channels only;
* :func:`module_macs` and :func:`count_macs`: multiply-adds of one sample through the
  ``nn.Linear`` layers and convolutions of a model.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

from ..validation import check_int, describe

__all__ = ["MAX_PARAMETERS", "check_size", "check_parameter_count", "check_float32", "MAX_INPUT_SIZE", "check_input_shape", "check_widths", "make_conv", "add_channel_axis", "check_channel_axis", "check_channels", "along_channels",
           "modules_of_type", "restrict_activation", "module_macs", "count_macs"]


MAX_PARAMETERS = 2 ** 31
"""The most parameters (and the largest single size: a width, a number of channels, a kernel
size) a model of :mod:`sepmeasure.models` may have: larger sizes are refused before anything is
allocated (2**31 float32 parameters take 8 GiB)."""

_WHY = "sizes are capped at MAX_PARAMETERS = 2**31 so that nothing huge is allocated"


def check_size(value: int, name: str) -> int:
    """A size argument (a width, a number of channels or features, a kernel size): an int in
    ``[1, MAX_PARAMETERS]``; errors name the argument ``name``."""
    return check_int(value, name, minimum=1, maximum=MAX_PARAMETERS, why=_WHY)


def check_parameter_count(count: int, names: str) -> None:
    """Refuse a model whose ``count`` parameters exceed :data:`MAX_PARAMETERS`, naming the size
    arguments ``names`` (e.g. ``"in_features, widths, out_features"``) that give that count."""
    if count > MAX_PARAMETERS:
        raise ValueError(f"{names}: expected sizes giving at most MAX_PARAMETERS = 2**31 parameters, got sizes "
                         f"giving {count} parameters")


def check_float32(value: float, name: str) -> float:
    """A finite real number that float32 can hold (the initial value of a float32 parameter)."""
    limit = torch.finfo(torch.float32).max
    if not -limit <= value <= limit:
        raise ValueError(f"{name}: expected a number within the float32 range [-{limit:.4g}, {limit:.4g}] "
                         f"(it fills a float32 parameter), got {value!r}")
    return value


MAX_INPUT_SIZE = 2 ** 24
"""The most entries of one input sample an ``input_shape`` may describe (16 M: 64 MiB in float32);
an input of that shape is built to trace or count the model."""


def check_input_shape(input_shape: Sequence[int], name: str = "input_shape") -> tuple[int, ...]:
    """The shape of one input sample: a non-empty sequence of ints >= 1 whose product is at most
    :data:`MAX_INPUT_SIZE`; errors name ``name``."""
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise TypeError(f"{name}: expected a sequence of ints (the shape of one input sample), got "
                        f"{describe(input_shape)}")
    if not len(input_shape):
        raise ValueError(f"{name}: expected at least one dimension (the shape of one input sample), got ()")
    shape = tuple(check_int(s, f"{name}[{i}]", minimum=1) for i, s in enumerate(input_shape))
    if math.prod(shape) > MAX_INPUT_SIZE:
        raise ValueError(f"{name}: expected at most MAX_INPUT_SIZE = 2**24 entries in one sample, got {shape} "
                         f"({math.prod(shape)} entries)")
    return shape


def check_widths(widths: Sequence[int], name: str) -> list[int]:
    """``widths`` as a list of ints in ``[1, MAX_PARAMETERS]`` (one per hidden layer); errors name
    the argument ``name``."""
    if isinstance(widths, int) or not isinstance(widths, Sequence):
        raise TypeError(f"{name}: expected a sequence of ints (one per hidden layer), got {describe(widths)}")
    return [check_size(w, f"{name}[{i}]") for i, w in enumerate(widths)]


def linear_parameters(sizes: Sequence[int], bias: bool) -> int:
    """Parameters of the chain of ``nn.Linear`` layers ``sizes[0] -> sizes[1] -> ...``."""
    return sum((a + bool(bias)) * b for a, b in zip(sizes[:-1], sizes[1:]))


def conv_parameters(sizes: Sequence[int], kernel_size: int, dim: int, bias: bool) -> int:
    """Parameters of the chain of convolutions ``sizes[0] -> sizes[1] -> ...`` (kernel ``kernel_size``)."""
    return sum((a * kernel_size ** dim + bool(bias)) * b for a, b in zip(sizes[:-1], sizes[1:]))


def make_conv(dim: int, c_in: int, c_out: int, kernel_size: int, *, stride: int = 1, bias: bool = True,
              padding_mode: str = "zeros") -> nn.Module:
    """``nn.Conv1d`` (``dim=1``) or ``nn.Conv2d`` (``dim=2``) with ``padding=kernel_size // 2``."""
    conv = {1: nn.Conv1d, 2: nn.Conv2d}[dim]
    return conv(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias,
                padding_mode=padding_mode)


def add_channel_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``(N, L) -> (N, 1, L)`` for 1-D and ``(N, H, W) -> (N, 1, H, W)`` for 2-D inputs."""
    return x.unsqueeze(1) if x.ndim == dim + 1 else x


# One node of the traced graph (sepmeasure.graph): a reshape, not control flow to trace through.
# torch.fx.wrap patches a name in the globals of the module that calls it, so each module whose
# forward should keep add_channel_axis as one node registers it itself (standard.py does).
add_channel_axis.graph_reshape = True


def check_channel_axis(channel_axis: int) -> int:
    """``channel_axis`` of a per-channel module: 1 (channels first) or -1 (channels last)."""
    if channel_axis not in (1, -1) or isinstance(channel_axis, bool):
        raise ValueError(f"channel_axis: expected 1 or -1, got {channel_axis!r}")
    return channel_axis


def check_channels(z: torch.Tensor, channels: int, channel_axis: int, name: str = "z") -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``z`` has ``channels`` entries on ``channel_axis``."""
    if z.ndim < 2 or z.shape[channel_axis] != channels:
        want = f"(N, {channels}, ...)" if channel_axis == 1 else f"(N, ..., {channels})"
        raise ValueError(f"{name}: expected a tensor of shape {want}, got {describe(z)}")


def along_channels(v: torch.Tensor, z: torch.Tensor, channel_axis: int) -> torch.Tensor:
    """The per-channel vector ``v`` shaped to broadcast against ``z`` along ``channel_axis``.

    ``(1, C, 1, ..., 1)`` for channels first (``channel_axis=1``), ``v`` itself for channels last.
    """
    return v.reshape(1, -1, *([1] * (z.ndim - 2))) if channel_axis == 1 else v


def modules_of_type(model: nn.Module, module_type: type, what: str | None = None,
                    error: type[Exception] = ValueError) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every ``module_type`` module of ``model`` (``named_modules`` order).

    With ``what`` (e.g. ``"LinearityMask modules (see apply_masks)"``), a model without any
    raises ``error`` saying it expected a model with ``what``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {describe(model)}")
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, module_type)]
    if what is not None and not found:
        raise error(f"model: expected a model with {what}, got {type(model).__name__} without any")
    return found


def restrict_activation(act: nn.Module, index: torch.Tensor, where: str) -> nn.Module:
    """The activation applied only to the units ``index`` (per-channel parameters sliced).

    ``where`` names the layer in the error raised for an activation with parameters that are
    not known to be per-channel (anything but ``nn.PReLU``).
    """
    if isinstance(act, nn.PReLU):
        if act.weight.numel() == 1:
            return copy.deepcopy(act)
        out = nn.PReLU(num_parameters=int(index.numel())).to(device=act.weight.device, dtype=act.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(act.weight[index])
        return out
    if any(True for _ in act.parameters()):
        raise TypeError(f"model: cannot fold {where!r}: its activation {type(act).__name__} has parameters "
                        f"that are not known to be per-channel")
    return copy.deepcopy(act)


@torch.no_grad()
def module_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[int, int]:
    """Multiply-adds of one sample per ``nn.Linear`` / convolution, keyed by ``id(module)``.

    Counted by hooks on one forward pass of a zero sample of shape ``input_shape``; a module
    that runs several times counts every run.
    """
    out: dict[int, int] = {}
    handles = []

    def hook(module, inputs, output):
        if isinstance(module, nn.Linear):
            n = module.in_features * module.out_features * (output.numel() // output.shape[-1]) // output.shape[0]
        else:
            n = (module.in_channels // module.groups) * math.prod(module.kernel_size) * output[0].numel()
        out[id(module)] = out.get(id(module), 0) + int(n)

    try:
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                handles.append(m.register_forward_hook(hook))
        p = next(model.parameters())
        model(torch.zeros(1, *input_shape, dtype=p.dtype, device=p.device))
    finally:
        for h in handles:
            h.remove()
    return out


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one sample through every ``nn.Linear`` and convolution (see :func:`module_macs`)."""
    return int(sum(module_macs(model, input_shape).values()))
