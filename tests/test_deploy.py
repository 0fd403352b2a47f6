"""optimize_for_inference: BN folding, channels-last, compile wiring.

The zoo walk folds every registered backbone (the smallest arch of each
type, plus the Bottleneck ResNets; 64x64) with non-trivial BN statistics and checks the features stay within 1e-4 of the
unoptimised model (relative to the feature scale). Hand-made modules check
that a BN whose input is read elsewhere is never folded.
"""
import pytest
import torch
from mmcv.cnn import ConvModule
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from helpers import randomize_norm_stats
from mmbackbone import build_backbone, list_backbones, optimize_for_inference
from mmbackbone.deploy import find_conv_bn_pairs, fuse_conv_bn
from mmbackbone.registry import MODELS

#: Besides the smallest arch of every type: the Bottleneck ResNets.
EXTRA = [('ResNet', 'resnet50'), ('ResNetV1d', 'resnet50')]


def param_count(type_name, cfg):
    with torch.device('meta'):
        model = build_backbone(dict(type=type_name, **cfg))
    return sum(p.numel() for p in model.parameters())


def deploy_cases():
    cases = []
    for type_name in list_backbones():
        cls = MODELS.get(type_name)
        if getattr(cls, 'zoo_needs_files', False):
            continue
        sized = [(param_count(type_name, cfg), arch)
                 for arch, cfg in cls.zoo_configs.items()]
        archs = [min(sized)[1]] if sized else [None]
        archs += [a for t, a in EXTRA if t == type_name and a not in archs]
        cases += [pytest.param(type_name, arch, id=f'{type_name}-{arch}')
                  for arch in archs]
    return cases


def input_size(model, cfg):
    size = cfg.get('img_size', 64)
    size = size[0] if isinstance(size, (tuple, list)) else size
    patch = getattr(model, 'patch_size', None)
    if isinstance(patch, (tuple, list)):
        patch = patch[0]
    if isinstance(patch, int) and size % patch:
        size = patch * 4
    return size


def assert_features_close(got, want, tol=1e-4):
    """Equal within ``tol`` times the feature scale (at least 1)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        scale = max(1.0, w.abs().max().item())
        diff = (g - w).abs().max().item()
        assert diff <= tol * scale, f'max abs diff {diff} (scale {scale})'


def count_bn(model):
    return sum(isinstance(m, _BatchNorm) for m in model.modules())


@pytest.mark.parametrize('type_name,arch', deploy_cases())
def test_zoo_features_equal_after_optimize(type_name, arch):
    cfg = MODELS.get(type_name).zoo_configs[arch]
    model = randomize_norm_stats(build_backbone(dict(type=type_name,
                                                     **cfg))).eval()
    size = input_size(model, cfg)
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        want = model(x)
    bns = count_bn(model)
    pairs = find_conv_bn_pairs(model)
    fast = optimize_for_inference(model)
    assert fast is not model and count_bn(model) == bns  # original kept
    assert not fast.training
    assert count_bn(fast) == bns - len(pairs)
    native = type(model).__module__.startswith('mmbackbone.')
    plain_bns = [m for m in model.modules()
                 if type(m) in (nn.BatchNorm2d, nn.SyncBatchNorm)]
    if native and plain_bns:
        assert pairs, 'no conv+BN pair folded in a native CNN family'
    if type_name.startswith('ResNet'):
        assert count_bn(fast) == 0
    for p in fast.parameters():
        if p.dim() == 4:
            assert p.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert_features_close(fast(x), want)


@pytest.mark.parametrize('channels_last,fuse', [(False, True), (True, False)])
def test_fusion_alone_and_channels_last_alone(channels_last, fuse):
    model = randomize_norm_stats(build_backbone(
        dict(type='ResNetV1d', depth=18, out_indices=(0, 1, 2, 3)))).eval()
    fast = optimize_for_inference(model, channels_last=channels_last,
                                  fuse=fuse)
    assert count_bn(fast) == (0 if fuse else count_bn(model))
    assert any(p.is_contiguous(memory_format=torch.channels_last)
               and not p.is_contiguous() for p in fast.parameters()) \
        == channels_last
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert_features_close(fast(x), model(x))


# ---------------------------------------------------- folding semantics
class Residual(nn.Module):
    """The conv output feeds the BN and a residual add: no fold."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return (self.bn(y) + y, )


class InplaceAct(nn.Module):
    """An in-place ReLU changes the conv output before the BN: no fold."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.conv(x)
        self.act(y)
        return (self.bn(y), )


class Returned(nn.Module):
    """The conv output is also an output: no fold."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return y, self.bn(y)


class TwoNorms(nn.Module):
    """One conv output read by two BNs: neither is folded."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3)
        self.bn1, self.bn2 = nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn1(y), self.bn2(y)


class ShapeRead(nn.Module):
    """Reading the shape between conv and BN does not block folding; a
    conv shared by two call sites, each followed by the same BN, folds."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        n, c, h, w = y.shape
        y = self.bn(y).reshape(n, c, h, w)
        return (self.bn(self.conv(y)), )


class NormAct(nn.BatchNorm2d):
    """A BN subclass whose forward does more than normalise."""

    def forward(self, x):
        return torch.relu(super().forward(x))


@pytest.mark.parametrize('net,folded', [
    (Residual(), []),
    (InplaceAct(), []),
    (Returned(), []),
    (TwoNorms(), []),
    (ShapeRead(), [('conv', 'bn')]),
    (nn.Sequential(nn.Conv2d(4, 4, 3), NormAct(4)), []),
    (ConvModule(4, 4, 3, norm_cfg=dict(type='BN')), [('conv', 'bn')]),
    (nn.Sequential(ConvModule(4, 4, 3, norm_cfg=dict(type='BN'),
                              order=('norm', 'conv', 'act'))), []),
    (nn.Sequential(ConvModule(4, 4, 3, norm_cfg=dict(type='BN'),
                              conv_cfg=dict(type='ConvWS'))), []),
    (nn.Sequential(nn.Conv1d(4, 4, 3), nn.BatchNorm1d(4)), [('0', '1')]),
])
def test_folds_only_where_the_bn_alone_reads_the_conv(net, folded):
    net = randomize_norm_stats(net).eval()
    x = torch.rand(2, 4, 8) if isinstance(net[0] if isinstance(
        net, nn.Sequential) else net, nn.Conv1d) else torch.rand(2, 4, 8, 8)
    with torch.no_grad():
        want = net(x)
        want = want if isinstance(want, tuple) else (want, )
        bns = count_bn(net)
        assert fuse_conv_bn(net, x) == folded
        got = net(x)
    got = got if isinstance(got, tuple) else (got, )
    assert count_bn(net) == bns - len(folded)
    assert_features_close(got, want, tol=1e-5)


def test_training_bn_is_not_folded():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    assert find_conv_bn_pairs(net) == []


def test_inplace_and_default_copy():
    model = build_backbone(dict(type='ResNet', depth=18)).train()
    fast = optimize_for_inference(model)
    assert fast is not model and model.training and count_bn(model) == 20
    same = optimize_for_inference(model, inplace=True)
    assert same is model and count_bn(model) == 0 and not model.training
    # idempotent: a second call finds nothing left to fold
    assert optimize_for_inference(model, inplace=True) is model
    assert len(model._forward_pre_hooks) == 1


def test_channels_last_input_and_metadata():
    model = randomize_norm_stats(build_backbone(
        dict(type='ResNet', depth=18, out_indices=(0, 3)))).eval()
    fast = optimize_for_inference(model)
    assert fast.out_channels == model.out_channels == (64, 512)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        outs = fast(x)
        assert_features_close(outs, model(x))
    assert outs[0].is_contiguous(memory_format=torch.channels_last)


def test_compile_wraps_the_model():
    model = randomize_norm_stats(build_backbone(
        dict(type='ResNet', depth=18))).eval()
    fast = optimize_for_inference(model, compile=dict(backend='eager'))
    assert fast.out_channels == (512, )  # attributes reach the module
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert_features_close(fast(x), model(x))


def test_bad_arguments():
    with pytest.raises(TypeError, match='model must be an nn.Module'):
        optimize_for_inference('resnet50')
    model = build_backbone(dict(type='ResNet', depth=18))
    with pytest.raises(TypeError, match="compile='yes' must be True"):
        optimize_for_inference(model, compile='yes')
