"""Training helpers around mmengine's Runner (used by tools/train.py)."""
from .config import UnsafeConfigError, load_config
from .faults import (AtomicCheckpointHook, NonFiniteLossHook, WorkDirCheckHook,
                     WorkDirError, check_work_dir, harden_training_config)
from .runtime import (allow_checkpoint_globals, allowed_checkpoint_globals,
                      init_cpu_distributed)

__all__ = ['load_config', 'UnsafeConfigError', 'allow_checkpoint_globals',
           'allowed_checkpoint_globals', 'init_cpu_distributed',
           'AtomicCheckpointHook', 'NonFiniteLossHook', 'WorkDirCheckHook',
           'WorkDirError', 'check_work_dir', 'harden_training_config']
