"""Structured NTK rules of every layer type against the "jacobian" reference, over a grid of shapes,
strides, paddings, groups, dilations and dtypes (float32 ≤ 1e-5 relative, float64 ≤ 1e-10)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sepmeasure.kernels import empirical_ntk, ntk_structured
from sepmeasure.kernels import ntk as ntk_module
from sepmeasure.kernels import ntk_taps
from sepmeasure.kernels.ntk_forms import outer_jacobian
from sepmeasure.kernels.ntk_taps import output_grads, stack_buffer

sys.path.insert(0, str(Path(__file__).parent))
import zoo  # noqa: E402
from ntk_helpers import CNN2d, plan_of, problem_of, randomise_batchnorm, rel_err  # noqa: E402

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


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_method_through_fused_attention_kernels(dtype):
    """In eval mode ``nn.TransformerEncoderLayer`` takes its fused inference path and attention its
    fused (flash) backend, which have no forward-mode derivative and no batching rule: "ntvp" raised
    NotImplementedError there, and "jacobian" ran the attention in a loop under vmap with a
    performance warning. Every method agrees with the float64 kernel of the same model and warns of
    nothing, and the global fast-path flag is as it was."""
    import warnings

    model = zoo.vit(image_size=4, patch=2, dim=8, depth=2, heads=2, mlp_dim=12, num_classes=3,
                    in_channels=2).eval()
    with torch.no_grad():
        model.cls_token.normal_()
    torch.manual_seed(3)
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    ref = empirical_ntk(model.double(), x, method="jacobian", progress=False)
    model.to(dtype)
    before = torch.backends.mha.get_fastpath_enabled()
    for method in ("jacobian", "ntvp", "structured", "auto"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = empirical_ntk(model, x.to(dtype), method=method, progress=False)
        slow = [str(w.message) for w in caught if "batching rule" in str(w.message)]
        assert not slow, (method, slow)
        assert rel_err(got.double(), ref) <= TOL[dtype], method
        assert torch.backends.mha.get_fastpath_enabled() == before


def test_differentiable_attention_restores_the_flag_after_an_error():
    from sepmeasure.kernels.ntk_problem import differentiable_attention

    before = torch.backends.mha.get_fastpath_enabled()
    with pytest.raises(RuntimeError, match="inside"):
        with differentiable_attention():
            assert torch.backends.mha.get_fastpath_enabled() is False
            raise RuntimeError("inside")
    assert torch.backends.mha.get_fastpath_enabled() == before


# ----------------------------------------------------------------------------
# The fast conv path: channels-last forward, every contraction form, factorisations per block
# ----------------------------------------------------------------------------

class ViewHead(nn.Module):
    """A conv net that flattens with ``view``, which a channels-last tensor refuses."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=1)
        self.head = nn.Linear(3 * 3 * 3, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.head(h.view(h.shape[0], -1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_channels_last_where_the_model_allows_it(dtype):
    torch.manual_seed(4)
    cnn = CNN2d().to(dtype).eval()
    assert plan_of(cnn, torch.randn(5, 2, 8, 8, dtype=dtype)).channels_last
    view = ViewHead().to(dtype).eval()
    detail = plan_of(view, torch.randn(5, 2, 6, 6, dtype=dtype))
    assert not detail.channels_last and not detail.fallback
    check(cnn, (2, 8, 8), dtype, n1=6, n2=5)
    check(view, (2, 6, 6), dtype, n1=6, n2=5)


def _forced(form):
    def choose(shapes, k, output, n_rows, factorable=False):
        if form == "gram" and any(s.groups > 1 for s in shapes):
            return "outer", {}
        if form == "factored" and not (factorable and len(shapes) == 1):
            return "outer", {}
        return form, {}
    return choose


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("form", ["gram", "outer", "factored"])
@pytest.mark.parametrize("spec", [*CONVS, "cnn2d"], ids=lambda s: s if isinstance(s, str) else "x".join(map(str, s[:8])))
def test_every_form_of_every_convolution(spec, form, dtype, monkeypatch):
    """Each contraction form forced on fresh random models and inputs (strides, paddings, groups,
    dilations, Conv1d and Conv2d), against the float64 jacobian kernel: float32 ≤ 1e-5, float64 ≤ 1e-10."""
    torch.manual_seed(hash((str(spec), form)) % 1000)
    if spec == "cnn2d":
        model, shape = CNN2d(), (2, 8, 8)
    else:
        *args, spatial = spec
        model, shape = ConvNet(*args), (args[1], *spatial)
        model(torch.randn(1, *shape))
    model.eval()
    x1, x2 = torch.randn(7, *shape, dtype=torch.float64), torch.randn(5, *shape, dtype=torch.float64)
    refs = {(o, b is None): empirical_ntk(model.double(), x1, b, method="jacobian", output=o)
            for o in ("full", "trace") for b in (x2, None)}
    monkeypatch.setattr(ntk_structured, "choose_form", _forced(form))
    model.to(dtype)
    for (output, symmetric), ref in refs.items():
        got = empirical_ntk(model, x1.to(dtype), None if symmetric else x2.to(dtype), method="structured",
                            output=output)
        assert got.dtype == dtype
        assert rel_err(got.double(), ref) <= TOL[dtype], (output, symmetric)


def test_a_channel_dead_on_the_probe_rows_is_factored_in_its_block():
    """The last conv's channel 0 is off on the two rows its factorisation is found on and on for the
    rest: each block finds its own columns, so the weight stays factored (and exact)."""
    torch.manual_seed(0)
    model = CNN2d().double().eval()
    last = model.convs[2]
    with torch.no_grad():
        last.weight[0] = 0.05
        last.bias[0] = -1.0
    x = torch.randn(9, 2, 8, 8, dtype=torch.float64)
    x[:2] *= 0.01                     # tiny activations: channel 0 below its threshold
    x[2:] *= 30.0
    problem = problem_of(model, x)
    plan = ntk_structured.STRUCTURED.plan(problem, "full")
    forms = {w.param: w.form for w in plan.detail.weights}
    assert forms["convs.2.weight"] == "factored"
    side = ntk_structured._capture(problem, plan.detail, x)
    assert "convs.2.weight" in side.factored and "convs.2.weight" not in side.jacobians
    ref = empirical_ntk(model, x, method="jacobian")
    assert rel_err(empirical_ntk(model, x, method="structured"), ref) <= 1e-10


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_output_grads_equal_one_autograd_pass_per_output(channels_last, batched):
    torch.manual_seed(2)
    model = CNN2d().double().eval()
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    taps = [torch.zeros(3, 3, 8, 8, dtype=torch.float64, requires_grad=True),
            torch.zeros(3, 4, 4, 4, dtype=torch.float64, requires_grad=True)]
    c0, c1, c2 = model.convs
    h = torch.relu(c0(x) + taps[0])
    out = model.head(torch.relu(c2(torch.relu(c1(h) + taps[1]))).mean(dim=(2, 3)))
    expected = [torch.autograd.grad(out[:, k].sum(), taps, retain_graph=True) for k in range(3)]
    got = output_grads(out, taps, batched=batched)
    for k in range(3):
        for g, e in zip(got, expected[k]):
            assert g.shape == (3, *e.shape) and torch.allclose(g[k], e, rtol=1e-12, atol=1e-15)
    if channels_last and not batched:     # (K, n, C, H, W) stored as (n, H, W, K, C)
        assert got[0].permute(1, 3, 4, 0, 2).is_contiguous()


def test_stack_buffer_puts_the_new_axis_inside():
    g = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    b = stack_buffer(g, 6)
    assert b.shape == (6, 2, 3, 4, 5) and b.permute(1, 3, 4, 0, 2).is_contiguous()
    b2 = stack_buffer(torch.randn(7, 5), 6)
    assert b2.shape == (6, 7, 5) and b2.permute(1, 0, 2).is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["resnet", "vit", "cnn2d"])
def test_one_batched_backward_pass_or_one_per_output(name, dtype, monkeypatch):
    """The structured kernel with the outputs' cotangents from one batched backward pass and from
    one pass per output, each against the float64 jacobian kernel; the plan says which it used."""
    torch.manual_seed(4)
    model, shape = {"resnet": (lambda: randomise_batchnorm(zoo.resnet18(4)), (3, 8, 8)),
                    "vit": (lambda: zoo.vit(), (3, 8, 8)), "cnn2d": (lambda: CNN2d(), (2, 8, 8))}[name]
    model = model().eval()
    x1, x2 = torch.randn(6, *shape, dtype=torch.float64), torch.randn(4, *shape, dtype=torch.float64)
    model.double()
    refs = {o: empirical_ntk(model, x1, x2, method="jacobian", output=o) for o in ("full", "trace")}
    model.to(dtype)
    for threshold, batched in ((0, False), (float("inf"), True)):
        monkeypatch.setattr(ntk_structured, "BATCHED_TAP_NUMEL", threshold)
        ntk_module._PLANS.clear()
        assert plan_of(model, x1.to(dtype)).batched is batched
        for output, ref in refs.items():
            got = empirical_ntk(model, x1.to(dtype), x2.to(dtype), method="structured", output=output)
            assert rel_err(got.double(), ref) <= TOL[dtype], (output, batched)


def test_the_batched_pass_is_chosen_for_small_layers_only():
    """Small taps (a width-4 ResNet on 8 x 8 inputs) take one batched pass; taps of more elements
    per sample than BATCHED_TAP_NUMEL on average take one pass per output."""
    small = randomise_batchnorm(zoo.resnet18(4)).eval()
    assert plan_of(small, torch.randn(3, 3, 8, 8)).batched
    wide = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 3))
    assert (32 * 32 * 32 + 3) / 2 > ntk_structured.BATCHED_TAP_NUMEL      # the mean over the two taps
    assert not plan_of(wide, torch.randn(3, 3, 32, 32)).batched


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (1, 2, 0, 3), (1, 0, 2, 3), (0, 1, 3, 2)])
@pytest.mark.parametrize("groups", [1, 2])
def test_outer_jacobian_in_every_layout(order, groups):
    """``outer_jacobian`` on cotangents (K, n, T, o) stored in any axis order (the layouts of one
    batched pass and of the per-output passes) against an einsum, to float64 rounding."""
    k, n, t, o, d = 3, 4, 5, 6, 8
    stored = [(k, n, t, o)[i] for i in order]
    g = torch.randn(stored, dtype=torch.float64).permute([order.index(i) for i in range(4)])
    assert g.shape == (k, n, t, o)
    a = torch.randn(n, t, d, dtype=torch.float64)
    got = outer_jacobian(a, g, groups)
    dg, og = d // groups, o // groups
    ref = torch.einsum("kntgo,ntgd->nkgod", g.reshape(k, n, t, groups, og), a.reshape(n, t, groups, dg))
    assert torch.allclose(got, ref.reshape(n, k, -1), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_eval_batch_norm_is_folded_and_restored(dim):
    """An eval-mode BatchNorm runs as x·s + t during the tapped pass (no batch-norm backward), the
    kernel equals the jacobian one, and the module's own forward is back afterwards."""
    torch.manual_seed(5)
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim]
    norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dim]
    layers = ([nn.Linear(4, 5), norm(5)] if dim == 1 else [conv(2, 5, 1), norm(5), nn.Flatten()])
    model = randomise_batchnorm(nn.Sequential(*layers, nn.Tanh(), nn.LazyLinear(3))).double().eval()
    shape = (4,) if dim == 1 else (2, *(3,) * dim)
    x = torch.randn(5, *shape, dtype=torch.float64)
    model(x)
    bn = model[1]
    assert ntk_taps.folded_batch_norm(bn) and "forward" not in bn.__dict__
    seen = []
    bn.register_forward_hook(lambda m, args, out: seen.append(out.grad_fn is not None and
                                                               "BatchNorm" in type(out.grad_fn).__name__))
    # Conv3d has no structured rule: its parameters (selected or not) would run the module normally
    params = "re:(1|4)\\..*"
    ref = empirical_ntk(model, x, method="jacobian", params=params)
    seen.clear()
    got = empirical_ntk(model, x, method="structured", params=params)
    assert rel_err(got, ref) <= 1e-10
    assert seen and not any(seen), "the tapped pass should not run batch norm's own kernel"
    assert "forward" not in bn.__dict__
    bn.train()
    assert not ntk_taps.folded_batch_norm(bn)


@pytest.mark.parametrize("failure", ["raises", "loops"])
def test_a_batched_pass_that_does_not_run_falls_back_to_one_pass_per_output(failure, monkeypatch):
    """Where the batched pass raises, or warns that an operation has no batching rule, the block is
    computed with one pass per output (same kernel as the jacobian), the plan keeps that choice, and
    any other warning of the pass reaches the caller."""
    torch.manual_seed(6)
    model = randomise_batchnorm(zoo.resnet18(2, num_classes=3)).double().eval()
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    real = ntk_structured.output_grads
    tries = []

    def flaky(out, inputs, batched=False):
        if not batched:
            return real(out, inputs)
        tries.append(1)
        if failure == "raises":
            raise RuntimeError("no batching here")
        import warnings
        warnings.warn("another warning of the pass", UserWarning)
        warnings.warn("There is a performance drop because we have not yet implemented the batching rule "
                      "for aten::something", UserWarning)
        return [torch.full((3, *t.shape), float("nan"), dtype=t.dtype) for t in inputs]

    monkeypatch.setattr(ntk_structured, "output_grads", flaky)
    ref = empirical_ntk(model, x, method="jacobian")
    if failure == "loops":
        with pytest.warns(UserWarning, match="another warning of the pass"):
            got = empirical_ntk(model, x, method="structured", block_size=3)
    else:
        got = empirical_ntk(model, x, method="structured", block_size=3)
    assert rel_err(got, ref) <= 1e-10
    assert len(tries) == 1, "after the first failure every block takes one pass per output"
    [plan] = [plan for method, plan in ntk_module._PLANS[model].values() if method == "structured"]
    assert plan.detail.batched is False
