"""``AtomicCheckpointHook``: mmengine's ``CheckpointHook`` that a killed run
cannot corrupt.

mmengine writes ``epoch_N.pth`` in place, deletes the oldest checkpoint
*before* saving the new one, and rewrites ``last_checkpoint`` in place: a
kill at the wrong moment leaves a truncated file, a ``last_checkpoint``
naming it, or (with ``max_keep_ckpts=1``) no checkpoint at all. This hook
writes every checkpoint to ``<name>.part`` in the same directory, flushes
it to disk and renames it over the final name with ``os.replace`` (atomic
on POSIX), then points ``last_checkpoint`` at it the same way, and only
then deletes checkpoints beyond ``max_keep_ckpts``. Whenever the process
dies, ``last_checkpoint`` names a complete file and ``--resume`` works. The
best checkpoint (``save_best``) is written the same way and the previous
best is deleted only once the new one is complete (mmengine deletes it
first); published checkpoints (``published_keys``) are written to
``.part`` and renamed too.

Three methods are adapted copies of mmengine 0.10.7's private
``CheckpointHook`` code (:mod:`mmbackbone.engine.upstream` checks the
installed version when this module is imported).
"""
import hashlib
import os.path as osp
from typing import Any

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook

from mmbackbone.registry import HOOKS

from ..atomic import (PART_SUFFIX, atomic_write_text, commit_part, fsync_dir,
                      is_local, portable_history_buffers, removed_on_error)
from ..resume import read_training_checkpoint
from ..upstream import check_mmengine_version

check_mmengine_version(__name__)


def _inside(directory: str, path: Any, prefix: str = '') -> bool:
    """``path`` is a file directly in ``directory`` named ``prefix*``."""
    if not isinstance(path, str) or not is_local(path):
        return False
    return (osp.dirname(osp.abspath(path)) == osp.abspath(directory)
            and osp.basename(path).startswith(prefix))


def make_save_atomic(runner) -> None:
    """Wrap ``runner.save_checkpoint`` to write ``.part``, then rename.

    The checkpoint is also made loadable with ``weights_only=True`` (see
    :func:`~mmbackbone.engine.atomic.portable_history_buffers`).
    Idempotent. A non-local ``out_dir`` (``s3://`` ...) is written in
    place, as mmengine does.
    """
    save = runner.save_checkpoint
    if getattr(save, '_atomic', False):
        return

    def atomic_save(out_dir: str, filename: str, *args, **kwargs):
        if not is_local(out_dir) or not is_main_process():
            # other ranks write nothing (save_checkpoint is master-only)
            with portable_history_buffers():
                return save(out_dir, filename, *args, **kwargs)
        final = osp.join(out_dir, filename)
        part_name = filename + PART_SUFFIX
        part = osp.join(out_dir, part_name)
        with removed_on_error(part):
            with portable_history_buffers():
                result = save(out_dir, part_name, *args, **kwargs)
            commit_part(part, final)
        fsync_dir(out_dir)
        return result

    atomic_save._atomic = True  # type: ignore[attr-defined]
    runner.save_checkpoint = atomic_save


def _remove(backend, path: str) -> bool:
    """Remove a checkpoint file or folder; False when there is none."""
    if backend.isfile(path):
        backend.remove(path)
    elif backend.isdir(path):
        backend.rmtree(path)
    else:
        return False
    return True


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
        if not self.save_best or not is_local(self.out_dir):
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
        """mmengine 0.10.7's ``_save_best_checkpoint``, new best first.

        mmengine removes the previous best before it writes the new one;
        here the new one is written (atomically, see
        :func:`make_save_atomic`) and only then is the previous one removed
        (``os.replace`` covers a new best of the same name).
        """
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
                if not _remove(self.file_backend, previous):
                    continue
                runner.logger.info(f'The previous best checkpoint '
                                   f'{previous} is removed')
        # as mmengine: save the latest again so that its message hub names
        # the new best
        if best_ckpt_updated and self.last_ckpt is not None:
            self._save_checkpoint_with_step(runner, cur_time, meta)

    def _publish_model(self, runner, ckpt_path: str) -> None:
        """Write ``<name>-<sha256[:8]>.pth`` with ``published_keys`` only.

        As mmengine 0.10.7's, but the checkpoint is read with
        :func:`~mmbackbone.engine.resume.read_training_checkpoint`, written
        by the main process only, to ``.part`` and renamed, and the hash in
        the name is the published file's sha256 (``sha256sum`` agrees;
        mmengine hashes the pickle in memory instead).
        """
        if not is_main_process():
            return
        if not is_local(ckpt_path):
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
        with removed_on_error(part):
            with portable_history_buffers():
                torch.save(checkpoint, part)
            digest = hashlib.sha256()
            with open(part, 'rb') as f:
                for chunk in iter(lambda: f.read(2**20), b''):
                    digest.update(chunk)
            final = f'{stem}-{digest.hexdigest()[:8]}.pth'
            commit_part(part, final)
        fsync_dir(osp.dirname(osp.abspath(final)))
        runner.logger.info(
            f'The checkpoint ({ckpt_path}) is published to {final}.')

    def _save_checkpoint_with_step(self, runner, step, meta):
        """mmengine 0.10.7's, with outdated checkpoints deleted last."""
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
            _remove(self.file_backend,
                    self.file_backend.join_path(
                        self.out_dir, self.filename_tmpl.format(old)))
