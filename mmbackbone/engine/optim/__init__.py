"""Optimizer wrapper constructors (``optim_wrapper=dict(constructor=...)``)."""
from .layer_decay import LayerDecayOptimWrapperConstructor

__all__ = ['LayerDecayOptimWrapperConstructor']
