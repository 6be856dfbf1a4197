"""Bad inputs the catalogue (tests/catalogue) found in data, training, paths, claims, reports and
the NPK: each refused with an error naming the argument (each case accepted or crashed inside
torch/numpy before)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import sepmeasure as sm
from sepmeasure.training import Callback
from sepmeasure.validation import check_seed


def test_dataset_sizes_noise_and_npz_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"size: expected an int <= 10000000"):
        sm.load_dataset("gaussians", size=10 ** 12)   # tried to allocate 7 TiB
    with pytest.raises(ValueError, match=r"^noise: expected scales whose samples stay finite in float32"):
        sm.load_dataset("gaussians", size=20, noise=1e300)
    with pytest.raises(ValueError, match=r"^separation: expected scales whose samples stay finite"):
        sm.load_dataset("gaussians", size=20, separation=1e300)
    # generator options: checked before numpy allocates (n_classes=10**12 tried 14.6 TiB)
    for kw, err, match in (({"n_classes": 10 ** 12}, ValueError, r"n_classes: expected an int <= 10 \(at least two"),
                           ({"n_classes": 1}, ValueError, "n_classes: expected an int >= 2"),
                           ({"n_classes": 2.5}, TypeError, "n_classes: expected an int"),
                           ({"dim": 10 ** 12}, ValueError, r"dim: expected an int <= 500000 \(size \* dim"),
                           ({"dim": -3}, ValueError, "dim: expected an int >= 1"),
                           ({"separation": "3"}, TypeError, "separation: expected a real number"),
                           ({"separation": math.nan}, ValueError, "separation: expected a finite number")):
        with pytest.raises(err, match=match):
            sm.load_dataset("gaussians", size=20, **kw)
    with pytest.raises(ValueError, match="turns: expected a finite number >= 0"):
        sm.load_dataset("spirals", size=20, turns=-1.0)
    with pytest.raises(TypeError, match="n_classes: expected an int"):
        sm.load_dataset("spirals", size=20, n_classes=True)
    with pytest.raises(ValueError, match=r"seed: expected an int <= 9223372036854775807"):
        sm.load_dataset("gaussians", size=20, seed=2 ** 70)
    p = tmp_path / "d.npz"
    np.savez(p, X=np.arange(20.0).reshape(10, 2), y=np.arange(10) % 2)
    with pytest.raises(TypeError, match="path: expected a path"):
        sm.load_npz(3)
    with pytest.raises(TypeError, match="seed: expected an int"):
        sm.load_npz(p, seed="0")
    with pytest.raises(TypeError, match="test_fraction: expected a real number"):
        sm.load_npz(p, test_fraction="0.5")
    for bad in (math.nan, -0.5):
        with pytest.raises(ValueError, match="test_fraction"):
            sm.load_npz(p, test_fraction=bad)


def test_training_arguments():
    data = sm.LabeledData(torch.randn(8, 2), torch.arange(8) % 2)
    with pytest.raises(ValueError, match=r"lr: expected a coefficient the model's dtype torch.float32 can hold"):
        sm.fit(sm.MLP(2, [3], 2), data, epochs=1, lr=1e300, progress=False)
    with pytest.raises(ValueError, match=r"seed: expected an int <= "):
        sm.fit(sm.MLP(2, [3], 2), data, epochs=1, seed=2 ** 70, progress=False)
    # float64 models hold larger learning rates
    sm.fit(sm.MLP(2, [3], 2).double(), data, epochs=0, lr=1e300, progress=False)
    for name, kw in (("epochs", {"epochs": 3}), ("steps", {"steps": 3}), ("epochs", {"epochs": "al"})):
        with pytest.raises(TypeError, match=f"{name}: expected"):
            Callback(**kw)
    assert Callback(epochs=[], steps=[2]).epochs == set()
    assert check_seed(2 ** 63 - 1) == 2 ** 63 - 1
    with pytest.raises(ValueError, match="seed: expected an int >= 0"):
        check_seed(-1)


def test_path_layers_are_checked():
    assert sm.PathLayer("a", [True, np.bool_(False)], [["x", "full"]]) == sm.PathLayer("a", (True, False),
                                                                                        (("x", "full"),))
    for kw, match in (({"nonlinear": "abc"}, "nonlinear: expected a sequence of bools"),
                      ({"nonlinear": 3}, "nonlinear: expected a sequence of bools"),
                      ({"nonlinear": (1, 0)}, "nonlinear: expected a sequence of bools"),
                      ({"nonlinear": None}, "nonlinear: expected"),
                      ({"inputs": "abc"}, "inputs: expected a sequence of"),
                      ({"inputs": 3}, "inputs: expected a sequence of"),
                      ({"inputs": [("a",)]}, r"inputs\[0\]: expected a \(source layer name, kind\) pair")):
        args = {"name": "a", "nonlinear": (True,), **kw}
        with pytest.raises(TypeError, match=match):
            sm.PathLayer(**args)
    with pytest.raises(ValueError, match="nonlinear: expected at least one channel"):
        sm.PathLayer("a", ())
    with pytest.raises(TypeError, match="name: expected a layer name"):
        sm.PathLayer(3, (True,))


def _table() -> pd.DataFrame:
    return pd.DataFrame({"seed": [0, 1, 2], "value": [0.7, 0.71, 0.69]})


def test_claim_resample_counts_are_bounded_and_tiny_references_do_not_overflow():
    for cls, kw in ((sm.Threshold, {"value": "value", "op": ">=", "bound": 0.5}),
                    (sm.ClosedForm, {"value": "value", "reference": 0.7, "tolerance": 0.1})):
        with pytest.raises(ValueError, match=r"n_boot: expected an int <= 1000000"):
            cls(name="c", paper="P", statement="s", n_boot=10 ** 12, **kw)
    with pytest.raises(ValueError, match=r"n_perm: expected an int <= 1000000"):
        sm.CoMovement(name="c", paper="P", statement="s", a="value", b="value", n_perm=10 ** 12)
    # relative errors against a reference of 1e-300 are ~7e299: their spread overflowed to inf
    res = sm.ClosedForm(name="c", paper="P", statement="s", value="value", reference=1e-300,
                        tolerance=0.1, n_boot=200).evaluate(_table())
    values = np.array([v for _, v in res.per_seed])
    assert math.isfinite(res.spread) and res.spread == pytest.approx(
        float(np.std(values / 1e299, ddof=1)) * 1e299, rel=1e-12)
    assert res.verdict == "not supported"


def test_figure_height_is_checked():
    base = dict(name="f", table="t", kind="line", x="a", y="b")
    for bad, err in (("3", TypeError), (math.nan, ValueError), (-1.0, ValueError), (1e300, ValueError)):
        with pytest.raises(err, match="height"):
            sm.FigureSpec(**base, height=bad)
    with pytest.raises(ValueError, match="col_wrap: expected an int >= 1"):
        sm.FigureSpec(**base, col_wrap=0)


def test_npk_names_its_argument_and_refuses_overflow():
    model = sm.MLP(2, [3], 1)
    x = torch.randn(4, 2)
    with pytest.raises(TypeError, match=r"^x: expected a torch.float32 tensor"):
        sm.network_gates(model, x.double())
    with pytest.raises(ValueError, match=r"^x: expected finite values"):
        sm.network_gates(model, x.masked_fill(x > 0, math.nan))
    # float32 inputs of 1e30 give products of 1e60: inf before, a clear error now
    with pytest.raises(ValueError, match=r"x1, x2: the neural path kernel overflows torch.float32"):
        sm.neural_path_kernel(model, x * 1e30)
    # in float64 the same kernel is finite, and 1e60 times the unit-scale kernel of a bias-free net
    m64 = sm.MLP(2, [3], 1, bias=False).double()
    k = sm.neural_path_kernel(m64, x.double() * 1e30)
    assert torch.allclose(k, sm.neural_path_kernel(m64, x.double()) * 1e60, rtol=1e-12)


def test_training_inputs_the_model_cannot_take_are_named():
    X, y = torch.randn(10, 4), torch.arange(10) % 2
    for run, name in ((lambda m: sm.fit(m, (X, y), epochs=1, progress=False), "train"),
                      (lambda m: sm.evaluate(m, (X, y)), "data"),
                      (lambda m: sm.fit(m, (X[:, :2], y), (X, y), epochs=1, progress=False), "test")):
        with pytest.raises(ValueError, match=rf"^{name}: expected inputs the model accepts, got a batch of shape "
                                             rf"\(10, 4\).*mat1 and mat2 shapes cannot be multiplied"):
            run(sm.MLP(2, [3], 2))


def test_kernel_diagnostics_refuse_an_overflowing_kernel():
    x, y = torch.randn(6, 2) * 1e30, torch.arange(6) % 2
    cb = sm.KernelDiagnostics("ntk", x, y, epochs=[0])
    with pytest.raises(ValueError, match=r"x: expected inputs whose NTK is finite in torch.float32"):
        sm.fit(sm.MLP(2, [3], 2), (x / 1e30, y), epochs=1, callbacks=[cb], progress=False)


def test_optimiser_coefficients_and_loss_are_checked():
    data = sm.LabeledData(torch.randn(8, 2), torch.arange(8) % 2)
    with pytest.raises(ValueError, match=r"momentum: expected a heavy-ball coefficient in \[0, 1\]"):
        sm.fit(sm.MLP(2, [3], 2), data, epochs=1, momentum=1e300, progress=False)  # diverged, blamed lr
    with pytest.raises(ValueError, match=r"weight_decay: expected a coefficient the model's dtype"):
        sm.fit(sm.MLP(2, [3], 2), data, epochs=1, weight_decay=1e300, progress=False)  # torch overflow
    sm.fit(sm.MLP(2, [3], 2), data, epochs=1, momentum=1.0, progress=False)
    with pytest.raises(TypeError, match="loss_fn: expected a callable"):
        sm.evaluate(sm.MLP(2, [3], 2), data, loss_fn="mse")   # 'str' object is not callable
