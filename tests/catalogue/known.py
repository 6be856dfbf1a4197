"""Known failures: catalogue cases classified ``other`` whose defect lies in a module owned and
being changed elsewhere (models, capture, separability search, study). Each entry names the file
and what goes wrong.

Keys are case ids ``"name[arg=mutation]"``. The CI test fails on any ``other`` outcome not listed
here, and on an entry here that no longer fails (a fix must remove its entry).
"""
from __future__ import annotations

_HUGE = ("huge", "beyond_int64")
_ALLOC = ("size not bounded before torch allocates: 10**12 reaches the allocator (RuntimeError 'can't allocate "
          "memory' from inside torch), 2**70 overflows inside torch ('Overflow when unpacking long long')")

_GROUPS: list[tuple[str, str, tuple[str, ...], str]] = [
    # sepmeasure/models/standard.py, gated.py, linearizable.py, linearity_mask.py
    *[(name, arg, _HUGE, f"sepmeasure/models: {name}({arg}=...) {_ALLOC}")
      for name, args in (("MLP", ("in_features", "out_features")), ("CNN", ("in_channels", "out_features",
                                                                             "kernel_size")),
                         ("ResNet", ("in_channels", "width", "out_features")), ("DGN", ("in_features", "out_features")),
                         ("DLGN", ("in_features", "out_features")), ("make_activation", ("channels",)),
                         ("LinearityMask", ("channels",)), ("LinearizablePReLU", ("channels",)))
      for arg in args],
    ("ResNet", "n_blocks", _HUGE, "sepmeasure/models/standard.py: n_blocks not bounded; 10**12 blocks are built one "
                                  "by one until the time limit (memory grows without bound)"),
    ("make_activation", "name", ("unknown", "int", "none"),
     "sepmeasure/models/standard.py: the error names 'activation', not the argument 'name'"),
    ("effective_halfspaces", "input_shape", ("str", "negative", "zero", "float", "huge", "empty"),
     "sepmeasure/models/gated.py: input_shape is not checked ('abc', (-3,), (0,), (2.5,), (10**9,), () accepted) "
     "for an MLP-arch DLGN, which ignores it"),
    ("LinearityMask", "init_logit", ("huge",),
     "sepmeasure/models/linearity_mask.py: init_logit=1e300 not checked; torch fails to fill float32 "
     "('value cannot be converted to type float without overflow')"),
    ("LinearizablePReLU", "init", ("huge",),
     "sepmeasure/models/linearizable.py: init=1e300 not checked; torch fails to fill float32"),
    ("fold", "input_shape", ("huge",),
     "sepmeasure/models (fold): input_shape=(10**9,) not checked against the model's 2 inputs; a 10**9-wide "
     "input (4 GB) is built and torch's 'mat1 and mat2 shapes cannot be multiplied' surfaces after ~3 s "
     "(ran past the 5 s limit on the code of the start)"),
    ("fold", "input_shape", ("empty",), "sepmeasure/models/masked.py: input_shape=() accepted"),
    ("SparsityPrior", "p", ("above_one",), "sepmeasure/models/linearizable.py: p=1.5 accepted (an L_p prior "
                                           "with p in (0, 1] is documented)"),
    # sepmeasure/capture.py
    *[("record", "data", (m,), f"sepmeasure/capture.py: data {d} reaches the model; torch's "
                               f"'mat1 and mat2 ...' RuntimeError is not translated into an error naming data")
      for m, d in (("ndim+1", "of shape (1, 10, 2)"), ("ndim-1", "of shape (20,)"), ("int64", "of dtype int64"),
                   ("bool", "of dtype bool"), ("complex", "of dtype complex64"), ("wrong_width", "of width 4"))],
    *[("ActivationRecorder", "model", (m,), f"sepmeasure/capture.py: a {m} model under the recorder gets float32 "
                                            f"inputs; torch's dtype-mismatch RuntimeError is not translated")
      for m in ("float64", "float16")],
    ("Activations", "tensors", ("str", "int"), "sepmeasure/capture.py: tensors is not checked to be a mapping "
                                               "(dict() raises an error that does not name tensors)"),
    ("Activations", "tensors", ("empty",), "sepmeasure/capture.py: an empty mapping of layers is accepted"),
    ("Activations", "labels", ("str", "int", "list", "scalar"),
     "sepmeasure/capture.py: labels is read with .shape before any check (AttributeError/IndexError)"),
    ("Activations", "labels", ("ndim+1", "float_fractional", "nan", "negative", "huge", "uint64_max",
                               "beyond_int64"),
     "sepmeasure/capture.py: labels are stored without check_labels (2-D, fractional, NaN, negative, 2**62, "
     "uint64 max and 1e30 labels accepted)"),
    ("select_layers", "model", ("str", "none"), "sepmeasure/capture.py: model is not checked to be an nn.Module "
                                                "(AttributeError 'named_modules')"),
    # sepmeasure/separability (subset.py, _search.py, probe.py, tables.py)
    *[(f"{name}{variant}", arg, _HUGE, f"sepmeasure/separability/{where} + _search.py: {arg} {_ALLOC}")
      for name, where in (("separable_subset_fraction", "subset.py"), ("md_lsm", "mdlsm.py"))
      for variant in ("", "/exact", "/approx") for arg in ("n_starts", "steps")
      if (name, variant) != ("md_lsm", "")],
    *[(f"{name}{variant}", "seed", ("huge",), f"sepmeasure/separability/{where}: seed=2**70 not checked; torch's "
                                              f"'Overflow when unpacking long long' does not name seed")
      for name, where in (("separable_subset_fraction", "subset.py"), ("md_lsm", "mdlsm.py"))
      for variant in ("", "/exact", "/approx") if (name, variant) != ("md_lsm", "")],
    ("linear_probe", "seed", ("huge",), "sepmeasure/separability/probe.py: seed=2**70 not checked (torch overflow)"),
    ("layer_separability", "seed", ("huge",), "sepmeasure/separability/tables.py: seed=2**70 not checked "
                                              "(torch overflow)"),
    ("linear_probe", "l2", ("huge",), "sepmeasure/separability/probe.py: l2=1e300 accepted; the fit returns NaN "
                                      "weights, bias and accuracy bounds silently"),
    ("separability_summary", "table", ("strings",),
     "sepmeasure/separability/tables.py: a table whose numbers are strings reaches a pandas comparison "
     "(TypeError 'Invalid comparison between dtype=str and int' from inside pandas)"),
    ("pairwise_hull_distances/ovr", "classes", ("str", "int"),
     "sepmeasure/separability/pointsets.py: classes is not checked to be a sequence of ints (int('a') / "
     "'int' object is not iterable, not naming classes)"),
    # sepmeasure/kernels/ntk.py
    ("empirical_ntk/full", "x1", ("x1e30",), "sepmeasure/kernels/ntk.py: float32 inputs of 1e30 give a full NTK with "
                                             "NaN/inf entries, returned without an error"),
    # sepmeasure/study
    ("make_executor", "kind", ("unknown", "int", "none"),
     "sepmeasure/study/executors.py: the error names 'executor', not the argument 'kind'"),
    ("Study", "quick", ("empty",), "sepmeasure/study/core.py: an empty quick grid {} is accepted"),
    ("Study", "full", ("empty",), "sepmeasure/study/core.py: an empty full grid {} is accepted"),
]

KNOWN_FAILURES: dict[str, str] = {f"{name}[{arg}={m}]": reason
                                  for name, arg, muts, reason in _GROUPS for m in muts}

KNOWN_HANGS: dict[str, str] = {case: KNOWN_FAILURES[case] for case in (
    "ResNet[n_blocks=huge]", "ResNet[n_blocks=beyond_int64]", "fold[input_shape=huge]")}
"""Known failures that run past the time limit (stuck in C code, so the alarm fires late) or allocate
gigabytes before failing: the CI test does not run them, ``python -m tests.catalogue`` does (check
there whether one still fails). Every key is also in KNOWN_FAILURES."""
