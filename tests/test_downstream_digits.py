"""The digits downstream configs, end to end with mmdet's / mmseg's tools.

Each config trains a few iterations with the downstream library's own
``tools/train.py`` (shipped in its wheel under ``.mim/``), is evaluated by
its ``tools/test.py`` (CocoMetric / IoUMetric) and predicts one image with
tools/predict.py (DetInferencer / MMSegInferencer), on mmcv-lite: NMS,
RoIAlign and the rest come from ``mmbackbone.mmcv_ops`` through the
configs' ``custom_imports``. The demo figures (``make demo-det``,
``make demo-seg``) come from the full schedules; these runs check that
every step works and reports, on sets of a few images.
"""
import importlib.util
import re
import subprocess
from pathlib import Path

import pytest
import torch

from helpers_train import PYTHON, ROOT, subprocess_env

DET = ROOT / 'configs' / 'downstream' / 'mmdet'
SEG = ROOT / 'configs' / 'downstream' / 'mmseg'
SMALL_SET = dict(num_train=16, num_val=8)


def _tools(package: str) -> Path:
    """The tools/ folder shipped in ``package``'s wheel (found without
    importing it)."""
    spec = importlib.util.find_spec(package)
    return Path(spec.submodule_search_locations[0]) / '.mim' / 'tools'


def _run(args, cwd) -> str:
    proc = subprocess.run([PYTHON, *map(str, args)], cwd=str(cwd),
                          env=subprocess_env(), capture_output=True,
                          text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


def _set_options(data_root: Path, loaders=('train', 'val', 'test')):
    """--cfg-options making every loader use one small set in data_root."""
    options = []
    for loader in loaders:
        options.append(f'{loader}_dataloader.dataset.data_root={data_root}/')
        options += [f'{loader}_dataloader.dataset.{k}={v}'
                    for k, v in SMALL_SET.items()]
    return options


def _det_options(data_root: Path, epochs: int = 1):
    ann = f'{data_root}/annotations/instances_val.json'
    return ['--cfg-options', *_set_options(data_root),
            f'train_cfg.max_epochs={epochs}', f'train_cfg.val_interval={epochs}',
            f'default_hooks.checkpoint.interval={epochs}',
            'train_dataloader.batch_size=8', 'default_hooks.logger.interval=1',
            f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}']


def _published(work_dir: Path, stem: str) -> Path:
    """The published checkpoint (weights and meta only): what mmengine's
    plain Runner (mmseg's test.py) and the inferencers can read with
    torch.load's weights_only default."""
    found = sorted(work_dir.glob(f'{stem}-*.pth'))
    assert len(found) == 1, sorted(work_dir.iterdir())
    content = torch.load(found[0], map_location='cpu', weights_only=True)
    assert set(content) == {'meta', 'state_dict'}
    return found[0]


def _coco_stats(output: str, metric: str = 'bbox'):
    found = re.findall(rf'{metric}_mAP_copypaste: ([-\d. ]+)', output)
    assert found, output[-3000:]
    return [float(v) for v in found[-1].split()]


#: each detector's score threshold, lowered to 0 so that a model trained
#: for 2 iterations still has boxes for NMS and the metric to process
DETECTORS = {
    'retinanet_r18_fpn_digits.py': 'model.test_cfg.score_thr=0',
    'mask-rcnn_r18_fpn_digits.py': 'model.test_cfg.rcnn.score_thr=0',
    'fcos_regnetx-400mf_fpn_digits.py': 'model.test_cfg.score_thr=0',
}


@pytest.mark.parametrize('config', sorted(DETECTORS))
def test_detector_trains_evaluates_and_predicts(config, tmp_path):
    tools, data_root = _tools('mmdet'), tmp_path / 'digits_det'
    work_dir = tmp_path / 'work'
    options = _det_options(data_root) + [DETECTORS[config]]
    output = _run([tools / 'train.py', DET / config, '--work-dir', work_dir,
                   *options], tmp_path)
    assert re.search(r'Epoch\(train\) +\[1\]\[2/2\]', output), output[-3000:]
    assert (work_dir / 'epoch_1.pth').is_file(), sorted(work_dir.iterdir())
    checkpoint = _published(work_dir, 'epoch_1')
    # the training checkpoint reads with torch.load's weights_only default
    # (mmdet's test.py loads it through mmengine's plain torch.load)
    # mmdet's test.py imports mmcv.ops before it reads the config: the
    # ops are installed first by running it through mmbackbone.mmcv_ops
    output = _run(['-m', 'mmbackbone.mmcv_ops', tools / 'test.py',
                   DET / config, checkpoint,
                   '--work-dir', tmp_path / 'test', *options], tmp_path)
    stats = _coco_stats(output)
    assert len(stats) == 6 and all(-1 <= v <= 1 for v in stats), stats
    if config.startswith('mask-rcnn'):
        assert len(_coco_stats(output, 'segm')) == 6

    image = data_root / 'val' / '000001.png'
    output = _run([ROOT / 'tools' / 'predict.py', DET / config, checkpoint,
                   image, '--out-dir', tmp_path / 'pred', '--score-thr',
                   '0'], tmp_path)
    assert re.search(r'\d+ detections \(score >= 0', output), output[-3000:]
    assert list((tmp_path / 'pred' / 'vis').glob('*.png'))


def test_segmenter_trains_evaluates_and_predicts(tmp_path):
    tools, data_root = _tools('mmseg'), tmp_path / 'digits_seg'
    config, work_dir = SEG / 'upernet_r18-v1c_digits.py', tmp_path / 'work'
    options = ['--cfg-options', *_set_options(data_root),
               'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
               'default_hooks.checkpoint.interval=2',
               'default_hooks.logger.interval=1',
               'train_dataloader.batch_size=4']
    output = _run([tools / 'train.py', config, '--work-dir', work_dir,
                   *options], tmp_path)
    assert 'mIoU' in output, output[-3000:]
    assert (work_dir / 'iter_2.pth').is_file(), sorted(work_dir.iterdir())
    checkpoint = _published(work_dir, 'iter_2')
    output = _run(['-m', 'mmbackbone.mmcv_ops', tools / 'test.py', config,
                   checkpoint, '--work-dir',
                   tmp_path / 'test', *options], tmp_path)
    miou = re.findall(r'mIoU: ([\d.]+)', output)
    assert miou and 0 <= float(miou[-1]) <= 100, output[-3000:]

    image = data_root / 'img_dir' / 'val' / '000001.png'
    output = _run([ROOT / 'tools' / 'predict.py', config, checkpoint, image,
                   '--out-dir', tmp_path / 'pred'], tmp_path)
    assert 'pixels per class: ' in output, output[-3000:]
    counts = re.findall(r'(\w+): (\d+)', output.split('pixels per class: ')[1]
                        .splitlines()[0])
    assert sum(int(c) for _, c in counts) == 128 * 128, counts


def test_predict_refuses_a_config_of_another_library(tmp_path):
    proc = subprocess.run(
        [PYTHON, str(ROOT / 'tools' / 'predict.py'),
         str(ROOT / 'configs' / 'resnet' / 'resnet18_digits.py'), 'x.pth',
         'x.png'], cwd=str(tmp_path), env=subprocess_env(),
        capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "default_scope='mmbackbone'" in proc.stderr, proc.stderr[-2000:]
    assert "['mmdet', 'mmseg']" in proc.stderr


def test_demo_targets_name_existing_configs():
    makefile = (ROOT / 'Makefile').read_text()
    for name in re.findall(r'configs/downstream/\S+\.py', makefile):
        assert (ROOT / name).is_file(), name
