"""TIMMBackbone against timm itself, with the same (random) weights."""
import subprocess
import sys

import pytest
import timm
import torch
from torch.testing import assert_close

from mmbackbone import build_backbone
from mmbackbone.checkpoint import CheckpointError
from mmbackbone.models import TIMMBackbone
from mmbackbone.models.backbones.base_backbone import NORM_TYPES
from helpers import randomize_norm_stats

VIT = dict(model_name='vit_tiny_patch16_224', img_size=64, features_only=True)


@pytest.fixture(scope='module')
def resnet18_file(tmp_path_factory):
    torch.manual_seed(0)
    raw = randomize_norm_stats(timm.create_model('resnet18'))
    path = tmp_path_factory.mktemp('timm') / 'resnet18.pth'
    torch.save(raw.state_dict(), path)
    return path, raw.eval()


@pytest.fixture(scope='module')
def vit_file(tmp_path_factory):
    """A 224x224 ViT-Tiny checkpoint: loading it at 64x64 resizes pos_embed."""
    torch.manual_seed(0)
    raw = timm.create_model('vit_tiny_patch16_224')
    path = tmp_path_factory.mktemp('timm') / 'vit_tiny.pth'
    torch.save(raw.state_dict(), path)
    return path


def timm_features(path, model_name, **kwargs):
    """timm's own features_only model with the file's weights."""
    kwargs.pop('features_only', None)
    return timm.create_model(model_name, features_only=True, pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(path)),
                             **kwargs).eval()


def ours_from_init_cfg(path, **kwargs):
    kwargs.setdefault('features_only', True)
    model = build_backbone(dict(type='TIMMBackbone', init_cfg=dict(
        type='Pretrained', checkpoint=str(path)), **kwargs))
    model.init_weights()
    return model.eval()


def max_diff(outs, refs):
    assert len(outs) == len(refs)
    return max((a - b).abs().max().item() for a, b in zip(outs, refs))


def test_import_mmbackbone_does_not_import_timm():
    code = ('import sys, mmbackbone; '
            "assert 'timm' not in sys.modules, 'timm imported'; "
            'from mmbackbone.models import TIMMBackbone; '
            "assert 'timm' not in sys.modules, 'timm imported'")
    subprocess.run([sys.executable, '-c', code], check=True)


def test_resnet18_matches_timm_features(resnet18_file):
    path, _ = resnet18_file
    peer = timm_features(path, 'resnet18')
    ours = ours_from_init_cfg(path, model_name='resnet18')
    assert ours.out_indices == (0, 1, 2, 3, 4)
    assert ours.out_channels == tuple(peer.feature_info.channels())
    assert ours.out_strides == tuple(peer.feature_info.reduction())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        outs, refs = ours(x), peer(x)
    assert_close(outs, tuple(refs), atol=1e-5, rtol=0)
    assert max_diff(outs, refs) == 0  # same weights, same ops
    assert [tuple(o.shape[1:]) for o in outs] == [
        (64, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]


@pytest.mark.parametrize('name', ['vit_tiny_patch16_224',
                                  'deit_tiny_patch16_224'])
def test_vit_matches_timm_features(vit_file, name):
    # DeiT-Tiny and ViT-Tiny share one layout, so one file fits both
    kwargs = dict(VIT, model_name=name)
    peer = timm_features(vit_file, out_indices=(0, 5, 11), **kwargs)
    ours = ours_from_init_cfg(vit_file, out_indices=(0, 5, -1), **kwargs)
    assert ours.out_channels == (192, 192, 192)
    assert ours.out_strides == (16, 16, 16)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        outs, refs = ours(x), peer(x)
    assert [tuple(o.shape) for o in outs] == [(2, 192, 4, 4)] * 3
    assert_close(outs, tuple(refs), atol=1e-5, rtol=0)


def test_vit_default_out_indices_follow_timm(vit_file):
    peer = timm_features(vit_file, **VIT)
    ours = TIMMBackbone(checkpoint_path=str(vit_file), **VIT).eval()
    assert ours.num_levels == 12
    assert ours.out_indices == tuple(peer.feature_info.out_indices) == (
        9, 10, 11)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert_close(ours(x), tuple(peer(x)), atol=1e-5, rtol=0)


def test_negative_out_indices_keep_the_order_given(resnet18_file):
    path, _ = resnet18_file
    peer = timm_features(path, 'resnet18')
    ours = TIMMBackbone('resnet18', out_indices=[-1, 0, -3],
                        features_only=True,
                        checkpoint_path=str(path)).eval()
    assert ours.out_indices == (4, 0, 2)
    assert ours.out_channels == (512, 64, 128)
    assert ours.out_strides == (32, 2, 8)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        outs, refs = ours(x), peer(x)
    assert_close(outs, (refs[4], refs[0], refs[2]), atol=1e-5, rtol=0)


@pytest.mark.parametrize('bad', [(5, ), (-6, ), (0, 9)])
def test_out_of_range_out_indices_name_the_range(bad):
    with pytest.raises(ValueError, match=r'out_indices=.*valid indices are '
                       r'\[-5, 4\]'):
        TIMMBackbone('resnet18', out_indices=bad, features_only=True)


def frozen_and_trainable(model, frozen_names, trainable_names):
    model.train()
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    for name in frozen_names:
        if name in params:
            assert not params[name].requires_grad, name
        else:
            assert all(not p.requires_grad
                       for p in modules[name].parameters()), name
            assert all(not m.training for m in modules[name].modules()), name
    for name in trainable_names:
        assert modules[name].training, name
        assert all(p.requires_grad for p in modules[name].parameters()), name


def test_frozen_stages_resnet18():
    model = TIMMBackbone('resnet18', frozen_stages=1, features_only=True)
    parts = model.stage_parts()
    assert len(parts) == 5
    stem = 'timm_model.'
    frozen_and_trainable(
        model, [stem + n for n in ('conv1', 'bn1', 'maxpool', 'layer1')],
        [stem + n for n in ('layer2', 'layer3', 'layer4')])
    # holds after a second train() too, and grads skip the frozen part
    model.train()
    outs = model(torch.rand(2, 3, 64, 64))
    sum(o.mean() for o in outs).backward()
    assert model.timm_model.conv1.weight.grad is None
    assert model.timm_model.layer1[0].conv1.weight.grad is None
    assert model.timm_model.layer2[0].conv1.weight.grad is not None


def test_frozen_stages_vit():
    model = TIMMBackbone(frozen_stages=2, out_indices=(-1, ), **VIT)
    vit = 'timm_model.model.'
    frozen_and_trainable(
        model, [vit + n for n in ('cls_token', 'pos_embed', 'patch_embed',
                                  'blocks.0', 'blocks.1', 'blocks.2')],
        [vit + f'blocks.{i}' for i in range(3, 12)])
    frozen = {id(p) for stage in model.stage_parts()[:3] for part in stage
              for p in ([part] if isinstance(part, torch.nn.Parameter)
                        else part.parameters())}
    assert frozen == {id(p) for p in model.parameters()
                      if not p.requires_grad}


def test_frozen_stages_all_and_range():
    model = TIMMBackbone('resnet18', frozen_stages='all',
                         features_only=True).train()
    assert all(not p.requires_grad for p in model.parameters())
    assert all(not m.training for m in model.modules())
    with pytest.raises(ValueError, match=r'frozen_stages=6 is out of range'):
        TIMMBackbone('resnet18', frozen_stages=6, features_only=True)


def test_norm_eval_keeps_timm_norms_in_eval():
    model = TIMMBackbone('resnet18', norm_eval=True,
                         features_only=True).train()
    norms = [m for m in model.modules() if isinstance(m, NORM_TYPES)]
    assert norms and all(not m.training for m in norms)
    assert model.timm_model.layer1.training


def test_checkpoint_path_loads_with_features_only(resnet18_file):
    """timm's trap: create_model(checkpoint_path=..., features_only=True)
    fails; ours loads through timm's pretrained path."""
    path, raw = resnet18_file
    for pretrained in (False, True):
        model = TIMMBackbone('resnet18', features_only=True,
                             pretrained=pretrained,
                             checkpoint_path=str(path))
        ours = model.timm_model.state_dict()
        for key, value in raw.state_dict().items():
            if key.startswith('fc.'):
                assert key not in ours
                continue
            assert torch.equal(ours[key], value), key


def test_checkpoint_path_resizes_vit_pos_embed(vit_file):
    model = TIMMBackbone(checkpoint_path=str(vit_file), **VIT)
    source = torch.load(vit_file, weights_only=True)
    weights = model.timm_model.state_dict()
    assert weights['model.pos_embed'].shape == (1, 17, 192)
    assert torch.equal(weights['model.blocks.3.mlp.fc1.weight'],
                       source['blocks.3.mlp.fc1.weight'])


def test_init_cfg_resizes_vit_pos_embed_like_timm(vit_file):
    by_timm = TIMMBackbone(checkpoint_path=str(vit_file), **VIT)
    ours = ours_from_init_cfg(vit_file, **VIT)
    assert_close(ours.state_dict(), by_timm.state_dict(), atol=1e-6, rtol=0)


def test_init_cfg_loads_own_and_prefixed_keys(resnet18_file, tmp_path):
    path, _ = resnet18_file
    source = TIMMBackbone('resnet18', checkpoint_path=str(path),
                          features_only=True)
    own = tmp_path / 'own.pth'
    torch.save({'state_dict': {'backbone.' + k: v for k, v in
                               source.state_dict().items()}}, own)
    model = build_backbone(dict(type='TIMMBackbone', model_name='resnet18',
                                features_only=True,
                                init_cfg=dict(type='Pretrained',
                                              checkpoint=str(own),
                                              prefix='backbone')))
    model.init_weights()
    assert_close(model.state_dict(), source.state_dict(), atol=0, rtol=0)


def test_init_cfg_maps_flattened_timm_keys(tmp_path):
    """convnext's features model renames stages.0 -> stages_0."""
    torch.manual_seed(0)
    raw = timm.create_model('convnext_atto')
    path = tmp_path / 'convnext.safetensors'
    from safetensors.torch import save_file
    save_file(raw.state_dict(), str(path))
    ours = ours_from_init_cfg(path, model_name='convnext_atto')
    peer = timm_features(path, 'convnext_atto')
    assert 'timm_model.stages_0.blocks.0.conv_dw.weight' in ours.state_dict()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert_close(ours(x), tuple(peer(x)), atol=1e-5, rtol=0)


def test_checkpoint_path_errors_name_the_file(resnet18_file, tmp_path):
    path, raw = resnet18_file
    partial = {k: v for k, v in raw.state_dict().items()
               if not k.startswith('layer4.')}
    torch.save(partial, tmp_path / 'partial.pth')
    with pytest.raises(CheckpointError, match=r'(?s)partial\.pth.*layer4'):
        TIMMBackbone('resnet18', checkpoint_path=str(tmp_path /
                                                     'partial.pth'),
                     features_only=True)
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        TIMMBackbone('resnet18', checkpoint_path=str(tmp_path /
                                                     'missing.pth'),
                     features_only=True)
    (tmp_path / 'garbage.pth').write_bytes(b'not a checkpoint at all')
    with pytest.raises(CheckpointError, match='garbage.pth'):
        TIMMBackbone('resnet18', checkpoint_path=str(tmp_path /
                                                     'garbage.pth'),
                     features_only=True)
    shapes = dict(raw.state_dict())
    shapes['layer1.0.conv1.weight'] = torch.zeros(8, 64, 3, 3)
    torch.save(shapes, tmp_path / 'shapes.pth')
    with pytest.raises(CheckpointError,
                       match=r'(?s)shapes\.pth.*layer1\.0\.conv1'):
        TIMMBackbone('resnet18', checkpoint_path=tmp_path / 'shapes.pth',
                     features_only=True)


@pytest.mark.parametrize('features_only', [True, False])
def test_checkpoint_path_format_is_read_from_the_bytes(resnet18_file,
                                                       tmp_path, monkeypatch,
                                                       features_only):
    """timm picks its reader by the suffix: a .pth named .safetensors
    reached safetensors' reader and a raw SafetensorError escaped. timm
    now gets the tensors we read, never the path."""
    from safetensors.torch import save_file
    from timm.models import _builder
    path, raw = resnet18_file

    def no_path(*args, **kwargs):
        raise AssertionError(f'timm read the file itself: {args}')

    monkeypatch.setattr(_builder, 'load_state_dict', no_path)
    pth_named_st = tmp_path / 'resnet18.safetensors'
    pth_named_st.write_bytes(path.read_bytes())
    st_named_pth = tmp_path / 'resnet18.pth'
    save_file(raw.state_dict(), str(st_named_pth))
    for file in (pth_named_st, st_named_pth):
        model = TIMMBackbone('resnet18', features_only=features_only,
                             checkpoint_path=str(file))
        ours = model.timm_model.state_dict()
        for key, value in raw.state_dict().items():
            if not key.startswith('fc.'):
                assert torch.equal(ours[key], value), (file, key)
        # timm keeps its resolved config: no second copy of the weights
        assert not [m for m in model.modules() if 'state_dict' in (
            getattr(m, 'pretrained_cfg', None) or {})]
    garbage = tmp_path / 'garbage.safetensors'
    garbage.write_bytes(b'\x80\x02' + b'x' * 64)
    with pytest.raises(CheckpointError, match=rf'checkpoint {garbage} '):
        TIMMBackbone('resnet18', features_only=features_only,
                     checkpoint_path=str(garbage))


def test_timm_load_errors_name_the_file(resnet18_file, tmp_path,
                                        monkeypatch):
    """Whatever timm's filters raise comes back naming the file."""
    from timm.models import _builder
    path, _ = resnet18_file

    def broken_filter(*args, **kwargs):
        raise KeyError('pos_embed')

    monkeypatch.setattr(_builder, 'load_pretrained', broken_filter)
    with pytest.raises(CheckpointError,
                       match=rf"checkpoint_path='{path}': timm could not "
                             rf"load {path} into 'resnet18': KeyError: "
                             r"'pos_embed'"):
        TIMMBackbone('resnet18', checkpoint_path=str(path),
                     features_only=True)


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(KeyError, match=r"resnet81.*Did you mean.*'resnet18'"):
        TIMMBackbone('resnet81')
    with pytest.raises(KeyError, match="Did you mean 'vit_tiny_patch16_224'"):
        build_backbone(dict(type='TIMMBackbone',
                            model_name='vit_tiny_patch16_2244'))


def test_argument_errors():
    with pytest.raises(TypeError, match='pretrained=.*checkpoint_path'):
        TIMMBackbone('resnet18', pretrained='weights.pth')
    with pytest.raises(TypeError, match="in_chans=1 .*'in_channels'"):
        TIMMBackbone('resnet18', in_chans=1)
    with pytest.raises(TypeError, match="resnet18.*img_size"):
        TIMMBackbone('resnet18', img_size=64)
    with pytest.raises(ValueError, match='in_channels=0'):
        TIMMBackbone('resnet18', in_channels=0)


def test_in_channels_adapts_the_checkpoint(resnet18_file):
    path, raw = resnet18_file
    model = TIMMBackbone('resnet18', in_channels=1, checkpoint_path=str(path))
    assert_close(model.timm_model.conv1.weight,
                 raw.conv1.weight.sum(dim=1, keepdim=True))
    assert model(torch.rand(1, 1, 64, 64))[-1].shape == (1, 512, 2, 2)


def test_pooled_features(resnet18_file, vit_file):
    path, raw = resnet18_file
    model = TIMMBackbone('resnet18', features_only=False, pooled=True,
                         checkpoint_path=str(path)).eval()
    assert model.out_channels == (512, ) and model.out_strides == (None, )
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        (out, ) = model(x)
        ref = raw.forward_head(raw.forward_features(x), pre_logits=True)
    assert_close(out, ref, atol=1e-5, rtol=0)
    # a pre-logits head wider than num_features
    mobile = TIMMBackbone('mobilenetv3_small_050', features_only=False,
                          pooled=True)
    assert mobile.out_channels == (1024, )
    assert mobile.eval()(x)[0].shape == (2, 1024)
    # frozen_stages counts feature levels here too
    vit = TIMMBackbone(frozen_stages=0, checkpoint_path=str(vit_file),
                       **dict(VIT, features_only=False, pooled=True)).train()
    assert not vit.timm_model.blocks[0].attn.qkv.weight.requires_grad
    assert not vit.timm_model.cls_token.requires_grad
    assert vit.timm_model.blocks[1].training
    assert vit.timm_model.norm.weight.requires_grad


def test_default_is_mmpretrains_unpooled_last_map(resnet18_file):
    """features_only=False by default: the whole model, reset_classifier(0,
    '') (pooling and classifier are Identity), timm's unpooled last map."""
    path, raw = resnet18_file
    model = TIMMBackbone('resnet18', checkpoint_path=str(path)).eval()
    assert not model.features_only and not model.pooled
    assert isinstance(model.timm_model.global_pool.pool, torch.nn.Identity)
    assert isinstance(model.timm_model.fc, torch.nn.Identity)
    assert model.out_channels == (512, ) and model.out_strides == (32, )
    assert model.out_indices == (0, ) and model.num_levels == 5
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        (out, ) = model(x)
    assert out.shape == (2, 512, 2, 2)
    assert (out - raw.forward_features(x)).abs().max() == 0
    assert set(model.state_dict()) == {
        'timm_model.' + k for k in raw.state_dict()
        if not k.startswith('fc.')}


@pytest.mark.parametrize('kwargs,channels,stride,shape', [
    (dict(model_name='efficientnet_b0'), 1280, 32, (1, 1280, 2, 2)),
    (dict(model_name='mobilenetv3_small_050'), 1024, 32, (1, 1024, 2, 2)),
    (dict(model_name='vit_tiny_patch16_224', img_size=64), 192, None,
     (1, 17, 192)),
    (dict(model_name='swin_tiny_patch4_window7_224', img_size=64,
          window_size=2), 768, 32, (1, 768, 2, 2)),
    (dict(model_name='resnet18', output_stride=16), 512, 16,
     (1, 512, 4, 4)),
], ids=['efficientnet', 'mobilenetv3', 'vit-tokens', 'swin-nhwc',
        'output_stride'])
def test_unpooled_metadata_is_known_before_forward(kwargs, channels, stride,
                                                   shape):
    model = TIMMBackbone(**kwargs).eval()
    assert model.out_channels == (channels, )
    assert model.out_strides == (stride, )
    with torch.no_grad():
        (out, ) = model(torch.rand(1, 3, 64, 64))
    assert tuple(out.shape) == shape
    peer = timm.create_model(**kwargs).eval()
    peer.load_state_dict(model.timm_model.state_dict(), strict=False)
    peer.reset_classifier(0, '')
    with torch.no_grad():
        x = torch.rand(1, 3, 64, 64)
        ref = peer(x)
        if ref.ndim == 4 and ref.shape[-1] == channels != ref.shape[1]:
            ref = ref.permute(0, 3, 1, 2)  # NHWC maps come back NCHW
        assert (model(x)[0] - ref).abs().max() == 0


def test_pooled_needs_the_whole_model():
    with pytest.raises(ValueError, match='pooled=True takes the whole '
                                         'model'):
        TIMMBackbone('resnet18', features_only=True, pooled=True)
    with pytest.raises(TypeError, match="pooled='yes' must be True or "
                                        'False'):
        TIMMBackbone('resnet18', pooled='yes')


@pytest.mark.parametrize('name,layer', [
    ('BN2d', torch.nn.BatchNorm2d), ('bn2d', torch.nn.BatchNorm2d),
    ('SyncBN', torch.nn.SyncBatchNorm), ('syncbn', torch.nn.SyncBatchNorm),
    ('BN', torch.nn.BatchNorm2d), ('batchnorm2d', torch.nn.BatchNorm2d),
])
@pytest.mark.parametrize('features_only', [True, False])
def test_norm_layer_strings_resolve_through_the_registry(name, layer,
                                                         features_only):
    """mmpretrain: MODELS.get(norm_layer) wrapped in a builder for timm;
    timm's own names are left to timm."""
    model = TIMMBackbone('resnet18', features_only=features_only,
                         norm_layer=name, output_stride=32)
    assert isinstance(model.timm_model.bn1, layer)
    assert isinstance(model.timm_model.layer4[1].bn2, layer)


def test_unknown_norm_layer_suggests_close_names():
    with pytest.raises(KeyError, match=r"norm_layer='SynBN' is neither a "
                       r"registered norm layer.*Did you mean 'SyncBN'"):
        TIMMBackbone('resnet18', norm_layer='SynBN')


def test_nhwc_outputs_become_nchw():
    model = TIMMBackbone('swin_tiny_patch4_window7_224', img_size=64,
                         window_size=2, out_indices=(0, -1),
                         features_only=True).eval()
    peer = timm.create_model('swin_tiny_patch4_window7_224', img_size=64,
                             window_size=2, features_only=True,
                             out_indices=(0, 3)).eval()
    peer.load_state_dict(model.timm_model.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        outs, refs = model(x), peer(x)
    assert [o.shape[1] for o in outs] == list(model.out_channels) == [96, 768]
    assert_close(outs, tuple(r.permute(0, 3, 1, 2) for r in refs))


def test_mmcls_tutorial_snippet():
    """The old mmcls tutorial config still works (deprecated timm name)."""
    with pytest.warns(Warning, match='deprecated'):
        model = build_backbone(dict(type='TIMMBackbone', pretrained=False,
                                    model_name='tf_efficientnetv2_s_in21k',
                                    features_only=True,
                                    out_indices=(2, 3, 4)))
    with torch.no_grad():
        outs = model.eval()(torch.rand(1, 3, 224, 224))
    assert [tuple(o.shape) for o in outs] == [
        (1, 64, 28, 28), (1, 160, 14, 14), (1, 256, 7, 7)]
    assert model.out_channels == (64, 160, 256)
    assert model.out_strides == (8, 16, 32)


def test_init_weights_keeps_timm_weights(resnet18_file):
    path, _ = resnet18_file
    model = TIMMBackbone(features_only=False, checkpoint_path=str(path),
                         model_name='resnet18')
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.init_weights()
    assert_close(model.state_dict(), before, atol=0, rtol=0)


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Empty weight caches, a hub endpoint on a port that refuses
    connections, no proxy; every connection attempt is recorded."""
    import socket
    from types import SimpleNamespace

    from huggingface_hub import constants
    closed = socket.socket()
    closed.bind(('127.0.0.1', 0))  # bound, never listening: refuses
    port = closed.getsockname()[1]
    net = SimpleNamespace(port=port, hf_cache=tmp_path / 'hf',
                          torch_home=tmp_path / 'torch', attempts=[],
                          endpoint=f'http://127.0.0.1:{port}')
    # huggingface_hub reads these environment variables at import time
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(net.hf_cache))
    monkeypatch.setattr(constants, 'ENDPOINT', net.endpoint)
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setenv('TORCH_HOME', str(net.torch_home))
    for var in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', 'http_proxy',
                'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'all_proxy',
                'ALL_PROXY'):
        monkeypatch.delenv(var, raising=False)
    connect = socket.socket.connect

    def counting_connect(sock, address):
        net.attempts.append(address)
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, 'connect', counting_connect)
    yield net
    closed.close()


def _hf_cache_file(cache, repo, filename, state_dict):
    """Lay out a Hugging Face hub cache entry as ``hf download`` does."""
    from safetensors.torch import save_file
    folder = cache / ('models--' + repo.replace('/', '--'))
    commit = '0123456789abcdef0123456789abcdef01234567'
    (folder / 'refs').mkdir(parents=True)
    (folder / 'refs' / 'main').write_text(commit)
    snapshot = folder / 'snapshots' / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()},
              str(snapshot / filename))
    return snapshot / filename


def test_pretrained_offline_fails_at_once_naming_what_to_get(no_network,
                                                             monkeypatch):
    for features_only in (True, False):
        with pytest.raises(FileNotFoundError) as info:
            TIMMBackbone('resnet18', pretrained=True,
                         features_only=features_only)
        message = str(info.value)
        for part in ("TIMMBackbone('resnet18', pretrained=True)",
                     "'resnet18.a1_in1k'", 'ConnectionRefusedError',
                     f'{no_network.endpoint}/timm/resnet18.a1_in1k/resolve/'
                     f'main/model.safetensors', str(no_network.hf_cache),
                     'checkpoint_path=', 'hf download timm/resnet18.a1_in1k '
                     'model.safetensors'):
            assert part in message, (part, message)
    # one connection attempt per build, not timm's retries
    assert no_network.attempts == [('127.0.0.1', no_network.port)] * 2
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(FileNotFoundError, match=r'(?s)resnet18\.a1_in1k.*'
                       r'HF_HUB_OFFLINE is set.*model\.safetensors'):
        TIMMBackbone('resnet18', pretrained=True)
    assert len(no_network.attempts) == 2  # offline mode: no attempt at all


def test_pretrained_loads_the_cached_file_offline(no_network):
    torch.manual_seed(0)
    raw = randomize_norm_stats(timm.create_model('resnet18')).eval()
    _hf_cache_file(no_network.hf_cache, 'timm/resnet18.a1_in1k',
                   'model.safetensors', raw.state_dict())
    x = torch.rand(1, 3, 64, 64)
    pooled = TIMMBackbone('resnet18', pretrained=True,
                          features_only=False, pooled=True).eval()
    maps = TIMMBackbone('resnet18.a1_in1k', pretrained=True,
                        features_only=True, out_indices=(-1, )).eval()
    unpooled = TIMMBackbone('resnet18.a1_in1k', pretrained=True).eval()
    with torch.no_grad():
        assert_close(pooled(x)[0], raw.forward_head(raw.forward_features(x),
                                                    pre_logits=True))
        assert_close(maps(x)[0], raw.forward_features(x))
        assert_close(unpooled(x)[0], raw.forward_features(x))
    assert no_network.attempts == []


def test_pretrained_url_weights_name_the_torch_cache(no_network):
    url = f'{no_network.endpoint}/weights/r18-0123abcd.pth'
    overlay = dict(url=url, hf_hub_id='')
    with pytest.raises(FileNotFoundError) as info:
        TIMMBackbone('resnet18', pretrained=True, features_only=False,
                     pretrained_cfg_overlay=overlay)
    target = no_network.torch_home / 'hub' / 'checkpoints' / \
        'r18-0123abcd.pth'
    assert f'download {url}' in str(info.value)
    assert f'place it at {target}' in str(info.value)
    assert len(no_network.attempts) == 1
    torch.manual_seed(0)
    raw = timm.create_model('resnet18').eval()
    target.parent.mkdir(parents=True)
    torch.save(raw.state_dict(), target)
    model = TIMMBackbone('resnet18', pretrained=True, features_only=False,
                         pooled=True, pretrained_cfg_overlay=overlay).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert_close(model(x)[0], raw.forward_head(raw.forward_features(x),
                                                   pre_logits=True))
    assert len(no_network.attempts) == 1  # the cached file: no network


def test_pretrained_without_published_weights_is_named():
    with pytest.raises(ValueError, match=r"no pretrained weights for "
                       r"'resnet18'.*list_pretrained"):
        TIMMBackbone('resnet18', pretrained=True, features_only=False,
                     pretrained_cfg_overlay=dict(hf_hub_id='', url=''))
