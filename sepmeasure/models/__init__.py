"""Model families: standard networks (and, in their own modules, gated, masked and linearizable ones)."""
from .standard import ACTIVATIONS, CNN, MLP, GlobalAvgPool, PreActBlock, ResNet, make_activation

__all__ = ["ACTIVATIONS", "CNN", "MLP", "GlobalAvgPool", "PreActBlock", "ResNet", "make_activation"]
