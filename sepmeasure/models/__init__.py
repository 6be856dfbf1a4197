"""Model families: standard networks, gated networks (DGN, DLGN), masked and linearizable ones."""
from .gated import DGN, DLGN, BetaAnnealing, GatedNetwork
from .halfspaces import EffectiveHalfSpaces, effective_halfspaces
from .linearizable import (LinearizablePReLU, LinearizationSchedule, SparsityPrior, make_linearizable,
                           nonlinear_fraction, snap_linear)
from .folded import FoldReport, fold
from .folded_cnn import FoldedCNN
from .folded_mlp import FoldedMLP
from .linearity_mask import LinearityMask
from .masked import MaskPenalty, apply_masks, linear_fraction
from .standard import ACTIVATIONS, CNN, MLP, GlobalAvgPool, PreActBlock, ResNet, make_activation

__all__ = [
    "ACTIVATIONS", "CNN", "MLP", "GlobalAvgPool", "PreActBlock", "ResNet", "make_activation",
    "DGN", "DLGN", "GatedNetwork", "BetaAnnealing", "EffectiveHalfSpaces", "effective_halfspaces",
    "LinearityMask", "MaskPenalty", "apply_masks", "linear_fraction", "fold", "FoldReport", "FoldedMLP", "FoldedCNN",
    "LinearizablePReLU", "SparsityPrior", "LinearizationSchedule", "make_linearizable", "snap_linear",
    "nonlinear_fraction",
]
