"""CSPDarkNet / CSPResNet / CSPResNeXt: peers, keys, errors, knobs.

Peer checks build timm and mmpretrain models with random weights (random
BN statistics too, so no layer is an identity), save or copy them, load
them into ours and compare every stage.
"""
import mmpretrain.models.backbones as mmpretrain_backbones
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from mmbackbone import build_backbone
from mmbackbone.checkpoint import load_pretrained
from mmbackbone.models import CSPDarkNet, CSPResNet, CSPResNeXt
from mmbackbone.models.backbones.cspnet import (CSP_ARCHS, CSPArch, CSPNet,
                                                make_arch)

CASES = [
    pytest.param(CSPDarkNet, 53, 'cspdarknet53', id='cspdarknet53'),
    pytest.param(CSPResNet, 50, 'cspresnet50', id='cspresnet50'),
    pytest.param(CSPResNeXt, 50, 'cspresnext50', id='cspresnext50'),
]

#: Small rows (same structure as the real ones) for the behaviour tests.
TINY_DARK = dict(in_channels=(8, 16, 16, 16, 16),
                 out_channels=(16, 16, 16, 16, 16), num_blocks=(1, 2, 1, 1, 1))
TINY_RES = dict(in_channels=(8, 16, 32, 32), out_channels=(16, 32, 32, 32),
                num_blocks=(1, 2, 1, 1))
TINY_RESNEXT = dict(in_channels=(32, 64, 64, 64),
                    out_channels=(64, 64, 64, 64), num_blocks=(1, 2, 1, 1),
                    block_args=dict(base_channels=16, groups=4))


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random convs and random BN affine / running statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.out_channels // module.groups * \
                    module.kernel_size[0] * module.kernel_size[1]
                module.weight.normal_(0, (2 / fan_out)**0.5, generator=gen)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=gen) * .1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model


def all_stages(cls) -> tuple:
    row = next(iter(cls.arch_settings.values()))
    return tuple(range(row.num_stages))


# ------------------------------------------------------------------ peers
@pytest.mark.parametrize('cls,depth,name', CASES)
def test_timm_checkpoint_gives_timm_features(cls, depth, name, tmp_path):
    full = randomize(timm.create_model(name), seed=1)
    if name == 'cspdarknet53':
        path = tmp_path / 'timm.safetensors'
        save_file(full.state_dict(), str(path))
    else:
        path = tmp_path / 'timm.pth'
        torch.save(full.state_dict(), path)
    taps = [i for i, info in enumerate(full.feature_info)
            if info['module'].startswith('stages.')]
    peer = timm.create_model(name, features_only=True, out_indices=taps,
                             pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(path)))
    peer.eval()
    ours = cls(depth=depth, out_indices=all_stages(cls),
               init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    ours.init_weights()
    ours.eval()

    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs, expected = ours(x), peer(x)
    assert len(outs) == len(expected) == len(taps)
    for out, ref in zip(outs, expected):
        assert out.abs().max() > 0.1
        torch.testing.assert_close(out, ref, atol=5e-5, rtol=0)

    # timm's features_only models flatten the first key level
    features_path = tmp_path / 'features.pth'
    torch.save(peer.state_dict(), features_path)
    report = load_pretrained(ours, str(features_path))
    assert report.source == 'timm' and not report.missing
    assert not report.unexpected


@pytest.mark.parametrize('cls,depth,name', CASES)
def test_mmpretrain_checkpoint_loads_strict(cls, depth, name, tmp_path):
    peer_cls = getattr(mmpretrain_backbones, cls.__name__)
    peer = peer_cls(depth=depth, out_indices=all_stages(cls))
    randomize(peer, seed=2)
    peer.eval()  # mmpretrain's train() returns None
    peer_state = peer.state_dict()

    path = tmp_path / 'mmpretrain.pth'
    torch.save({'state_dict': {f'backbone.{k}': v
                               for k, v in peer_state.items()},
                'meta': {'epoch': 3}}, path)
    ours = cls(depth=depth, out_indices=all_stages(cls),
               init_cfg=dict(type='Pretrained', checkpoint=str(path),
                             prefix='backbone'))
    ours.init_weights()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs, expected = ours.eval()(x), peer(x)
    assert len(outs) == len(expected)
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, atol=0, rtol=0)
    # same keys, same shapes: a strict load goes through
    ours.load_state_dict(peer_state, strict=True)


def test_deep_stem_keys_match_mmpretrain():
    with torch.device('meta'):
        ours = CSPResNet(deep_stem=True, out_indices=(0, 1, 2, 3))
    peer = mmpretrain_backbones.CSPResNet(depth=50, deep_stem=True)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in peer.state_dict().items()}
    assert ours.out_strides == (2, 4, 8, 16)


def test_defaults_follow_mmpretrain():
    with torch.device('meta'):
        dark, res, resnext = CSPDarkNet(), CSPResNet(), CSPResNeXt()
    assert dark.out_indices == (4, ) and dark.out_channels == (1024, )
    assert dark.out_strides == (32, )
    assert res.out_indices == (3, ) and res.out_channels == (1024, )
    assert resnext.out_channels == (2048, )
    assert res.stage_strides == (4, 8, 16, 32)
    act = dark.stem.activate
    assert isinstance(act, nn.LeakyReLU) and act.negative_slope == 0.01
    assert dark.stem.bn.eps == 1e-5
    assert dark.init_cfg['nonlinearity'] == 'leaky_relu'
    # the typo of mmpretrain's keys is kept
    assert any('atfer_blocks_conv' in k for k in dark.state_dict())
    # ResNeXt's downsampling convs are grouped, ResNet's are not
    assert resnext.stages[1].downsample_conv.conv.groups == 32
    assert res.stages[1].downsample_conv.conv.groups == 1


def test_mmdet_style_config_fragment():
    from mmengine.registry import MODELS as ROOT_MODELS
    cfg = dict(type='CSPResNeXt', arch=50, out_indices=(1, 2, 3))
    with torch.device('meta'):
        model = build_backbone(cfg)
        scoped = ROOT_MODELS.build(dict(cfg, type='mmbackbone.CSPResNeXt'))
    for built in (model, scoped):
        assert isinstance(built, CSPResNeXt)
        assert built.out_channels == (512, 1024, 2048)
        assert built.out_strides == (8, 16, 32)
        assert built.depth == 50


@pytest.mark.parametrize('kwargs', [
    dict(arch=50), dict(arch='50'), dict(arch='cspresnext50'),
    dict(arch='CSPResNeXt50'), dict(depth=50, arch='cspresnext50'), dict()])
def test_arch_aliases(kwargs):
    with torch.device('meta'):
        model = CSPResNeXt(**kwargs)
    assert model.depth == 50 and model.arch is CSP_ARCHS['cspresnext50']


def test_zoo_configs_name_table_rows():
    for cls in (CSPDarkNet, CSPResNet, CSPResNeXt):
        for name, kwargs in cls.zoo_configs.items():
            with torch.device('meta'):
                model = cls(**kwargs)
            assert model.arch is CSP_ARCHS[name]


# ----------------------------------------------------------------- errors
@pytest.mark.parametrize('cls,kwargs,error,match', [
    (CSPDarkNet, dict(depth=50), KeyError,
     r"depth=50 is not a CSPDarkNet depth; choose from \[53\]"),
    (CSPResNet, dict(arch=101), KeyError,
     r"arch=101 is not a CSPResNet depth; choose from \[50\]"),
    (CSPResNeXt, dict(arch='cspresnet50'), KeyError,
     r"choose from \[50\] \(or arch names \['cspresnext50'\]\)"),
    (CSPResNet, dict(depth=50, arch=53), KeyError,
     r'arch=53 is not a CSPResNet depth'),
    (CSPResNet, dict(arch=dict(num_block=(1, 1, 1, 1))), KeyError,
     r"unknown keys \['num_block'\]; valid keys are"),
    (CSPDarkNet, dict(out_indices=(5, )), ValueError,
     r'out_indices=\(5,\) holds 5, out of range for 5 stages; valid '
     r'indices are \[-5, 4\]'),
    (CSPResNet, dict(out_indices=(0, -5)), ValueError,
     r'out of range for 4 stages'),
    (CSPResNeXt, dict(out_indices='3'), TypeError, 'out_indices'),
    (CSPDarkNet, dict(frozen_stages=6), ValueError,
     r'frozen_stages=6 is out of range; valid values are -1'),
    (CSPResNet, dict(frozen_stages=-2), ValueError,
     r'frozen_stages=-2 is out of range'),
    (CSPResNet, dict(frozen_stages='stem'), TypeError,
     r"frozen_stages='stem' must be an int"),
    (CSPResNet, dict(norm_cfg=dict(type='BNN')), KeyError,
     r"unknown type 'BNN'"),
    (CSPDarkNet, dict(drop_path_rate=1.5), ValueError,
     r'drop_path_rate=1.5 must be in \[0, 1\)'),
    (CSPDarkNet, dict(in_channels=0), ValueError,
     r'in_channels=0 must be a positive int'),
])
def test_bad_arguments(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(**kwargs)


@pytest.mark.parametrize('arch,error,match', [
    ('cspresnet101', KeyError,
     r"arch='cspresnet101'; choose from \['cspdarknet53', 'cspresnet50', "
     r"'cspresnext50'\]"),
    (dict(block='resnet'), KeyError, r"lacks the keys \['stem'"),
    (dict(block='vgg', stem='resnet', in_channels=(8, ), out_channels=(8, ),
          num_blocks=(1, )), KeyError, r"block='vgg'; choose from"),
    (dict(block='resnet', stem='vgg', in_channels=(8, ), out_channels=(8, ),
          num_blocks=(1, )), KeyError, r"stem='vgg'; choose from"),
    (dict(block='resnet', stem='resnet', in_channels=(8, 16),
          out_channels=(16, ), num_blocks=(1, 1)), ValueError,
     r'out_channels=\(16,\) has 1 entries but the arch has 2 stages'),
    (dict(block='resnet', stem='resnet', in_channels=(8, 32),
          out_channels=(16, 32), num_blocks=(1, 1)), ValueError,
     r'in_channels\[1\]=32 differs from out_channels\[0\]=16'),
    (dict(block='darknet', stem='darknet', in_channels=(6, ),
          out_channels=(8, ), num_blocks=(1, ), expand_ratio=0.5),
     ValueError, r'gives 3 channels before the split in stage 0'),
    (dict(block='resnet', stem='resnet', in_channels=(8, ),
          out_channels=(8, ), num_blocks=(0, )), ValueError,
     r'num_blocks=\(0,\) must be a tuple of positive ints'),
    (42, TypeError, r'arch=42 must be an arch name'),
])
def test_bad_arch(arch, error, match):
    with pytest.raises(error, match=match):
        CSPNet(arch)


def test_pretrained_name_must_fit_the_class():
    with pytest.raises(ValueError, match=r"pretrained='cspdarknet53\."
                                         r"mmpretrain_in1k' fits CSPDarkNet"):
        with torch.device('meta'):
            CSPResNet(pretrained='cspdarknet53.mmpretrain_in1k')
    with pytest.raises(TypeError, match=r'pretrained=1 must be True'):
        with torch.device('meta'):
            CSPResNet(pretrained=1)


def test_deep_stem_needs_resnet_stem():
    with pytest.raises(ValueError, match=r"deep_stem=True needs the resnet "
                                         r"stem; this arch has "
                                         r"stem='darknet'"):
        CSPNet('cspdarknet53', deep_stem=True)


def test_bottleneck_divisibility_error():
    with pytest.raises(ValueError, match=r'not divisible by bottle_ratio=3'):
        CSPResNet(arch=dict(TINY_RES, bottle_ratio=3))


def test_unknown_argument_through_build_backbone():
    with pytest.raises(TypeError, match=r"CSPDarkNet got an unknown argument "
                                        r"'deep_stem'"):
        build_backbone(dict(type='CSPDarkNet', deep_stem=True))


# ------------------------------------------------------------- behaviour
def test_arch_dict_overrides_default_row():
    model = CSPDarkNet(arch=TINY_DARK, out_indices=(0, 1, 2, 3, 4)).eval()
    assert model.depth is None
    assert model.arch.block == 'darknet' and model.arch.num_blocks == \
        (1, 2, 1, 1, 1)
    assert model.arch.expand_ratio == CSP_ARCHS['cspdarknet53'].expand_ratio
    with torch.no_grad():
        outs = model(torch.rand(1, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [
        (1, 16, 16, 16), (1, 16, 8, 8), (1, 16, 4, 4), (1, 16, 2, 2),
        (1, 16, 1, 1)]


def test_full_dict_arch_and_block_fn_alias():
    from mmbackbone.models.backbones.cspnet import ResNetBottleneck
    arch = dict(block_fn=ResNetBottleneck, stem='resnet', in_channels=(8, 16),
                out_channels=(16, 32), num_blocks=(1, 1), expand_ratio=4)
    row = make_arch(arch)
    assert isinstance(row, CSPArch) and row.block == 'resnet'
    assert row.has_downsampler == (True, True)
    model = CSPNet(arch, out_indices=(0, 1))
    assert model.out_strides == (8, 16)
    with torch.no_grad():
        outs = model.eval()(torch.rand(1, 3, 32, 32))
    assert [o.shape[1] for o in outs] == [16, 32]


@pytest.mark.parametrize('cls,tiny', [(CSPDarkNet, TINY_DARK),
                                      (CSPResNet, TINY_RES),
                                      (CSPResNeXt, TINY_RESNEXT)])
def test_with_cp_matches_plain(cls, tiny):
    torch.manual_seed(0)
    plain = randomize(cls(arch=tiny, out_indices=(0, 1, 2, 3)), seed=3)
    ckpt = cls(arch=tiny, out_indices=(0, 1, 2, 3), with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    assert all(b.with_cp for b in ckpt.modules() if hasattr(b, 'with_cp'))
    x = torch.rand(2, 3, 32, 32)
    grads = []
    for model in (plain, ckpt):
        inp = x.clone().requires_grad_()
        outs = model.train()(inp)
        sum(o.square().mean() for o in outs).backward()
        grads.append((outs, inp.grad, [p.grad for p in model.parameters()]))
    (outs_a, gin_a, gp_a), (outs_b, gin_b, gp_b) = grads
    for a, b in zip(outs_a, outs_b):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(gin_a, gin_b)
    for a, b in zip(gp_a, gp_b):
        torch.testing.assert_close(a, b)


def test_frozen_stages_and_norm_eval():
    # mmpretrain's CSP numbering: k freezes the stem and stages[0..k]
    model = CSPDarkNet(arch=TINY_DARK, frozen_stages=2, norm_eval=False)
    assert model.train() is model
    frozen = [model.stem, model.stages[0], model.stages[1], model.stages[2]]
    for part in frozen:
        assert not part.training
        assert not any(p.requires_grad for p in part.parameters())
    for part in model.stages[3:]:
        assert part.training
        assert all(p.requires_grad for p in part.parameters())

    model = CSPResNet(arch=TINY_RES, frozen_stages='all', norm_eval=True)
    model.train()
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(m.training for m in model.modules())

    model = CSPResNet(arch=TINY_RES, frozen_stages=0, norm_eval=True).train()
    assert not any(p.requires_grad for p in model.stem.parameters())
    assert not any(p.requires_grad for p in model.stages[0].parameters())
    assert all(p.requires_grad for p in model.stages[1:].parameters())
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and not any(m.training for m in norms)
    assert model.stages[1].blocks[0].conv1.training


def test_stops_after_last_needed_stage():
    model = CSPResNet(arch=TINY_RES, out_indices=(1, 0)).eval()
    calls = []
    model.stages[2].register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        outs = model(torch.rand(1, 3, 32, 32))
    assert not calls
    assert [o.shape[1] for o in outs] == [32, 16]


def test_drop_path_rates_grow_linearly():
    model = CSPResNet(arch=TINY_RES, drop_path_rate=0.3)
    blocks = [b for stage in model.stages for b in stage.blocks]
    rates = [getattr(b.drop_path, 'drop_prob', 0.) for b in blocks]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.3)
    assert rates == sorted(rates)


def test_exports_trace_and_torch_export():
    model = randomize(CSPResNeXt(arch=TINY_RESNEXT, out_indices=(0, 3)))
    model.eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        traced = torch.jit.trace(model, x)
        for a, b in zip(traced(x), expected):
            torch.testing.assert_close(a, b)
        exported = torch.export.export(model, (x, ))
        for a, b in zip(exported.module()(x), expected):
            torch.testing.assert_close(a, b)


def test_onnx_export(tmp_path):
    import onnxruntime
    model = randomize(CSPDarkNet(arch=TINY_DARK, out_indices=(1, 4))).eval()
    x = torch.rand(1, 3, 32, 32)
    path = tmp_path / 'csp.onnx'
    torch.onnx.export(model, (x, ), str(path), dynamo=False,
                      input_names=['x'])
    session = onnxruntime.InferenceSession(str(path))
    outs = session.run(None, {'x': x.numpy()})
    with torch.no_grad():
        expected = model(x)
    for a, b in zip(outs, expected):
        torch.testing.assert_close(torch.from_numpy(a), b, atol=1e-4,
                                   rtol=1e-4)


def test_in_channels_adapted_on_load(tmp_path):
    src = randomize(CSPDarkNet(arch=TINY_DARK))
    path = tmp_path / 'rgb.pth'
    torch.save(src.state_dict(), path)
    gray = CSPDarkNet(arch=TINY_DARK, in_channels=1,
                      init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    gray.init_weights()
    torch.testing.assert_close(gray.stem.conv.weight,
                               src.stem.conv.weight.sum(1, keepdim=True))


def test_arch_from_hydra_config():
    from omegaconf import OmegaConf
    cfg = OmegaConf.create(dict(arch=dict(
        in_channels=[8, 16, 32, 32], out_channels=[16, 32, 32, 32],
        num_blocks=[1, 2, 1, 1], block_args={})))
    model = CSPResNet(arch=cfg.arch, out_indices=[0, 3]).eval()
    assert model.arch.num_blocks == (1, 2, 1, 1)
    with torch.no_grad():
        outs = model(torch.rand(1, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(1, 16, 8, 8), (1, 32, 1, 1)]
