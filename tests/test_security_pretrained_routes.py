"""Every spelling of a pretrained load goes through ``load_pretrained``.

mmengine's ``PretrainedInit`` (a non-strict load that only warns) is
reachable from ``init_cfg`` under many spellings and on every module that
is an mmengine ``BaseModule``. Here each spelling x owner (a backbone, a
head, a whole classifier, a ResNet inside a classifier with the
``init_cfg`` on the classifier, an ``override`` naming the backbone) must:

1. load a good checkpoint into exactly the tensors the canonical
   ``dict(type='Pretrained', ...)`` on the backbone loads;
2. refuse a checkpoint of another architecture with a named error;
3. refuse a pickle that would run code with ``UnsafeCheckpointError``,
   the payload's marker file never written.

mmengine's ``PretrainedInit.__call__`` and ``load_checkpoint`` are
replaced by tripwires for the whole module: reaching either fails.
A hypothesis fuzzer then crosses the spellings and owners with damaged
and hostile files.
"""
import json
import os
import pickle
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmengine.model import BaseModule
from mmengine.model.weight_init import PretrainedInit
from mmengine.registry import WEIGHT_INITIALIZERS
from torch import nn

from helpers import one_thread  # noqa: F401  (fixture)
from mmbackbone.checkpoint import (CheckpointError, UnsafeCheckpointError,
                                   load_pretrained, read_state_dict)
from mmbackbone.models import ImageClassifier
from mmbackbone.models.backbones import ResNet
from mmbackbone.models.heads import LinearClsHead
from mmbackbone.models.init_cfg import InitCfgError, plan_init_cfg

pytestmark = pytest.mark.usefixtures('one_thread')

#: Fuzzed (spelling, owner, file) cases per run.
MAX_EXAMPLES = 200

MARKER_DIR = Path(tempfile.mkdtemp(prefix='pretrained_routes_marker_'))
MARKER = MARKER_DIR / 'payload_ran'
STATS = Counter()

BACKBONE = dict(depth=18, num_stages=1, strides=(1, ), dilations=(1, ),
                out_indices=(0, ), base_channels=8,
                stem_channels=8)
WIDE = dict(BACKBONE, base_channels=16)


class ExecPayload:
    """Unpickling this (unsafely) writes MARKER."""

    def __reduce__(self):
        return (exec, (f'open({str(MARKER)!r}, "w").write("ran")', ))


class SubclassedPretrained(PretrainedInit):
    """A subclass of mmengine's loader, as another library may define."""


if 'AliasedPretrained' not in WEIGHT_INITIALIZERS.module_dict:
    WEIGHT_INITIALIZERS.register_module('AliasedPretrained',
                                        module=SubclassedPretrained)


def _entry(type_, **extra):
    return lambda **kw: dict(type=type_, **extra, **kw)


#: name -> function(checkpoint=..., prefix=..., [name=...]) -> entry
SPELLINGS = {
    'Pretrained': _entry('Pretrained'),
    'mmengine.Pretrained': _entry('mmengine.Pretrained'),
    'mmbackbone.Pretrained': _entry('mmbackbone.Pretrained'),
    'mmdet.Pretrained': _entry('mmdet.Pretrained'),
    'PretrainedInit': _entry('PretrainedInit'),
    'import path': _entry('mmengine.model.weight_init.PretrainedInit'),
    'class': _entry(PretrainedInit),
    'subclass': _entry(SubclassedPretrained),
    'registered alias': _entry('AliasedPretrained'),
    '_scope_': _entry('Pretrained', _scope_='mmengine'),
}
OWNERS = ('backbone', 'head', 'classifier', 'classifier_backbone',
          'override')


def resnet(init_cfg=None, arch=BACKBONE):
    return ResNet(**arch, init_cfg=init_cfg)


def classifier(init_cfg=None, arch=BACKBONE):
    return ImageClassifier(backbone=dict(type='ResNet', **arch),
                           neck=dict(type='GlobalAveragePooling'),
                           head=dict(type='LinearClsHead', num_classes=10),
                           init_cfg=init_cfg)


def head(init_cfg=None, width=8):
    return LinearClsHead(num_classes=10, in_channels=width,
                         init_cfg=init_cfg)


def _randomized(module):
    torch.manual_seed(0)
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.uniform_(-1, 1)
    return module


def _save(obj, path: Path, legacy: bool = False) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


class Files:
    """The files of one owner: good, wrong architecture, hostile."""

    def __init__(self, directory: Path, owner: str):
        good, wrong, self.prefix = self._states(owner)
        self.good_state = good
        self.good = _save(good, directory / f'{owner}_good.pth')
        self.wrong = _save(wrong, directory / f'{owner}_wrong.pth')
        self.hostile = _save({'state_dict': good, 'meta': ExecPayload()},
                             directory / f'{owner}_hostile.pth')
        self.hostile_legacy = _save({'x': ExecPayload(), **good},
                                    directory / f'{owner}_legacy.pth',
                                    legacy=True)

    @staticmethod
    def _states(owner):
        if owner == 'backbone':  # a training checkpoint with its prefix
            wrap = {'state_dict': {
                f'backbone.{k}': v
                for k, v in _randomized(resnet()).state_dict().items()}}
            wrong = {'state_dict': {
                f'backbone.{k}': v for k, v in
                _randomized(resnet(arch=WIDE)).state_dict().items()}}
            return wrap, wrong, 'backbone'
        if owner == 'head':
            return (_randomized(head()).state_dict(),
                    _randomized(head(width=16)).state_dict(), None)
        if owner == 'classifier':
            return (_randomized(classifier()).state_dict(),
                    _randomized(classifier(arch=WIDE)).state_dict(), None)
        if owner == 'classifier_backbone':  # backbone.* keys only
            return ({f'backbone.{k}': v for k, v in
                     _randomized(resnet()).state_dict().items()},
                    {f'backbone.{k}': v for k, v in
                     _randomized(resnet(arch=WIDE)).state_dict().items()},
                    None)
        return (_randomized(resnet()).state_dict(),
                _randomized(resnet(arch=WIDE)).state_dict(), None)


def build(owner: str, spelling: str, checkpoint, listed: bool = False):
    """(model, the module the load must fill) for one spelling x owner."""
    make = SPELLINGS[spelling]
    if owner == 'override':
        load = make(name='backbone', checkpoint=str(checkpoint))
        override = [dict(type='Constant', name='head', val=0.25), load] \
            if listed else load
        model = classifier(init_cfg=dict(type='Normal', layer='Linear',
                                         std=0.01, override=override))
        return model, model.backbone
    prefix = 'backbone' if owner == 'backbone' else None
    entry = make(checkpoint=str(checkpoint), prefix=prefix)
    # listed: another initializer first; the load must still win
    init_cfg = [dict(type='Constant', val=0.5, layer=['Conv2d', 'Linear']),
                entry] if listed else entry
    if owner == 'backbone':
        model = resnet(init_cfg)
        return model, model
    if owner == 'head':
        model = head(init_cfg)
        return model, model
    model = classifier(init_cfg)
    return model, (model if owner == 'classifier' else model.backbone)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    directory = tmp_path_factory.mktemp('routes')
    return {owner: Files(directory, owner) for owner in OWNERS}


@pytest.fixture(autouse=True)
def tripwires(monkeypatch):
    """mmengine's loaders must never be reached from our modules."""

    def tripped(*args, **kwargs):
        raise AssertionError("mmengine's PretrainedInit / load_checkpoint "
                             'was reached')

    monkeypatch.setattr(PretrainedInit, '__call__', tripped)
    monkeypatch.setattr('mmengine.runner.checkpoint.load_checkpoint',
                        tripped)


def _canonical_backbone(files):
    """What ``dict(type='Pretrained')`` on the backbone itself loads."""
    model = resnet(dict(type='Pretrained', checkpoint=str(files.good),
                        prefix=files.prefix))
    model.init_weights()
    return model.state_dict()


def _expected(files: Files, owner: str):
    if owner in ('backbone', 'override'):
        return _canonical_backbone(files)
    if owner == 'classifier_backbone':
        return {k[len('backbone.'):]: v for k, v in files.good_state.items()}
    return files.good_state


def assert_same(module: nn.Module, expected) -> None:
    state = module.state_dict()
    assert set(state) == set(expected), sorted(set(state) ^ set(expected))
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


@pytest.mark.parametrize('owner', OWNERS)
@pytest.mark.parametrize('spelling', list(SPELLINGS))
def test_every_spelling_and_owner(files, owner, spelling):
    listed = list(SPELLINGS).index(spelling) % 2 == 1
    owned = files[owner]
    # 1. a good file: the canonical tensors, the others' init run first
    model, target = build(owner, spelling, owned.good, listed)
    model.init_weights()
    assert_same(target, _expected(owned, owner))
    if owner == 'override':  # the rest initialised, not loaded
        assert model.head.fc.weight.std() < 0.5
    # 2. another architecture: a named error, not a warning
    model, _ = build(owner, spelling, owned.wrong, listed)
    with pytest.raises(CheckpointError, match=re.escape(str(owned.wrong))):
        model.init_weights()
    # 3. a pickle that runs code: refused, nothing ran
    for hostile in (owned.hostile, owned.hostile_legacy):
        model, _ = build(owner, spelling, hostile, listed)
        with pytest.raises(UnsafeCheckpointError, match='blocked globals'):
            model.init_weights()
        assert not MARKER.exists(), (owner, spelling)


# ------------------------------------------------------------- ordering
def test_loads_last_and_once(files, monkeypatch):
    """Other entries, then the children, then the load; one load each."""
    import mmbackbone.checkpoint as checkpoint
    calls = []

    def counting(model, path, prefix=None):
        calls.append((type(model).__name__, Path(path).name))
        return load_pretrained(model, path, prefix=prefix)

    monkeypatch.setattr(checkpoint, 'load_pretrained', counting)
    owned = files['override']
    # the override load goes into the backbone after the backbone's own
    # Kaiming init (mmengine would load it first, then re-initialise it)
    model, target = build('override', 'Pretrained', owned.good)
    model.init_weights()
    model.init_weights()  # again: nothing is loaded twice
    assert calls == [('ResNet', owned.good.name)]
    assert_same(target, owned.good_state)
    # whole classifier + a Constant entry listed after the load
    calls.clear()
    whole = files['classifier']
    model = classifier([dict(type='Pretrained', checkpoint=str(whole.good)),
                        dict(type='Constant', val=0.5, layer='Conv2d')])
    model.init_weights()
    assert calls == [('ImageClassifier', whole.good.name)]
    assert_same(model, whole.good_state)


def test_override_without_type_inherits_the_load(files):
    owned = files['override']
    model = classifier(dict(type='Pretrained', checkpoint=str(owned.good),
                            prefix='nothing', override=dict(name='backbone')))
    plan = plan_init_cfg(model.init_cfg, 'ImageClassifier')
    assert [(load.name, load.prefix) for load in plan.loads] == [
        (None, 'nothing'), ('backbone', 'nothing')]
    assert plan.others is None
    with pytest.raises(KeyError, match="prefix='nothing' matches no key"):
        model.init_weights()


# --------------------------------------------------------------- refusals
@pytest.mark.parametrize('init_cfg, error, match', [
    ([dict(type='Pretrained', checkpoint='a.pth'),
      dict(type='mmengine.Pretrained', checkpoint='b.pth')],
     InitCfgError, r'init_cfg\[0\] and .*init_cfg\[1\] both load'),
    (dict(type='Pretrained', checkpoint='a.pth',
          override=dict(type='Constant', name='head', val=0)),
     InitCfgError, 'may only name submodules to load into'),
    (dict(type='Pretrained', checkpoint='a.pth', strict=False),
     KeyError, r"unknown keys \['strict'\]; valid keys are checkpoint, "
               r'prefix, map_location'),
    (dict(type=PretrainedInit, prefix='backbone'),
     KeyError, "has no 'checkpoint'"),
    (dict(type='Normal', override=dict(type='Pretrained', checkpoint='a')),
     InitCfgError, "no 'name'"),
    (dict(type='Normal', override=dict(type='Pretrained', name='neckk',
                                       checkpoint='a.pth')),
     KeyError, r"name='neckk' is not a submodule of ImageClassifier; its "
               r"submodules are \['data_preprocessor', 'backbone', 'neck', "
               r"'head'\]"),
    (dict(type='os.system', command='true'), KeyError,
     'scope .os. has no weight initializers'),
    (dict(type='mmengine.runner.checkpoint.load_checkpoint'), KeyError,
     'import path'),
    (dict(type='Normal', _scope_='os'), KeyError, 'not a registered scope'),
    (dict(type='NotAnInitializer'), KeyError,
     "type 'NotAnInitializer' is not a registered weight initializer"),
])
def test_refused_with_a_named_error(init_cfg, error, match):
    model = classifier(init_cfg)
    with pytest.raises(error, match=match):
        model.init_weights()
    assert not model.is_init


def test_partial_of_the_loader_is_refused():
    import functools
    model = resnet(dict(type=functools.partial(PretrainedInit,
                                               checkpoint='a.pth')))
    with pytest.raises(InitCfgError, match='functools.partial'):
        model.init_weights()


def test_dotted_initializer_runs_nothing(tmp_path):
    """mmengine's registry would import 'os.system' and call it."""
    model = resnet(dict(type='os.system', command=f'touch {MARKER}'))
    with pytest.raises(KeyError, match='os.system|scope'):
        model.init_weights()
    assert not MARKER.exists()


def test_two_loads_into_one_submodule(files):
    owned = files['override']
    model = ImageClassifier(
        backbone=dict(type='ResNet', **BACKBONE, init_cfg=dict(
            type='Pretrained', checkpoint=str(owned.good))),
        init_cfg=dict(type='Normal', layer='Linear', override=dict(
            type='Pretrained', name='backbone', checkpoint=str(owned.good))))
    with pytest.raises(InitCfgError, match='both load weights into backbone'):
        model.init_weights()


class ForeignHead(BaseModule):
    """A BaseModule of another library: it does not route its loads."""

    def __init__(self, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(x[-1])


def test_foreign_submodule_load_is_refused(files):
    model = ImageClassifier(
        backbone=dict(type='ResNet', **BACKBONE),
        neck=dict(type='GlobalAveragePooling'),
        head=ForeignHead(init_cfg=dict(type='mmengine.Pretrained',
                                       checkpoint=str(files['head'].good))))
    with pytest.raises(InitCfgError, match=r"ImageClassifier\.head\.init_cfg"
                       r".*not an mmbackbone module.*name='head'"):
        model.init_weights()
    # without a load it initialises as usual
    ImageClassifier(backbone=dict(type='ResNet', **BACKBONE),
                    head=ForeignHead(init_cfg=dict(type='Normal',
                                                   layer='Linear'))
                    ).init_weights()


def test_load_pretrained_into_a_classifier(files):
    """Whole-classifier loads: no matching key is an error; missing keys
    are reported."""
    model = classifier()
    with pytest.raises(CheckpointError, match='none of its .* keys match '
                       'ImageClassifier'):
        load_pretrained(model, files['override'].good)  # backbone keys
    report = load_pretrained(model, files['classifier_backbone'].good)
    assert report.missing == ['head.fc.weight', 'head.fc.bias']
    assert report.num_loaded == len(files['classifier_backbone'].good_state)


# ------------------------------------------------------------ torch floor
def test_torch_floor():
    from packaging.requirements import Requirement
    from packaging.version import Version
    root = Path(__file__).resolve().parents[1]
    reqs = {}
    for line in (root / 'requirements' / 'runtime.txt').read_text(
    ).splitlines():
        line = line.split('#')[0].strip()
        if line:
            req = Requirement(line)
            reqs[req.name] = req.specifier
    assert '2.5.1' not in reqs['torch'] and '2.6' in reqs['torch']
    assert '0.20.1' not in reqs['torchvision'] and \
        '0.21' in reqs['torchvision']
    assert Version(torch.__version__.split('+')[0]) >= Version('2.6')


def test_plain_torch_load_refuses_the_payload(files, monkeypatch):
    """torch >= 2.6: mmengine's own loads (another library wrapping our
    backbone) cannot run a pickle's code either."""
    from mmengine.runner.checkpoint import _load_checkpoint
    monkeypatch.delenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', raising=False)
    monkeypatch.delenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', raising=False)
    path = files['backbone'].hostile
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)
    with pytest.raises(pickle.UnpicklingError):
        _load_checkpoint(str(path), map_location='cpu')
    assert not MARKER.exists()


# ----------------------------------------------------------------- fuzzer
KINDS = ('good', 'wrong', 'hostile', 'hostile_legacy')
DAMAGE = ('none', 'truncate', 'bitflip', 'data_bitflip')


@st.composite
def cases(draw):
    owner = draw(st.sampled_from(OWNERS))
    spelling = draw(st.sampled_from(sorted(SPELLINGS)))
    kind = draw(st.sampled_from(KINDS))
    damage = draw(st.sampled_from(DAMAGE))
    return owner, spelling, kind, damage, draw(st.booleans()), draw(
        st.randoms(use_true_random=False))


def _damaged(data: bytearray, damage: str, rng) -> bytes:
    size = len(data)
    if damage == 'truncate':
        data = data[:rng.randrange(0, size)]
    elif damage == 'bitflip':
        for _ in range(rng.randint(1, 8)):
            bit = rng.randrange(size * 8)
            data[bit // 8] ^= 1 << (bit % 8)
    elif damage == 'data_bitflip':  # in the tensor bytes (the last 40 %)
        for _ in range(rng.randint(1, 4)):
            bit = rng.randrange(size * 8 * 6 // 10, size * 8 - 8)
            data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


def _check_case(files, directory, owner, spelling, kind, damage, listed,
                rng):
    owned = files[owner]
    source = getattr(owned, kind)
    path = Path(directory) / f'case{source.suffix}'
    path.write_bytes(_damaged(bytearray(source.read_bytes()), damage, rng))
    model, target = build(owner, spelling, path, listed)
    STATS['total'] += 1
    STATS[f'owner:{owner}'] += 1
    STATS[f'spelling:{spelling}'] += 1
    STATS[f'kind:{kind}'] += 1
    try:
        model.init_weights()
    except (CheckpointError, KeyError, FileNotFoundError) as err:
        STATS[type(err).__name__] += 1
        assert str(path) in str(err), (owner, spelling, kind, damage, err)
        if kind.startswith('hostile') and damage == 'none':
            assert isinstance(err, UnsafeCheckpointError), err
        if kind == 'good' and damage == 'none':
            raise AssertionError(f'{owner}/{spelling}: {err}')
    else:
        STATS['loaded'] += 1
        assert not kind.startswith('hostile') or damage != 'none'
        assert kind != 'wrong' or damage != 'none'
        # loaded correctly: exactly what the safe reader reads
        state = read_state_dict(path)
        if owner == 'backbone':
            state = {k[len('backbone.'):]: v for k, v in state.items()
                     if k.startswith('backbone.')}
        into = model if owner.startswith('classifier') else target
        have = into.state_dict()
        common = [k for k in state if k in have]
        assert common, (owner, spelling, kind, damage)
        for key in common:
            torch.testing.assert_close(have[key], state[key], rtol=0, atol=0,
                                       equal_nan=True, check_dtype=False)
    assert not MARKER.exists(), (owner, spelling, kind, damage)


@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None,
          database=None, suppress_health_check=list(HealthCheck),
          print_blob=True)
@given(case=cases())
def fuzz_routes(files, case):
    with tempfile.TemporaryDirectory() as directory:
        _check_case(files, directory, *case)


def test_fuzzed_routes_load_correctly_or_fail_by_name(files):
    STATS.clear()
    fuzz_routes(files)
    assert STATS['total'] >= MAX_EXAMPLES, STATS
    for owner in OWNERS:
        assert STATS[f'owner:{owner}'] > 0, (owner, STATS)
    for spelling in SPELLINGS:
        assert STATS[f'spelling:{spelling}'] > 0, (spelling, STATS)
    assert STATS['loaded'] > 0 and STATS['UnsafeCheckpointError'] > 0, STATS
    assert not MARKER.exists()
    print('pretrained route fuzz:', json.dumps(dict(sorted(STATS.items()))),
          file=sys.stderr)


def test_the_payloads_are_real(files):
    """Unpickled unsafely, the payloads do write the marker: "the marker
    never appears" above is a real check (this runs last)."""
    for path in (files['head'].hostile, files['head'].hostile_legacy):
        assert not MARKER.exists()
        torch.load(path, weights_only=False)
        assert MARKER.exists()
        os.remove(MARKER)

