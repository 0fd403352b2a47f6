"""Layer-wise lr decay: every backbone's ``get_layer_depth`` and the
optimizer wrapper constructor built on it.

Expected depths come from name rules written here (per family), from
timm's own ``param_groups_layer_decay`` (TIMMBackbone) and from
mmpretrain's constructor (ViT); the learning rate of each parameter must
be ``lr * rate ** (num_layers - depth - 1)``.
"""
import copy
import re
import warnings

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from torch import nn

from mmbackbone import build_backbone, list_backbones
from mmbackbone.engine.optim import LayerDecayOptimWrapperConstructor
from mmbackbone.models.backbones.base_backbone import BaseBackbone
from mmbackbone.registry import MODELS

LR, WD, RATE = 0.1, 0.05, 0.7
CONSTRUCTOR = 'mmbackbone.LayerDecayOptimWrapperConstructor'
#: Learned tokens and position embeddings: no weight decay.
TOKENS = {'cls_token', 'dist_token', 'reg_token', 'register_tokens',
          'mask_token', 'pos_embed', 'absolute_pos_embed',
          'relative_position_bias_table'}


# ------------------------------------------------ expected depth rules
def _by_prefix(stem: str, stage: str, offset: int):
    """Rule: names under ``stem`` -> 0, ``stage`` (a regex with the stage
    number) -> number + offset, the rest -> last."""
    def rule(name, model):
        last = model.num_stages + 1
        if re.match(stem, name):
            return 0, last + 1
        found = re.match(stage, name)
        return (int(found.group(1)) + offset if found else last), last + 1
    return rule


def _vit_rule(name, model):
    """mmpretrain 1.2's ViT numbering."""
    last = model.num_layers + 1
    if name in ('cls_token', 'pos_embed') or name.startswith('patch_embed'):
        return 0, last + 1
    found = re.match(r'layers\.(\d+)\.', name)
    return (int(found.group(1)) + 1 if found else last), last + 1


RESNET_RULE = _by_prefix(r'(conv1|bn1|stem)\.', r'layer(\d+)\.', 0)
CSP_RULE = _by_prefix(r'stem\.', r'stages\.(\d+)\.', 1)
RULES = {
    'ResNet': RESNET_RULE, 'ResNetV1c': RESNET_RULE,
    'ResNetV1d': RESNET_RULE, 'RegNet': RESNET_RULE,
    'CSPNet': CSP_RULE, 'CSPDarkNet': CSP_RULE, 'CSPResNet': CSP_RULE,
    'CSPResNeXt': CSP_RULE,
    'DLA': _by_prefix(r'base_layer\.', r'level(\d+)\.', 1),
    'VisionTransformer': _vit_rule,
}
#: A small arch of each type and its input size (the first zoo config
#: otherwise, at 64x64).
SMALL = {'DLA': ('dla46_c', {}, 64),
         'VisionTransformer': ('deit-tiny', dict(img_size=32), 32)}
#: wrappers of other models, with tests of their own depths here
#: (TIMMBackbone, TorchScriptBackbone) or in tests/test_pyramid.py and
#: tests/test_exported_backbone.py
WRAPPERS = ('TIMMBackbone', 'TorchScriptBackbone', 'PyramidBackbone',
            'ExportedBackbone')
NATIVE = [name for name in list_backbones() if name not in WRAPPERS]


# ----------------------------------------------------------- helpers
class Detector(nn.Module):
    """A backbone with a neck and a head, as mmdet / mmseg models hold it."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.neck = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4, 2)


def build_groups(model, **paramwise):
    """``{param name: group}`` built through mmengine's config path."""
    wrapper = build_optim_wrapper(model, dict(
        constructor=CONSTRUCTOR,
        optimizer=dict(type='AdamW', lr=LR, weight_decay=WD),
        paramwise_cfg=dict(layer_decay_rate=RATE, **paramwise)))
    groups = wrapper.optimizer.param_groups
    assert all(len(g['params']) == 1 for g in groups)
    return {g['param_name']: g for g in groups}


def expected_decay(name, param):
    return 0.0 if param.ndim <= 1 or name.rpartition('.')[2] in TOKENS \
        else WD


def check_groups(model, groups, expected_depth):
    """Each parameter's lr and weight decay against the formula; returns
    the backbone's ``(depths in forward order, num_layers)``."""
    params = dict(model.named_parameters())
    assert set(groups) == set(params)
    for name, param in params.items():
        group = groups[name]
        assert group['params'][0] is param
        if name.startswith('backbone.'):
            depth, num_layers = expected_depth(name[len('backbone.'):])
        else:
            depth, num_layers = 0, 1  # the base lr
        assert group['lr'] == pytest.approx(
            LR * RATE**(num_layers - depth - 1)), name
        assert group['weight_decay'] == expected_decay(name, param), name
    return num_layers


def forward_order_depths(backbone, size):
    """The backbone's parameter depths, in the order a forward pass first
    reaches the modules that hold them (run on the meta device: only the
    order matters)."""
    backbone = copy.deepcopy(backbone).to('meta')
    order, handles = [], []
    for name, module in backbone.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            handles.append(module.register_forward_pre_hook(
                lambda mod, args, name=name: order.append(name)
                if name not in order else None))
    with torch.no_grad():
        backbone.eval()(torch.empty(1, 3, size, size, device='meta'))
    for handle in handles:
        handle.remove()
    depths = []
    for module_name in order:
        module = backbone.get_submodule(module_name)
        for leaf, _ in module.named_parameters(recurse=False):
            name = f'{module_name}.{leaf}' if module_name else leaf
            depths.append(backbone.get_layer_depth(name)[0])
    return depths


def check_depth_shape(backbone, size):
    """Depths rise in forward order and use 0..num_layers-2 (the last is
    for what follows the backbone)."""
    depths = forward_order_depths(backbone, size)
    num_layers = backbone.get_layer_depth('head.weight', 'backbone.')[1]
    assert depths == sorted(depths)
    every = {backbone.get_layer_depth(n)[0]
             for n, _ in backbone.named_parameters()}
    assert set(range(num_layers - 1)) <= every <= set(range(num_layers))


# -------------------------------------------------- native backbones
def test_every_native_type_has_a_rule():
    assert set(NATIVE) == set(RULES), 'add the new family to RULES'


@pytest.mark.parametrize('type_name', NATIVE)
def test_native_backbone(type_name):
    cls = MODELS.get(type_name)
    arch, extra, size = SMALL.get(type_name,
                                  (next(iter(cls.zoo_configs)), {}, 64))
    torch.manual_seed(0)
    backbone = build_backbone(dict(type=type_name, **cls.zoo_configs[arch],
                                   **extra))
    model = Detector(backbone)
    rule = RULES[type_name]
    check_groups(model, build_groups(model),
                 lambda name: rule(name, backbone))
    check_depth_shape(backbone, size)
    outside = backbone.get_layer_depth('neck.weight', 'backbone.')
    assert outside[0] == outside[1] - 1


def test_torchscript_backbone_is_one_depth(tmp_path):
    path = str(tmp_path / 'net.pt')
    torch.jit.save(torch.jit.script(nn.Sequential(
        nn.Conv2d(3, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.ReLU())), path)
    backbone = build_backbone(dict(type='TorchScriptBackbone', path=path,
                                   nr_features=4))
    model = Detector(backbone)
    check_groups(model, build_groups(model), lambda name: (0, 1))
    assert {backbone.get_layer_depth(n) for n, _ in
            backbone.named_parameters()} == {(0, 1)}


# -------------------------------------------------------------- timm
TIMM_CASES = [
    ('resnet18', False, {}, 64),
    ('vit_tiny_patch16_224', False, dict(img_size=32), 32),
    ('swin_tiny_patch4_window7_224', False,
     dict(img_size=64, window_size=2), 64),
    ('convnext_atto', True, {}, 64),
    ('efficientnet_b0', True, {}, 64),
    ('regnetx_002', True, {}, 64),
    ('deit_tiny_patch16_224', True, dict(img_size=32), 32),
]


def timm_reference(model_name, kwargs):
    """timm's own layer decay on the whole model: ``{timm name: (lr,
    weight decay)}``."""
    import timm
    from timm.optim._param_groups import param_groups_layer_decay
    with torch.device('meta'), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        full = timm.create_model(model_name, **kwargs)
    no_decay = getattr(full, 'no_weight_decay', lambda: ())()
    groups = param_groups_layer_decay(full, weight_decay=WD,
                                      no_weight_decay_list=no_decay,
                                      layer_decay=RATE)
    names = {id(p): n for n, p in full.named_parameters()}
    return {names[id(p)]: (LR * g['lr_scale'], g['weight_decay'])
            for g in groups for p in g['params']}


def timm_name(name, reference):
    """Our ``timm_model.*`` name -> the whole timm model's name (features
    mode flattens ``stages.0`` to ``stages_0`` and may wrap in
    ``model.``)."""
    name = name.removeprefix('timm_model.').removeprefix('model.')
    if name not in reference:
        name = re.sub(r'^([a-z]+)_(\d+)\.', r'\1.\2.', name)
    return name


@pytest.mark.parametrize('model_name,features_only,kwargs,size', TIMM_CASES,
                         ids=[case[0] for case in TIMM_CASES])
def test_timm_backbone_matches_timm_layer_decay(model_name, features_only,
                                                kwargs, size):
    backbone = build_backbone(dict(type='TIMMBackbone', model_name=model_name,
                                   features_only=features_only, **kwargs))
    reference = timm_reference(model_name, kwargs)
    groups = build_groups(backbone)  # the backbone is the whole model
    assert len(groups) == len(list(backbone.parameters()))
    for name, group in groups.items():
        lr, decay = reference[timm_name(name, reference)]
        assert group['lr'] == pytest.approx(lr), name
        assert group['weight_decay'] == decay, name
    check_depth_shape(backbone, size)


# ------------------------------------------- mmpretrain equivalence
@pytest.mark.parametrize('extra', [dict(), dict(out_type='avg_featmap',
                                                pre_norm=True)])
def test_vit_matches_mmpretrain(extra):
    mmpretrain = pytest.importorskip('mmpretrain')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        from mmpretrain.engine.optimizers import \
            LearningRateDecayOptimWrapperConstructor as Reference
        from mmpretrain.models.backbones import VisionTransformer as Theirs
    del mmpretrain

    class Classifier(nn.Module):

        def __init__(self, backbone):
            super().__init__()
            self.backbone, self.head = backbone, nn.Linear(192, 10)

        def get_layer_depth(self, name):
            return self.backbone.get_layer_depth(name, 'backbone.')

    cfg = dict(arch='deit-tiny', img_size=32, **extra)
    ours = Classifier(build_backbone(dict(type='VisionTransformer', **cfg)))
    theirs = Classifier(Theirs(**cfg))
    assert set(ours.state_dict()) == set(theirs.state_dict())
    optim = dict(optimizer=dict(type='AdamW', lr=LR, weight_decay=WD))
    got = LayerDecayOptimWrapperConstructor(
        optim, dict(layer_decay_rate=RATE))(ours).optimizer.param_groups
    want = Reference(optim, dict(layer_decay_rate=RATE))(
        theirs).optimizer.param_groups
    want = {g['param_name']: g['lr'] for g in want}
    assert {g['param_name']: g['lr'] for g in got} == pytest.approx(want)
    assert len(set(want.values())) == 14  # 12 blocks, embeddings, the rest


# ------------------------------------------------ constructor options
def resnet_model(**kwargs):
    torch.manual_seed(0)
    return Detector(build_backbone(dict(type='ResNet', depth=18, **kwargs)))


def test_custom_keys_and_decay_mults():
    model = resnet_model()
    groups = build_groups(model, bias_decay_mult=None, flat_decay_mult=None,
                          norm_decay_mult=0.5,
                          custom_keys={'layer1.0': dict(lr_mult=2.0,
                                                        decay_mult=0.25)})
    scale = RATE**(6 - 1 - 1)
    assert groups['backbone.layer1.0.conv1.weight']['lr'] == \
        pytest.approx(2 * LR * scale)
    assert groups['backbone.layer1.0.bn1.weight']['weight_decay'] == \
        pytest.approx(0.25 * WD)
    assert groups['backbone.layer1.1.bn1.weight']['weight_decay'] == \
        pytest.approx(0.5 * WD)
    assert groups['head.bias']['weight_decay'] == WD
    assert groups['neck.weight']['lr'] == LR


def test_frozen_parameters_are_left_out():
    groups = build_groups(resnet_model(frozen_stages=1))
    assert not any(name.startswith(('backbone.conv1', 'backbone.layer1'))
                   for name in groups)
    assert 'backbone.layer2.0.conv1.weight' in groups


def test_weight_decay_defaults_to_the_optimizer_default():
    wrapper = build_optim_wrapper(resnet_model(), dict(
        constructor=CONSTRUCTOR, optimizer=dict(type='AdamW', lr=LR),
        paramwise_cfg=dict(layer_decay_rate=RATE)))
    decays = {g['param_name']: g['weight_decay']
              for g in wrapper.optimizer.param_groups}
    assert decays['backbone.conv1.weight'] == 0.01  # torch's AdamW default
    assert decays['backbone.bn1.weight'] == 0.0


@pytest.mark.parametrize('paramwise,error,match', [
    (dict(layer_decay=0.65), KeyError, "'layer_decay' is unknown"),
    (dict(layer_decay_rate=0), ValueError, 'layer_decay_rate=0 '),
    (dict(layer_decay_rate=1.5), ValueError, r'\(0, 1\]'),
    (dict(layer_decay_rate=True), ValueError, 'layer_decay_rate=True'),
    (dict(norm_decay_mult=-1), ValueError, 'norm_decay_mult=-1'),
    (dict(custom_keys=[]), TypeError, 'custom_keys=\\[\\]'),
    (dict(custom_keys={'head': dict(lr=1)}), KeyError, "option 'lr'"),
])
def test_bad_options_are_named(paramwise, error, match):
    with pytest.raises(error, match=match):
        LayerDecayOptimWrapperConstructor(
            dict(optimizer=dict(type='AdamW', lr=LR)), paramwise)


def test_missing_lr_is_named():
    with pytest.raises(ValueError, match='lr=None'):
        LayerDecayOptimWrapperConstructor(dict(optimizer=dict(type='SGD')),
                                          dict(layer_decay_rate=RATE))


def test_backbone_without_depths_is_named():
    model = Detector(nn.Conv2d(3, 4, 3))
    constructor = LayerDecayOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=LR)), dict(layer_decay_rate=0.5))
    with pytest.raises(NotImplementedError, match='Conv2d has none'):
        constructor(model)
    with pytest.raises(NotImplementedError, match='Linear has neither'):
        constructor(nn.Linear(2, 2))


def test_family_without_stage_records_must_define_depths():

    class Plain(BaseBackbone):

        def __init__(self):
            super().__init__()
            self._setup_outputs([4], [1], (0, ))
            self.conv = nn.Conv2d(3, 4, 1)

    with pytest.raises(NotImplementedError, match='Plain declares no stages'):
        Plain().get_layer_depth('conv.weight')
