"""Users arriving from mmcls / mmpretrain and the seed systems: their
checkpoint names and argument spellings work, or say what they are here
(docs/migrating.md)."""
import hashlib

import pytest
import torch
from mmengine.config import Config

from mmbackbone import build_backbone
from mmbackbone.checkpoint.resolve import (_mmengine_url, default_prefix,
                                           mmcls_entry, resolve_checkpoint)
from mmbackbone.models import ImageClassifier
from mmbackbone.zoo import (MMCLS_NAMES, MMPRETRAIN_NAMES, WeightsEntry,
                            get_weights, load_index)


def _mmcls_table():
    from mmengine.runner.checkpoint import get_mmcls_models
    return get_mmcls_models()


def _offline(*args, **kwargs):
    import urllib.error
    raise urllib.error.URLError('network is unreachable')


# ------------------------------------------------------- mmcls:// names
def test_every_mapped_name_names_an_index_entry():
    index = load_index()
    for name in (*MMCLS_NAMES.values(), *MMPRETRAIN_NAMES.values()):
        assert name in index, name


def test_mapped_mmcls_names_hold_mmengines_file():
    """Where mmengine's table has the name, the index entry is its file
    (same URL), so the index only adds the mirror and the hash checks."""
    table = _mmcls_table()
    assert len(table) == 57
    for name, entry in MMCLS_NAMES.items():
        if name in table:
            assert get_weights(entry).url == table[name], name


def test_tutorial_short_names_are_not_in_mmengines_table():
    table = _mmcls_table()
    for name in ('cspresnext50', 'regnet-4g'):
        assert name not in table and mmcls_entry(name)


def test_all_57_mmengine_names_resolve_to_a_url():
    """Each name resolves: through the index where it fits, else through
    mmengine's URL (no download: the URL is only looked up)."""
    for name, url in _mmcls_table().items():
        entry = mmcls_entry(name)
        if entry is not None:
            assert get_weights(entry).url == url
        else:
            assert _mmengine_url(f'mmcls://{name}') == url


@pytest.mark.parametrize('name,suggested', [
    ('regnet-4', 'regnet-4g'),        # a tutorial name
    ('cspresnext', 'cspresnext50'),
    ('vgg16bn', 'vgg16_bn'),          # mmengine's table
    ('resnet5', 'resnet50'),
])
def test_unknown_mmcls_name_suggests_from_both(name, suggested):
    with pytest.raises(KeyError, match=f"Did you mean .*'{suggested}'"):
        resolve_checkpoint(f'mmcls://{name}')


def test_mmpretrain_model_names_are_index_names(monkeypatch):
    assert get_weights('resnet50_8xb32_in1k').name == \
        'resnet50.mmpretrain_in1k'
    with pytest.raises(KeyError, match="Did you mean 'resnet50_8xb32_in1k'"):
        get_weights('resnet50_8xb32_in1')
    from mmbackbone.models import BaseBackbone
    asked = []
    monkeypatch.setattr(BaseBackbone, 'init_weights',
                        lambda self: asked.append(self.init_cfg))
    with torch.device('meta'):
        build_backbone(dict(type='ResNetV1d', depth=152,
                            pretrained='resnetv1d152_8xb32_in1k'))
    assert asked[0]['checkpoint'] == \
        'mmbackbone://resnetv1d152.mmpretrain_in1k'


def test_default_prefix_follows_mmengines_mmcls_loader():
    assert default_prefix('mmcls://resnet50') == 'backbone'
    assert default_prefix('mmbackbone://vit-base-p16_in21k-pre_3rdparty_'
                          'in1k-384px') == 'backbone'
    assert default_prefix('mmbackbone://resnet50.tv_in1k') is None
    assert default_prefix('torchvision://resnet50') is None


# ----------------------------- the mmcls tutorial's mmdet / mmseg configs
# The configs of the mmcls backbone tutorial ("Using mmcls Backbone in
# mmdet / mmsegmentation"), as written there but for the one change a
# user makes: `mmcls` -> `mmbackbone` in custom_imports and the type scope.
# Their `_base_` files are stand-ins with the backbone they replace.
DET_BASE = """
model = dict(type='YOLOX',
             backbone=dict(type='CSPDarknet', deepen_factor=0.33,
                           widen_factor=0.5),
             neck=dict(type='YOLOXPAFPN', in_channels=[128, 256, 512]))
"""
DET_CONFIG = """
_base_ = "./yolox_s_8x8_300e_coco.py"
custom_imports=dict(imports='mmbackbone.models', allow_failed_imports=False)
model = dict(
    backbone=dict(
        type='mmbackbone.CSPResNeXt',
        arch=50,
        out_indices=(1, 2, 3),
        init_cfg=dict(
            type='Pretrained',
            checkpoint='mmcls://cspresnext50'),
        _delete_=True),
    neck=dict(in_channels=[512, 1024, 2048])
)
"""
SEG_BASE = """
model = dict(type='EncoderDecoder',
             backbone=dict(type='ResNetV1c', depth=50),
             decode_head=dict(type='UPerHead', in_channels=[256, 512, 1024,
                                                            2048]),
             auxiliary_head=dict(type='FCNHead', in_channels=1024))
"""
SEG_CONFIG = """
_base_ = "./upernet_r50_512x512_80k_ade20k.py"
custom_imports=dict(imports='mmbackbone.models', allow_failed_imports=False)
model = dict(
    backbone=dict(
        type='mmbackbone.RegNet',
        arch='regnetx_4.0gf',
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(
            type='Pretrained',
            checkpoint='mmcls://regnet-4g'),
        _delete_=True),
    decode_head=dict(in_channels=[80, 240, 560, 1360]),
    auxiliary_head=dict(in_channels=560),
)
"""
TUTORIAL = [
    ('yolox_s_8x8_300e_coco.py', DET_BASE, 'cspresnext50', DET_CONFIG,
     [512, 1024, 2048]),
    ('upernet_r50_512x512_80k_ade20k.py', SEG_BASE, 'regnet-4g', SEG_CONFIG,
     [80, 240, 560, 1360]),
]


def _mirror_checkpoint(mirror, entry, backbone_cfg, monkeypatch):
    """A random-weight checkpoint in mmpretrain's layout (a classifier's
    ``state_dict``: ``backbone.*`` and ``head.fc.*``) under the file name
    the index expects; the index entry is given its digest, since a
    generated file cannot carry the published one."""
    torch.manual_seed(0)
    source = build_backbone(backbone_cfg)
    state = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    state['head.fc.weight'] = torch.randn(1000, source.out_features)
    state['head.fc.bias'] = torch.randn(1000)
    path = mirror / entry.filename
    torch.save({'state_dict': state, 'meta': {}}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(load_index(), entry.name, WeightsEntry(**{
        **entry.__dict__, 'sha256': digest, 'sha256_prefix': None}))
    return source.state_dict()


@pytest.mark.parametrize('base_name,base,name,config,channels', TUTORIAL,
                         ids=['mmdet-yolox', 'mmseg-upernet'])
def test_tutorial_configs_load_mmcls_checkpoints_offline(
        tmp_path, monkeypatch, base_name, base, name, config, channels):
    from mmengine.registry import MODELS as ROOT_MODELS
    (tmp_path / base_name).write_text(base)
    (tmp_path / 'config.py').write_text(config)
    cfg = Config.fromfile(str(tmp_path / 'config.py'))
    backbone_cfg = cfg.model.backbone.to_dict()
    assert '_delete_' not in backbone_cfg

    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    entry = get_weights(mmcls_entry(name))
    plain = {k: v for k, v in backbone_cfg.items() if k != 'init_cfg'}
    plain['type'] = plain['type'].split('.')[-1]
    expected = _mirror_checkpoint(mirror, entry, plain, monkeypatch)
    monkeypatch.setenv('MMBACKBONE_WEIGHTS', str(mirror))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setattr('urllib.request.urlopen', _offline)

    model = ROOT_MODELS.build(backbone_cfg)  # as mmdet / mmseg build it
    model.init_weights()
    assert list(model.out_channels) == channels
    got = model.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, msg=key)
    assert not (tmp_path / 'torch').exists()  # read in place, not cached


# ------------------------------------------ spellings of the seed systems
@pytest.mark.parametrize('cfg,meaning', [
    (dict(type='ResNet', depth=50, return_idx=[0, 1, 2]),
     'return_idx is out_indices here'),
    (dict(type='DLA', return_index=[1, 2]), 'return_index is out_indices'),
    (dict(type='DLA', dla='dla34'), r"dla is arch \(DLA\(arch='dla34'\)\)"),
    (dict(type='RegNet', variant='regnet-y-080'), 'variant is arch'),
    (dict(type='ResNet', architecture='resnet50'),
     "architecture is type plus depth or arch"),
    (dict(type='ResNet', depth=50, use_pretrained=True),
     'use_pretrained is pretrained'),
    (dict(type='ResNet', depth=50, backbone_trainable=False),
     "frozen_stages='all'"),
    (dict(type='ResNet', depth=50, input_size=[128, 128]),
     'input_size is a data setting'),
    (dict(type='ResNet', depth=50, path='jit.pt'),
     "path is TorchScriptBackbone's path"),
    (dict(type='ResNet', depth=50, nr_features=512),
     'nr_features is the out_features attribute'),
    (dict(type='ResNet', depth=50, intermediate_mlp_depth=2),
     'intermediate_mlp_depth is the depth of an MLPNeck'),
    (dict(type='ResNet', depth=50, returnt='features'),
     'returnt is a forward argument of ImageClassifier'),
])
def test_old_spellings_say_what_they_are_here(cfg, meaning):
    with pytest.raises(TypeError, match=meaning):
        build_backbone(cfg)


def test_new_spellings_of_the_seed_examples_build():
    assert len(build_backbone(dict(type='ResNet', depth=50,
                                   out_indices=[0, 1, 2])).out_channels) == 3
    assert build_backbone(dict(type='DLA', arch='dla34')).out_channels
    model = build_backbone(dict(type='RegNet', arch='regnety_8.0gf',
                                out_indices=[0, 1, 2]))
    assert len(model.out_channels) == 3
    frozen = build_backbone(dict(type='ResNet', depth=18,
                                 frozen_stages='all'))
    assert not any(p.requires_grad for p in frozen.parameters())


# ------------------------------------------------- Mammoth on a classifier
def _classifier():
    torch.manual_seed(0)
    return ImageClassifier(backbone=dict(type='ResNet', depth=18),
                           neck=dict(type='GlobalAveragePooling'),
                           head=dict(type='LinearClsHead', num_classes=10))


def test_flat_params_and_grads_cover_the_whole_classifier():
    model = _classifier()
    flat = model.get_params()
    assert flat.numel() == sum(p.numel() for p in model.parameters())
    backbone = model.backbone.get_params()
    torch.testing.assert_close(flat[:backbone.numel()], backbone)
    model.set_params(flat + 1)
    torch.testing.assert_close(model.get_params(), flat + 1)
    torch.testing.assert_close(model.head.fc.bias.detach(),
                               model.get_params()[-10:])
    assert not model.get_grads().any()  # zeros where no grad exists
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    grads = model.get_grads()
    assert grads.numel() == flat.numel() and grads.any()
    model.set_grads(torch.ones_like(grads))
    assert all((p.grad == 1).all() for p in model.parameters())
    with pytest.raises(ValueError, match=f'{flat.numel()} elements'):
        model.set_params(flat[:-1])


def test_mammoth_returnt_on_the_classifier():
    model = _classifier().eval()
    x = torch.rand(2, 3, 32, 32)
    logits, feats = model(x, returnt='both')
    assert logits.shape == (2, 10) and feats.shape == (2, 512)
    torch.testing.assert_close(model(x, returnt='out'), logits)
    torch.testing.assert_close(model(x, returnt='features'), feats)
    full = model(x, returnt='full')
    assert isinstance(full, list) and full[-1].shape == (2, 10)
    with pytest.raises(ValueError, match="returnt='logits'"):
        model(x, returnt='logits')
