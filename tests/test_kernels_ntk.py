"""Empirical NTK: every method against the "jacobian" reference, and the reference against a
plain-autograd brute force (one backward pass per sample and output, no torch.func)."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sepmeasure.kernels import ntk as ntk_module
from sepmeasure.kernels import ntk_structured
from sepmeasure.kernels.ntk_structured import CallShape, choose_form
from sepmeasure.kernels import empirical_ntk, select_parameters
from sepmeasure.models import CNN, MLP, ResNet

sys.path.insert(0, str(Path(__file__).parent))
import zoo  # noqa: E402
from ntk_helpers import randomise_batchnorm, record_builders, rel_err  # noqa: E402

TOL = {torch.float64: 1e-10, torch.float32: 1e-4}
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

METHODS = ("jacobian", "ntvp", "structured", "auto")


def trace_of(full: torch.Tensor) -> torch.Tensor:
    return full.diagonal(dim1=2, dim2=3).sum(-1)


def brute_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, names=None) -> torch.Tensor:
    """Θ(x, x')_{kl} = Σ_p ∂f_k(x)/∂θ_p ∂f_l(x')/∂θ_p with one autograd pass per sample and output."""
    params = [p for n, p in model.named_parameters() if (names is None and p.requires_grad)
              or (names is not None and n in names)]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)

    def jac(x: torch.Tensor) -> torch.Tensor:
        out = model(x.unsqueeze(0)).squeeze(0)
        rows = []
        for k in range(out.shape[0]):
            grads = torch.autograd.grad(out[k], params, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                   for g, p in zip(grads, params)]))
        return torch.stack(rows)

    try:
        j1 = torch.stack([jac(x) for x in x1])
        j2 = torch.stack([jac(x) for x in x2])
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    return torch.einsum("akp,blp->abkl", j1, j2)


# ----------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------

class SharedTwice(nn.Module):
    """A Linear module applied twice, plus two Linear modules sharing one weight."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 5)
        self.shared = nn.Linear(5, 5)
        self.tied_a = nn.Linear(5, 5)
        self.tied_b = nn.Linear(5, 5)
        self.tied_b.weight = self.tied_a.weight
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        h = torch.relu(self.shared(h))
        h = torch.tanh(self.shared(h))
        h = torch.tanh(self.tied_a(h)) + self.tied_b(h)
        return self.head(h)


class Sequence3d(nn.Module):
    """A Linear layer applied at every position of a (N, T, d) input."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 5)
        self.head = nn.Linear(15, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(nn.functional.gelu(self.proj(x)).flatten(1))


class OddConvs(nn.Module):
    """Convolutions with 'same' padding of an even kernel, dilation, circular/reflect padding, stride."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(2, 3, 4, padding="same", dilation=2, padding_mode="circular")
        self.c2 = nn.Conv1d(3, 3, 3, stride=2, padding=1, padding_mode="reflect")
        self.c3 = nn.Conv2d(1, 2, (2, 3), stride=(1, 2), padding=(1, 0), bias=False)
        self.head = nn.Linear(3 * 5 + 2 * 4 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.c2(torch.tanh(self.c1(x))))                       # (N, 3, 5)
        b = torch.relu(self.c3(x[:, :1].reshape(-1, 1, 3, 3).repeat(1, 1, 1, 2)))  # (N, 2, 4, 2)
        return self.head(torch.cat([a.flatten(1), b.flatten(1)], dim=1))


class WeightUsedTwice(nn.Module):
    """``head.weight`` is also used outside ``head``'s forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 3)
        self.head = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        h = torch.tanh(nn.functional.linear(h, self.head.weight))
        return self.head(h)


MODELS = {
    "mlp_relu": (lambda: MLP(5, [6, 7], 3), (5,)),
    "mlp_prelu": (lambda: MLP(5, [6, 7], 3, activation="prelu"), (5,)),
    "mlp_gelu": (lambda: MLP(5, [6, 7], 3, activation="gelu"), (5,)),
    "mlp_tanh": (lambda: MLP(5, [6], 3, activation="tanh"), (5,)),
    "cnn1d": (lambda: CNN(1, [4, 3], 3, dim=1), (9,)),
    "cnn1d_strided": (lambda: CNN(2, [3, 3], 3, kernel_size=4, stride=2, padding_mode="reflect"), (2, 9)),
    "cnn2d": (lambda: CNN(2, [3, 3], 3, dim=2, padding_mode="circular"), (2, 5, 5)),
    "resnet": (lambda: ResNet(1, 4, 2, 3), (8,)),
    "resnet_batchnorm_eval": (lambda: randomise_batchnorm(ResNet(1, 3, 1, 3, norm="batch")).eval(), (7,)),
    "shared_twice": (SharedTwice, (4,)),
    "sequence3d": (Sequence3d, (3, 4)),
    "odd_convs": (OddConvs, (2, 9)),
}


def make(name: str, dtype: torch.dtype, device: torch.device, n1: int = 5, n2: int = 3):
    factory, shape = MODELS[name]
    model = factory().to(device=device, dtype=dtype)
    x1 = torch.randn(n1, *shape, device=device, dtype=dtype)
    x2 = torch.randn(n2, *shape, device=device, dtype=dtype)
    return model, x1, x2


# ----------------------------------------------------------------------------
# Agreement
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MODELS))
def test_jacobian_reference_matches_brute_force(name, device):
    model, x1, x2 = make(name, torch.float64, device)
    expected = brute_ntk(model, x1, x2)
    got = empirical_ntk(model, x1, x2, method="jacobian")
    assert got.shape == expected.shape
    assert rel_err(got, expected) <= 1e-10


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(MODELS))
def test_methods_agree_with_jacobian(name, dtype, device):
    model, x1, x2 = make(name, dtype, device)
    # float64: both the symmetric kernel and a cross kernel; float32: the cross kernel
    for x_other in ((None, x2) if dtype == torch.float64 else (x2,)):
        ref = empirical_ntk(model, x1, x_other, method="jacobian")
        n2 = x1.shape[0] if x_other is None else x_other.shape[0]
        assert ref.shape == (x1.shape[0], n2, 3, 3)
        ref_trace = empirical_ntk(model, x1, x_other, method="jacobian", output="trace")
        assert rel_err(ref_trace, trace_of(ref)) <= TOL[dtype]
        for method in ("ntvp", "structured"):
            full = empirical_ntk(model, x1, x_other, method=method)
            trace = empirical_ntk(model, x1, x_other, method=method, output="trace")
            assert full.shape == ref.shape and trace.shape == ref.shape[:2]
            assert full.dtype == dtype and full.device == x1.device
            assert rel_err(full, ref) <= TOL[dtype], (method, "full")
            assert rel_err(trace, trace_of(ref)) <= TOL[dtype], (method, "trace")


def test_auto_is_structured_or_jacobian(device, monkeypatch):
    model, x1, x2 = make("resnet", torch.float64, device)
    used = record_builders(monkeypatch)
    got = empirical_ntk(model, x1, x2)
    assert len(set(used)) == 1 and used[0] in ("structured", "jacobian")
    assert rel_err(got, empirical_ntk(model, x1, x2, method="jacobian")) <= 1e-10


def test_sizes_that_coincide_with_the_output_count(device):
    """Nested vmap gets PReLU's backward wrong when two batch sizes agree; no method may."""
    model = MLP(5, [7, 6], 3, activation="prelu").to(device=device, dtype=torch.float64)
    x = torch.randn(9, 5, device=device, dtype=torch.float64)
    for n1, n2 in [(3, 3), (9, 3), (1, 3), (3, 1)]:
        expected = brute_ntk(model, x[:n1], x[:n2])
        for method in METHODS:
            assert rel_err(empirical_ntk(model, x[:n1], x[:n2], method=method), expected) <= 1e-10, (method, n1, n2)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), activation=st.sampled_from(["relu", "prelu", "gelu", "tanh", "elu"]),
       widths=st.lists(st.integers(1, 6), min_size=1, max_size=3), n1=st.integers(1, 5), n2=st.integers(1, 4),
       conv=st.booleans(), bias=st.booleans())
def test_fresh_random_models_and_inputs(seed, activation, widths, n1, n2, conv, bias, device):
    torch.manual_seed(seed)
    if conv:
        model = CNN(1, widths, 2, activation=activation, bias=bias, kernel_size=3)
        shape = (6,)
    else:
        model = MLP(3, widths, 2, activation=activation, bias=bias)
        shape = (3,)
    model = model.to(device=device, dtype=torch.float64)
    x1 = torch.randn(n1, *shape, device=device, dtype=torch.float64)
    x2 = torch.randn(n2, *shape, device=device, dtype=torch.float64)
    ref = empirical_ntk(model, x1, x2, method="jacobian")
    for method in ("ntvp", "structured"):
        assert rel_err(empirical_ntk(model, x1, x2, method=method), ref) <= 1e-10


def test_a_unit_dead_on_the_probe_rows_but_alive_later(device):
    """The structured plan is probed on the first rows; a ReLU unit that is off on all of them
    (so its factorisation over outputs is undetermined there) but on for later rows must still
    give the exact kernel: that weight falls back to its exact gradient, counted once."""
    torch.manual_seed(0)
    model = MLP(3, [4, 4], 3).to(device=device, dtype=torch.float64)
    with torch.no_grad():   # unit 0 of the last hidden layer fires only where x[:, 0] > 0
        last = model.layers[1].linear
        last.weight[0].zero_()
        last.bias[0] = 0.0
        model.layers[0].linear.weight[0] = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
        model.layers[0].linear.bias[0] = 0.0
        last.weight[0, 0] = 1.0
    x = torch.randn(40, 3, device=device, dtype=torch.float64)
    x[:, 0] = x[:, 0].abs() * torch.where(torch.arange(40, device=device) < 16, -1.0, 1.0).to(x)
    x2 = torch.randn(7, 3, device=device, dtype=torch.float64)
    for output in ("full", "trace"):
        ref = empirical_ntk(model, x, method="jacobian", output=output)
        assert rel_err(empirical_ntk(model, x, method="structured", output=output), ref) <= 1e-10
        ref2 = empirical_ntk(model, x, x2, method="jacobian", output=output)
        assert rel_err(empirical_ntk(model, x, x2, method="structured", output=output), ref2) <= 1e-10


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("arch", ["mlp", "cnn1d"])
def test_many_rows_against_the_jacobian(seed, arch, device):
    """More rows than the plan's probe, wide ReLU layers (some units off on the probe rows)."""
    torch.manual_seed(seed)
    if arch == "mlp":
        model, shape = MLP(20, [64, 64, 64], 10), (20,)
    else:
        model, shape = CNN(1, [8, 8], 3, kernel_size=3), (12,)
    model = model.to(device=device, dtype=torch.float64)
    x1 = torch.randn(32, *shape, device=device, dtype=torch.float64)
    x2 = torch.randn(19, *shape, device=device, dtype=torch.float64)
    for method in ("structured", "auto"):
        assert rel_err(empirical_ntk(model, x1, method=method), empirical_ntk(model, x1, method="jacobian")) <= 1e-10
        assert rel_err(empirical_ntk(model, x1, x2, method=method),
                       empirical_ntk(model, x1, x2, method="jacobian")) <= 1e-10


@pytest.mark.parametrize("form", ["gram", "outer", "factored"])
@pytest.mark.parametrize("name", ["cnn2d", "odd_convs", "sequence3d", "mlp_relu"])
def test_every_contraction_form_of_structured(name, form, device, monkeypatch):
    def forced(shapes, k, output, n_rows, factorable=False):
        if form == "gram" and any(s.groups > 1 for s in shapes):
            return "outer", {}
        if form == "factored" and not (factorable and len(shapes) == 1):
            return "outer", {}
        return form, {}

    monkeypatch.setattr(ntk_structured, "choose_form", forced)
    model, x1, x2 = make(name, torch.float64, device)
    for output in ("full", "trace"):
        ref = empirical_ntk(model, x1, x2, method="jacobian", output=output)
        assert rel_err(empirical_ntk(model, x1, x2, method="structured", output=output), ref) <= 1e-10
        ref_sym = empirical_ntk(model, x1, method="jacobian", output=output)
        assert rel_err(empirical_ntk(model, x1, method="structured", output=output), ref_sym) <= 1e-10


@pytest.mark.parametrize("name", ["mlp_prelu", "cnn1d", "resnet_batchnorm_eval", "shared_twice"])
def test_symmetric_psd_without_x2(name, device):
    model, x1, _ = make(name, torch.float64, device, n1=6)
    for method in METHODS:
        k = empirical_ntk(model, x1, method=method)
        n, kk = k.shape[0], k.shape[2]
        assert torch.equal(k, k.permute(1, 0, 3, 2))
        matrix = k.permute(0, 2, 1, 3).reshape(n * kk, n * kk)
        eig = torch.linalg.eigvalsh(matrix)
        assert float(eig.min()) >= -1e-10 * float(eig.max())
        t = empirical_ntk(model, x1, method=method, output="trace")
        assert torch.equal(t, t.T)
        assert float(torch.linalg.eigvalsh(t).min()) >= -1e-10 * float(t.diagonal().max())


@pytest.mark.parametrize("method", ["jacobian", "ntvp", "structured"])
def test_blocks_give_the_same_kernel(method, device):
    model, x1, x2 = make("cnn1d", torch.float64, device, n1=5, n2=4)
    for x_other in (None, x2):
        for output, sizes in (("full", (2, 3)), ("trace", (2,))):
            whole = empirical_ntk(model, x1, x_other, method=method, output=output)
            for size in sizes:
                blocked = empirical_ntk(model, x1, x_other, method=method, output=output, block_size=size)
                assert rel_err(blocked, whole) <= 1e-12


def test_default_blocks_bound_memory(device, monkeypatch):
    """A tiny memory budget forces several blocks; the result must not change."""
    model, x1, x2 = make("mlp_relu", torch.float64, device, n1=9, n2=4)
    expected = brute_ntk(model, x1, x2)
    expected_sym = brute_ntk(model, x1, x1)
    calls = {"n": 0}
    for method in ("jacobian", "ntvp", "structured"):
        builder = ntk_module._BUILDERS[method]

        def counting(*args, _block=builder.block, **kwargs):
            calls["n"] += 1
            return _block(*args, **kwargs)

        monkeypatch.setitem(ntk_module._BUILDERS, method, ntk_module.Builder(builder.plan, counting,
                                                                              builder.batch_dependent_ok))
    monkeypatch.setattr(ntk_module, "_BLOCK_MEMORY_BYTES", 20_000)
    for method in ("jacobian", "ntvp", "structured"):
        calls["n"] = 0
        assert rel_err(empirical_ntk(model, x1, x2, method=method), expected) <= 1e-10
        assert calls["n"] > 1
        assert rel_err(empirical_ntk(model, x1, method=method), expected_sym) <= 1e-10


@pytest.mark.parametrize("selector, names", [
    ("re:layers\\.1\\..*", ["layers.1.linear.weight", "layers.1.linear.bias", "layers.1.act.weight"]),
    (["head.bias", "layers.0.linear.weight"], ["layers.0.linear.weight", "head.bias"]),
    (lambda n, p: n.endswith("act.weight"), ["layers.0.act.weight", "layers.1.act.weight"]),
    ("layers.0.linear.bias", ["layers.0.linear.bias"]),
])
def test_params_restriction(selector, names, device):
    model, x1, x2 = make("mlp_prelu", torch.float64, device)
    assert list(select_parameters(model, selector)) == names
    expected = brute_ntk(model, x1, x2, names=set(names))
    for method in METHODS:
        got = empirical_ntk(model, x1, x2, method=method, params=selector)
        assert rel_err(got, expected) <= 1e-10, method


def test_default_params_skip_frozen_parameters_and_flags_are_kept(device):
    model, x1, x2 = make("cnn1d", torch.float64, device)
    model.layers[0].conv.weight.requires_grad_(False)
    model.eval()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    expected = brute_ntk(model, x1, x2)
    for method in METHODS:
        assert rel_err(empirical_ntk(model, x1, x2, method=method), expected) <= 1e-10
    assert not model.training
    assert model.layers[0].conv.weight.requires_grad is False
    assert model.head.weight.requires_grad is True
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())


def test_under_no_grad(device):
    model, x1, x2 = make("mlp_relu", torch.float64, device)
    expected = brute_ntk(model, x1, x2)
    with torch.no_grad():
        for method in METHODS:
            assert rel_err(empirical_ntk(model, x1, x2, method=method), expected) <= 1e-10


def test_structured_forms_no_per_sample_jacobian_for_plain_layers(device, monkeypatch):
    """Linear/Conv-only models never build per-sample Jacobians with the structured method."""
    def forbidden(*args, **kwargs):
        raise AssertionError("per-sample Jacobian requested")

    monkeypatch.setattr(ntk_structured, "per_sample_jacobians", forbidden)
    for name in ("mlp_relu", "cnn2d", "shared_twice"):
        model, x1, x2 = make(name, torch.float64, device)
        assert empirical_ntk(model, x1, output="trace", method="structured").shape == (5, 5)
        assert empirical_ntk(model, x1, x2, method="structured").shape == (5, 3, 3, 3)
    model, x1, _ = make("mlp_prelu", torch.float64, device)
    with pytest.raises(AssertionError, match="per-sample Jacobian"):   # PReLU slopes do need one
        empirical_ntk(model, x1, method="structured")


def test_contraction_order_follows_cost():
    assert choose_form([CallShape(1, 512, 512)], 10, "full", 256)[0] == "gram"
    assert choose_form([CallShape(40, 3, 32)], 10, "full", 256)[0] == "outer"     # many positions, thin input
    assert choose_form([CallShape(2, 2048, 64)], 10, "full", 256)[0] == "gram"    # few positions, wide input
    assert choose_form([CallShape(64, 576, 64)], 10, "full", 256, factorable=True)[0] == "factored"
    assert choose_form([CallShape(2, 2048, 64, groups=2)], 10, "full", 256)[0] == "outer"   # no grouped Gram


def test_parameter_used_outside_its_layer_falls_back(device):
    model = WeightUsedTwice().to(device=device, dtype=torch.float64)
    x1 = torch.randn(4, 4, device=device, dtype=torch.float64)
    expected = brute_ntk(model, x1, x1)
    with pytest.warns(UserWarning, match="head.weight"):
        got = empirical_ntk(model, x1, method="structured")
    assert rel_err(got, expected) <= 1e-10


# ----------------------------------------------------------------------------
# Batch dependence
# ----------------------------------------------------------------------------

def batch_jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    params = list(model.parameters())
    out = model(x)
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[i, k], params, retain_graph=True)])
            for i in range(out.shape[0]) for k in range(out.shape[1])]
    return torch.stack(rows).view(out.shape[0], out.shape[1], -1)


def test_batchnorm_in_training_mode(device):
    model = ResNet(1, 3, 1, 2, norm="batch").to(device=device, dtype=torch.float64).train()
    x1 = torch.randn(5, 6, device=device, dtype=torch.float64)
    x2 = torch.randn(4, 6, device=device, dtype=torch.float64)
    with pytest.raises(ValueError, match="allow_batch_dependence"):
        empirical_ntk(model, x1)
    stats = {n: b.clone() for n, b in model.named_buffers()}
    got = empirical_ntk(model, x1, x2, allow_batch_dependence=True)
    same = empirical_ntk(model, x1, x2, method="jacobian", output="trace", allow_batch_dependence=True)
    assert model.training
    assert all(torch.equal(stats[n], b) for n, b in model.named_buffers())
    twin = copy.deepcopy(model)
    j1, j2 = batch_jacobian(twin, x1), batch_jacobian(twin, x2)
    expected = torch.einsum("akp,blp->abkl", j1, j2)
    assert rel_err(got, expected) <= 1e-10
    assert rel_err(same, trace_of(expected)) <= 1e-10
    sym = empirical_ntk(model, x1, allow_batch_dependence=True)
    assert rel_err(sym, torch.einsum("akp,blp->abkl", j1, j1)) <= 1e-10
    with pytest.raises(ValueError, match="method"):
        empirical_ntk(model, x1, method="structured", allow_batch_dependence=True)
    with pytest.raises(ValueError, match="block_size"):
        empirical_ntk(model, x1, block_size=2, allow_batch_dependence=True)


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------

def test_bad_arguments(device):
    model, x1, x2 = make("mlp_relu", torch.float32, device)
    with pytest.raises(ValueError, match="method: expected one of"):
        empirical_ntk(model, x1, method="fast")
    with pytest.raises(ValueError, match="output: expected one of"):
        empirical_ntk(model, x1, output="diagonal")
    with pytest.raises(TypeError, match="model"):
        empirical_ntk(lambda x: x, x1)
    with pytest.raises(ValueError, match="block_size"):
        empirical_ntk(model, x1, block_size=0)
    with pytest.raises(TypeError, match="block_size"):
        empirical_ntk(model, x1, block_size=2.5)
    with pytest.raises(TypeError, match="allow_batch_dependence"):
        empirical_ntk(model, x1, allow_batch_dependence="yes")


def test_params_selecting_nothing(device):
    model, x1, _ = make("mlp_relu", torch.float32, device)
    with pytest.raises(ValueError, match=r"params: .*matches none.*'head.weight'"):
        empirical_ntk(model, x1, params="re:value\\..*")
    with pytest.raises(ValueError, match=r"params: expected the name of a parameter, got 'head.weights'.*head.weight"):
        empirical_ntk(model, x1, params="head.weights")
    with pytest.raises(ValueError, match="params: expected at least one selector"):
        empirical_ntk(model, x1, params=[])
    with pytest.raises(ValueError, match="params: expected a valid regular expression"):
        empirical_ntk(model, x1, params="re:(")
    with pytest.raises(TypeError, match="params"):
        empirical_ntk(model, x1, params=3)
    with pytest.raises(ValueError, match=r"params: .*matches none"):
        empirical_ntk(model, x1, params=lambda n, p: False)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        empirical_ntk(model, x1)


def test_inputs_that_do_not_fit(device):
    model, x1, x2 = make("mlp_relu", torch.float32, device)
    with pytest.raises(ValueError, match=r"x1: expected inputs the model accepts.*\(4, 6\)"):
        empirical_ntk(model, torch.randn(4, 6, device=device))
    with pytest.raises(ValueError, match=r"x2: expected samples of shape \(5,\) like x1"):
        empirical_ntk(model, x1, torch.randn(3, 6, device=device))
    with pytest.raises(TypeError, match="x1: expected dtype torch.float32"):
        empirical_ntk(model, x1.double())
    with pytest.raises(TypeError, match="x2: expected dtype torch.float32"):
        empirical_ntk(model, x1, x2.double())
    with pytest.raises(ValueError, match="x1: expected finite values"):
        empirical_ntk(model, torch.full((2, 5), float("nan"), device=device))
    with pytest.raises(ValueError, match="x1: expected at least 1 row"):
        empirical_ntk(model, torch.zeros(0, 5, device=device))
    cnn, _, _ = make("cnn2d", torch.float32, device)
    with pytest.raises(ValueError, match="x1: expected inputs the model accepts"):
        empirical_ntk(cnn, torch.randn(2, 3, 5, 5, device=device))


def test_models_that_cannot_have_a_kernel(device):
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).to(device)
    x = torch.randn(3, 3, device=device)
    with pytest.raises(ValueError, match="dropout in training mode at \\['1'\\]"):
        empirical_ntk(model, x)
    model.eval()
    assert empirical_ntk(model, x).shape == (3, 3, 2, 2)
    flat = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0)).to(device)
    with pytest.raises(ValueError, match=r"model: expected outputs of shape \(N, K\)"):
        empirical_ntk(flat, x)


def test_select_parameters_names_a_non_module():
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        select_parameters("mlp")


# ----------------------------------------------------------------------------
# Plans reused while the model is unchanged
# ----------------------------------------------------------------------------

def _count_plans(monkeypatch) -> list[str]:
    planned: list[str] = []
    real = ntk_module._resolve_method

    def counting(method, problem, output):
        planned.append(method)
        return real(method, problem, output)

    monkeypatch.setattr(ntk_module, "_resolve_method", counting)
    return planned


def test_a_plan_is_reused_until_the_model_changes(monkeypatch):
    """The second call on the same model, weights and input shape plans nothing and gives the kernel
    of the new inputs; fewer rows, an optimizer step, a new hook, another input shape, another output
    and a ``copy_`` into a weight each plan again, a round trip through train mode and a removed hook
    do not, and every kernel equals the jacobian kernel of the model as it is then."""
    planned = _count_plans(monkeypatch)
    torch.manual_seed(3)
    model = randomise_batchnorm(zoo.resnet18(2, num_classes=3, in_channels=2)).double().eval()
    x, y = torch.randn(5, 2, 6, 6, dtype=torch.float64), torch.randn(5, 2, 6, 6, dtype=torch.float64)

    def check(inputs, expect_plans, **kwargs):
        before = len(planned)
        got = empirical_ntk(model, inputs, method="structured", **kwargs)
        assert len(planned) - before == expect_plans
        ref = empirical_ntk(model, inputs, method="jacobian", **kwargs)
        assert rel_err(got, ref) <= 1e-10

    check(x, 1)
    check(y, 0)                                     # new values, same shapes: the same plan
    check(y[:4], 1)                                 # fewer rows: the cost model weighs another block
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(x).sum().backward()
    opt.step()
    check(x, 1)                                     # in-place update: version counters moved
    check(x, 0)
    model.train()
    model.eval()                                    # back to eval: the same key again
    check(x, 0)
    handle = model.register_forward_hook(lambda m, a, out: out * 2)
    check(x, 1)
    handle.remove()
    check(x, 0)                                     # the earlier plan, still cached
    check(torch.randn(3, 2, 8, 8, dtype=torch.float64), 1)
    check(x, 1, output="trace")
    with torch.no_grad():
        model.linear.weight.copy_(torch.randn_like(model.linear.weight))
    check(x, 1)


def test_a_plan_does_not_keep_its_model_alive():
    import gc
    import weakref

    model = MLP(4, (5,), 3).double()
    empirical_ntk(model, torch.randn(3, 4, dtype=torch.float64), method="structured")
    assert model in ntk_module._PLANS
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None and len(ntk_module._PLANS) == 0
    bare = nn.Linear(4, 3).double()              # the model is itself a structured layer: not cached
    empirical_ntk(bare, torch.randn(3, 4, dtype=torch.float64), method="structured")
    assert bare not in ntk_module._PLANS
