"""DLA: key layout and features equal timm's, and the shared knobs."""
import pytest
import timm
import torch
from timm.models import dla as timm_dla
from torch import nn

from mmbackbone import build_backbone
from mmbackbone.checkpoint import load_pretrained
from mmbackbone.checkpoint.convert import best_conversion
from mmbackbone.models import DLA
from mmbackbone.models.backbones.dla import DLA_ARCHS, DLAArch, parse_arch

ALL_LEVELS = (0, 1, 2, 3, 4, 5)


def _randomize_norms(model: nn.Module, weight=(0.5, 1.0)) -> None:
    """Non-trivial BN statistics and affine params, so eval mode matters."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(*weight)
                mod.bias.uniform_(-0.1, 0.1)


def _save(state_dict, tmp_path, name='w.pth'):
    path = tmp_path / name
    torch.save(state_dict, path)
    return str(path)


def _small(**kwargs) -> DLA:
    return DLA(arch='dla46x_c', **kwargs)


# ------------------------------------------------------- peer equivalence
@pytest.mark.parametrize('name', sorted(DLA_ARCHS))
def test_keys_and_shapes_equal_timm(name):
    with torch.device('meta'):
        peer = timm.create_model(name)
        ours = DLA(arch=name)
    expected = [(k, v.shape) for k, v in peer.state_dict().items()
                if not k.startswith('fc.')]
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == expected


@pytest.mark.parametrize('name', ['dla34', 'dla46x_c', 'dla60x_c'])
def test_features_equal_timm(name, tmp_path):
    torch.manual_seed(0)
    peer = timm.create_model(name)
    _randomize_norms(peer)
    state = peer.state_dict()
    path = _save(state, tmp_path, f'{name}.pth')
    feats = timm.create_model(name, features_only=True,
                              out_indices=ALL_LEVELS)
    feats.load_state_dict({k: v for k, v in state.items()
                           if not k.startswith('fc.')})
    ours = DLA(arch=name, out_indices=ALL_LEVELS,
               init_cfg=dict(type='Pretrained', checkpoint=path))
    ours.init_weights()
    assert ours.out_channels == tuple(feats.feature_info.channels())
    assert ours.out_strides == tuple(feats.feature_info.reduction())
    feats.eval(), ours.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = feats(x), ours(x)
    assert len(got) == len(expected) == 6
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=5e-5, rtol=1e-5)


def test_dict_arch_with_residual_root_equals_timm(tmp_path):
    """A custom dict arch (bottleneck X, residual roots, a depth-3 tree)
    against timm's DLA class built with the same numbers."""
    torch.manual_seed(1)
    arch = dict(levels=(1, 2, 1, 3, 2, 1), channels=(8, 16, 32, 64, 64, 128),
                block='bottleneck', residual_root=True, cardinality=4,
                base_width=16)
    peer = timm_dla.DLA(levels=arch['levels'], channels=arch['channels'],
                        block=timm_dla.DlaBottleneck, shortcut_root=True,
                        cardinality=4, base_width=16)
    _randomize_norms(peer, weight=(0.2, 0.5))
    path = _save(peer.state_dict(), tmp_path)
    ours = DLA(arch=arch, out_indices=ALL_LEVELS,
               init_cfg=dict(type='Pretrained', checkpoint=path))
    ours.init_weights()
    peer.eval(), ours.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = peer.forward_intermediates(x, intermediates_only=True)
        got = ours(x)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=5e-5, rtol=1e-5)


def test_converter_drops_classifier_and_unused_projections(tmp_path):
    peer = timm.create_model('dla46x_c')
    state = peer.state_dict()
    # the original (ucbdrive) release also kept a never-used projection
    # at the top of trees deeper than one level (level4: 64 -> 128)
    state['level4.project.0.weight'] = torch.zeros(128, 64, 1, 1)
    path = _save(state, tmp_path)
    model = _small()
    report = load_pretrained(model, path)
    assert report.source == 'timm'
    assert report.missing == [] and report.unexpected == []
    assert report.num_loaded == len(model.state_dict())
    with pytest.raises(KeyError, match='not a timm DLA'):
        from mmbackbone.models.backbones.dla import dla_from_timm
        dla_from_timm({'conv1.weight': torch.zeros(1)}, model)


def test_own_checkpoint_loads_as_is(tmp_path):
    src = _small()
    path = _save({'state_dict': {'backbone.' + k: v
                                 for k, v in src.state_dict().items()}},
                 tmp_path)
    dst = _small(init_cfg=dict(type='Pretrained', checkpoint=path,
                               prefix='backbone'))
    dst.init_weights()
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    assert best_conversion(src.state_dict(), dst)[0] == 'mmbackbone'


def test_in_channels_adapts_timm_first_conv(tmp_path):
    peer = timm.create_model('dla46x_c')
    path = _save(peer.state_dict(), tmp_path)
    model = _small(in_channels=1,
                   init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    torch.testing.assert_close(
        model.base_layer[0].weight,
        peer.base_layer[0].weight.sum(1, keepdim=True))
    assert model.eval()(torch.rand(1, 1, 32, 32))[0].shape == (1, 256, 1, 1)


# ------------------------------------------------------------ outputs
def test_out_indices_shapes_and_order():
    model = _small(out_indices=(3, 0, 5)).eval()
    assert model.out_channels == (64, 16, 256)
    assert model.out_strides == (8, 1, 32)
    assert model.out_features == 256
    outs = model(torch.rand(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 8, 8), (1, 16, 64, 64),
                                              (1, 256, 2, 2)]


def test_default_out_indices_is_last_level():
    model = DLA()
    assert model.out_indices == (5, )
    assert model.out_channels == (512, ) and model.out_strides == (32, )


def test_negative_out_indices_equal_positive():
    torch.manual_seed(0)
    neg = _small(out_indices=[-1, -4]).eval()
    pos = _small(out_indices=(5, 2)).eval()
    pos.load_state_dict(neg.state_dict())
    assert neg.out_indices == (5, 2) and neg.out_channels == (256, 64)
    x = torch.rand(1, 3, 32, 32)
    for a, b in zip(neg(x), pos(x)):
        torch.testing.assert_close(a, b)
    assert _small(out_indices=-3).out_indices == (3, )


def test_forward_stops_after_last_needed_level():
    model = _small(out_indices=(2, )).eval()
    called = []
    model.level3.register_forward_hook(lambda *_: called.append(3))
    model.level2.register_forward_hook(lambda *_: called.append(2))
    model(torch.rand(1, 3, 32, 32))
    assert called == [2]


def test_build_from_registry():
    model = build_backbone(dict(type='DLA', arch='dla46_c',
                                out_indices=(2, 3, 4, 5)))
    assert isinstance(model, DLA)
    assert model.out_strides == (4, 8, 16, 32)
    assert model.out_channels == (64, 64, 128, 256)


def test_zoo_configs_cover_every_arch():
    assert set(DLA.zoo_configs) == set(DLA_ARCHS)
    assert {'dla34', 'dla46_c', 'dla46x_c', 'dla60', 'dla60x', 'dla102',
            'dla102x', 'dla169'} <= set(DLA.zoo_configs)


# ------------------------------------------------- freezing / norm_eval
@pytest.mark.parametrize('frozen', [-1, 0, 1, 3, 6, 'all'])
def test_frozen_stages(frozen):
    model = _small(frozen_stages=frozen, out_indices=ALL_LEVELS)
    model.train()
    parts = ['base_layer'] + [f'level{i}' for i in range(6)]
    n_frozen = len(parts) if frozen == 'all' else frozen + 1
    for i, name in enumerate(parts):
        module = getattr(model, name)
        is_frozen = i < n_frozen
        assert all(p.requires_grad != is_frozen
                   for p in module.parameters()), name
        assert all(m.training != is_frozen for m in module.modules()), name
    if n_frozen < len(parts):
        sum(o.sum() for o in model(torch.rand(2, 3, 32, 32))).backward()
        for i, name in enumerate(parts):
            grads = [p.grad for p in getattr(model, name).parameters()]
            if i < n_frozen:
                assert all(g is None for g in grads), name
            else:
                assert all(g is not None for g in grads), name
    assert model.train() is model and model.eval() is model


def test_norm_eval_keeps_statistics():
    model = _small(norm_eval=True)
    assert model.train() is model
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(not m.training for m in norms)
    assert model.level3.tree1.tree1.training
    before = [m.running_mean.clone() for m in norms]
    model(torch.rand(2, 3, 32, 32))
    for b, m in zip(before, norms):
        assert torch.equal(b, m.running_mean)
    free = _small(norm_eval=False).train()
    assert all(m.training for m in free.modules()
               if isinstance(m, nn.BatchNorm2d))


# ------------------------------------------------------------ with_cp
def test_with_cp_same_outputs_and_grads():
    torch.manual_seed(0)
    plain = _small(out_indices=(2, 5))
    ckpt = _small(out_indices=(2, 5), with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    ckpt.level3.tree1.tree1.register_forward_pre_hook(
        lambda *_: calls.append(1))
    x = torch.rand(2, 3, 32, 32)
    results = []
    for model in (plain, ckpt):
        model.train()
        outs = model(x)
        (outs[0].sum() + outs[1].pow(2).sum()).backward()
        results.append((outs, [p.grad for p in model.parameters()]))
    assert len(calls) == 2  # the block is run again in backward
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_with_cp_inactive_without_grad():
    model = _small(with_cp=True).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 32))
    assert out[0].shape == (1, 256, 1, 1)


# ----------------------------------------------------------- drop_path
def test_drop_path_rates_are_linear_and_eval_is_identity():
    torch.manual_seed(0)
    model = _small(drop_path_rate=0.3).eval()
    rates = [b.drop_path.drop_prob for b in model.modules()
             if hasattr(b, 'drop_path') and hasattr(b.drop_path,
                                                    'drop_prob')]
    n = sum(2**d for d in DLA_ARCHS['dla46x_c'].levels[2:])
    assert len(rates) == n - 1  # the first block has rate 0: Identity
    assert rates[-1] == pytest.approx(0.3)
    plain = _small().eval()
    plain.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(model(x)[0], plain(x)[0])


# ---------------------------------------------------------- arch table
def test_arch_rows_match_timm_numbers():
    assert DLA_ARCHS['dla60x'] == DLAArch(
        (1, 1, 1, 2, 3, 1), (16, 32, 128, 256, 512, 1024),
        cardinality=32, base_width=4)
    assert DLA_ARCHS['dla34'].block == 'basic'
    assert DLA_ARCHS['dla169'].residual_root
    assert parse_arch('DLA-34') is DLA_ARCHS['dla34']


def test_dict_arch_equal_to_row_builds_same_model():
    row = DLA_ARCHS['dla46_c']
    model = DLA(arch=dict(levels=list(row.levels), channels=row.channels))
    assert model.arch == row
    with torch.device('meta'):
        named = DLA(arch='dla46_c')
    assert list(model.state_dict()) == list(named.state_dict())


# -------------------------------------------------------------- export
def test_trace_and_export():
    model = _small(out_indices=(2, 5)).eval()
    x = torch.rand(1, 3, 32, 32)
    expected = model(x)
    traced = torch.jit.trace(model, x, check_trace=False)
    for a, b in zip(traced(x), expected):
        torch.testing.assert_close(a, b)
    exported = torch.export.export(model, (x, ))
    for a, b in zip(exported.module()(x), expected):
        torch.testing.assert_close(a, b)


# -------------------------------------------------------------- errors
def test_unknown_arch():
    with pytest.raises(KeyError, match=r"arch='dla35'; choose from .*dla34"):
        DLA(arch='dla35')


def test_arch_of_wrong_type():
    with pytest.raises(TypeError, match='arch=34 must be an arch name'):
        DLA(arch=34)


def test_dict_arch_errors():
    with pytest.raises(KeyError, match=r"unknown keys \['depth'\]"):
        DLA(arch=dict(levels=(1, ) * 6, channels=(8, ) * 6, depth=3))
    with pytest.raises(KeyError, match=r"lacks the keys \['channels'\]"):
        DLA(arch=dict(levels=(1, ) * 6))
    with pytest.raises(ValueError, match=r"arch\['levels'\]=.*6 positive"):
        DLA(arch=dict(levels=(1, 1, 1), channels=(8, ) * 6))
    with pytest.raises(ValueError, match=r"arch\['channels'\]=.*6 positive"):
        DLA(arch=dict(levels=(1, ) * 6, channels=(8, 8, 8, 8, 8, 0)))
    with pytest.raises(ValueError, match=r"arch\['block'\]='res2net'"):
        DLA(arch=dict(levels=(1, ) * 6, channels=(8, ) * 6,
                      block='res2net'))
    with pytest.raises(TypeError, match=r"arch\['residual_root'\]=1"):
        DLA(arch=dict(levels=(1, ) * 6, channels=(8, ) * 6,
                      residual_root=1))
    with pytest.raises(ValueError, match=r"arch\['cardinality'\]=0"):
        DLA(arch=dict(levels=(1, ) * 6, channels=(8, ) * 6,
                      cardinality=0))
    with pytest.raises(ValueError, match="'basic' blocks have no groups"):
        DLA(arch=dict(levels=(1, ) * 6, channels=(8, ) * 6, block='basic',
                      cardinality=32))
    with pytest.raises(ValueError, match='multiple of cardinality'):
        DLA(arch=dict(levels=(1, ) * 6, channels=(8, 8, 24, 24, 24, 24),
                      cardinality=3, base_width=4))


def test_argument_errors():
    with pytest.raises(ValueError, match=r'out_indices=\(6,\).*\[-6, 5\]'):
        _small(out_indices=(6, ))
    with pytest.raises(ValueError, match=r'holds -7.*\[-6, 5\]'):
        _small(out_indices=-7)
    with pytest.raises(ValueError, match='frozen_stages=7 is out of range'):
        _small(frozen_stages=7)
    with pytest.raises(ValueError, match='in_channels=0 must be a positive'):
        _small(in_channels=0)
    with pytest.raises(ValueError, match=r'drop_path_rate=1\.0 must be in'):
        _small(drop_path_rate=1.0)
    with pytest.raises(TypeError, match="with_cp='yes' must be True or"):
        _small(with_cp='yes')
    with pytest.raises(TypeError, match='norm_eval=1 must be True or False'):
        _small(norm_eval=1)
    with pytest.raises(KeyError, match="unknown type 'BM'"):
        _small(norm_cfg=dict(type='BM'))


def test_shape_mismatch_names_key(tmp_path):
    path = _save(timm.create_model('dla46_c').state_dict(), tmp_path)
    model = _small(init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(ValueError, match=r'level2\..* has shape'):
        model.init_weights()
