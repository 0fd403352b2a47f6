"""Training helpers around mmengine's Runner (used by tools/train.py).

The hooks are in :mod:`mmbackbone.engine.hooks` (one per module), the
guards tools/train.py applies in :mod:`mmbackbone.engine.faults`, and
``SafeLoadRunner`` in :mod:`mmbackbone.engine.runner`.
"""
from .config import UnsafeConfigError, load_config
from .faults import harden_training_config
from .hooks import (AtomicCheckpointHook, NonFiniteLossHook, WorkDirCheckHook,
                    WorkDirError, check_work_dir)
from .resume import (CheckpointMismatchError, read_training_checkpoint,
                     training_checkpoint_context)
from .runtime import init_cpu_distributed

__all__ = ['load_config', 'UnsafeConfigError', 'init_cpu_distributed',
           'AtomicCheckpointHook', 'NonFiniteLossHook', 'WorkDirCheckHook',
           'WorkDirError', 'check_work_dir', 'harden_training_config',
           'CheckpointMismatchError', 'read_training_checkpoint',
           'training_checkpoint_context']
