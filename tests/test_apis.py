"""build_backbone / list_backbones: registry, scopes, refusals, errors."""
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.utils import import_modules_from_strings

import mmbackbone
from mmbackbone import build_backbone, list_backbones
from mmbackbone.models import ResNet
from mmbackbone.registry import MODELS


def test_registry_scope_and_parent():
    assert MODELS.scope == 'mmbackbone'
    assert MODELS.parent is ROOT_MODELS
    assert 'mmbackbone.models' in MODELS._locations


def test_list_backbones_sorted_and_filtered():
    names = list_backbones()
    assert names == sorted(names)
    assert {'ResNet', 'ResNetV1c', 'ResNetV1d'} <= set(names)
    assert list_backbones('ResNetV1*') == ['ResNetV1c', 'ResNetV1d']
    assert list_backbones('NoSuch*') == []


@pytest.mark.parametrize('module', ['mmbackbone', 'mmbackbone.models'])
def test_custom_imports_register_everything(module):
    code = (f'from mmengine.utils import import_modules_from_strings;'
            f'import_modules_from_strings(["{module}"]);'
            f'from mmengine.registry import MODELS;'
            f'm = MODELS.build(dict(type="mmbackbone.ResNet", depth=18));'
            f'from mmbackbone.registry import MODELS as M;'
            f'assert "ResNetV1d" in M.module_dict, sorted(M.module_dict);'
            f'print(type(m).__module__)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, check=True).stdout
    assert 'mmbackbone.models.backbones.resnet' in out


def test_import_is_light():
    code = ('import sys, mmbackbone; '
            'print(sorted(m for m in ("timm", "torchvision", "onnx") '
            'if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == '[]'


def test_scoped_and_class_types():
    assert type(build_backbone(dict(type='mmbackbone.ResNet', depth=18))) \
        is ResNet
    assert type(build_backbone(dict(type=ResNet, depth=18))) is ResNet


def test_config_file_round_trip(tmp_path):
    path = tmp_path / 'cfg.py'
    path.write_text("backbone = dict(type='ResNet', depth=18, "
                    "out_indices=(0, 1, 2, 3))\n")
    model = build_backbone(Config.fromfile(str(path)).backbone)
    assert model.out_channels == (64, 128, 256, 512)


def test_registered_function_builds():
    @MODELS.register_module(name='TinyConvNetForTest', force=True)
    def tiny(channels=8):
        return torch.nn.Conv2d(3, channels, 3)

    model = build_backbone(dict(type='TinyConvNetForTest', channels=4))
    assert model.out_channels == 4
    with pytest.raises(TypeError, match="unknown argument 'width'"):
        build_backbone(dict(type='TinyConvNetForTest', width=4))


def test_unknown_type_suggests_close_names():
    with pytest.raises(KeyError, match=r"type='ResNett'.*Did you mean "
                                       r"'ResNet'"):
        build_backbone(dict(type='ResNett', depth=50))


def test_dotted_path_is_refused_and_not_run(tmp_path):
    marker = tmp_path / 'ran'
    with pytest.raises(ValueError, match=r"type='os\.system'.*registered"):
        build_backbone(dict(type='os.system', command=f'touch {marker}'))
    with pytest.raises(ValueError, match=r"norm_cfg\.type='os\.system'"):
        build_backbone(dict(type='ResNet', depth=18,
                            norm_cfg=dict(type='os.system')))
    assert not marker.exists()


def test_unregistered_callable_is_refused():
    with pytest.raises(TypeError, match='neither a registered name'):
        build_backbone(dict(type=print))


def test_unknown_argument_is_named_with_suggestion():
    with pytest.raises(TypeError, match=r"unknown argument 'dept'.*Did you "
                                        r"mean 'depth'.*Valid arguments"):
        build_backbone(dict(type='ResNet', dept=50))


@pytest.mark.parametrize('cfg,error,match', [
    ('ResNet', TypeError, 'must be a dict'),
    (dict(depth=50), KeyError, 'no "type" key'),
    (dict(type=3), TypeError, 'type=3'),
])
def test_malformed_configs(cfg, error, match):
    with pytest.raises(error, match=match):
        build_backbone(cfg)


def test_package_exports():
    assert mmbackbone.build_backbone is build_backbone
    from mmbackbone.models import build_backbone as from_models
    assert from_models is build_backbone
    import_modules_from_strings(['mmbackbone'])


# --------------------------------------------- init_cfg types: initializers
@pytest.mark.parametrize('spelling', ['Pretrained', 'mmengine.Pretrained',
                                      'mmbackbone.Pretrained',
                                      'PretrainedInit', 'class'])
def test_init_cfg_accepts_registered_initializers_in_any_scope(tmp_path,
                                                               spelling):
    """init_cfg types are weight initializers, resolved through the scope's
    parents as init_cfg resolves them: 'mmbackbone.Pretrained' is
    mmengine's Pretrained, routed to mmbackbone's loader."""
    from mmengine.model.weight_init import PretrainedInit

    from mmbackbone.apis import check_config_types
    type_ = PretrainedInit if spelling == 'class' else spelling
    torch.manual_seed(0)
    source = ResNet(depth=18)
    path = tmp_path / 'r18.pth'
    torch.save(source.state_dict(), path)
    model = build_backbone(dict(type='ResNet', depth=18, init_cfg=dict(
        type=type_, checkpoint=str(path))))
    model.init_weights()
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    # at any depth: list entries, override (dict or list), other scopes
    check_config_types(dict(type='ImageClassifier', init_cfg=[
        dict(type='mmbackbone.Kaiming', layer='Conv2d'),
        dict(type='mmengine.Normal', layer=[], override=[
            dict(type=type_, name='backbone', checkpoint=str(path)),
            dict(type='mmbackbone.Constant', name='head', val=0)]),
        dict(type='Xavier', _scope_='mmbackbone', layer='Linear')]))


@pytest.mark.parametrize('init_cfg,error,match', [
    (dict(type='os.system', command='touch {marker}'), ValueError,
     r"init_cfg\.type='os\.system': 'os' is not a scope with weight "
     r'initializers'),
    (dict(type='mmengine.runner.checkpoint.load_checkpoint',
          filename='{marker}'), ValueError,
     r"init_cfg\.type='mmengine\.runner\.checkpoint\.load_checkpoint' is "
     r'an import path'),
    (dict(type='mmbackbone.system'), KeyError,
     r"init_cfg\.type='mmbackbone\.system': 'system' is not a registered "
     r"weight initializer in scope 'mmbackbone'"),
    (dict(type='ResNet'), KeyError,
     r"init_cfg\.type='ResNet': 'ResNet' is not a registered weight "
     r'initializer'),
    ([dict(type='Normal', layer=[], override=dict(
        type='os.system', name='stem', command='touch {marker}'))],
     ValueError, r"init_cfg\[0\]\.override\.type='os\.system'"),
    (dict(type='Normal', layer=[], override=[dict(
        type='mmengine.dump', name='stem', obj=1, file='{marker}')]),
     KeyError, r"init_cfg\.override\[0\]\.type='mmengine\.dump': 'dump' is "
               r'not a registered weight initializer'),
    (dict(type='Normal', _scope_='os'), ValueError,
     r"init_cfg\._scope_='os' is not a registered scope"),
    (dict(type=print), TypeError,
     r'init_cfg\.type=<built-in function print> is neither a registered '
     r'weight initializer'),
])
def test_init_cfg_refuses_what_is_not_a_registered_initializer(
        tmp_path, init_cfg, error, match):
    import json
    marker = tmp_path / 'ran'
    if not any(callable(v) for v in (init_cfg if isinstance(init_cfg, dict)
                                     else {}).values()):
        init_cfg = json.loads(json.dumps(init_cfg).replace(
            '{marker}', str(marker)))
    with pytest.raises(error, match=match):
        build_backbone(dict(type='ResNet', depth=18, init_cfg=init_cfg))
    assert not marker.exists()
