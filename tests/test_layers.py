"""The layer factory: torch and timm spellings of layer types get the
registered name suggested."""
import pytest

from mmbackbone import build_backbone


@pytest.mark.parametrize('arg, given, meant', [
    ('norm_cfg', 'BatchNorm', 'BN'),
    ('norm_cfg', 'BatchNorm2d', 'BN2d'),
    ('norm_cfg', 'batch_norm', 'BN'),
    ('norm_cfg', 'SyncBatchNorm', 'SyncBN'),
    ('norm_cfg', 'GroupNorm', 'GN'),
    ('norm_cfg', 'LayerNorm', 'LN'),
    ('act_cfg', 'Hardswish', 'HSwish'),
    ('act_cfg', 'relu', 'ReLU'),
])
def test_other_libraries_spellings_suggest_the_registered_name(
        arg, given, meant):
    with pytest.raises(KeyError) as info:
        build_backbone(dict(type='CSPDarkNet', depth=53,
                            **{arg: dict(type=given)}))
    message = str(info.value)
    assert f"unknown type {given!r}. Did you mean {meant!r}?" in message
    assert f'{arg}=' in message


def test_a_name_close_to_nothing_gets_no_suggestion():
    with pytest.raises(KeyError) as info:
        build_backbone(dict(type='ResNet', depth=18,
                            norm_cfg=dict(type='Quux')))
    assert 'Did you mean' not in str(info.value)
    assert 'Known types: BN' in str(info.value)


# ------------------------------------------------ the shared residual block
def test_residual_block_groups_mid_channels_and_se():
    import torch
    from mmbackbone.models.layers import ResidualBlock, SqueezeExcite
    block = ResidualBlock(32, 64, mid_channels=48, groups=4, se_channels=8,
                          stride=2)
    assert block.conv2.groups == 4 and block.conv2.stride == (2, 2)
    assert block.conv1.stride == (1, 1)  # 'pytorch': stride on the 3x3
    assert tuple(block.conv2.weight.shape) == (48, 12, 3, 3)
    assert isinstance(block.se_layer, SqueezeExcite)
    assert tuple(block.se_layer.conv1.conv.weight.shape) == (8, 48, 1, 1)
    assert [name for name, _ in block.named_children()] == [
        'conv1', 'bn1', 'conv2', 'bn2', 'se_layer', 'conv3', 'bn3', 'relu',
        'drop_path']
    shortcut = torch.rand(1, 64, 4, 4)
    assert block.eval()(torch.rand(1, 32, 8, 8), shortcut).shape == \
        shortcut.shape
    caffe = ResidualBlock(32, 64, stride=2, style='caffe')
    assert caffe.conv1.stride == (2, 2) and caffe.conv2.stride == (1, 1)
    assert caffe.mid_channels == 16 and caffe.se_layer is None


def test_residual_block_basic_layout_and_norm_names():
    from mmbackbone.models.layers import ResidualBlock
    basic = ResidualBlock(8, 8, layout='basic',
                          norm_cfg=dict(type='GN', num_groups=2))
    assert [name for name, _ in basic.named_children()] == [
        'conv1', 'gn1', 'conv2', 'gn2', 'relu', 'drop_path']
    assert basic.last_norm is basic.gn2

    class Fixed(ResidualBlock):
        norm_prefix = 'bn'

    fixed = Fixed(8, 8, norm_cfg=dict(type='GN', num_groups=2))
    assert fixed.norm3_name == 'bn3' and type(fixed.bn3).__name__ == \
        'GroupNorm'


def test_residual_block_zero_init_last_and_blocks_helper():
    import torch
    from torch import nn
    from mmbackbone.models.layers import ResidualBlock, zero_init_last_blocks
    model = nn.Sequential(ResidualBlock(8, 8), ResidualBlock(8, 8,
                                                             layout='basic'))
    for block in model:
        nn.init.ones_(block.last_norm.weight)
        nn.init.ones_(block.last_norm.bias)
    zero_init_last_blocks(model)
    for block in model:
        assert not block.last_norm.weight.any()
        assert not block.last_norm.bias.any()
    # a zero-initialised block is its shortcut followed by the activation
    x = torch.randn(1, 8, 4, 4)
    assert torch.equal(model[0].eval()(x), torch.relu(x))
    # no affine parameters: nothing to zero, no error
    ResidualBlock(8, 8, norm_cfg=dict(type='BN', affine=False)
                  ).zero_init_last()


def test_residual_block_drop_path_and_checkpointing():
    import torch
    from torch import nn
    from mmbackbone.models.layers import ResidualBlock
    assert isinstance(ResidualBlock(8, 8).drop_path, nn.Identity)
    block = ResidualBlock(8, 8, drop_path_rate=0.5, with_cp=True)
    assert block.drop_path.drop_prob == 0.5
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    block.eval()
    plain = block(x)  # eval: drop path is the identity
    block.with_cp = False
    assert torch.equal(plain, block(x))
    plain.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize('kwargs, message', [
    (dict(layout='wide'), r"layout='wide'; choose from \('basic', "),
    (dict(style='tf'), "style='tf'; choose 'pytorch' or 'caffe'"),
    (dict(layout='basic', groups=2), r'\(basic layout\) supports only'),
    (dict(out_channels=10), r'out_channels=10 is not divisible by '
                            r'expansion=4'),
])
def test_residual_block_errors(kwargs, message):
    from mmbackbone.models.layers import ResidualBlock
    args = dict(in_channels=8, out_channels=8)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ResidualBlock(**args)


def test_families_use_the_shared_block():
    from mmbackbone.models.backbones.cspnet import ResNetBottleneck
    from mmbackbone.models.backbones.dla import DLABasicBlock, DLABottleneck
    from mmbackbone.models.backbones.regnet import RegNetBottleneck
    from mmbackbone.models.backbones.resnet import BasicBlock, Bottleneck
    from mmbackbone.models.layers import ResidualBlock
    for cls in (BasicBlock, Bottleneck, RegNetBottleneck, ResNetBottleneck,
                DLABasicBlock, DLABottleneck):
        assert issubclass(cls, ResidualBlock)


def test_drop_path_helpers():
    from torch import nn
    from mmbackbone.models.layers import (drop_path_or_identity,
                                          drop_path_rates)
    assert drop_path_rates(0.2, (1, 2)) == [[0.0], [0.1, 0.2]]
    assert drop_path_rates(0.5, (1, )) == [[0.0]]
    assert drop_path_rates(0.1, ()) == []
    assert isinstance(drop_path_or_identity(0), nn.Identity)
    assert drop_path_or_identity(0.3).drop_prob == 0.3


@pytest.mark.parametrize('check, args, message', [
    ('check_positive_ints', dict(width=0), 'width=0 must be a positive int'),
    ('check_positive_ints', dict(width=True),
     'width=True must be a positive int'),
    ('check_rate', ('drop_rate', 1.0), r'drop_rate=1.0 must be in \[0, 1\)'),
    ('check_rate', ('drop_rate', True),
     r'drop_rate=True must be in \[0, 1\)'),
    ('to_pair', ((2, 0), 'patch_size'),
     r'patch_size=\(2, 0\) must be a positive int or a pair'),
])
def test_argument_checks(check, args, message):
    from mmbackbone.models import layers
    fn = getattr(layers, check)
    with pytest.raises(ValueError, match=message):
        fn(**args) if isinstance(args, dict) else fn(*args)


def test_per_stage_check_names_the_argument_and_where():
    from mmbackbone.models.layers import check_per_stage
    check_per_stage(2, strides=(1, 2), dilations=[1, 1])
    with pytest.raises(ValueError, match=r"strides=\(1,\) must hold 2 "
                       r"positive ints, one per stage of arch='x'"):
        check_per_stage(2, " of arch='x'", strides=(1, ))
    with pytest.raises(ValueError, match='dilations=.* must hold 2'):
        check_per_stage(2, dilations=(1, 0))


def test_csp_types_derive_their_signature_from_cspnet():
    import inspect
    from mmbackbone.models import CSPDarkNet, CSPResNet, CSPResNeXt
    from mmbackbone.models.backbones.cspnet import CSPNet
    base = inspect.signature(CSPNet).parameters
    darknet = inspect.signature(CSPDarkNet).parameters
    assert list(darknet)[:4] == ['depth', 'in_channels', 'out_indices',
                                 'frozen_stages']
    assert 'deep_stem' not in darknet and 'arch' in darknet
    assert darknet['out_indices'].default == (4, )
    assert darknet['init_cfg'].default['nonlinearity'] == 'leaky_relu'
    resnet = inspect.signature(CSPResNet).parameters
    assert resnet['out_indices'].default == (3, )
    assert resnet['deep_stem'].default is False
    assert inspect.signature(CSPResNeXt) == inspect.signature(CSPResNet)
    for name in set(base) - {'arch', 'out_indices', 'init_cfg'}:
        if name in resnet:
            assert resnet[name].default == base[name].default, name
    with pytest.raises(TypeError, match="CSPDarkNet: .*'deep_stem'"):
        CSPDarkNet(deep_stem=True)


def test_get_expansion_order_and_errors():
    from torch import nn

    from mmbackbone.models.backbones.regnet import RegNetBottleneck
    from mmbackbone.models.layers import ResidualBlock, get_expansion
    assert get_expansion(RegNetBottleneck) == 1
    assert get_expansion(ResidualBlock) == 4  # the bottleneck layout's

    class Basic(ResidualBlock):
        layout = 'basic'

    assert get_expansion(Basic) == 1 and Basic(8, 8).expansion == 1
    assert get_expansion(Basic, 3) == 3
    with pytest.raises(TypeError, match="expansion=True must be an integer"):
        get_expansion(Basic, True)
    with pytest.raises(ValueError, match='expansion=0 must be a positive'):
        get_expansion(Basic, 0)
    with pytest.raises(TypeError, match="not specified for 'Linear'"):
        get_expansion(nn.Linear)


def test_res_layer_block_attributes_and_drop_path_rates():
    from mmbackbone.models.backbones.resnet import BasicBlock, Bottleneck
    from mmbackbone.models.layers import ResLayer
    layer = ResLayer(Bottleneck, 2, 16, 32, stride=2,
                     drop_path_rate=[0.0, 0.1])
    assert layer.block is Bottleneck and layer.expansion == 4
    assert [b.stride for b in layer] == [2, 1]
    assert [b.expansion for b in layer] == [4, 4]
    assert layer[1].drop_path.drop_prob == 0.1
    assert layer[0].norm3 is layer[0].bn3 and layer[0].norm1 is layer[0].bn1
    basic = ResLayer(BasicBlock, 1, 8, 8, drop_path_rate=0.2)
    assert basic[0].norm2 is basic[0].bn2
    with pytest.raises(AttributeError, match="no attribute 'norm3'"):
        basic[0].norm3
    with pytest.raises(ValueError, match=r'gives 1 rates for num_blocks=2'):
        ResLayer(BasicBlock, 2, 8, 8, drop_path_rate=[0.1])
