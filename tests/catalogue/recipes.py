"""Recipes: for every name in ``sepmeasure.__all__`` a small valid call, or an exemption.

Inputs are tiny (five points per class in 2-D, a 2-3-2 network, solver time limits of a second)
so the whole catalogue runs in seconds. Coordinates are small integers, so casting to float16,
float64 or int64 keeps the values and the result must not change.
"""
from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import sepmeasure as sm

from .core import KINDS, Arg, Mutation, Recipe, check_finite, numbers

# ----------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------

_A = [[0, 0], [1, 0], [0, 1], [1, 1], [3, 3]]
_B = [[3, 2], [2, 3], [4, 4], [2, 2], [4, 3]]


def points_a() -> torch.Tensor:
    return torch.tensor(_A, dtype=torch.float32)


def points_b() -> torch.Tensor:
    return torch.tensor(_B, dtype=torch.float32)


def features() -> torch.Tensor:
    return torch.tensor(_A + _B, dtype=torch.float32)


def labels() -> torch.Tensor:
    return torch.tensor([0] * 5 + [1] * 5)


def kernel() -> torch.Tensor:
    x = features()
    return x @ x.T + torch.eye(10)


def kernel2() -> torch.Tensor:
    x = features()
    return (x @ x.T) ** 2 + torch.eye(10)


def mlp() -> torch.nn.Module:
    return sm.MLP(2, [3], 2)


def dlgn() -> torch.nn.Module:
    return sm.DLGN(2, [3], 2)


def dataset() -> sm.LabeledData:
    return sm.LabeledData(features(), labels())


def small_table() -> pd.DataFrame:
    rows = []
    for seed in range(3):
        for layer in (1, 2, 3):
            rows.append({"seed": seed, "layer": layer, "model": "X", "value": 0.5 + 0.1 * layer + 0.01 * seed,
                         "other": 0.4 + 0.1 * layer})
            rows.append({"seed": seed, "layer": layer, "model": "Y", "value": 0.3 + 0.1 * layer,
                         "other": 0.2 + 0.1 * layer - 0.01 * seed})
    return pd.DataFrame(rows)


def _const(v: Any):
    return lambda: v


# ----------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------

def in_unit(result: Any) -> None:
    check_finite(result)
    v = float(result.value if hasattr(result, "value") else result)
    assert -1e-9 <= v <= 1 + 1e-9, f"value {v} outside [0, 1]"


def alignment_range(result: float) -> None:
    assert math.isfinite(result) and -1 - 1e-9 <= result <= 1 + 1e-9, f"alignment {result} outside [-1, 1]"


def finite_or_missing(result: Any) -> None:
    """NaN is allowed where a table marks a missing value, inf never."""
    bad = [v for v in numbers(result) if math.isinf(v)]
    assert not bad, f"{len(bad)} infinite number(s) in the result"


def hull_check(result: Any) -> None:
    assert result.separable is not None or result.status != "optimal", "no verdict on an optimal solve"
    for v in (result.distance, result.lower, result.upper):
        assert math.isfinite(v), f"non-finite distance/bound {v}"
    assert result.separable is False or result.distance > 0, "separable with distance 0"


def _value(result: Any) -> list[float]:
    return [float(result.value)]


def _hull_key(result: Any) -> list[float]:
    # separability is scale invariant; the distance relative to the sets' scale too
    return [float(bool(result.separable))]


def _columns(*cols: str):
    def key(frame: pd.DataFrame) -> list[float]:
        return frame[list(cols)].to_numpy(dtype=np.float64).reshape(-1).tolist()
    return key


def _constructed(result: Any) -> None:
    assert result is not None, "constructor returned None"


_TMP = tempfile.TemporaryDirectory(prefix="sm-catalogue-")
"""Every file the recipes write lives under this folder, removed when the process ends."""


def _temp_npz() -> str:
    d = Path(tempfile.mkdtemp(dir=_TMP.name))
    p = d / "data.npz"
    np.savez(p, X=np.asarray(_A + _B, dtype=np.float32), y=np.asarray([0] * 5 + [1] * 5))
    return str(p)


def _npz_file(write) -> str:
    p = Path(tempfile.mkdtemp(dir=_TMP.name)) / "bad.npz"
    write(p)
    return str(p)


def _truncated(src: str) -> str:
    data = Path(src).read_bytes()
    return _npz_file(lambda p: p.write_bytes(data[: len(data) // 2]))


def _npz_mutations() -> list[Mutation]:
    """A path to an .npz file: the path itself and the file's content."""
    X, y = np.asarray(_A + _B, dtype=np.float32), np.asarray([0] * 5 + [1] * 5)
    return KINDS["path"]() + [
        Mutation("directory", lambda v: str(Path(v).parent), "error", "value"),
        Mutation("truncated", _truncated, "error", "file"),
        Mutation("random_bytes", lambda v: _npz_file(lambda p: p.write_bytes(np.random.default_rng(0).bytes(256))),
                 "error", "file"),
        Mutation("object_array", lambda v: _npz_file(lambda p: np.savez(p, X=np.array([{"a": 1}] * 10, dtype=object),
                                                                          y=y)), "error", "file"),
        Mutation("no_X", lambda v: _npz_file(lambda p: np.savez(p, y=y)), "error", "file"),
        Mutation("single_npy", lambda v: _npz_file(lambda p: np.save(open(p, "wb"), X)), "error", "file"),
        Mutation("nan_X", lambda v: _npz_file(lambda p: np.savez(p, X=np.where(X == 4, np.nan, X), y=y)),
                 "error", "file"),
        Mutation("string_X", lambda v: _npz_file(lambda p: np.savez(p, X=X.astype(str), y=y)), "error", "file"),
        Mutation("float_y", lambda v: _npz_file(lambda p: np.savez(p, X=X, y=y + 0.5)), "error", "file"),
        Mutation("short_y", lambda v: _npz_file(lambda p: np.savez(p, X=X, y=y[:-1])), "error", "file"),
        Mutation("one_class_y", lambda v: _npz_file(lambda p: np.savez(p, X=X, y=np.zeros(10, dtype=np.int64))),
                 "either", "file"),
    ]


KINDS["npz"] = _npz_mutations


def _damaged(study_dir: str, damage) -> str:
    d = Path(study_dir)
    damage(d)
    return str(d)


def _study_mutations() -> list[Mutation]:
    """A study output folder: the path, and damaged files inside it."""
    rng = np.random.default_rng(0)
    return KINDS["path"]() + [
        Mutation("no_study_json", lambda v: _damaged(v, lambda d: (d / "study.json").unlink()), "error", "file"),
        Mutation("garbage_study_json", lambda v: _damaged(v, lambda d: (d / "study.json").write_text("{not json")),
                 "error", "file"),
        Mutation("study_json_list", lambda v: _damaged(v, lambda d: (d / "study.json").write_text("[1, 2]")),
                 "error", "file"),
        Mutation("garbage_parquet", lambda v: _damaged(v, lambda d: (d / "tables" / "results.parquet").write_bytes(
            rng.bytes(200))), "either", "file"),
        Mutation("truncated_csv", lambda v: _damaged(v, lambda d: (d / "tables" / "results.csv").write_text(
            "layer,val")), "either", "file"),
        Mutation("no_tables", lambda v: _damaged(v, lambda d: shutil.rmtree(d / "tables")), "error", "file"),
    ]


KINDS["study"] = _study_mutations

_STUDY_ROOT: list[Path] = []


def _run_one(config: dict) -> list[dict]:
    return [{"layer": layer, "value": 0.5 + 0.1 * layer + 0.01 * config["seed"]} for layer in (1, 2, 3)]


def _study_root() -> str:
    """A fresh copy of one tiny study's output folder (the study runs once per process)."""
    if not _STUDY_ROOT:
        root = Path(tempfile.mkdtemp(dir=_TMP.name))
        sm.Study(name="catalogue", run_one=_run_one, quick={"w": [1]}, full={"w": [1]},
                 seeds={"quick": 2, "full": 2}).run("quick", out=root, progress=False)
        _STUDY_ROOT.append(root)
    dest = Path(tempfile.mkdtemp(dir=_TMP.name))
    shutil.copytree(_STUDY_ROOT[0], dest, dirs_exist_ok=True)
    return str(dest)


# ----------------------------------------------------------------------------
# Recipes
# ----------------------------------------------------------------------------

F = lambda make, **kw: Arg(make, "features", **kw)  # noqa: E731
SCALE = frozenset({"scale"})
POS = ("A", "B")
FAST_SEARCH = dict(n_starts=Arg(_const(1), "count"), steps=Arg(_const(10), "count"),
                   time_limit=Arg(_const(1.0), "positive"), margin=Arg(_const(1e-5), "positive"),
                   seed=Arg(_const(0), "seed"))


def _recipes() -> list[Recipe]:
    r: list[Recipe] = []
    add = r.append

    # --- data ---
    add(Recipe("LabeledData", {"X": F(features, expect={"ndim+1": "either", "ndim-1": "either"},
                                      skip={"wrong_width"}),
                               "y": Arg(labels, "labels", expect={"one_class": "either"}),
                               "name": Arg(_const("d"), "name")},
               check=_constructed, key=lambda d: numbers(d.X) + numbers(d.y)))
    add(Recipe("as_dataset", {"data": Arg(lambda: (features(), labels()), "object", aliases=("X", "y")),
                              "name": Arg(_const("data"), "name")},
               check=_constructed, key=lambda d: numbers(d[0][0])))
    add(Recipe("load_dataset", {"name": Arg(_const("gaussians"), "choice"), "split": Arg(_const("train"), "choice"),
                                "seed": Arg(_const(0), "seed"), "size": Arg(_const(20), "count"),
                                "noise": Arg(_const(0.1), "positive", expect={"huge": "either"}),
                                "test_fraction": Arg(_const(0.2), "fraction"),
                                "standardize": Arg(_const("feature"), "choice", expect={"none": "either"}),
                                "n_classes": Arg(_const(2), "count"), "dim": Arg(_const(2), "count"),
                                "separation": Arg(_const(3.0), "positive", expect={"zero": "either",
                                                                                   "negative": "either"})},
               positional=("name",), check=_constructed, key=lambda d: numbers(d.X)))
    add(Recipe("load_dataset", {"name": Arg(_const("spirals"), "fixed"), "size": Arg(_const(20), "count"),
                                "n_classes": Arg(_const(3), "count"), "turns": Arg(_const(1.5), "positive")},
               positional=("name",), variant="spirals", check=_constructed, key=lambda d: numbers(d.X)))
    # messages about the file's content name the file (bad.npz['X']) or the argument
    add(Recipe("load_npz", {"path": Arg(_temp_npz, "npz", aliases=("bad.npz", "bad.npz['X']", "bad.npz['y']")), "split": Arg(_const("both"), "choice"),
                            "seed": Arg(_const(0), "seed"), "test_fraction": Arg(_const(0.2), "fraction")},
               positional=("path",), check=_constructed, key=lambda s: numbers(s.train.X)))

    # --- models ---
    # MLP(widths=[]) is a linear model: valid
    add(Recipe("MLP", {"in_features": Arg(_const(2), "count"), "widths": Arg(_const([3]), "sequence",
                                                                            expect={"empty": "either"}),
                       "out_features": Arg(_const(2), "count"), "activation": Arg(_const("relu"), "choice")},
               check=_constructed, key=lambda m: []))
    add(Recipe("CNN", {"in_channels": Arg(_const(1), "count"), "channels": Arg(_const([2]), "sequence"),
                       "out_features": Arg(_const(2), "count"), "kernel_size": Arg(_const(3), "count"),
                       "activation": Arg(_const("relu"), "choice")},
               check=_constructed, key=lambda m: []))
    add(Recipe("ResNet", {"in_channels": Arg(_const(1), "count"), "width": Arg(_const(2), "count"),
                          "n_blocks": Arg(_const(1), "count"), "out_features": Arg(_const(2), "count"),
                          "norm": Arg(_const("none"), "choice")},
               check=_constructed, key=lambda m: []))
    add(Recipe("make_activation", {"name": Arg(_const("prelu"), "choice"), "channels": Arg(_const(3), "count")},
               check=_constructed, key=lambda m: []))
    for cls in ("DGN", "DLGN"):
        add(Recipe(cls, {"in_features": Arg(_const(2), "count"), "widths": Arg(_const([3]), "sequence"),
                         "out_features": Arg(_const(2), "count"), "gate": Arg(_const("soft"), "choice"),
                         "beta": Arg(_const(4.0), "positive")},
                   check=_constructed, key=lambda m: []))
    add(Recipe("BetaAnnealing", {"start": Arg(_const(1.0), "positive"), "end": Arg(_const(10.0), "positive"),
                                 "n_epochs": Arg(_const(4), "count"), "mode": Arg(_const("geometric"), "choice")},
               check=_constructed, key=lambda m: []))
    add(Recipe("effective_halfspaces", {"model": Arg(dlgn, "model", expect={"linear": "error"}),
                                        "input_shape": Arg(_const((2,)), "shape")},
               check=lambda h: check_finite([h.normals, h.offsets]), key=lambda h: numbers([h.normals, h.offsets])))
    add(Recipe("LinearityMask", {"activation": Arg(torch.nn.ReLU, "object"), "channels": Arg(_const(3), "count"),
                                 "init_logit": Arg(_const(1.0), "positive", expect={"negative": "either"})},
               check=_constructed, key=lambda m: []))
    add(Recipe("MaskPenalty", {"weight": Arg(_const(0.01), "positive")}, positional=("weight",),
               check=_constructed, key=lambda m: []))
    add(Recipe("apply_masks", {"model": Arg(mlp, "model")}, positional=("model",),
               check=_constructed, key=lambda m: []))
    add(Recipe("fold", {"model": Arg(lambda: sm.apply_masks(mlp()), "model"), "input_shape": Arg(_const((2,)), "shape")},
               positional=("model",), check=_constructed, key=lambda m: numbers(m(features()))))
    add(Recipe("linear_fraction", {"model": Arg(lambda: sm.apply_masks(mlp()), "model")}, positional=("model",)))
    add(Recipe("LinearizablePReLU", {"channels": Arg(_const(3), "count"), "init": Arg(_const(0.0), "positive",
                                     expect={"negative": "either", "huge": "either"})},
               check=_constructed, key=lambda m: []))
    add(Recipe("SparsityPrior", {"weight": Arg(_const(1e-3), "positive"), "p": Arg(_const(0.5), "fraction",
                                                                                # documented range (0, 2]
                                                                                expect={"above_one": "either"}),
                                 "eps": Arg(_const(1e-3), "positive")},
               check=_constructed, key=lambda m: []))
    add(Recipe("LinearizationSchedule", {"prior": Arg(sm.SparsityPrior, "object"),
                                         "start_epoch": Arg(_const(1), "count"),
                                         "tolerance": Arg(_const(0.01), "positive")},
               check=_constructed, key=lambda m: []))
    add(Recipe("make_linearizable", {"model": Arg(mlp, "model")}, positional=("model",),
               check=_constructed, key=lambda m: []))
    add(Recipe("snap_linear", {"model": Arg(lambda: sm.make_linearizable(mlp()), "model"),
                               "tolerance": Arg(_const(0.01), "positive")}))
    add(Recipe("nonlinear_fraction", {"model": Arg(lambda: sm.make_linearizable(mlp()), "model")}))

    # --- training and capture ---
    add(Recipe("fit", {"model": Arg(mlp, "model"), "train": Arg(dataset, "object", aliases=("X", "y")),
                       "epochs": Arg(_const(2), "count", skip={"huge"}), "lr": Arg(_const(0.05), "positive"),
                       "batch_size": Arg(_const(5), "count"), "optimizer": Arg(_const("sgd"), "choice"),
                       "seed": Arg(_const(0), "seed"), "progress": Arg(_const(False), "fixed"),
                       "momentum": Arg(_const(0.9), "positive", expect={"zero": "either", "huge": "either"}),
                       "weight_decay": Arg(_const(0.0), "positive", expect={"zero": "either"}),
                       "eval_batch_size": Arg(_const(4), "count"),
                       "callbacks": Arg(_const(()), "sequence", expect={"empty": "either", "none": "either"}),
                       "penalty": Arg(_const(None), "object", expect={"none": "either"}),
                       "test": Arg(dataset, "object", aliases=("X", "y"), expect={"none": "either"})},
               check=finite_or_missing))
    add(Recipe("evaluate", {"model": Arg(mlp, "model"), "data": Arg(dataset, "object", aliases=("X", "y")),
                            "batch_size": Arg(_const(4), "count"),
                            "loss_fn": Arg(_const(None), "object", expect={"none": "either"})}))
    # epochs=[] and None both mean "at no epoch" (steps may be given instead)
    add(Recipe("Callback", {"epochs": Arg(_const([0, 1]), "sequence", expect={"none": "either", "empty": "either"}),
                            "steps": Arg(_const([1]), "sequence", expect={"none": "either", "empty": "either"})},
               check=_constructed, key=lambda m: []))
    add(Recipe("record", {"model": Arg(mlp, "model"), "data": F(features, expect={"ndim+1": "error"}),
                          "batch_size": Arg(_const(4), "count"), "max_samples": Arg(_const(8), "count"),
                          "pool": Arg(_const("none"), "choice"), "progress": Arg(_const(False), "fixed")},
               positional=("model", "data"), key=lambda a: numbers(dict(a))))
    add(Recipe("ActivationRecorder", {"model": Arg(mlp, "model"), "layers": Arg(_const(None), "fixed"),
                                      "pool": Arg(_const("none"), "choice")},
               call=lambda **kw: _record_with(kw), key=lambda a: numbers(a)))
    add(Recipe("Activations", {"tensors": Arg(lambda: {"a": features(), "b": features()[:, :1]}, "mapping"),
                               "labels": Arg(labels, "labels", expect={"one_class": "either", "none": "either"})},
               check=_constructed, key=lambda a: numbers(dict(a))))
    add(Recipe("select_layers", {"model": Arg(mlp, "model"), "layers": Arg(_const("re:.*"), "choice")},
               check=lambda out: None if out else (_ for _ in ()).throw(AssertionError("no layer")),
               key=lambda out: [len(out)]))

    # --- separability ---
    add(Recipe("md_lsm", {"A": F(points_a), "B": F(points_b),
                          "method": Arg(_const("auto"), "choice"), **FAST_SEARCH},
               positional=POS, check=in_unit, key=_value, joint_scale=POS))
    add(Recipe("pair_fraction", {"A": F(points_a), "B": F(points_b),
                                 "w": Arg(lambda: torch.tensor([1.0, 1.0]), "features", invariant=SCALE,
                                          skip={"scalar", "ndim-1"})},
               positional=("A", "B", "w"), check=in_unit, key=lambda v: [v], joint_scale=POS))
    add(Recipe("hull_distance", {"A": F(points_a), "B": F(points_b), "method": Arg(_const("auto"), "choice"),
                                 "tol": Arg(_const(1e-6), "positive"), "max_iter": Arg(_const(200), "count")},
               positional=POS, check=hull_check, key=_hull_key, joint_scale=POS))
    add(Recipe("pairwise_hull_distances", {"features": F(features, invariant=SCALE, expect={"wrong_width": "either"}), "labels": Arg(labels, "labels"),
                                           "max_iter": Arg(_const(200), "count"),
                                           "progress": Arg(_const(False), "fixed")},
               positional=("features", "labels"),
               check=lambda d: [hull_check(v) for v in d.values()] and None,
               key=lambda d: [float(bool(v.separable)) for v in d.values()]))
    add(Recipe("separable_subset_fraction", {"A": F(points_a), "B": F(points_b),
                                             "method": Arg(_const("auto"), "choice"), **FAST_SEARCH},
               positional=POS, check=in_unit, key=_value, joint_scale=POS))
    add(Recipe("subset_fraction", {"A": F(points_a), "B": F(points_b),
                                   "w": Arg(lambda: torch.tensor([1.0, 1.0]), "features", invariant=SCALE,
                                            skip={"scalar", "ndim-1"})},
               positional=("A", "B", "w"), check=in_unit, key=lambda v: [v], joint_scale=POS))
    add(Recipe("linear_probe", {"A": F(points_a), "B": F(points_b), "test_fraction": Arg(_const(0.4), "fraction"),
                                "l2": Arg(_const(1e-3), "positive", expect={"zero": "either"}),
                                "max_iter": Arg(_const(20), "count"), "seed": Arg(_const(0), "seed")},
               positional=POS, key=lambda p: [p.accuracy, p.train_accuracy]))
    add(Recipe("layer_separability",
               {"activations": Arg(lambda: {"features": features()}, "mapping"),
                "labels": Arg(labels, "labels"),
                "measures": Arg(_const(("md_lsm", "hull_distance", "linear_probe")), "sequence"),
                "max_per_class": Arg(_const(5), "count"), "seed": Arg(_const(0), "seed"),
                "options": Arg(_const({"md_lsm": {"steps": 10, "n_starts": 1, "time_limit": 1.0},
                                       "hull_distance": {"max_iter": 200}}), "mapping",
                               expect={"empty": "either"}),
                "progress": Arg(_const(False), "fixed")},
               positional=("activations", "labels"), check=finite_or_missing, key=_columns("value")))
    add(Recipe("separability_summary", {"table": Arg(lambda: sm.layer_separability(
        {"features": features()}, labels(), ("md_lsm", "linear_probe"),
        options={"md_lsm": {"steps": 10, "n_starts": 1}}, progress=False), "frame")},
               positional=("table",), check=finite_or_missing))
    add(Recipe("SeparabilityCallback", {"layers": Arg(_const(None), "fixed"),
                                        "measures": Arg(_const(("md_lsm",)), "sequence"),
                                        "max_per_class": Arg(_const(5), "count"),
                                        "epochs": Arg(_const([1]), "sequence", expect={"none": "either", "empty": "either"})},
               check=_constructed, key=lambda m: []))

    # --- kernels ---
    add(Recipe("empirical_ntk", {"model": Arg(mlp, "model"), "x1": F(features), "x2": F(features, expect={"none": "either"}),
                                 "output": Arg(_const("trace"), "choice"), "block_size": Arg(_const(4), "count"),
                                 "progress": Arg(_const(False), "fixed")},
               positional=("model", "x1", "x2")))
    add(Recipe("select_parameters", {"model": Arg(mlp, "model"), "params": Arg(_const("re:.*weight"), "choice")},
               check=lambda d: None if d else (_ for _ in ()).throw(AssertionError("no parameter")),
               key=lambda d: [len(d)]))
    add(Recipe("neural_path_kernel", {"model": Arg(mlp, "model"), "x1": F(features), "x2": F(features, expect={"none": "either"}),
                                      "block_size": Arg(_const(4), "count")},
               positional=("model", "x1", "x2")))
    add(Recipe("gate_overlap", {"model": Arg(dlgn, "model"), "x1": F(features),
                                "x2": F(features, expect={"none": "either"})},
               positional=("model", "x1", "x2"), key=lambda g: numbers(g.overlaps)))
    add(Recipe("network_gates", {"model": Arg(dlgn, "model"), "x": F(features)}, positional=("model", "x")))
    add(Recipe("kernel_target_alignment", {"kernel": Arg(kernel, "kernel", invariant=SCALE),
                                           "y": Arg(labels, "labels"), "centered": Arg(_const(True), "flag")},
               positional=("kernel", "y"), check=alignment_range, key=lambda v: [v]))
    add(Recipe("kernel_alignment", {"kernel1": Arg(kernel, "kernel", invariant=SCALE),
                                    "kernel2": Arg(kernel2, "kernel", invariant=SCALE)},
               positional=("kernel1", "kernel2"), check=alignment_range, key=lambda v: [v]))
    add(Recipe("kernel_distance", {"kernel1": Arg(kernel, "kernel", invariant=SCALE),
                                   "kernel2": Arg(kernel2, "kernel", invariant=SCALE)},
               positional=("kernel1", "kernel2"), key=lambda v: [v]))
    # the effective rank counts singular values above the rounding of the kernel's own dtype, so a
    # float16 kernel may have a lower rank by design
    add(Recipe("kernel_spectrum", {"kernel": Arg(kernel, "kernel", expect={"float16": "either"})},
               positional=("kernel",), key=lambda s: [s.effective_rank]))
    add(Recipe("effective_rank", {"kernel": Arg(kernel, "kernel", invariant=SCALE, expect={"float16": "either"})},
               positional=("kernel",), key=lambda v: [v]))
    add(Recipe("kernel_velocity", {"kernels": Arg(lambda: [kernel(), kernel2(), kernel()], "sequence"),
                                   "epochs": Arg(_const([0.0, 1.0, 2.0]), "sequence")},
               positional=("kernels", "epochs"), check=finite_or_missing))
    add(Recipe("kernel_diagnostics", {"kernel": Arg(kernel, "kernel", invariant=SCALE, expect={"float16": "either"}),
                                      "y": Arg(labels, "labels", expect={"none": "either"}),
                                      "previous": Arg(kernel2, "kernel", invariant=SCALE, expect={"none": "either"}),
                                      "initial": Arg(kernel2, "kernel", invariant=SCALE, expect={"none": "either"}),
                                      "elapsed": Arg(_const(1.0), "positive")},
               positional=("kernel", "y"), check=finite_or_missing,
               key=lambda f: f["value"].tolist()))
    add(Recipe("KernelDiagnostics", {"kernel": Arg(_const("ntk"), "choice"),
                                     "x": F(features, expect={"wrong_width": "either"}),
                                     "y": Arg(labels, "labels"), "n": Arg(_const(8), "count"),
                                     "seed": Arg(_const(0), "seed")},
               positional=("kernel", "x", "y"), check=_constructed, key=lambda m: []))

    # --- paths ---
    add(Recipe("PathLayer", {"name": Arg(_const("a"), "name"), "nonlinear": Arg(_const((False, True)), "sequence"),
                             "inputs": Arg(_const(()), "sequence", expect={"empty": "either", "none": "either"})},
               check=_constructed, key=lambda m: []))
    add(Recipe("PathGraph", {"layers": Arg(lambda: [sm.PathLayer("a", (False, True)),
                                                    sm.PathLayer("b", (True, True), (("a", "full"),))], "sequence")},
               check=_constructed, key=lambda g: [g.n_channels]))
    for fname in ("path_graph", "average_path_length", "path_length_distribution"):
        args = {"model": Arg(mlp, "model", expect={"linear": "either"})}
        if fname != "path_graph":
            args["method"] = Arg(_const("dp"), "choice")
        add(Recipe(fname, args, positional=("model",),
                   key=(lambda g: [g.n_channels]) if fname == "path_graph" else None,
                   check=_constructed if fname == "path_graph" else None))

    # --- studies, claims, reports ---
    # expand_grid's messages name the grid by its ``name`` argument (default "grid")
    add(Recipe("expand_grid", {"spec": Arg(_const({"a": [1, 2], "b": "x"}), "mapping", expect={"empty": "either"},
                                           aliases=("grid",)),
                               "name": Arg(_const("grid"), "name")},
               check=_constructed, key=lambda g: [len(g)]))
    add(Recipe("make_executor", {"kind": Arg(_const("local"), "choice"),
                                 "workers": Arg(_const(None), "fixed")},
               positional=("kind",), check=_constructed, key=lambda e: []))
    claim_common = dict(name=Arg(_const("c"), "name"), paper=Arg(_const("P"), "name"),
                        statement=Arg(_const("s"), "name"),
                        confidence=Arg(_const(0.9), "fraction"), n_boot=Arg(_const(200), "count"),
                        min_seeds=Arg(_const(2), "count"), table=Arg(small_table, "frame"),
                        random_state=Arg(_const(0), "seed"), seed=Arg(_const("seed"), "name"),
                        where=Arg(_const({"layer": [1, 2, 3]}), "mapping", expect={"empty": "either"}))

    def claim_recipe(cname: str, **extra: Arg) -> Recipe:
        return Recipe(cname, {**claim_common, **extra}, call=lambda **kw: _evaluate_claim(cname, kw),
                      check=finite_or_missing, key=lambda res: [res.effect])

    add(claim_recipe("MonotoneTrend", x=Arg(_const("layer"), "name"), y=Arg(_const("value"), "name")))
    add(claim_recipe("Comparison", value=Arg(_const("value"), "name"), a=Arg(_const({"model": "X"}), "mapping"),
                     b=Arg(_const({"model": "Y"}), "mapping")))
    add(claim_recipe("CoMovement", a=Arg(_const("value"), "name"), b=Arg(_const("other"), "name"),
                     time=Arg(_const("layer"), "name"), n_perm=Arg(_const(200), "count")))
    add(claim_recipe("Threshold", value=Arg(_const("value"), "name"), op=Arg(_const(">="), "choice"),
                     bound=Arg(_const(0.5), "positive", expect={"negative": "either", "zero": "either"})))
    add(claim_recipe("ClosedForm", value=Arg(_const("value"), "name"), reference=Arg(_const(0.7), "positive", aliases=("table",),
                     expect={"negative": "either", "zero": "either"}), tolerance=Arg(_const(0.5), "positive")))
    add(Recipe("Control", {"description": Arg(_const("d"), "name"), "where": Arg(_const({"model": "Y"}), "mapping", expect={"empty": "either"})},
               check=_constructed, key=lambda c: []))
    add(Recipe("ClaimRegistry", {"study_version": Arg(_const("1"), "name", aliases=("study version",)),
                                 "decisions": Arg(lambda: [(sm.Threshold(name="t", paper="P", statement="s",
                                                                         value="value", op=">=", bound=0.5),
                                                            "from the paper")], "sequence",
                                               expect={"empty": "either"}),
                                 "changes": Arg(_const({"1": "first"}), "mapping")},
               positional=("study_version", "decisions", "changes"), check=_constructed, key=lambda c: []))
    add(Recipe("claims_frame", {"results": Arg(lambda: [sm.Threshold(name="t", paper="P", statement="s",
                                                                     value="value", op=">=", bound=0.5,
                                                                     n_boot=200).evaluate(small_table())],
                                               "sequence", expect={"empty": "either"})},
               positional=("results",), check=finite_or_missing))
    add(Recipe("FigureSpec", {"name": Arg(_const("f"), "name"), "table": Arg(_const("results"), "name"),
                              "kind": Arg(_const("line"), "choice"), "x": Arg(_const("layer"), "name"),
                              "y": Arg(_const("value"), "name"), "height": Arg(_const(3.0), "positive")},
               check=_constructed, key=lambda f: []))
    add(Recipe("write_report", {"out_dir": Arg(_study_root, "path"),
                                "reference": Arg(_study_root, "path", expect={"empty": "either"})},
               positional=("out_dir",), check=_constructed, key=lambda d: []))
    # messages about a damaged file may name the file (study.json, results.parquet) instead of study_dir
    add(Recipe("write_study_report", {"study_dir": Arg(lambda: str(Path(_study_root()) / "catalogue"), "study",
                                                       aliases=("study.json", "results.parquet", "results.csv",
                                                                "tables")),
                                      "index": Arg(_const(False), "flag")},
               positional=("study_dir",), check=_constructed, key=lambda d: []))
    add(Recipe("Study", {"name": Arg(_const("s"), "name"), "run_one": Arg(_const(lambda w, seed: {"v": w}), "object"),
                         "quick": Arg(_const({"w": [1]}), "mapping"), "full": Arg(_const({"w": [1, 2]}), "mapping"),
                         "seeds": Arg(_const({"quick": 1, "full": 1}), "mapping", expect={"empty": "either"}),
                         "version": Arg(_const("1"), "name")},
               check=_constructed, key=lambda s: []))
    # --- the solver-backed methods explicitly (auto picks the 2-D sweep for these points) ---
    for method in ("exact", "approx"):
        for fname in ("md_lsm", "separable_subset_fraction"):
            add(Recipe(fname, {"A": F(points_a), "B": F(points_b), "method": Arg(_const(method), "fixed"),
                               **FAST_SEARCH}, variant=method, positional=POS, check=in_unit,
                       key=_value if method == "exact" else (lambda res: []), joint_scale=POS))

    # --- held-out variants: the test sets are mutated like the training sets ---
    def _held_out(fn):
        return lambda A, B, A_test, B_test, **kw: fn(A, B, test=(A_test, B_test), **kw)

    test_sets = {"A_test": F(lambda: points_a() + 1, aliases=("test",)),
                 "B_test": F(lambda: points_b() - 1, aliases=("test",))}
    add(Recipe("md_lsm", {"A": F(points_a), "B": F(points_b), **test_sets}, variant="test",
               call=_held_out(sm.md_lsm), check=in_unit, key=_value))
    add(Recipe("linear_probe", {"A": F(points_a), "B": F(points_b), **test_sets,
                                "max_iter": Arg(_const(20), "count")}, variant="test",
               call=_held_out(sm.linear_probe), key=lambda p: [p.accuracy]))
    add(Recipe("layer_separability", {"activations": Arg(lambda: {"features": torch.cat([features(), features() + 0.5])},
                                                         "mapping"),
                                      "labels": Arg(lambda: torch.cat([labels(), labels()]), "labels",
                                                    expect={"one_class": "either"}),
                                      "held_out": Arg(_const(0.3), "fraction")},
               variant="held_out", check=finite_or_missing, key=_columns("value"),
               call=lambda activations, labels, held_out: sm.layer_separability(
                   activations, labels, ("md_lsm", "hull_distance", "linear_probe", "separable_subset"),
                   held_out=held_out, options={"md_lsm": {"steps": 10, "n_starts": 1, "time_limit": 1.0},
                                               "separable_subset": {"steps": 10, "n_starts": 1, "time_limit": 1.0}},
                   progress=False)))
    add(Recipe("pairwise_hull_distances", {"features": F(lambda: torch.cat([features(), features()[:5] + 10]),
                                                         expect={"wrong_width": "either"}),
                                           "labels": Arg(lambda: torch.tensor([0] * 5 + [1] * 5 + [2] * 5), "labels",
                                                         expect={"one_class": "either"}),
                                           "pairs": Arg(_const("ovr"), "choice"),
                                           "classes": Arg(_const([0, 2]), "sequence", expect={"none": "either"})},
               variant="ovr", positional=("features", "labels"),
               call=lambda **kw: sm.pairwise_hull_distances(**kw, progress=False),
               check=lambda d: [hull_check(v) for v in d.values()] and None,
               key=lambda d: [float(bool(v.separable)) for v in d.values()]))
    add(Recipe("empirical_ntk", {"model": Arg(mlp, "model"), "x1": F(features),
                                 "method": Arg(_const("auto"), "choice"), "output": Arg(_const("full"), "choice"),
                                 "params": Arg(_const("re:.*weight"), "choice", expect={"none": "either"})},
               positional=("model", "x1"), variant="full",
               call=lambda **kw: sm.empirical_ntk(**kw, progress=False)))

    # --- second ways to call: features and labels of a training run, callbacks inside fit ---
    xy = {"X": F(features, aliases=("train", "data")),
          "y": Arg(labels, "labels", expect={"one_class": "either", "beyond_outputs": "error"},
                   aliases=("train", "data"))}
    add(Recipe("fit", {"model": Arg(mlp, "model", skip={"type", "empty"}), **xy}, variant="xy",
               call=lambda model, X, y: sm.fit(model, (X, y), epochs=1, batch_size=5, progress=False),
               check=finite_or_missing, key=lambda h: []))
    add(Recipe("evaluate", {"model": Arg(mlp, "model", skip={"type", "empty"}), **xy}, variant="xy",
               call=lambda model, X, y: sm.evaluate(model, (X, y)), key=lambda m: [m.get("accuracy", 0.0)]))
    add(Recipe("neural_path_kernel", {"model": Arg(dlgn, "model"), "x1": F(features),
                                      "x2": F(features, expect={"none": "either"})},
               positional=("model", "x1", "x2"), variant="dlgn"))
    add(Recipe("layer_separability", {"activations": F(features, expect={"ndim+1": "either", "ndim-1": "error"},
                                                       skip={"wrong_width"}),
                                      "labels": Arg(labels, "labels"),
                                      "options": Arg(_const({"md_lsm": {"steps": 10, "n_starts": 1,
                                                                        "time_limit": 1.0}}), "fixed")},
               variant="tensor", check=finite_or_missing, key=_columns("value"),
               call=lambda activations, labels, options: sm.layer_separability(
                   activations, labels, ("md_lsm", "linear_probe"), options=options, progress=False)))
    add(Recipe("KernelDiagnostics", {"kernel": Arg(_const("ntk"), "choice"),
                                     "x": F(features, aliases=("x1",)),
                                     "y": Arg(labels, "labels", expect={"beyond_outputs": "either"})},
               variant="fit", check=finite_or_missing, key=lambda t: [],
               call=lambda kernel, x, y: _fit_with(sm.KernelDiagnostics(kernel, x, y, epochs=[0, 1]))))
    add(Recipe("SeparabilityCallback", {"measures": Arg(_const(("md_lsm", "linear_probe")), "sequence"),
                                        "max_per_class": Arg(_const(5), "count"),
                                        "pool": Arg(_const("flatten"), "choice")},
               variant="fit", check=finite_or_missing, key=lambda t: [],
               call=lambda **kw: _fit_with(sm.SeparabilityCallback(
                   **kw, epochs=[1], options={"md_lsm": {"steps": 10, "n_starts": 1, "time_limit": 1.0}}))))
    return r


def _fit_with(callback: Any) -> pd.DataFrame:
    sm.fit(mlp(), dataset(), epochs=1, batch_size=5, callbacks=[callback], progress=False)
    return callback.table


def _record_with(kw: dict[str, Any]) -> Any:
    with sm.ActivationRecorder(**kw) as rec:
        kw["model"](features())
    return dict(rec.activations())


def _evaluate_claim(cname: str, kw: dict[str, Any]) -> Any:
    kw = dict(kw)
    table = kw.pop("table")
    claim = getattr(sm, cname)(**kw)
    return claim.evaluate(table)


# fit's epochs=10**12 is skipped: a loop count that is a valid (if long) request, allocating nothing per
# epoch, so no refusal is expected and running it would only test patience

RECIPES: dict[str, Recipe] = {rec.id: rec for rec in _recipes()}

EXEMPT: dict[str, str] = {
    "__version__": "a version string, not callable",
    "DATASETS": "a tuple of names (its items are load_dataset's name choices, covered there)",
    "ACTIVATIONS": "a tuple of names (its items are make_activation's choices, covered there)",
    "COMBINATION_RULE": "a constant sentence describing how verdicts combine",
    "MDLSM": "result type returned by md_lsm (constructed by the library only)",
    "HullDistance": "result type returned by hull_distance (constructed by the library only)",
    "HullSolverError": "an exception class",
    "SubsetFraction": "result type returned by separable_subset_fraction",
    "ProbeResult": "result type returned by linear_probe",
    "KernelSpectrum": "result type returned by kernel_spectrum",
    "Split": "a NamedTuple (train, test) without behaviour (NamedTuple cannot check its fields); load_dataset and "
             "load_npz build it, and the functions that take one check its fields",
    "GateOverlap": "result type returned by gate_overlap",
    "EffectiveHalfSpaces": "result type returned by effective_halfspaces",
    "FoldReport": "result type attached to fold's output",
    "AveragePathLength": "result type returned by average_path_length",
    "PathLengthDistribution": "result type returned by path_length_distribution",
    "ClaimResult": "result type returned by Claim.evaluate (covered through the claim recipes)",
    "StudyResult": "result type returned by Study.run",
    "TrainingState": "built by fit for its callbacks (covered through fit)",
    "Claim": "abstract base of the claim kinds (each kind has a recipe)",
}
