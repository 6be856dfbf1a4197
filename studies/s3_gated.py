"""S3 — gates carry the learning (Lakshminarayanan & Singh 2021, arXiv 2110.03403).

Four fully connected models of the same shape are trained with Adam on mnist1d and digits:
a ReLU network (DNN), a deep gated network (DGN: a ReLU gating network gates a value network),
a deep linearly gated network (DLGN: the gating network is deep *linear*) and a DLGN whose value
network sees a constant input (DLGN-SF). Four parts, one table each:

(a) **accuracy** of the four models; the paper's claim that the DLGN recovers most of the DNN's
    performance is measured as the ratio DLGN test accuracy / DNN test accuracy;
(b) **decoupled learning**: a ReLU network is trained; its gates are then copied, frozen, into a
    DGN (:meth:`sepmeasure.models.DGN.from_relu_network`) whose fresh value network alone is
    trained. The same is done with the gates of the *same network at its random
    initialisation*. If learning lives in the gates, the first value network is much better;
(c) **value NTK ∝ NPK**: for each trained gated model (gates fixed), the value network's weights
    are re-drawn many times from their initialisation law; the NTK over the value weights,
    averaged over these draws, is compared with the neural path kernel (NPK): the fitted
    constant ``c = <mean NTK, NPK>_F / <NPK, NPK>_F`` against the theoretical constant of
    :func:`value_ntk_constant`, and the kernel distance between the mean NTK and the NPK;
(d) **NPK–target alignment** during training (:class:`sepmeasure.kernels.KernelDiagnostics`
    with ``kernel="npk"``, centred alignment with the one-hot labels of a fixed training subset,
    before training and after every epoch).

Run alone with ``python studies/s3_gated.py --quick`` or through ``sepmeasure study s3 --quick``.
Each run uses one torch thread (``torch.set_num_threads(1)``): the models are small and the
runner can then run several configurations side by side.
"""
from __future__ import annotations

import copy
import math

import pandas as pd
import torch
from torch import nn

from sepmeasure.claims import ClosedForm, Comparison, MonotoneTrend, Threshold
from sepmeasure.data import load_dataset
from sepmeasure.kernels import KernelDiagnostics, empirical_ntk, kernel_distance, neural_path_kernel
from sepmeasure.models.gated import DGN, DLGN, GatedNetwork
from sepmeasure.models.standard import MLP
from sepmeasure.report import FigureSpec
from sepmeasure.study import Study
from sepmeasure.training import evaluate, fit
from sepmeasure.validation import check_features, check_int, describe

PAPER = ("Lakshminarayanan & Singh 2021, Disentangling deep neural networks with rectified linear units using "
         "duality, arXiv 2110.03403")
MODELS = ("dnn", "dgn", "dlgn", "dlgn_sf")
MODEL_NAMES = {"dnn": "ReLU DNN", "dgn": "DGN", "dlgn": "DLGN", "dlgn_sf": "DLGN-SF"}

_COMMON_QUICK = {"n_data": 3000, "width": 64, "depth": 3, "epochs": 8, "lr": 0.002, "batch_size": 64,
                 "beta": 4.0, "n_kernel": 96, "n_ntk": 48, "n_init": 48}
_COMMON_FULL = {"n_data": 5000, "width": 128, "depth": 4, "epochs": 25, "lr": 0.001, "batch_size": 64,
                "beta": 4.0, "n_kernel": 256, "n_ntk": 96, "n_init": 256}
QUICK = [
    {**_COMMON_QUICK, "part": "models", "model": list(MODELS), "dataset": ["mnist1d", "digits"]},
    {**_COMMON_QUICK, "part": "decoupled", "model": "dgn", "dataset": ["mnist1d", "digits"]},
]
FULL = [
    {**_COMMON_FULL, "part": "models", "model": list(MODELS), "dataset": ["mnist1d", "digits"]},
    {**_COMMON_FULL, "part": "decoupled", "model": "dgn", "dataset": ["mnist1d", "digits"]},
]


# --------------------------------------------------------------------------------------------
# value NTK at random value initialisation


def _value_linears(model: GatedNetwork) -> list[nn.Linear]:
    if not isinstance(model, GatedNetwork):
        raise TypeError(f"model: expected a DGN or DLGN (a gated network), got {describe(model)}")
    if model.arch != "mlp":
        raise ValueError(f"model: expected a fully connected gated network (arch='mlp'), got arch={model.arch!r}: "
                         "convolutions share one weight between many path edges, which breaks the "
                         "independence the constant relies on")
    return [*model.value.layers, model.value.head]


def default_value_weight_variances(model: GatedNetwork) -> list[float]:
    """Variance of each value weight under PyTorch's default ``nn.Linear`` initialisation.

    ``nn.Linear`` draws its weights i.i.d. uniform on ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]``, whose
    variance is ``1 / (3 fan_in)``. One entry per trainable value layer (gated layers, then the
    head), in order.

    Examples
    --------
    >>> m = DLGN(4, [8, 6], 3)
    >>> [round(v * 3, 6) for v in default_value_weight_variances(m)]
    [0.25, 0.125, 0.166667]
    """
    return [1.0 / (3.0 * layer.weight.shape[1]) for layer in _value_linears(model)]


def value_ntk_constant(variances: list[float]) -> float:
    r"""The constant ``c`` with ``E_θ[NTK_value(x, x')] = c · NPK(x, x')`` for i.i.d. value weights.

    Lakshminarayanan & Singh 2021 (arXiv 2110.03403; Neural Path Features, 2020): with the gates
    fixed and the value weights drawn independently with mean zero, the NTK over the value
    weights averages to a constant times the neural path kernel. Derivation for a fully
    connected value network with ``D`` trainable weight layers (``D - 1`` gated layers and the
    head), weights of layer ``l`` i.i.d. with mean 0 and variance ``σ_l²``, biases zero and not
    trained: the output is a sum over paths ``p = (p_0, ..., p_D)`` (``p_D = k`` the output unit)

    .. math::  f_k(x) = \sum_{p: p_D = k} x_{p_0} A_p(x) \prod_{l=1}^{D} W_l[p_l, p_{l-1}],
               \quad A_p(x) = \prod_{l=1}^{D-1} G_l(x)[p_l].

    The derivative by ``W_m[i, j]`` sums the paths through that edge with the weight of layer
    ``m`` left out, so the trace NTK is

    .. math::  Θ(x, x') = \sum_k \sum_m \sum_{p, p'} x_{p_0} x'_{p'_0} A_p(x) A_{p'}(x')
               \prod_{l \ne m} W_l[p_l, p_{l-1}] W_l[p'_l, p'_{l-1}],

    over pairs of paths that share the edge of layer ``m`` and the output ``k``. In expectation
    every factor of a layer ``l ≠ m`` vanishes unless both paths use the same edge of layer ``l``
    (independent, mean-zero weights), so only ``p = p'`` survives, with expectation
    ``Π_{l≠m} σ_l²``. Summing over ``m``:

    .. math::  E[Θ(x, x')] = \Big(\sum_{m=1}^{D} \prod_{l \ne m} σ_l^2\Big)
               \sum_k \sum_{p: p_D = k} x_{p_0} x'_{p_0} A_p(x) A_p(x') = c · \mathrm{NPK}(x, x'),

    which for equal variances is the paper's ``D σ^{2(D-1)}``. The NPK here is
    :func:`sepmeasure.kernels.neural_path_kernel` (summed over output units, weights one,
    biases zero). Any gates in [0, 1] (hard or soft) work: they do not depend on value weights.

    Parameters
    ----------
    variances : list of float
        ``σ_l²`` for each trainable value weight layer (gated layers, then the head).

    Returns
    -------
    float

    Examples
    --------
    >>> value_ntk_constant([0.5, 0.5, 0.5])  # D σ^{2(D-1)} = 3 · 0.25
    0.75
    """
    if not isinstance(variances, (list, tuple)) or not variances:
        raise TypeError(f"variances: expected a non-empty list of variances, got {describe(variances)}")
    vs = [float(v) for v in variances]
    if any(not (v > 0 and math.isfinite(v)) for v in vs):
        raise ValueError(f"variances: expected finite numbers > 0, got {vs}")
    return float(sum(math.prod(v for j, v in enumerate(vs) if j != m) for m in range(len(vs))))


def value_weight_names(model: GatedNetwork) -> list[str]:
    """Names of the value network's weights (biases excluded), as in ``named_parameters()``."""
    _value_linears(model)
    return [n for n in model.value_parameter_names() if n.endswith("weight")]


@torch.no_grad()
def redraw_value_weights(model: GatedNetwork, generator: torch.Generator) -> None:
    """Re-draw every value weight from PyTorch's default ``nn.Linear`` law and zero the value biases."""
    for layer in _value_linears(model):
        bound = 1.0 / math.sqrt(layer.weight.shape[1])
        draw = torch.rand(layer.weight.shape, generator=generator, dtype=torch.float64) * 2 * bound - bound
        layer.weight.copy_(draw.to(layer.weight))
        if layer.bias is not None:
            layer.bias.zero_()


def mean_value_ntk(model: GatedNetwork, x: torch.Tensor, n_init: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Trace NTK over the value weights, averaged over ``n_init`` value initialisations (gates fixed).

    The model is copied (float64) and left unchanged. Returns ``(mean, first)``: the average
    kernel and the kernel of the first draw alone (a single-initialisation reference).

    Examples
    --------
    >>> m = DLGN(3, [4], 2, gate="hard")
    >>> mean, first = mean_value_ntk(m, torch.randn(5, 3), n_init=4)
    >>> mean.shape
    torch.Size([5, 5])
    """
    check_int(n_init, "n_init", minimum=1)
    x = check_features(x, "x", ndim=None)
    work = copy.deepcopy(model).double().eval()
    names = value_weight_names(work)
    g = torch.Generator().manual_seed(seed)
    xs = x.to(device=next(work.parameters()).device, dtype=torch.float64)
    total, first = None, None
    for _ in range(n_init):
        redraw_value_weights(work, g)
        k = empirical_ntk(work, xs, output="trace", params=names)
        total = k.clone() if total is None else total + k
        first = k.clone() if first is None else first
    return total / n_init, first


def fitted_constant(kernel: torch.Tensor, reference: torch.Tensor) -> float:
    """Least-squares constant ``c`` of ``kernel ≈ c · reference``: ``<K, R>_F / <R, R>_F``.

    Examples
    --------
    >>> r = torch.rand(4, 4, dtype=torch.float64)
    >>> round(fitted_constant(2.5 * r, r), 12)
    2.5
    """
    k, r = kernel.double(), reference.double().to(kernel.device)
    return float((k * r).sum() / (r * r).sum())


# --------------------------------------------------------------------------------------------
# one configuration


def build_model(name: str, n_features: int, n_classes: int, width: int, depth: int, beta: float) -> nn.Module:
    widths = [width] * depth
    if name == "dnn":
        return MLP(n_features, widths, n_classes)
    if name == "dgn":
        return DGN(n_features, widths, n_classes, gate="soft", beta=beta)
    return DLGN(n_features, widths, n_classes, gate="soft", beta=beta,
                value_input="ones" if name == "dlgn_sf" else "x")


def _load(config: dict):
    size = config["n_data"] if config["dataset"] == "mnist1d" else None
    return load_dataset(config["dataset"], split="both", seed=config["seed"], size=size)


def _fit(model, train, test, config, callbacks=()):
    return fit(model, train, test, epochs=config["epochs"], lr=config["lr"], optimizer="adam",
               batch_size=config["batch_size"], seed=config["seed"], callbacks=list(callbacks), progress=False,
               device=config["_device"])


def _accuracy_rows(model, train, test, device, **extra) -> list[dict]:
    return [{"kind": "accuracy", "split": split, "value": evaluate(model, data, device=device)["accuracy"], **extra}
            for split, data in (("train", train), ("test", test))]


def _ntk_rows(model: GatedNetwork, train, config) -> list[dict]:
    g = torch.Generator().manual_seed(config["seed"] + 1)
    idx = torch.randperm(len(train), generator=g)[: config["n_ntk"]]
    work = copy.deepcopy(model).double().eval()
    x = train.X[idx].to(device=next(work.parameters()).device, dtype=torch.float64)
    mean, first = mean_value_ntk(work, x, config["n_init"], seed=config["seed"])
    npk = neural_path_kernel(work, x)
    theory = value_ntk_constant(default_value_weight_variances(work))
    fitted = fitted_constant(mean, npk)
    return [{"kind": "ntk_npk", "n_init": config["n_init"], "n_points": int(x.shape[0]), "fitted_constant": fitted,
             "theoretical_constant": theory, "constant_ratio": fitted / theory,
             "distance_mean_ntk": kernel_distance(mean, npk), "distance_single_ntk": kernel_distance(first, npk)},
            *[{"kind": "ntk_npk_pairs", "ntk": float(a), "npk_scaled": float(theory * b)}
              for a, b in zip(mean.flatten()[:: max(1, mean.numel() // 400)].tolist(),
                              npk.flatten()[:: max(1, npk.numel() // 400)].tolist())]]


def _run_models(config, train, test) -> list[dict]:
    model = build_model(config["model"], train.n_features, train.n_classes, config["width"], config["depth"],
                        config["beta"])
    align = KernelDiagnostics("npk", n=config["n_kernel"], seed=config["seed"], epochs="all")
    _fit(model, train, test, config, [align])
    table = align.table
    rows = [{"kind": "alignment", "epoch": int(r.epoch), "value": float(r.value)}
            for r in table[table["measure"] == "alignment"].itertuples()]
    rows += _accuracy_rows(model, train, test, config["_device"])
    if isinstance(model, GatedNetwork):
        rows += _ntk_rows(model, train, config)
    return rows


def _run_decoupled(config, train, test) -> list[dict]:
    device = config["_device"]
    net = MLP(train.n_features, [config["width"]] * config["depth"], train.n_classes)
    at_init = copy.deepcopy(net)
    _fit(net, train, test, config)
    rows = _accuracy_rows(net, train, test, device, gates="dnn")
    for gates, source in (("trained", net), ("init", at_init)):
        torch.manual_seed(config["seed"] + 7)  # the same fresh value network for both gate sources
        dgn = DGN.from_relu_network(source, copy_value=False, gate="hard", freeze_gating=True)
        _fit(dgn, train, test, config)
        rows += _accuracy_rows(dgn, train, test, device, gates=gates)
    return rows


def run_one(config: dict, device: str | None = None) -> pd.DataFrame:
    torch.set_num_threads(1)
    config = {**config, "_device": torch.device(device or "cpu")}
    train, test = _load(config)
    rows = _run_models(config, train, test) if config["part"] == "models" else _run_decoupled(config, train, test)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# tables

_KEYS = ["dataset", "seed"]


def summarize(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    models = results[results["part"] == "models"]
    acc = models[models["kind"] == "accuracy"].pivot_table(index=[*_KEYS, "model"], columns="split",
                                                           values="value").add_suffix("_accuracy").reset_index()
    acc.columns.name = None
    acc["model_name"] = acc["model"].map(MODEL_NAMES)
    dnn = acc[acc["model"] == "dnn"][[*_KEYS, "test_accuracy"]].rename(columns={"test_accuracy": "dnn_accuracy"})
    acc = acc.merge(dnn, on=_KEYS, how="left")
    acc["ratio_to_dnn"] = acc["test_accuracy"] / acc["dnn_accuracy"]
    dec = results[(results["part"] == "decoupled") & (results["kind"] == "accuracy")]
    decoupled = (dec.pivot_table(index=[*_KEYS, "gates"], columns="split", values="value")
                 .add_suffix("_accuracy").reset_index())
    decoupled.columns.name = None
    ntk_cols = ["fitted_constant", "theoretical_constant", "constant_ratio", "distance_mean_ntk",
                "distance_single_ntk", "n_init", "n_points"]
    ntk = models[models["kind"] == "ntk_npk"][[*_KEYS, "model", *ntk_cols]].reset_index(drop=True)
    ntk_long = ntk.melt(id_vars=[*_KEYS, "model"], value_vars=["distance_mean_ntk", "distance_single_ntk"],
                        var_name="kernel", value_name="distance_to_npk")
    pairs = models[models["kind"] == "ntk_npk_pairs"][[*_KEYS, "model", "ntk", "npk_scaled"]].reset_index(drop=True)
    align = models[models["kind"] == "alignment"][[*_KEYS, "model", "epoch", "value"]].rename(
        columns={"value": "npk_alignment"}).reset_index(drop=True)
    align["epoch"] = align["epoch"].astype(int)
    align["model_name"] = align["model"].map(MODEL_NAMES)
    return {"accuracy": acc, "decoupled": decoupled, "ntk_npk": ntk, "ntk_npk_distance": ntk_long,
            "ntk_npk_pairs": pairs, "alignment": align}


# --------------------------------------------------------------------------------------------
# claims

_DLGN = ("\u201cthe DLGN recovers more than 83.5% of the performance of state-of-the-art DNNs\u201d (abstract, "
         "on CIFAR-10 and CIFAR-100)")
_GATES = "\u201clearning in the gates is more crucial\u201d (abstract)"
_NPK = ("\u201clearning the weights given the gates is characterised analytically via the so called neural path "
        "kernel (NPK)\u201d (abstract)")
_SCALE = ("Laptop scale: fully connected networks on mnist1d and digits for a few epochs, not the paper's "
          "convolutional networks on CIFAR.")


def _claims() -> list:
    return [
        Comparison(
            name="dlgn-recovers-dnn", paper=PAPER, table="accuracy", statement=_DLGN, value="test_accuracy",
            a={"model": "dlgn"}, b={"model": "dnn"}, statistic="ratio", at_least=0.835, partial=0.5, by="dataset",
            measured="ratio of test accuracies DLGN / ReLU DNN (same widths and depth, same training), paired by "
                     "seed; the partial bound 0.5 reads 'recovers most of the performance'",
            caveat=_SCALE + " The reference DNN is a small MLP trained for a few epochs, far from state of the "
                            "art on mnist1d, so a ratio near or above 1 says less than the paper's figure; a ratio "
                            "of raw accuracies also counts chance-level accuracy (10%) as recovered."),
        Comparison(
            name="dlgn-sf-recovers-dnn", paper=PAPER, table="accuracy",
            statement=_DLGN + ". Tested reading: the same holds for DLGN-SF, whose value network sees only a "
                              "constant input, so all input information flows through the gates.",
            value="test_accuracy", a={"model": "dlgn_sf"}, b={"model": "dnn"}, statistic="ratio", at_least=0.835,
            partial=0.5, by="dataset", measured="ratio of test accuracies DLGN-SF / ReLU DNN, paired by seed",
            caveat=_SCALE),
        Comparison(
            name="gates-carry-learning", paper=PAPER, table="decoupled", statement=_GATES + ". Tested reading: a "
            "value network trained on the frozen gates of a trained ReLU network beats one trained on the gates "
            "of the same network at its random initialisation.", value="test_accuracy",
            a={"gates": "trained"}, b={"gates": "init"}, at_least=0.0, by="dataset",
            measured="test accuracy difference (points of accuracy as a fraction) of the decoupled value network "
                     "with gates from the trained ReLU network minus with gates from its initialisation",
            caveat=_SCALE + " digits is almost solved by a value network on random gates (a random-feature "
                            "model), which leaves little room for learned gates to help."),
        ClosedForm(
            name="value-ntk-proportional-to-npk", paper=PAPER, table="ntk_npk", statement=_NPK + ". Tested "
            "reading: averaged over random value initialisations, the NTK of the value network equals "
            "c · NPK with the constant c derived for the initialisation used.", value="fitted_constant",
            reference="theoretical_constant", tolerance=0.05, partial=0.15, within="model", by="dataset",
            measured="relative error |c_fit - c_theory| / c_theory, where c_fit = <mean NTK, NPK>_F / <NPK, NPK>_F "
                     "over Monte-Carlo value initialisations (gates of the trained DGN, DLGN and DLGN-SF fixed) "
                     "and c_theory = Σ_m Π_{l≠m} σ_l² with σ_l² = 1/(3 fan_in) (PyTorch's default uniform law)",
            caveat="Monte-Carlo: the error shrinks as 1/sqrt(n_init); quick mode uses few draws."),
        Threshold(
            name="mean-ntk-npk-distance", paper=PAPER, table="ntk_npk", statement=_NPK + ". Tested reading: "
            "the mean value NTK and the NPK are proportional, i.e. their kernel distance is near zero.",
            value="distance_mean_ntk", op="<=", bound=0.02, partial=0.1, within="model", by="dataset",
            measured="kernel distance 1 - <K1, K2>_F/(|K1|_F |K2|_F) between the mean value NTK and the NPK "
                     "(the distance of a single initialisation's NTK is in the ntk_npk table for contrast)",
            caveat="Monte-Carlo: the distance of the mean falls roughly as 1/n_init."),
        MonotoneTrend(
            name="npk-alignment-rises", paper=PAPER, table="alignment", statement=_NPK + ". Tested reading: "
            "as the gates are learned, the NPK aligns better with the targets.", x="epoch", y="npk_alignment",
            min_effect=0.5, within="dataset", by="model",
            measured="Spearman correlation between epoch (0 = initialisation) and the centred alignment of the "
                     "NPK with the one-hot labels on a fixed training subset",
            caveat=_SCALE + " With few epochs the alignment may peak early and then drift."),
    ]


FIGURES = [
    FigureSpec(name="accuracy_per_model", table="accuracy", kind="bar", x="model_name", y="test_accuracy",
               col="dataset", title="Test accuracy per model and dataset",
               caption="Error bars: one standard deviation over seeds."),
    FigureSpec(name="decoupled_accuracy", table="decoupled", kind="bar", x="gates", y="test_accuracy",
               col="dataset", title="Decoupled learning: value network on frozen gates",
               caption="'trained': gates of the trained ReLU network; 'init': gates of the same network at its "
                       "initialisation; 'dnn': the ReLU network itself."),
    FigureSpec(name="ntk_vs_npk", table="ntk_npk_pairs", kind="scatter", x="npk_scaled", y="ntk", hue="model",
               col="dataset", title="Mean value NTK against c_theory · NPK",
               caption="Entries of the kernel matrices (a thinned sample), all seeds; proportionality with the "
                       "theoretical constant puts the points on the diagonal."),
    FigureSpec(name="ntk_npk_distance", table="ntk_npk_distance", kind="bar", x="model", y="distance_to_npk",
               hue="kernel", col="dataset", title="Kernel distance to the NPK: mean over initialisations vs one"),
    FigureSpec(name="alignment_vs_epoch", table="alignment", kind="line", x="epoch", y="npk_alignment",
               hue="model_name", col="dataset", title="NPK-target alignment during training",
               caption="Centred alignment with the one-hot labels; band: one standard deviation over seeds."),
]

STUDY = Study(
    name="s3_gated", run_one=run_one, quick=QUICK, full=FULL, seeds={"quick": 3, "full": 5},
    title="S3 — Gates carry the learning: DNN, DGN, DLGN and the neural path kernel", paper=PAPER,
    description=("Fully connected ReLU networks, DGNs, DLGNs and DLGN-SFs of the same shape (soft gates "
                 "sigmoid(4q)) are trained with Adam on mnist1d and digits (quick: width 64, depth 3, 8 epochs, "
                 "3000 mnist1d samples; full: width 128, depth 4, 25 epochs, 5000 samples). During training the "
                 "NPK of a fixed training subset is aligned with the labels. After training, the value weights "
                 "of each gated model are redrawn many times (48 quick, 256 full) from PyTorch's default law "
                 "with the value biases zero, and the mean NTK over the value weights is compared with the NPK. "
                 "Decoupled learning trains a fresh value network on the frozen hard gates of a ReLU network, "
                 "trained or at its initialisation."),
    claims=_claims(), summarize=summarize, figures=FIGURES, version="1")

if __name__ == "__main__":
    import sepmeasure.cli

    sepmeasure.cli.run_study_script(STUDY)
