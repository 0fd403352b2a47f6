"""The fault guards ``tools/train.py`` gives every run.

mmengine's Runner trusts the disk, the loss and the files it loads. Before
the Runner is built, :func:`harden_training_config` adds the guards to the
config and :func:`preflight_checks` checks what can be checked without it:

* **A run killed while it writes a checkpoint** loses nothing:
  :class:`~mmbackbone.engine.hooks.AtomicCheckpointHook` replaces
  mmengine's ``CheckpointHook``.
* **A work dir that cannot hold the run** fails first:
  :func:`~mmbackbone.engine.hooks.check_work_dir` here, then
  :class:`~mmbackbone.engine.hooks.WorkDirCheckHook` with the built model.
* **A loss that turns NaN or infinite** stops training before the broken
  weights are saved: :class:`~mmbackbone.engine.hooks.NonFiniteLossHook`.
* **A checkpoint that is truncated, unsafe or malformed** fails here
  (:func:`check_resume_checkpoint`) and is read safely by
  :class:`~mmbackbone.engine.runner.SafeLoadRunner`.

Example:
    >>> from mmengine.config import Config
    >>> cfg = Config(dict(default_hooks=dict(
    ...     checkpoint=dict(type='CheckpointHook', interval=1))))
    >>> cfg = harden_training_config(cfg)
    >>> cfg.default_hooks.checkpoint.type
    'AtomicCheckpointHook'
    >>> sorted(h['type'] for h in cfg.custom_hooks)
    ['NonFiniteLossHook', 'WorkDirCheckHook']
    >>> cfg.runner_type
    'SafeLoadRunner'
"""
import os.path as osp
from typing import Optional

from mmengine.config import Config
from mmengine.runner.checkpoint import find_latest_checkpoint

from .atomic import is_local
from .hooks import check_work_dir
from .resume import read_training_checkpoint
from .runner import use_safe_load_runner

#: The hooks every run gets in ``custom_hooks`` (unless already there).
GUARD_HOOKS = ('WorkDirCheckHook', 'NonFiniteLossHook')


def resume_checkpoint_path(cfg: Config) -> Optional[str]:
    """The local checkpoint a run will load (``load_from`` or the latest
    in the work dir for ``resume=True``), or None."""
    path = cfg.get('load_from')
    if not path and cfg.get('resume'):
        path = find_latest_checkpoint(cfg.work_dir) if osp.isdir(
            cfg.work_dir) else None
    if not path or not isinstance(path, str) or not is_local(path):
        return None
    return path


def check_resume_checkpoint(cfg: Config) -> None:
    """Read the checkpoint the run will load, safely, before the Runner.

    A missing, truncated, corrupt, unsafe or malformed file fails here,
    before the Runner writes anything to the work dir, with
    :class:`~mmbackbone.checkpoint.CheckpointError` (or
    ``UnsafeCheckpointError``, ``FileNotFoundError``) naming it. It is read
    as the Runner will read it
    (:func:`~mmbackbone.engine.resume.read_training_checkpoint`); whether
    it fits the model is checked once the model is built.
    """
    path = resume_checkpoint_path(cfg)
    if path is None:
        return
    what = ('--resume' if cfg.get('resume') else 'load_from') if cfg.get(
        'load_from') else 'last_checkpoint'
    read_training_checkpoint(path, what=what)


def preflight_checks(cfg: Config) -> None:
    """Everything ``tools/train.py`` checks before building the Runner:
    :func:`~mmbackbone.engine.hooks.check_work_dir` and
    :func:`check_resume_checkpoint`."""
    check_work_dir(cfg.work_dir)
    check_resume_checkpoint(cfg)


def _has_hook(cfg: Config, type_name: str) -> bool:
    for hook in cfg.get('custom_hooks') or []:
        name = hook.get('type') if isinstance(hook, dict) else None
        if name in (type_name, f'mmbackbone.{type_name}'):
            return True
    return False


def harden_training_config(cfg: Config) -> Config:
    """Add the fault guards to a training config (in place; returns it).

    * ``default_hooks.checkpoint`` of type ``CheckpointHook`` becomes
      ``AtomicCheckpointHook`` (same arguments);
    * ``WorkDirCheckHook`` and ``NonFiniteLossHook`` are added to
      ``custom_hooks`` unless present;
    * ``runner_type`` becomes ``'SafeLoadRunner'`` (another runner is
      refused: see :func:`~mmbackbone.engine.runner.use_safe_load_runner`).
    """
    hooks = cfg.get('default_hooks') or {}
    ckpt = hooks.get('checkpoint') if isinstance(hooks, dict) else None
    if isinstance(ckpt, dict) and ckpt.get('type') in (
            'CheckpointHook', 'mmengine.CheckpointHook'):
        ckpt['type'] = 'AtomicCheckpointHook'
    custom = list(cfg.get('custom_hooks') or [])
    for name in GUARD_HOOKS:
        if not _has_hook(cfg, name):
            custom.append(dict(type=name))
    cfg.custom_hooks = custom
    return use_safe_load_runner(cfg)
