"""Linear separability of point sets and hidden layers (Zhang et al. 2023, arXiv 2307.13962).

* :func:`md_lsm` — the Minkowski-difference linear separability measure, exact (MILP) or
  approximate, with certified bounds; :func:`pair_fraction` — its objective for one direction.
* :func:`hull_distance` — distance between convex hulls with a certified interval (native torch
  working-set solver, or cvxpy as reference); :func:`pairwise_hull_distances` for many class
  pairs at once.
* :func:`separable_subset_fraction` — the largest strictly separable fraction of the points;
  :func:`subset_fraction` for one direction.
* :func:`held_out_auc` / :class:`HeldOutAUC` — test AUC of a fitted direction with DeLong's
  interval (``md_lsm(..., test=...)``, ``layer_separability(..., held_out=0.3)``).
* :func:`linear_probe` — held-out accuracy of a logistic-regression probe (torch).
* :func:`layer_separability` / :func:`separability_summary` — tidy per-layer tables;
  :func:`add_relative_hull_distance` — hull distances relative to each layer's spread;
  :func:`balanced_subsample` / :func:`class_subsample` — seeded per-class subsets.
* :class:`SeparabilityCallback` — records the tables during :func:`sepmeasure.training.fit`.
"""
from .callback import SeparabilityCallback
from .heldout import HeldOutAUC, delong_interval, held_out_auc
from .hull import HullDistance, HullSolverError, hull_distance, pairwise_hull_distances
from .mdlsm import MDLSM, md_lsm, pair_fraction
from .probe import ProbeResult, fit_logistic, linear_probe, wilson_interval
from .subset import SubsetFraction, separable_subset_fraction, subset_fraction
from .tables import (MEASURES, add_relative_hull_distance, balanced_subsample, class_subsample, layer_separability,
                     separability_summary)

__all__ = [
    "HullDistance", "HullSolverError", "hull_distance", "pairwise_hull_distances",
    "MDLSM", "md_lsm", "pair_fraction",
    "SubsetFraction", "separable_subset_fraction", "subset_fraction",
    "ProbeResult", "fit_logistic", "linear_probe", "wilson_interval",
    "MEASURES", "layer_separability", "separability_summary", "balanced_subsample", "class_subsample",
    "add_relative_hull_distance",
    "SeparabilityCallback",
    "HeldOutAUC", "held_out_auc", "delong_interval",
]
