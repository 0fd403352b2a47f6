"""optimize_for_inference: BN folding, channels-last, compile wiring,
bfloat16/float16.

The zoo walk folds every registered backbone (the smallest arch of each
type, plus the Bottleneck ResNets; 64x64) with non-trivial BN statistics
and checks the features stay within 1e-4 of the unoptimised model
(relative to the feature scale), and within the documented bound of each
reduced dtype. Hand-made modules check that a BN whose input is read
elsewhere is never folded, and that folding happens in float32 before the
cast.
"""
import copy
import itertools

import pytest
import torch
from mmcv.cnn import ConvModule
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from helpers import randomize_norm_stats
from mmbackbone import build_backbone, list_backbones, optimize_for_inference
from mmbackbone import deploy_precision
from mmbackbone.deploy import find_conv_bn_pairs, fuse_conv_bn
from mmbackbone.deploy_precision import ERROR_BOUNDS, feature_error
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


# ------------------------------------------------------------ precision
def zoo_model(type_name, arch):
    cfg = MODELS.get(type_name).zoo_configs[arch]
    torch.manual_seed(0)
    model = randomize_norm_stats(build_backbone(dict(type=type_name,
                                                     **cfg))).eval()
    size = input_size(model, cfg)
    return model, torch.rand(2, 3, size, size)


@pytest.mark.parametrize('type_name,arch', deploy_cases())
def test_zoo_bfloat16_within_the_documented_bound(type_name, arch):
    model, x = zoo_model(type_name, arch)
    with torch.no_grad():
        want = model(x)
        half = optimize_for_inference(model, dtype=torch.bfloat16)
        got = half(x)
    for module in half.modules():
        low = isinstance(module, deploy_precision.LOW_PRECISION_MODULES)
        for param in module.parameters(recurse=False):
            assert param.dtype == (torch.bfloat16 if low else torch.float32)
    assert all(t.dtype == torch.float32 for t in got)  # cast back
    errors = feature_error(got, want)
    assert max(errors) <= ERROR_BOUNDS[torch.bfloat16], errors
    assert min(errors) > 0  # it did compute in bfloat16


@pytest.mark.parametrize('type_name,arch,computed', [
    ('ResNet', 'resnet18', torch.float16),
    ('VisionTransformer', 'deit-t', torch.float32),  # a LayerNorm's output
    ('RegNet', 'regnety_002', torch.float16)])
def test_float16_within_the_documented_bound(type_name, arch, computed,
                                             monkeypatch):
    """float16 on CPU is slow but computes; CSPDarkNet's random weights
    overflow float16 (features past 65504), so it is not in this list.
    ``output_dtype=None`` returns the outputs as computed."""
    monkeypatch.setattr(deploy_precision, 'native_kernels', lambda d: True)
    model, x = zoo_model(type_name, arch)
    with torch.no_grad():
        want = model(x)
        got = optimize_for_inference(model, dtype='fp16',
                                     output_dtype=None)(x)
    assert all(t.dtype == computed for t in got)
    assert max(feature_error(got, want)) <= ERROR_BOUNDS[torch.float16]


def deploy_copy(model):
    return copy.deepcopy(model).eval()


def reference_today(model):
    """What optimize_for_inference did before it had a dtype: fold, 4-D
    parameters and inputs channels-last."""
    from mmbackbone.deploy import _channels_last_input
    model = deploy_copy(model)
    fuse_conv_bn(model)
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(
                memory_format=torch.channels_last)
    model.register_forward_pre_hook(_channels_last_input)
    return model


@pytest.mark.parametrize('dtype', [None, torch.float32, 'fp32', 'float32'])
def test_float32_is_bit_for_bit_the_plain_optimisation(dtype):
    model, x = zoo_model('ResNetV1d', 'resnet50')
    kwargs = {} if dtype is None else dict(dtype=dtype)
    fast = optimize_for_inference(model, **kwargs)
    today = reference_today(model)
    for (name, a), (_, b) in zip(fast.state_dict().items(),
                                 today.state_dict().items()):
        assert torch.equal(a, b) and a.stride() == b.stride(), name
    assert len(fast._forward_pre_hooks) == 1 and not fast._forward_hooks
    with torch.no_grad():
        for got, want in zip(fast(x), today(x)):
            assert torch.equal(got, want)


def test_folding_happens_in_float32_before_the_cast():
    torch.manual_seed(0)
    net = randomize_norm_stats(nn.Sequential(
        nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16)), seed=1).eval()
    conv, bn = net[0], net[1]
    folded = torch.nn.utils.fusion.fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
        bn.weight, bn.bias)[0].detach()
    # the same weights, cast first and folded in bfloat16
    low = deploy_copy(net).to(torch.bfloat16)
    lossy = torch.nn.utils.fusion.fuse_conv_bn_weights(
        low[0].weight, low[0].bias, low[1].running_mean,
        low[1].running_var, low[1].eps, low[1].weight, low[1].bias)[0]
    fast = optimize_for_inference(net, dtype='bf16')
    weight = fast[0].weight.detach()
    assert torch.equal(weight, folded.to(torch.bfloat16))
    # the check can tell: folding in bfloat16 rounds differently
    assert not torch.equal(weight.contiguous(), lossy.detach())


def test_a_bfloat16_model_is_folded_in_float32():
    model, x = zoo_model('ResNet', 'resnet18')
    want = optimize_for_inference(model.to(torch.bfloat16).float(),
                                  dtype='bf16')
    got = optimize_for_inference(model.to(torch.bfloat16), dtype='bf16')
    for a, b in zip(got.state_dict().values(), want.state_dict().values()):
        assert torch.equal(a, b)
    with torch.no_grad():  # a float32 image still goes in
        assert got(x)[0].dtype == torch.float32


class DtypeProbe(nn.Module):
    """Records the dtype and layout its conv receives."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.seen = []

    def forward(self, x, scale=None):
        self.seen.append((x.dtype, x.is_contiguous(
            memory_format=torch.channels_last), scale))
        return self.conv(x), x.new_zeros(2, dtype=torch.long)


def test_inputs_cast_outputs_cast_back():
    net = DtypeProbe().eval()
    x = torch.rand(2, 3, 8, 8)
    fast = optimize_for_inference(net, dtype='bfloat16')
    with torch.no_grad():
        out, index = fast(x, 3)
    assert fast.seen == [(torch.bfloat16, True, 3)]  # non-tensors kept
    assert out.dtype == torch.float32 and index.dtype == torch.long
    keep = optimize_for_inference(net, dtype=torch.bfloat16,
                                  output_dtype=None, channels_last=False)
    with torch.no_grad():
        out, _ = keep(x.double())
    assert keep.seen == [(torch.bfloat16, False, None)]
    assert out.dtype == torch.bfloat16
    # optimising again in place replaces the hooks, it does not stack them
    again = optimize_for_inference(fast, dtype='fp32', inplace=True)
    assert len(again._forward_pre_hooks) == 1 and not again._forward_hooks
    with torch.no_grad():
        out, _ = again(x)
    assert again.seen[-1] == (torch.float32, True, None)
    assert out.dtype == torch.float32


@pytest.mark.parametrize('kwargs,message', [
    (dict(dtype='int8'), "dtype='int8' is not a compute dtype; valid: "
     "torch.float32, torch.bfloat16, torch.float16 or 'fp32', 'float32', "
     "'bf16', 'bfloat16', 'fp16', 'float16'"),
    (dict(dtype=torch.float64), 'dtype=torch.float64 is not a compute'),
    (dict(dtype=None), 'dtype=None is not a compute dtype'),
    (dict(output_dtype='half-ish'), "output_dtype='half-ish' is not a "
     "compute dtype; valid: .* or None"),
])
def test_bad_dtype_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        optimize_for_inference(nn.Conv2d(3, 4, 3), **kwargs)


@pytest.mark.parametrize('native', [True, False])
def test_slow_dtype_on_cpu_warns(native, monkeypatch, recwarn):
    monkeypatch.setattr(deploy_precision, 'native_kernels',
                        lambda dtype: native)
    optimize_for_inference(nn.Conv2d(3, 4, 3), dtype='fp16')
    slow = [w for w in recwarn if 'no native oneDNN kernels' in str(
        w.message)]
    assert len(slow) == (0 if native else 1)
    if slow:
        assert 'dtype=torch.float16' in str(slow[0].message)
        assert 'bfloat16 is the fast reduced precision' in str(
            slow[0].message)


def test_compile_true_freezes_weights_in_reduced_precision(monkeypatch):
    """compile=True wraps with torch.compile; in bf16/fp16 each call runs
    with inductor's freezing on (checked with a stand-in compiler)."""
    from torch._inductor import config
    seen = []

    class Compiled(nn.Module):
        def __init__(self, module, **options):
            super().__init__()
            self.module, self.options = module, options

        def forward(self, x):
            seen.append(config.freezing)
            return self.module(x)

    monkeypatch.setattr(torch, 'compile', Compiled)
    x = torch.rand(1, 3, 8, 8)
    for dtype, compile in [('bf16', True), ('fp32', True),
                           ('bf16', dict(mode='max-autotune')),
                           ('bf16', {})]:
        fast = optimize_for_inference(nn.Conv2d(3, 4, 3), dtype=dtype,
                                      compile=compile)
        assert isinstance(fast, Compiled)
        assert fast.options == (compile if isinstance(compile, dict)
                                else {})
        with torch.no_grad():
            fast(x)
    assert seen == [True, False, False, False]
    assert config.freezing is False  # only during the call


class ResidualBlock(nn.Module):
    """A position embedding, a residual stream, a norm and a linear."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(4, 8))
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        x = x + self.pos
        return x + self.fc(self.norm(x))


def test_norms_float32_linears_reduced_residual_promoted():
    fast = optimize_for_inference(ResidualBlock().eval(), dtype='bf16',
                                  output_dtype=None)
    assert fast.fc.weight.dtype == torch.bfloat16
    assert fast.pos.dtype == fast.norm.weight.dtype == torch.float32
    seen = {}

    def record(module, inputs, out):
        seen[type(module).__name__] = (inputs[0].dtype, out.dtype)

    fast.norm.register_forward_hook(record)
    fast.fc.register_forward_hook(record)
    with torch.no_grad():
        out = fast(torch.rand(2, 4, 8))
    assert seen == {'LayerNorm': (torch.float32, torch.float32),
                    'Linear': (torch.bfloat16, torch.bfloat16)}
    assert out.dtype == torch.float32  # bf16 input + float32 position
