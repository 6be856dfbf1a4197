"""DGN / DLGN: exact equivalence with ReLU nets, half-spaces, soft -> hard gates, the gate protocol."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sepmeasure.data import load_dataset
from sepmeasure.models import CNN, MLP, ResNet
from sepmeasure.models.gated import DGN, DLGN, BetaAnnealing, effective_halfspaces
from sepmeasure.training import Callback, evaluate, fit


@pytest.fixture(scope="module")
def mnist1d():
    return load_dataset("mnist1d", split="both", size=1000, seed=0)


def _relu_preactivations(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Pre-activations of every ReLU of a standard net, recorded by hooks (independent of the DGN)."""
    seen = []
    handles = [block.act.register_forward_hook(lambda m, inp, out: seen.append(inp[0])) for block in net.layers]
    try:
        net(x)
    finally:
        for h in handles:
            h.remove()
    return seen


# ----------------------------------------------------------------------------- exact copies
@pytest.mark.parametrize("make_net, x_shape", [
    (lambda: MLP(7, [5], 3), (11, 7)),
    (lambda: MLP(7, [16, 9, 4], 3), (11, 7)),
    (lambda: MLP(7, [6, 6], 3, bias=False), (11, 7)),
    (lambda: CNN(2, [4, 3], 5, dim=1), (6, 2, 13)),
    (lambda: CNN(1, [4], 5, dim=1, stride=2, padding_mode="circular"), (6, 17)),
    (lambda: CNN(1, [3, 5], 4, dim=2, kernel_size=5, bias=False), (3, 1, 8, 8)),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dgn_from_relu_network_equals_the_relu_network_exactly(make_net, x_shape, dtype, device):
    net = make_net().to(device=device, dtype=dtype)
    dgn = DGN.from_relu_network(net, copy_value=True)
    x = torch.randn(*x_shape, device=device, dtype=dtype)
    assert torch.equal(dgn(x), net(x))
    # the gates are the ReLU net's on/off states
    for g, z in zip(dgn.gates(x), _relu_preactivations(net, x)):
        assert torch.equal(g, (z > 0).to(dtype))
    assert dgn.gate == "hard"
    assert all(not p.requires_grad for p in dgn.gating.parameters())


def test_from_relu_network_without_value_copy_keeps_the_gates_only(device):
    net = MLP(6, [8, 8], 3).to(device)
    dgn = DGN.from_relu_network(net)
    x = torch.randn(20, 6, device=device)
    assert not torch.equal(dgn(x), net(x))
    for g, z in zip(dgn.gates(x), _relu_preactivations(net, x)):
        assert torch.equal(g, (z > 0).float())


def test_from_relu_network_rejects_other_networks():
    net = MLP(3, [4, 4], 2)
    net.layers[1].act = nn.Tanh()
    with pytest.raises(ValueError, match=r"got Tanh at 'layers\.1\.act'"):
        DGN.from_relu_network(net)
    with pytest.raises(TypeError, match="net: expected"):
        DGN.from_relu_network(ResNet(1, 4, 2, 3))
    with pytest.raises(ValueError, match="at least one hidden layer"):
        DGN.from_relu_network(MLP(3, [], 2))


# ----------------------------------------------------------------------------- the gate protocol
@pytest.mark.parametrize("cls", [DGN, DLGN])
@pytest.mark.parametrize("arch, in_features, dim, x_shape", [("mlp", 10, 1, (5, 10)), ("cnn", 2, 1, (5, 2, 12)),
                                                             ("cnn", 1, 2, (5, 6, 6))])
@pytest.mark.parametrize("gate", ["hard", "soft"])
@pytest.mark.parametrize("value_input", ["x", "ones"])
def test_forward_is_value_forward_of_gates(cls, arch, in_features, dim, x_shape, gate, value_input, device):
    m = cls(in_features, [6, 4], 3, arch=arch, gate=gate, value_input=value_input, dim=dim).to(device)
    x = torch.randn(*x_shape, device=device)
    gates = m.gates(x)
    assert len(gates) == 2
    # each gate is shaped like the value pre-activation of its layer and lies in [0, 1]
    h = m._prepare(x)
    for layer, g in zip(m.value.layers, gates):
        h = layer(h)
        assert g.shape == h.shape
        assert float(g.detach().min()) >= 0 and float(g.detach().max()) <= 1
        if gate == "hard":
            assert set(torch.unique(g).tolist()) <= {0.0, 1.0}
    assert torch.equal(m(x), m.value_forward(x, gates))
    names = m.value_parameter_names()
    assert names and all(n.startswith("value.") for n in names)
    others = [n for n, _ in m.named_parameters() if n not in names]
    assert others and all(n.startswith("gating.") for n in others)


def test_value_forward_by_hand_mlp(device):
    """h_l = (W_l h_{l-1} + b_l) * G_l written out with explicit matrix products."""
    m = DGN(4, [3, 2], 2, gate="soft", beta=2.0).to(device, torch.float64)
    x = torch.randn(7, 4, device=device, dtype=torch.float64)
    g = [torch.rand(7, 3, device=device, dtype=torch.float64), torch.rand(7, 2, device=device, dtype=torch.float64)]
    h = x
    for layer, gl in zip(m.value.layers, g):
        h = (h @ layer.weight.T + layer.bias) * gl
    expected = h @ m.value.head.weight.T + m.value.head.bias
    torch.testing.assert_close(m.value_forward(x, g), expected, rtol=0, atol=1e-12)
    # gating side by hand: q_1 = W x + b, q_2 = W relu(q_1) + b, soft gates sigmoid(2 q)
    q1 = x @ m.gating.layers[0].weight.T + m.gating.layers[0].bias
    q2 = torch.relu(q1) @ m.gating.layers[1].weight.T + m.gating.layers[1].bias
    for got, q in zip(m.gates(x), (q1, q2)):
        torch.testing.assert_close(got, 1 / (1 + torch.exp(-2.0 * q)), rtol=0, atol=1e-12)


def test_ones_value_input_ignores_the_input_values(device):
    m = DLGN(8, [5, 5], 3, value_input="ones").to(device)
    x1, x2 = torch.randn(4, 8, device=device), torch.randn(4, 8, device=device)
    g = m.gates(x1)
    assert torch.equal(m.value_forward(x1, g), m.value_forward(x2, g))
    # but the gates do depend on x
    assert not all(torch.equal(a, b) for a, b in zip(m.gates(x1), m.gates(x2)))


# ----------------------------------------------------------------------------- DLGN half-spaces
@settings(max_examples=25, deadline=None)
@given(a=st.floats(-3, 3), seed=st.integers(0, 10_000))
def test_dlgn_gating_pre_activations_are_affine_in_x(a, seed):
    g = torch.Generator().manual_seed(seed)
    m = DLGN(5, [4, 4, 3], 2).double()
    x1 = torch.randn(3, 5, generator=g, dtype=torch.float64)
    x2 = torch.randn(3, 5, generator=g, dtype=torch.float64)
    mix = m.gating_pre_activations(a * x1 + (1 - a) * x2)
    for q, q1, q2 in zip(mix, m.gating_pre_activations(x1), m.gating_pre_activations(x2)):
        torch.testing.assert_close(q, a * q1 + (1 - a) * q2, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("widths", [[3], [6, 5], [8, 8, 8, 4]])
@pytest.mark.parametrize("bias", [True, False])
def test_dlgn_halfspaces_agree_with_the_gates_mlp(widths, bias, device):
    m = DLGN(7, widths, 3, gate="hard", bias=bias).to(device)
    hs = effective_halfspaces(m)
    x = torch.randn(500, 7, device=device)
    for l, (a, c, gate) in enumerate(zip(hs.normals, hs.offsets, m.gates(x))):
        assert a.shape == (widths[l], 7) and c.shape == (widths[l],)
        q = x.double() @ a.double().T + c.double()
        margin = q.abs() > 1e-4 * (1 + q.abs().max())
        assert margin.float().mean() > 0.95
        assert torch.equal(gate[margin], (q[margin] > 0).float())
    # the normals are the Jacobian of the gating pre-activations (autograd, independent of the products)
    x0 = torch.randn(7, device=device, dtype=torch.float64)
    md = m.double()
    jac = torch.autograd.functional.jacobian(lambda v: torch.cat(md.gating_pre_activations(v[None]), dim=1), x0)
    hs64 = effective_halfspaces(md)
    torch.testing.assert_close(jac[0], torch.cat(hs64.normals), rtol=1e-10, atol=1e-10)
    zero = torch.zeros(1, 7, device=device, dtype=torch.float64)
    torch.testing.assert_close(torch.cat(md.gating_pre_activations(zero), dim=1)[0], torch.cat(hs64.offsets),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dim, shape, padding_mode", [(1, (2, 9), "zeros"), (1, (1, 10), "circular"),
                                                      (2, (1, 5, 6), "zeros")])
def test_dlgn_halfspaces_agree_with_the_gates_cnn(dim, shape, padding_mode, device):
    m = DLGN(shape[0], [3, 2], 4, arch="cnn", dim=dim, gate="hard", padding_mode=padding_mode).to(device)
    hs = effective_halfspaces(m, input_shape=shape)
    x = torch.randn(300, *shape, device=device)
    for a, gate in zip(hs.normals, m.gates(x)):
        assert a.shape == (*gate.shape[1:], *shape)
    for q, gate in zip(hs.pre_activations(x), m.gates(x)):
        margin = q.abs() > 1e-4
        assert torch.equal(gate[margin], (q[margin] > 0).float())
    md = m.double()
    x0 = torch.randn(*shape, device=device, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: md.gating_pre_activations(v[None])[-1][0], x0,
                                             vectorize=True)
    torch.testing.assert_close(jac, effective_halfspaces(md, input_shape=shape).normals[-1], rtol=1e-10, atol=1e-12)


def test_effective_halfspaces_bad_input():
    with pytest.raises(TypeError, match="model: expected a DLGN"):
        effective_halfspaces(DGN(3, [2], 2))
    with pytest.raises(ValueError, match="input_shape"):
        effective_halfspaces(DLGN(1, [2], 2, arch="cnn"))
    with pytest.raises(ValueError, match="input_shape"):
        effective_halfspaces(DLGN(1, [2], 2, arch="cnn"), input_shape=(2, 10))
    hs = effective_halfspaces(DLGN(3, [2], 2))
    with pytest.raises(TypeError, match="x: expected a Tensor"):
        hs.pre_activations([[0.0, 1.0, 2.0]])
    with pytest.raises(ValueError, match="x: expected a tensor on the device of the half-spaces"):
        hs.pre_activations(torch.zeros(1, 3, device="meta"))


def test_halfspaces_table():
    hs = effective_halfspaces(DLGN(3, [4, 2], 2))
    table = hs.to_frame()
    assert len(table) == 6 and set(table.layer) == {0, 1}
    torch.testing.assert_close(torch.tensor(table.normal_norm.values[:4], dtype=torch.float32),
                               hs.normals[0].norm(dim=1))


# ----------------------------------------------------------------------------- soft -> hard
@pytest.mark.parametrize("cls", [DGN, DLGN])
def test_soft_gates_approach_hard_gates_as_beta_grows(cls, device):
    m = cls(6, [8, 8], 3, gate="soft").to(device, torch.float64)
    x = torch.randn(200, 6, device=device, dtype=torch.float64)
    qs = m.gating_pre_activations(x)
    m.gate = "hard"
    hard_gates, hard_out = m.gates(x), m(x)
    m.gate = "soft"
    gate_gaps, out_gaps = [], []
    for beta in (1.0, 10.0, 100.0, 1e4, 1e7):
        m.beta = beta
        soft = m.gates(x)
        # away from the boundary (|q| > 1e-3) the gap is sigmoid(-beta |q|) <= exp(-beta * 1e-3)
        gaps = [(s - h)[q.abs() > 1e-3].abs().max().item() for s, h, q in zip(soft, hard_gates, qs)]
        gate_gaps.append(max(gaps))
        assert max(gaps) <= math.exp(-beta * 1e-3) + 1e-12
        out_gaps.append((m(x) - hard_out).abs().max().item())
    assert all(b <= a + 1e-15 for a, b in zip(gate_gaps, gate_gaps[1:]))
    assert out_gaps[-1] < 1e-3 * out_gaps[0]


# ----------------------------------------------------------------------------- training options
def test_hard_gates_stop_gradients_soft_gates_pass_them(device):
    m = DGN(5, [4], 2, gate="hard").to(device)
    m(torch.randn(8, 5, device=device)).sum().backward()
    assert all(p.grad is None for p in m.gating.parameters())
    assert all(p.grad is not None for p in m.value.parameters())
    m.zero_grad(set_to_none=True)
    m.gate = "soft"
    m(torch.randn(8, 5, device=device)).sum().backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in m.gating.parameters())


def test_freezing_gating_or_value_network(device, mnist1d):
    train = mnist1d.train.subset(slice(0, 200))
    m = DLGN(40, [8], 10).to(device).freeze_gating()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    fit(m, train, epochs=1, progress=False, device=device)
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n]) == n.startswith("gating.")
    m.freeze_gating(False).freeze_value()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    fit(m, train, epochs=1, progress=False, device=device)
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n]) == n.startswith("value.")


class _BetaSeen(Callback):
    def __init__(self):
        super().__init__(epochs=None)
        self.seen = {}

    def on_step_end(self, state):
        self.seen.setdefault(state.epoch + 1, set()).add(state.model.beta)


def test_beta_annealing_sets_the_scheduled_beta_each_epoch(device, mnist1d):
    m = DGN(40, [8], 10, gate="soft", beta=0.5).to(device)
    anneal, seen = BetaAnnealing(start=1.0, end=1000.0, n_epochs=4), _BetaSeen()
    fit(m, mnist1d.train.subset(slice(0, 100)), epochs=4, callbacks=[anneal, seen], progress=False, device=device)
    for epoch in range(1, 5):  # geometric: 1, 10, 100, 1000
        assert len(seen.seen[epoch]) == 1 and seen.seen[epoch].pop() == pytest.approx(10.0 ** (epoch - 1))
    assert anneal.table.value.tolist() == pytest.approx([1.0, 10.0, 100.0, 1000.0, 1000.0])
    lin = BetaAnnealing(start=2.0, end=8.0, n_epochs=4, mode="linear")
    assert [lin.beta_for_epoch(e) for e in (1, 2, 3, 4, 9)] == pytest.approx([2.0, 4.0, 6.0, 8.0, 8.0])
    custom = BetaAnnealing(schedule=lambda e: 3.0 * e)
    assert custom.beta_for_epoch(2) == 6.0


def test_beta_annealing_needs_a_gated_model(mnist1d):
    with pytest.raises(TypeError, match="DGN or DLGN"):
        fit(MLP(40, [4], 10), mnist1d.train.subset(slice(0, 50)), epochs=1, callbacks=[BetaAnnealing()],
            progress=False)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf")])
def test_beta_must_be_positive(beta):
    with pytest.raises(ValueError, match="beta: expected a finite number > 0"):
        DGN(3, [2], 2, beta=beta)
    m = DLGN(3, [2], 2)
    with pytest.raises(ValueError, match="beta"):
        m.beta = beta
    with pytest.raises(ValueError, match="start"):
        BetaAnnealing(start=beta)
    with pytest.raises(ValueError, match=r"schedule\(1\)"):
        BetaAnnealing(schedule=lambda e: beta).beta_for_epoch(1)


def test_constructor_and_call_bad_input():
    with pytest.raises(ValueError, match="arch"):
        DGN(3, [2], 2, arch="rnn")
    with pytest.raises(ValueError, match="gate"):
        DGN(3, [2], 2, gate="fuzzy")
    with pytest.raises(ValueError, match="value_input"):
        DLGN(3, [2], 2, value_input="zeros")
    with pytest.raises(ValueError, match="widths"):
        DLGN(3, [], 2)
    with pytest.raises(TypeError, match="beta"):
        DGN(3, [2], 2, beta="big")
    m = DGN(3, [2, 2], 2)
    with pytest.raises(ValueError, match="x: expected a batch of inputs with 3 features"):
        m(torch.randn(4, 5))
    with pytest.raises(ValueError, match="gates: expected a list of 2 tensors"):
        m.value_forward(torch.randn(4, 3), [torch.ones(4, 2)])
    with pytest.raises(ValueError, match=r"gates\[1\]: expected a tensor of shape \(4, 2\)"):
        m.value_forward(torch.randn(4, 3), [torch.ones(4, 2), torch.ones(4, 3)])
    with pytest.raises(ValueError, match="x: expected a batch of shape"):
        DGN(2, [2], 2, arch="cnn")(torch.randn(4, 3, 10))


# ----------------------------------------------------------------------------- training on mnist1d
@pytest.mark.parametrize("make_model", [
    lambda: DGN(40, [32, 32], 10),
    lambda: DLGN(40, [32, 32], 10),
    lambda: DLGN(1, [16, 16], 10, arch="cnn", value_input="ones"),
    lambda: DGN(1, [8, 8], 10, arch="cnn"),
    lambda: DLGN(40, [32, 32], 10, gating="shallow"),
], ids=["dgn", "dlgn", "dlgn_ones_cnn", "dgn_cnn", "dlgn_shallow"])
def test_gated_models_train_on_mnist1d(make_model, mnist1d, device):
    model = make_model()
    history = fit(model, mnist1d.train, mnist1d.test, epochs=12, optimizer="adam", lr=1e-2, batch_size=64,
                  progress=False, device=device)
    acc = history[history.split == "test"].accuracy.iloc[-1]
    assert acc >= 0.3, acc  # chance is 0.1


def test_decoupled_learning_trains_the_value_network_under_fixed_gates(mnist1d, device):
    net = MLP(40, [32, 32], 10)
    fit(net, mnist1d.train, epochs=8, optimizer="adam", lr=1e-2, batch_size=64, progress=False, device=device)
    dgn = DGN.from_relu_network(net)  # fresh value network, gates copied and frozen
    gating_before = [p.detach().clone() for p in dgn.gating.parameters()]
    chance_level = evaluate(dgn, mnist1d.test)["accuracy"]
    fit(dgn, mnist1d.train, epochs=8, optimizer="adam", lr=1e-2, batch_size=64, progress=False, device=device)
    acc = evaluate(dgn, mnist1d.test)["accuracy"]
    assert acc >= 0.3 and acc > chance_level + 0.1
    assert all(torch.equal(a, b) for a, b in zip(gating_before, dgn.gating.parameters()))


# ----------------------------------------------------------------------------- shallow gating (DLGN-SF)
def _hand_gates(qs, gate, beta):
    return [(q > 0).double() if gate == "hard" else 1 / (1 + torch.exp(-beta * q)) for q in qs]


@pytest.mark.parametrize("gate", ["hard", "soft"])
def test_shallow_gates_are_functions_of_their_own_layer_of_the_input(gate, device):
    m = DLGN(5, [4, 3, 6], 2, gating="shallow", gate=gate, beta=3.0).to(device, torch.float64)
    assert [layer.in_features for layer in m.gating.layers] == [5, 5, 5]
    x = torch.randn(50, 5, device=device, dtype=torch.float64)
    # hand-written: q_l = W_l x + b_l for every l, read off the layer's own weights
    qs = [x @ layer.weight.T + layer.bias for layer in m.gating.layers]
    for got, want in zip(m.gates(x), _hand_gates(qs, gate, 3.0)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    before = [g.clone() for g in m.gates(x)]
    for changed in range(3):
        with torch.no_grad():
            m.gating.layers[changed].weight.add_(torch.randn_like(m.gating.layers[changed].weight))
        after = m.gates(x)
        for l in range(3):  # only the changed layer's gates move
            assert torch.equal(after[l], before[l]) == (l != changed), (changed, l)
        before = [g.clone() for g in after]


def test_deep_gates_do_depend_on_the_earlier_gating_layers(device):
    """The control of the test above: in the deep DLGN, changing layer 0 moves every later gate."""
    m = DLGN(5, [4, 3], 2, gate="soft").to(device, torch.float64)
    x = torch.randn(20, 5, device=device, dtype=torch.float64)
    before = m.gates(x)
    with torch.no_grad():
        m.gating.layers[0].weight.add_(1.0)
    assert all(not torch.equal(a, b) for a, b in zip(before, m.gates(x)))


@pytest.mark.parametrize("padding_mode", ["zeros", "circular"])
def test_shallow_convolutional_gates_by_hand(padding_mode, device):
    m = DLGN(2, [3, 4], 2, arch="cnn", gating="shallow", gate="hard", padding_mode=padding_mode,
             kernel_size=3).to(device, torch.float64)
    x = torch.randn(7, 2, 11, device=device, dtype=torch.float64)
    pad = "circular" if padding_mode == "circular" else "constant"
    xp = torch.nn.functional.pad(x, (1, 1), mode=pad)
    for layer, g in zip(m.gating.layers, m.gates(x)):
        q = torch.nn.functional.conv1d(xp, layer.weight, layer.bias)
        assert g.shape == (7, layer.out_channels, 11)
        assert torch.equal(g, (q > 0).double())
    assert torch.equal(m(x), m.value_forward(x, m.gates(x)))
    hs = effective_halfspaces(m, input_shape=(2, 11))
    assert hs.method == "basis_images"
    for q, (a, c) in zip(m.gating_pre_activations(x), zip(hs.normals, hs.offsets)):
        torch.testing.assert_close(torch.einsum("cthw,nhw->nct", a, x) + c, q, rtol=1e-10, atol=1e-12)


def test_shallow_halfspaces_are_the_layer_weights(device):
    m = DLGN(4, [3, 5], 2, gating="shallow").to(device)
    hs = effective_halfspaces(m)
    assert hs.method == "layer_weights"
    for layer, a, c in zip(m.gating.layers, hs.normals, hs.offsets):
        torch.testing.assert_close(a, layer.weight, rtol=0, atol=1e-6)
        torch.testing.assert_close(c, layer.bias, rtol=0, atol=1e-6)
    x = torch.randn(9, 4, device=device)
    for a, b in zip(hs.pre_activations(x), m.gating_pre_activations(x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _enumerated_npk(x1, x2, gates1, gates2, out_features, value_ones=False):
    """NPK(x, x') = sum over paths p = (i_0, i_1, ..., i_L, k) of phi_x(p) phi_x'(p),
    phi_x(p) = x_{i_0} * prod_l G_l(x)_{i_l}, written as an explicit loop over every path."""
    import itertools
    sizes = [x1.shape[1]] + [g.shape[1] for g in gates1]
    k = torch.zeros(x1.shape[0], x2.shape[0], dtype=torch.float64)
    for path in itertools.product(*(range(s) for s in sizes)):
        f1 = torch.ones(x1.shape[0], dtype=torch.float64) if value_ones else x1[:, path[0]].clone()
        f2 = torch.ones(x2.shape[0], dtype=torch.float64) if value_ones else x2[:, path[0]].clone()
        for l, unit in enumerate(path[1:]):
            f1 = f1 * gates1[l][:, unit]
            f2 = f2 * gates2[l][:, unit]
        k += out_features * torch.outer(f1, f2)  # one path per output unit, each with the same features
    return k


@pytest.mark.parametrize("gate", ["hard", "soft"])
@pytest.mark.parametrize("value_input", ["x", "ones"])
def test_npk_of_a_shallow_dlgn_against_path_enumeration(gate, value_input):
    from sepmeasure.kernels import neural_path_kernel
    torch.manual_seed(0)
    m = DLGN(3, [2, 3, 2], 2, gating="shallow", gate=gate, beta=2.0, value_input=value_input).double()
    x1 = torch.randn(5, 3, dtype=torch.float64)
    x2 = torch.randn(4, 3, dtype=torch.float64)

    def gates_by_hand(x):
        return _hand_gates([x @ layer.weight.T + layer.bias for layer in m.gating.layers], gate, 2.0)

    want = _enumerated_npk(x1, x2, gates_by_hand(x1), gates_by_hand(x2), 2, value_ones=value_input == "ones")
    got = neural_path_kernel(m, x1, x2)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # the kernel is that of the shallow gates: a deep DLGN with the same weights differs
    deep = DLGN(3, [2, 3, 2], 2, gate=gate, beta=2.0, value_input=value_input).double()
    with torch.no_grad():
        deep.gating.layers[0].load_state_dict(m.gating.layers[0].state_dict())
    assert not torch.allclose(neural_path_kernel(deep, x1, x2), want)


def test_shallow_gating_bad_input():
    with pytest.raises(ValueError, match="gating: 'shallow'.*DLGN"):
        DGN(3, [2], 2, gating="shallow")
    with pytest.raises(ValueError, match="gating"):
        DLGN(3, [2], 2, gating="wide")
    with pytest.raises(ValueError, match="stride: expected 1 with gating='shallow'"):
        DLGN(1, [2, 2], 2, arch="cnn", gating="shallow", stride=2)
    assert DLGN(3, [2], 2, gating="shallow").config["gating"] == "shallow"
