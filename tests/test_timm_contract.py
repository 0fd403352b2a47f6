"""TIMMBackbone's training contract: gradient checkpointing, dynamic input
sizes, NHWC models returned NCHW, and stage metadata checked by a forward."""
import math

import pytest
import timm
import torch
from torch.testing import assert_close

from mmbackbone.models import TIMMBackbone
from mmbackbone.models.backbones.timm_probe import checked_levels

# fewer blocks than the named models: the same code paths, built faster
VIT = dict(model_name='vit_tiny_patch16_224', img_size=64, depth=3)
SWIN = dict(model_name='swin_tiny_patch4_window7_224', img_size=64,
            window_size=2, depths=(1, 1, 1, 1))
MAMBAOUT = dict(model_name='mambaout_femto', depths=(1, 1, 1, 1))


def twin_models(**kwargs):
    """The same weights without and with ``with_cp``."""
    torch.manual_seed(0)
    plain = TIMMBackbone(**kwargs)
    checkpointed = TIMMBackbone(with_cp=True, **kwargs)
    checkpointed.load_state_dict(plain.state_dict())  # same keys
    return plain.train(), checkpointed.train()


def calls_and_grads(model, block, x):
    """Calls of ``block`` in the forward and in the backward pass, and
    the gradients of a loss on all outputs."""
    calls = []
    # a pre-hook: checkpoint's recompute stops once it has what backward
    # needs, before a forward hook would run
    handle = block.register_forward_pre_hook(lambda *args: calls.append(1))
    torch.manual_seed(1)  # the same drop-path draws for both models
    outs = model(x)
    in_forward = len(calls)
    sum((o * o).mean() for o in outs).backward()
    handle.remove()
    grads = {name: p.grad for name, p in model.named_parameters()}
    return (in_forward, len(calls) - in_forward), grads


@pytest.mark.parametrize('kwargs,block', [
    (dict(model_name='resnet18', features_only=True), 'layer2'),
    (dict(VIT, features_only=True, drop_path_rate=0.1), 'model.blocks.1'),
    (dict(VIT, drop_path_rate=0.1), 'blocks.1'),
], ids=['resnet18-features', 'vit-features', 'vit-whole'])
def test_with_cp_recomputes_blocks_and_keeps_gradients(kwargs, block,
                                                       monkeypatch):
    plain, checkpointed = twin_models(**kwargs)
    x = torch.rand(2, 3, 64, 64)
    plain_calls, plain_grads = calls_and_grads(
        plain, plain.timm_model.get_submodule(block), x)
    checkpoint_calls = []
    original = torch.utils.checkpoint.checkpoint

    def spy(*args, **kw):
        checkpoint_calls.append(1)
        return original(*args, **kw)

    monkeypatch.setattr(torch.utils.checkpoint, 'checkpoint', spy)
    cp_calls, cp_grads = calls_and_grads(
        checkpointed, checkpointed.timm_model.get_submodule(block), x)
    assert plain_calls == (1, 0)
    assert cp_calls == (1, 1)  # run again in the backward pass
    assert checkpoint_calls
    assert cp_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        assert grad is not None, name
        assert_close(cp_grads[name], grad, atol=1e-5, rtol=0, msg=name)


def test_with_cp_keeps_frozen_stages_and_norm_eval():
    model = TIMMBackbone('resnet18', features_only=True, with_cp=True,
                         frozen_stages=1, norm_eval=True).train()
    outs = model(torch.rand(2, 3, 64, 64))
    sum(o.mean() for o in outs).backward()
    timm_model = model.timm_model
    assert timm_model.layer1[0].conv1.weight.grad is None
    assert not timm_model.layer1.training
    assert timm_model.layer2[0].conv1.weight.grad is not None
    assert timm_model.layer2.training and not timm_model.layer2[0].bn1.training


def test_with_cp_errors_name_the_model():
    with pytest.raises(ValueError, match=r"with_cp=True: timm model "
                       r"'convit_tiny' \(ConVit\) has no gradient "
                       r'checkpointing'):
        TIMMBackbone('convit_tiny', img_size=64, with_cp=True)
    with pytest.raises(TypeError, match="with_cp='yes' must be True or "
                                        'False'):
        TIMMBackbone('resnet18', with_cp='yes')


def expected_maps(model, size):
    """(channels, H / s, W / s) of each output, rounded up."""
    return [(c, math.ceil(size[0] / s), math.ceil(size[1] / s))
            for c, s in zip(model.out_channels, model.out_strides)]


@pytest.mark.parametrize('kwargs,sizes', [
    (dict(VIT), [(96, 48), (48, 112)]),
    (dict(VIT, model_name='deit_tiny_patch16_224'), [(80, 32)]),
    (dict(VIT, dynamic_img_pad=True), [(70, 50), (33, 97)]),
    (dict(model_name='eva02_tiny_patch14_224', img_size=56, depth=3),
     [(84, 42)]),
    (dict(SWIN), [(72, 48), (96, 40)]),
], ids=['vit', 'deit', 'vit-padded', 'eva02', 'swin'])
def test_dynamic_img_size_takes_other_sizes(kwargs, sizes):
    torch.manual_seed(0)
    fixed = TIMMBackbone(features_only=True, out_indices=(0, -1),
                         **kwargs).eval()
    model = TIMMBackbone(features_only=True, out_indices=(0, -1),
                         dynamic_img_size=True, **kwargs).eval()
    model.load_state_dict(fixed.state_dict())
    assert (model.out_channels, model.out_strides) == (
        fixed.out_channels, fixed.out_strides)
    built = (kwargs['img_size'], ) * 2
    with torch.no_grad():
        x = torch.rand(1, 3, *built)
        assert_close(model(x), fixed(x), atol=1e-5, rtol=0)
        for size in sizes:
            outs = model(torch.rand(2, 3, *size))
            assert [tuple(o.shape[1:]) for o in outs] == \
                expected_maps(model, size), size


def test_dynamic_img_size_whole_vit_gives_tokens_of_any_grid():
    model = TIMMBackbone(dynamic_img_size=True, **VIT).eval()
    with torch.no_grad():
        (tokens, ) = model(torch.rand(2, 3, 96, 48))
    assert tokens.shape == (2, 1 + 6 * 3, 192)
    assert model.out_channels == (192, ) and model.out_strides == (None, )


@pytest.mark.parametrize('features_only', [True, False])
def test_dynamic_img_size_errors_name_the_model(features_only):
    with pytest.raises(ValueError, match=r"dynamic_img_size=True: timm model "
                       r"'resnet18' does not take dynamic_img_size"):
        TIMMBackbone('resnet18', features_only=features_only,
                     dynamic_img_size=True)
    with pytest.raises(TypeError, match="dynamic_img_size=1 must be True "
                                        'or False'):
        TIMMBackbone(features_only=features_only, dynamic_img_size=1, **VIT)


@pytest.mark.parametrize('kwargs', [
    dict(SWIN, features_only=True),
    dict(SWIN),
    dict(MAMBAOUT, features_only=True),
    dict(MAMBAOUT),
], ids=['swin-features', 'swin-whole', 'mambaout-features',
        'mambaout-whole'])
def test_nhwc_models_return_nchw(kwargs):
    torch.manual_seed(0)
    model = TIMMBackbone(**kwargs).eval()
    peer_kwargs = dict(kwargs)
    if kwargs.get('features_only'):
        peer_kwargs['out_indices'] = model.out_indices
    peer = timm.create_model(**peer_kwargs).eval()
    assert str(peer.output_fmt).endswith('NHWC')  # timm's own layout
    if not kwargs.get('features_only'):
        peer.reset_classifier(0, '')
    peer.load_state_dict(model.timm_model.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        outs, refs = model(x), peer(x)
    refs = refs if isinstance(refs, list) else [refs]
    assert_close(outs, tuple(r.permute(0, 3, 1, 2) for r in refs),
                 atol=0, rtol=0)
    assert [o.shape[1] for o in outs] == list(model.out_channels)
    assert [64 // o.shape[2] for o in outs] == list(model.out_strides)


def test_stage_metadata_where_timm_feature_info_is_wrong():
    kwargs = dict(model_name='nest_tiny', img_size=64, patch_size=8,
                  features_only=True)
    with torch.device('meta'):
        timm_info = timm.create_model(**kwargs).feature_info
    assert timm_info.reduction() == [4, 8, 16]  # what timm reports
    model = TIMMBackbone(frozen_stages=0, out_indices=(0, -1),
                         **kwargs).eval()
    assert model.stage_strides == (8, 16, 32)
    assert model.out_channels == (96, 384)
    assert model.out_strides == (8, 32)
    with torch.no_grad():
        outs = model(torch.rand(1, 3, 64, 64))
    assert [tuple(o.shape[1:]) for o in outs] == [(96, 8, 8), (384, 2, 2)]
    # the contract still holds: frozen_stages=0 freezes the first level
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert 'timm_model.patch_embed.proj.weight' in frozen
    assert not any(n.startswith('timm_model.levels_1.') for n in frozen)


@pytest.mark.parametrize('shapes,expected', [
    # two sizes (224, 448): growth 7 fits timm's 32 despite valid padding
    ([[(64, 5)], [(64, 12)]], (64, 32)),
    # growth 14 does not fit 32: the map's own stride, 16
    ([[(64, 14)], [(64, 28)]], (64, 16)),
    # one size (a fixed-size model): 224 / 14 = 16, not 224 / 16 = 14
    ([[(64, 16)]], (64, 14)),
    # measured channels replace timm's
    ([[(48, 7)]], (48, 32)),
], ids=['valid-padding-kept', 'two-sizes-corrected', 'one-size-corrected',
        'channels'])
def test_checked_levels_keep_timm_where_it_fits(shapes, expected):
    levels = [dict(num_chs=64, reduction=32, module='stage')]
    level, = checked_levels(levels, shapes, 224)
    assert (level['num_chs'], level['reduction']) == expected
    assert level['module'] == 'stage' and levels[0]['reduction'] == 32
