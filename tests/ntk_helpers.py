"""Builders shared by the NTK tests (``test_kernels_ntk*.py``, ``test_kernels_auto.py``): relative
error, randomised batch normalisation, the tiny CIFAR-shaped CNN, the problem and structured plan
of a model, and a recorder of which builder computes the blocks."""
from __future__ import annotations

import torch
from torch import nn

from sepmeasure.kernels import ntk as ntk_module
from sepmeasure.kernels.ntk_structured import STRUCTURED


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative Frobenius error of ``a`` against ``b``."""
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Random running statistics and affine parameters for every batch norm of ``model`` (in place)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    return model


class CNN2d(nn.Module):
    """The CIFAR-shaped CNN of the benchmark at a tiny width: 3×3 convs with strides 1/2/2 (padding 1),
    ReLU, global average pool, linear."""

    def __init__(self, c: int = 2, widths: tuple[int, ...] = (3, 4, 4), k: int = 3) -> None:
        super().__init__()
        chans = (c, *widths)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=s, padding=1)
                                   for a, b, s in zip(chans, chans[1:], (1, 2, 2)))
        self.head = nn.Linear(chans[-1], k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = torch.relu(conv(x))
        return self.head(x.mean(dim=(2, 3)))


def problem_of(model: nn.Module, x: torch.Tensor):
    """The ``NTKProblem`` ``empirical_ntk(model, x)`` works on."""
    selected = ntk_module.select_parameters(model)
    x1, _ = ntk_module._check_inputs(model, x, None, selected)
    return ntk_module._make_problem(model, x1, None, selected, False)


def plan_of(model: nn.Module, x: torch.Tensor, output: str = "full"):
    """The structured plan's detail for ``empirical_ntk(model, x, output=output)``."""
    return STRUCTURED.plan(problem_of(model, x), output).detail


def record_builders(monkeypatch, methods: tuple[str, ...] = ("jacobian", "structured")) -> list[str]:
    """Wrap the blocks of ``methods`` so that the returned list records which one computed each block."""
    used: list[str] = []
    for method in methods:
        builder = ntk_module._BUILDERS[method]

        def recording(*args, _block=builder.block, _name=method, **kwargs):
            used.append(_name)
            return _block(*args, **kwargs)

        monkeypatch.setitem(ntk_module._BUILDERS, method, ntk_module.Builder(builder.plan, recording,
                                                                              builder.batch_dependent_ok))
    return used
