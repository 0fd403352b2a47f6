"""Training hooks, one per module (registered in
``mmbackbone.registry.HOOKS``):

* :class:`AtomicCheckpointHook`: checkpoints a killed run cannot corrupt;
* :class:`WorkDirCheckHook`: a work dir that cannot hold the run fails
  before training;
* :class:`NonFiniteLossHook`: a NaN/Inf loss stops training before the
  broken weights are saved.

Example:
    >>> from mmbackbone.registry import HOOKS
    >>> HOOKS.get('NonFiniteLossHook') is NonFiniteLossHook
    True
"""
from .atomic_checkpoint_hook import AtomicCheckpointHook, make_save_atomic
from .non_finite_loss_hook import NonFiniteLossHook
from .work_dir_check_hook import (DEFAULT_MIN_FREE_MB, WorkDirCheckHook,
                                  WorkDirError, check_work_dir,
                                  estimate_checkpoint_mb)

__all__ = ['AtomicCheckpointHook', 'make_save_atomic', 'NonFiniteLossHook',
           'WorkDirCheckHook', 'WorkDirError', 'check_work_dir',
           'estimate_checkpoint_mb', 'DEFAULT_MIN_FREE_MB']
