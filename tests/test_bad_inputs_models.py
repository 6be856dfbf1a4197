"""Bad inputs the catalogue (tests/catalogue) found in sepmeasure.models, sepmeasure.capture and
sepmeasure.study: each refused with an error naming the argument (each case accepted, hung or
crashed inside torch before)."""
from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

import sepmeasure as sm
from sepmeasure.capture import Activations, ActivationRecorder, record, select_layers
from sepmeasure.models import CNN, DGN, DLGN, MLP, ResNet, make_activation
from sepmeasure.models import layers as model_layers
from sepmeasure.models.linearity_mask import LinearityMask
from sepmeasure.models.linearizable import LinearizablePReLU, SparsityPrior
from sepmeasure.study import Study, make_executor


# ----------------------------------------------------------------------------- models: sizes
@pytest.mark.parametrize("build, arg", [
    (lambda v: MLP(v, [4], 2), "in_features"), (lambda v: MLP(2, [4], v), "out_features"),
    (lambda v: MLP(2, [v], 2), r"widths\[0\]"),
    (lambda v: CNN(v, [4], 2), "in_channels"), (lambda v: CNN(1, [4], v), "out_features"),
    (lambda v: CNN(1, [4], 2, kernel_size=v), "kernel_size"),
    (lambda v: ResNet(v, 4, 1, 2), "in_channels"), (lambda v: ResNet(1, v, 1, 2), "width"),
    (lambda v: ResNet(1, 4, 1, v), "out_features"), (lambda v: ResNet(1, 4, v, 2), "n_blocks"),
    (lambda v: DGN(v, [4], 2), "in_features"), (lambda v: DGN(2, [4], v), "out_features"),
    (lambda v: DLGN(v, [4], 2), "in_features"), (lambda v: DLGN(2, [4], v), "out_features"),
    (lambda v: make_activation("prelu", channels=v), "channels"),
    (lambda v: LinearityMask(nn.ReLU(), v), "channels"), (lambda v: LinearizablePReLU(v), "channels"),
])
@pytest.mark.parametrize("value", [10 ** 12, 2 ** 70])
def test_huge_sizes_are_refused_before_allocating(build, arg, value):
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=rf"^{arg}: expected an int <= "):
        build(value)
    assert time.perf_counter() - t0 < 1.0  # ResNet n_blocks=10**12 built blocks until killed


def test_total_parameter_count_is_capped_naming_the_sizes():
    # each size is below the cap but their product is not: refused before nn.Linear allocates 2**60 floats
    with pytest.raises(ValueError, match=r"^in_features, widths, out_features: expected sizes giving at most "
                                         r"MAX_PARAMETERS = 2\*\*31 parameters, got sizes giving \d+"):
        MLP(2 ** 30, [2 ** 30], 2)
    with pytest.raises(ValueError, match=r"^in_channels, channels, kernel_size, out_features: expected sizes"):
        CNN(2 ** 16, [2 ** 16], 2, kernel_size=3)
    with pytest.raises(ValueError, match=r"^in_channels, width, n_blocks, kernel_size, out_features: expected"):
        ResNet(1, 2 ** 12, 100, 2)
    with pytest.raises(ValueError, match=r"^in_features, widths, kernel_size, out_features: expected sizes"):
        DLGN(2 ** 20, [2 ** 12], 2)


@pytest.mark.parametrize("build", [
    lambda: MLP(3, [4, 5], 2), lambda: MLP(3, [4, 5], 2, activation="prelu", bias=False), lambda: MLP(3, [], 2),
    lambda: CNN(2, [4, 3], 5, dim=2, kernel_size=5), lambda: CNN(1, [4], 2, activation="prelu", bias=False),
    lambda: ResNet(2, 4, 3, 5), lambda: ResNet(1, 3, 2, 2, dim=2, norm="batch", activation="prelu"),
    lambda: ResNet(1, 3, 0, 2, bias=False),
    lambda: DGN(3, [4, 5], 2), lambda: DLGN(3, [4, 5], 2, gating="shallow", bias=False),
    lambda: DGN(2, [3, 4], 2, arch="cnn", kernel_size=5), lambda: DLGN(2, [3, 4], 2, arch="cnn", gating="shallow",
                                                                      dim=2),
])
def test_the_parameter_cap_counts_exactly_the_parameters_built(build, monkeypatch):
    # the count checked before allocating equals the parameters of the built model: with the cap set to
    # that number the model is built, one below it is refused
    n = sum(p.numel() for p in build().parameters())
    monkeypatch.setattr(model_layers, "MAX_PARAMETERS", n)
    assert sum(p.numel() for p in build().parameters()) == n
    monkeypatch.setattr(model_layers, "MAX_PARAMETERS", n - 1)
    with pytest.raises(ValueError, match=f"got sizes giving {n} parameters"):
        build()


def test_make_activation_errors_name_its_argument_name():
    for bad in ("no-such", 3, None):
        with pytest.raises(ValueError, match=r"^name: expected one of 'relu'"):
            make_activation(bad)
    assert isinstance(make_activation("tanh"), nn.Tanh)


def test_initial_values_must_fit_float32():
    with pytest.raises(ValueError, match=r"^init_logit: expected a number within the float32 range"):
        LinearityMask(nn.ReLU(), 3, init_logit=1e300)
    with pytest.raises(ValueError, match=r"^init: expected a number within the float32 range"):
        LinearizablePReLU(3, init=-1e300)
    big = float(torch.finfo(torch.float32).max)
    assert float(LinearityMask(nn.ReLU(), 2, init_logit=big).logits[0].detach()) == big  # the edge is accepted
    assert float(LinearizablePReLU(2, init=-big).slope[0].detach()) == -big


def test_sparsity_prior_exponent_range():
    # documented range (0, 2]: 1.5 is valid (the prior's test checks its value), 2.5 and 0 are not
    assert SparsityPrior(p=1.5).p == 1.5
    for bad in (2.5, 0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match=r"^p: expected"):
            SparsityPrior(p=bad)


#: input_shape values check_input_shape refuses for every model (fold, effective_halfspaces)
_BAD_SHAPES = [
    ("abc", TypeError, r"^input_shape: expected a sequence of ints"),
    ((), ValueError, r"^input_shape: expected at least one dimension"),
    ((-3,), ValueError, r"^input_shape\[0\]: expected an int >= 1"),
    ((0,), ValueError, r"^input_shape\[0\]: expected an int >= 1"),
    ((2.5,), TypeError, r"^input_shape\[0\]: expected an int"),
]


def _masked_mlp():
    return sm.apply_masks(MLP(2, [3], 2))


@pytest.mark.parametrize("shape, err, match", _BAD_SHAPES + [
    ((10 ** 9,), ValueError, r"^input_shape: expected at most MAX_INPUT_SIZE = 2\*\*24 entries"),
    ((3,), ValueError, r"^input_shape: expected a shape of 2 entries \(the MLP's in_features\)"),
])
def test_fold_input_shape_is_checked_before_building_an_input(shape, err, match):
    t0 = time.perf_counter()
    with pytest.raises(err, match=match):
        sm.fold(_masked_mlp(), input_shape=shape)
    assert time.perf_counter() - t0 < 1.0  # (10**9,) built a 4 GB input before
    assert sm.fold(_masked_mlp(), input_shape=(2,)).report.macs_before == 2 * 3 + 3 * 2
    # a 1-D CNN takes samples with or without their channel axis
    cnn = sm.apply_masks(CNN(1, [3], 2))
    assert sm.fold(cnn, input_shape=(10,)).report.macs_before == sm.fold(cnn, input_shape=(1, 10)).report.macs_before


@pytest.mark.parametrize("shape, err, match", _BAD_SHAPES + [
    ((10 ** 9,), ValueError, r"^input_shape: expected at most MAX_INPUT_SIZE"),
    ((3,), ValueError, r"^input_shape: expected a shape of 2 entries \(the DLGN's in_features\)"),
])
def test_effective_halfspaces_input_shape_is_checked_for_an_mlp_dlgn(shape, err, match):
    with pytest.raises(err, match=match):
        sm.effective_halfspaces(DLGN(2, [3], 2), input_shape=shape)
    m = DLGN(2, [3], 2)
    a, b = sm.effective_halfspaces(m, input_shape=(2,)), sm.effective_halfspaces(m)
    assert all(torch.equal(x, y) for x, y in zip(a.normals, b.normals))
    with pytest.raises(ValueError, match=r"^input_shape: expected at most MAX_BASIS_SIZE = 2\*\*14 entries"):
        sm.effective_halfspaces(DLGN(1, [2], 2, arch="cnn"), input_shape=(1, 2 ** 15))


# ----------------------------------------------------------------------------- capture
@pytest.mark.parametrize("x", [torch.randn(1, 10, 2), torch.randn(20), torch.zeros(20, 2, dtype=torch.int64),
                               torch.zeros(20, 2, dtype=torch.bool), torch.zeros(20, 2, dtype=torch.complex64),
                               torch.randn(20, 4)])
def test_record_names_data_when_the_model_cannot_take_it(x):
    with pytest.raises(ValueError, match=r"^data: expected inputs the model accepts, got a batch of shape .* the "
                                         r"model raised RuntimeError"):
        record(MLP(2, [3], 2), x)


def test_record_still_records_valid_inputs():
    torch.manual_seed(0)
    m, x = MLP(2, [3], 2), torch.randn(7, 2)
    acts = record(m, x, layers="layers.0.act", batch_size=3)
    torch.testing.assert_close(acts["layers.0.act"], torch.relu(m.layers[0].linear(x)), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_recorder_names_the_model_that_cannot_take_its_inputs(dtype):
    m = MLP(2, [3], 2).to(dtype)
    with pytest.raises(ValueError, match=rf"^model: expected a model that accepts its inputs, got one \(parameters "
                                         rf"{dtype}\) that raised RuntimeError on an input of shape \(4, 2\) and "
                                         rf"dtype torch.float32"):
        with ActivationRecorder(m, layers="head"):
            m(torch.randn(4, 2))
    assert not m.head._forward_hooks  # the hooks are removed all the same
    with ActivationRecorder(m, layers="head") as rec:  # inputs of the model's dtype are recorded
        x = torch.randn(4, 2, dtype=dtype)
        out = m(x)
    torch.testing.assert_close(rec.activations()["head"], out, rtol=0, atol=0)


def test_recorder_leaves_errors_outside_the_model_alone():
    m = MLP(2, [3], 2)
    with pytest.raises(RuntimeError, match="not from the model"):
        with ActivationRecorder(m, layers="head"):
            m(torch.randn(4, 2))
            raise RuntimeError("not from the model")


def test_activations_check_tensors_and_labels():
    t = {"a": torch.zeros(3, 2)}
    for bad in ("abc", 3):
        with pytest.raises(TypeError, match=r"^tensors: expected a mapping of layer names to tensors"):
            Activations(bad)
    with pytest.raises(ValueError, match=r"^tensors: expected at least one layer"):
        Activations({})
    with pytest.raises(TypeError, match=r"^tensors\['a'\]: expected a tensor"):
        Activations({"a": [1, 2]})
    for bad, err in (("abc", TypeError), (3, TypeError), (torch.zeros(3, 1), ValueError),
                     (torch.tensor([0.5, 1.0, 0.0]), ValueError), (torch.tensor([0.0, math.nan, 1.0]), ValueError),
                     (torch.tensor([0, -1, 1]), ValueError), (torch.tensor([0, 2 ** 62, 1]), ValueError),
                     (torch.tensor([0.0, 1e30, 1.0]), ValueError)):
        with pytest.raises(err, match=r"^labels: expected"):
            Activations(t, bad)
    y = torch.tensor([0, 2, 1], dtype=torch.int32)
    assert Activations(t, y).labels is y  # valid labels are stored as given
    # record keeps whatever targets came with the data (regression targets included)
    acts = record(MLP(2, [3], 2), (torch.randn(4, 2), torch.tensor([0.5, -1.0, 2.0, 3.5])), layers="head")
    assert acts.labels.tolist() == [0.5, -1.0, 2.0, 3.5]
    assert acts.to("cpu").labels.tolist() == [0.5, -1.0, 2.0, 3.5]


def test_select_layers_checks_model():
    for bad in ("mlp", None):
        with pytest.raises(TypeError, match=r"^model: expected an nn.Module"):
            select_layers(bad, "re:.*")


# ----------------------------------------------------------------------------- study
def test_make_executor_errors_name_kind():
    for bad in ("no-such", 3, None):
        with pytest.raises(ValueError, match=r"^kind: expected one of 'local'"):
            make_executor(bad)
    with pytest.raises(ValueError, match=r"^scheduler: only used with kind='dask'"):
        make_executor("local", scheduler="tcp://127.0.0.1:1")
    with make_executor("local") as ex:
        assert ex.kind == "local"


@pytest.mark.parametrize("mode", ["quick", "full"])
@pytest.mark.parametrize("empty", [{}, []])
def test_study_refuses_an_empty_grid(mode, empty):
    grids = {"quick": {"x": [1]}, "full": {"x": [1, 2]}, mode: empty}
    with pytest.raises(ValueError, match=rf"^{mode}: expected a grid with at least one factor"):
        Study(name="s", run_one=lambda c: [], **grids)
    assert len(Study(name="s", run_one=lambda c: [], quick={"x": [1]}, full={"x": [1, 2]}).configurations("full",
                                                                                                      seeds=1)) == 2
