"""Optimizer wrappers (``optim_wrapper=dict(type=...)``) and their
constructors (``optim_wrapper=dict(constructor=...)``).

Importing this package registers them in mmbackbone's scope: the
``AmpOptimWrapper`` of :mod:`.amp` (mixed precision on a GPU or, in
bfloat16, on the CPU) and the ``LayerDecayOptimWrapperConstructor`` of
:mod:`.layer_decay`.
"""
from .amp import AmpOptimWrapper, amp_summary, cpu_autocast_dtype
from .layer_decay import LayerDecayOptimWrapperConstructor

__all__ = ['AmpOptimWrapper', 'LayerDecayOptimWrapperConstructor',
           'amp_summary', 'cpu_autocast_dtype']
