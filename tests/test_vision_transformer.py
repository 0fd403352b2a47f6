"""VisionTransformer: peer equivalence with timm and mmpretrain, options,
freezing, checkpointing and errors."""
from functools import partial

import onnxruntime
import pytest
import timm
import torch
from mmpretrain.models import VisionTransformer as MMPVisionTransformer
from mmpretrain.models.utils import resize_pos_embed as mmp_resize_pos_embed
from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import \
    VisionTransformer as TimmVisionTransformer
from torch import nn

from mmbackbone import build_backbone
from mmbackbone.checkpoint import load_pretrained
from mmbackbone.models import VisionTransformer
from mmbackbone.models.backbones.vision_transformer import VIT_ARCHS

#: A four-layer arch for the quick tests.
MINI = dict(embed_dims=32, num_layers=4, num_heads=2, feedforward_channels=128)
ATOL = 5e-5


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial norms, biases, layer scales and tokens (the default
    inits would hide a swapped or skipped one)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim <= 1 or 'token' in name or 'pos_embed' in name:
                noise = torch.randn(param.shape, generator=gen)
                param.copy_(param + 0.3 * noise)
    return model


def save(state_dict, tmp_path, name='ckpt.pth'):
    path = tmp_path / name
    torch.save(state_dict, path)
    return str(path)


def vit(**kwargs) -> VisionTransformer:
    return build_backbone(dict(type='VisionTransformer', **kwargs))


def test_readme_snippet():
    model = build_backbone(dict(type='VisionTransformer', arch='base',
                                output_cls_token=False, final_norm=False))
    model.init_weights()
    outs = model(torch.randn(1, 3, 224, 224))
    assert outs[0].shape == torch.Size([1, 768, 14, 14])
    assert model.out_channels == (768, ) and model.out_strides == (16, )


# ------------------------------------------------------------- arch table
def test_arch_table_matches_mmpretrain():
    keys = ('embed_dims', 'num_layers', 'num_heads', 'feedforward_channels')
    for name, row in MMPVisionTransformer.arch_zoo.items():
        assert tuple(getattr(VIT_ARCHS[name], k) for k in keys) == \
            tuple(row[k] for k in keys), name
    assert set(VIT_ARCHS) == set(MMPVisionTransformer.arch_zoo) | {'tiny'}
    assert set(VisionTransformer.zoo_configs) == set(VIT_ARCHS)
    assert VIT_ARCHS['tiny'] == VIT_ARCHS['deit-tiny']


@pytest.mark.parametrize('ours,theirs', [
    (dict(arch='base'), dict(arch='base')),
    (dict(arch='dinov2-g', patch_size=14),
     dict(arch='dinov2-g', patch_size=14, layer_scale_init_value=1e-5,
          layer_cfgs=dict(ffn_type='swiglu_fused'))),
    (dict(arch='dinov2-s', patch_size=14, img_size=518),
     dict(arch='dinov2-s', patch_size=14, img_size=518,
          layer_scale_init_value=1e-5)),
    (dict(arch='deit-s', pre_norm=True, out_type='avg_featmap',
          with_cls_token=False, final_norm=False,
          patch_cfg=dict(norm_cfg=dict(type='LN'))),
     dict(arch='deit-s', pre_norm=True, out_type='avg_featmap',
          with_cls_token=False, final_norm=False,
          patch_cfg=dict(norm_cfg=dict(type='LN')))),
], ids=['base', 'dinov2-g', 'dinov2-s', 'pre_norm-avg-no_cls'])
def test_state_dict_keys_and_shapes_match_mmpretrain(ours, theirs):
    with torch.device('meta'):
        mine = vit(**ours).state_dict()
        ref = MMPVisionTransformer(**theirs).state_dict()
    assert list(mine) == list(ref)
    assert {k: v.shape for k, v in mine.items()} == \
        {k: v.shape for k, v in ref.items()}


# ----------------------------------------------------- mmpretrain outputs
@pytest.mark.parametrize('out_type', ['raw', 'cls_token', 'featmap',
                                      'avg_featmap'])
def test_mmpretrain_state_dict_loads_strict_and_outputs_match(out_type):
    kwargs = dict(arch=dict(MINI), img_size=32, patch_size=8,
                  out_type=out_type, drop_path_rate=0.1)
    ref = MMPVisionTransformer(out_indices=[1, 3], **kwargs)
    ref.init_weights()
    randomize(ref).eval()
    model = vit(out_indices=(1, 3), **kwargs)
    model.load_state_dict(ref.state_dict(), strict=True)
    model.eval()
    for size in ((32, 32), (48, 64)):  # the second resizes pos_embed
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            for mine, theirs in zip(model(x), ref(x), strict=True):
                torch.testing.assert_close(mine, theirs, atol=1e-5,
                                           rtol=1e-5)


@pytest.mark.parametrize('extra', [
    dict(layer_scale_init_value=0.1, layer_cfgs=dict(ffn_type='swiglu_fused')),
    dict(pre_norm=True, with_cls_token=False, out_type='featmap'),
    dict(qkv_bias=False, final_norm=False, interpolate_mode='bilinear',
         layer_cfgs=dict(num_fcs=3, act_cfg=dict(type='ReLU'))),
], ids=['layer_scale-swiglu', 'pre_norm-no_cls', 'no_qkv_bias-3fcs'])
def test_mmpretrain_variants_match(extra):
    kwargs = dict(arch=dict(MINI), img_size=32, patch_size=8, **extra)
    ref = MMPVisionTransformer(out_indices=[0, 3], **kwargs)
    ref.init_weights()
    randomize(ref).eval()
    model = vit(out_indices=(0, 3), **kwargs)
    model.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 40, 24)
    with torch.no_grad():
        for mine, theirs in zip(model.eval()(x), ref(x), strict=True):
            torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------- timm equivalence
def timm_checkpoint(model, tmp_path):
    randomize(model, seed=1).eval()
    return model, save(model.state_dict(), tmp_path, 'timm.pth')


@pytest.mark.parametrize('name,arch,size,extra', [
    ('deit_tiny_patch16_224', 'deit-tiny', 64, {}),
    ('vit_small_patch16_224', 'deit-small', 64, {}),
])
def test_timm_features_match(name, arch, size, extra, tmp_path):
    """Layer 6 tokens (unnormed) and the last layer's (final norm) equal
    timm's forward_intermediates / forward_features."""
    ref, path = timm_checkpoint(
        timm.create_model(name, pretrained=False, img_size=size), tmp_path)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        final = ref.forward_features(x)
        (spatial, prefix), = ref.forward_intermediates(
            x, indices=[5], output_fmt='NLC', return_prefix_tokens=True,
            intermediates_only=True)
    model = vit(arch=arch, img_size=size, out_type='raw', out_indices=(5, -1),
                **extra, init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    with torch.no_grad():
        inter, last = model.eval()(x)
    torch.testing.assert_close(inter, torch.cat([prefix, spatial], dim=1),
                               atol=ATOL, rtol=0)
    torch.testing.assert_close(last, final, atol=ATOL, rtol=0)


MINI_TIMM = dict(embed_dim=32, depth=4, num_heads=2, num_classes=0)


@pytest.mark.parametrize('timm_name,timm_kwargs,ours', [
    ('vit_small_patch14_dinov2', dict(img_size=28),
     dict(arch=dict(MINI, layer_scale_init_value=1e-5), patch_size=14,
          img_size=28, out_type='raw')),
    ('deit3_small_patch16_224', dict(img_size=32),
     dict(arch=MINI, layer_scale_init_value=1e-6, patch_size=16,
          img_size=32, out_type='raw')),
    (None, dict(mlp_layer=SwiGLUPacked, act_layer=nn.SiLU, mlp_ratio=6,
                init_values=0.1),
     dict(arch=dict(MINI, feedforward_channels=144, ffn_type='swiglu_fused',
                    layer_scale_init_value=0.1), out_type='raw')),
    (None, dict(global_pool='avg', class_token=False),
     dict(arch=MINI, with_cls_token=False, out_type='avg_featmap',
          final_norm=False)),
    (None, dict(pre_norm=True, norm_layer=partial(nn.LayerNorm, eps=1e-5)),
     dict(arch=MINI, pre_norm=True, norm_cfg=dict(type='LN', eps=1e-5),
          out_type='raw')),
], ids=['dinov2-layer_scale-p14', 'deit3-no_embed_class', 'swiglu',
        'avg_pool-fc_norm', 'clip_pre_norm'])
def test_timm_layouts_match(timm_name, timm_kwargs, ours, tmp_path):
    """Each timm layout variant, at a small width: forward_features (or
    the pooled pre-logits) equal ours, and every key converts."""
    if timm_name is None:
        net = TimmVisionTransformer(img_size=32, patch_size=8, **MINI_TIMM,
                                    **timm_kwargs)
        ours = dict(img_size=32, patch_size=8, **ours)
    else:
        net = timm.create_model(timm_name, pretrained=False, **MINI_TIMM,
                                **timm_kwargs)
    ref, path = timm_checkpoint(net, tmp_path)
    model = vit(**ours)
    report = load_pretrained(model, path)
    assert report.source == 'timm'
    assert not report.missing and not report.unexpected
    size = model.img_size
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = ref.forward_features(x)
        if model.out_type == 'avg_featmap':
            expected = ref.forward_head(expected, pre_logits=True)
        torch.testing.assert_close(model.eval()(x)[0], expected, atol=ATOL,
                                   rtol=0)


# ----------------------------------------------------- pos_embed resizing
def test_pos_embed_resized_on_load(tmp_path):
    ref = randomize(TimmVisionTransformer(img_size=64, patch_size=8,
                                          **MINI_TIMM))
    path = save(ref.state_dict(), tmp_path)
    model = vit(arch=MINI, img_size=32, patch_size=8)
    report = load_pretrained(model, path)
    assert any('pos_embed' in note for note in report.adapted)
    expected = mmp_resize_pos_embed(ref.pos_embed.detach(), (8, 8), (4, 4))
    torch.testing.assert_close(model.pos_embed.detach(), expected)
    # plain load_state_dict resizes too, as mmpretrain's does
    state = vit(arch=MINI, img_size=64, patch_size=8).state_dict()
    mmp = MMPVisionTransformer(arch=dict(MINI), img_size=48, patch_size=8)
    mmp.load_state_dict(state, strict=True)
    ours = vit(arch=MINI, img_size=48, patch_size=8)
    ours.load_state_dict(state, strict=True)
    torch.testing.assert_close(ours.pos_embed, mmp.pos_embed)


def test_pos_embed_cls_entry_dropped_without_cls_token():
    src = vit(arch=MINI, img_size=32, patch_size=8)
    dst = vit(arch=MINI, img_size=32, patch_size=8, with_cls_token=False,
              out_type='featmap')
    state = {k: v for k, v in src.state_dict().items() if k != 'cls_token'}
    dst.load_state_dict(state, strict=True)
    torch.testing.assert_close(dst.pos_embed, src.pos_embed[:, 1:])
    # from another grid: the class entry is dropped, then the grid resized
    other = vit(arch=MINI, img_size=48, patch_size=8, with_cls_token=False,
                out_type='featmap')
    fitted, notes = other.adapt_state_dict(state)
    assert notes == ['pos_embed: (1, 17, 32) -> (1, 36, 32)']
    torch.testing.assert_close(fitted['pos_embed'], mmp_resize_pos_embed(
        src.pos_embed[:, 1:], (4, 4), (6, 6), num_extra_tokens=0))


def test_forward_resizes_pos_embed_for_other_inputs():
    model = vit(arch=MINI, img_size=32, patch_size=8, out_type='featmap',
                interpolate_mode='bicubic').eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 24, 56))[0]
    assert out.shape == (1, 32, 3, 7)


def test_input_channels_adapted(tmp_path):
    src = vit(arch=MINI, img_size=32, patch_size=8)
    path = save(src.state_dict(), tmp_path)
    gray = vit(arch=MINI, img_size=32, patch_size=8, in_channels=1,
               init_cfg=dict(type='Pretrained', checkpoint=path))
    gray.init_weights()
    torch.testing.assert_close(
        gray.patch_embed.projection.weight,
        src.patch_embed.projection.weight.sum(1, keepdim=True))


# ------------------------------------------------------- output options
def test_out_types_shapes_and_metadata():
    x = torch.randn(2, 3, 32, 48)
    expected = {'raw': ((2, 1 + 4 * 6, 32), None),
                'cls_token': ((2, 32), None),
                'featmap': ((2, 32, 4, 6), 8),
                'avg_featmap': ((2, 32), None)}
    for out_type, (shape, stride) in expected.items():
        model = vit(arch=MINI, img_size=32, patch_size=8, out_type=out_type,
                    out_indices=(0, 2)).eval()
        outs = model(x)
        assert [tuple(o.shape) for o in outs] == [shape, shape]
        assert model.out_strides == (stride, stride)
        assert model.out_channels == (32, 32) and model.out_features == 32
        assert model.out_type == out_type


def test_output_cls_token_flag():
    base = vit(arch=MINI, img_size=32, patch_size=8, out_indices=(1, 3))
    randomize(base).eval()
    state = base.state_dict()
    x = torch.randn(2, 3, 32, 32)
    maps = vit(arch=MINI, img_size=32, patch_size=8, out_indices=(1, 3),
               out_type='featmap')
    maps.load_state_dict(state)
    pairs = vit(arch=MINI, img_size=32, patch_size=8, out_indices=(1, 3),
                output_cls_token=True)
    pairs.load_state_dict(state)
    no_cls = vit(arch=MINI, img_size=32, patch_size=8, out_indices=(1, 3),
                 output_cls_token=False)
    no_cls.load_state_dict(state)
    assert no_cls.out_type == 'featmap' and pairs.out_strides == (8, 8)
    with torch.no_grad():
        ref_maps, ref_cls = maps.eval()(x), base(x)
        for out, ref in zip(no_cls.eval()(x), ref_maps, strict=True):
            torch.testing.assert_close(out, ref)
        for pair, ref_map, cls in zip(pairs.eval()(x), ref_maps, ref_cls,
                                      strict=True):
            assert isinstance(pair, list) and len(pair) == 2
            torch.testing.assert_close(pair[0], ref_map)
            torch.testing.assert_close(pair[1], cls)


def test_negative_out_indices():
    model = randomize(vit(arch=MINI, img_size=32, patch_size=8,
                          out_type='featmap', out_indices=(-1, 0, -3)))
    assert model.out_indices == (3, 0, 1)
    same = vit(arch=MINI, img_size=32, patch_size=8, out_type='featmap',
               out_indices=[3, 0, 1])
    same.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(model.eval()(x), same.eval()(x), strict=True):
            torch.testing.assert_close(a, b)


# ------------------------------------------------------------- freezing
def stem_params(model):
    return [model.pos_embed, model.cls_token,
            *model.patch_embed.parameters()]


@pytest.mark.parametrize('frozen', [0, 2, 4])
def test_frozen_stages(frozen):
    model = vit(arch=MINI, img_size=32, patch_size=8, frozen_stages=frozen,
                drop_rate=0.1, out_indices=(1, 3))
    model.train()
    assert not model.drop_after_pos.training
    frozen_params = set(stem_params(model))
    for layer in model.layers[:frozen]:
        assert not layer.training
        frozen_params.update(layer.parameters())
    for layer in model.layers[frozen:]:
        assert layer.training
    assert model.ln1.training == (frozen < 4)
    if frozen == 4:  # every layer: the final norm too, as in mmpretrain
        assert not any(p.requires_grad for p in model.parameters())
        return
    sum(o.sum() for o in model(torch.randn(2, 3, 32, 32))).backward()
    for name, param in model.named_parameters():
        if param in frozen_params:
            assert not param.requires_grad and param.grad is None, name
        else:
            assert param.requires_grad and param.grad is not None, name


def test_frozen_final_norms_with_avg_featmap():
    model = vit(arch=MINI, img_size=32, patch_size=8, frozen_stages=4,
                out_type='avg_featmap').train()
    for norm in (model.ln1, model.ln2):
        assert not norm.training
        assert not any(p.requires_grad for p in norm.parameters())


# ------------------------------------------------------------ with_cp
def test_with_cp_same_outputs_and_grads():
    plain = randomize(vit(arch=MINI, img_size=32, patch_size=8,
                          out_indices=(1, 3), out_type='featmap'))
    ckpt = vit(arch=MINI, img_size=32, patch_size=8, out_indices=(1, 3),
               out_type='featmap', with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    results = []
    for model in (plain, ckpt):
        model.train()
        outs = model(x)
        sum((o ** 2).sum() for o in outs).backward()
        results.append(([o.detach() for o in outs],
                        {n: p.grad.clone() for n, p in
                         model.named_parameters()}))
    (outs_a, grads_a), (outs_b, grads_b) = results
    for a, b in zip(outs_a, outs_b, strict=True):
        torch.testing.assert_close(a, b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)


# ------------------------------------------------------------- export
def test_trace_and_export(tmp_path):
    model = randomize(vit(arch=MINI, img_size=32, patch_size=8,
                          out_type='featmap', out_indices=(1, 3))).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        traced = torch.jit.trace(model, x)
        exported = torch.export.export(model, (x, ))
        for out, ref in zip(traced(x), expected, strict=True):
            torch.testing.assert_close(out, ref)
        for out, ref in zip(exported.module()(x), expected, strict=True):
            torch.testing.assert_close(out, ref)
    onnx_path = str(tmp_path / 'vit.onnx')
    other = torch.randn(1, 3, 48, 24)  # pos_embed resized in the graph
    torch.onnx.export(model, (other, ), onnx_path, dynamo=False)
    session = onnxruntime.InferenceSession(onnx_path)
    outs = session.run(None, {session.get_inputs()[0].name: other.numpy()})
    with torch.no_grad():
        for out, ref in zip(outs, model(other), strict=True):
            torch.testing.assert_close(torch.from_numpy(out), ref,
                                       atol=1e-5, rtol=1e-5)


# -------------------------------------------------------------- errors
@pytest.mark.parametrize('kwargs,error,match', [
    (dict(arch='gigantic'), KeyError,
     r"arch='gigantic' not in default archs; choose from"),
    (dict(arch=dict(embed_dims=32, num_layers=2, num_heads=2)), KeyError,
     r"missing keys \['feedforward_channels'\]"),
    (dict(arch=dict(MINI, depth=3)), KeyError, r"unknown keys \['depth'\]"),
    (dict(arch=dict(MINI, num_layers=0)), ValueError,
     r"arch\['num_layers'\]=0 must be a positive int"),
    (dict(arch=dict(MINI, num_heads=3)), ValueError,
     r'embed_dims=32 is not divisible by num_heads=3'),
    (dict(arch=MINI, out_type='tokens'), ValueError,
     r"out_type='tokens'; choose from"),
    (dict(arch=MINI, with_cls_token=False), ValueError,
     r'with_cls_token must be True .*with_cls_token=False leaves no class '
     r'token'),
    (dict(arch=MINI, output_cls_token=True, out_type='raw'), ValueError,
     r"conflicts with out_type='raw'"),
    (dict(arch=MINI, img_size=30, patch_size=8, patch_cfg=dict(padding=0)),
     ValueError, r'img_size size \(30, 30\) does not tile into patches'),
    (dict(arch=MINI, patch_cfg=dict(padding='valid')), ValueError,
     r"patch_cfg\['padding'\]='valid'; choose from \['corner', 'same'\]"),
    (dict(arch=MINI, out_indices=(4, )), ValueError,
     r'out_indices=\(4,\) holds 4, out of range'),
    (dict(arch=MINI, layer_cfgs=dict(heads=2)), KeyError,
     r"layer_cfgs: unknown keys \['heads'\]"),
    (dict(arch=MINI, layer_cfgs=dict(ffn_type='moe')), ValueError,
     r"ffn_type='moe'; choose from"),
    (dict(arch=MINI, patch_cfg=dict(kernel=3)), KeyError,
     r"patch_cfg: unknown keys \['kernel'\]"),
    (dict(arch=MINI, interpolate_mode='cubic'), ValueError,
     r"interpolate_mode='cubic'; choose from"),
    (dict(arch=MINI, patch_cfg=dict(in_channels=1)), ValueError,
     r"patch_cfg\['in_channels'\]=1 disagrees with the model \(3\)"),
    (dict(arch=MINI, layer_scale_init_value=-1), ValueError,
     r'layer_scale_init_value=-1 must be a float >= 0'),
    (dict(arch=MINI, drop_path_rate=1.5), ValueError,
     r'drop_path_rate=1.5 must be a float in \[0, 1\)'),
])
def test_config_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        vit(**kwargs)


def test_input_not_multiple_of_patch_refused_with_int_padding():
    model = vit(arch=MINI, img_size=32, patch_size=8,
                patch_cfg=dict(padding=0)).eval()
    with pytest.raises(ValueError, match=r'input size \(32, 30\) does not '
                       r'tile into patches.*multiple of the patch size 8'):
        model(torch.randn(1, 3, 32, 30))


@pytest.mark.parametrize('img_size,patch_cfg', [
    (32, None), (30, None), (30, dict(padding='corner')),
    (32, dict(padding='same')), (32, dict(kernel_size=12, stride=8)),
], ids=['default', 'img_size-30', 'corner', 'same', 'overlapping'])
def test_input_not_multiple_of_patch_padded_as_mmpretrain(img_size,
                                                          patch_cfg):
    """mmpretrain pads each side up to a multiple of the patch (mmcv's
    ``AdaptivePadding``, ``padding='corner'`` by default), at init for
    ``img_size`` and at forward for the input."""
    kwargs = dict(arch=dict(MINI), img_size=img_size, patch_size=8,
                  out_type='featmap', out_indices=[1, 3])
    if patch_cfg is not None:
        kwargs['patch_cfg'] = patch_cfg
    ref = MMPVisionTransformer(**kwargs)
    ref.init_weights()
    randomize(ref).eval()
    model = vit(**kwargs)
    model.load_state_dict(ref.state_dict(), strict=True)
    assert model.patch_resolution == ref.patch_resolution
    for size in ((32, 30), (33, 47), (256 // 4, 309 // 4)):
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            for mine, theirs in zip(model.eval()(x), ref(x), strict=True):
                assert mine.shape == theirs.shape
                assert (mine - theirs).abs().max() == 0


def test_mmpretrain_padded_input_shape():
    """mmpretrain's own example: 256x309 with patch 16 -> a 16x20 grid."""
    with torch.device('meta'):
        model = vit(arch='b', out_type='featmap')
        (out, ) = model(torch.empty(1, 3, 256, 309))
    assert tuple(out.shape) == (1, 768, 16, 20)


def test_layer_depth_matches_mmpretrain():
    ref = MMPVisionTransformer(arch=dict(MINI), img_size=32, patch_size=8)
    model = vit(arch=MINI, img_size=32, patch_size=8)
    for name, _ in model.named_parameters(prefix='backbone'):
        assert model.get_layer_depth(name, 'backbone.') == \
            ref.get_layer_depth(name, 'backbone.'), name
    assert model.get_layer_depth('head.fc.weight', 'backbone.') == \
        ref.get_layer_depth('head.fc.weight', 'backbone.')


# ------------------------------------------------------ pretrained names
@pytest.mark.parametrize('arch,weights', [
    ('deit-b', 'deit_base_patch16_224.fb_in1k'),
    ('deit-base', 'deit_base_patch16_224.fb_in1k'),
    ('b', 'vit_base_patch16_224.augreg2_in21k_ft_in1k'),
    ('BASE', 'vit_base_patch16_224.augreg2_in21k_ft_in1k'),
    ('tiny', 'deit_tiny_patch16_224.fb_in1k'),
])
def test_pretrained_follows_the_alias_map(arch, weights, monkeypatch):
    """``'deit-b'`` is DeiT-B (its row equals ViT-B's, its weights do
    not); the load itself is intercepted."""
    from mmbackbone.models import BaseBackbone
    asked = []
    monkeypatch.setattr(BaseBackbone, 'init_weights',
                        lambda self: asked.append(self.init_cfg))
    with torch.device('meta'):
        vit(arch=arch, pretrained=True)
    assert asked == [dict(type='Pretrained',
                          checkpoint=f'mmbackbone://{weights}', prefix=None)]


def test_pretrained_with_a_custom_arch_is_refused():
    with pytest.raises(ValueError, match='custom arch has no indexed '
                                         'weights'):
        vit(arch=MINI, pretrained=True)
