"""Kernels of a network: the empirical neural tangent kernel, the neural path kernel and gate
overlaps, and diagnostics that compare kernels (alignment, distance, spectrum, velocity)."""
from .callback import KernelDiagnostics
from .diagnostics import (EFFECTIVE_RANK_DEFINITION, KernelSpectrum, effective_rank, kernel_alignment,
                          kernel_diagnostics, kernel_distance, kernel_spectrum, kernel_target_alignment,
                          kernel_velocity)
from .npk import GateOverlap, gate_overlap, network_gates, neural_path_kernel
from .ntk import NTK_METHODS, NTK_OUTPUTS, ParameterSelector, empirical_ntk, select_parameters

__all__ = ["EFFECTIVE_RANK_DEFINITION", "NTK_METHODS", "NTK_OUTPUTS", "GateOverlap", "KernelDiagnostics",
           "KernelSpectrum", "ParameterSelector", "effective_rank", "empirical_ntk", "gate_overlap",
           "kernel_alignment", "kernel_diagnostics", "kernel_distance", "kernel_spectrum",
           "kernel_target_alignment", "kernel_velocity", "network_gates", "neural_path_kernel",
           "select_parameters"]
