"""``WorkDirCheckHook`` and :func:`check_work_dir`: a work dir that cannot
hold the run fails before training, naming the directory.

:func:`check_work_dir` (called by ``tools/train.py`` before the Runner is
built, since the Runner itself writes logs there) creates the directory,
writes and deletes a probe file, and checks the free space.
:class:`WorkDirCheckHook` re-checks the free space in ``before_run``
against an estimate from the built model (checkpoint size x
(``max_keep_ckpts`` + 1)). Both raise :class:`WorkDirError`.
"""
import os
import os.path as osp
import shutil
import tempfile
from typing import Optional

from mmengine.hooks import CheckpointHook, Hook
from torch import nn

from mmbackbone.registry import HOOKS

from ..atomic import is_local

#: Free space always required in the work dir (logs, config dump, one
#: small checkpoint), in MiB.
DEFAULT_MIN_FREE_MB = 64


class WorkDirError(OSError):
    """The work dir cannot be created, written, or lacks free space."""


def _nearest_existing(path: str) -> str:
    path = osp.abspath(path)
    while not osp.exists(path) and osp.dirname(path) != path:
        path = osp.dirname(path)
    return path


def check_work_dir(work_dir: str, min_free_mb: float = DEFAULT_MIN_FREE_MB
                   ) -> None:
    """Fail early if ``work_dir`` cannot be created or written, or is full.

    Creates the directory, writes and removes a probe file, and checks
    that at least ``min_free_mb`` MiB are free there.

    Raises:
        WorkDirError: naming the directory and the reason.

    Example:
        >>> import tempfile
        >>> check_work_dir(tempfile.mkdtemp(), min_free_mb=1)
        >>> check_work_dir(tempfile.mkdtemp(), min_free_mb=1e15)
        Traceback (most recent call last):
        ...
        mmbackbone.engine.hooks.work_dir_check_hook.WorkDirError: ...
    """
    if not is_local(work_dir):
        return
    work_dir = str(work_dir)
    try:
        os.makedirs(work_dir, exist_ok=True)
    except OSError as err:
        raise WorkDirError(
            f'work dir {work_dir!r} cannot be created ({err.strerror or err}'
            f'; nearest existing path: {_nearest_existing(work_dir)!r}); '
            f'pass a writable --work-dir') from err
    try:
        fd, probe = tempfile.mkstemp(prefix='.write_probe_', dir=work_dir)
        try:
            os.write(fd, b'0' * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as err:
        raise WorkDirError(
            f'work dir {work_dir!r} is not writable ({err.strerror or err}); '
            f'checkpoints and logs could not be saved. Pass a writable '
            f'--work-dir or free some space') from err
    free = shutil.disk_usage(work_dir).free
    if free < min_free_mb * 2**20:
        raise WorkDirError(
            f'work dir {work_dir!r} has {free / 2**20:.0f} MiB free, less '
            f'than the {min_free_mb:.0f} MiB this run needs (checkpoints, '
            f'logs); free some space or pass another --work-dir')


def estimate_checkpoint_mb(model: nn.Module, optimizer_slots: int = 2
                           ) -> float:
    """Rough size of one training checkpoint of ``model`` in MiB.

    Weights and buffers, plus ``optimizer_slots`` tensors of the size of the
    parameters (Adam keeps two, SGD with momentum one).

    Example:
        >>> round(estimate_checkpoint_mb(nn.Linear(1024, 1024)), 1)
        12.0
    """
    state = sum(t.numel() * t.element_size()
                for t in model.state_dict().values()
                if hasattr(t, 'numel'))
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return (state + optimizer_slots * params) / 2**20


@HOOKS.register_module()
class WorkDirCheckHook(Hook):
    """Refuse to start training when the work dir cannot hold the run.

    In ``before_run``: the work dir and the checkpoint dir must be writable
    and have ``min_free_mb`` MiB free, or, by default, room for
    ``max_keep_ckpts + 1`` checkpoints of the model (estimated from its
    state dict) plus :data:`DEFAULT_MIN_FREE_MB`.

    Args:
        min_free_mb (float, optional): a fixed requirement instead of the
            estimate.

    Example:
        >>> from mmbackbone.registry import HOOKS
        >>> HOOKS.build(dict(type='WorkDirCheckHook', min_free_mb=10)).priority
        'VERY_HIGH'
    """

    priority = 'VERY_HIGH'

    def __init__(self, min_free_mb: Optional[float] = None):
        if min_free_mb is not None and (
                isinstance(min_free_mb, bool)
                or not isinstance(min_free_mb, (int, float))
                or not min_free_mb >= 0):
            raise ValueError(f'min_free_mb={min_free_mb!r} must be a '
                             f'non-negative number of MiB (or None)')
        self.min_free_mb = min_free_mb

    def _required_mb(self, runner) -> float:
        if self.min_free_mb is not None:
            return float(self.min_free_mb)
        keep = 1
        for hook in runner.hooks:
            if isinstance(hook, CheckpointHook):
                keep = hook.max_keep_ckpts if hook.max_keep_ckpts > 0 else 3
        return (DEFAULT_MIN_FREE_MB
                + (keep + 1) * estimate_checkpoint_mb(runner.model))

    def before_run(self, runner) -> None:
        need = self._required_mb(runner)
        dirs = {runner.work_dir}
        for hook in runner.hooks:
            out_dir = getattr(hook, 'out_dir', None)
            if isinstance(hook, CheckpointHook) and isinstance(out_dir, str):
                dirs.add(out_dir)
        for directory in sorted(dirs):
            check_work_dir(directory, need)
        free = shutil.disk_usage(runner.work_dir).free / 2**30
        runner.logger.info(f'work dir {runner.work_dir}: writable, '
                           f'{free:.1f} GiB free (need ~{need:.0f} MiB)')
