"""Linearizable PReLU channels: the activation, the sparsity prior, snapping and freezing, the schedule."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sepmeasure.data import load_dataset
from sepmeasure.models import CNN, MLP, ResNet
from sepmeasure.models.linearizable import (LinearizablePReLU, LinearizationSchedule, SparsityPrior,
                                            make_linearizable, nonlinear_fraction, snap_linear)
from sepmeasure.training import Callback, fit


@pytest.fixture(scope="module")
def mnist1d():
    return load_dataset("mnist1d", split="both", size=1000, seed=0)


# ----------------------------------------------------------------------------- the activation
@pytest.mark.parametrize("shape", [(7, 4), (7, 4, 9), (3, 4, 5, 6)])
def test_prelu_matches_torch_prelu(shape, device):
    act = LinearizablePReLU(4).to(device)
    with torch.no_grad():
        act.slope.copy_(torch.tensor([0.0, 0.3, -0.5, 1.0]))
    z = torch.randn(*shape, device=device)
    torch.testing.assert_close(act(z), nn.functional.prelu(z, act.slope.detach()), rtol=0, atol=0)
    assert act.nonlinear_channels().tolist() == [True, True, True, False]


def test_frozen_channels_are_exactly_linear_and_get_no_gradient(device):
    act = LinearizablePReLU(3, init=0.2).to(device)
    act.freeze_channels(torch.tensor([False, True, False], device=device))
    with torch.no_grad():
        act.slope[1] = -4.0  # whatever an optimiser writes there, the channel stays the identity
    z = torch.randn(10, 3, device=device)
    out = act(z)
    assert torch.equal(out[:, 1], z[:, 1])
    out.sum().backward()
    assert act.slope.grad[1] == 0 and act.slope.grad[0] != 0


# ----------------------------------------------------------------------------- conversion
@pytest.mark.parametrize("make_net, x_shape", [
    (lambda: MLP(6, [5, 4], 3), (8, 6)),
    (lambda: MLP(6, [5], 3, activation="leaky_relu"), (8, 6)),
    (lambda: MLP(6, [5, 5], 3, activation="identity"), (8, 6)),
    (lambda: CNN(1, [3, 4], 3, activation="prelu"), (8, 12)),
    (lambda: ResNet(1, 3, 2, 3), (8, 12)),
])
def test_make_linearizable_preserves_the_function(make_net, x_shape, device):
    net = make_net().to(device)
    if net.config["activation"] == "prelu":
        for block in net.layers:
            with torch.no_grad():
                block.act.weight.uniform_(-1, 1)
    lin = make_linearizable(net)
    x = torch.randn(*x_shape, device=device)
    torch.testing.assert_close(lin(x), net(x), rtol=0, atol=1e-6)
    assert all(isinstance(lin.get_submodule(n), LinearizablePReLU) for n in lin.config["linearizable"])
    if net.config["activation"] == "identity":
        assert nonlinear_fraction(lin).nonlinear_fraction.tolist() == [0.0, 0.0]
        assert nonlinear_fraction(lin).frozen_channels.tolist() == [5, 5]


@pytest.mark.parametrize("activation", ["leaky_relu", "prelu"])
def test_make_linearizable_keeps_float64_slopes(activation, device):
    # slopes that float32 cannot hold: a conversion through float32 is off by about 1e-9
    net = MLP(6, [5, 4], 3, activation=activation).to(device, torch.float64)
    for block in net.layers[:-1]:
        if activation == "prelu":
            with torch.no_grad():
                block.act.weight.copy_(torch.linspace(-0.9, 0.9, block.act.weight.numel(), dtype=torch.float64) + 1e-12)
        else:
            block.act.negative_slope = 0.1
    lin = make_linearizable(net)
    x = torch.randn(50, 6, device=device, dtype=torch.float64)
    torch.testing.assert_close(lin(x), net(x), rtol=0, atol=1e-14)
    for name in lin.config["linearizable"]:
        assert lin.get_submodule(name).slope.dtype == torch.float64


def test_make_linearizable_bad_input():
    with pytest.raises(ValueError, match=r"'layers\.0\.act' \(Tanh\)"):
        make_linearizable(MLP(3, [4], 2, activation="tanh"))
    replaced = make_linearizable(MLP(3, [4], 2, activation="tanh"), init=0.25)
    assert torch.equal(replaced.layers[0].act.slope.detach(), torch.full((4,), 0.25))
    with pytest.raises(ValueError, match="head"):
        make_linearizable(MLP(3, [4], 2), layers=["head"])
    with pytest.raises(ValueError, match="already linearizable"):
        make_linearizable(make_linearizable(MLP(3, [4], 2)))
    with pytest.raises(TypeError, match="init"):
        make_linearizable(MLP(3, [4], 2), init="zero")
    with pytest.raises(ValueError, match="without any"):
        nonlinear_fraction(MLP(3, [4], 2))


# ----------------------------------------------------------------------------- the prior
@settings(max_examples=30, deadline=None)
@given(slopes=st.lists(st.floats(-3, 3), min_size=1, max_size=6), p=st.sampled_from([0.5, 1.0, 1.5]),
       weight=st.floats(0, 5))
def test_sparsity_prior_is_the_smoothed_power_sum(slopes, p, weight):
    m = make_linearizable(MLP(2, [len(slopes)], 2)).double()
    with torch.no_grad():
        m.layers[0].act.slope.copy_(torch.tensor(slopes, dtype=torch.float64))
    eps = 1e-3
    value = float(SparsityPrior(weight, p=p, eps=eps)(m).detach())
    expected = weight * sum((abs(1 - a) ** 2 + eps ** 2) ** (p / 2) - eps ** p for a in slopes)
    assert value == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # and it is |1 - alpha|^p up to the smoothing: 0 <= |u|^p - term <= eps^p
    raw = weight * sum(abs(1 - a) ** p for a in slopes)
    assert -1e-12 <= raw - value <= weight * len(slopes) * eps ** p + 1e-12


def test_sparsity_prior_gradient_is_finite_at_alpha_one_and_bounded(device):
    m = make_linearizable(MLP(2, [3], 2)).to(device, torch.float64)
    with torch.no_grad():
        m.layers[0].act.slope.copy_(torch.tensor([1.0, 1.0 + 1e-9, 0.0]))
    eps, p = 1e-3, 0.5
    SparsityPrior(1.0, p=p, eps=eps)(m).backward()
    grad = m.layers[0].act.slope.grad
    assert torch.isfinite(grad).all()
    assert grad[0] == 0
    assert grad.abs().max() <= p * eps ** (p - 1)
    # away from 1 it is the derivative of |1 - alpha|^p: -p |1 - alpha|^(p - 1) sign(1 - alpha) ~ -0.5 at 0
    assert float(grad[2]) == pytest.approx(-0.5, rel=1e-5)


def test_frozen_channels_do_not_count_in_the_prior():
    m = make_linearizable(MLP(2, [3], 2))
    before = float(SparsityPrior(1.0)(m).detach())
    m.layers[0].act.freeze_channels(torch.tensor([True, False, False]))
    assert float(SparsityPrior(1.0)(m).detach()) == pytest.approx(before * 2 / 3, rel=1e-6)
    assert float(SparsityPrior(1.0, active=False)(m).detach()) == 0.0


@pytest.mark.parametrize("kwargs, match", [({"weight": -1.0}, "weight"), ({"p": 0.0}, "p"), ({"p": 3.0}, "p"),
                                           ({"eps": 0.0}, "eps")])
def test_sparsity_prior_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparsityPrior(**kwargs)


# ----------------------------------------------------------------------------- snapping
def test_snap_freezes_close_channels_at_exactly_one():
    m = make_linearizable(MLP(2, [4], 2))
    with torch.no_grad():
        m.layers[0].act.slope.copy_(torch.tensor([0.995, 1.02, 0.5, 1.0]))
    assert snap_linear(m, tolerance=0.01) == 2
    assert m.layers[0].act.slope.detach().tolist()[0] == 1.0 and m.layers[0].act.slope.detach().tolist()[3] == 1.0
    assert m.layers[0].act.frozen.tolist() == [True, False, False, True]
    table = nonlinear_fraction(m)
    assert table.nonlinear_channels.tolist() == [2] and table.frozen_channels.tolist() == [2]
    with pytest.raises(ValueError, match="tolerance"):
        snap_linear(m, tolerance=-1.0)


def test_frozen_channels_stay_frozen_through_training(mnist1d, device):
    m = make_linearizable(MLP(40, [16], 10)).to(device)
    frozen = torch.zeros(16, dtype=torch.bool, device=device)
    frozen[:6] = True
    m.layers[0].act.freeze_channels(frozen)
    prior = SparsityPrior(0.0)
    fit(m, mnist1d.train.subset(slice(0, 300)), epochs=2, lr=0.1, momentum=0.9, weight_decay=0.1, penalty=prior,
        callbacks=[LinearizationSchedule(prior)], progress=False, device=device)
    act = m.layers[0].act
    assert torch.equal(act.slope.detach()[:6], torch.ones(6, device=device))
    assert act.frozen[:6].all() and not act.effective_slope()[6:].eq(1).any()


# ----------------------------------------------------------------------------- the schedule
class _PenaltySeen(Callback):
    def __init__(self, prior):
        super().__init__(epochs=None)
        self.prior, self.active = prior, {}

    def on_step_end(self, state):
        self.active.setdefault(state.epoch + 1, set()).add(self.prior.active)


def test_schedule_switches_the_prior_on_at_start_epoch(mnist1d, device):
    prior = SparsityPrior(1e-3)
    sched, seen = LinearizationSchedule(prior, start_epoch=3), _PenaltySeen(prior)
    m = make_linearizable(MLP(40, [8], 10)).to(device)
    fit(m, mnist1d.train.subset(slice(0, 200)), epochs=4, penalty=prior, callbacks=[sched, seen], progress=False,
        device=device)
    assert seen.active == {1: {False}, 2: {False}, 3: {True}, 4: {True}}
    assert set(sched.table.columns) >= {"layer", "nonlinear_fraction", "snapped_now", "active", "epoch"}


def test_inactive_prior_changes_nothing(mnist1d, device):
    """A schedule that never starts trains exactly like no prior at all."""
    data = mnist1d.train.subset(slice(0, 200))
    torch.manual_seed(1)
    a = make_linearizable(MLP(40, [8], 10)).to(device)
    b = make_linearizable(MLP(40, [8], 10)).to(device)
    b.load_state_dict(a.state_dict())
    prior = SparsityPrior(10.0)
    fit(a, data, epochs=2, penalty=prior, callbacks=[LinearizationSchedule(prior, start_epoch=5)], progress=False,
        device=device)
    fit(b, data, epochs=2, progress=False, device=device)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_schedule_bad_input():
    with pytest.raises(TypeError, match="prior"):
        LinearizationSchedule(lambda m: 0.0)
    with pytest.raises(ValueError, match="start_epoch"):
        LinearizationSchedule(SparsityPrior(), start_epoch=0)


# ----------------------------------------------------------------------------- training on mnist1d
@pytest.mark.parametrize("start_epoch", [1, 5], ids=["early", "late"])
def test_linearizable_mlp_trains_and_linearizes_on_mnist1d(start_epoch, mnist1d, device):
    m = make_linearizable(MLP(40, [32, 32], 10)).to(device)
    prior = SparsityPrior(2e-3)
    sched = LinearizationSchedule(prior, start_epoch=start_epoch, tolerance=0.05)
    history = fit(m, mnist1d.train, mnist1d.test, epochs=15, optimizer="adam", lr=1e-2, batch_size=64,
                  penalty=prior, callbacks=[sched], progress=False, device=device)
    acc = history[history.split == "test"].accuracy.iloc[-1]
    assert acc >= 0.3, acc
    table = nonlinear_fraction(m)
    assert table.frozen_channels.sum() > 0  # the prior drove channels to 1 and they were frozen
    assert (table.nonlinear_channels + table.frozen_channels == table.channels).all()
    before_start = sched.table[sched.table.epoch < start_epoch]
    assert (before_start.snapped_now == 0).all()


def test_linearizable_cnn_trains_on_mnist1d(mnist1d, device):
    m = make_linearizable(CNN(1, [16, 16], 10, kernel_size=5)).to(device)
    prior = SparsityPrior(1e-3)
    history = fit(m, mnist1d.train, mnist1d.test, epochs=15, optimizer="adam", lr=1e-2, batch_size=64,
                  penalty=prior, callbacks=[LinearizationSchedule(prior, start_epoch=5)], progress=False,
                  device=device)
    assert history[history.split == "test"].accuracy.iloc[-1] >= 0.3
    assert math.isfinite(float(prior(m).detach()))


def test_non_models_and_non_iterable_layers_are_named():
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        nonlinear_fraction(42)
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        snap_linear(42)
    with pytest.raises(TypeError, match="layers: expected an activation's name or an iterable of names"):
        make_linearizable(MLP(4, [3], 2), layers=3)
