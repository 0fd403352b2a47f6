"""A new family needs only its arch table, its stage builder and its
converters: a toy three-stage conv net gets out_indices, frozen_stages,
norm_eval, train(), forward, the output metadata, init_cfg Pretrained and
pretrained=True (through its alias map) from BaseBackbone."""
from dataclasses import dataclass
from typing import Tuple

import pytest
import torch
from helpers import save_state_dict
from torch import nn

from mmbackbone.checkpoint.convert import register_converter
from mmbackbone.models.backbones.base_backbone import (NORM_TYPES,
                                                       BaseBackbone,
                                                       StageInfo)
from mmbackbone.registry import MODELS
from mmbackbone.zoo import WeightsEntry, default_weights, load_index


# ------------------------------------------------------------ the family
@dataclass(frozen=True)
class ToyArch:
    widths: Tuple[int, int, int]
    depths: Tuple[int, int, int]


#: ``toy-a`` and ``toy-b`` share a row (as ViT-B and DeiT-B do) but not
#: their weights.
TOY_ARCHS = {
    'toy-a': ToyArch((8, 16, 32), (1, 1, 1)),
    'toy-b': ToyArch((8, 16, 32), (1, 1, 1)),
    'toy-c': ToyArch((8, 16, 24), (1, 2, 1)),
}


def conv_bn_relu(c_in, c_out, stride):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ToyNet(BaseBackbone):
    """Three stride-2 stages after a stride-2 stem."""

    arch_aliases = {'a': 'toy-a', 'b': 'toy-b'}
    zoo_configs = {name: dict(arch=name)
                   for name in [*TOY_ARCHS, *arch_aliases]}

    def __init__(self, arch='toy-a', in_channels=3, out_indices=-1,
                 frozen_stages=-1, norm_eval=False, init_cfg=None,
                 pretrained=False):
        super().__init__(init_cfg)
        name = self.canonical_arch(arch)
        if name not in TOY_ARCHS:
            raise KeyError(f'arch={arch!r}; choose from {sorted(TOY_ARCHS)}')
        spec = TOY_ARCHS[name]
        self._setup_stages(
            [StageInfo(width, 2 ** (i + 2), (f'stage{i + 1}', ))
             for i, width in enumerate(spec.widths)],
            stem=('stem', ), out_indices=out_indices,
            frozen_stages=frozen_stages, norm_eval=norm_eval)
        self.stem = conv_bn_relu(in_channels, spec.widths[0], 2)
        channels = spec.widths[0]
        for i, (width, depth) in enumerate(zip(spec.widths, spec.depths)):
            self.add_module(f'stage{i + 1}', nn.Sequential(
                conv_bn_relu(channels, width, 2),
                *[conv_bn_relu(width, width, 1) for _ in range(depth - 1)]))
            channels = width
        self._finish_init(pretrained, name)


@register_converter('toy-peer', 'ToyNet')
def toy_from_peer(state_dict, model):
    """A peer library's keys: ``conv_stem.*``, ``blocks.{i}.*``, a head."""
    if not any(key.startswith('blocks.') for key in state_dict):
        raise KeyError('not a toy-peer state dict')
    converted = {}
    for key, value in state_dict.items():
        if key.startswith('head.'):
            continue
        if key.startswith('conv_stem.'):
            key = 'stem.' + key[len('conv_stem.'):]
        elif key.startswith('blocks.'):
            _, index, rest = key.split('.', 2)
            key = f'stage{int(index) + 1}.{rest}'
        converted[key] = value
    return converted


def to_peer(state_dict):
    """The inverse of :func:`toy_from_peer`, plus a head."""
    peer = {'head.weight': torch.zeros(10, 32)}
    for key, value in state_dict.items():
        if key.startswith('stem.'):
            key = 'conv_stem.' + key[len('stem.'):]
        else:
            stage, rest = key.split('.', 1)
            key = f'blocks.{int(stage[5:]) - 1}.{rest}'
        peer[key] = value
    return peer


def test_the_family_writes_no_knob_code():
    for name in ('forward', 'stage_parts', 'train', '_freeze_stages',
                 'out_channels', 'out_strides', 'out_features',
                 'init_weights', '_setup_pretrained'):
        assert name not in vars(ToyNet), name


# ------------------------------------------------------ metadata, forward
def test_metadata_from_stage_info():
    model = ToyNet(out_indices=(2, 0, -2))
    assert model.num_stages == 3
    assert model.out_indices == (2, 0, 1)
    assert model.out_channels == (32, 8, 16)
    assert model.out_strides == (16, 4, 8)
    assert model.out_features == 16
    assert model.stage_channels == (8, 16, 32)
    assert [s.modules for s in model.stage_info] == [
        ('stage1', ), ('stage2', ), ('stage3', )]


def test_forward_stem_then_stages_in_out_indices_order():
    model = ToyNet(arch='toy-c', out_indices=(2, 0)).eval()
    outs = model(torch.rand(2, 3, 32, 48))
    assert isinstance(outs, tuple)
    assert [tuple(o.shape) for o in outs] == [(2, 24, 2, 3), (2, 8, 8, 12)]
    with torch.no_grad():
        x = model.stem(torch.ones(1, 3, 16, 16))
        first = model.stage1(x)
        last = model.stage3(model.stage2(first))
        outs = model(torch.ones(1, 3, 16, 16))
    torch.testing.assert_close(outs[0], last)
    torch.testing.assert_close(outs[1], first)


def test_forward_stops_after_the_last_needed_stage():
    model = ToyNet(out_indices=(1, )).eval()
    ran = []
    for name in ('stem', 'stage1', 'stage2', 'stage3'):
        getattr(model, name).register_forward_hook(
            lambda *_, name=name: ran.append(name))
    model(torch.rand(1, 3, 16, 16))
    assert ran == ['stem', 'stage1', 'stage2']


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(out_indices=3), ValueError,
     r'out_indices.*valid indices are \[-3, 2\]'),
    (dict(out_indices=(0, -4)), ValueError, 'out_indices'),
    (dict(frozen_stages=4), ValueError, 'frozen_stages=4'),
    (dict(frozen_stages='some'), TypeError, 'frozen_stages'),
    (dict(norm_eval=1), TypeError, 'norm_eval=1'),
    (dict(arch='toy-z'), KeyError, 'toy-z'),
])
def test_bad_knobs_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        ToyNet(**kwargs)


def test_a_stage_that_was_never_built_is_named():
    class Broken(ToyNet):
        def __init__(self):
            BaseBackbone.__init__(self)
            self._setup_stages([StageInfo(8, 4, ('stage1', ))])
            self.stem = nn.Identity()
            self._finish_init()

    with pytest.raises(AttributeError, match="'stage1' does not exist"):
        Broken()


def test_stage_info_checks_its_fields():
    with pytest.raises(ValueError, match='channels=0'):
        StageInfo(0, 4, ('stage1', ))
    with pytest.raises(TypeError, match='modules='):
        StageInfo(8, 4, 'stage1')


# ------------------------------------------------- freezing and norm_eval
def frozen_names(model):
    return {name.split('.')[0] for name, param in model.named_parameters()
            if not param.requires_grad}


@pytest.mark.parametrize('frozen_stages,expected', [
    (-1, set()), (0, {'stem'}), (2, {'stem', 'stage1', 'stage2'}),
    (3, {'stem', 'stage1', 'stage2', 'stage3'}),
    ('all', {'stem', 'stage1', 'stage2', 'stage3'}),
])
def test_frozen_stages(frozen_stages, expected):
    model = ToyNet(out_indices=(0, 1, 2), frozen_stages=frozen_stages)
    assert frozen_names(model) == expected
    assert model.train() is model
    for name in ('stem', 'stage1', 'stage2', 'stage3'):
        modes = {m.training for m in getattr(model, name).modules()}
        assert modes == ({False} if name in expected else {True}), name
    outs = model(torch.rand(2, 3, 16, 16))
    if 'stage3' not in expected:  # something left to train
        sum(o.mean() for o in outs).backward()
        for name, param in model.named_parameters():
            assert (param.grad is None) == (name.split('.')[0] in expected)


def test_frozen_parts_stay_in_eval_after_every_train():
    model = ToyNet(frozen_stages=1)
    model.train()
    model.eval()
    model.train()
    assert not model.stem[1].training and not model.stage1[0][1].training
    assert model.stage2[0][1].training


@pytest.mark.parametrize('built_then_trained', [False, True])
def test_norm_eval(built_then_trained):
    model = ToyNet(norm_eval=True)
    if built_then_trained:
        model.train()
    norms = [m for m in model.modules() if isinstance(m, NORM_TYPES)]
    assert norms and not any(m.training for m in norms)
    assert any(m.training for m in model.modules()
               if not isinstance(m, NORM_TYPES))
    before = model.stem[1].running_mean.clone()
    model(torch.rand(2, 3, 16, 16) + 5)
    torch.testing.assert_close(model.stem[1].running_mean, before)


def test_train_returns_self_and_eval_chains():
    model = ToyNet()
    assert model.train() is model and model.eval() is model
    assert not any(m.training for m in model.modules())


# ------------------------------------------------------ loading weights
def test_init_cfg_pretrained_converts_a_peer_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = ToyNet(out_indices=(0, 1, 2)).eval()
    path = save_state_dict(to_peer(source.state_dict()),
                           tmp_path / 'peer.pth')
    model = ToyNet(out_indices=(0, 1, 2), frozen_stages=1, init_cfg=dict(
        type='Pretrained', checkpoint=path))
    model.init_weights()
    x = torch.rand(1, 3, 16, 16)
    for mine, theirs in zip(model.eval()(x), source(x), strict=True):
        torch.testing.assert_close(mine, theirs)
    assert frozen_names(model) == {'stem', 'stage1'}  # loading keeps it


@pytest.fixture
def toy_index(monkeypatch):
    """ToyNet registered, and indexed weights for its rows."""
    MODELS.register_module(module=ToyNet, force=True)
    for arch in TOY_ARCHS:
        entry = WeightsEntry(
            name=f'{arch}.test', type='ToyNet', arch=arch,
            url=f'https://example.com/{arch}.pth', source='mmbackbone',
            params=1, default=True)
        monkeypatch.setitem(load_index(), entry.name, entry)
    yield
    MODELS._module_dict.pop('ToyNet')


@pytest.mark.parametrize('arch,entry', [
    ('toy-a', 'toy-a.test'), ('a', 'toy-a.test'), ('toy-b', 'toy-b.test'),
    ('b', 'toy-b.test'), ('toy-c', 'toy-c.test')])
def test_pretrained_true_resolves_aliases_by_the_map(toy_index, monkeypatch,
                                                     arch, entry):
    """``b`` is ``toy-b`` by the declared map, though its row also equals
    ``toy-a``'s: the weights are toy-b's."""
    asked = []
    monkeypatch.setattr(BaseBackbone, 'init_weights',
                        lambda self: asked.append(self.init_cfg))
    model = ToyNet(arch=arch, frozen_stages=0, pretrained=True)
    assert asked == [dict(type='Pretrained',
                          checkpoint=f'mmbackbone://{entry}', prefix=None)]
    assert default_weights('ToyNet', arch).name == entry
    assert frozen_names(model) == {'stem'}


def test_pretrained_name_must_fit_the_canonical_arch(toy_index):
    with pytest.raises(ValueError, match='fits ToyNet toy-a, not ToyNet '
                                         'toy-b'):
        ToyNet(arch='b', pretrained='toy-a.test')
