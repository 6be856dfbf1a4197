"""fit(): history, determinism, callbacks, penalties, progress, errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sepmeasure.data import load_dataset
from sepmeasure.models import CNN, MLP
from sepmeasure.training import Callback, evaluate, fit


@pytest.fixture(scope="module")
def moons():
    return load_dataset("two_moons", split="both", size=400, seed=0)


def test_history_is_tidy_and_complete(moons):
    h = fit(MLP(2, [16], 2), moons.train, moons.test, epochs=3, batch_size=32, progress=False)
    assert list(h.columns) == ["epoch", "step", "split", "loss", "accuracy", "seconds"]
    assert len(h) == 2 * 4
    assert h.epoch.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert h.split.tolist() == ["train", "test"] * 4
    steps = int(np.ceil(len(moons.train) / 32))
    assert h.step.tolist() == [0, 0, steps, steps, 2 * steps, 2 * steps, 3 * steps, 3 * steps]
    assert (h.seconds.diff().fillna(0) >= 0).all()
    assert h.attrs["config"]["seed"] == 0 and h.attrs["config"]["model"]["model"] == "MLP"
    env = h.attrs["environment"]
    assert env["version_torch"].startswith("2.13") and "git_commit" in env and env["device"] == "cpu"


def test_reported_accuracy_equals_an_independent_evaluation(moons):
    model = MLP(2, [16], 2)
    h = fit(model, moons.train, moons.test, epochs=2, progress=False)
    with torch.no_grad():
        acc = (model(moons.test.X).argmax(1) == moons.test.y).float().mean().item()
        loss = torch.nn.functional.cross_entropy(model(moons.test.X), moons.test.y).item()
    last = h[(h.epoch == 2) & (h.split == "test")].iloc[0]
    assert last.accuracy == pytest.approx(acc)
    assert last.loss == pytest.approx(loss, rel=1e-5)


def test_training_learns(moons):
    torch.manual_seed(1)
    h = fit(MLP(2, [32, 32], 2), moons.train, moons.test, epochs=30, lr=0.1, progress=False)
    final = h[h.split == "test"].accuracy.iloc[-1]
    assert final > 0.95
    assert h[h.split == "train"].loss.iloc[-1] < h[h.split == "train"].loss.iloc[0]


def test_same_seed_same_history(moons):
    def run():
        torch.manual_seed(0)
        return fit(MLP(2, [8], 2), moons.train, moons.test, epochs=2, seed=4, progress=False)

    a, b = run(), run()
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
    torch.manual_seed(0)
    c = fit(MLP(2, [8], 2), moons.train, moons.test, epochs=2, seed=5, progress=False)
    assert not np.allclose(a.loss.values, c.loss.values)


def test_dataset_and_tensor_paths_train_identically(moons):
    """The sliced fast path and the DataLoader path shuffle with the same generator: same result."""
    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    m1 = MLP(2, [8], 2)
    m2 = MLP(2, [8], 2)
    m2.load_state_dict(m1.state_dict())
    h1 = fit(m1, moons.train, epochs=2, seed=1, progress=False)
    h2 = fit(m2, TensorDataset(moons.train.X, moons.train.y), epochs=2, seed=1, progress=False)
    np.testing.assert_allclose(h1.loss.values, h2.loss.values, rtol=1e-5)


def test_callbacks_run_at_chosen_epochs_and_steps(moons):
    class Count(Callback):
        def measure(self, state):
            return [{"measure": "n_params", "value": sum(p.numel() for p in state.model.parameters())}]

    class Steps(Callback):
        seen = []

        def on_step_end(self, state):
            self.seen.append(state.step)

    cb = Count(epochs=[0, 2], steps=[1, 3])
    s = Steps(epochs=None)
    h = fit(MLP(2, [4], 2), moons.train, epochs=3, batch_size=100, callbacks=[cb, s], progress=False)
    t = cb.table
    assert t[t.trigger == "epoch"].epoch.tolist() == [0, 2]
    assert t[t.trigger == "step"].step.tolist() == [1, 3]
    assert (t.value == 4 * 2 + 4 + 4 * 2 + 2).all()
    assert s.seen == list(range(1, 13))
    assert len(h.attrs["measurements"]) == 4


def test_callback_sees_eval_mode_unchanged_and_training_resumes(moons):
    modes = []

    class Mode(Callback):
        def measure(self, state):
            modes.append(state.model.training)
            state.model.eval()  # a careless callback
            return None

    model = MLP(2, [4], 2)
    fit(model, moons.train, epochs=2, callbacks=[Mode()], progress=False)
    assert modes == [True, True, True]
    assert model.training


def test_penalty_is_added_to_the_loss(moons):
    torch.manual_seed(0)
    a = MLP(2, [8], 2)
    b = MLP(2, [8], 2)
    b.load_state_dict(a.state_dict())
    fit(a, moons.train, epochs=3, seed=0, progress=False)
    fit(b, moons.train, epochs=3, seed=0, progress=False, penalty=lambda m: 10.0 * m.head.weight.pow(2).sum())
    assert b.head.weight.norm() < a.head.weight.norm()


def test_adam_and_cnn_on_digits():
    train, test = load_dataset("digits", split="both")
    torch.manual_seed(0)
    h = fit(CNN(1, [16, 16], 10, dim=2), train, test, epochs=6, optimizer="adam", lr=1e-2, progress=False)
    assert h[h.split == "test"].accuracy.iloc[-1] > 0.5


def test_fit_on_device(device, moons):
    model = MLP(2, [8], 2)
    h = fit(model, moons.train, moons.test, epochs=1, device=device, progress=False)
    assert next(model.parameters()).device.type == device.type
    assert h.attrs["environment"]["device"].startswith(device.type)
    r = evaluate(model, moons.test)
    assert r["n"] == len(moons.test)


def test_inputs_labels_and_model_on_different_devices(device):
    # X on `device`, y and the model on the CPU: every batch must be complete (a non-blocking copy
    # into host memory would not be) and y must be indexed on its own device
    data = load_dataset("two_moons", size=6000, seed=1)
    X, y = data.X, data.y
    torch.manual_seed(0)
    model = MLP(2, [16], 2)
    ref = evaluate(model, (X, y), batch_size=4096)
    assert evaluate(model, (X.to(device), y), batch_size=4096) == ref
    other = MLP(2, [16], 2)
    other.load_state_dict(model.state_dict())
    h_ref = fit(model, (X, y), epochs=1, batch_size=1024, progress=False)
    h = fit(other, (X.to(device), y), epochs=1, batch_size=1024, progress=False)
    assert next(other.parameters()).device.type == "cpu"
    cols = ["epoch", "step", "split", "loss", "accuracy"]
    pd.testing.assert_frame_equal(h[cols], h_ref[cols])
    for p, q in zip(model.parameters(), other.parameters()):
        assert torch.equal(p, q)


def test_progress_bar_only_on_a_terminal(moons, capsys):
    fit(MLP(2, [4], 2), moons.train, epochs=1, progress=True)
    assert "fit" not in capsys.readouterr().err  # pytest's stderr is not a terminal


def test_divergence_is_reported(moons):
    with pytest.raises(FloatingPointError, match="diverged.*smaller lr"):
        fit(MLP(2, [64, 64], 2), moons.train, epochs=5, lr=1e6, momentum=0.99, progress=False)


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        ({"epochs": -1}, ValueError, r"epochs: expected an int >= 0"),
        ({"lr": 0}, ValueError, r"lr: expected a finite number > 0"),
        ({"optimizer": "rmsprop"}, ValueError, r"optimizer: expected one of 'sgd', 'adam'"),
        ({"batch_size": 0}, ValueError, r"batch_size: expected an int >= 1"),
        ({"callbacks": [lambda s: None]}, TypeError, r"callbacks\[0\]: expected a sepmeasure.training.Callback"),
        ({"callbacks": 3}, TypeError, r"callbacks: expected a list of sepmeasure.training.Callback"),
        ({"eval_batch_size": 0}, ValueError, r"eval_batch_size: expected an int >= 1"),
        ({"momentum": -1.0}, ValueError, r"momentum: expected a finite number >= 0"),
        ({"penalty": 1.0}, TypeError, r"penalty: expected a callable"),
        ({"loss_fn": "cross_entropy"}, TypeError, r"loss_fn: expected a callable"),
    ],
)
def test_bad_arguments_are_named(moons, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fit(MLP(2, [4], 2), moons.train, progress=False, **kwargs)


def test_bad_model_and_data():
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        fit("mlp", (torch.zeros(4, 2), torch.zeros(4)))
    with pytest.raises(ValueError, match=r"train\[1\] \(y\): expected 4 labels"):
        fit(MLP(2, [4], 2), (torch.zeros(4, 2), torch.zeros(3)))


def test_evaluate_checks_its_arguments_and_runs_without_grad(moons):
    model = MLP(2, [4], 2)
    with pytest.raises(ValueError, match=r"batch_size: expected an int >= 1"):
        evaluate(model, moons.train, batch_size=-1)
    with pytest.raises(TypeError, match=r"model: expected an nn.Module"):
        evaluate("mlp", moons.train)
    grad_during_eval = []

    def loss_fn(out, y, reduction="mean"):
        if reduction == "sum":   # the evaluations of fit's history
            grad_during_eval.append(torch.is_grad_enabled())
        return torch.nn.functional.cross_entropy(out, y, reduction=reduction)

    fit(model, moons.train, moons.test, epochs=1, loss_fn=loss_fn, progress=False)
    assert grad_during_eval and not any(grad_during_eval)


def test_dataset_items_error_names_the_argument():
    class Bad(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.zeros(2)

    with pytest.raises(TypeError, match=r"^data: expected dataset items \(x, y\)"):
        evaluate(MLP(2, [4], 2), Bad())
    with pytest.raises(TypeError, match=r"^test: expected dataset items \(x, y\)"):
        fit(MLP(2, [4], 2), load_dataset("xor", size=20), Bad(), epochs=1, progress=False)
