"""What tools/train.py and tools/test.py need around mmengine's Runner.

* Checkpoints: nothing here. The tools read them through
  :class:`~mmbackbone.engine.runner.SafeLoadRunner`, which allows the few
  non-tensor types of training checkpoints only while it reads one
  (:mod:`mmbackbone.engine.resume`); no global is allowed process-wide.
* :func:`init_cpu_distributed`: mmengine's ``init_dist`` selects a CUDA
  device, which fails on CPU-only machines; here the process group is
  started directly (gloo) so ``torchrun ... --launcher pytorch`` trains
  on CPU.
"""
import os
import subprocess
import warnings
from datetime import timedelta

import torch.distributed as dist
from mmengine.device import (is_cuda_available, is_mlu_available,
                             is_musa_available, is_npu_available)

LAUNCHERS = ('none', 'pytorch', 'slurm')


def _accelerator_available() -> bool:
    return (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available())


def _slurm_env() -> None:
    """Derive torch.distributed's env:// variables from SLURM's."""
    os.environ['RANK'] = os.environ['SLURM_PROCID']
    os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
    os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')
    os.environ.setdefault('MASTER_PORT', '29500')
    if 'MASTER_ADDR' not in os.environ:
        nodes = os.environ['SLURM_NODELIST']
        os.environ['MASTER_ADDR'] = subprocess.getoutput(
            f'scontrol show hostname {nodes} | head -n1')


def init_cpu_distributed(cfg) -> bool:
    """Start torch.distributed on CPU for ``cfg.launcher``; True if done.

    Does nothing (returns False) without a launcher, with an accelerator
    (mmengine's own ``init_dist`` handles it) or when a process group
    exists. Otherwise the backend is ``env_cfg.dist_cfg.backend`` (nccl is
    replaced by gloo) and the model wrapper is told to use no device ids.
    """
    launcher = cfg.get('launcher', 'none')
    if launcher not in LAUNCHERS:
        raise ValueError(f'launcher={launcher!r}; choose from {LAUNCHERS}')
    if launcher == 'none' or _accelerator_available() or \
            (dist.is_available() and dist.is_initialized()):
        return False
    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = dict(env_cfg.get('dist_cfg') or {})
    backend = dist_cfg.pop('backend', 'gloo')
    if backend != 'gloo':
        warnings.warn(f'env_cfg.dist_cfg.backend={backend!r} needs a GPU; '
                      f"training on CPU with 'gloo'")
        backend = 'gloo'
    if launcher == 'slurm':
        _slurm_env()
    timeout = dist_cfg.pop('timeout', None)
    kwargs = {}
    if timeout is not None:
        kwargs['timeout'] = timedelta(seconds=timeout)
    dist.init_process_group(backend=backend, init_method='env://', **kwargs)
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    wrapper.setdefault('device_ids', None)
    wrapper.setdefault('broadcast_buffers', False)
    wrapper.setdefault('find_unused_parameters',
                       cfg.get('find_unused_parameters', False))
    cfg.model_wrapper_cfg = wrapper
    return True
