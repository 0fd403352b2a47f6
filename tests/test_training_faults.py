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
from mmbackbone.engine.faults import atomic_write_text, check_work_dir

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


def test_training_checkpoint_globals_are_never_process_wide(tmp_path):
    from mmengine.logging import HistoryBuffer

    from mmbackbone.engine import read_training_checkpoint
    from mmbackbone.engine.resume import training_checkpoint_globals
    path = tmp_path / 'w.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}}, path)
    read_training_checkpoint(path)
    allowed = torch.serialization.get_safe_globals()
    assert not [g for g in [HistoryBuffer, *training_checkpoint_globals()]
                if g in allowed]
    torch.serialization.add_safe_globals([HistoryBuffer])
    try:
        with pytest.raises(RuntimeError, match='safe globals hold '
                                               "mmengine's HistoryBuffer"):
            read_training_checkpoint(path)
    finally:
        torch.serialization._weights_only_unpickler._remove_safe_globals(
            [HistoryBuffer])


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
    from mmbackbone.engine.faults import _portable_history_buffers
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
    from mmbackbone.engine.faults import _portable_history_buffers
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
