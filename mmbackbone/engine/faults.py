"""Training faults that must lose nothing: hooks and checks.

mmengine's Runner trusts the disk and the loss. Three things go wrong in
real runs, and each has a guard here:

* **A run killed while it writes a checkpoint.** mmengine writes
  ``epoch_N.pth`` in place, deletes the oldest checkpoint *before* saving
  the new one, and rewrites ``last_checkpoint`` in place: a kill at the
  wrong moment leaves a truncated file, a ``last_checkpoint`` naming it,
  or (with ``max_keep_ckpts=1``) no checkpoint at all.
  :class:`AtomicCheckpointHook` (a drop-in ``CheckpointHook``) writes every
  checkpoint to ``<name>.part`` in the same directory, flushes it to disk
  and renames it over the final name with ``os.replace`` (atomic on POSIX),
  then points ``last_checkpoint`` at it the same way, and only then
  deletes checkpoints beyond ``max_keep_ckpts``. Whenever the process
  dies, ``last_checkpoint`` names a complete file and ``--resume`` works.
  The best checkpoint (``save_best``) is written the same way and the
  previous best is deleted only once the new one is complete (mmengine
  deletes it first); published checkpoints (``published_keys``) are
  written to ``.part`` and renamed too.
* **A work dir that cannot hold the run.** :func:`check_work_dir` (called
  by ``tools/train.py`` before the Runner is built, since the Runner
  itself writes logs there) creates the directory, writes and deletes a
  probe file, and checks the free space. :class:`WorkDirCheckHook`
  re-checks the free space in ``before_run`` against an estimate from the
  built model (checkpoint size x (``max_keep_ckpts`` + 1)). Both raise
  :class:`WorkDirError` naming the directory.
* **A loss that turns NaN or infinite.** :class:`NonFiniteLossHook` checks
  every loss value after each iteration and raises ``FloatingPointError``
  naming the iteration, epoch and value, before any checkpoint of the
  broken weights is written (it runs before the checkpoint hook).

:func:`harden_training_config` adds the three to a config that lacks them
(``tools/train.py`` calls it), so a config with mmengine's plain
``CheckpointHook`` still gets atomic saves, and sets ``runner_type`` to
:class:`~mmbackbone.engine.runner.SafeLoadRunner`, which checks every
checkpoint it loads.

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
import contextlib
import copyreg
import hashlib
import math
import os
import os.path as osp
import shutil
import tempfile
from typing import Any, Optional

from mmengine.hooks import CheckpointHook, Hook

from mmbackbone.registry import HOOKS

#: Free space always required in the work dir (logs, config dump, one
#: small checkpoint), in MiB.
DEFAULT_MIN_FREE_MB = 64
PART_SUFFIX = '.part'


class WorkDirError(OSError):
    """The work dir cannot be created, written, or lacks free space."""


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover (e.g. platforms without dir fds)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old or the new file.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), 'last_checkpoint')
        >>> atomic_write_text(path, 'epoch_1.pth')
        >>> open(path).read()
        'epoch_1.pth'
    """
    directory = osp.dirname(osp.abspath(path))
    tmp = f'{path}.{os.getpid()}{PART_SUFFIX}'
    try:
        with open(tmp, 'w') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def _is_local(path: str) -> bool:
    return '://' not in str(path)


def _inside(directory: str, path: Any, prefix: str = '') -> bool:
    """``path`` is a file directly in ``directory`` named ``prefix*``."""
    if not isinstance(path, str) or not _is_local(path):
        return False
    return (osp.dirname(osp.abspath(path)) == osp.abspath(directory)
            and osp.basename(path).startswith(prefix))


def _reduce_history_buffer(buffer):
    """Pickle a HistoryBuffer without its statistics functions.

    mmengine's ``HistoryBuffer.__getstate__`` adds the class's statistics
    methods to the state; pickle protocol 2 (torch's) stores them as
    ``getattr(HistoryBuffer, 'min')``, a global that
    ``torch.load(weights_only=True)`` (torch >= 2.6's default, used by
    mmengine's resume) refuses, so such a checkpoint cannot be resumed
    safely. The methods are class-level and set again on load.
    """
    state = {k: v for k, v in buffer.__dict__.items()
             if k != 'statistics_methods'}
    return copyreg.__newobj__, (type(buffer), ), state


@contextlib.contextmanager
def _portable_history_buffers():
    from mmengine.logging import HistoryBuffer
    previous = copyreg.dispatch_table.get(HistoryBuffer)
    copyreg.dispatch_table[HistoryBuffer] = _reduce_history_buffer
    try:
        yield
    finally:
        if previous is None:
            copyreg.dispatch_table.pop(HistoryBuffer, None)
        else:
            copyreg.dispatch_table[HistoryBuffer] = previous


def make_save_atomic(runner) -> None:
    """Wrap ``runner.save_checkpoint`` to write ``.part``, then rename.

    The checkpoint is also made loadable with ``weights_only=True`` (see
    :func:`_reduce_history_buffer`). Idempotent. A non-local ``out_dir``
    (``s3://`` ...) is written in place, as mmengine does.
    """
    save = runner.save_checkpoint
    if getattr(save, '_atomic', False):
        return

    def atomic_save(out_dir: str, filename: str, *args, **kwargs):
        from mmengine.dist import is_main_process
        if not _is_local(out_dir) or not is_main_process():
            # other ranks write nothing (save_checkpoint is master-only)
            with _portable_history_buffers():
                return save(out_dir, filename, *args, **kwargs)
        final = osp.join(out_dir, filename)
        part_name = filename + PART_SUFFIX
        part = osp.join(out_dir, part_name)
        try:
            with _portable_history_buffers():
                result = save(out_dir, part_name, *args, **kwargs)
            _fsync_file(part)
            os.replace(part, final)
        except BaseException:
            if osp.exists(part):
                os.remove(part)
            raise
        _fsync_dir(out_dir)
        return result

    atomic_save._atomic = True  # type: ignore[attr-defined]
    runner.save_checkpoint = atomic_save


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook``, crash-safe (same arguments).

    Differences: every checkpoint (latest and best) is written to
    ``<name>.part`` and renamed into place; ``last_checkpoint`` is replaced
    atomically after the checkpoint is complete; checkpoints beyond
    ``max_keep_ckpts`` are deleted only after the new one is safely on
    disk (so ``max_keep_ckpts=1`` never leaves zero checkpoints).

    Example:
        >>> from mmbackbone.registry import HOOKS
        >>> hook = HOOKS.build(dict(type='AtomicCheckpointHook', interval=1,
        ...                         max_keep_ckpts=1))
        >>> type(hook).__name__, hook.max_keep_ckpts
        ('AtomicCheckpointHook', 1)
    """

    def before_train(self, runner) -> None:
        make_save_atomic(runner)
        super().before_train(runner)
        self._forget_foreign_best(runner)

    def _forget_foreign_best(self, runner) -> None:
        """Never delete a "previous best" outside ``out_dir``.

        The best path comes from the resumed checkpoint's message hub; one
        elsewhere (a moved work dir, or a crafted file) is kept on disk
        and no longer tracked, with a warning.
        """
        if not self.save_best or not _is_local(self.out_dir):
            return
        paths = (self.best_ckpt_path_dict if len(self.key_indicators) > 1
                 else {None: self.best_ckpt_path})
        for key, path in list(paths.items()):
            if path is None or _inside(self.out_dir, path, 'best_'):
                continue
            runner.logger.warning(
                f'the resumed checkpoint names {path!r} as the best '
                f'checkpoint, which is not a best_* file in {self.out_dir!r}; '
                f'it will not be deleted when a better one is saved')
            if key is None:
                self.best_ckpt_path = None
            else:
                self.best_ckpt_path_dict[key] = None

    def _save_best_checkpoint(self, runner, metrics) -> None:
        """mmengine 0.10's ``_save_best_checkpoint``, new best first.

        mmengine removes the previous best before it writes the new one;
        here the new one is written (atomically, see
        :func:`make_save_atomic`) and only then is the previous one removed
        (``os.replace`` covers a new best of the same name).
        """
        from mmengine.dist import is_main_process
        if not self.save_best:
            return
        make_save_atomic(runner)
        if self.by_epoch:
            ckpt_filename = self.filename_tmpl.format(runner.epoch)
            cur_type, cur_time = 'epoch', runner.epoch
        else:
            ckpt_filename = self.filename_tmpl.format(runner.iter)
            cur_type, cur_time = 'iter', runner.iter
        meta = dict(epoch=runner.epoch, iter=runner.iter)
        if 'auto' in self.key_indicators:
            self._init_rule(self.rules, [list(metrics.keys())[0]])
        single = len(self.key_indicators) == 1
        best_ckpt_updated = False
        for key_indicator, rule in zip(self.key_indicators, self.rules):
            key_score = metrics[key_indicator]
            if single:
                best_score_key, runtime_key = 'best_score', 'best_ckpt'
                previous = self.best_ckpt_path
            else:
                best_score_key = f'best_score_{key_indicator}'
                runtime_key = f'best_ckpt_{key_indicator}'
                previous = self.best_ckpt_path_dict[key_indicator]
            if best_score_key not in runner.message_hub.runtime_info:
                best_score = self.init_value_map[rule]
            else:
                best_score = runner.message_hub.get_info(best_score_key)
            if key_score is None or not self.is_better_than[key_indicator](
                    key_score, best_score):
                continue
            best_ckpt_updated = True
            best_score = key_score
            runner.message_hub.update_info(best_score_key, best_score)
            best_ckpt_name = f'best_{key_indicator}_{ckpt_filename}'
            best_ckpt_name = best_ckpt_name.replace('/', '_')
            best_path = self.file_backend.join_path(self.out_dir,
                                                    best_ckpt_name)
            if single:
                self.best_ckpt_path = best_path
            else:
                self.best_ckpt_path_dict[key_indicator] = best_path
            runner.message_hub.update_info(runtime_key, best_path)
            runner.save_checkpoint(
                self.out_dir, filename=best_ckpt_name,
                file_client_args=self.file_client_args,
                save_optimizer=False, save_param_scheduler=False, meta=meta,
                by_epoch=False, backend_args=self.backend_args)
            runner.logger.info(
                f'The best checkpoint with {best_score:0.4f} {key_indicator} '
                f'at {cur_time} {cur_type} is saved to {best_ckpt_name}.')
            if previous and previous != best_path and is_main_process():
                # only now that the new best is complete on disk
                if self.file_backend.isfile(previous):
                    self.file_backend.remove(previous)
                elif self.file_backend.isdir(previous):
                    self.file_backend.rmtree(previous)
                else:
                    continue
                runner.logger.info(f'The previous best checkpoint '
                                   f'{previous} is removed')
        # as mmengine: save the latest again so that its message hub names
        # the new best
        if best_ckpt_updated and self.last_ckpt is not None:
            self._save_checkpoint_with_step(runner, cur_time, meta)

    def _publish_model(self, runner, ckpt_path: str) -> None:
        """Write ``<name>-<sha256[:8]>.pth`` with ``published_keys`` only.

        As mmengine's, but the checkpoint is read with
        :func:`~mmbackbone.engine.resume.read_training_checkpoint`, written
        by the main process only, to ``.part`` and renamed, and the hash in
        the name is the published file's sha256 (``sha256sum`` agrees;
        mmengine hashes the pickle in memory instead).
        """
        import torch
        from mmengine.dist import is_main_process

        from mmbackbone.engine.resume import read_training_checkpoint
        if not is_main_process():
            return
        if not _is_local(ckpt_path):
            return super()._publish_model(runner, ckpt_path)
        checkpoint = read_training_checkpoint(ckpt_path,
                                              what='published_keys')
        removed = [k for k in checkpoint if k not in self.published_keys]
        for key in removed:
            checkpoint.pop(key)
        if removed:
            runner.logger.info(
                f'Key {removed} will be removed because they are not found '
                f'in published_keys. If you want to keep them, please set '
                f'`{removed}` in published_keys')
        stem = osp.splitext(ckpt_path)[0]
        part = f'{stem}.publish{PART_SUFFIX}'
        try:
            with _portable_history_buffers():
                torch.save(checkpoint, part)
            _fsync_file(part)
            digest = hashlib.sha256()
            with open(part, 'rb') as f:
                for chunk in iter(lambda: f.read(2**20), b''):
                    digest.update(chunk)
            final = f'{stem}-{digest.hexdigest()[:8]}.pth'
            os.replace(part, final)
        except BaseException:
            if osp.exists(part):
                os.remove(part)
            raise
        _fsync_dir(osp.dirname(osp.abspath(final)))
        runner.logger.info(
            f'The checkpoint ({ckpt_path}) is published to {final}.')

    def _save_checkpoint_with_step(self, runner, step, meta):
        from mmengine.dist import is_main_process
        make_save_atomic(runner)
        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir,
                                                     ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        outdated = []
        if self.max_keep_ckpts > 0 and not (
                self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            # keep_ckpt_ids may be a deque with maxlen (mmengine's
            # before_train): pop before appending, or the id is lost.
            while len(self.keep_ckpt_ids) >= self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids',
                                           list(self.keep_ckpt_ids))
        runner.save_checkpoint(
            self.out_dir, ckpt_filename, self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler, meta=meta,
            by_epoch=self.by_epoch, backend_args=self.backend_args,
            **self.args)
        if not is_main_process():
            return
        atomic_write_text(osp.join(runner.work_dir, 'last_checkpoint'),
                          str(self.last_ckpt))
        for old in outdated:  # only now that the new one is on disk
            path = self.file_backend.join_path(self.out_dir,
                                               self.filename_tmpl.format(old))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):
                self.file_backend.rmtree(path)


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
        mmbackbone.engine.faults.WorkDirError: ...
    """
    if not _is_local(work_dir):
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


def resume_checkpoint_path(cfg) -> Optional[str]:
    """The local checkpoint a run will load (``load_from`` or the latest
    in the work dir for ``resume=True``), or None."""
    path = cfg.get('load_from')
    if not path and cfg.get('resume'):
        from mmengine.runner.checkpoint import find_latest_checkpoint
        path = find_latest_checkpoint(cfg.work_dir) if osp.isdir(
            cfg.work_dir) else None
    if not path or not isinstance(path, str) or not _is_local(path):
        return None
    return path


def check_resume_checkpoint(cfg) -> None:
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
    from mmbackbone.engine.resume import read_training_checkpoint
    what = ('--resume' if cfg.get('resume') else 'load_from') if cfg.get(
        'load_from') else 'last_checkpoint'
    read_training_checkpoint(path, what=what)


def preflight_checks(cfg) -> None:
    """Everything ``tools/train.py`` checks before building the Runner:
    :func:`check_work_dir` and :func:`check_resume_checkpoint`."""
    check_work_dir(cfg.work_dir)
    check_resume_checkpoint(cfg)


def estimate_checkpoint_mb(model, optimizer_slots: int = 2) -> float:
    """Rough size of one training checkpoint of ``model`` in MiB.

    Weights and buffers, plus ``optimizer_slots`` tensors of the size of the
    parameters (Adam keeps two, SGD with momentum one).
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


def _loss_items(outputs: Any):
    if not isinstance(outputs, dict):
        return []
    items = []
    for key, value in outputs.items():
        if 'loss' not in key:
            continue
        try:
            number = float(value.detach().float().mean()
                           if hasattr(value, 'detach') else value)
        except (TypeError, ValueError, RuntimeError):
            continue
        items.append((key, number))
    return items


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Stop training when a loss is NaN or infinite.

    After every training iteration each ``*loss*`` value the model returned
    is checked; a NaN or Inf raises ``FloatingPointError`` naming the
    iteration (1-based, as logged), the epoch and the value. It runs before
    the checkpoint hook, so the broken weights are never saved and the last
    checkpoint stays usable for ``--resume`` (e.g. with a lower lr).

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> hook = NonFiniteLossHook()
        >>> runner = SimpleNamespace(iter=6, epoch=0)
        >>> hook.after_train_iter(runner, 6,
        ...                       outputs={'loss': torch.tensor(1.)})
        >>> hook.after_train_iter(runner, 6,
        ...                       outputs={'loss': torch.tensor(float('nan'))})
        Traceback (most recent call last):
        ...
        FloatingPointError: loss is nan at iteration 7 (epoch 1, batch 7)...
    """

    priority = 'ABOVE_NORMAL'

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        bad = [(k, v) for k, v in _loss_items(outputs)
               if not math.isfinite(v)]
        if not bad:
            return
        key, value = bad[0]
        raise FloatingPointError(
            f'{key} is {value} at iteration {runner.iter + 1} (epoch '
            f'{runner.epoch + 1}, batch {batch_idx + 1}); training stopped '
            f'before saving the broken weights. Lower the learning rate, '
            f'check the data, or enable gradient clipping '
            f'(optim_wrapper.clip_grad), then --resume from the last '
            f'checkpoint')


def _has_hook(cfg, type_name: str) -> bool:
    for hook in cfg.get('custom_hooks') or []:
        name = hook.get('type') if isinstance(hook, dict) else None
        if name in (type_name, f'mmbackbone.{type_name}'):
            return True
    return False


def harden_training_config(cfg):
    """Add the fault guards to a training config (in place; returns it).

    * ``default_hooks.checkpoint`` of type ``CheckpointHook`` becomes
      :class:`AtomicCheckpointHook` (same arguments);
    * :class:`WorkDirCheckHook` and :class:`NonFiniteLossHook` are added to
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
    for name in ('WorkDirCheckHook', 'NonFiniteLossHook'):
        if not _has_hook(cfg, name):
            custom.append(dict(type=name))
    cfg.custom_hooks = custom
    from mmbackbone.engine.runner import use_safe_load_runner
    return use_safe_load_runner(cfg)
