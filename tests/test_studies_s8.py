"""Study S8: the NPK of circular 1-D gated CNNs and of residual gated networks against brute-force path
enumeration (float64), the rotation invariance and the sub-network sum as identities that can fail, freezing
the gates, the pinned claims registry, and a tiny run of the whole pipeline through its tables and claims."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sepmeasure.claims import VERDICTS
from sepmeasure.cli import load_study
from sepmeasure.data import load_dataset
from sepmeasure.kernels import neural_path_kernel
from sepmeasure.models import MLP
from sepmeasure.models.gated import DGN, DLGN
from sepmeasure.training import fit

ROOT = Path(__file__).resolve().parents[1]
STUDY = load_study(ROOT / "studies" / "s8_gated_structure.py")
S8 = __import__(STUDY.run_one.__module__, fromlist=["run_one"])

#: The fingerprint of the claims' decisions, per study version (bump the version to change a threshold).
PINS = {"1": "e021f354794d3f0f"}


# --------------------------------------------------------------------------------------------
# brute-force path enumeration


def _brute_npk_cnn(model, x1, x2):
    """NPK of a 1-D convolutional gated network by enumerating every path: input (channel, position) ->
    one (channel, position) of each gated layer through one kernel tap -> global average pooling (weight
    1/L) -> each of the K outputs. A tap reading outside the signal is a path only with circular padding
    (the position wraps); with zero padding it reads a zero and carries no path."""
    circular = model.config["padding_mode"] == "circular"
    k = model.config["kernel_size"]
    pad = k // 2
    chans = [model.config["in_features"], *model.config["widths"]]
    n_out = model.config["out_features"]
    with torch.no_grad():
        ga, gb = model.gates(x1), model.gates(x2)
    xa = x1.reshape(x1.shape[0], chans[0], -1)
    xb = x2.reshape(x2.shape[0], chans[0], -1)
    length = xa.shape[-1]
    depth = len(chans) - 1
    out = torch.zeros(x1.shape[0], x2.shape[0], dtype=torch.float64)
    for a in range(x1.shape[0]):
        for b in range(x2.shape[0]):
            total = 0.0
            for cs in itertools.product(*[range(c) for c in chans]):
                for last in range(length):
                    for taps in itertools.product(range(k), repeat=depth):
                        pos = [0] * (depth + 1)
                        pos[depth] = last
                        ok = True
                        for layer in range(depth, 0, -1):  # the input position of layer `layer`'s tap
                            p = pos[layer] + taps[layer - 1] - pad
                            if circular:
                                p %= length
                            elif not 0 <= p < length:
                                ok = False
                                break
                            pos[layer - 1] = p
                        if not ok:
                            continue
                        w = float(xa[a, cs[0], pos[0]] * xb[b, cs[0], pos[0]])
                        for layer in range(1, depth + 1):
                            w *= float(ga[layer - 1][a, cs[layer], pos[layer]] * gb[layer - 1][b, cs[layer], pos[layer]])
                        total += w / length
            out[a, b] = n_out * total
    return out


def _brute_npk_resnet(model, x1, x2, chain=None):
    """NPK of a GatedResNet by enumerating every path: input unit -> stem unit -> at each block either the
    skip (same unit, no gate) or one unit of each of the block's layers -> each of the K outputs. With
    ``chain`` (one bool per block) only the sub-network that goes through exactly the blocks marked True
    (and skips the others) is enumerated."""
    with torch.no_grad():
        ga, gb = model.gates(x1), model.gates(x2)
    width = ga[0].shape[1]
    n_out = model.value.head.out_features
    out = torch.zeros(x1.shape[0], x2.shape[0], dtype=torch.float64)
    for a in range(x1.shape[0]):
        for b in range(x2.shape[0]):
            def walk(block, unit, weight):
                if block == model.n_blocks:
                    return weight
                through = model.active[block] if chain is None else chain[block]
                total = walk(block + 1, unit, weight) if chain is None or not chain[block] else 0.0  # the skip
                if through:
                    for units in itertools.product(range(width), repeat=model.block_depth):
                        w = weight
                        for j, u in enumerate(units):
                            i = 1 + block * model.block_depth + j
                            w *= float(ga[i][a, u] * gb[i][b, u])
                        total += walk(block + 1, units[-1], w)
                return total

            total = 0.0
            for j in range(x1.shape[1]):
                for u in range(width):
                    total += walk(0, u, float(x1[a, j] * x2[b, j] * ga[0][a, u] * gb[0][b, u]))
            out[a, b] = n_out * total
    return out


# --------------------------------------------------------------------------------------------
# (a) rotations


@pytest.mark.parametrize("cls", [DGN, DLGN])
@pytest.mark.parametrize("padding", ["circular", "zeros"])
@pytest.mark.parametrize("gate", ["soft", "hard"])
def test_cnn_npk_equals_path_enumeration(cls, padding, gate):
    torch.manual_seed(1)
    model = cls(1, [2, 2], 2, arch="cnn", dim=1, kernel_size=3, padding_mode=padding, gate=gate, beta=2.0).double()
    x1 = torch.randn(3, 5, dtype=torch.float64)
    x2 = torch.randn(2, 5, dtype=torch.float64)
    torch.testing.assert_close(neural_path_kernel(model, x1, x2), _brute_npk_cnn(model, x1, x2), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("cls", [DGN, DLGN])
def test_circular_gates_are_shift_equivariant_and_zero_padded_ones_are_not(cls):
    torch.manual_seed(2)
    x = torch.randn(4, 9, dtype=torch.float64)
    for padding, equivariant in (("circular", True), ("zeros", False)):
        model = cls(1, [3, 3, 3], 2, arch="cnn", dim=1, kernel_size=5, padding_mode=padding).double()
        for k in (1, 4):
            moved = model.gates(torch.roll(x, k, dims=-1))
            rolled = [torch.roll(g, k, dims=-1) for g in model.gates(x)]
            same = all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(moved, rolled))
            assert same is equivariant, (padding, k)


def test_rotation_deviations_match_brute_force_and_separate_the_paddings():
    torch.manual_seed(3)
    x = torch.randn(3, 5, dtype=torch.float64)
    for padding in ("circular", "zeros"):
        model = DGN(1, [2, 2], 2, arch="cnn", dim=1, kernel_size=3, padding_mode=padding).double()
        devs = S8.rotation_deviations(model, x)
        assert sorted(devs) == [1, 2, 3, 4]
        base = _brute_npk_cnn(model, x, x)
        for k, d in devs.items():
            xr = torch.roll(x, k, dims=-1)
            expected = float(torch.linalg.norm(_brute_npk_cnn(model, xr, xr) - base) / torch.linalg.norm(base))
            assert d == pytest.approx(expected, rel=1e-8, abs=1e-13)
        if padding == "circular":
            assert max(devs.values()) < 1e-13
        else:
            assert min(devs.values()) > 1e-3


def test_rotation_deviations_leave_the_model_unchanged_and_accept_float32():
    model = DLGN(1, [3], 2, arch="cnn", dim=1, padding_mode="circular")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    devs = S8.rotation_deviations(model, torch.randn(3, 6), shifts=[2, 3])
    assert sorted(devs) == [2, 3] and max(devs.values()) < 1e-12
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).dtype == torch.float32


# --------------------------------------------------------------------------------------------
# (b) residual gated networks


@pytest.mark.parametrize("gating", ["relu", "linear"])
@pytest.mark.parametrize("gate", ["soft", "hard"])
@pytest.mark.parametrize("block_depth", [1, 2])
def test_resnet_npk_is_the_sum_of_its_subnetwork_npks(gating, gate, block_depth):
    torch.manual_seed(4)
    model = S8.GatedResNet(3, 3, 2, n_blocks=2, block_depth=block_depth, gating=gating, gate=gate,
                           beta=1.5).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    full = neural_path_kernel(model, x)
    torch.testing.assert_close(full, _brute_npk_resnet(model, x, x), rtol=1e-10, atol=1e-12)
    parts = S8.subnetwork_npks(model, x)
    assert len(parts) == 4
    torch.testing.assert_close(sum(parts.values()), full, rtol=1e-10, atol=1e-12)
    for active, kernel in parts.items():
        # each closed-form sub-network NPK against the enumerated paths of that chain of blocks
        torch.testing.assert_close(kernel, _brute_npk_resnet(model, x, x, chain=active), rtol=1e-10, atol=1e-12)
        # the residual network with only the blocks in `active` (skips kept) sums the chains inside it
        model.set_active(active)
        inside = sum(k for t, k in parts.items() if all(a or not b for a, b in zip(active, t)))
        torch.testing.assert_close(neural_path_kernel(model, x), inside, rtol=1e-10, atol=1e-12)
    model.set_active((True, True))
    # the control decomposition misses the skip paths: the test above could fail
    assert S8._relative_error(parts[(True, True)], full) > 1e-3


def test_resnet_gate_protocol_and_gates_do_not_depend_on_the_active_blocks():
    torch.manual_seed(5)
    model = S8.GatedResNet(4, 5, 3, n_blocks=3, block_depth=2)
    x = torch.randn(6, 4)
    torch.testing.assert_close(model(x), model.value_forward(x, model.gates(x)))
    gates = model.gates(x)
    model.set_active((False, True, False))
    assert all(torch.equal(a, b) for a, b in zip(gates, model.gates(x)))
    assert len(gates) == 1 + 3 * 2
    assert all(n.startswith("value.") for n in model.value_parameter_names())
    assert any(n.startswith("gating.") for n, _ in model.named_parameters())


# --------------------------------------------------------------------------------------------
# (c) freezing the gates


def test_freeze_gating_keeps_the_gating_network_from_epoch_k_and_trains_the_value_network():
    train, test = load_dataset("mnist1d", split="both", seed=0, size=200)
    for k in (0, 2):
        torch.manual_seed(0)
        model = DGN(40, [8, 8], 10, gate="soft")
        init_gating = {n: v.clone() for n, v in model.gating.state_dict().items()}
        init_value = {n: v.clone() for n, v in model.value.state_dict().items()}
        cb = S8.FreezeGating(k)
        fit(model, train, test, epochs=4, lr=0.01, optimizer="adam", batch_size=32, callbacks=[cb], progress=False)
        assert S8._gating_drift(model, cb.frozen_state) == 0.0
        changed_gating = any(not torch.equal(init_gating[n], v) for n, v in model.gating.state_dict().items())
        assert changed_gating is (k > 0)
        assert any(not torch.equal(init_value[n], v) for n, v in model.value.state_dict().items())
    torch.manual_seed(0)
    never = DGN(40, [8, 8], 10, gate="soft")
    start = {n: v.clone() for n, v in never.gating.state_dict().items()}
    fit(never, train, test, epochs=4, lr=0.01, optimizer="adam", batch_size=32, progress=False)
    assert S8._gating_drift(never, start) > 0


def test_early_epoch():
    assert [S8.early_epoch(e) for e in (1, 5, 10, 14, 15, 20, 30)] == [1, 1, 1, 1, 2, 2, 3]
    for epochs in range(1, 60):
        assert S8.early_epoch(epochs) == max(1, math.floor(S8.EARLY_FRACTION * epochs + 0.5))


# --------------------------------------------------------------------------------------------
# bad input


def test_bad_inputs_are_named():
    with pytest.raises(TypeError, match="model: expected a DGN or DLGN"):
        S8.rotation_deviations(MLP(3, [4], 2), torch.randn(2, 3))
    with pytest.raises(ValueError, match="arch='cnn', dim=1"):
        S8.rotation_deviations(DGN(3, [4], 2), torch.randn(2, 3))
    with pytest.raises(ValueError, match="x: expected a tensor of shape"):
        S8.rotation_deviations(DGN(1, [2], 2, arch="cnn"), torch.randn(5))
    with pytest.raises(TypeError, match="model: expected a GatedResNet"):
        S8.subnetwork_npks(DGN(3, [4], 2), torch.randn(2, 3))
    with pytest.raises(ValueError, match="active: expected 2 bools"):
        S8.GatedResNet(3, 4, 2, n_blocks=2).set_active((True,))
    with pytest.raises(ValueError, match="n_blocks"):
        S8.GatedResNet(3, 4, 2, n_blocks=0)
    with pytest.raises(ValueError, match="gating"):
        S8.GatedResNet(3, 4, 2, n_blocks=1, gating="tanh")
    with pytest.raises(ValueError, match="beta"):
        S8.GatedResNet(3, 4, 2, n_blocks=1, beta=0.0)
    with pytest.raises(ValueError, match="x: expected a batch of inputs with 3 features"):
        S8.GatedResNet(3, 4, 2, n_blocks=1)(torch.randn(2, 4))
    with pytest.raises(ValueError, match="part"):
        S8.run_one({"part": "other", "seed": 0})
    base = {**TINY_FREEZE, "seed": 0}
    with pytest.raises(ValueError, match="freeze_epochs: expected 0"):
        S8.run_one({**base, "freeze_epochs": (1, 2)})
    with pytest.raises(ValueError, match="freeze_epochs: expected epochs below"):
        S8.run_one({**base, "freeze_epochs": (0, 1, 5)})
    with pytest.raises(ValueError, match="epochs"):
        S8.early_epoch(0)


# --------------------------------------------------------------------------------------------
# registry, grids, tiny run


def test_registry_is_pinned_and_tied_to_the_study_version():
    S8.REGISTRY.verify(PINS)
    assert STUDY.version == S8.REGISTRY.study_version == S8.STUDY_VERSION
    assert [c.name for c in STUDY.claims] == [c.name for c in S8.REGISTRY.claims]
    frame = S8.REGISTRY.to_frame()
    assert frame["reason"].str.len().gt(20).all() and not frame["control"].str.startswith("no control").any()
    for c in STUDY.claims:
        assert "2110.03403" in c.paper and c.statement and c.not_supported_if and c.control is not None
    assert "version 1:" in S8.REGISTRY.changes_text()


def test_grids_are_declared():
    assert STUDY.seeds["quick"] >= 3 and STUDY.seeds["full"] >= 5
    for mode in ("quick", "full"):
        configs = STUDY.configurations(mode, seeds=1)
        assert {c["part"] for c in configs} == {"rotation", "resnet", "freeze"}
        for c in configs:
            if c["part"] == "freeze":
                ks = set(c["freeze_epochs"])
                assert 0 in ks and S8.early_epoch(c["epochs"]) in ks and max(ks) < c["epochs"]
    tables = {c.table for c in STUDY.claims} | {f.table for f in STUDY.figures}
    assert tables <= {"rotation", "rotation_shifts", "resnet", "resnet_share", "freeze"}


TINY_ROT = {"part": "rotation", "n_data": 120, "channels": 2, "depth": 2, "kernel_size": 3, "epochs": 1,
            "lr": 0.01, "batch_size": 32, "beta": 4.0, "n_kernel": 3}
TINY_RES = {"part": "resnet", "n_blocks": 2, "block_depth": 1, "width": 4, "n_data": 120, "epochs": 1, "lr": 0.01,
            "batch_size": 32, "beta": 4.0, "n_kernel": 4}
TINY_FREEZE = {"part": "freeze", "model": "dgn", "n_data": 200, "width": 8, "depth": 2, "epochs": 4,
               "freeze_epochs": (0, 1, 2), "lr": 0.01, "batch_size": 32, "beta": 4.0}


def test_tiny_run_gives_tidy_tables_and_claims_evaluate(device):
    rows = []
    for seed in range(3):
        configs = [{**TINY_ROT, "model": m, "padding": p, "seed": seed} for m in S8.MODELS
                   for p in ("circular", "zeros")]
        configs += [{**TINY_RES, "model": m, "seed": seed} for m in S8.MODELS]
        configs += [{**TINY_FREEZE, "model": m, "seed": seed} for m in S8.MODELS]
        for cfg in configs:
            out = STUDY.run_one(cfg, device=str(device))
            assert isinstance(out, pd.DataFrame) and "kind" in out.columns
            rows.append(out.assign(**{k: (str(v) if isinstance(v, tuple) else v) for k, v in cfg.items()
                                      if k not in out.columns}))
    results = pd.concat(rows, ignore_index=True)
    tables = STUDY.summarize(results)

    rot = tables["rotation"]
    assert len(rot) == 3 * 2 * 2 * 2 and set(rot["state"]) == {"init", "trained"}
    shifts = tables["rotation_shifts"]
    for _, r in rot.iterrows():  # the summary is the max and mean over the per-shift rows
        sub = shifts[(shifts["seed"] == r["seed"]) & (shifts["model"] == r["model"])
                     & (shifts["padding"] == r["padding"]) & (shifts["state"] == r["state"])]
        assert sorted(sub["shift"]) == list(range(1, 40))
        assert r["max_relative_deviation"] == sub["relative_deviation"].max()
        assert r["mean_relative_deviation"] == pytest.approx(sub["relative_deviation"].mean(), rel=1e-12)
    assert rot[rot["padding"] == "circular"]["max_relative_deviation"].max() < 1e-12
    assert rot[rot["padding"] == "zeros"]["max_relative_deviation"].min() > 1e-3

    res = tables["resnet"]
    assert set(res["decomposition"]) == {"sum_of_subnetworks", "deepest_subnetwork_only"}
    assert res[res["decomposition"] == "sum_of_subnetworks"]["relative_error"].max() < 1e-12
    share = tables["resnet_share"]
    sums = share.groupby(["seed", "model"])["share"].sum()
    assert np.allclose(sums, 1.0, rtol=1e-10, atol=0)  # the shares of all 2^b sub-networks add up to the NPK
    assert set(share["n_active_blocks"]) == {0, 1, 2}

    frz = tables["freeze"]
    raw = results[results["kind"] == "freeze"]
    for (seed, model), sub in frz[frz["role"] != "midpoint"].groupby(["seed", "model"]):
        acc = raw[(raw["seed"] == seed) & (raw["model"] == model)].set_index("freeze_epoch")["test_accuracy"]
        assert sorted(acc.index) == [0, 1, 2, 4]
        gain = acc[4] - acc[0]
        for _, r in sub.iterrows():
            assert r["test_accuracy"] == acc[r["freeze_epoch"]]
            expected = (acc[r["freeze_epoch"]] - acc[0]) / gain if gain > 0 else math.nan
            assert (math.isnan(expected) and math.isnan(r["gain_fraction"])) or \
                r["gain_fraction"] == pytest.approx(expected, rel=1e-12)
        assert set(sub["role"]) == {"init", "early", "other", "never"}
        assert sub.set_index("role").loc["early", "freeze_epoch"] == S8.early_epoch(4)
        mid = frz[(frz["seed"] == seed) & (frz["model"] == model) & (frz["role"] == "midpoint")]["test_accuracy"]
        assert mid.item() == pytest.approx((acc[0] + acc[4]) / 2, rel=1e-12)
        drift = sub[sub["role"] != "never"]["gating_drift_after_freeze"]
        assert (drift == 0).all()

    verdicts = {}
    for claim in STUDY.claims:
        result = claim.evaluate(tables[claim.table])
        assert result.verdict in VERDICTS and result.control
        verdicts[claim.name] = result.verdict
    # exact identities on every seed: the two structure claims pass on this tiny run
    assert verdicts["npk-rotation-invariant"] == "supported"
    assert verdicts["resnet-npk-is-subnetwork-sum"] == "supported"


def test_the_structure_claims_fail_without_the_structure():
    claim = {c.name: c for c in STUDY.claims}
    rows = [{"seed": s, "model": m, "state": st, "padding": p, "max_relative_deviation": d}
            for s in range(3) for m in S8.MODELS for st in ("init", "trained")
            for p, d in (("circular", 0.05 + 0.01 * s), ("zeros", 0.1))]
    assert claim["npk-rotation-invariant"].evaluate(pd.DataFrame(rows)).verdict == "not supported"
    rows = [{"seed": s, "model": m, "n_blocks": 2, "block_depth": 1, "decomposition": d, "relative_error": e}
            for s in range(3) for m in S8.MODELS
            for d, e in (("sum_of_subnetworks", 1e-4), ("deepest_subnetwork_only", 0.2))]
    assert claim["resnet-npk-is-subnetwork-sum"].evaluate(pd.DataFrame(rows)).verdict == "partly supported"
    rows = [{"seed": s, "model": m, "role": r, "test_accuracy": a}
            for s in range(3) for m in S8.MODELS
            for r, a in (("init", 0.5), ("early", 0.52 + 0.001 * s), ("never", 0.6), ("midpoint", 0.55))]
    table = pd.DataFrame(rows)
    assert claim["learned-gates-help"].evaluate(table).verdict == "supported"
    assert claim["gates-learned-early"].evaluate(table).verdict == "not supported"
