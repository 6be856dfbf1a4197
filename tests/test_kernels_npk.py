"""Neural path kernel and gate overlaps: brute-force enumeration of every path on tiny networks,
the fully connected closed form, rotational invariance, and the gate protocol."""
from __future__ import annotations

import itertools

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sepmeasure.kernels import GateOverlap, gate_overlap, network_gates, neural_path_kernel
from sepmeasure.models import CNN, MLP, ResNet

F64 = torch.float64


def relu_gates(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """1[input > 0] of every nn.ReLU module, captured independently of the library."""
    found = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, _n=n: found.__setitem__(_n, (args[0] > 0).double()))
               for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return found


# ----------------------------------------------------------------------------
# Brute force: explicit graphs of units, every path enumerated
# ----------------------------------------------------------------------------

class PathGraph:
    """Units with incoming edges ``(unit, fixed weight)``; some units are gated."""

    def __init__(self) -> None:
        self.edges: dict[tuple, list[tuple[tuple, float]]] = {}
        self.gate_of: dict[tuple, tuple[str, tuple]] = {}   # unit -> (gate layer, index into its tensor)
        self.outputs: list[tuple] = []

    def add(self, unit: tuple, preds: list[tuple[tuple, float]], gate: tuple[str, tuple] | None = None) -> None:
        self.edges[unit] = preds
        if gate is not None:
            self.gate_of[unit] = gate

    def paths(self) -> list[tuple[list[tuple], float]]:
        found = []

        def walk(unit, suffix, weight):
            if unit[0] == "in":
                found.append(([unit] + suffix, weight))
                return
            for pred, w in self.edges[unit]:
                walk(pred, [unit] + suffix, weight * w)

        for out in self.outputs:
            walk(out, [], 1.0)
        return found

    def npk(self, x1, g1, x2, g2) -> torch.Tensor:
        """Σ_p w_p x_{p(0)} x'_{p(0)} Π gates, summed path by path; x: (N, *input), g: {layer: (N, ...)}."""
        total = torch.zeros(x1.shape[0], x2.shape[0], dtype=F64)
        for path, weight in self.paths():
            phi1 = x1[(slice(None), *path[0][1:])].clone()
            phi2 = x2[(slice(None), *path[0][1:])].clone()
            for unit in path[1:]:
                if unit in self.gate_of:
                    layer, index = self.gate_of[unit]
                    phi1 = phi1 * g1[layer][(slice(None), *index)]
                    phi2 = phi2 * g2[layer][(slice(None), *index)]
            total += weight * phi1[:, None] * phi2[None, :]
        return total


def fc_graph(d: int, widths: list[int], k: int, gate_names: list[str]) -> PathGraph:
    g = PathGraph()
    prev = [("in", i) for i in range(d)]
    for layer, (w, name) in enumerate(zip(widths, gate_names)):
        units = [("h", layer, j) for j in range(w)]
        for j, u in enumerate(units):
            g.add(u, [(p, 1.0) for p in prev], gate=(name, (j,)))
        prev = units
    g.outputs = [("out", o) for o in range(k)]
    for o in g.outputs:
        g.add(o, [(p, 1.0) for p in prev])
    return g


def conv_edges(prev: str, c_in: int, co: int, t: int, length: int, circular: bool, kernel: int = 3):
    """Incoming edges of output unit (co, t) of a 'same' conv with weights one."""
    edges = []
    for ci in range(c_in):
        for j in range(kernel):
            s = t + j - kernel // 2
            if circular:
                s %= length
            elif not 0 <= s < length:
                continue
            edges.append(((prev, ci, s), 1.0))
    return edges


def cnn_graph(channels: list[int], k: int, length: int, circular: bool, gate_names: list[str]) -> PathGraph:
    g = PathGraph()
    prev, c_prev = "in", 1
    for layer, (c, name) in enumerate(zip(channels, gate_names)):
        unit = f"c{layer}"
        for co, t in itertools.product(range(c), range(length)):
            g.add((unit, co, t), conv_edges(prev, c_prev, co, t, length, circular), gate=(name, (co, t)))
        prev, c_prev = unit, c
    for ch in range(c_prev):
        g.add(("pool", ch), [((prev, ch, t), 1.0 / length) for t in range(length)])
    g.outputs = [("out", o) for o in range(k)]
    for o in g.outputs:
        g.add(o, [(("pool", ch), 1.0) for ch in range(c_prev)])
    return g


def resnet_graph(width: int, k: int, length: int, circular: bool) -> PathGraph:
    """ResNet(1, width, n_blocks=1): stem, x + conv2(act2(conv1(act1(x)))), act, pool, head."""
    g = PathGraph()
    units = list(itertools.product(range(width), range(length)))
    for c, t in units:
        g.add(("stem", c, t), conv_edges("in", 1, c, t, length, circular))
    for c, t in units:
        g.add(("a1", c, t), [(("stem", c, t), 1.0)], gate=("blocks.0.act1", (c, t)))
    for c, t in units:
        g.add(("c1", c, t), conv_edges("a1", width, c, t, length, circular))
    for c, t in units:
        g.add(("a2", c, t), [(("c1", c, t), 1.0)], gate=("blocks.0.act2", (c, t)))
    for c, t in units:
        g.add(("c2", c, t), conv_edges("a2", width, c, t, length, circular))
    for c, t in units:
        g.add(("r", c, t), [(("stem", c, t), 1.0), (("c2", c, t), 1.0)])
    for c, t in units:
        g.add(("a", c, t), [(("r", c, t), 1.0)], gate=("act", (c, t)))
    for c in range(width):
        g.add(("pool", c), [(("a", c, t), 1.0 / length) for t in range(length)])
    g.outputs = [("out", o) for o in range(k)]
    for o in g.outputs:
        g.add(o, [(("pool", c), 1.0) for c in range(width)])
    return g


def test_fc_npk_matches_path_enumeration(device):
    model = MLP(3, [3, 2], 2).double()           # biases shape the gates only
    x1, x2 = torch.randn(4, 3, dtype=F64), torch.randn(3, 3, dtype=F64)
    graph = fc_graph(3, [3, 2], 2, ["layers.0.act", "layers.1.act"])
    assert len(graph.paths()) == 3 * 3 * 2 * 2
    expected = graph.npk(x1, relu_gates(model, x1), x2, relu_gates(model, x2))
    got = neural_path_kernel(model.to(device), x1.to(device), x2.to(device))
    assert torch.allclose(got.cpu(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("padding_mode", ["zeros", "circular"])
def test_conv_gap_npk_matches_path_enumeration(padding_mode, device):
    model = CNN(1, [2, 2], 2, padding_mode=padding_mode).double()
    x1, x2 = torch.randn(3, 4, dtype=F64), torch.randn(2, 4, dtype=F64)
    graph = cnn_graph([2, 2], 2, 4, padding_mode == "circular", ["layers.0.act", "layers.1.act"])
    g1 = relu_gates(model, x1)
    g2 = relu_gates(model, x2)
    expected = graph.npk(x1[:, None], g1, x2[:, None], g2)
    got = neural_path_kernel(model.to(device), x1.to(device), x2.to(device))
    assert torch.allclose(got.cpu(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("padding_mode", ["zeros", "circular"])
def test_residual_npk_matches_path_enumeration(padding_mode, device):
    model = ResNet(1, 2, 1, 2, padding_mode=padding_mode).double()
    x1, x2 = torch.randn(3, 4, dtype=F64), torch.randn(2, 4, dtype=F64)
    graph = resnet_graph(2, 2, 4, padding_mode == "circular")
    expected = graph.npk(x1[:, None], relu_gates(model, x1), x2[:, None], relu_gates(model, x2))
    got = neural_path_kernel(model.to(device), x1.to(device), x2.to(device))
    assert torch.allclose(got.cpu(), expected, rtol=1e-10, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), widths=st.lists(st.integers(1, 7), min_size=1, max_size=4),
       k=st.integers(1, 4), d=st.integers(1, 6), bias=st.booleans())
def test_fc_closed_form(seed, widths, k, d, bias, device):
    """NPK = K · ⟨x, x'⟩ · Π_l ⟨G_l(x), G_l(x')⟩ (the paper's formula, times K output units)."""
    torch.manual_seed(seed)
    model = MLP(d, widths, k, bias=bias).to(device=device, dtype=F64)
    x1 = torch.randn(4, d, device=device, dtype=F64)
    x2 = torch.randn(3, d, device=device, dtype=F64)
    g1, g2 = relu_gates(model, x1), relu_gates(model, x2)
    closed = k * (x1 @ x2.T)
    for name in g1:
        closed = closed * (g1[name] @ g2[name].T)
    assert torch.allclose(neural_path_kernel(model, x1, x2), closed, rtol=1e-10, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), shift=st.integers(-9, 9), resnet=st.booleans())
def test_rotational_invariance_with_circular_padding(seed, shift, resnet, device):
    """Convolution with global average pooling (and skips) makes the NPK invariant to a joint
    circular shift of both inputs (Lakshminarayanan & Singh 2021)."""
    torch.manual_seed(seed)
    model = (ResNet(1, 3, 2, 2, padding_mode="circular") if resnet
             else CNN(1, [3, 4], 2, padding_mode="circular")).to(device=device, dtype=F64)
    x1 = torch.randn(3, 8, device=device, dtype=F64)
    x2 = torch.randn(2, 8, device=device, dtype=F64)
    base = neural_path_kernel(model, x1, x2)
    shifted = neural_path_kernel(model, torch.roll(x1, shift, dims=-1), torch.roll(x2, shift, dims=-1))
    assert torch.allclose(shifted, base, rtol=1e-10, atol=1e-12)


def test_not_invariant_to_shifting_one_input_only(device):
    """The invariance test can fail: shifting one input alone changes the kernel."""
    model = CNN(1, [3, 4], 2, padding_mode="circular").to(device=device, dtype=F64)
    x1, x2 = torch.randn(3, 8, device=device, dtype=F64), torch.randn(2, 8, device=device, dtype=F64)
    base = neural_path_kernel(model, x1, x2)
    assert not torch.allclose(neural_path_kernel(model, torch.roll(x1, 3, dims=-1), x2), base, rtol=1e-6)


def test_symmetric_blocks_and_cross_kernel(device):
    model = ResNet(1, 3, 1, 2).to(device=device, dtype=F64)
    x = torch.randn(7, 6, device=device, dtype=F64)
    whole = neural_path_kernel(model, x)
    assert torch.equal(whole, whole.T)
    for size in (1, 2, 3):
        assert torch.allclose(neural_path_kernel(model, x, block_size=size), whole, rtol=1e-12, atol=1e-14)
    assert torch.allclose(neural_path_kernel(model, x, x[2:5], block_size=2), whole[:, 2:5], rtol=1e-12, atol=1e-14)
    eig = torch.linalg.eigvalsh(whole)
    assert float(eig.min()) >= -1e-10 * float(eig.max())


def test_inplace_and_reused_relu_modules(device):
    relu = nn.ReLU(inplace=True)
    model = nn.Sequential(nn.Linear(3, 4), relu, nn.Linear(4, 4), relu, nn.Linear(4, 2)).to(device=device, dtype=F64)
    x = torch.randn(5, 3, device=device, dtype=F64)
    gates = network_gates(model, x)
    assert list(gates) == ["1", "1#1"]
    with torch.no_grad():
        z1 = model[0](x)
        z2 = model[2](torch.relu(z1))
    assert torch.equal(gates["1"], (z1 > 0).double()) and torch.equal(gates["1#1"], (z2 > 0).double())
    closed = 2 * (x @ x.T) * (gates["1"] @ gates["1"].T) * (gates["1#1"] @ gates["1#1"].T)
    assert torch.allclose(neural_path_kernel(model, x), closed, rtol=1e-10, atol=1e-12)


def test_model_is_left_unchanged(device):
    model = CNN(1, [3], 2).to(device=device, dtype=F64).eval()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    neural_path_kernel(model, torch.randn(3, 6, device=device, dtype=F64))
    assert not model.training
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())


# ----------------------------------------------------------------------------
# Gated models (the gate protocol)
# ----------------------------------------------------------------------------

class TinyGated(nn.Module):
    """A fully connected gated network following the gate protocol (DGN / DLGN / DLGN-SF)."""

    def __init__(self, d: int, widths: list[int], k: int, beta: float | None = None, value_input: str = "x",
                 gating_relu: bool = True) -> None:
        super().__init__()
        sizes = [d, *widths]
        self.gating = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.value = nn.ModuleList([*(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])),
                                    nn.Linear(sizes[-1], k)])
        self.beta, self.value_input, self.gating_relu = beta, value_input, gating_relu

    def gates(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, q = [], x
        for lin in self.gating:
            q = lin(q)
            out.append((q > 0).to(q.dtype) if self.beta is None else torch.sigmoid(self.beta * q))
            q = torch.relu(q) if self.gating_relu else q
        return out

    def value_forward(self, x: torch.Tensor, gates: list[torch.Tensor]) -> torch.Tensor:
        h = torch.ones_like(x) if self.value_input == "ones" else x
        for lin, g in zip(self.value[:-1], gates):
            h = lin(h) * g
        return self.value[-1](h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value_forward(x, self.gates(x))

    def value_parameter_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters() if n.startswith("value.")]


class TinyConvGated(nn.Module):
    """A convolutional gated network with global average pooling (gates shaped (N, C, L))."""

    def __init__(self, channels: list[int], k: int, circular: bool) -> None:
        super().__init__()
        mode = "circular" if circular else "zeros"
        sizes = [1, *channels]
        self.gating = nn.ModuleList(nn.Conv1d(a, b, 3, padding=1, padding_mode=mode) for a, b in zip(sizes, sizes[1:]))
        convs = [nn.Conv1d(a, b, 3, padding=1, padding_mode=mode) for a, b in zip(sizes, sizes[1:])]
        self.value = nn.ModuleList([*convs, nn.Linear(sizes[-1], k)])

    def gates(self, x):
        out, q = [], x.unsqueeze(1)
        for conv in self.gating:
            q = conv(q)
            out.append(torch.sigmoid(4 * q))
        return out

    def value_forward(self, x, gates):
        h = x.unsqueeze(1)
        for conv, g in zip(self.value[:-1], gates):
            h = conv(h) * g
        return self.value[-1](h.mean(dim=2))

    def forward(self, x):
        return self.value_forward(x, self.gates(x))

    def value_parameter_names(self):
        return [n for n, _ in self.named_parameters() if n.startswith("value.")]


@pytest.mark.parametrize("beta, value_input, gating_relu", [
    (None, "x", True),      # DGN with hard gates
    (4.0, "x", False),      # DLGN: soft gates of a deep linear gating network
    (4.0, "ones", False),   # DLGN with a constant value input (value_input="ones")
])
def test_gated_fc_closed_form(beta, value_input, gating_relu, device):
    model = TinyGated(4, [5, 3], 2, beta, value_input, gating_relu).to(device=device, dtype=F64)
    x1 = torch.randn(4, 4, device=device, dtype=F64)
    x2 = torch.randn(3, 4, device=device, dtype=F64)
    with torch.no_grad():
        g1, g2 = model.gates(x1), model.gates(x2)
    u1, u2 = (torch.ones_like(x1), torch.ones_like(x2)) if value_input == "ones" else (x1, x2)
    closed = 2 * (u1 @ u2.T)
    for a, b in zip(g1, g2):
        closed = closed * (a @ b.T)
    assert torch.allclose(neural_path_kernel(model, x1, x2), closed, rtol=1e-10, atol=1e-12)
    overlap = gate_overlap(model, x1, x2)
    assert list(overlap) == ["gates[0]", "gates[1]"]
    assert torch.allclose(overlap["gates[1]"], g1[1] @ g2[1].T)


@pytest.mark.parametrize("circular", [False, True])
def test_gated_conv_matches_path_enumeration(circular, device):
    model = TinyConvGated([2, 2], 2, circular).double()
    x1, x2 = torch.randn(3, 4, dtype=F64), torch.randn(2, 4, dtype=F64)
    with torch.no_grad():
        g1 = dict(enumerate(model.gates(x1)))
        g2 = dict(enumerate(model.gates(x2)))
    graph = cnn_graph([2, 2], 2, 4, circular, [0, 1])
    expected = graph.npk(x1[:, None], g1, x2[:, None], g2)
    got = neural_path_kernel(model.to(device), x1.to(device), x2.to(device))
    assert torch.allclose(got.cpu(), expected, rtol=1e-10, atol=1e-12)


def test_gate_protocol_violations(device):
    model = TinyGated(3, [4], 2).to(device=device, dtype=F64)
    x = torch.randn(3, 3, device=device, dtype=F64)

    class Lying(TinyGated):
        def forward(self, x):
            return super().forward(x) + 1

    with pytest.raises(ValueError, match=r"forward\(x\) == value_forward"):
        neural_path_kernel(Lying(3, [4], 2).to(device=device, dtype=F64), x)

    class OutOfRange(TinyGated):
        def gates(self, x):
            return [2 * g for g in super().gates(x)]

    with pytest.raises(ValueError, match=r"model.gates: expected gates\[0\] with values in \[0, 1\]"):
        neural_path_kernel(OutOfRange(3, [4], 2).to(device=device, dtype=F64), x)

    class WrongShape(TinyGated):
        def gates(self, x):
            return [g[:1] for g in super().gates(x)]

    with pytest.raises(ValueError, match=r"model.gates: expected gates\[0\] of shape \(3, ...\)"):
        gate_overlap(WrongShape(3, [4], 2).to(device=device, dtype=F64), x)

    class Partial(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def gates(self, x):
            return []

        def forward(self, x):
            return self.lin(x)

    with pytest.raises(TypeError, match="gate protocol"):
        neural_path_kernel(Partial().to(device=device, dtype=F64), x)

    class BadNames(TinyGated):
        def value_parameter_names(self):
            return ["value.9.weight"]

    with pytest.raises(ValueError, match="value_parameter_names"):
        neural_path_kernel(BadNames(3, [4], 2).to(device=device, dtype=F64), x)
    assert neural_path_kernel(model, x).shape == (3, 3)


# ----------------------------------------------------------------------------
# Gate overlaps
# ----------------------------------------------------------------------------

def test_gate_overlap_matches_direct_count(device):
    model = ResNet(1, 2, 1, 2).to(device=device, dtype=F64)
    x1 = torch.randn(3, 5, device=device, dtype=F64)
    x2 = torch.randn(2, 5, device=device, dtype=F64)
    omega = gate_overlap(model, x1, x2)
    assert isinstance(omega, GateOverlap)
    assert list(omega) == ["blocks.0.act1", "blocks.0.act2", "act"] and len(omega) == 3
    g1, g2 = relu_gates(model, x1), relu_gates(model, x2)
    for name in omega:
        direct = torch.zeros(3, 2, dtype=F64)
        for a in range(3):
            for b in range(2):
                direct[a, b] = sum(float(g1[name][a].reshape(-1)[i] * g2[name][b].reshape(-1)[i])
                                   for i in range(g1[name][a].numel()))
        assert torch.equal(omega[name].cpu(), direct)
        assert omega.units[name] == 10
    table = omega.to_frame()
    assert len(table) == 3 * 3 * 2
    row = table[(table.layer == "act") & (table.i == 2) & (table.j == 1)].iloc[0]
    assert row.overlap == float(omega["act"][2, 1]) and row.fraction == row.overlap / 10
    sym = gate_overlap(model, x1)
    assert sym.symmetric and torch.equal(sym["act"], sym["act"].T)


def test_fc_npk_is_inner_product_times_overlaps(device):
    model = MLP(4, [6, 5], 3, bias=False).to(device=device, dtype=F64)
    x = torch.randn(5, 4, device=device, dtype=F64)
    omega = gate_overlap(model, x)
    assert torch.allclose(neural_path_kernel(model, x),
                          3 * (x @ x.T) * omega["layers.0.act"] * omega["layers.1.act"], rtol=1e-10)


def test_linear_network_has_no_gates(device):
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).to(device=device, dtype=F64)
    x = torch.randn(3, 3, device=device, dtype=F64)
    assert len(gate_overlap(model, x)) == 0
    assert isinstance(gate_overlap(model, x).to_frame(), pd.DataFrame)
    assert torch.allclose(neural_path_kernel(model, x), 2 * 4 * (x @ x.T), rtol=1e-12)


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("activation, found", [("tanh", "Tanh"), ("gelu", "GELU"), ("leaky_relu", "LeakyReLU"),
                                               ("prelu", "PReLU"), ("sigmoid", "Sigmoid")])
def test_non_gate_nonlinearity_is_named(activation, found, device):
    model = MLP(3, [4], 2, activation=activation).to(device)
    x = torch.randn(2, 3, device=device)
    for fn in (neural_path_kernel, gate_overlap, network_gates):
        with pytest.raises(ValueError, match=f"non-linearity {found} at 'layers.0.act'"):
            fn(model, x)


def test_normalisation_and_hidden_nonlinearities(device):
    model = ResNet(1, 2, 1, 2, norm="batch").to(device).train()  # batch statistics: not a per-channel map
    with pytest.raises(ValueError, match="BatchNorm1d at 'blocks.0.norm1'"):
        neural_path_kernel(model, torch.randn(2, 5, device=device))

    class Hidden(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.b(torch.tanh(self.act(self.a(x))))

    with pytest.raises(ValueError, match="non-linearity tanh at 'tanh'"):  # functional calls are seen in the graph
        neural_path_kernel(Hidden().to(device), torch.randn(3, 3, device=device))


def test_inputs_that_do_not_fit(device):
    model = MLP(3, [4], 2).to(device)
    with pytest.raises(ValueError, match=r"x1: expected inputs the model accepts.*\(2, 5\)"):
        neural_path_kernel(model, torch.randn(2, 5, device=device))
    with pytest.raises(ValueError, match=r"x2: expected samples of shape \(3,\) like x1"):
        neural_path_kernel(model, torch.randn(2, 3, device=device), torch.randn(2, 4, device=device))
    with pytest.raises(TypeError, match="x1: expected a torch.float32 tensor"):
        gate_overlap(model, torch.randn(2, 3, device=device, dtype=F64))
    with pytest.raises(ValueError, match="x1: expected finite values"):
        neural_path_kernel(model, torch.full((2, 3), float("inf"), device=device))
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        neural_path_kernel("relu net", torch.randn(2, 3))
    with pytest.raises(ValueError, match="block_size"):
        neural_path_kernel(model, torch.randn(2, 3, device=device), block_size=0)


# ----------------------------------------------------------------------------
# The library's gated models (sepmeasure.models.gated) through the protocol
# ----------------------------------------------------------------------------

def test_dgn_from_relu_network_has_the_relu_networks_kernel(device):
    """Hook path (ReLU network) and protocol path (its DGN) must give the same NPK."""
    gated = pytest.importorskip("sepmeasure.models.gated")
    for net, shape in ((MLP(5, [6, 4], 3), (5,)), (CNN(1, [3, 2], 3, padding_mode="circular"), (6,))):
        net = net.to(device=device, dtype=F64)
        dgn = gated.DGN.from_relu_network(net, gate="hard")
        x1 = torch.randn(4, *shape, device=device, dtype=F64)
        x2 = torch.randn(3, *shape, device=device, dtype=F64)
        assert torch.allclose(neural_path_kernel(dgn, x1, x2), neural_path_kernel(net, x1, x2), rtol=1e-10)
        mine, theirs = gate_overlap(dgn, x1, x2), gate_overlap(net, x1, x2)
        for a, b in zip(mine.values(), theirs.values()):
            assert torch.equal(a, b)


@pytest.mark.parametrize("kind, value_input", [("DGN", "x"), ("DLGN", "x"), ("DLGN", "ones")])
def test_library_gated_mlp_closed_form(kind, value_input, device):
    gated = pytest.importorskip("sepmeasure.models.gated")
    model = getattr(gated, kind)(4, [5, 3], 2, gate="soft", beta=3.0, value_input=value_input)
    model = model.to(device=device, dtype=F64)
    x1, x2 = torch.randn(4, 4, device=device, dtype=F64), torch.randn(3, 4, device=device, dtype=F64)
    with torch.no_grad():
        g1, g2 = model.gates(x1), model.gates(x2)
    u1, u2 = (torch.ones_like(x1), torch.ones_like(x2)) if value_input == "ones" else (x1, x2)
    closed = 2 * (u1 @ u2.T) * (g1[0] @ g2[0].T) * (g1[1] @ g2[1].T)
    assert torch.allclose(neural_path_kernel(model, x1, x2), closed, rtol=1e-10, atol=1e-12)


def test_library_gated_cnn_matches_path_enumeration(device):
    gated = pytest.importorskip("sepmeasure.models.gated")
    model = gated.DLGN(1, [2, 2], 2, arch="cnn", gate="soft", padding_mode="circular").double()
    x1, x2 = torch.randn(3, 4, dtype=F64), torch.randn(2, 4, dtype=F64)
    with torch.no_grad():
        g1, g2 = dict(enumerate(model.gates(x1))), dict(enumerate(model.gates(x2)))
    expected = cnn_graph([2, 2], 2, 4, True, [0, 1]).npk(x1[:, None], g1, x2[:, None], g2)
    got = neural_path_kernel(model.to(device), x1.to(device), x2.to(device))
    assert torch.allclose(got.cpu(), expected, rtol=1e-10, atol=1e-12)
    shifted = neural_path_kernel(model.to(device), torch.roll(x1, 1, -1).to(device), torch.roll(x2, 1, -1).to(device))
    assert torch.allclose(shifted, got, rtol=1e-10, atol=1e-12)
