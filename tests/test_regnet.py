"""RegNet: arch table, mmpretrain key compatibility, timm/torchvision
equivalence through init_cfg, errors."""
import pytest
import timm
import torch
import torchvision
from mmpretrain.models import RegNet as MMPretrainRegNet

from mmbackbone import build_backbone
from mmbackbone.models import RegNet
from mmbackbone.models.backbones.regnet import (REGNET_ALIASES,
                                                REGNET_ARCHS, RegNetArch,
                                                parse_arch)

REGNETX_002 = dict(w0=24, wa=36.44, wm=2.49, depth=13, group_w=8,
                   bot_mul=1.0)


def randomize_norms(model):
    """Non-trivial BN statistics and affine terms (timm zero-inits the last
    norm of each block, which would hide the residual branch)."""
    gen = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) * 0.5 + 0.2)
            module.bias.data.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
    return model


def load_ours(arch, path, **kwargs):
    init_cfg = dict(type='Pretrained', checkpoint=str(path))
    model = RegNet(arch, init_cfg=init_cfg, **kwargs)
    model.init_weights()
    return model.eval()


# ------------------------------------------------------------ arch table
def test_regnetx_4gf_out_channels():
    with torch.device('meta'):
        model = RegNet(arch='regnetx_4.0gf', out_indices=(0, 1, 2, 3))
    assert model.out_channels == (80, 240, 560, 1360)
    assert model.out_strides == (4, 8, 16, 32)
    assert model.out_features == 1360


def test_every_name_and_alias_in_zoo_configs():
    assert set(RegNet.zoo_configs) == set(REGNET_ARCHS) | set(REGNET_ALIASES)
    assert len([a for a in REGNET_ARCHS if a.startswith('regnetx_')]) == 8
    assert len([a for a in REGNET_ARCHS if a.startswith('regnety_')]) == 11


def test_x_rows_equal_mmpretrain():
    for name, numbers in MMPretrainRegNet.arch_settings.items():
        row = REGNET_ARCHS[name]
        assert {k: getattr(row, k) for k in numbers} == numbers
        assert row.se_ratio == 0


@pytest.mark.parametrize('alias', sorted(REGNET_ALIASES))
def test_aliases_match_timm_widths_and_params(alias):
    with torch.device('meta'):
        peer = timm.create_model(alias, features_only=True)
        ours = RegNet(alias, out_indices=(0, 1, 2, 3))
    assert list(ours.out_channels) == peer.feature_info.channels()[1:]
    assert sum(p.numel() for p in ours.parameters()) == \
        sum(p.numel() for p in peer.parameters())
    assert parse_arch(alias) is REGNET_ARCHS[REGNET_ALIASES[alias]]


@pytest.mark.parametrize('name', sorted(MMPretrainRegNet.arch_settings))
@pytest.mark.parametrize('avg_down', [False, True])
def test_keys_and_shapes_equal_mmpretrain(name, avg_down):
    with torch.device('meta'):
        peer = MMPretrainRegNet(name, avg_down=avg_down)
        ours = RegNet(name, avg_down=avg_down)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in peer.state_dict().items()}


def test_y_keys_document_se_layer():
    with torch.device('meta'):
        model = RegNet('regnety_200mf')
    keys = model.state_dict()
    assert keys['layer1.0.se_layer.conv1.conv.weight'].shape == (8, 24, 1, 1)
    assert 'layer1.0.se_layer.conv1.conv.bias' in keys
    assert keys['layer1.0.se_layer.conv2.conv.weight'].shape == (24, 8, 1, 1)
    # the squeeze width is a quarter of each block's input channels
    assert keys['layer2.0.se_layer.conv1.conv.weight'].shape[0] == 6
    assert not any('se_layer' in k for k in RegNet('regnetx_400mf')
                   .state_dict())


# ------------------------------------------------------ peer equivalence
@pytest.mark.parametrize('timm_name,arch', [
    ('regnetx_002', REGNETX_002),
    ('regnetx_004', 'regnetx_400mf'),
    ('regnety_002', 'regnety_002'),
])
def test_features_equal_timm(tmp_path, timm_name, arch):
    torch.manual_seed(0)
    peer = randomize_norms(timm.create_model(timm_name)).eval()
    path = tmp_path / f'{timm_name}.pth'
    torch.save(peer.state_dict(), path)
    feats = timm.create_model(timm_name, features_only=True,
                              out_indices=(1, 2, 3, 4)).eval()
    feats.load_state_dict({k: v for k, v in peer.state_dict().items()
                           if not k.startswith('head.')})
    ours = load_ours(arch, path, out_indices=(0, 1, 2, 3))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = feats(x), ours(x)
    assert len(got) == 4
    for want, have in zip(expected, got):
        torch.testing.assert_close(have, want, atol=5e-5, rtol=1e-5)


def test_timm_safetensors_with_prefix(tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(0)
    peer = randomize_norms(timm.create_model('regnety_002')).eval()
    path = tmp_path / 'regnety_002.safetensors'
    save_file({f'model.{k}': v.contiguous()
               for k, v in peer.state_dict().items()}, str(path))
    ours = build_backbone(dict(
        type='RegNet', arch='regnety_200mf',
        init_cfg=dict(type='Pretrained', checkpoint=str(path),
                      prefix='model')))
    ours.init_weights()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = peer.forward_features(x)
        (got, ) = ours.eval()(x)
    torch.testing.assert_close(got, want, atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize('tv_name,arch', [('regnet_y_400mf', 'regnety_004'),
                                          ('regnet_x_800mf', 'regnetx_008')])
def test_features_equal_torchvision(tmp_path, tv_name, arch):
    torch.manual_seed(0)
    peer = randomize_norms(getattr(torchvision.models, tv_name)()).eval()
    path = tmp_path / f'{tv_name}.pth'
    torch.save(peer.state_dict(), path)
    ours = load_ours(arch, path, out_indices=(3, ))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = peer.trunk_output(peer.stem(x))
        (got, ) = ours(x)
    torch.testing.assert_close(got, want, atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize('name', ['regnetx_400mf', 'regnetx_800mf'])
def test_mmpretrain_state_dict_loads_strict(tmp_path, name):
    torch.manual_seed(0)
    peer = randomize_norms(MMPretrainRegNet(name, out_indices=(0, 1, 2, 3)))
    peer.eval()  # mmpretrain's train() returns None
    ours = RegNet(name, out_indices=(0, 1, 2, 3))
    ours.load_state_dict(peer.state_dict(), strict=True)
    ours.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for want, got in zip(peer(x), ours(x)):
            torch.testing.assert_close(got, want, atol=0, rtol=0)
    # and through init_cfg, from a classifier checkpoint with its prefix
    path = tmp_path / 'cls.pth'
    torch.save({'state_dict': {f'backbone.{k}': v
                               for k, v in peer.state_dict().items()}}, path)
    loaded = RegNet(name, out_indices=(0, 1, 2, 3), init_cfg=dict(
        type='Pretrained', checkpoint=str(path), prefix='backbone'))
    loaded.init_weights()
    for key, value in peer.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


# ------------------------------------------------------------- behaviour
def test_with_cp_matches_and_grads():
    torch.manual_seed(0)
    plain = RegNet('regnety_002', out_indices=(0, 1, 2, 3))
    ckpt = RegNet('regnety_002', out_indices=(0, 1, 2, 3), with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    grads = []
    for model in (plain, ckpt):
        model.train().zero_grad()
        sum(out.mean() for out in model(x)).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_zero_init_residual_and_default_init():
    model = RegNet('regnety_002')
    model.init_weights()
    block = model.layer1[0]
    assert (block.bn3.weight == 0).all() and (block.bn3.bias == 0).all()
    model = RegNet('regnety_002', zero_init_residual=False)
    model.init_weights()
    assert (model.layer1[0].bn3.weight == 1).all()


def test_frozen_stages_and_negative_out_indices():
    model = RegNet('regnetx_400mf', out_indices=(-1, 0), frozen_stages=1)
    assert model.out_indices == (3, 0)
    assert model.out_channels == (384, 32)
    model.train()
    assert not model.bn1.training and not model.layer1.training
    assert model.layer2.training
    assert not any(p.requires_grad for p in model.layer1.parameters())
    assert not model.conv1.weight.requires_grad
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [384, 32]


def test_dict_arch_fewer_stages_and_strides():
    arch = dict(w0=24, wa=0.0, wm=2.5, depth=3, group_w=8, bot_mul=1.0,
                se_ratio=0.25)
    model = RegNet(arch, strides=(2, ), dilations=(1, ), out_indices=(0, ))
    assert model.stage_blocks == [3] and model.out_channels == (24, )
    assert model(torch.randn(1, 3, 32, 32))[0].shape == (1, 24, 8, 8)


def test_dilation_keeps_resolution():
    model = RegNet('regnetx_400mf', strides=(2, 2, 2, 1),
                   dilations=(1, 1, 1, 2), out_indices=(3, )).eval()
    assert model.out_strides == (16, )
    assert model(torch.randn(1, 3, 64, 64))[0].shape == (1, 384, 4, 4)


# ---------------------------------------------------------------- errors
def test_bad_arch_name_lists_choices():
    with pytest.raises(KeyError, match=r"arch='regnetx_401mf'; choose from "
                       r".*'regnetx_12gf'.*Did you mean"):
        RegNet('regnetx_401mf')
    with pytest.raises(KeyError, match='regnety_16gf'):
        build_backbone(dict(type='RegNet', arch='regnety_320'))


def test_missing_or_wrong_type_arch():
    with pytest.raises(TypeError, match='RegNet needs arch; choose from'):
        RegNet()
    with pytest.raises(TypeError, match=r'arch=3\.2 must be an arch name'):
        RegNet(3.2)


def test_bad_dict_arch_keys():
    with pytest.raises(KeyError, match=r"unknown keys \['groups'\]"):
        RegNet(dict(REGNETX_002, groups=8))
    with pytest.raises(KeyError, match=r"missing keys \['group_w'\]"):
        RegNet({k: v for k, v in REGNETX_002.items() if k != 'group_w'})


@pytest.mark.parametrize('key,value,valid', [
    ('w0', 20, 'positive multiple of 8'),
    ('wa', -1.0, '>= 0'),
    ('wm', 1.0, '> 1'),
    ('depth', 0, 'int >= 1'),
    ('group_w', 2.5, 'int >= 1'),
    ('bot_mul', 0, '> 0'),
    ('se_ratio', 1.5, r'in \[0, 1\)'),
])
def test_bad_dict_arch_values(key, value, valid):
    with pytest.raises(ValueError, match=rf'{key}={value!r} must be .*'
                       rf'{valid}'):
        RegNet(dict(REGNETX_002, **{key: value}))


def test_too_many_stages():
    with pytest.raises(ValueError, match='yields 5 stages'):
        RegNet(dict(w0=8, wa=8.0, wm=2.0, depth=16, group_w=8, bot_mul=1.0))


@pytest.mark.parametrize('kwargs,match', [
    (dict(strides=(2, 2, 2)), r'strides=\(2, 2, 2\) must hold 4 positive'),
    (dict(dilations=(1, 1, 1, 0)), 'dilations=.* must hold 4 positive'),
    (dict(style='tf'), "style='tf'; choose 'pytorch' or 'caffe'"),
    (dict(deep_stem=True), 'deep_stem=True is not supported'),
    (dict(stem_channels=0), 'stem_channels=0 must be a positive int'),
    (dict(drop_path_rate=1.0), r'drop_path_rate=1\.0 must be in'),
    (dict(out_indices=(4, )), 'out_indices'),
    (dict(frozen_stages=5), 'frozen_stages'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RegNet('regnetx_400mf', **kwargs)


def test_wrong_checkpoint_is_an_error(tmp_path):
    peer = torchvision.models.regnet_x_400mf()  # torchvision rounds widths
    path = tmp_path / 'tv_x400.pth'             # differently for this one
    torch.save(peer.state_dict(), path)
    with pytest.raises(ValueError, match='has shape'):
        load_ours('regnetx_400mf', path)


def test_arch_row_is_accepted():
    row = RegNetArch(**REGNETX_002)
    model = RegNet(row, out_indices=(0, 1, 2, 3))
    assert model.out_channels == (24, 56, 152, 368)


def test_signature_is_resnets_with_regnet_defaults():
    import inspect

    from mmbackbone.models import ResNet
    params = inspect.signature(RegNet).parameters
    assert list(params)[0] == 'arch'
    assert not {'depth', 'expansion', 'num_stages'} & set(params)
    assert (params['stem_channels'].default, params['strides'].default,
            params['init_cfg'].default) == (32, (2, 2, 2, 2), None)
    resnet = inspect.signature(ResNet).parameters
    for name in ('out_indices', 'frozen_stages', 'norm_cfg', 'with_cp'):
        assert params[name] == resnet[name]
    with pytest.raises(TypeError, match="RegNet: .*'depth'"):
        RegNet('regnetx_400mf', depth=50)


def test_resnet_converters_refuse_regnet():
    from mmbackbone.checkpoint.convert import best_conversion
    model = RegNet('regnetx_400mf')
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state['fc.weight'] = torch.zeros(1)
    source, converted = best_conversion(state, model)
    assert source == 'mmbackbone' and 'fc.weight' in converted


def test_pretrained_arch_names():
    from mmbackbone.zoo import default_weights
    assert RegNet.canonical_arch('regnetx_004') == 'regnetx_400mf'
    assert default_weights('RegNet', 'regnetx_004').arch == 'regnetx_400mf'
