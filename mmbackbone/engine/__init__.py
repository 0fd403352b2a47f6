"""Training helpers around mmengine's Runner (used by tools/train.py).

``SafeLoadRunner`` lives in :mod:`mmbackbone.engine.runner`, imported on
demand (it imports mmengine's runner).
"""
from .config import UnsafeConfigError, load_config
from .faults import (AtomicCheckpointHook, NonFiniteLossHook, WorkDirCheckHook,
                     WorkDirError, check_work_dir, harden_training_config)
from .resume import (CheckpointMismatchError, read_training_checkpoint,
                     training_checkpoint_context)
from .runtime import init_cpu_distributed

__all__ = ['load_config', 'UnsafeConfigError', 'init_cpu_distributed',
           'AtomicCheckpointHook', 'NonFiniteLossHook', 'WorkDirCheckHook',
           'WorkDirError', 'check_work_dir', 'harden_training_config',
           'CheckpointMismatchError', 'read_training_checkpoint',
           'training_checkpoint_context']
