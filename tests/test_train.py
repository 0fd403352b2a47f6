"""tools/train.py, tools/test.py and plot_curves on tiny digits runs."""
import json
import pickle
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers_train import (DIGITS_PY, DIGITS_YAML, PYTHON, ROOT, load_tool,
                           subprocess_env, tiny_options)
from mmbackbone.engine import (UnsafeConfigError, load_config,
                               read_training_checkpoint)

train_tool = load_tool('tools/train.py')
test_tool = load_tool('tools/test.py')
plot_tool = load_tool('tools/analysis/plot_curves.py')


def _scalars(work_dir):
    files = sorted(work_dir.glob('*/vis_data/scalars.json'))
    assert files, f'no scalars.json in {work_dir}'
    return [json.loads(line) for f in files
            for line in f.read_text().splitlines() if line.strip()]


def test_train_test_and_plot_a_tiny_run(tmp_path, capsys):
    from mmengine.logging import HistoryBuffer

    from mmbackbone.engine.resume import training_checkpoint_globals
    ours = [HistoryBuffer, *training_checkpoint_globals()]
    work_dir = tmp_path / 'run'
    runner = train_tool.main([str(DIGITS_PY), '--work-dir', str(work_dir),
                              *tiny_options(epochs=2)])
    out = capsys.readouterr().out
    match = re.search(r'Final validation accuracy \(top-1\): ([\d.]+)%', out)
    assert match, out[-2000:]
    final_top1 = float(match.group(1))
    assert runner.epoch == 2
    assert type(runner.model).__name__ == 'ImageClassifier'
    assert (work_dir / 'epoch_2.pth').is_file()

    log = next(work_dir.glob('*/*.log')).read_text()
    assert re.search(r'Epoch\(train\) +\[1\]\[\d+/4\].*eta: ', log)
    assert re.search(r'Epoch\(val\) +\[2\]\[1/1\] +accuracy/top1: ', log)
    records = _scalars(work_dir)
    val = [r for r in records if 'accuracy/top1' in r]
    assert [r['step'] for r in val] == [1, 2]
    assert val[-1]['accuracy/top1'] == pytest.approx(final_top1, abs=0.01)

    # a plain weights_only load refuses the message hub's buffers; ours
    # reads them for that one read and allows nothing process-wide
    ckpt = str(work_dir / 'epoch_2.pth')
    assert not [g for g in ours if g in torch.serialization.get_safe_globals()]
    with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer'):
        torch.load(ckpt, weights_only=True)
    loaded = read_training_checkpoint(ckpt)
    assert not [g for g in ours if g in torch.serialization.get_safe_globals()]
    assert loaded['meta']['epoch'] == 2 and 'message_hub' in loaded
    loss = loaded['message_hub']['log_scalars']['train/loss']
    assert type(loss) is HistoryBuffer and len(loss.data[0]) > 0

    metrics = test_tool.main([str(DIGITS_PY), str(work_dir / 'epoch_2.pth'),
                              '--work-dir', str(tmp_path / 'test'),
                              *tiny_options()])
    assert metrics['accuracy/top1'] == pytest.approx(final_top1, abs=0.01)
    assert 'Test results of' in capsys.readouterr().out

    png = plot_tool.main([str(work_dir), '--out', str(tmp_path / 'c.png')])
    with Image.open(png) as img:
        assert img.format == 'PNG' and img.size[0] > 300
    with pytest.raises(KeyError, match="keys \\['nope'\\] are not in the "
                       "log; available: .*accuracy/top1"):
        plot_tool.main([str(work_dir), '--keys', 'nope'])
    with pytest.raises(FileNotFoundError, match='no scalars.json'):
        plot_tool.main([str(tmp_path / 'test' / 'missing')])


def test_yaml_config_equals_the_python_one_and_trains(tmp_path, capsys):
    from mmbackbone.engine.config import _tuples_to_lists
    py = _tuples_to_lists(load_config(DIGITS_PY).to_dict())
    yml = load_config(DIGITS_YAML).to_dict()
    assert set(yml) <= set(py)
    for key in yml:
        assert yml[key] == py[key], key
    assert {'model', 'train_dataloader', 'val_dataloader', 'optim_wrapper',
            'param_scheduler', 'train_cfg', 'default_hooks'} <= set(yml)
    runner = train_tool.main([str(DIGITS_YAML), '--work-dir',
                              str(tmp_path / 'yaml'), *tiny_options()])
    assert runner.epoch == 1
    assert 'Final validation accuracy' in capsys.readouterr().out
    assert (tmp_path / 'yaml' / 'resnet18_digits.yaml').is_file()


def test_yaml_python_tags_are_refused_without_side_effects(tmp_path):
    marker = tmp_path / 'pwned'
    cfg = tmp_path / 'evil.yaml'
    cfg.write_text('model: !!python/object/apply:os.system\n'
                   f'  ["touch {marker}"]\n')
    work_dir = tmp_path / 'work'
    with pytest.raises(UnsafeConfigError, match='python/object/apply:'
                       'os.system.*yaml.safe_load.*nothing in the file was '
                       'run'):
        train_tool.main([str(cfg), '--work-dir', str(work_dir)])
    assert not marker.exists() and not work_dir.exists()
    cfg.write_text('x: !!python/name:os.system\n')
    with pytest.raises(UnsafeConfigError, match='python/name:os.system'):
        load_config(cfg)


def test_yaml_inheritance_and_errors(tmp_path):
    (tmp_path / 'base.yaml').write_text(
        'model: {type: ResNet, depth: 18, norm_cfg: {type: BN}}\n'
        'optim: {lr: 0.1, momentum: 0.9}\n')
    (tmp_path / 'child.yaml').write_text(
        '_base_: base.yaml\n'
        'model: {depth: 34}\n'
        'optim: {_delete_: true, lr: 0.01}\n')
    cfg = load_config(tmp_path / 'child.yaml')
    assert cfg.model == dict(type='ResNet', depth=34, norm_cfg=dict(type='BN'))
    assert cfg.optim == dict(lr=0.01)
    (tmp_path / 'py_child.yaml').write_text(
        f'_base_: [{DIGITS_PY}]\ntrain_cfg: {{max_epochs: 3}}\n')
    with pytest.raises(UnsafeConfigError, match='allow_python_bases'):
        load_config(tmp_path / 'py_child.yaml')
    mixed = load_config(tmp_path / 'py_child.yaml',
                        {'model.backbone.out_indices': (3, )},
                        allow_python_bases=True)
    assert mixed.train_cfg.max_epochs == 3
    assert mixed.train_cfg.val_interval == 1
    assert mixed.model.backbone.out_indices == [3]  # YAML keeps lists

    (tmp_path / 'loop.yaml').write_text('_base_: loop.yaml\n')
    with pytest.raises(ValueError, match='inheritance loops'):
        load_config(tmp_path / 'loop.yaml')
    (tmp_path / 'list.yaml').write_text('- 1\n- 2\n')
    with pytest.raises(ValueError, match='mapping at the top level'):
        load_config(tmp_path / 'list.yaml')
    (tmp_path / 'bad.yaml').write_text('a: [1, 2\n')
    with pytest.raises(ValueError, match='not valid YAML'):
        load_config(tmp_path / 'bad.yaml')
    (tmp_path / 'imports.yaml').write_text(
        'custom_imports: {imports: [os]}\n')
    with pytest.raises(ValueError, match='custom_imports is not supported'):
        load_config(tmp_path / 'imports.yaml')
    (tmp_path / 'nobase.yaml').write_text('_base_: missing.yaml\n')
    with pytest.raises(FileNotFoundError, match="_base_ file 'missing.yaml'"):
        load_config(tmp_path / 'nobase.yaml')
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_config(tmp_path / 'absent.yaml')


def test_dotted_types_and_bad_flags_stop_before_anything_runs(tmp_path):
    work_dir = tmp_path / 'work'
    with pytest.raises(ValueError, match=r"cfg.model.backbone.type="
                       r"'os.system' is a dotted path"):
        train_tool.main([str(DIGITS_PY), '--work-dir', str(work_dir),
                         '--cfg-options', 'model.backbone.type=os.system'])
    with pytest.raises(ValueError, match=r"cfg.default_hooks.timer.type="
                       r"'subprocess.call'"):
        train_tool.main([str(DIGITS_PY), '--work-dir', str(work_dir),
                         '--cfg-options',
                         'default_hooks.timer.type=subprocess.call'])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match='--amp fp16 needs a GPU'):
            train_tool.main([str(DIGITS_PY), '--work-dir', str(work_dir),
                             '--amp', 'fp16'])
    with pytest.raises(SystemExit, match='no such checkpoint'):
        train_tool.main([str(DIGITS_PY), '--work-dir', str(work_dir),
                         '--resume', str(tmp_path / 'none.pth')])
    with pytest.raises(SystemExit, match='does not exist'):
        test_tool.main([str(DIGITS_PY), str(tmp_path / 'none.pth')])
    assert not work_dir.exists()


#: Runs tools/train.py and kills the process (os._exit, no cleanup) right
#: after the first ``last_checkpoint`` is written: a kill at a known point,
#: whatever the machine's load.
KILL_AFTER_FIRST_CHECKPOINT = """
import os, sys
from mmbackbone.engine.hooks import atomic_checkpoint_hook as hook
write = hook.atomic_write_text

def write_then_die(path, text):
    write(path, text)
    if os.path.basename(path) == 'last_checkpoint':
        os._exit(137)

hook.atomic_write_text = write_then_die
sys.path.insert(0, {tools!r})
import train
train.main(sys.argv[1:])
"""


def test_killed_run_resumes_to_the_same_end(tmp_path, capsys):
    options = tiny_options(epochs=3, train=128, val=64, batch=32,
                           augment=False)
    killed = tmp_path / 'killed'
    driver = tmp_path / 'driver.py'
    driver.write_text(KILL_AFTER_FIRST_CHECKPOINT.format(
        tools=str(ROOT / 'tools')))
    proc = subprocess.run([PYTHON, str(driver), str(DIGITS_PY),
                           '--work-dir', str(killed), *options],
                          cwd=str(tmp_path), env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 137, proc.stderr[-3000:]
    saved = Path((killed / 'last_checkpoint').read_text().strip()).name
    assert saved == 'epoch_1.pth', saved
    saved_epoch = 1
    assert (killed / saved).is_file()
    assert not (killed / 'epoch_2.pth').exists()
    # mmengine names a run's log dir by its start time in whole seconds:
    # the resumed run must start in a later second than the killed one, or
    # both would share (and append to) one log dir
    killed_dirs = {d.name for d in killed.iterdir() if d.is_dir()}
    time.sleep(1.1)

    # the killed run used one thread (subprocess_env); so do these, so
    # that all three runs sum floats in the same order
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed = train_tool.main([str(DIGITS_PY), '--work-dir',
                                   str(killed), '--resume', *options])
        straight = train_tool.main([str(DIGITS_PY), '--work-dir',
                                    str(tmp_path / 'straight'), *options])
    finally:
        torch.set_num_threads(threads)
    assert resumed.epoch == 3 and (killed / 'epoch_3.pth').is_file()
    # the resumed run's own log dir (timestamped names of two runs in one
    # second, or of another test's run in this process, cannot mix them)
    run_dir = Path(resumed.log_dir)
    assert run_dir.parent == killed and run_dir.name not in killed_dirs
    log = next(run_dir.glob('*.log')).read_text()
    assert f'resumed epoch: {saved_epoch}' in log
    # the resumed run trained the remaining epochs only
    last_run = run_dir / 'vis_data' / 'scalars.json'
    resumed_train = [json.loads(line) for line in
                     last_run.read_text().splitlines() if 'loss' in line]
    assert {r['epoch'] for r in resumed_train} == set(
        range(saved_epoch + 1, 4))
    resumed_top1 = resumed.message_hub.get_scalar(
        'val/accuracy/top1').current()

    straight_top1 = straight.message_hub.get_scalar(
        'val/accuracy/top1').current()
    assert straight.epoch == 3
    # same data order, weights and optimizer state: equal up to float
    # noise (1 of the 64 validation images = 1.6 points)
    assert abs(resumed_top1 - straight_top1) <= 3.2, (resumed_top1,
                                                      straight_top1)
    resumed_loss = resumed.message_hub.get_scalar('train/loss').current()
    straight_loss = straight.message_hub.get_scalar('train/loss').current()
    assert resumed_loss == pytest.approx(straight_loss, rel=0.05, abs=1e-3)
    capsys.readouterr()


def test_torchrun_two_processes_on_cpu(tmp_path):
    work_dir = tmp_path / 'ddp'
    cmd = [PYTHON, '-m', 'torch.distributed.run', '--standalone',
           '--nproc_per_node', '2', str(ROOT / 'tools' / 'train.py'),
           str(DIGITS_PY), '--launcher', 'pytorch', '--work-dir',
           str(work_dir), *tiny_options(epochs=1, train=64, val=32, batch=16)]
    result = subprocess.run(cmd, cwd=str(tmp_path), env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert output.count('Final validation accuracy (top-1)') == 1, \
        output[-4000:]
    logs = sorted(work_dir.glob('*/*.log'))
    assert len(logs) == 1, (logs, output[-4000:])
    log = logs[0].read_text()
    assert 'Distributed training: True' in log, log[-4000:]
    assert "backend': 'gloo'" in log or 'gloo' in log, log[-4000:]
    # 64 images, batch 16 per process, 2 processes: 2 iterations per epoch
    assert re.search(r'Epoch\(train\) +\[1\]\[2/2\]', log), log[-4000:]
    assert (work_dir / 'epoch_1.pth').is_file(), sorted(work_dir.iterdir())
    assert not list(work_dir.glob('*.part'))


FAMILY_CONFIGS = sorted(
    str(p.relative_to(ROOT / 'configs'))
    for p in (ROOT / 'configs').glob('*/*.py')
    if p.parent.name not in ('_base_', 'downstream'))


def test_every_family_has_a_config():
    families = {c.split('/')[0] for c in FAMILY_CONFIGS}
    assert {'resnet', 'vision_transformer', 'regnet', 'cspnet', 'dla',
            'timm', 'torchscript'} <= families


@pytest.mark.parametrize('name', FAMILY_CONFIGS)
def test_family_config_builds_and_trains_a_step(name, tmp_path):
    from mmengine.dataset import pseudo_collate
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope

    from mmbackbone.apis import check_config_types
    from mmbackbone.registry import DATASETS, MODELS
    cfg = load_config(ROOT / 'configs' / name)
    check_config_types(cfg.to_dict())
    assert cfg.default_scope == 'mmbackbone'
    dataset_cfg = cfg.train_dataloader.dataset
    if dataset_cfg.type == 'ImageFolderDataset':  # user data: make some
        for cls in ('a', 'b'):
            (tmp_path / cls).mkdir()
            Image.new('RGB', (80, 60), (40, 90, 200)).save(
                tmp_path / cls / 'x.png')
        dataset_cfg.data_root, dataset_cfg.size = str(tmp_path), 64
        dataset_cfg.pipeline = [dict(type='RandomCrop', size=64, padding=4)]
    if cfg.model.backbone.type == 'TorchScriptBackbone':
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, cfg.model.backbone.nr_features, 3, 4),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        path = tmp_path / 'net.pt'
        torch.jit.save(torch.jit.script(net), str(path))
        cfg.model.backbone.path = str(path)
    dataset_cfg.indices = 2
    with DefaultScope.overwrite_default_scope('mmbackbone'):
        dataset = DATASETS.build(dataset_cfg)
        model = MODELS.build(cfg.model)
        model.init_weights()
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    batch = pseudo_collate([dataset[0], dataset[1]])
    log_vars = model.train_step(batch, optim_wrapper)
    assert torch.isfinite(torch.as_tensor(log_vars['loss']))
    model.eval()
    with torch.no_grad():
        preds = model.val_step(batch)
    assert preds[0].pred_score.shape == (cfg.model.head.num_classes, )


def _foreign_checkpoint(path):
    """An ImageClassifier of the digits config at another width."""
    from mmengine.registry import DefaultScope

    from mmbackbone.registry import MODELS
    cfg = load_config(DIGITS_PY)
    cfg.model.backbone.update(stem_channels=8, base_channels=8)
    cfg.model.head.in_channels = 64
    with DefaultScope.overwrite_default_scope('mmbackbone'):
        model = MODELS.build(cfg.model)
    torch.save({'meta': {'epoch': 1, 'iter': 1},
                'state_dict': model.state_dict()}, path)


@pytest.mark.parametrize('damage', ['truncated', 'foreign'])
def test_test_tool_exits_non_zero_naming_a_bad_checkpoint(tmp_path, damage):
    ckpt = tmp_path / 'epoch_1.pth'
    _foreign_checkpoint(ckpt)
    if damage == 'truncated':
        ckpt.write_bytes(ckpt.read_bytes()[:5000])
        expected = rf'error: checkpoint {ckpt} is truncated or corrupt'
    else:
        expected = (rf'error: checkpoint {ckpt} does not fit the model: \d+ '
                    r'tensors have other shapes')
    cmd = [PYTHON, str(ROOT / 'tools' / 'test.py'), str(DIGITS_PY),
           str(ckpt), '--work-dir', str(tmp_path / 'test'), *tiny_options()]
    result = subprocess.run(cmd, cwd=str(tmp_path), env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert re.search(expected, result.stderr), result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    assert 'Test results' not in result.stdout

