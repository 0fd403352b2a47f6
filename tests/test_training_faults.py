"""Training runs that go wrong lose nothing and run nothing.

Every run here is ``tools/train.py`` on the digits config with a tiny
schedule (16 training images, batch 8, a ResNet-18 with 8 base channels):

* a process killed half-way through writing a checkpoint (a real
  ``os._exit`` in a subprocess, with ``max_keep_ckpts=1``, where plain
  mmengine would already have deleted the previous checkpoint) leaves the
  previous checkpoint complete and named by ``last_checkpoint``, and
  ``--resume`` finishes the run;
* an unwritable or full work dir is reported before the Runner exists;
* a NaN loss stops the run naming the iteration, before a checkpoint of
  the broken weights is written;
* a config naming ``os.system``, a YAML file with a
  ``!!python/object/apply`` tag, and a resume checkpoint whose unpickling
  would run code all fail with a clear error and leave no marker file.
"""
import json
import os
import os.path as osp
import subprocess
import sys
import textwrap
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from mmbackbone.checkpoint import (CheckpointError, UnsafeCheckpointError,
                                   read_state_dict)
from mmbackbone.engine import (UnsafeConfigError, WorkDirError,
                               harden_training_config)
from mmbackbone.engine.atomic import atomic_write_text
from mmbackbone.engine.hooks import check_work_dir

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / 'configs' / 'resnet' / 'resnet18_digits.py')
TINY = [
    'train_cfg.max_epochs=2', 'train_dataloader.dataset.indices=16',
    'val_dataloader.dataset.indices=16', 'train_dataloader.batch_size=8',
    'val_dataloader.batch_size=16', 'model.backbone.base_channels=8',
    'model.backbone.stem_channels=8', 'model.head.in_channels=64',
    'default_hooks.logger.interval=1', 'log_level=WARNING',
]


def _train_main():
    sys.path.insert(0, str(ROOT / 'tools'))
    try:
        import train
    finally:
        sys.path.pop(0)
    return train.main


def train(work_dir, *extra, options=(), config=CONFIG):
    """Run tools/train.py's main in this process; returns the runner."""
    argv = [str(config), '--work-dir', str(work_dir), *extra,
            '--cfg-options', *TINY, *options]
    return _train_main()(argv)


def derived_config(tmp_path, text: str) -> Path:
    """A config inheriting the digits config, plus ``text``."""
    path = tmp_path / 'derived.py'
    path.write_text(f'_base_ = [{CONFIG!r}]\n' + textwrap.dedent(text))
    return path


@pytest.fixture(autouse=True)
def _fresh_mmengine_state():
    """Each in-process run gets its own mmengine instances (logger names)."""
    yield
    from mmengine.registry import DefaultScope
    DefaultScope._instance_dict.clear()


# --------------------------------------------------- killed while saving
KILL_DRIVER = textwrap.dedent('''
    import os, sys
    from mmengine.fileio.backends import LocalBackend
    original = LocalBackend.put
    saves = []

    def put(self, obj, filepath):
        if str(filepath).endswith(('.pth', '.pth.part')):
            saves.append(filepath)
            if len(saves) == 2:  # die half-way through the second save
                with open(filepath, 'wb') as f:
                    f.write(obj[:len(obj) // 2])
                    f.flush()
                os._exit(137)
        return original(self, obj, filepath)

    LocalBackend.put = put
    sys.path.insert(0, {tools!r})
    import train
    train.main(sys.argv[1:])
''')


def test_killed_during_checkpoint_write_loses_nothing_and_resumes(tmp_path):
    work_dir = tmp_path / 'work'
    driver = tmp_path / 'driver.py'
    driver.write_text(KILL_DRIVER.format(tools=str(ROOT / 'tools')))
    argv = [sys.executable, str(driver), CONFIG, '--work-dir', str(work_dir),
            '--cfg-options', *TINY,
            'default_hooks.checkpoint.max_keep_ckpts=1']
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 137, proc.stderr[-3000:]
    files = sorted(os.listdir(work_dir))
    # The half-written second checkpoint never took the final name, and the
    # first one was not deleted before the second was complete.
    assert 'epoch_2.pth' not in files, files
    assert 'epoch_1.pth' in files, files
    last = (work_dir / 'last_checkpoint').read_text().strip()
    assert Path(last) == work_dir / 'epoch_1.pth'
    checkpoint = torch.load(last, map_location='cpu', weights_only=False)
    assert checkpoint['meta']['epoch'] == 1
    assert read_state_dict(last)  # complete and readable
    partial = [f for f in files if f.endswith('.part')]
    assert partial == ['epoch_2.pth.part'], files

    runner = train(work_dir, '--resume', options=[
        'default_hooks.checkpoint.max_keep_ckpts=1'])
    assert runner.epoch == 2 and runner.iter == 4
    files = sorted(os.listdir(work_dir))
    assert 'epoch_2.pth' in files and 'epoch_1.pth' not in files, files
    assert torch.load(work_dir / 'epoch_2.pth', map_location='cpu',
                      weights_only=False)['meta']['epoch'] == 2
    assert (work_dir / 'last_checkpoint').read_text().strip() == str(
        work_dir / 'epoch_2.pth')


def test_two_runs_in_one_second_keep_their_own_logs(tmp_path, monkeypatch):
    """mmengine shares a visualizer/message hub between same-second runs."""
    import time
    frozen = time.time()
    monkeypatch.setattr(time, 'time', lambda: frozen)
    first = train(tmp_path / 'a')
    second = train(tmp_path / 'b')
    monkeypatch.undo()
    assert first.timestamp != second.timestamp
    assert first.visualizer is not second.visualizer
    assert first.message_hub is not second.message_hub
    for runner, work_dir in ((first, tmp_path / 'a'), (second, tmp_path / 'b')):
        assert Path(runner.log_dir).parent == work_dir
        scalars = Path(runner.log_dir) / 'vis_data' / 'scalars.json'
        epochs = [json.loads(line).get('epoch')
                  for line in scalars.read_text().splitlines()]
        # 2 epochs x 2 iterations of this run only, plus 2 validations
        assert sorted(e for e in epochs if e) == [1, 1, 2, 2], epochs


def test_failed_save_in_process_leaves_previous_checkpoint(tmp_path,
                                                           monkeypatch):
    """An exception (disk full) during a save: same guarantees in-process."""
    from mmengine.fileio.backends import LocalBackend
    original, saves = LocalBackend.put, []

    def put(self, obj, filepath):
        if str(filepath).endswith('.part'):
            saves.append(filepath)
            if len(saves) == 2:
                with open(filepath, 'wb') as f:
                    f.write(obj[:100])
                raise OSError(28, 'No space left on device')
        return original(self, obj, filepath)

    monkeypatch.setattr(LocalBackend, 'put', put)
    with pytest.raises(OSError, match='No space left'):
        train(tmp_path, options=['default_hooks.checkpoint.max_keep_ckpts=1'])
    files = sorted(os.listdir(tmp_path))
    assert 'epoch_1.pth' in files and 'epoch_2.pth' not in files, files
    assert not [f for f in files if f.endswith('.part')], files
    assert read_state_dict(tmp_path / 'epoch_1.pth')


def test_atomic_write_text_keeps_old_content_on_failure(tmp_path,
                                                        monkeypatch):
    path = tmp_path / 'last_checkpoint'
    atomic_write_text(str(path), 'epoch_1.pth')
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    def failing_replace(src, dst):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(os, 'replace', failing_replace)
    with pytest.raises(OSError):
        atomic_write_text(str(path), 'epoch_2.pth')
    assert path.read_text() == 'epoch_1.pth'
    assert os.listdir(tmp_path) == ['last_checkpoint']


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------ work dirs
def test_unwritable_work_dir_is_reported_before_anything_runs(tmp_path):
    blocker = tmp_path / 'not_a_dir'
    blocker.write_text('a file where the work dir should go')
    work_dir = blocker / 'run'
    with pytest.raises(WorkDirError, match=rf"work dir '{work_dir}' cannot "
                                           r'be created'):
        train(work_dir)
    assert sorted(os.listdir(tmp_path)) == ['not_a_dir']


def test_full_disk_is_reported_before_the_runner_exists(tmp_path,
                                                        monkeypatch):
    import shutil
    usage = namedtuple('usage', 'total used free')
    monkeypatch.setattr(shutil, 'disk_usage',
                        lambda path: usage(10 * 2**30, 10 * 2**30, 2**20))
    work_dir = tmp_path / 'run'
    with pytest.raises(WorkDirError,
                       match=rf"work dir '{work_dir}' has 1 MiB free, less "
                             r'than the 64 MiB'):
        train(work_dir)
    assert os.listdir(work_dir) == []  # no logs, no config dump


def test_free_space_for_the_checkpoints_is_checked_before_training(tmp_path):
    """The hook's check: room for max_keep_ckpts + 1 checkpoints."""
    with pytest.raises(WorkDirError, match=rf"work dir '{tmp_path}' has "
                                           r'\d+ MiB free, less than'):
        train(tmp_path, config=derived_config(tmp_path, """
            custom_hooks = [dict(type='WorkDirCheckHook', min_free_mb=1e12)]
            """))
    assert not [f for f in os.listdir(tmp_path) if f.endswith('.pth')]


def test_check_work_dir_accepts_a_normal_dir(tmp_path):
    check_work_dir(str(tmp_path / 'new' / 'dir'), min_free_mb=1)
    assert os.listdir(tmp_path / 'new' / 'dir') == []  # probe removed


# ------------------------------------------------------------- NaN loss
def test_nan_loss_stops_the_run_naming_the_iteration(tmp_path):
    with pytest.raises(FloatingPointError,
                       match=r'loss is (nan|inf|-inf) at iteration (\d+) '
                             r'\(epoch 1, batch \2\)') as info:
        train(tmp_path, options=['optim_wrapper.optimizer.lr=1e12',
                                 'param_scheduler=[]'])
    assert 'training stopped before saving' in str(info.value)
    assert not [f for f in os.listdir(tmp_path) if f.endswith('.pth')]


def test_nan_hook_checks_every_loss_value():
    from types import SimpleNamespace
    from mmbackbone.engine import NonFiniteLossHook
    hook, runner = NonFiniteLossHook(), SimpleNamespace(iter=41, epoch=2)
    finite = {'loss': torch.tensor(0.5), 'loss_cls': 0.25,
              'accuracy': float('nan')}  # not a loss: not checked
    hook.after_train_iter(runner, 3, outputs=finite)
    hook.after_train_iter(runner, 3, outputs=None)
    with pytest.raises(FloatingPointError,
                       match=r'loss_aux is inf at iteration 42 \(epoch 3, '
                             r'batch 4\)'):
        hook.after_train_iter(runner, 3, outputs={
            'loss': torch.tensor(1.0), 'loss_aux': torch.tensor(float('inf'))})


def test_harden_keeps_custom_hooks_and_arguments():
    from mmengine.config import Config
    cfg = Config(dict(
        default_hooks=dict(checkpoint=dict(type='CheckpointHook',
                                           interval=3, max_keep_ckpts=1)),
        custom_hooks=[dict(type='NonFiniteLossHook'),
                      dict(type='EMAHook')]))
    cfg = harden_training_config(cfg)
    assert cfg.default_hooks.checkpoint == dict(
        type='AtomicCheckpointHook', interval=3, max_keep_ckpts=1)
    assert [h['type'] for h in cfg.custom_hooks] == [
        'NonFiniteLossHook', 'EMAHook', 'WorkDirCheckHook']


# ---------------------------------------------- configs cannot run code
def test_config_type_os_system_is_refused_before_anything_is_built(tmp_path):
    marker = tmp_path / 'ran'
    work_dir = tmp_path / 'work'
    with pytest.raises(ValueError,
                       match=r"cfg\.model\.backbone\.type='os\.system'"):
        train(work_dir, options=['model.backbone.type=os.system',
                                 f'model.backbone.command=touch {marker}'])
    assert not marker.exists() and not work_dir.exists()


@pytest.mark.parametrize('hook_type', [
    'mmengine.dump',  # a registered scope, an unregistered function
    'mmengine.runner.runner.os.system',  # an import path behind a scope
])
def test_import_paths_behind_a_known_scope_are_refused(tmp_path, hook_type):
    marker = tmp_path / 'ran'
    with pytest.raises(KeyError, match=r'cfg\.custom_hooks\[0\]\.type=.*'
                                       r'not registered in scope'):
        train(tmp_path / 'work', config=derived_config(tmp_path, f"""
            custom_hooks = [dict(type='{hook_type}', obj=1, file='{marker}',
                                 command='touch {marker}')]
            """))
    assert not marker.exists() and not (tmp_path / 'work').exists()


def test_yaml_python_tag_is_refused_and_not_run(tmp_path):
    marker = tmp_path / 'ran'
    config = tmp_path / 'evil.yaml'
    config.write_text(textwrap.dedent(f'''\
        _base_: {ROOT / 'configs' / 'resnet' / 'resnet18_digits.yaml'}
        model:
          backbone: !!python/object/apply:os.system ["touch {marker}"]
        '''))
    with pytest.raises(UnsafeConfigError,
                       match=r'python/object/apply.*nothing in the file was '
                             r'run'):
        _train_main()([str(config), '--work-dir', str(tmp_path / 'work')])
    assert not marker.exists() and not (tmp_path / 'work').exists()


def test_truncated_last_checkpoint_is_named_before_the_runner(tmp_path):
    ckpt = tmp_path / 'epoch_3.pth'
    torch.save({'state_dict': {'w': torch.ones(1000)}}, ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:700])
    (tmp_path / 'last_checkpoint').write_text(str(ckpt))
    with pytest.raises(CheckpointError, match=rf'checkpoint {ckpt} is '
                                              r'truncated or corrupt'):
        train(tmp_path, '--resume')
    assert sorted(os.listdir(tmp_path)) == ['epoch_3.pth', 'last_checkpoint']


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f'open({self.marker!r}, "w").write("ran")', ))


@pytest.mark.parametrize('how', ['resume', 'load_from'])
def test_checkpoint_that_would_run_code_is_refused(tmp_path, how):
    marker = tmp_path / 'ran'
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'meta': _Payload(str(marker))}, evil)
    with pytest.raises(UnsafeCheckpointError,
                       match=rf'checkpoint {evil} needs unsafe unpickling '
                             r'\(blocked globals: builtins\.exec'):
        if how == 'resume':
            train(tmp_path / 'work', '--resume', str(evil))
        else:
            train(tmp_path / 'work', options=[f'load_from={evil}'])
    assert not marker.exists()
    # The payload is real: unpickling it unsafely does write the marker.
    torch.load(evil, weights_only=False)
    assert marker.read_text() == 'ran'


# ------------------------------------------- training checkpoints, loaded
def _save_hostile_history_buffer(path, method):
    """A checkpoint whose HistoryBuffer state carries statistics functions
    (``method`` is a global torch allows: no code of its own runs)."""
    import copyreg

    import numpy as np
    from mmengine.logging import HistoryBuffer
    state = {'_log_history': np.array([1.0]), '_count_history': np.array([1]),
             'max_length': 10,
             'statistics_methods': {'mean': method, 'min': method}}
    checkpoint = {'meta': {'epoch': 1, 'iter': 2},
                  'state_dict': {'w': torch.ones(2)},
                  'message_hub': {'log_scalars': {'train/loss':
                                                  HistoryBuffer()},
                                  'runtime_info': {}, 'resumed_keys': {}}}
    copyreg.dispatch_table[HistoryBuffer] = lambda buffer: (
        copyreg.__newobj__, (HistoryBuffer, ), state)
    try:
        torch.save(checkpoint, path)
    finally:
        del copyreg.dispatch_table[HistoryBuffer]


def test_hostile_history_buffer_leaves_the_class_table_alone(tmp_path):
    from collections import OrderedDict

    from mmengine.logging import HistoryBuffer

    from mmbackbone.engine import read_training_checkpoint
    evil = tmp_path / 'epoch_1.pth'
    _save_hostile_history_buffer(evil, OrderedDict)
    table = dict(HistoryBuffer._statistics_methods)
    safe = set(map(repr, torch.serialization.get_safe_globals()))
    with pytest.raises(CheckpointError,
                       match=rf"checkpoint {evil}: message_hub log scalar "
                             r"'train/loss' holds \['statistics_methods'\]; "
                             r'only .* are read'):
        read_training_checkpoint(evil)
    (tmp_path / 'last_checkpoint').write_text(str(evil))
    with pytest.raises(CheckpointError, match='statistics_methods'):
        train(tmp_path, '--resume')
    with pytest.raises(CheckpointError, match='statistics_methods'):
        train(tmp_path / 'w', options=[f'load_from={evil}'])
    assert HistoryBuffer._statistics_methods == table
    assert set(map(repr, torch.serialization.get_safe_globals())) == safe
    # The file is real: allow-listing the class itself (as this library
    # once did, process-wide) rewrites the table of every buffer.
    try:
        from mmbackbone.engine.resume import _numpy_globals
        with torch.serialization.safe_globals([HistoryBuffer,
                                               *_numpy_globals()]):
            torch.load(evil, weights_only=True)
        assert HistoryBuffer._statistics_methods['mean'] is OrderedDict
    finally:
        HistoryBuffer._statistics_methods.clear()
        HistoryBuffer._statistics_methods.update(table)


@pytest.mark.parametrize('real', ['HistoryBuffer', 'getattr'])
def test_training_checkpoint_globals_are_never_process_wide(tmp_path, real):
    from mmengine.logging import HistoryBuffer

    from mmbackbone.engine import read_training_checkpoint
    from mmbackbone.engine.resume import training_checkpoint_globals
    path = tmp_path / 'w.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}}, path)
    read_training_checkpoint(path)
    allowed = torch.serialization.get_safe_globals()
    assert not [g for g in [HistoryBuffer, getattr,
                            *training_checkpoint_globals()]
                if g in allowed]
    real, name = ((HistoryBuffer, "mmengine's HistoryBuffer")
                  if real == 'HistoryBuffer' else (getattr, 'the builtin '
                                                            'getattr'))
    torch.serialization.add_safe_globals([real])
    try:
        with pytest.raises(RuntimeError, match=f'safe globals hold {name}'):
            read_training_checkpoint(path)
    finally:
        torch.serialization._weights_only_unpickler._remove_safe_globals(
            [real])


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """One finished 1-epoch run with save_best: (work dir, runner)."""
    from mmengine.registry import DefaultScope
    work_dir = tmp_path_factory.mktemp('trained')
    runner = train(work_dir, options=[
        'train_cfg.max_epochs=1',
        'default_hooks.checkpoint.save_best=accuracy/top1',
        'default_hooks.checkpoint.rule=greater'])
    DefaultScope._instance_dict.clear()
    return work_dir, runner


def _copy_run(trained, tmp_path) -> Path:
    import shutil
    work_dir = tmp_path / 'run'
    shutil.copytree(trained[0], work_dir)
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'epoch_1.pth'))
    return work_dir


FOREIGN_MODEL = ['model.backbone.base_channels=16',
                 'model.backbone.stem_channels=16',
                 'model.head.in_channels=128']


@pytest.mark.parametrize('how', ['resume', 'load_from'])
def test_another_models_checkpoint_is_named_not_loaded(trained, tmp_path,
                                                       how):
    from mmbackbone.engine import CheckpointMismatchError
    ckpt = trained[0] / 'epoch_1.pth'
    extra = ['--resume', str(ckpt)] if how == 'resume' else []
    options = FOREIGN_MODEL + ([] if extra else [f'load_from={ckpt}'])
    with pytest.raises(CheckpointMismatchError,
                       match=rf'checkpoint {ckpt} does not fit the model: '
                             r'\d+ tensors have other shapes \(backbone\.'
                             r'.*in the file.*in the model.*use that config, '
                             r"or .*prefix='backbone'"):
        train(tmp_path / 'w', *extra, options=options)
    assert not list((tmp_path / 'w').glob('*.pth'))


def test_missing_and_unexpected_keys_are_listed(trained, tmp_path):
    from mmbackbone.engine import CheckpointMismatchError
    state = torch.load(trained[0] / 'epoch_1.pth', weights_only=False)
    state = dict(state['state_dict'])
    state.pop('head.fc.bias')
    state['head.extra'] = torch.zeros(1)
    path = tmp_path / 'edited.pth'
    torch.save({'state_dict': state}, path)
    with pytest.raises(CheckpointMismatchError,
                       match=rf"checkpoint {path} does not fit the model: "
                             r"keys 1 missing \('head\.fc\.bias'\); 1 "
                             r"unexpected \('head\.extra'\)"):
        train(tmp_path / 'w', options=[f'load_from={path}'])


def test_resume_with_another_optimizer_is_named(trained, tmp_path):
    from mmbackbone.engine import CheckpointMismatchError
    ckpt = trained[0] / 'epoch_1.pth'
    with pytest.raises(CheckpointMismatchError,
                       match=rf"checkpoint {ckpt}: optimizer group 0 lacks "
                             r"\['amsgrad', 'betas', 'eps'\]: it was written "
                             r'by another optimizer type'):
        train(tmp_path / 'w', '--resume', str(ckpt),
              config=derived_config(tmp_path, """
                  optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                                       optimizer=dict(type='Adam', lr=1e-3))
                  """))


def test_resume_of_a_weights_only_file_is_named(trained, tmp_path):
    from mmbackbone.checkpoint import read_state_dict as read
    weights = tmp_path / 'weights.pth'
    torch.save(read(trained[0] / 'epoch_1.pth'), weights)
    with pytest.raises(CheckpointError,
                       match=rf'--resume: checkpoint {weights} is not a '
                             r'training checkpoint .* use load_from|'
                             rf'--resume: checkpoint {weights} is not a '
                             r'training checkpoint .*load_from'):
        train(tmp_path / 'w', '--resume', str(weights))


def test_resume_never_builds_a_config_from_the_file(trained, tmp_path):
    """mmengine's resume parses meta['config'] as a Python config (it runs
    it); ours never reads that key."""
    from mmbackbone.engine.atomic import \
        portable_history_buffers as _portable_history_buffers
    work_dir = _copy_run(trained, tmp_path)
    marker = tmp_path / 'ran'
    ckpt = work_dir / 'epoch_1.pth'
    checkpoint = torch.load(ckpt, weights_only=False)
    checkpoint['meta']['config'] = f'open({str(marker)!r}, "w")\n'
    with _portable_history_buffers():
        torch.save(checkpoint, ckpt)
    runner = train(work_dir, '--resume', options=['train_cfg.max_epochs=2'])
    assert runner.epoch == 2 and not marker.exists()


def test_resumed_best_path_outside_the_work_dir_is_never_deleted(
        trained, tmp_path):
    from mmbackbone.engine.atomic import \
        portable_history_buffers as _portable_history_buffers
    work_dir = _copy_run(trained, tmp_path)
    victim = tmp_path / 'best_precious.pth'
    victim.write_bytes(b'keep me')
    ckpt = work_dir / 'epoch_1.pth'
    checkpoint = torch.load(ckpt, weights_only=False)
    info = checkpoint['message_hub']['runtime_info']
    info['best_ckpt'], info['best_score'] = str(victim), -1.0
    with _portable_history_buffers():
        torch.save(checkpoint, ckpt)
    train(work_dir, '--resume', options=[
        'train_cfg.max_epochs=2',
        'default_hooks.checkpoint.save_best=accuracy/top1',
        'default_hooks.checkpoint.rule=greater'])
    assert victim.read_bytes() == b'keep me'
    assert (work_dir / 'best_accuracy_top1_epoch_2.pth').is_file()
    (work_dir / 'last_checkpoint').write_text(str(ckpt))
    info['keep_ckpt_ids'] = ['../../x']
    with _portable_history_buffers():
        torch.save(checkpoint, ckpt)
    with pytest.raises(CheckpointError, match=r"keep_ckpt_ids=\['\.\./\.\./x'"
                                              r'\] is not a list of epoch'):
        train(work_dir, '--resume')


# ----------------------------------------------- best checkpoint, killed
class _Killed(BaseException):
    """Stands for SIGKILL: raised at one step of a checkpoint write."""


def _loadable(path) -> bool:
    from mmbackbone.engine import read_training_checkpoint
    try:
        return bool(read_training_checkpoint(path)['state_dict'])
    except (CheckpointError, FileNotFoundError):
        return False


@pytest.mark.parametrize('same_name', [False, True])
def test_kill_at_any_step_of_a_best_save_keeps_a_loadable_best(
        trained, tmp_path, monkeypatch, same_name):
    """Fault at write step k (every k): the disk as a kill then leaves it
    still holds a loadable best and a loadable last_checkpoint."""
    import copy
    import shutil

    from mmengine.fileio.backends import LocalBackend

    from mmbackbone.engine import AtomicCheckpointHook
    work_dir, runner = trained
    hook = next(h for h in runner.hooks
                if isinstance(h, AtomicCheckpointHook))
    old_best = work_dir / 'best_accuracy_top1_epoch_1.pth'
    assert _loadable(old_best) and Path(hook.best_ckpt_path) == old_best
    pristine = tmp_path / 'pristine'
    shutil.copytree(work_dir, pristine)
    hook_state = copy.deepcopy({k: v for k, v in hook.__dict__.items()
                                if k in ('best_ckpt_path', 'keep_ckpt_ids',
                                         'last_ckpt')})
    epoch = 1 if same_name else 2
    new_best = work_dir / f'best_accuracy_top1_epoch_{epoch}.pth'
    steps, kill_at = [], [None]
    real = {'put': LocalBackend.put, 'replace': os.replace,
            'remove': os.remove, 'fsync': os.fsync}

    def step(name, *args):
        steps.append(name)
        if len(steps) == kill_at[0]:
            shutil.copytree(work_dir, tmp_path / f'killed_{len(steps)}')
            if name == 'put':  # half the bytes reach the disk
                with open(args[1], 'wb') as f:
                    f.write(args[0][:len(args[0]) // 2])
                shutil.rmtree(tmp_path / f'killed_{len(steps)}')
                shutil.copytree(work_dir, tmp_path / f'killed_{len(steps)}')
            raise _Killed(name)

    monkeypatch.setattr(LocalBackend, 'put', lambda self, obj, path: (
        step('put', obj, path), real['put'](self, obj, path))[1])
    monkeypatch.setattr(os, 'replace', lambda a, b: (
        step('replace'), real['replace'](a, b))[1])
    monkeypatch.setattr(os, 'remove', lambda p: (
        step('remove'), real['remove'](p))[1])
    monkeypatch.setattr(os, 'fsync', lambda fd: (
        step('fsync'), real['fsync'](fd))[1])

    def save_best(k):
        shutil.rmtree(work_dir)
        shutil.copytree(pristine, work_dir)
        hook.__dict__.update(copy.deepcopy(hook_state))
        runner.message_hub.update_info('best_score', 0.0)
        runner.message_hub.update_info('best_ckpt', str(old_best))
        runner.train_loop._epoch = epoch
        steps.clear()
        kill_at[0] = k
        try:
            hook._save_best_checkpoint(runner, {'accuracy/top1': 99.0})
        except _Killed:
            return True
        return False

    try:
        k = 1
        while save_best(k):
            disk = tmp_path / f'killed_{k}'
            bests = sorted(disk.glob('best_*.pth'))
            assert [b for b in bests if _loadable(b)], (k, steps, bests)
            last = Path((disk / 'last_checkpoint').read_text().strip())
            assert _loadable(disk / last.name), (k, steps)
            k += 1
        kinds = set(steps)
        assert {'put', 'replace', 'fsync'} <= kinds and k > 6, steps
        if not same_name:
            assert 'remove' in kinds
        assert _loadable(new_best)
        assert sorted(p.name for p in work_dir.glob('best_*')) == [
            new_best.name]
        assert not list(work_dir.glob('*.part'))
    finally:
        monkeypatch.undo()
        shutil.rmtree(work_dir)
        shutil.copytree(pristine, work_dir)
        hook.__dict__.update(copy.deepcopy(hook_state))
        runner.train_loop._epoch = 1


def test_published_checkpoint_is_named_by_its_sha256(trained, tmp_path,
                                                     monkeypatch):
    import hashlib

    from mmbackbone.engine import AtomicCheckpointHook
    work_dir, runner = trained
    hook = next(h for h in runner.hooks
                if isinstance(h, AtomicCheckpointHook))
    source = tmp_path / 'epoch_1.pth'
    source.write_bytes((work_dir / 'epoch_1.pth').read_bytes())
    monkeypatch.setattr(hook, 'published_keys', ['meta', 'state_dict'])

    def failing_replace(src, dst):
        raise OSError(28, 'No space left on device')

    with monkeypatch.context() as patch:
        patch.setattr(os, 'replace', failing_replace)
        with pytest.raises(OSError, match='No space'):
            hook._publish_model(runner, str(source))
    assert sorted(os.listdir(tmp_path)) == ['epoch_1.pth']
    hook._publish_model(runner, str(source))
    published = [p for p in tmp_path.iterdir() if p.name != 'epoch_1.pth']
    assert len(published) == 1, published
    sha = hashlib.sha256(published[0].read_bytes()).hexdigest()
    assert published[0].name == f'epoch_1-{sha[:8]}.pth'
    assert sorted(torch.load(published[0], weights_only=True)) == [
        'meta', 'state_dict']


# ------------------------------------ checkpoints written by plain mmengine
def _toy_model():
    from mmengine.model import BaseModel
    from torch import nn

    class Toy(BaseModel):

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x, mode='tensor'):
            out = self.fc(x)
            return dict(loss=out.pow(2).mean()) if mode == 'loss' else out

    return Toy()


class _ToyData(torch.utils.data.Dataset):

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return dict(x=torch.full((4, ), float(i)))


def _toy_runner(runner_cls, work_dir, epochs, **kwargs):
    return runner_cls(
        model=_toy_model(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=_ToyData(), batch_size=4,
                              sampler=dict(type='DefaultSampler',
                                           shuffle=False),
                              collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        param_scheduler=dict(type='MultiStepLR', milestones=[1],
                             by_epoch=True),
        train_cfg=dict(by_epoch=True, max_epochs=epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook',
                                           interval=1)),
        default_scope='mmengine', log_level='WARNING', **kwargs)


@pytest.fixture(scope='module')
def plain_mmengine_checkpoint(tmp_path_factory):
    """epoch_1.pth of a run of mmengine's own Runner and CheckpointHook
    (no hook of this library): its message hub pickles the statistics
    methods as getattr(HistoryBuffer, 'min')."""
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner
    work_dir = tmp_path_factory.mktemp('plain')
    _toy_runner(Runner, work_dir, epochs=1).train()
    DefaultScope._instance_dict.clear()
    path = work_dir / 'epoch_1.pth'
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    assert 'builtins.getattr' in unsafe, unsafe  # the case under test
    return path


def test_plain_mmengine_checkpoint_reads_without_calling_getattr(
        plain_mmengine_checkpoint, monkeypatch):
    from mmengine.logging import HistoryBuffer

    from mmbackbone.engine import read_training_checkpoint
    path = plain_mmengine_checkpoint
    HistoryBuffer()  # the class table holds mmengine's defaults
    marker = object()
    monkeypatch.setitem(HistoryBuffer._statistics_methods, 'min', marker)
    table = dict(HistoryBuffer._statistics_methods)
    checkpoint = read_training_checkpoint(path)
    # mmengine's __setstate__ would have put HistoryBuffer.min back
    assert HistoryBuffer._statistics_methods == table
    assert HistoryBuffer._statistics_methods['min'] is marker
    full = torch.load(path, weights_only=False)
    scalars = checkpoint['message_hub']['log_scalars']
    assert list(scalars) == list(full['message_hub']['log_scalars'])
    for key, buffer in scalars.items():
        assert type(buffer) is HistoryBuffer
        assert 'statistics_methods' not in vars(buffer)
        expected = full['message_hub']['log_scalars'][key]
        assert buffer.data[0].tolist() == expected.data[0].tolist()
    assert torch.equal(checkpoint['state_dict']['fc.weight'],
                       full['state_dict']['fc.weight'])


def test_plain_mmengine_checkpoint_resumes(plain_mmengine_checkpoint,
                                           tmp_path):
    from mmbackbone.engine.runner import SafeLoadRunner
    work_dir = tmp_path / 'w'
    runner = _toy_runner(SafeLoadRunner, work_dir, epochs=2, resume=True,
                         load_from=str(plain_mmengine_checkpoint))
    runner.train()
    assert runner.epoch == 2 and runner.iter == 4
    # only the second epoch ran
    assert sorted(p.name for p in work_dir.glob('*.pth')) == ['epoch_2.pth']


def test_plain_mmengine_checkpoint_as_load_from(plain_mmengine_checkpoint,
                                                tmp_path):
    from mmbackbone.engine.runner import SafeLoadRunner
    runner = _toy_runner(SafeLoadRunner, tmp_path / 'w', epochs=1,
                         load_from=str(plain_mmengine_checkpoint))
    runner.load_or_resume()
    saved = torch.load(plain_mmengine_checkpoint, weights_only=False)
    for key, value in runner.model.state_dict().items():
        assert torch.equal(value, saved['state_dict'][key]), key


def _save_with_getattr(path, where):
    """A training checkpoint with getattr(HistoryBuffer, 'min') in ``where``
    ('meta') or an OrderedDict method among the statistics ('methods')."""
    from collections import OrderedDict

    from mmengine.logging import HistoryBuffer
    checkpoint = {'meta': {'epoch': 1, 'iter': 2},
                  'state_dict': {'w': torch.ones(2)},
                  'message_hub': {'log_scalars': {
                      'loss': HistoryBuffer([1.0], [1])},
                      'runtime_info': {}, 'resumed_keys': {}}}
    if where == 'meta':
        checkpoint['meta']['hook'] = HistoryBuffer.min
    else:
        HistoryBuffer._statistics_methods.setdefault('keys',
                                                     OrderedDict.keys)
    try:
        torch.save(checkpoint, path)
    finally:
        HistoryBuffer._statistics_methods.pop('keys', None)


@pytest.mark.parametrize('where,message', [
    ('meta', r"a getattr call at \['meta'\]\['hook'\], outside the "
             r'statistics of message_hub\.log_scalars'),
    ('methods', r"message_hub log scalar 'loss' holds \['statistics_methods'\]; only "),
])
def test_getattr_elsewhere_in_a_training_checkpoint_is_refused(
        tmp_path, where, message):
    from mmbackbone.engine import read_training_checkpoint
    path = tmp_path / 'epoch_1.pth'
    _save_with_getattr(path, where)
    assert 'builtins.getattr' in \
        torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    with pytest.raises(CheckpointError, match=rf'checkpoint {path}: '
                                              + message):
        read_training_checkpoint(path)


# ------------------------------- the weights reader's limits, on resume
def _optimizer_checkpoint(momentum):
    return {'meta': {'epoch': 1, 'iter': 2},
            'state_dict': {'w': torch.ones(2)},
            'optimizer': {'state': {0: {'momentum_buffer': momentum}},
                          'param_groups': [{'lr': 0.1, 'params': [0]}]}}


@pytest.mark.parametrize('kind,momentum,message', [
    ('stride-0', torch.ones(1).expand(1_000_000),
     r"optimizer\.state\.0\.momentum_buffer' \(shape "
     r'\(1000000,\), stride \(0,\)\) is a stride-0 view'),
    ('overlap', torch.ones(8).as_strided((4, 4), (1, 1)),
     r"optimizer\.state\.0\.momentum_buffer' \(shape \(4, 4\), stride "
     r'\(1, 1\)\) is a view whose elements overlap'),
    ('sparse', torch.ones(2).to_sparse(),
     r"optimizer\.state\.0\.momentum_buffer' is a sparse "
     r'\(torch\.sparse_coo\) tensor'),
])
def test_training_checkpoint_tensor_views_are_checked(tmp_path, kind,
                                                      momentum, message):
    from mmbackbone.engine import read_training_checkpoint
    path = tmp_path / f'{kind}.pth'
    torch.save(_optimizer_checkpoint(momentum), path)
    with pytest.raises(CheckpointError, match=rf"checkpoint {path}: '"
                                              + message):
        read_training_checkpoint(path)


def _rezip(src, dst, duplicate=None):
    """Copy a torch zip, entries STORED, one entry written twice."""
    import warnings
    import zipfile
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(
            dst, 'w', zipfile.ZIP_STORED) as new, warnings.catch_warnings():
        warnings.simplefilter('ignore')  # zipfile warns of the duplicate
        for info in old.infolist():
            data = old.read(info)
            new.writestr(info.filename, data)
            if info.filename.endswith(duplicate or '\0'):
                new.writestr(info.filename, data)


def test_training_checkpoint_zip_structure_is_checked(tmp_path):
    from mmbackbone.engine import read_training_checkpoint
    good = tmp_path / 'good.pth'
    torch.save(_optimizer_checkpoint(torch.ones(2)), good)
    twice = tmp_path / 'twice.pth'
    _rezip(good, twice, duplicate='data.pkl')
    with pytest.raises(CheckpointError, match=rf"checkpoint {twice}: zip "
                                              r"entry '.*data\.pkl' appears "
                                              r'twice'):
        read_training_checkpoint(twice)
    same = tmp_path / 'same.pth'
    _rezip(good, same)
    assert read_training_checkpoint(same)['meta'] == {'epoch': 1, 'iter': 2}


def test_legacy_format_training_checkpoint_keeps_its_message_hub(
        plain_mmengine_checkpoint, tmp_path):
    from mmengine.logging import HistoryBuffer

    from mmbackbone.engine import read_training_checkpoint
    legacy = tmp_path / 'legacy.pth'
    full = torch.load(plain_mmengine_checkpoint, weights_only=False)
    torch.save(full, legacy, _use_new_zipfile_serialization=False)
    checkpoint = read_training_checkpoint(legacy)
    assert checkpoint['meta']['epoch'] == 1
    assert all(type(b) is HistoryBuffer for b in
               checkpoint['message_hub']['log_scalars'].values())
    assert torch.equal(checkpoint['optimizer']['state'][0]['momentum_buffer'],
                       full['optimizer']['state'][0]['momentum_buffer'])


def test_map_location_moves_checked_tensors_or_is_named(tmp_path):
    from mmbackbone.engine import read_training_checkpoint
    path = tmp_path / 'w.pth'
    torch.save(_optimizer_checkpoint(torch.ones(2)), path)
    checkpoint = read_training_checkpoint(path, map_location=torch.device(
        'cpu'))
    assert checkpoint['state_dict']['w'].device.type == 'cpu'
    with pytest.raises(TypeError, match=rf"map_location=.* for checkpoint "
                                        rf"{path}: give a device name"):
        read_training_checkpoint(path, map_location=lambda s, loc: s)
