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
