"""Every public class through ``hydra.utils.instantiate`` and ``_target_``."""
import inspect
from pathlib import Path

import hydra.utils
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import mmbackbone.models
from mmbackbone import build_backbone, list_backbones
from mmbackbone.models import BaseBackbone, ImageClassifier
from mmbackbone.registry import MODELS
from helpers import one_thread  # noqa: F401  (fixture)

HYDRA_CONFIG = (Path(__file__).parents[1] / 'configs' / 'hydra' /
                'resnet18_classifier.yaml')


pytestmark = pytest.mark.usefixtures('one_thread')


def _torchscript_file(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
    path = tmp_path / 'net.pt'
    torch.jit.save(torch.jit.script(net), str(path))
    return dict(path=str(path))


def _exported_file(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU()).eval()
    path = tmp_path / 'net.pt2'
    torch.export.save(torch.export.export(net, (torch.randn(1, 3, 32, 32), )),
                      str(path))
    return dict(path=str(path))


#: Configs of the types that need a file (``zoo_needs_files``).
FILE_CONFIGS = {'TorchScriptBackbone': _torchscript_file,
                'ExportedBackbone': _exported_file}

#: Necks, heads and the rest: (class name, constructor kwargs).
OTHER_CONFIGS = {
    'GlobalAveragePooling': dict(last_only=True),
    'MLPNeck': dict(in_channels=16, depth=2, hidden_channels=8,
                    norm_cfg=dict(type='LN')),
    'LinearClsHead': dict(num_classes=10, in_channels=16, topk=[1, 5]),
    'CosineSimilarityHead': dict(in_features=16, out_features=4, scale=8.0),
    'CrossEntropyLoss': dict(label_smoothing=0.1),
    'ClsDataPreprocessor': dict(mean=[1.0, 2.0, 3.0], std=[2.0, 2.0, 2.0],
                                to_rgb=True),
    'ImageClassifier': dict(
        backbone=dict(type='ResNet', depth=18),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=3)),
}


def _param_count_on_meta(name, kwargs):
    with torch.device('meta'):
        model = build_backbone(dict(type=name, **kwargs))
    return sum(p.numel() for p in model.parameters())


def cheap_zoo_config(name):
    """The smallest of (at most) the first four zoo configs of a type."""
    zoo = list(getattr(MODELS.get(name), 'zoo_configs', {}).items())[:4]
    if not zoo:
        return None
    return min(zoo, key=lambda item: _param_count_on_meta(name, item[1]))


def test_every_public_class_has_a_hydra_case():
    public = {name for name in mmbackbone.models.__all__
              if inspect.isclass(getattr(mmbackbone.models, name))}
    abstract = {'BaseBackbone'}
    covered = set(list_backbones()) | set(OTHER_CONFIGS)
    assert public - abstract - covered == set()


@pytest.mark.parametrize('name', list_backbones())
def test_instantiate_backbone(name, tmp_path):
    """``_target_: mmbackbone.models.<Type>`` builds what build_backbone
    builds: same class, outputs and parameter shapes."""
    cls = MODELS.get(name)
    if getattr(cls, 'zoo_needs_files', False):
        assert name in FILE_CONFIGS, f'add a FILE_CONFIGS entry for {name}'
        arch, kwargs = 'file', FILE_CONFIGS[name](tmp_path)
    else:
        found = cheap_zoo_config(name)
        assert found is not None, f'{name} has no zoo_configs'
        arch, kwargs = found
    assert getattr(mmbackbone.models, name) is cls, \
        f'{name} is not exported from mmbackbone.models'
    model = hydra.utils.instantiate(
        {'_target_': f'mmbackbone.models.{name}', '_convert_': 'all',
         **kwargs})
    assert type(model) is cls, arch
    if getattr(cls, 'zoo_needs_files', False):
        reference = build_backbone(dict(type=name, **kwargs))
    else:
        with torch.device('meta'):
            reference = build_backbone(dict(type=name, **kwargs))
    assert model.out_channels == reference.out_channels
    assert model.out_strides == reference.out_strides
    assert {k: v.shape for k, v in model.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}


def test_instantiate_resnet_forward_and_nested_cfg():
    model = hydra.utils.instantiate(
        {'_target_': 'mmbackbone.models.ResNet', 'depth': 18})
    assert model.out_channels == (512, )
    model = hydra.utils.instantiate(
        {'_target_': 'mmbackbone.models.ResNet', '_convert_': 'all',
         'depth': 18, 'out_indices': [0, 3], 'frozen_stages': 1,
         'norm_cfg': {'type': 'BN', 'requires_grad': True}}).eval()
    outs = model(torch.rand(1, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 8, 8), (1, 512, 1, 1)]
    assert not model.conv1.weight.requires_grad


@pytest.mark.parametrize('name', sorted(OTHER_CONFIGS))
def test_instantiate_necks_heads_and_classifier(name):
    kwargs = OTHER_CONFIGS[name]
    obj = hydra.utils.instantiate({'_target_': f'mmbackbone.models.{name}',
                                   **kwargs})
    expected = MODELS.build(dict(type=name, **kwargs))
    assert type(obj) is type(expected) is getattr(mmbackbone.models, name)
    assert {k: v.shape for k, v in obj.state_dict().items()} == \
        {k: v.shape for k, v in expected.state_dict().items()}


def test_instantiate_classifier_with_nested_type_dicts():
    """Nested dicts arrive as DictConfig: ImageClassifier converts them and
    infers the widths."""
    model = hydra.utils.instantiate({
        '_target_': 'mmbackbone.models.ImageClassifier',
        'backbone': {'type': 'ResNet', 'depth': 18, 'out_indices': [3],
                     'norm_cfg': {'type': 'BN'}},
        'neck': [{'type': 'GlobalAveragePooling'},
                 {'type': 'MLPNeck', 'depth': 1, 'hidden_channels': 32}],
        'head': {'type': 'CosineSimilarityHead', 'out_features': 6},
        'data_preprocessor': {'mean': [0.0] * 3, 'std': [255.0] * 3},
    })
    assert isinstance(model, ImageClassifier)
    assert model.neck[1].in_features == 512 and model.head.in_features == 32
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 6)


def test_instantiate_classifier_with_nested_targets():
    """Children with ``_target_`` are built by Hydra first."""
    model = hydra.utils.instantiate({
        '_target_': 'mmbackbone.models.ImageClassifier',
        'backbone': {'_target_': 'mmbackbone.models.ResNet', 'depth': 18},
        'neck': {'_target_': 'mmbackbone.models.GlobalAveragePooling'},
        'head': {'_target_': 'mmbackbone.models.LinearClsHead',
                 'num_classes': 4, 'in_channels': 512},
    })
    assert isinstance(model.backbone, mmbackbone.models.ResNet)
    logits = model(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 4)


def test_yaml_config_instantiates():
    cfg = OmegaConf.load(HYDRA_CONFIG)
    model = hydra.utils.instantiate(cfg.model).eval()
    assert isinstance(model, ImageClassifier)
    assert model.head.in_channels == 512 and model.head.num_classes == 10
    assert model.head.topk == (1, 5)
    assert model.data_preprocessor.to_rgb
    assert model.data_preprocessor.num_classes == 10
    images = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)] * 2
    batch = model.data_preprocessor(dict(inputs=images))
    with torch.no_grad():
        assert model(batch['inputs']).shape == (2, 10)
    # an override as Hydra's command line would do it
    cfg.num_classes = 3
    assert hydra.utils.instantiate(cfg.model).head.out_features == 3
    backbone = hydra.utils.instantiate(cfg.backbone)
    assert isinstance(backbone, BaseBackbone)
    assert backbone.out_channels == (64, 128, 256, 512)


class _PlainNet(nn.Module):
    """A custom backbone without init_weights (like docs' LeNet5)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4),
                                      nn.ReLU(), nn.Conv2d(4, 6, 3))
        self.out_features = 6

    def forward(self, x):
        return (self.features(x), )


class _OwnInitNet(_PlainNet):
    def init_weights(self):
        for p in self.parameters():
            nn.init.constant_(p, 0.5)


def _seeded_weights(build_seed, cls=_PlainNet):
    torch.manual_seed(build_seed)
    model = hydra.utils.instantiate({
        '_target_': 'mmbackbone.models.ImageClassifier',
        'backbone': {'_target_': f'{__name__}.{cls.__name__}'},
        'neck': {'type': 'GlobalAveragePooling'},
        'head': {'type': 'CosineSimilarityHead', 'out_features': 3}})
    torch.manual_seed(0)  # what the Runner's randomness=dict(seed=0) does
    model.init_weights()  # ... before the Runner's train() calls this
    return model.state_dict()


def test_models_built_before_seeding_are_decided_by_the_seed():
    first, second = _seeded_weights(1), _seeded_weights(2)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_a_plain_part_with_its_own_init_weights_keeps_it():
    weights = _seeded_weights(1, _OwnInitNet)
    assert (weights['backbone.features.0.weight'] == 0.5).all()
