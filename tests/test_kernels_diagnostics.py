"""Kernel diagnostics against closed forms and hand computation, and the training callback."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sepmeasure.data import load_dataset
from sepmeasure.kernels import (EFFECTIVE_RANK_DEFINITION, KernelDiagnostics, effective_rank, empirical_ntk,
                                kernel_alignment, kernel_diagnostics, kernel_distance, kernel_spectrum,
                                kernel_target_alignment, kernel_velocity, neural_path_kernel)
from sepmeasure.models import MLP
from sepmeasure.training import Callback, fit

F64 = torch.float64


def psd(n: int, rank: int, device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, rank, generator=g, dtype=F64).to(device)
    return a @ a.T


def hand_centred_alignment(k: np.ndarray, l: np.ndarray) -> float:
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    kc, lc = h @ k @ h, h @ l @ h
    return float(np.trace(kc @ lc) / np.sqrt(np.trace(kc @ kc) * np.trace(lc @ lc)))


def test_alignment_with_own_targets_is_one(device):
    y = torch.tensor([0, 2, 1, 1, 0, 2, 2], device=device)
    onehot = torch.nn.functional.one_hot(y).to(F64)
    assert kernel_target_alignment(onehot @ onehot.T, y) == pytest.approx(1.0, abs=1e-12)
    assert kernel_target_alignment(5 * onehot @ onehot.T, onehot) == pytest.approx(1.0, abs=1e-12)
    assert kernel_target_alignment(onehot @ onehot.T, y, centered=False) == pytest.approx(1.0, abs=1e-12)


def test_alignment_matches_hand_computation(device):
    k = psd(6, 3, device)
    y = torch.tensor([0, 1, 1, 0, 2, 1], device=device)
    onehot = np.eye(3)[y.cpu().numpy()]
    l = onehot @ onehot.T
    assert kernel_target_alignment(k, y) == pytest.approx(hand_centred_alignment(k.cpu().numpy(), l), rel=1e-12)
    kk, ll = k.cpu().numpy(), l
    uncentred = float((kk * ll).sum() / np.sqrt((kk * kk).sum() * (ll * ll).sum()))
    assert kernel_target_alignment(k, y, centered=False) == pytest.approx(uncentred, rel=1e-12)
    k2 = psd(6, 2, device, seed=1)
    assert kernel_alignment(k, k2) == pytest.approx(hand_centred_alignment(kk, k2.cpu().numpy()), rel=1e-12)
    # centring removes a constant offset: the centred alignment of K + c·11ᵀ is that of K
    assert kernel_alignment(k + 3.0, k2) == pytest.approx(kernel_alignment(k, k2), rel=1e-10)
    # one class: the centred target kernel is zero, the alignment undefined: refused, not NaN
    one = torch.zeros(6, dtype=torch.long, device=device)
    with pytest.raises(ValueError, match="y: expected at least 2 distinct classes"):
        kernel_target_alignment(k, one)
    with pytest.raises(ValueError, match="y: expected at least 2 distinct classes"):
        kernel_diagnostics(k, one)
    # uncentred, one class is defined: <K, 11^T> / (|K| n)
    kd = k.double()
    assert kernel_target_alignment(k, one, centered=False) == pytest.approx(
        float(kd.sum() / (kd.norm() * 6)), rel=1e-12)


def test_kernel_distance_closed_forms(device):
    k = psd(5, 5, device)
    assert kernel_distance(k, 2.5 * k) == pytest.approx(0.0, abs=1e-12)
    a = torch.diag(torch.tensor([1.0, 0, 0], dtype=F64, device=device))
    b = torch.diag(torch.tensor([0, 1.0, 0], dtype=F64, device=device))
    assert kernel_distance(a, b) == pytest.approx(1.0)
    assert kernel_distance(a, -a) == pytest.approx(2.0)
    k2 = psd(5, 2, device, seed=3)
    kk, k2n = k.cpu().numpy(), k2.cpu().numpy()
    hand = 1 - (kk * k2n).sum() / (np.linalg.norm(kk) * np.linalg.norm(k2n))
    assert kernel_distance(k, k2) == pytest.approx(hand, rel=1e-12)
    full = torch.randn(3, 3, 2, 2, dtype=F64, device=device)
    assert kernel_distance(full, 4 * full) == pytest.approx(0.0, abs=1e-12)


def test_effective_rank_closed_forms(device):
    assert effective_rank(torch.eye(7, dtype=F64, device=device)) == pytest.approx(7.0, rel=1e-12)
    assert effective_rank(torch.eye(5, device=device)) == pytest.approx(5.0, rel=1e-6)
    assert effective_rank(psd(6, 1, device)) == pytest.approx(1.0, rel=1e-9)
    assert effective_rank(psd(6, 1, device).float()) == pytest.approx(1.0, rel=1e-5)
    d = torch.diag(torch.tensor([3.0, 1.0, 0.0, 0.0], dtype=F64, device=device))
    p = np.array([0.75, 0.25])
    assert effective_rank(d) == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-12)
    assert math.isnan(effective_rank(torch.zeros(3, 3, device=device)))
    assert "Roy & Vetterli" in EFFECTIVE_RANK_DEFINITION


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 8), scale=st.floats(0.01, 100))
def test_effective_rank_invariances(seed, n, scale, device):
    """Invariant to positive scaling and to orthogonal change of basis; between 1 and n."""
    k = psd(n, n, device, seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=torch.Generator().manual_seed(seed + 1)))
    q = q.to(device)
    r = effective_rank(k)
    assert 1 - 1e-9 <= r <= n + 1e-9
    assert effective_rank(scale * k) == pytest.approx(r, rel=1e-9)
    assert effective_rank(q @ k @ q.T) == pytest.approx(r, rel=1e-7)
    assert kernel_distance(k, scale * k) == pytest.approx(0.0, abs=1e-12)


def test_spectrum(device):
    k = psd(5, 3, device)
    s = kernel_spectrum(k)
    expected = np.sort(np.linalg.eigvalsh(k.cpu().numpy()))[::-1]
    assert np.allclose(s.eigenvalues.cpu().numpy(), expected, rtol=1e-10, atol=1e-10)
    assert s.trace == pytest.approx(float(k.trace()), rel=1e-10)
    assert s.min_eigenvalue == pytest.approx(float(expected[-1]), abs=1e-10)   # rank 3 of 5: zero up to rounding
    assert s.effective_rank == pytest.approx(effective_rank(k), rel=1e-12)
    p = expected[:3] / expected[:3].sum()
    assert s.effective_rank == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-9)
    table = s.to_frame()
    assert list(table.columns) == ["measure", "index", "value"]
    assert (table.measure == "eigenvalue").sum() == 5
    assert table[table.measure == "effective_rank"].value.iloc[0] == s.effective_rank


def test_velocity_by_hand(device):
    k0 = torch.eye(3, dtype=F64, device=device)
    k1 = 2 * k0
    k2 = torch.ones(3, 3, dtype=F64, device=device)
    table = kernel_velocity([k0, k1, k2], [0, 1, 3])
    d = 1 - 3 / (math.sqrt(3) * 3)
    assert table.distance.tolist() == pytest.approx([0.0, d], abs=1e-12)
    assert table.value.tolist() == pytest.approx([0.0, d / 2], abs=1e-12)
    assert table.epoch_from.tolist() == [0.0, 1.0] and table.epoch.tolist() == [1.0, 3.0]


def test_kernel_diagnostics_rows(device):
    k = psd(4, 2, device)
    prev, init = psd(4, 3, device, 1), psd(4, 4, device, 2)
    y = torch.tensor([0, 1, 0, 1], device=device)
    table = kernel_diagnostics(k, y, previous=prev, initial=init, elapsed=2.0)
    values = dict(zip(table.measure, table.value))
    assert values["alignment"] == pytest.approx(kernel_target_alignment(k, y), rel=1e-12)
    assert values["effective_rank"] == pytest.approx(effective_rank(k), rel=1e-12)
    assert values["distance_to_previous"] == pytest.approx(kernel_distance(prev, k), rel=1e-12)
    assert values["kernel_velocity"] == pytest.approx(kernel_distance(prev, k) / 2, rel=1e-12)
    assert values["distance_to_initial"] == pytest.approx(kernel_distance(init, k), rel=1e-12)


@pytest.mark.parametrize("kind", ["ntk", "npk"])
def test_callback_records_during_fit(kind, device):
    train = load_dataset("two_moons", size=120, seed=1)
    model = MLP(2, [16], 2).to(device)
    cb = KernelDiagnostics(kind, n=24, epochs=[0, 1, 2], keep_kernels=True)
    assert isinstance(cb, Callback)
    history = fit(model, train, epochs=2, callbacks=[cb], progress=False, device=device, lr=0.1)
    table = cb.table
    assert set(table.epoch) == {0, 1, 2} and set(table.kernel) == {kind}
    assert set(table[table.epoch == 0].measure) == {"alignment", "effective_rank"}
    assert set(table[table.epoch == 2].measure) == {"alignment", "effective_rank", "distance_to_previous",
                                                    "kernel_velocity", "distance_to_initial"}
    assert len(history.attrs["measurements"]) == len(table)
    # the callback and the functional form share one computation
    kernels = {e: k for e, _, k in cb.kernels}
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(train), generator=gen)[:24]
    expected = kernel_diagnostics(kernels[2], train.y[idx], previous=kernels[1], initial=kernels[0], elapsed=1.0)
    got = table[table.epoch == 2].set_index("measure").value
    for measure, value in zip(expected.measure, expected.value):
        assert got[measure] == pytest.approx(value, rel=1e-12)
    # the recorded kernel at the last epoch is the kernel of the trained model on the subset
    x = train.X[idx].to(device)
    model.eval()
    direct = empirical_ntk(model, x, output="trace") if kind == "ntk" else neural_path_kernel(model, x)
    assert torch.allclose(kernels[2].double(), direct.double().cpu(), rtol=1e-5, atol=1e-6)


def test_callback_with_given_subset(device):
    train = load_dataset("xor", size=80)
    x, y = train.X[:10], train.y[:10]
    cb = KernelDiagnostics("ntk", x, y, epochs="all", steps=[1], keep_kernels=True)
    model = MLP(2, [8], 2).to(device)
    fit(model, train, epochs=1, batch_size=16, callbacks=[cb], progress=False, device=device)
    assert set(cb.table["trigger"]) == {"epoch", "step"}
    assert set(cb.table["n"]) == {10}
    velocity = cb.table[(cb.table.measure == "kernel_velocity")]
    assert len(velocity) == 2 and np.isfinite(velocity.value).all()
    # recordings at epoch 0, after step 1 and after epoch 1
    steps = math.ceil(len(train) / 16)
    assert [(e, s) for e, s, _ in cb.kernels] == [(0, 0), (0, 1), (1, steps)]
    k0, k1, k2 = (k for _, _, k in cb.kernels)
    # the last kernel is the trained model's trace NTK on the given x, not on other samples
    model.eval()
    direct = empirical_ntk(model, x.to(device), output="trace").cpu()
    assert torch.allclose(k2.double(), direct.double(), rtol=1e-5, atol=1e-6)
    # velocity = distance to the previous recording per (fractional) epoch elapsed: 1 step, then the rest
    elapsed = [1 / steps, (steps - 1) / steps]
    assert velocity.value.tolist() == pytest.approx([kernel_distance(k0, k1) / elapsed[0],
                                                     kernel_distance(k1, k2) / elapsed[1]], rel=1e-9)
    last = cb.table[(cb.table.epoch == 1) & (cb.table.trigger == "epoch")].set_index("measure").value
    assert last["distance_to_initial"] == pytest.approx(kernel_distance(k0, k2), rel=1e-9)
    assert last["alignment"] == pytest.approx(hand_centred_alignment(k2.double().numpy(),
                                                                     np.eye(2)[y.numpy()] @ np.eye(2)[y.numpy()].T),
                                              rel=1e-6)


def test_bad_input(device):
    k = psd(4, 2, device)
    with pytest.raises(ValueError, match="kernel: expected a square"):
        kernel_target_alignment(torch.randn(3, 4, device=device), torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="kernel: expected a 2-dimensional"):
        kernel_spectrum(torch.randn(2, 2, 3, 3, device=device))
    with pytest.raises(ValueError, match="kernel: expected a symmetric matrix"):
        kernel_spectrum(torch.randn(4, 4, dtype=F64, device=device))
    with pytest.raises(ValueError, match="y: expected 4 labels"):
        kernel_target_alignment(k, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="y: expected 4 rows"):
        kernel_target_alignment(k, torch.randn(3, 2))
    with pytest.raises(ValueError, match="kernel2: expected shape"):
        kernel_distance(k, torch.eye(3, dtype=F64, device=device))
    with pytest.raises(ValueError, match="kernel2: expected shape"):
        kernel_alignment(k, torch.eye(3, dtype=F64, device=device))
    with pytest.raises(ValueError, match="kernel1: expected finite values"):
        kernel_distance(torch.full((2, 2), float("nan")), torch.eye(2))
    with pytest.raises(ValueError, match="epochs: expected strictly increasing"):
        kernel_velocity([k, k], [1, 1])
    with pytest.raises(ValueError, match="epochs: expected a sequence of 2"):
        kernel_velocity([k, k], [1])
    with pytest.raises(TypeError, match="kernels: expected a sequence"):
        kernel_velocity(k, [0])
    with pytest.raises(ValueError, match="previous: expected shape"):
        kernel_diagnostics(k, previous=torch.eye(3))
    with pytest.raises(ValueError, match="elapsed"):
        kernel_diagnostics(k, previous=k, elapsed=0)
    with pytest.raises(ValueError, match="kernel: expected one of"):
        KernelDiagnostics("cka")
    with pytest.raises(ValueError, match="y: expected x and y to be given together"):
        KernelDiagnostics("ntk", x=torch.randn(3, 2))
    with pytest.raises(ValueError, match="n: expected an int >= 1"):
        KernelDiagnostics("ntk", n=0)
    alone = kernel_diagnostics(k)   # no labels, no earlier kernel: the effective rank only
    assert isinstance(alone, pd.DataFrame) and alone.measure.tolist() == ["effective_rank"]
    ev = np.linalg.eigvalsh(k.cpu().numpy())[-2:]   # psd(4, 2): two non-zero eigenvalues
    p = ev / ev.sum()
    assert alone.value.tolist() == pytest.approx([float(np.exp(-(p * np.log(p)).sum()))], rel=1e-9)


def test_previous_and_initial_may_be_arrays_and_elapsed_is_checked():
    k = torch.eye(3, dtype=torch.float64) * 2
    prev = np.eye(3)
    rows = kernel_diagnostics(k, previous=prev, initial=prev.tolist(), elapsed=0.5).set_index("measure")["value"]
    ref = kernel_diagnostics(k, previous=torch.from_numpy(prev), initial=torch.from_numpy(prev),
                             elapsed=0.5).set_index("measure")["value"]
    pd.testing.assert_series_equal(rows, ref)
    with pytest.raises(TypeError, match="elapsed: expected a number > 0"):
        kernel_diagnostics(k, previous=prev, elapsed="1")
    with pytest.raises(ValueError, match="elapsed: expected a finite number > 0, got inf"):
        kernel_diagnostics(k, previous=prev, elapsed=float("inf"))
    with pytest.raises(ValueError, match=r"previous: expected shape \(3, 3\)"):
        kernel_diagnostics(k, previous=np.eye(2))


def test_kernel_velocity_names_bad_epochs():
    k = torch.eye(3)
    with pytest.raises(ValueError, match="epochs: expected numbers"):
        kernel_velocity([k, k], ["a", "b"])
    with pytest.raises(ValueError, match="epochs: expected finite times"):
        kernel_velocity([k, k], [0.0, float("nan")])


@pytest.mark.parametrize("scale", [1e-200, 1e-30, 1e30, 1e200])
def test_alignment_and_distance_at_extreme_magnitudes(scale):
    """Kernels scaled by 1e±200 give the unit-scale values (they gave 0, 1 or NaN: norms over- or
    underflowed); the unit-scale values checked by hand in float64."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(6, 3, generator=g, dtype=torch.float64)
    b = torch.randn(6, 3, generator=g, dtype=torch.float64)
    k1, k2 = a @ a.T, b @ b.T
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    h = torch.eye(6, dtype=torch.float64) - 1 / 6
    c1, c2 = h @ k1 @ h, h @ k2 @ h
    aligned = float((c1 * c2).sum() / (c1.norm() * c2.norm()))
    dist = 1 - float((k1 * k2).sum() / (k1.norm() * k2.norm()))
    assert kernel_alignment(k1 * scale, k2) == pytest.approx(aligned, rel=1e-10)
    assert kernel_alignment(k1, k2 * scale) == pytest.approx(aligned, rel=1e-10)
    assert kernel_distance(k1 * scale, k2 * scale) == pytest.approx(dist, rel=1e-8)
    assert kernel_target_alignment(k1 * scale, y) == pytest.approx(kernel_target_alignment(k1, y), rel=1e-10)
    table = kernel_diagnostics(k1 * scale, y, previous=k2, initial=k2 * scale, elapsed=2.0).set_index("measure")
    assert table.value.map(math.isfinite).all()
    assert table.value["distance_to_previous"] == pytest.approx(dist, rel=1e-8)
    assert table.value["kernel_velocity"] == pytest.approx(dist / 2, rel=1e-8)
    assert table.value["effective_rank"] == pytest.approx(effective_rank(k1), rel=1e-10)


def test_ambiguous_targets_and_velocity_inputs_are_refused():
    k = torch.eye(4)
    with pytest.raises(ValueError, match=r"y: expected 1-D class labels .* integer"):
        kernel_target_alignment(k, torch.tensor([[0], [1], [0], [1]]))
    with pytest.raises(ValueError, match=r"y: expected 1-D class labels"):
        kernel_diagnostics(k, torch.tensor([[0], [1], [0], [1]]))
    # a float one-column target stays a target
    assert math.isfinite(kernel_target_alignment(k + 1, torch.tensor([[0.0], [1.0], [0.0], [2.0]])))
    with pytest.raises(TypeError, match="kernels: expected a sequence"):
        kernel_velocity("abc", [0, 1, 2])
    with pytest.raises(ValueError, match="kernels: expected at least 2 kernels"):
        kernel_velocity([], [])
    with pytest.raises(ValueError, match=r"kernels\[0\], kernels\[1\]: kernel2: expected shape"):
        kernel_velocity([k, torch.eye(3)], [0, 1])
    with pytest.raises(ValueError, match="y: expected 4 labels .one per row of x."):
        KernelDiagnostics("ntk", x=torch.randn(4, 2), y=torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="y: expected at least 2 distinct classes"):
        KernelDiagnostics("ntk", x=torch.randn(4, 2), y=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="x: expected a batch of inputs"):
        KernelDiagnostics("ntk", x=torch.randn(4), y=torch.tensor([0, 1, 0, 1]))
