"""The weights index: every entry fits its arch; pretrained=True resolves."""
import hashlib
import json

import pytest
import torch
from helpers import save_state_dict

from mmbackbone import build_backbone
from mmbackbone.zoo import (WeightsEntry, default_weights, get_weights,
                            list_weights, load_index, resolve_weights)
from mmbackbone.zoo import __file__ as zoo_file

ENTRIES = list_weights()


@pytest.mark.parametrize('entry', ENTRIES, ids=[e.name for e in ENTRIES])
def test_entry_matches_built_model(entry):
    """The declared classifier parameter count equals our backbone plus a
    linear head (torchvision's schema-meta idea)."""
    with torch.device('meta'):
        model = build_backbone(entry.build_config)
    backbone = sum(p.numel() for p in model.parameters())
    head = model.out_features * entry.num_classes + entry.num_classes
    assert backbone + head == entry.params
    assert entry.url.startswith('https://')
    assert entry.sha256 is None or len(entry.sha256) >= 8
    if entry.sha256 and entry.source in ('torchvision', 'mmpretrain'):
        assert entry.sha256 in entry.filename  # the published hash prefix


def test_every_indexed_type_has_one_default_per_arch():
    pairs = {(e.type, e.arch) for e in ENTRIES}
    for type_name, arch in pairs:
        defaults = [e for e in ENTRIES if (e.type, e.arch) == (type_name, arch)
                    and e.default]
        assert len(defaults) <= 1, (type_name, arch)
        assert default_weights(type_name, arch).type == type_name


def test_required_coverage():
    names = set(load_index())
    for depth in (18, 34, 50, 101, 152):
        assert f'resnet{depth}.tv_in1k' in names
        assert f'resnet{depth}.mmpretrain_in1k' in names
    sources = {(e.type, e.source) for e in ENTRIES}
    for needed in [('RegNet', 'mmpretrain'), ('CSPDarkNet', 'mmpretrain'),
                   ('CSPResNet', 'mmpretrain'), ('CSPResNeXt', 'mmpretrain'),
                   ('VisionTransformer', 'timm'), ('RegNet', 'timm'),
                   ('DLA', 'timm')]:
        assert needed in sources, needed


def sha256(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A locally made ResNet-18 checkpoint served through a mirror dir."""
    torch.manual_seed(0)
    source = build_backbone(dict(type='ResNet', depth=18))
    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    entry = get_weights('resnet18.tv_in1k')
    path = save_state_dict(source.state_dict(), mirror / entry.filename)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.setenv('MMBACKBONE_WEIGHTS', str(mirror))
    fake = WeightsEntry(**{**entry.__dict__, 'sha256': sha256(path)})
    monkeypatch.setitem(load_index(), entry.name, fake)
    return source, path


def test_pretrained_true_loads_from_mirror_with_hash(served):
    source, _ = served
    model = build_backbone(dict(type='ResNet', depth=18, pretrained=True))
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight)
    named = build_backbone(dict(type='ResNet', depth=18,
                                pretrained='resnet18.tv_in1k'))
    torch.testing.assert_close(named.layer4[1].bn2.bias,
                               source.layer4[1].bn2.bias)


def test_scheme_resolves_through_index(served):
    source, path = served
    model = build_backbone(dict(
        type='ResNet', depth=18, init_cfg=dict(
            type='Pretrained', checkpoint='mmbackbone://resnet18.tv_in1k')))
    model.init_weights()
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight)


def test_wrong_hash_names_the_file(served, monkeypatch):
    _, path = served
    entry = get_weights('resnet18.tv_in1k')
    monkeypatch.setitem(load_index(), entry.name,
                        WeightsEntry(**{**entry.__dict__, 'sha256': '0' * 64}))
    with pytest.raises(ValueError, match=f'{path}.*SHA-256'):
        resolve_weights('resnet18.tv_in1k')


def test_file_url_mirror_and_cache(tmp_path, monkeypatch, served):
    source, path = served
    monkeypatch.setenv('MMBACKBONE_WEIGHTS', f'file://{path.rsplit("/", 1)[0]}')
    first = resolve_weights('resnet18.tv_in1k')
    assert str(first).startswith(str(tmp_path / 'torch'))
    monkeypatch.delenv('MMBACKBONE_WEIGHTS')
    assert resolve_weights('resnet18.tv_in1k') == first  # cached, no network


def test_cached_file_is_used_offline(tmp_path, monkeypatch):
    """resnet50: the file pre-placed in the torch hub cache loads offline."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    monkeypatch.delenv('MMBACKBONE_WEIGHTS', raising=False)
    monkeypatch.setattr('urllib.request.urlopen', _offline)
    import torchvision
    peer = torchvision.models.resnet50()
    entry = get_weights('resnet50.tv_in1k')
    cache = tmp_path / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    path = save_state_dict(peer.state_dict(), cache / entry.filename)
    monkeypatch.setitem(load_index(), entry.name,
                        WeightsEntry(**{**entry.__dict__,
                                        'sha256': sha256(path)}))
    model = build_backbone(dict(type='ResNet', depth=50, pretrained=True))
    torch.testing.assert_close(model.layer3[2].conv2.weight,
                               peer.layer3[2].conv2.weight)


def _offline(*args, **kwargs):
    import urllib.error
    raise urllib.error.URLError('network is unreachable')


def test_offline_without_cache_names_url_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    monkeypatch.delenv('MMBACKBONE_WEIGHTS', raising=False)
    monkeypatch.setattr('urllib.request.urlopen', _offline)
    with pytest.raises(FileNotFoundError,
                       match=r"'resnet50\.tv_in1k'.*download\.pytorch\.org/"
                             r"models/resnet50-0676ba61\.pth.*hub/checkpoints"
                             r"/resnet50-0676ba61\.pth"):
        build_backbone(dict(type='ResNet', depth=50, pretrained=True))


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(depth=18, pretrained='resnet50.tv_in1k'), ValueError,
     'fits ResNet resnet50, not ResNet resnet18'),
    (dict(depth=18, pretrained='resnet18.nope'), KeyError, 'Did you mean'),
    (dict(depth=18, pretrained=3), TypeError, 'pretrained=3'),
    (dict(depth=18, pretrained=True, init_cfg=dict(
        type='Pretrained', checkpoint='x.pth')), ValueError, 'give one'),
])
def test_bad_pretrained(kwargs, error, match):
    with pytest.raises(error, match=match):
        build_backbone(dict(type='ResNet', **kwargs))


def test_index_tables_are_valid_json_with_known_fields():
    from pathlib import Path
    for table in Path(zoo_file).parent.glob('*.json'):
        data = json.loads(table.read_text())
        assert data['weights'], table


@pytest.mark.parametrize('entry', [e for e in ENTRIES if e.default],
                         ids=[e.name for e in ENTRIES if e.default])
def test_pretrained_true_picks_the_default(entry, monkeypatch):
    """Every type with indexed weights accepts pretrained=True and asks the
    index for its default (the load itself is intercepted)."""
    from mmbackbone.models import BaseBackbone
    asked = []
    monkeypatch.setattr(BaseBackbone, 'init_weights',
                        lambda self: asked.append(self.init_cfg))
    with torch.device('meta'):
        build_backbone({**entry.build_config, 'pretrained': True})
    assert asked == [dict(type='Pretrained',
                          checkpoint=f'mmbackbone://{entry.name}',
                          prefix=entry.prefix)]


def test_weights_command_lists_the_index(capsys):
    from mmbackbone.cli import main
    assert main(['weights', 'resnet50.*']) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ['name', 'type', 'arch', 'source']
    names = [line.split()[0] for line in out[1:]]
    assert names == [e.name for e in list_weights('resnet50.*')]
    assert any('76.13' in line and '25.6M' in line for line in out)
    assert main(['weights', 'nothing*']) == 1
