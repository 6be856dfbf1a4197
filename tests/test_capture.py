"""Tests for sepmeasure.capture: layer selection, hooks, pooling and record()."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.testing import assert_close
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from sepmeasure.capture import ActivationRecorder, Activations, record, select_layers


# ----------------------------------------------------------------------------
# Small test models
# ----------------------------------------------------------------------------

class Residual(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Linear(d, d), nn.Tanh())

    def forward(self, x):
        return x + self.f(x)


def nested_model() -> nn.Sequential:
    """Names: 0, 1, 2, 2.f, 2.f.0, 2.f.1, 3."""
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), Residual(8), nn.Linear(8, 3))


def nested_reference(model: nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    out["0"] = model[0](x)
    out["1"] = torch.relu(out["0"])
    out["2.f.0"] = model[2].f[0](out["1"])
    out["2.f.1"] = torch.tanh(out["2.f.0"])
    out["2.f"] = out["2.f.1"]
    out["2"] = out["1"] + out["2.f"]
    out["3"] = model[3](out["2"])
    return out


class Reuse(nn.Module):
    """Calls ``lin`` and ``act`` twice per forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.act = nn.ReLU()
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = self.act(self.lin(x))
        h = self.act(self.lin(h))
        return self.head(h)


class Branch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        return self.b(x) if bool(x.sum() > 1e6) else self.a(x)


class Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom inside forward")


class TupleOut(nn.Module):
    def forward(self, x):
        return x * 2, x.sum()


class DictOut(nn.Module):
    def forward(self, x):
        return {"y": x}


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(4 * 7, 3)

    def forward(self, x):
        return self.head(self.act(self.conv(x)).flatten(1))


class Conv2dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x)).mean((2, 3))


def assert_no_hooks(model: nn.Module) -> None:
    for name, m in model.named_modules():
        assert len(m._forward_hooks) == 0, name
        assert len(m._forward_pre_hooks) == 0, name


def set_mixed_state(model: nn.Module) -> tuple[list[bool], list[bool]]:
    for i, m in enumerate(model.modules()):
        m.training = i % 2 == 0
    for i, p in enumerate(model.parameters()):
        p.requires_grad_(i % 3 != 0)
    return state(model)


def state(model: nn.Module) -> tuple[list[bool], list[bool]]:
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


# ----------------------------------------------------------------------------
# Recorder: values
# ----------------------------------------------------------------------------

def test_nested_model_matches_hand_written_forward():
    model = nested_model()
    x1, x2 = torch.randn(7, 5), torch.randn(4, 5)
    with ActivationRecorder(model, layers=lambda n, m: True) as rec:
        model(x1)
        model(x2)
    acts = rec.activations()
    ref1, ref2 = nested_reference(model, x1), nested_reference(model, x2)
    assert rec.layer_names == ["0", "1", "2.f.0", "2.f.1", "2.f", "2", "3"]
    for name, value in acts.items():
        assert_close(value, torch.cat([ref1[name], ref2[name]]), rtol=0, atol=0)
    assert [t.shape[0] for t in rec.outputs["2"]] == [7, 4]


def test_reused_module_recorded_per_call():
    model = Reuse()
    x = torch.randn(5, 6)
    with ActivationRecorder(model, layers=["lin", "act", "head"]) as rec:
        model(x)
        model(x[:2])
    acts = rec.activations()
    assert rec.layer_names == ["lin", "act", "lin#1", "act#1", "head"]
    h0 = model.lin(x)
    a0 = torch.relu(h0)
    h1 = model.lin(a0)
    a1 = torch.relu(h1)
    for key, ref in {"lin": h0, "act": a0, "lin#1": h1, "act#1": a1, "head": model.head(a1)}.items():
        assert_close(acts[key][:5], ref, rtol=0, atol=0)
        assert acts[key].shape[0] == 7
        assert_close(acts[key][5:], ref[:2], rtol=0, atol=0)


def test_outputs_not_changed_by_later_in_place_ops():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True))
    x = torch.randn(6, 3)
    with ActivationRecorder(model, layers="0") as rec:
        model(x)
    assert_close(rec.activations()["0"], model[0](x))
    assert (rec.activations()["0"] < 0).any()


def test_tuple_output_records_first_tensor_and_dict_output_errors():
    model = nn.Sequential(nn.Linear(3, 3), TupleOut())
    with ActivationRecorder(model, layers="1") as rec:
        model(torch.ones(2, 3))
    assert_close(rec.activations()["1"], 2 * model[0](torch.ones(2, 3)))
    bad = nn.Sequential(nn.Linear(3, 3), DictOut())
    with pytest.raises(TypeError, match=r"layers: .*'1'.*dict"):
        with ActivationRecorder(bad, layers="1"):
            bad(torch.ones(2, 3))
    assert_no_hooks(bad)


def test_detach_and_to():
    model = nested_model()
    x = torch.randn(3, 5)
    with ActivationRecorder(model, layers="0", detach=False) as rec:
        out = model(x)
    assert rec.activations()["0"].requires_grad
    with ActivationRecorder(model, layers="0", to="cpu") as rec:
        model(x)
    value = rec.activations()["0"]
    assert not value.requires_grad and value.device.type == "cpu"
    assert out.requires_grad


def test_never_fired_layer_is_reported():
    model = Branch()
    with ActivationRecorder(model, layers=nn.Linear) as rec:
        model(torch.randn(2, 4))
    with pytest.raises(RuntimeError, match=r"never ran: \['b'\]"):
        rec.activations()
    with ActivationRecorder(model, layers="a") as rec:
        pass
    with pytest.raises(RuntimeError, match="never ran"):
        rec.activations()


def test_clear_and_reentry_errors():
    model = nested_model()
    rec = ActivationRecorder(model, layers="1")
    with rec:
        model(torch.randn(2, 5))
        rec.clear()
        assert rec.layer_names == []
        model(torch.randn(3, 5))
        with pytest.raises(RuntimeError, match="already"):
            rec.__enter__()
    assert rec.activations()["1"].shape == (3, 8)
    assert "ActivationRecorder(Sequential" in repr(rec)


# ----------------------------------------------------------------------------
# Selection
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("layers, expected", [
    ("2.f.0", ["2.f.0"]),
    (nn.Linear, ["0", "2.f.0", "3"]),
    ("re:2\\.f\\.\\d", ["2.f.0", "2.f.1"]),
    ("re:\\d", ["0", "1", "2", "3"]),
    (lambda n, m: isinstance(m, (nn.ReLU, nn.Tanh)), ["1", "2.f.1"]),
    (["3", nn.ReLU, "re:2\\.f", "3"], ["1", "2.f", "3"]),
    (None, ["0", "1", "2.f.0", "2.f.1", "3"]),
])
def test_selection(layers, expected):
    model = nested_model()
    assert [n for n, _ in select_layers(model, layers)] == expected
    assert list(ActivationRecorder(model, layers=layers).selected) == expected


def test_selection_by_module_instance():
    model = nested_model()
    assert [n for n, _ in select_layers(model, model[2].f)] == ["2.f"]
    with pytest.raises(ValueError, match="layers: expected a submodule"):
        select_layers(model, nn.ReLU())


def test_selecting_nothing_lists_available_names():
    model = nested_model()
    for layers in (nn.Conv2d, "re:nothing.*", lambda n, m: False):
        with pytest.raises(ValueError, match=r"layers: .*matches none.*'0', '1', '2', '2\.f'"):
            ActivationRecorder(model, layers=layers)
    with pytest.raises(ValueError, match="layers: expected at least one selector"):
        select_layers(model, [])


def test_selection_list_truncated_for_big_models():
    model = nn.Sequential(*[nn.Identity() for _ in range(60)])
    with pytest.raises(ValueError, match=r"and 35 more"):
        select_layers(model, nn.ReLU)


def test_unknown_exact_name_suggests_close_match():
    model = Reuse()
    with pytest.raises(ValueError, match=r"layers: .*'lim'.*did you mean 'lin'"):
        ActivationRecorder(model, layers="lim")
    with pytest.raises(ValueError, match="layers: expected a valid regular expression"):
        ActivationRecorder(model, layers="re:(")
    with pytest.raises(TypeError, match="layers: expected a module name"):
        ActivationRecorder(model, layers=3)
    with pytest.raises(TypeError, match="layers: expected an nn.Module subclass"):
        ActivationRecorder(model, layers=int)


# ----------------------------------------------------------------------------
# Hooks removed, state restored
# ----------------------------------------------------------------------------

def test_hooks_removed_and_state_restored_after_normal_exit():
    model = nested_model()
    before = set_mixed_state(model)
    with ActivationRecorder(model, layers=lambda n, m: True):
        model.train()
        for p in model.parameters():
            p.requires_grad_(False)
        model(torch.randn(2, 5))
    assert_no_hooks(model)
    assert state(model) == before


def test_hooks_removed_and_state_restored_after_error_in_body():
    model = nested_model()
    before = set_mixed_state(model)
    with pytest.raises(KeyError):
        with ActivationRecorder(model, layers=nn.Linear):
            model.eval()
            model[0].weight.requires_grad_(not model[0].weight.requires_grad)
            raise KeyError("body")
    assert_no_hooks(model)
    assert state(model) == before


def test_hooks_removed_and_state_restored_after_error_in_forward():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), Boom())
    before = set_mixed_state(model)
    with pytest.raises(RuntimeError, match="boom inside forward"):
        with ActivationRecorder(model, layers=None):
            model(torch.randn(2, 3))
    assert_no_hooks(model)
    assert state(model) == before
    before = set_mixed_state(model)
    with pytest.raises(RuntimeError, match="boom inside forward"):
        record(model, torch.randn(4, 3), layers="1")
    assert_no_hooks(model)
    assert state(model) == before


# ----------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("net, shape", [(Conv1dNet, (6, 2, 7)), (Conv2dNet, (6, 3, 5, 4))])
def test_pool_modes(net, shape):
    model = net()
    x = torch.randn(*shape)
    ref = torch.relu(model.conv(x))
    expected = {
        "none": ref,
        "flatten": ref.reshape(ref.shape[0], -1),
        "mean": ref.mean(tuple(range(2, ref.ndim))),
        "max": ref.flatten(2).amax(-1),
    }
    for pool in expected:
        spec = (lambda t: t.flatten(2).amax(-1)) if pool == "max" else pool
        with ActivationRecorder(model, layers="act", pool=spec) as rec:
            model(x[:4])
            model(x[4:])
        assert_close(rec.activations()["act"], expected[pool])
        assert_close(record(model, x, layers="act", pool=spec, batch_size=4)["act"], expected[pool])


def test_mean_pool_on_channels_last_output():
    model = Conv2dNet().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 5, 6).to(memory_format=torch.channels_last)
    ref = torch.relu(model.conv(x))
    assert not ref.is_contiguous()
    assert_close(record(model, x, layers="act", pool="mean")["act"], ref.mean((2, 3)))


def test_mean_pool_is_identity_on_2d_outputs():
    model = nested_model()
    x = torch.randn(4, 5)
    assert_close(record(model, x, layers="0", pool="mean")["0"], model[0](x), rtol=0, atol=0)


def test_bad_pool_errors():
    model = nested_model()
    with pytest.raises(ValueError, match=r"pool: expected one of 'none', 'flatten', 'mean', got 'avg'"):
        ActivationRecorder(model, layers="0", pool="avg")
    with pytest.raises(TypeError, match="pool: expected one of"):
        record(model, torch.randn(3, 5), layers="0", pool=3)
    with pytest.raises(TypeError, match="pool: expected the callable to return a Tensor"):
        record(model, torch.randn(3, 5), layers="0", pool=lambda t: t.tolist())
    with pytest.raises(RuntimeError, match=r"layers: expected layer '0' to give a batch-first output with 3 rows"):
        record(model, torch.randn(3, 5), layers="0", pool=lambda t: t.T)


class VariableLength(nn.Module):
    def forward(self, x):
        return x[:, : int(x.shape[0])]


def test_changing_feature_shape_errors():
    model = nn.Sequential(VariableLength())
    with pytest.raises(RuntimeError, match=r"layers: expected layer '0' to give shape \[2, 3\] for batch 1"):
        record(model, torch.randn(5, 8), layers="0", batch_size=3)
    acts = record(model, torch.randn(5, 8), layers="0", pool=lambda t: t.sum(1, keepdim=True), batch_size=3)
    assert acts["0"].shape == (5, 1)


# ----------------------------------------------------------------------------
# record()
# ----------------------------------------------------------------------------

class PairDataset(Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return torch.from_numpy(self.x[i]), int(self.y[i])


class Stream(IterableDataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __iter__(self):
        for i in range(0, len(self.x), 8):
            yield self.x[i:i + 8], self.y[i:i + 8]


@pytest.fixture
def xy():
    x = torch.randn(50, 5)
    y = torch.randint(0, 3, (50,))
    return x, y


def reference(model, x):
    with torch.no_grad():
        return nested_reference(model, x)


def test_record_over_every_data_kind(xy):
    x, y = xy
    model = nested_model()
    ref = reference(model, x)
    layers = ["0", "2", "3"]
    kinds = {
        "tensor": x,
        "numpy tuple": (x.numpy().astype(np.float64), y.numpy()),
        "tensor dataset": TensorDataset(x, y),
        "data loader": DataLoader(TensorDataset(x, y), batch_size=16),
        "custom dataset": PairDataset(x.numpy(), y.numpy()),
        "stream": DataLoader(Stream(x, y), batch_size=None),
    }
    for kind, data in kinds.items():
        acts = record(model, data, layers=layers, batch_size=16)
        assert isinstance(acts, Activations)
        assert acts.layer_names == tuple(layers), kind
        assert acts.n_samples == 50
        for name in layers:
            assert_close(acts[name], ref[name], msg=kind)
        if kind == "tensor":
            assert acts.labels is None
        else:
            assert torch.equal(acts.labels.long(), y), kind


def test_record_batch_size_not_dividing_and_max_samples(xy):
    x, y = xy
    model = nested_model()
    ref = reference(model, x)
    acts = record(model, (x, y), layers="2", batch_size=7)
    assert_close(acts["2"], ref["2"])
    for data in ((x, y), TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=9),
                 DataLoader(Stream(x, y), batch_size=None)):
        acts = record(model, data, layers="2", batch_size=7, max_samples=23)
        assert acts.n_samples == 23
        assert_close(acts["2"], ref["2"][:23])
        assert torch.equal(acts.labels, y[:23])


def test_record_drop_last_loader(xy):
    x, y = xy
    model = nested_model()
    acts = record(model, DataLoader(TensorDataset(x, y), batch_size=16, drop_last=True), layers="0")
    assert acts.n_samples == 48
    assert_close(acts["0"], reference(model, x)["0"][:48])


def test_record_reused_module():
    model = Reuse()
    x = torch.randn(20, 6)
    acts = record(model, x, layers=["lin", "act"], batch_size=6)
    assert acts.layer_names == ("lin", "act", "lin#1", "act#1")
    with ActivationRecorder(model, layers=["lin", "act"]) as rec, torch.no_grad():
        model(x)
    for key, value in rec.activations().items():
        assert_close(acts[key], value)


def test_record_spill_to(tmp_path, xy):
    x, y = xy
    model = Reuse()
    x = torch.randn(30, 6)
    in_ram = record(model, (x, y[:30]), layers=["lin", "head"], batch_size=8)
    spilled = record(model, (x, y[:30]), layers=["lin", "head"], batch_size=8,
                     spill_to=tmp_path / "acts")
    assert set(spilled.files) == {"lin", "lin#1", "head"}
    for key, path in spilled.files.items():
        assert path.exists() and path.parent == tmp_path / "acts"
        assert_close(spilled[key], in_ram[key], rtol=0, atol=0)
        assert np.array_equal(np.load(path), in_ram[key].numpy())
    assert torch.equal(spilled.labels, in_ram.labels)
    assert "file" in repr(spilled)
    streamed = record(model, DataLoader(Stream(x, y[:30]), batch_size=None), layers="lin",
                      spill_to=tmp_path / "stream")
    assert_close(np.load(streamed.files["lin#1"]), in_ram["lin#1"].numpy())


def test_record_restores_mode_and_runs_in_eval(xy):
    x, _ = xy
    model = nn.Sequential(nn.Linear(5, 5), nn.Dropout(0.9), nn.BatchNorm1d(5))
    before = set_mixed_state(model)
    acts = record(model, x, layers="1")
    assert_close(acts["1"], model[0](x).detach())
    assert state(model) == before
    assert_no_hooks(model)


def test_record_on_device(device, xy):
    x, y = xy
    model = nested_model().to(device)
    x, y = x.to(device), y.to(device)
    ref = reference(model, x)
    kept = record(model, (x, y), layers=["1", "3"], pool="mean", to=None, batch_size=16)
    assert kept["1"].device == x.device and kept.labels.device == x.device
    assert_close(kept["3"], ref["3"])
    stored = record(model, (x.cpu(), y.cpu()), layers=["1", "3"], batch_size=16)
    assert stored["1"].device.type == "cpu"
    assert_close(stored["1"], ref["1"].cpu())
    moved = stored.to(device)
    assert moved["3"].device == x.device and moved.labels.device == x.device
    with ActivationRecorder(model, layers="2") as rec, torch.no_grad():
        model(x)
    assert rec.activations()["2"].device == x.device


def test_activations_mapping():
    acts = Activations({"a": torch.zeros(3, 2), "b": torch.ones(3)}, torch.arange(3))
    assert dict(acts).keys() == {"a", "b"} and len(acts) == 2 and "a" in acts
    assert acts.n_samples == 3
    assert acts == acts and acts != Activations({"a": torch.zeros(3, 2)})
    with pytest.raises(KeyError, match="did you mean 'a'"):
        acts["aa"]
    assert "a  [3, 2]  float32  cpu" in repr(acts)
    with pytest.raises(ValueError, match="tensors: expected the same number of rows"):
        Activations({"a": torch.zeros(3, 2), "b": torch.ones(4)})


# ----------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------

def test_bad_data_errors(xy):
    x, y = xy
    model = nested_model()
    with pytest.raises(ValueError, match=r"data: expected y with one entry per row of X \(50\)"):
        record(model, (x, y[:40]), layers="0")
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="data: expected finite inputs, got 1 NaN"):
        record(model, bad, layers="0")
    with pytest.raises(ValueError, match="data: expected finite inputs.*batch 1"):
        record(model, DataLoader(TensorDataset(bad, y), batch_size=3), layers="0")
    with pytest.raises(ValueError, match="data: expected labels with one entry per input row"):
        record(model, DataLoader(Stream(x, y[:45]), batch_size=None), layers="0")
    with pytest.raises(TypeError, match="data: expected a Tensor, array"):
        record(model, "not data", layers="0")
    with pytest.raises(ValueError, match="data: expected X or a tuple"):
        record(model, (x, y, y), layers="0")


def test_bad_argument_errors(xy, tmp_path):
    x, _ = xy
    model = nested_model()
    with pytest.raises(ValueError, match=r"layers: .*matches none.*Available modules"):
        record(model, x, layers=nn.Conv1d)
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1, got 0"):
        record(model, x, layers="0", batch_size=0)
    with pytest.raises(TypeError, match="max_samples: expected an int"):
        record(model, x, layers="0", max_samples=2.5)
    with pytest.raises(ValueError, match="device: expected the device holding the model's parameters"):
        record(model, x, layers="0", device="meta")
    with pytest.raises(ValueError, match="to: expected 'cpu' when spill_to is given"):
        record(model, x, layers="0", to="meta", spill_to=tmp_path)
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        record(lambda t: t, x, layers="0")


def test_layer_not_running_every_batch():
    model = Branch()
    x = torch.randn(12, 4)
    with pytest.raises(RuntimeError, match=r"never ran: \['b'\]"):
        record(model, x, layers=nn.Linear, batch_size=4)
    x[8:] = 1e7
    with pytest.raises(RuntimeError, match=r"got no output from \['a'\] in batch 2"):
        record(model, x, layers="a", batch_size=4)


# ----------------------------------------------------------------------------
# Random batch sizes give identical results
# ----------------------------------------------------------------------------

_MODEL = Reuse()
_X = torch.randn(37, 6)
with torch.no_grad():
    _FULL = record(_MODEL, _X, layers=["lin", "act"], batch_size=37)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch_size=st.integers(1, 40), max_samples=st.one_of(st.none(), st.integers(1, 40)),
       use_loader=st.booleans())
def test_random_batch_sizes_give_identical_results(batch_size, max_samples, use_loader):
    data = DataLoader(TensorDataset(_X), batch_size=batch_size) if use_loader else _X
    acts = record(_MODEL, data, layers=["lin", "act"], batch_size=batch_size, max_samples=max_samples)
    n = 37 if max_samples is None else min(37, max_samples)
    assert acts.n_samples == n
    for key in _FULL:
        assert_close(acts[key], _FULL[key][:n], rtol=1e-6, atol=1e-6)
