"""Custom backbones: registered classes and functions, and the walkthrough
in docs/custom_backbone.md (its code blocks run here)."""
import contextlib
import importlib.util
import io
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mmbackbone import build_backbone, list_backbones
from mmbackbone.cli import main as cli_main
from mmbackbone.models import ImageClassifier
from mmbackbone.registry import MODELS
from mmbackbone.structures import ClsDataSample
from helpers import one_thread  # noqa: F401  (fixture)

ROOT = Path(__file__).parents[1]
DOC = ROOT / 'docs' / 'custom_backbone.md'
#: Names the doc and these tests register; removed after each test so the
#: other test files (the zoo walk) never see them.
CUSTOM_NAMES = ('LeNet5', 'TinyConvNet', 'wide_lenet5', 'seed_lenet5',
                'SeedLeNet5')


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(autouse=True)
def clean_registry():
    yield
    for name in CUSTOM_NAMES:
        MODELS.module_dict.pop(name, None)
    for module in [m for m in sys.modules if m.startswith('my_project')]:
        del sys.modules[module]


def doc_blocks(language='python'):
    text = DOC.read_text()
    return re.findall(rf'```{language}\n(.*?)```', text, flags=re.S)


def expected_output(block):
    """Column-0 ``# `` comments are the printed lines, '...' a wildcard."""
    return [line[2:] for line in block.splitlines() if line.startswith('# ')]


def run_block(block, namespace):
    """Execute a block; return the lines its ``print`` calls wrote (log
    output of mmengine is not part of it)."""
    printed = []

    def record(*args, sep=' ', **_):
        printed.extend(sep.join(map(str, args)).splitlines())

    namespace['print'] = record
    exec(compile(block, str(DOC), 'exec'), namespace)
    return printed


def matches(expected, printed):
    pattern = '.*'.join(re.escape(part) for part in expected.split('...'))
    return re.fullmatch(pattern, printed) is not None


class SeedLeNet5(nn.Module):
    """SESEMI's LeNet5, unchanged: a plain module with ``out_features``."""

    def __init__(self, out_features: int = 84):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, 6, 5, 2), nn.ReLU(inplace=True),
            nn.Conv2d(6, 16, 5, 2), nn.ReLU(inplace=True), nn.Flatten(),
            nn.Linear(400, 120), nn.ReLU(inplace=True),
            nn.Linear(120, out_features), nn.ReLU(inplace=True))
        self.out_features = out_features

    def forward(self, inputs):
        return self.layers(inputs)


def test_doc_walkthrough_runs(tmp_path, monkeypatch):
    """Every python block of the doc, in order; printed output checked
    against its ``# `` comments. The Runner section trains 5 iterations
    instead of 100 to stay fast."""
    monkeypatch.chdir(tmp_path)
    blocks = doc_blocks()
    assert len(blocks) >= 6
    namespace = {'__name__': 'custom_backbone_doc'}
    for block in blocks:
        code = block.replace('max_iters=100, val_interval=100',
                             'max_iters=5, val_interval=5')
        printed = run_block(code, namespace)
        expected = expected_output(block)
        assert len(printed) == len(expected), (printed, expected)
        for want, got in zip(expected, printed):
            assert matches(want, got), (want, got)
    assert (tmp_path / 'work_dirs' / 'lenet5_cosine').is_dir()
    assert 'accuracy/top1' in namespace['runner'].val()


def test_doc_config_trains_with_tools_train(tmp_path, monkeypatch):
    """Section 4: the module, the config next to configs/_base_, and
    ``tools/train.py CONFIG`` (one short epoch on a subset)."""
    blocks = doc_blocks()
    lenet_code = next(b for b in blocks if 'class LeNet5' in b)
    config_code = next(b for b in blocks if 'custom_imports' in b)
    (tmp_path / 'my_project').mkdir()
    (tmp_path / 'my_project' / '__init__.py').write_text('')
    (tmp_path / 'my_project' / 'lenet.py').write_text(lenet_code)
    shutil.copytree(ROOT / 'configs' / '_base_',
                    tmp_path / 'configs' / '_base_')
    config = tmp_path / 'configs' / 'lenet5_cosine_digits.py'
    config.write_text(config_code)
    assert doc_blocks('bash') == [
        'PYTHONPATH=. python tools/train.py configs/lenet5_cosine_digits.py\n']
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = importlib.util.spec_from_file_location('doc_train_tool',
                                                  ROOT / 'tools' / 'train.py')
    train_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_tool)
    runner = train_tool.main([
        str(config), '--work-dir', str(tmp_path / 'work'), '--cfg-options',
        'train_cfg.max_epochs=1', 'train_dataloader.dataset.indices=128',
        'val_dataloader.dataset.indices=64', 'param_scheduler=[]'])
    model = runner.model
    assert type(model.backbone).__name__ == 'LeNet5'
    assert model.head.in_features == 84 and model.head.scale == 16.0


def _lenet_namespace():
    namespace = {'__name__': 'custom_backbone_doc'}
    run_block(next(b for b in doc_blocks() if 'class LeNet5' in b),
              namespace)
    return namespace


def test_lenet_backbone_contract():
    LeNet5 = _lenet_namespace()['LeNet5']
    model = build_backbone(dict(type='LeNet5', out_indices=(0, 1, 2),
                                frozen_stages=1))
    assert isinstance(model, LeNet5)
    outs = model(torch.rand(2, 3, 32, 32))
    assert tuple(o.shape[1] for o in outs) == model.out_channels
    assert not model.conv1[0].weight.requires_grad
    assert model.conv2[0].weight.requires_grad
    model.train()
    assert not model.conv1.training and model.fc.training
    with pytest.raises(ValueError, match='out_indices'):
        build_backbone(dict(type='LeNet5', out_indices=(3, )))
    # registered class objects build too, unregistered ones are refused
    assert isinstance(build_backbone(dict(type=LeNet5)), LeNet5)
    with pytest.raises(TypeError, match='register it with'):
        build_backbone(dict(type=SeedLeNet5))
    # the command sees it once registered
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(['info', '--flops-at', '32', 'LeNet5']) == 0
    assert 'out_channels: (84,)' in out.getvalue()


def test_register_class_and_function():
    """A plain module class and a function returning one both build;
    ``is_backbone`` decides whether list_backbones() shows them."""
    MODELS.register_module(module=SeedLeNet5)

    @MODELS.register_module()
    def seed_lenet5(out_features: int = 84):
        return SeedLeNet5(out_features)

    for type_ in ('SeedLeNet5', 'seed_lenet5', seed_lenet5):
        model = build_backbone(dict(type=type_, out_features=32))
        assert isinstance(model, SeedLeNet5) and model.out_features == 32
    with pytest.raises(TypeError, match="seed_lenet5 got an unknown "
                       "argument 'width'"):
        build_backbone(dict(type='seed_lenet5', width=2))
    assert 'SeedLeNet5' not in list_backbones()
    assert 'seed_lenet5' not in list_backbones()
    seed_lenet5.is_backbone = True
    SeedLeNet5.is_backbone = True
    try:
        assert {'SeedLeNet5', 'seed_lenet5'} <= set(list_backbones())
    finally:
        del SeedLeNet5.is_backbone


def test_train_lenet_cosine_classifier_on_random_data():
    """A few optimizer steps on a fixed random batch lower the loss, for
    the BaseBackbone LeNet5 and for SESEMI's plain module, both under
    the cosine head with SESEMI's semantics (no scale)."""
    _lenet_namespace()
    MODELS.register_module(module=SeedLeNet5)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), generator=gen,
                           dtype=torch.uint8)
    labels = torch.randint(0, 10, (16, ), generator=gen)
    for backbone in ('LeNet5', 'SeedLeNet5'):
        torch.manual_seed(0)
        model = ImageClassifier(
            backbone=dict(type=backbone),
            head=dict(type='CosineSimilarityHead', out_features=10),
            data_preprocessor=dict(mean=[127.5] * 3, std=[127.5] * 3))
        assert model.head.in_features == 84 and model.head.scale is None
        batch = model.data_preprocessor(dict(
            inputs=list(images),
            data_samples=[ClsDataSample(gt_label=int(lb)) for lb in labels]),
            training=True)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(40):
            loss = model(**batch, mode='loss')['loss']
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[-1] < 0.8 * losses[0], (backbone, losses[::10])
        preds = model(**batch, mode='predict')
        accuracy = sum(int(p.pred_label) == int(p.gt_label) for p in preds)
        assert accuracy >= 12, (backbone, accuracy)
