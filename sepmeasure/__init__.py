"""sepmeasure: measure how neural networks disentangle linear from non-linear structure.

The public API, re-exported from the modules that define it.
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("sepmeasure")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

from .claims import (COMBINATION_RULE, Claim, ClaimRegistry, ClaimResult, ClosedForm, CoMovement, Comparison, Control,
                     MonotoneTrend, Threshold, claims_frame)
from .capture import ActivationRecorder, Activations, record, select_layers
from .data import DATASETS, LabeledData, Split, as_dataset, load_dataset, load_npz
from .kernels import (GateOverlap, KernelDiagnostics, KernelSpectrum, effective_rank, empirical_ntk, gate_overlap,
                      kernel_alignment, kernel_diagnostics, kernel_distance, kernel_spectrum,
                      kernel_target_alignment, kernel_velocity, network_gates, neural_path_kernel,
                      select_parameters)
from .models import (ACTIVATIONS, CNN, DGN, DLGN, MLP, BetaAnnealing, EffectiveHalfSpaces, FoldReport,
                     LinearityMask, LinearizablePReLU, LinearizationSchedule, MaskPenalty, ResNet, SparsityPrior,
                     apply_masks, effective_halfspaces, fold, linear_fraction, make_activation, make_linearizable,
                     nonlinear_fraction, snap_linear)
from .paths import (AveragePathLength, PathGraph, PathLayer, PathLengthDistribution, average_path_length,
                    path_graph, path_length_distribution)
from .separability import (MDLSM, HullDistance, HullSolverError, ProbeResult, SeparabilityCallback,
                           SubsetFraction, hull_distance, layer_separability, linear_probe, md_lsm, pair_fraction,
                           pairwise_hull_distances, separability_summary, separable_subset_fraction,
                           subset_fraction)
from .report import FigureSpec, write_report, write_study_report
from .study import Study, StudyResult, expand_grid, make_executor
from .training import Callback, TrainingState, evaluate, fit

__all__ = [
    "__version__",
    # data
    "DATASETS", "LabeledData", "Split", "as_dataset", "load_dataset", "load_npz",
    # models
    "ACTIVATIONS", "MLP", "CNN", "ResNet", "make_activation", "DGN", "DLGN", "BetaAnnealing",
    "EffectiveHalfSpaces", "effective_halfspaces", "LinearityMask", "MaskPenalty", "apply_masks", "fold",
    "FoldReport", "linear_fraction", "LinearizablePReLU", "SparsityPrior", "LinearizationSchedule",
    "make_linearizable", "snap_linear", "nonlinear_fraction",
    # training and capture
    "fit", "evaluate", "Callback", "TrainingState", "ActivationRecorder", "Activations", "record", "select_layers",
    # separability
    "md_lsm", "MDLSM", "pair_fraction", "hull_distance", "HullDistance", "HullSolverError",
    "pairwise_hull_distances", "separable_subset_fraction", "subset_fraction", "SubsetFraction", "linear_probe",
    "ProbeResult", "layer_separability", "separability_summary", "SeparabilityCallback",
    # kernels
    "empirical_ntk", "select_parameters", "neural_path_kernel", "gate_overlap", "GateOverlap", "network_gates",
    "kernel_target_alignment", "kernel_alignment", "kernel_distance", "kernel_spectrum", "KernelSpectrum",
    "effective_rank", "kernel_velocity", "kernel_diagnostics", "KernelDiagnostics",
    # paths
    "PathGraph", "PathLayer", "path_graph", "average_path_length", "path_length_distribution",
    "AveragePathLength", "PathLengthDistribution",
    # studies, claims, reports
    "Study", "StudyResult", "expand_grid", "make_executor", "Claim", "MonotoneTrend", "Comparison", "CoMovement",
    "ClosedForm", "Threshold", "Control", "ClaimRegistry", "COMBINATION_RULE", "ClaimResult", "claims_frame",
    "FigureSpec", "write_report", "write_study_report",
]
