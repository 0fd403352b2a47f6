"""ResNet family: peers (torchvision, timm, mmpretrain), args, errors."""
import pytest
import timm
import torch
import torchvision
from helpers import randomize_norm_stats, save_state_dict
from mmengine.utils.dl_utils.parrots_wrapper import _BatchNorm

from mmbackbone import build_backbone
from mmbackbone.models import ResNet, ResNetV1c, ResNetV1d


def pretrained(path, prefix=None):
    cfg = dict(type='Pretrained', checkpoint=str(path))
    if prefix:
        cfg['prefix'] = prefix
    return cfg


def loaded(cfg):
    model = build_backbone(cfg)
    model.init_weights()
    return model.eval()


def torchvision_features(model, x):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    outs = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        outs.append(x)
    return outs


@pytest.mark.parametrize('fmt', ['pth', 'safetensors'])
def test_resnet50_equals_torchvision(tmp_path, fmt):
    peer = randomize_norm_stats(torchvision.models.resnet50()).eval()
    path = save_state_dict(peer.state_dict(), tmp_path / f'tv.{fmt}')
    ours = loaded(dict(type='ResNet', depth=50, out_indices=(0, 1, 2, 3),
                       init_cfg=pretrained(path)))
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        for a, b in zip(ours(x), torchvision_features(peer, x)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize('ours_type,timm_name',
                         [('ResNet', 'resnet50'), ('ResNetV1d', 'resnet50d'),
                          ('ResNetV1c', 'resnet50c'),
                          ('ResNet', 'resnet18')])
def test_equals_timm(tmp_path, ours_type, timm_name):
    peer = randomize_norm_stats(timm.create_model(timm_name)).eval()
    path = save_state_dict(peer.state_dict(), tmp_path / 'timm.pth')
    depth = int(timm_name[6:8].rstrip('cd'))
    ours = loaded(dict(type=ours_type, depth=depth, out_indices=(0, 1, 2, 3),
                       init_cfg=pretrained(path)))
    features = timm.create_model(timm_name, features_only=True,
                                 out_indices=(1, 2, 3, 4))
    features.load_state_dict(peer.state_dict(), strict=False)
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        for a, b in zip(ours(x), features.eval()(x)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize('cls_name,kwargs', [
    ('ResNet', dict(depth=18)), ('ResNet', dict(depth=50)),
    ('ResNetV1c', dict(depth=50)), ('ResNetV1d', dict(depth=50)),
    ('ResNet', dict(depth=50, style='caffe', strides=(1, 2, 2, 1),
                    dilations=(1, 1, 1, 2)))])
def test_mmpretrain_state_dict_loads_strictly(cls_name, kwargs):
    import mmpretrain.models as mmp
    peer = randomize_norm_stats(
        getattr(mmp, cls_name)(out_indices=(0, 1, 2, 3), **kwargs))
    peer.eval()  # mmpretrain's train() returns None, so no chaining
    ours = getattr(__import__('mmbackbone.models', fromlist=[cls_name]),
                   cls_name)(out_indices=(0, 1, 2, 3), **kwargs).eval()
    ours.load_state_dict(peer.state_dict(), strict=True)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(ours(x), peer(x)):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_arch_aliases_and_order():
    assert ResNet(arch=50).depth == 50
    assert ResNet(arch='resnet50').depth == 50
    assert ResNet('resnet18').depth == 18
    model = ResNet(depth=18, out_indices=[3, 0, -2]).eval()
    assert model.out_indices == (3, 0, 2)
    assert model.out_channels == (512, 64, 256)
    assert model.out_strides == (32, 4, 16)
    assert model.out_features == 256
    outs = model(torch.rand(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [512, 64, 256]


def test_variants_are_deep_stem():
    assert ResNetV1c(depth=18).deep_stem and not ResNetV1c(depth=18).avg_down
    assert ResNetV1d(depth=18).avg_down
    assert hasattr(ResNetV1d(depth=18), 'stem')


def test_tutorial_frozen_stages():
    frozen_stages = 2
    model = build_backbone(dict(type='ResNet', depth=50,
                                out_indices=(0, 1, 2, 3),
                                frozen_stages=frozen_stages))
    model.init_weights()
    model.train()
    for i in range(1, frozen_stages + 1):
        layer = getattr(model, f'layer{i}')
        for mod in layer.modules():
            if isinstance(mod, _BatchNorm):
                assert mod.training is False
        for param in layer.parameters():
            assert param.requires_grad is False
    assert all(p.requires_grad for p in model.layer3.parameters())
    assert model.layer3.training


def test_zero_init_residual_only_without_pretrained(tmp_path):
    model = ResNet(depth=18)
    model.init_weights()
    assert (model.layer1[0].bn2.weight == 0).all()
    src = ResNet(depth=18)
    path = save_state_dict(src.state_dict(), tmp_path / 'r18.pth')
    model = ResNet(depth=18, init_cfg=pretrained(path))
    model.init_weights()
    torch.testing.assert_close(model.layer1[0].bn2.weight,
                               src.layer1[0].bn2.weight)


def test_with_cp_same_outputs_and_grads():
    torch.manual_seed(0)
    plain = ResNet(depth=18, out_indices=(0, 1, 2, 3))
    cp = ResNet(depth=18, out_indices=(0, 1, 2, 3), with_cp=True)
    cp.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 32, 32)
    for model in (plain, cp):
        sum(o.sum() for o in model.train()(x)).backward()
    for (name, a), b in zip(plain.named_parameters(), cp.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_norm_cfg_reaches_every_norm():
    model = ResNet(depth=18, norm_cfg=dict(type='GN', num_groups=8))
    assert not any(isinstance(m, torch.nn.BatchNorm2d)
                   for m in model.modules())
    assert model.layer1[0].gn1.num_groups == 8


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(depth=19), KeyError, r'depth=19.*\[18, 34, 50, 101, 152\]'),
    (dict(arch='resnet19'), KeyError, 'choose from'),
    (dict(depth=18, arch=50), ValueError, 'disagree'),
    (dict(depth=18, out_indices=(4, )), ValueError,
     r'out_indices.*\[-4, 3\]'),
    (dict(depth=18, out_indices=(-5, )), ValueError, r'\[-4, 3\]'),
    (dict(depth=18, out_indices=()), ValueError, 'empty'),
    (dict(depth=18, out_indices=('1', )), TypeError, 'not an int'),
    (dict(depth=18, frozen_stages=5), ValueError,
     r"frozen_stages=5.*-1.*'all'"),
    (dict(depth=18, frozen_stages='some'), TypeError, 'frozen_stages'),
    (dict(depth=18, num_stages=5), ValueError, 'num_stages=5'),
    (dict(depth=18, strides=(1, 2)), ValueError, 'strides'),
    (dict(depth=18, style='tf'), ValueError, "style='tf'"),
    (dict(depth=18, norm_cfg=dict(type='BatchNorm')), KeyError,
     "unknown type 'BatchNorm'.*BN"),
    (dict(depth=18, norm_cfg='BN'), TypeError, 'norm_cfg'),
    (dict(depth=18, in_channels=0), ValueError, 'in_channels=0'),
    (dict(depth=18, drop_path_rate=1.5), ValueError, 'drop_path_rate'),
    (dict(), TypeError, 'needs depth'),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        build_backbone(dict(type='ResNet', **kwargs))
