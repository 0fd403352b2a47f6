"""Feature pyramids from plain ViTs: SimpleFeaturePyramid and
PyramidBackbone (ViTDet's simple pyramid and the multi-level variant), on
our ViTs, timm's ViT / DeiT / EVA-02 and a CNN, inside mmdet's RetinaNet."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmbackbone import build_backbone
from mmbackbone.checkpoint import load_pretrained
from mmbackbone.models.backbones.base_backbone import NORM_TYPES
from mmbackbone.models.necks import SimpleFeaturePyramid

ROOT = Path(__file__).resolve().parents[1]
#: The ViT RetinaNets on the embedded digits set: a native DeiT-S (plain
#: and with layer scale) and timm's DINOv2-S behind TIMMBackbone, each
#: through PyramidBackbone.
VIT_DETECTORS = {
    name: ROOT / 'configs' / 'downstream' / 'mmdet' / name
    for name in ('retinanet_deit-s_pyramid_digits.py',
                 'retinanet_deit-s-ls_pyramid_digits.py',
                 'retinanet_dinov2-s-timm_pyramid_digits.py')}
#: Two input sizes: non-square, not 224, multiples of 16 and of 14.
SIZES = {16: ((64, 96), (48, 80)), 14: ((56, 84), (42, 70))}


def pyramid(inner, **kwargs):
    torch.manual_seed(0)
    return build_backbone(dict(type='PyramidBackbone', backbone=inner,
                               **kwargs)).eval()


def native_vit(arch, patch=16, **kwargs):
    kwargs.setdefault('img_size', 4 * patch)
    return dict(type='VisionTransformer', arch=arch, patch_size=patch,
                **kwargs)


def timm_vit(name, **kwargs):
    # three blocks (timm's default feature levels are the last three) keep
    # the test fast; dynamic_img_size takes any input size
    return dict(type='TIMMBackbone', model_name=name, depth=3,
                dynamic_img_size=True, **kwargs)


#: A small ViT (4 layers of 64 channels) where the arch does not matter.
SMALL = dict(embed_dims=64, num_layers=4, num_heads=2,
             feedforward_channels=128)
VIT_LIKE = {
    'deit-tiny': (native_vit('deit-tiny'), 16, 192),
    'dinov2-small': (native_vit('dinov2-small', patch=14), 14, 384),
    'timm-vit_tiny': (timm_vit('vit_tiny_patch16_224'), 16, 192),
    'timm-deit_tiny': (timm_vit('deit_tiny_patch16_224'), 16, 192),
    'timm-eva02_tiny': (timm_vit('eva02_tiny_patch14_224'), 14, 192),
}


def check_levels(model, outs, size):
    """Shapes agree with the metadata known before the forward: a side
    ``n`` is ``ceil(n / stride)`` at every level, as in a CNN."""
    assert len(outs) == len(model.out_channels) == len(model.out_strides)
    for out, channels, stride in zip(outs, model.out_channels,
                                     model.out_strides):
        assert out.shape[:2] == (2, channels)
        assert tuple(out.shape[2:]) == tuple(
            math.ceil(side / stride - 1e-9) for side in size)


# ----------------------------------------------------------- every ViT
@pytest.mark.parametrize('name', sorted(VIT_LIKE))
def test_vit_like_backbones_give_strides_4_to_32(name):
    inner, patch, dims = VIT_LIKE[name]
    model = pyramid(inner, out_channels=32)
    want = tuple(patch / s for s in (4, 2, 1, 0.5))
    assert model.out_strides == want  # before any forward
    assert model.out_channels == (32, ) * 4
    for size in SIZES[patch]:
        with torch.no_grad():
            check_levels(model, model(torch.rand(2, 3, *size)), size)


def test_native_vit_needs_no_size_argument_and_fills_featmap():
    model = pyramid(native_vit(SMALL), out_channels=None)
    assert model.backbone.out_type == 'featmap'
    assert model.backbone.patch_resolution == (4, 4)
    assert model.out_channels == (16, 32, 64, 64)  # halved per step
    with torch.no_grad():
        check_levels(model, model(torch.rand(2, 3, 80, 48)), (80, 48))


def test_multi_level_rescales_each_vit_block_to_its_stride():
    inner = native_vit(SMALL, out_indices=(0, 1, 2, 3))
    model = pyramid(inner, mode='multi_level', out_channels=16)
    assert model.out_strides == (4, 8, 16, 32)
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        outs = model(x)
        check_levels(model, outs, (64, 96))
        blocks = model.backbone(x)
        direct = [level(block) for level, block in
                  zip(model.pyramid.levels, blocks)]
    for out, want in zip(outs, direct):
        torch.testing.assert_close(out, want, rtol=0, atol=0)
    # each level really comes from its own block: change a late block
    with torch.no_grad():
        model.backbone.layers[3].ffn.layers[1].weight.mul_(3)
        changed = model(x)
    assert torch.equal(changed[0], outs[0])
    assert not torch.equal(changed[3], outs[3])


@pytest.mark.parametrize('mode', ['multi_level', 'last'])
def test_resnet_stages_are_reprojected_or_rescaled(mode):
    if mode == 'multi_level':
        model = pyramid(dict(type='ResNet', depth=18,
                             out_indices=(0, 1, 2, 3)),
                        mode=mode, scales=(1, 1, 1, 1), out_channels=24,
                        norm_cfg=dict(type='BN'))
        assert model.out_strides == (4, 8, 16, 32)
        assert model.pyramid.levels[0].rescale.__class__ is nn.Identity
    else:  # the stride-32 map rescaled to strides 8/16/32/64
        model = pyramid(dict(type='ResNet', depth=18), scales=(4, 2, 1, 0.5),
                        out_channels=24, norm_cfg=dict(type='GN',
                                                       num_groups=4))
        assert model.out_strides == (8, 16, 32, 64)
    assert model.out_channels == (24, ) * 4
    with torch.no_grad():
        check_levels(model, model(torch.rand(2, 3, 128, 192)), (128, 192))


# ------------------------------------------- simple mode, computed by hand
def channel_layer_norm(x, norm):
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, keepdim=True, unbiased=False)
    x = (x - mean) / torch.sqrt(var + norm.eps)
    return x * norm.weight[:, None, None] + norm.bias[:, None, None]


def project_by_hand(x, project):
    conv1, norm1, conv3, norm3 = project
    x = channel_layer_norm(F.conv2d(x, conv1.weight), norm1)
    return channel_layer_norm(F.conv2d(x, conv3.weight, padding=1), norm3)


def test_simple_mode_equals_a_direct_computation_from_the_last_map():
    model = pyramid(native_vit(SMALL, out_indices=(1, 3)),
                    out_channels=16)
    model.init_weights()
    for param in model.pyramid.parameters():  # LN weights away from 1 / 0
        nn.init.normal_(param, std=0.5)
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        outs = model(x)
        last = model.backbone(x)[-1]
        up4, up2 = (model.pyramid.levels[i].rescale for i in (0, 1))
        y = F.conv_transpose2d(last, up4[0].weight, up4[0].bias, stride=2)
        y = F.gelu(channel_layer_norm(y, up4[1]))
        y = F.conv_transpose2d(y, up4[3].weight, up4[3].bias, stride=2)
        rescaled = [
            y,
            F.conv_transpose2d(last, up2[0].weight, up2[0].bias, stride=2),
            last,  # stride 16: the identity branch
            F.max_pool2d(last, 2, 2, ceil_mode=True),
        ]
        direct = [project_by_hand(r, level.project)
                  for r, level in zip(rescaled, model.pyramid.levels)]
    for out, want in zip(outs, direct):
        torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    assert tuple(up4[0].weight.shape) == (64, 32, 2, 2)
    assert tuple(up4[3].weight.shape) == (32, 16, 2, 2)


def test_out_indices_pick_levels_and_build_only_those():
    model = pyramid(native_vit(SMALL), out_indices=(2, 0),
                    out_channels=8)
    assert model.out_strides == (16, 4) and model.out_channels == (8, 8)
    assert model.num_stages == 4 and len(model.pyramid.levels) == 2
    with torch.no_grad():
        check_levels(model, model(torch.rand(2, 3, 64, 48)), (64, 48))
    model.train()
    sum(out.mean() for out in model(torch.rand(2, 3, 32, 32))).backward()
    assert all(p.grad is not None for p in model.parameters())


# ------------------------------------------------- freezing, norm_eval
def test_frozen_stages_count_the_inner_backbone():
    model = pyramid(native_vit(SMALL), out_channels=8,
                    frozen_stages=2).train()
    frozen = {id(p) for stage in model.stage_parts()[:3] for part in stage
              for p in ([part] if isinstance(part, nn.Parameter)
                        else part.parameters())}
    sum(out.mean() for out in model(torch.rand(2, 3, 32, 32))).backward()
    for name, param in model.named_parameters():
        if id(param) in frozen:
            assert not param.requires_grad and param.grad is None, name
        else:
            assert param.requires_grad and param.grad is not None, name
    assert not model.backbone.patch_embed.training
    assert not model.backbone.layers[1].training
    assert model.backbone.layers[2].training and model.pyramid.training
    assert any(n.startswith('backbone.layers.1.') for n, p in
               model.named_parameters() if not p.requires_grad)
    assert all(p.requires_grad for p in model.pyramid.parameters())


def test_frozen_all_and_norm_eval():
    model = pyramid(native_vit(SMALL), frozen_stages='all').train()
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(m.training for m in model.modules())
    model = pyramid(native_vit(SMALL), norm_eval=True).train()
    norms = [m for m in model.modules() if isinstance(m, NORM_TYPES)]
    assert any(type(m).__name__ == 'LayerNorm2d' for m in norms)
    assert norms and not any(m.training for m in norms)
    assert model.pyramid.levels[0].project[0].training


# ------------------------------------------------------------- weights
def test_plain_vit_checkpoint_loads_into_the_inner_backbone(tmp_path):
    torch.manual_seed(1)
    plain = build_backbone(native_vit(SMALL, out_type='featmap'))
    plain.init_weights()
    path = tmp_path / 'vit.pth'
    torch.save(plain.state_dict(), path)
    model = pyramid(native_vit(SMALL), out_channels=8)
    before = {k: v.clone() for k, v in model.pyramid.state_dict().items()}
    report = load_pretrained(model, str(path))
    assert report.unexpected == []
    assert report.missing and all(k.startswith('pyramid.')
                                  for k in report.missing)
    assert report.num_loaded == len(plain.state_dict())
    inner = model.backbone.state_dict()
    assert set(inner) == set(plain.state_dict())
    for key, value in plain.state_dict().items():
        assert torch.equal(inner[key], value), key
    for key, value in model.pyramid.state_dict().items():
        assert torch.equal(value, before[key]), key

    # the same through init_cfg: here (a classifier checkpoint with its
    # prefix, at another grid size: pos_embed is resized) and in the
    # wrapped config
    classifier = tmp_path / 'classifier.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in
                               plain.state_dict().items()}}, classifier)
    model = pyramid(native_vit(SMALL, img_size=96), init_cfg=dict(
        type='Pretrained', checkpoint=str(classifier), prefix='backbone.'))
    model.init_weights()
    assert model.backbone.pos_embed.shape[1] == 1 + 36
    torch.testing.assert_close(model.backbone.layers[3].attn.qkv.weight,
                               plain.layers[3].attn.qkv.weight, rtol=0,
                               atol=0)
    model = pyramid(native_vit(SMALL, init_cfg=dict(
        type='Pretrained', checkpoint=str(path))))
    model.init_weights()
    for key, value in plain.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


def test_wrapper_checkpoint_round_trips_strictly(tmp_path):
    model = pyramid(native_vit(SMALL), out_channels=8)
    model.init_weights()
    path = tmp_path / 'pyramid.pth'
    torch.save(model.state_dict(), path)
    other = pyramid(native_vit(SMALL), out_channels=8)
    report = load_pretrained(other, str(path))
    assert report.missing == [] and report.unexpected == []
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


def test_layer_depth_is_the_inner_backbones():
    model = pyramid(native_vit(SMALL))
    assert model.get_layer_depth('backbone.backbone.layers.3.ffn.'
                                 'layers.1.weight', 'backbone.') == (4, 6)
    assert model.get_layer_depth('backbone.pyramid.levels.0.project.0.'
                                 'weight', 'backbone.') == (5, 6)


# ------------------------------------------------------------- errors
@pytest.mark.parametrize('kwargs,error,match', [
    (dict(scales=(4, 3)), ValueError, r'scales\[1\]=3 must be a power of two'),
    (dict(scales=(2**-7, )), ValueError, r'scales\[0\]=0.0078125 must be'),
    (dict(out_channels=0), ValueError, r'out_channels=0 must be a positive'),
    (dict(norm_cfg=dict(type='LN2d', eps=-1)), ValueError, r'eps=-1'),
    (dict(mode='fpn'), ValueError, r"mode='fpn'; choose from"),
    (dict(mode='multi_level'), ValueError, r'has 1 outputs.*has 4'),
    (dict(backbone=native_vit(SMALL, out_type='cls_token')),
     ValueError, r"stride None.*out_type='featmap'"),
    (dict(frozen_stages=5), ValueError, r'frozen_stages=5'),
    (dict(backbone=native_vit(SMALL, frozen_stages=1),
          frozen_stages=2), ValueError, r'give one'),
    (dict(norm_cfg=dict(type='LN')), ValueError, r'cannot normalize feature'),
    (dict(backbone='VisionTransformer'), TypeError, r'backbone config'),
])
def test_bad_arguments_are_named(kwargs, error, match):
    cfg = {'backbone': native_vit(SMALL), **kwargs}
    with pytest.raises(error, match=match):
        build_backbone(dict(type='PyramidBackbone', **cfg))


def test_neck_checks_its_inputs():
    neck = SimpleFeaturePyramid([8, 8], scales=(2, 1), mode='multi_level',
                                out_channels=4)
    with pytest.raises(ValueError, match='got 1 maps for 2 levels'):
        neck([torch.rand(1, 8, 4, 4)])
    with pytest.raises(ValueError, match=r'level 1 needs an \(N, 8, H, W\)'):
        neck([torch.rand(1, 8, 4, 4), torch.rand(1, 6, 4, 4)])
    with pytest.raises(ValueError, match=r'scales\[0\]=4: .*in_channels=6 '
                                         r'must be a multiple of 4'):
        SimpleFeaturePyramid(6, scales=(4, ))
    with pytest.raises(ValueError, match='has 3 entries'):
        SimpleFeaturePyramid([8, 8, 8], scales=(2, 1), mode='multi_level')


# ------------------------------------------------------------- mmdet
@pytest.mark.parametrize('name', sorted(VIT_DETECTORS))
def test_retinanet_config_builds_trains_a_step_and_predicts(name):
    from helpers_downstream import install_mmcv_ops
    install_mmcv_ops()  # mmcv's compiled ops, before mmdet imports mmcv.ops
    import mmdet.models  # noqa: F401
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmengine.structures import InstanceData

    from mmbackbone.apis import check_config_types
    cfg = Config.fromfile(str(VIT_DETECTORS[name]))
    check_config_types(cfg.to_dict())
    with DefaultScope.overwrite_default_scope('mmdet'):
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
        model.init_weights()
    backbone = model.backbone
    assert type(backbone).__name__ == 'PyramidBackbone'
    assert backbone.out_strides == (4, 8, 16)
    assert list(backbone.out_channels) == cfg.model.neck.in_channels
    assert backbone.out_strides == tuple(
        cfg.model.bbox_head.anchor_generator.strides)

    size = 128
    sample = DetDataSample(metainfo=dict(img_shape=(size, size),
                                         ori_shape=(size, size),
                                         scale_factor=(1.0, 1.0)))
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor([[10., 12., 40., 50.], [60., 30., 110., 100.]]),
        labels=torch.tensor([1, 7]))
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, size, size), generator=gen,
                          dtype=torch.uint8)
    data = dict(inputs=[image], data_samples=[sample])
    model.train()
    batch = model.data_preprocessor(data, training=True)
    losses = model(**batch, mode='loss')
    loss, log_vars = model.parse_losses(losses)
    assert math.isfinite(loss.item()) and log_vars['loss_cls'] > 0
    loss.backward()
    grads = [p.grad for p in backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

    model.bbox_head.test_cfg.score_thr = 0.0
    model.eval()
    with torch.no_grad():
        pred = model.test_step(data)[0].pred_instances
    assert 0 < len(pred.bboxes) <= model.bbox_head.test_cfg.max_per_img
    assert torch.isfinite(pred.bboxes).all()
    assert int(pred.labels.max()) < cfg.model.bbox_head.num_classes
