"""Shared by the training tests: tiny digits runs of tools/train.py."""
import importlib.util
import os
import sys
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parents[1]
DIGITS_PY = ROOT / 'configs' / 'resnet' / 'resnet18_digits.py'
DIGITS_YAML = ROOT / 'configs' / 'resnet' / 'resnet18_digits.yaml'


def load_tool(relative: str):
    """Import a script under tools/ as a module (it defines ``main``)."""
    path = ROOT / relative
    name = 'tool_' + path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_options(epochs: int = 1, train: int = 64, val: int = 32,
                 batch: int = 16, augment: bool = True) -> List[str]:
    """``--cfg-options`` for a few-second digits run."""
    options = [
        f'train_cfg.max_epochs={epochs}',
        f'train_dataloader.dataset.indices={train}',
        f'val_dataloader.dataset.indices={val}',
        f'test_dataloader.dataset.indices={val}',
        f'train_dataloader.batch_size={batch}',
        f'val_dataloader.batch_size={val}',
        f'test_dataloader.batch_size={val}',
        'default_hooks.logger.interval=1',
        # a quarter-width ResNet-18: the tools are under test, not the model
        'model.backbone.stem_channels=16',
        'model.backbone.base_channels=16',
        'model.head.in_channels=128',
    ]
    if not augment:
        options.append('train_dataloader.dataset.pipeline=None')
    return ['--cfg-options', *options]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env['OMP_NUM_THREADS'] = '1'
    env['PYTHONPATH'] = os.pathsep.join(
        [str(ROOT)] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep)
                       if p])
    return env


PYTHON = sys.executable
