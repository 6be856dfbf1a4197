"""S8 — structure of the neural path kernel, and how early the gates are learned
(Lakshminarayanan & Singh 2021, arXiv 2110.03403).

Three experiments the paper reports that the other studies do not measure:

(a) **rotational invariance**: "convolution with global pooling [...] provide[s] rotational
    invariance [...] to the NPK" (abstract). In a gated network whose convolutions pad
    circularly and end in global average pooling, the gates of a circularly shifted input are the
    shifted gates, so ``NPK(rot_k x, rot_k x') = NPK(x, x')`` for every shift ``k``. Measured:
    the largest relative Frobenius deviation ``|NPK(rot_k X) - NPK(X)|_F / |NPK(X)|_F`` over all
    shifts ``k = 1..L-1``, at initialisation and after training on mnist1d, in float64, against
    the control: the same architecture with zero padding (its borders break the equivariance);
(b) **ensemble structure of ResNets**: "skip connection provide[s] [...] ensemble structure to
    the NPK" (abstract). A residual gated network with ``b`` blocks has ``2^b`` sub-networks (each
    keeps or skips each block); with the gates of the whole network fixed, its NPK is the sum of
    the sub-networks' NPKs. For the fully connected residual network of this study (stem, blocks
    of gated linear layers with identity skips, linear head) a sub-network ``S`` has the closed
    form ``NPK_S = K <x, x'> Ω_0 Π_{l in S} Ω_l`` (``Ω_l`` the gate overlap of layer ``l``,
    ``K`` output units), so the sum is ``K <x, x'> Ω_0 Π_b (1 + Π_{l in b} Ω_l)``. Measured: the
    relative error of the sum of the closed-form sub-network NPKs against
    :func:`sepmeasure.kernels.neural_path_kernel` of the whole trained network (two independent
    computations), against the control: the deepest sub-network alone (every block kept: the
    non-residual network with the same gates). The share of the NPK carried by the sub-networks
    of each depth is reported beside it;
(c) **gates frozen at epoch k**: "learning in the gates is more crucial" (abstract). A DGN and a
    DLGN (soft gates) are trained on mnist1d; at epoch ``k`` of a grid fixed in advance the
    gating network is frozen and the value network alone trains on to the same final epoch.
    Controls: gates frozen at initialisation (``k = 0``) and never frozen. Tested: that learned
    gates help at all, and that freezing them at an early epoch (a tenth of training) already
    reaches more than half of that gain.

Sub-network sums and rotations are exact identities of the architectures: the claims on them
check that this library's models and kernels have the structure the paper proves (they fail if a
padding, a gate or a kernel breaks it), measured on trained networks against controls that do
not have it. The tests check both identities on tiny networks against brute-force path
enumeration.

Run alone with ``python studies/s8_gated_structure.py --quick`` or through
``sepmeasure study s8 --quick``. Each run uses one torch thread.
"""
from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from sepmeasure.claims import ClaimRegistry, Control, Threshold
from sepmeasure.data import load_dataset
from sepmeasure.kernels import neural_path_kernel
from sepmeasure.models.gated import DGN, DLGN, GatedNetwork
from sepmeasure.report import FigureSpec
from sepmeasure.study import Study
from sepmeasure.training import Callback, evaluate, fit
from sepmeasure.validation import check_choice, check_int, describe

PAPER = ("Lakshminarayanan & Singh 2021, Disentangling deep neural networks with rectified linear units using "
         "duality, arXiv 2110.03403")
MODELS = ("dgn", "dlgn")
MODEL_NAMES = {"dgn": "DGN", "dlgn": "DLGN"}

# --------------------------------------------------------------------------------------------
# Decisions before data: every threshold of the claims, fixed here (reasons in REGISTRY below).
STUDY_VERSION = "1"
#: (a) the circular network's deviation must be at most this fraction of the zero-padded one's ...
ROTATION_BOUND = 1e-6
#: ... and below this fraction for "partly supported" (approximately, not exactly, invariant).
ROTATION_PARTIAL = 1e-2
#: (b) the sub-network sum's relative error must be at most this fraction of the control's ...
SUBNETWORK_BOUND = 1e-6
#: ... and below this fraction for "partly supported".
SUBNETWORK_PARTIAL = 1e-2
#: (c) learned gates must beat gates frozen at initialisation by this much test accuracy.
GATE_GAIN_BOUND = 0.02
#: (c) the "early" freezing epoch, as a fraction of the training epochs.
EARLY_FRACTION = 0.1

# Hyper-parameters: fixed in advance (the S3 settings for the gated MLPs), not tuned on any split.
_ROT_QUICK = {"part": "rotation", "model": list(MODELS), "padding": ["circular", "zeros"], "n_data": 1000,
              "channels": 8, "depth": 3, "kernel_size": 5, "epochs": 2, "lr": 0.003, "batch_size": 64,
              "beta": 4.0, "n_kernel": 12}
_RES_QUICK = {"part": "resnet", "model": list(MODELS), "n_blocks": 3, "block_depth": 1, "width": 32,
              "n_data": 1000, "epochs": 3, "lr": 0.002, "batch_size": 64, "beta": 4.0, "n_kernel": 24}
_FRZ_QUICK = {"part": "freeze", "model": list(MODELS), "n_data": 4000, "width": 64, "depth": 3, "epochs": 20,
              "freeze_epochs": (0, 1, 2, 5), "lr": 0.002, "batch_size": 64, "beta": 4.0}
QUICK = [_ROT_QUICK, _RES_QUICK, _FRZ_QUICK]
FULL = [
    {**_ROT_QUICK, "n_data": 2000, "channels": 16, "epochs": 3, "n_kernel": 16},
    {**_RES_QUICK, "n_blocks": [2, 3, 4], "block_depth": [1, 2], "width": 64, "n_data": 2000, "epochs": 5,
     "n_kernel": 48},
    {**_FRZ_QUICK, "n_data": 5000, "width": 128, "epochs": 30, "freeze_epochs": (0, 1, 3, 6)},
]


def early_epoch(epochs: int) -> int:
    """The freezing epoch read as "early": ``EARLY_FRACTION`` of training, at least 1.

    >>> early_epoch(20), early_epoch(30), early_epoch(5)
    (2, 3, 1)
    """
    return max(1, math.floor(EARLY_FRACTION * check_int(epochs, "epochs", minimum=1) + 0.5))


# --------------------------------------------------------------------------------------------
# (a) rotations


def _check_circular_cnn(model: nn.Module) -> GatedNetwork:
    if not isinstance(model, GatedNetwork):
        raise TypeError(f"model: expected a DGN or DLGN (a gated network), got {describe(model)}")
    if model.arch != "cnn" or model.dim != 1:
        raise ValueError(f"model: expected a 1-D convolutional gated network (arch='cnn', dim=1), got "
                         f"arch={model.arch!r}, dim={model.dim}")
    return model


def rotation_deviations(model: GatedNetwork, x: torch.Tensor, shifts: Sequence[int] | None = None) -> dict[int, float]:
    """``|NPK(rot_k X) - NPK(X)|_F / |NPK(X)|_F`` for every shift ``k`` (float64, model unchanged).

    ``rot_k`` rolls every input by ``k`` positions along its last (spatial) axis; the NPK is
    :func:`sepmeasure.kernels.neural_path_kernel` on a float64 copy of ``model``.

    Parameters
    ----------
    model : DGN or DLGN with ``arch="cnn"``, ``dim=1``
    x : Tensor ``(N, L)`` or ``(N, C, L)``
    shifts : sequence of int, optional
        Default every shift ``1..L-1``.

    Returns
    -------
    dict of shift -> relative deviation

    Examples
    --------
    >>> m = DGN(1, [3, 3], 2, arch="cnn", padding_mode="circular")
    >>> d = rotation_deviations(m, torch.randn(4, 7))
    >>> sorted(d) == list(range(1, 7)) and max(d.values()) < 1e-12
    True
    """
    _check_circular_cnn(model)
    if not isinstance(x, torch.Tensor) or x.ndim not in (2, 3) or x.shape[0] < 1:
        raise ValueError(f"x: expected a tensor of shape (N, L) or (N, C, L), got {describe(x)}")
    length = x.shape[-1]
    if shifts is None:
        shifts = range(1, length)
    shifts = [check_int(k, "shifts[i]", minimum=0) for k in shifts]
    work = copy.deepcopy(model).double().eval()
    xs = x.detach().to(device=next(work.parameters()).device, dtype=torch.float64)
    base = neural_path_kernel(work, xs)
    norm = float(torch.linalg.norm(base))
    if not norm > 0:
        raise ValueError("x: the NPK of these inputs is zero (every path is switched off); use other inputs")
    return {k: float(torch.linalg.norm(neural_path_kernel(work, torch.roll(xs, k, dims=-1)) - base)) / norm
            for k in shifts}


def _rotation_rows(model, x, state: str, extra: dict) -> list[dict]:
    devs = rotation_deviations(model, x)
    rows = [{"kind": "rotation", "state": state, "max_relative_deviation": max(devs.values()),
             "mean_relative_deviation": float(np.mean(list(devs.values()))), "n_shifts": len(devs),
             "n_points": int(x.shape[0]), **extra}]
    rows += [{"kind": "rotation_shift", "state": state, "shift": k, "relative_deviation": d} for k, d in devs.items()]
    return rows


def _run_rotation(config, train, test) -> list[dict]:
    cls = DGN if config["model"] == "dgn" else DLGN
    model = cls(1, [config["channels"]] * config["depth"], train.n_classes, arch="cnn", dim=1,
                kernel_size=config["kernel_size"], padding_mode=config["padding"], gate="soft", beta=config["beta"])
    g = torch.Generator().manual_seed(config["seed"] + 1)
    x = train.X[torch.randperm(len(train), generator=g)[: config["n_kernel"]]]
    rows = _rotation_rows(model, x, "init", {})
    _fit(model, train, test, config)
    acc = evaluate(model, test, device=config["_device"])["accuracy"]
    return rows + _rotation_rows(model, x, "trained", {"test_accuracy": acc})


# --------------------------------------------------------------------------------------------
# (b) residual gated networks


class GatedResNet(nn.Module):
    """A fully connected residual gated network implementing the gate protocol.

    Gating network (its own weights): ``q_0 = P_0 x``, ``g = s(q_0)``; block ``b``:
    ``u = g``, for each of its layers ``q = P u``, ``u = s(q)``; then ``g = g + u``. ``s`` is the ReLU
    (``gating="relu"``, a DGN) or the identity (``"linear"``, a DLGN). Gates ``sigmoid(beta q)``
    (soft) or ``1[q > 0]`` (hard), one per gated layer: the stem, then every block layer.

    Value network: ``h = (V_0 x) * G_0``; block ``b``: ``u = h``, for each layer ``u = (V u) * G``;
    ``h = h + u`` when the block is active, else ``h`` passes by the skip alone; output
    ``head(h)``. ``active`` (one bool per block, default all) drops blocks from the value network
    (their skips stay, so it is the residual network of the remaining blocks, whose NPK sums the chains
    inside it); the gates are always those of the whole network. The chain sub-networks of the
    paper's sum are :func:`subnetwork_npks`.

    Examples
    --------
    >>> m = GatedResNet(5, 4, 3, n_blocks=2)
    >>> [tuple(g.shape) for g in m.gates(torch.randn(2, 5))]
    [(2, 4), (2, 4), (2, 4)]
    >>> torch.allclose(m(torch.ones(2, 5)), m.value_forward(torch.ones(2, 5), m.gates(torch.ones(2, 5))))
    True
    """

    def __init__(self, in_features: int, width: int, out_features: int, n_blocks: int, block_depth: int = 1, *,
                 gating: str = "relu", gate: str = "soft", beta: float = 4.0, bias: bool = True) -> None:
        super().__init__()
        in_features = check_int(in_features, "in_features", minimum=1)
        width = check_int(width, "width", minimum=1)
        out_features = check_int(out_features, "out_features", minimum=1)
        self.n_blocks = check_int(n_blocks, "n_blocks", minimum=1)
        self.block_depth = check_int(block_depth, "block_depth", minimum=1)
        check_choice(gating, "gating", ("relu", "linear"))
        check_choice(gate, "gate", ("soft", "hard"))
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (beta > 0 and math.isfinite(beta)):
            raise ValueError(f"beta: expected a finite number > 0, got {beta!r}")
        self.gating_kind, self.gate, self.beta, self.in_features = gating, gate, float(beta), in_features

        def side() -> nn.Module:
            m = nn.Module()
            m.stem = nn.Linear(in_features, width, bias=bias)
            m.blocks = nn.ModuleList(nn.ModuleList(nn.Linear(width, width, bias=bias) for _ in range(block_depth))
                                     for _ in range(n_blocks))
            return m

        self.gating = side()
        self.value = side()
        self.value.head = nn.Linear(width, out_features, bias=bias)
        self.active: tuple[bool, ...] = (True,) * n_blocks

    def set_active(self, active: Sequence[bool]) -> "GatedResNet":
        """Keep (True) or skip (False) each block of the value network; returns ``self``."""
        active = tuple(active)
        if len(active) != self.n_blocks or not all(isinstance(a, (bool, np.bool_)) for a in active):
            raise ValueError(f"active: expected {self.n_blocks} bools (one per block), got {active!r}")
        self.active = tuple(bool(a) for a in active)
        return self

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim < 2 or math.prod(x.shape[1:]) != self.in_features:
            raise ValueError(f"x: expected a batch of inputs with {self.in_features} features each, got {describe(x)}")
        return x.reshape(x.shape[0], -1)

    def gating_pre_activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self._check_x(x)
        s = torch.relu if self.gating_kind == "relu" else (lambda t: t)
        q = self.gating.stem(x)
        qs, g = [q], s(q)
        for block in self.gating.blocks:
            u = g
            for layer in block:
                q = layer(u)
                qs.append(q)
                u = s(q)
            g = g + u
        return qs

    def gates(self, x: torch.Tensor) -> list[torch.Tensor]:
        qs = self.gating_pre_activations(x)
        if self.gate == "hard":
            return [(q > 0).to(q.dtype) for q in qs]
        return [torch.sigmoid(self.beta * q) for q in qs]

    def value_forward(self, x: torch.Tensor, gates: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self._check_x(x)
        n_gated = 1 + self.n_blocks * self.block_depth
        if not isinstance(gates, (list, tuple)) or len(gates) != n_gated:
            raise ValueError(f"gates: expected a list of {n_gated} tensors, got {describe(gates)}")
        h = self.value.stem(x) * gates[0]
        i = 1
        for keep, block in zip(self.active, self.value.blocks):
            u = h
            for layer in block:
                u = layer(u) * gates[i]
                i += 1
            if keep:
                h = h + u
        return self.value.head(h)

    def value_parameter_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters() if n.startswith("value.")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value_forward(x, self.gates(x))


def subnetwork_npks(model: GatedResNet, x: torch.Tensor) -> dict[tuple[bool, ...], torch.Tensor]:
    r"""Closed-form NPK of every sub-network ``S`` (keep/skip each block), gates of the whole network.

    With every value weight one and every bias zero, each fully connected layer joins every unit
    to every unit, so the path sum factorises:
    ``NPK_S(x, x') = K <x, x'> Ω_0(x, x') Π_{l in S} Ω_l(x, x')``, with
    ``Ω_l = Σ_i G_l(x)_i G_l(x')_i`` over the gated layers ``l`` of the kept blocks and ``K`` the
    output units. Computed in the dtype of ``x`` (use float64).

    Examples
    --------
    >>> m = GatedResNet(3, 4, 2, n_blocks=2).double()
    >>> parts = subnetwork_npks(m, torch.randn(5, 3, dtype=torch.float64))
    >>> len(parts), sorted(parts)[0]
    (4, (False, False))
    """
    if not isinstance(model, GatedResNet):
        raise TypeError(f"model: expected a GatedResNet, got {describe(model)}")
    with torch.no_grad():
        gates = model.gates(x)
        xf = model._check_x(x)
    overlaps = [g @ g.T for g in gates]
    k = model.value.head.out_features
    base = k * (xf @ xf.T) * overlaps[0]
    blocks = [math.prod(overlaps[1 + b * model.block_depth + j] for j in range(model.block_depth))
              for b in range(model.n_blocks)]
    out = {}
    for active in itertools.product((False, True), repeat=model.n_blocks):
        kern = base.clone()
        for keep, blk in zip(active, blocks):
            if keep:
                kern = kern * blk
        out[active] = kern
    return out


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def _run_resnet(config, train, test) -> list[dict]:
    model = GatedResNet(train.n_features, config["width"], train.n_classes, config["n_blocks"],
                        config["block_depth"], gating="relu" if config["model"] == "dgn" else "linear",
                        gate="soft", beta=config["beta"])
    _fit(model, train, test, config)
    acc = evaluate(model, test, device=config["_device"])["accuracy"]
    g = torch.Generator().manual_seed(config["seed"] + 1)
    work = copy.deepcopy(model).double().eval()
    x = train.X[torch.randperm(len(train), generator=g)[: config["n_kernel"]]].to(
        device=next(work.parameters()).device, dtype=torch.float64)
    full = neural_path_kernel(work, x)
    parts = subnetwork_npks(work, x)
    total = sum(parts.values())
    deepest = parts[(True,) * work.n_blocks]
    rows = [{"kind": "resnet", "decomposition": "sum_of_subnetworks", "relative_error": _relative_error(total, full),
             "n_subnetworks": len(parts), "test_accuracy": acc},
            {"kind": "resnet", "decomposition": "deepest_subnetwork_only",
             "relative_error": _relative_error(deepest, full), "n_subnetworks": 1, "test_accuracy": acc}]
    mass = float(full.sum())
    for j in range(work.n_blocks + 1):
        share = sum(float(k.sum()) for a, k in parts.items() if sum(a) == j) / mass
        rows.append({"kind": "resnet_share", "n_active_blocks": j, "share": share,
                     "n_subnetworks": math.comb(work.n_blocks, j)})
    return rows


# --------------------------------------------------------------------------------------------
# (c) gates frozen at epoch k


class FreezeGating(Callback):
    """Freeze the gating network after epoch ``k`` (``k = 0``: before training); records its weights then.

    The optimiser keeps the frozen parameters, whose gradients are then ``None``: Adam skips them,
    so they stay exactly as they were at epoch ``k``.
    """

    def __init__(self, epoch: int) -> None:
        super().__init__(epochs=[check_int(epoch, "epoch", minimum=0)])
        self.frozen_state: dict[str, torch.Tensor] | None = None

    def on_train_begin(self, state) -> None:
        super().on_train_begin(state)
        self.frozen_state = None

    def measure(self, state):
        model = state.model
        if not hasattr(model, "freeze_gating"):
            raise TypeError(f"model: expected a gated network with freeze_gating(), got {describe(model)}")
        model.freeze_gating(True)
        self.frozen_state = {k: v.detach().clone() for k, v in model.gating.state_dict().items()}
        return [{"measure": "gating_frozen", "value": 1.0}]


def _gating_drift(model: GatedNetwork, reference: dict[str, torch.Tensor] | None) -> float:
    if reference is None:
        return math.nan
    now = model.gating.state_dict()
    return max(float((now[k] - v).abs().max()) for k, v in reference.items())


def _run_freeze(config, train, test) -> list[dict]:
    epochs = config["epochs"]
    ks = sorted({check_int(k, "freeze_epochs[i]", minimum=0) for k in config["freeze_epochs"]})
    if ks and ks[-1] >= epochs:
        raise ValueError(f"freeze_epochs: expected epochs below epochs={epochs} (never frozen is always run), "
                         f"got {ks}")
    early = early_epoch(epochs)
    if 0 not in ks or early not in ks:
        raise ValueError(f"freeze_epochs: expected 0 (the control) and the early epoch {early} among them, got {ks}")
    cls = DGN if config["model"] == "dgn" else DLGN
    rows = []
    for k in [*ks, None]:
        torch.manual_seed(config["seed"])  # the same initialisation for every arm
        model = cls(train.n_features, [config["width"]] * config["depth"], train.n_classes, gate="soft",
                    beta=config["beta"])
        cb = FreezeGating(k) if k is not None else None
        _fit(model, train, test, config, [cb] if cb is not None else [])
        role = "never" if k is None else "init" if k == 0 else "early" if k == early else "other"
        rows.append({"kind": "freeze", "freeze_epoch": epochs if k is None else k, "role": role,
                     "test_accuracy": evaluate(model, test, device=config["_device"])["accuracy"],
                     "train_accuracy": evaluate(model, train, device=config["_device"])["accuracy"],
                     "gating_drift_after_freeze": _gating_drift(model, cb.frozen_state if cb else None)})
    return rows


# --------------------------------------------------------------------------------------------
# one configuration


def _fit(model, train, test, config, callbacks=()):
    return fit(model, train, test, epochs=config["epochs"], lr=config["lr"], optimizer="adam",
               batch_size=config["batch_size"], seed=config["seed"], callbacks=list(callbacks), progress=False,
               device=config["_device"])


_PARTS = {"rotation": _run_rotation, "resnet": _run_resnet, "freeze": _run_freeze}


def run_one(config: dict, device: str | None = None) -> pd.DataFrame:
    torch.set_num_threads(1)
    check_choice(config.get("part"), "config['part']", tuple(_PARTS))
    config = {**config, "_device": torch.device(device or "cpu")}
    torch.manual_seed(config["seed"])
    train, test = load_dataset("mnist1d", split="both", seed=config["seed"], size=config["n_data"])
    return pd.DataFrame(_PARTS[config["part"]](config, train, test))


# --------------------------------------------------------------------------------------------
# tables

_FLOOR = 1e-18  # log10 of an exactly zero deviation is drawn at -18


def _pick(frame: pd.DataFrame, kind: str, columns: list[str]) -> pd.DataFrame:
    sub = frame[frame["kind"] == kind] if "kind" in frame.columns else frame.iloc[:0]
    return sub[[c for c in columns if c in sub.columns]].reset_index(drop=True)


def summarize(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    rot = results[results["part"] == "rotation"]
    rotation = _pick(rot, "rotation", ["seed", "model", "padding", "state", "max_relative_deviation",
                                       "mean_relative_deviation", "n_shifts", "n_points", "test_accuracy"])
    shifts = _pick(rot, "rotation_shift", ["seed", "model", "padding", "state", "shift", "relative_deviation"])
    if len(shifts):
        shifts["shift"] = shifts["shift"].astype(int)
        shifts["log10_deviation"] = np.log10(np.maximum(shifts["relative_deviation"].to_numpy(float), _FLOOR))
    res = results[results["part"] == "resnet"]
    resnet = _pick(res, "resnet", ["seed", "model", "n_blocks", "block_depth", "decomposition", "relative_error",
                                   "n_subnetworks", "test_accuracy"])
    share = _pick(res, "resnet_share", ["seed", "model", "n_blocks", "block_depth", "n_active_blocks", "share",
                                        "n_subnetworks"])
    if len(share):
        share["n_active_blocks"] = share["n_active_blocks"].astype(int)
    frz = _pick(results[results["part"] == "freeze"], "freeze",
                ["seed", "model", "epochs", "freeze_epoch", "role", "test_accuracy", "train_accuracy",
                 "gating_drift_after_freeze"])
    if len(frz):
        frz["freeze_epoch"] = frz["freeze_epoch"].astype(int)
        frz["model_name"] = frz["model"].map(MODEL_NAMES)
        ends = frz[frz["role"].isin(["init", "never"])].pivot_table(index=["seed", "model"], columns="role",
                                                                     values="test_accuracy")
        ends = ends.rename(columns={"init": "accuracy_frozen_at_init", "never": "accuracy_never_frozen"})
        ends.columns.name = None
        frz = frz.merge(ends.reset_index(), on=["seed", "model"], how="left")
        gain = frz["accuracy_never_frozen"] - frz["accuracy_frozen_at_init"]
        frz["gain_fraction"] = np.where(gain > 0, (frz["test_accuracy"] - frz["accuracy_frozen_at_init"])
                                        / gain.where(gain > 0), np.nan)
        mid = ends.reset_index()
        mid = mid.assign(role="midpoint", model_name=mid["model"].map(MODEL_NAMES),
                         test_accuracy=(mid["accuracy_frozen_at_init"] + mid["accuracy_never_frozen"]) / 2,
                         gain_fraction=0.5)
        frz = pd.concat([frz, mid], ignore_index=True)
    return {"rotation": rotation, "rotation_shifts": shifts, "resnet": resnet, "resnet_share": share, "freeze": frz}


# --------------------------------------------------------------------------------------------
# claims: decisions before data

_ROT = ("\u201cconvolution with global pooling and skip connection provide respectively rotational invariance "
        "and ensemble structure to the NPK\u201d (abstract)")
_GATES = "\u201clearning in the gates is more crucial\u201d (abstract)"
_SCALE = ("Laptop scale: small networks on mnist1d (1-D signals of 40 positions) for a few epochs, not the "
          "paper's networks on CIFAR.")


def _decisions() -> list[tuple[Threshold, str]]:
    return [
        (Threshold(
            name="npk-rotation-invariant", paper=PAPER, table="rotation",
            statement=_ROT + ". Tested reading: for a gated network of circularly padded 1-D convolutions with "
                             "global average pooling, NPK(rot_k x, rot_k x') = NPK(x, x') for every circular shift k.",
            value="max_relative_deviation", where={"padding": "circular"}, op="<=", bound=ROTATION_BOUND,
            partial=ROTATION_PARTIAL, within="state", by="model",
            control=Control.rows({"padding": "zeros"}, "the same architecture with zero padding, whose borders "
                                 "break the shift-equivariance of the gates", relative="ratio"),
            measured="largest relative Frobenius deviation |NPK(rot_k X) - NPK(X)|_F / |NPK(X)|_F over every "
                     "shift k = 1..L-1 (float64, a fixed training subset), at initialisation and after training",
            caveat=_SCALE + " The invariance is exact for the architecture: the claim checks that the models and "
                            "the NPK of this package have it.",
            not_supported_if=("Had the circular network's NPK moved under shifts by more than a hundredth of what "
                              "the zero-padded network's moves (a padding or gate that is not shift-equivariant)")),
         "The paper's invariance is exact, so float64 rounding (about 1e-15 relative) is the only deviation it "
         "allows; 1e-6 of the zero-padded network's deviation leaves nine orders of margin for rounding and "
         "still fails any broken equivariance, which moves the kernel by a visible fraction; a hundredth marks "
         "an approximate invariance as partly supported."),
        (Threshold(
            name="resnet-npk-is-subnetwork-sum", paper=PAPER, table="resnet",
            statement=_ROT + ". Tested reading: the NPK of a residual gated network with b blocks is the sum of "
                             "the NPKs of its 2^b sub-networks (each keeps or skips each block; gates of the whole "
                             "network).",
            value="relative_error", where={"decomposition": "sum_of_subnetworks"}, op="<=", bound=SUBNETWORK_BOUND,
            partial=SUBNETWORK_PARTIAL, within=("n_blocks", "block_depth"), by="model",
            control=Control.rows({"decomposition": "deepest_subnetwork_only"},
                                 "the deepest sub-network alone (every block kept, no skip path: the non-residual "
                                 "network with the same gates)", relative="ratio"),
            measured="relative Frobenius error of the sum of the 2^b closed-form sub-network NPKs "
                     "(K <x,x'> Ω_0 Π_{l in S} Ω_l) against the NPK of the whole trained network computed by "
                     "neural_path_kernel (float64)",
            caveat=_SCALE + " Fully connected residual blocks, not the paper's convolutional ResNets; the identity "
                            "is exact for the architecture.",
            not_supported_if=("Had the sum of the sub-network NPKs missed the network's NPK by more than a "
                              "hundredth of what the non-residual decomposition misses")),
         "An exact identity: float64 rounding is the only error it allows, so the same bounds as the rotation "
         "claim; the control shows what a decomposition without the skip paths misses."),
        (Threshold(
            name="learned-gates-help", paper=PAPER, table="freeze",
            statement=_GATES + ". Tested reading: a gated network whose gates keep learning reaches a higher test "
                               "accuracy than the same network with its gates frozen at initialisation.",
            value="test_accuracy", where={"role": "never"}, op=">=", bound=GATE_GAIN_BOUND, partial=0.0, by="model",
            control=Control.rows({"role": "init"}, "the same network (same initialisation and batches) with its "
                                 "gating network frozen at initialisation (k = 0)"),
            measured="test accuracy with the gating network never frozen minus with it frozen at initialisation, "
                     "paired by seed (soft gates, Adam, the same epochs)",
            caveat=_SCALE,
            not_supported_if=("Had the network whose gates never stop learning been no more accurate than the one "
                              "whose gates are frozen at initialisation")),
         "Two points of accuracy is the smallest gain of learned gates worth asking 'how early' about; any "
         "positive gain below it is partly supported."),
        (Threshold(
            name="gates-learned-early", paper=PAPER, table="freeze",
            statement=_GATES + ". Tested reading (how early are the gates learned?): freezing the gates after a "
                               "tenth of training already recovers more than half of the accuracy gained by "
                               "learning them throughout.",
            value="test_accuracy", where={"role": "early"}, op=">=", bound=0.0, by="model",
            control=Control.rows({"role": "midpoint"}, "halfway between the gates frozen at initialisation and "
                                 "never frozen, (acc(k=0) + acc(never)) / 2 per seed: clearing it is recovering "
                                 "more than half of the gain of learned gates"),
            measured=f"test accuracy with the gating network frozen after epoch round({EARLY_FRACTION} x epochs) "
                     f"(at least 1) minus the midpoint of the two controls, paired by seed; the gain_fraction "
                     f"column of the freeze table gives (acc(k) - acc(0)) / (acc(never) - acc(0))",
            caveat=_SCALE + " Meaningful only where learned gates help at all (claim learned-gates-help); a small "
                            "gain leaves the midpoint close to both controls and the claim inconclusive.",
            not_supported_if=("Had the gates frozen after a tenth of training recovered less than half of the "
                              "accuracy gained by learning them throughout")),
         "'Most of the gain' read as more than half, at a tenth of training (both fixed before any run); the "
         "midpoint of the two controls turns the fraction into a difference, so a small gain in the denominator "
         "cannot blow the effect up."),
    ]


REGISTRY = ClaimRegistry(STUDY_VERSION, _decisions(), changes={
    "1": "first version: rotation invariance and the sub-network sum of the NPK against controls without the "
         "structure; gates frozen at epoch k against gates frozen at initialisation and never frozen"})


FIGURES = [
    FigureSpec(name="rotation_by_shift", table="rotation_shifts", kind="line", x="shift", y="log10_deviation",
               hue="padding", style="state", col="model",
               title="NPK deviation under a circular shift of both inputs (log10, relative Frobenius)",
               caption=f"Exact zeros are drawn at log10 = {math.log10(_FLOOR):.0f}; band: one standard deviation "
                       "over seeds."),
    FigureSpec(name="resnet_share", table="resnet_share", kind="bar", x="n_active_blocks", y="share",
               hue="n_blocks", col="model", title="Share of the ResNet NPK carried by sub-networks of each depth",
               caption="Sum of the kernel entries of the sub-networks with that many blocks kept, over the sum of "
                       "the whole network's NPK entries (trained networks)."),
    FigureSpec(name="freeze_accuracy", table="freeze", kind="point", x="freeze_epoch", y="test_accuracy",
               hue="model_name", where={"role": ["init", "early", "other", "never"]},
               title="Test accuracy with the gating network frozen after epoch k",
               caption="The last point is never frozen; k = 0 is frozen at initialisation. Error bars: one "
                       "standard deviation over seeds."),
]

STUDY = Study(
    name="s8_gated_structure", run_one=run_one, quick=QUICK, full=FULL, seeds={"quick": 3, "full": 5},
    title="S8 — Structure of the neural path kernel, and how early the gates are learned", paper=PAPER,
    description=("(a) DGNs and DLGNs of 1-D convolutions (kernel 5, soft gates sigmoid(4q)) with global average "
                 "pooling, padded circularly or with zeros (the control), are trained briefly on mnist1d (quick: "
                 "8 channels, 3 layers, 2 epochs; full: 16 channels, 3 epochs); at initialisation and after "
                 "training their NPK on a fixed training subset (12 points quick, 16 full) is compared, in "
                 "float64, with the NPK of the same inputs rolled by every shift. (b) Fully connected residual "
                 "gated networks (ReLU or linear residual gating, soft gates; quick: 3 blocks of one layer, width "
                 "32; full: 2-4 blocks of 1-2 layers, width 64) are trained briefly; the sum of the closed-form "
                 "NPKs of their 2^b sub-networks is compared with neural_path_kernel of the whole network, against "
                 "the deepest sub-network alone. (c) Fully connected DGNs and DLGNs (quick: width 64, depth 3, "
                 "20 epochs, gates frozen after epoch 0, 1, 2 or 5, or never; full: width 128, 30 epochs, frozen "
                 "after 0, 1, 3 or 6, or never) are trained with Adam (lr 0.002, batch 64, fixed in advance as in "
                 "S3, not tuned); every arm starts from the same initialisation and sees the same batches. "
                 "Claims, bounds and reasons are fixed in the study's registry; "
                 + REGISTRY.changes_text().replace("\n", "; ") + "."),
    claims=REGISTRY.claims, summarize=summarize, figures=FIGURES, version=REGISTRY.study_version)

if __name__ == "__main__":
    import sepmeasure.cli

    sepmeasure.cli.run_study_script(STUDY)
