"""Pretrained loading: files, formats, prefixes, schemes, safety, reports."""
import logging
import os
import pickle

import pytest
import torch
from helpers import captured_log, save_state_dict
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import DefaultScope

from mmbackbone import build_backbone
from mmbackbone.checkpoint import (CheckpointError, UnsafeCheckpointError,
                                   load_pretrained, read_state_dict,
                                   resolve_checkpoint)
from mmbackbone.models import ResNet


def r18(**kwargs):
    return ResNet(depth=18, out_indices=(0, 1, 2, 3), **kwargs)


@pytest.fixture(scope='module')
def source():
    torch.manual_seed(0)
    return r18().eval()


def assert_same_weights(a, b):
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, msg=key)


def init_from(checkpoint, **kwargs):
    model = r18(init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint),
                              **kwargs))
    model.init_weights()
    return model


@pytest.mark.parametrize('suffix', ['pth', 'pt', 'bin', 'safetensors'])
def test_local_formats(tmp_path, source, suffix):
    path = save_state_dict(source.state_dict(), tmp_path / f'w.{suffix}')
    assert_same_weights(init_from(path), source)


@pytest.mark.parametrize('prefix', ['backbone', 'backbone.'])
def test_prefix_with_or_without_dot(tmp_path, source, prefix):
    classifier = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    classifier['head.fc.weight'] = torch.zeros(10, 512)
    path = save_state_dict({'state_dict': classifier, 'meta': {'epoch': 3}},
                           tmp_path / 'cls.pth')
    assert_same_weights(init_from(path, prefix=prefix), source)


def test_prefix_matching_nothing_lists_prefixes(tmp_path, source):
    classifier = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    classifier['head.fc.weight'] = torch.zeros(10, 512)
    path = save_state_dict(classifier, tmp_path / 'cls.pth')
    with pytest.raises(KeyError, match=r"prefix='encoder'.*\['backbone', "
                                       r"'head'\]"):
        init_from(path, prefix='encoder')


def test_nothing_matches_is_an_error(tmp_path):
    path = save_state_dict({'foo.weight': torch.zeros(3)}, tmp_path / 'x.pth')
    with pytest.raises(CheckpointError, match=r'x\.pth.*none of its 1 keys'):
        init_from(path)


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    other = ResNet(depth=18, base_channels=32)
    path = save_state_dict(other.state_dict(), tmp_path / 'narrow.pth')
    with pytest.raises(CheckpointError,
                       match=r'narrow\.pth.*layer1\.0\.conv1\.weight.*'
                             r'\(32, 64, 3, 3\).*\(64, 64, 3, 3\)'):
        init_from(path)


@pytest.mark.parametrize('channels', [1, 4])
def test_first_conv_adapts_to_input_channels(tmp_path, source, channels):
    path = save_state_dict(source.state_dict(), tmp_path / 'rgb.pth')
    model = ResNet(depth=18, in_channels=channels,
                   init_cfg=dict(type='Pretrained', checkpoint=path))
    with captured_log() as records:
        model.init_weights()
    weight = source.conv1.weight
    if channels == 1:
        expected = weight.sum(1, keepdim=True)
    else:
        expected = torch.cat([weight, weight[:, :1]], 1) * 3 / 4
    torch.testing.assert_close(model.conv1.weight, expected)
    assert 'input channels' in records[-1].getMessage()


def test_partial_load_logs_one_summary(tmp_path, source):
    state = dict(source.state_dict())
    state.pop('layer4.1.conv2.weight')
    state['extra.weight'] = torch.zeros(1)
    path = save_state_dict(state, tmp_path / 'partial.pth')
    with captured_log() as records:
        init_from(path)
    summaries = [r for r in records if 'Loaded' in r.getMessage()]
    assert len(records) == 1 and len(summaries) == 1
    message = summaries[0].getMessage()
    assert summaries[0].levelno == logging.WARNING
    assert f'Loaded {len(state) - 1} tensors' in message
    assert 'missing: layer4.1.conv2.weight' in message
    assert 'unexpected: extra.weight' in message


def test_full_load_reports_counts(tmp_path, source):
    path = save_state_dict(source.state_dict(), tmp_path / 'full.pth')
    report = load_pretrained(r18(), path)
    assert report.num_loaded == len(source.state_dict())
    assert not report.missing and not report.unexpected


def test_unsafe_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / 'pwned'

    class Exploit:
        def __reduce__(self):
            return (os.system, (f'touch {marker}', ))

    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'conv1.weight': torch.zeros(1)},
                'payload': Exploit()}, path)
    with pytest.raises(UnsafeCheckpointError,
                       match=r'evil\.pth.*unsafe.*system'):
        init_from(path)
    assert not marker.exists()


def test_legacy_pickle_exploit_is_refused(tmp_path):
    marker = tmp_path / 'pwned'

    class Exploit:
        def __reduce__(self):
            return (os.system, (f'touch {marker}', ))

    path = tmp_path / 'evil.bin'
    with open(path, 'wb') as f:
        pickle.dump({'a': Exploit()}, f, protocol=2)
    with pytest.raises(CheckpointError, match=r'evil\.bin'):
        read_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize('damage', ['truncate', 'empty', 'garbage', 'json'])
def test_damaged_files_name_the_file(tmp_path, source, damage):
    path = tmp_path / f'{damage}.pth'
    save_state_dict(source.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes({'truncate': data[:len(data) // 2], 'empty': b'',
                      'garbage': b'not a checkpoint at all',
                      'json': b'{"a": 1}'}[damage])
    with pytest.raises(CheckpointError, match=f'{damage}.pth'):
        read_state_dict(path)


def test_renamed_formats_are_detected_by_content(tmp_path, source):
    pth_as_st = save_state_dict(source.state_dict(), tmp_path / 'a.pth')
    os.rename(pth_as_st, tmp_path / 'a.safetensors')
    st_as_pth = save_state_dict(source.state_dict(),
                                tmp_path / 'b.safetensors')
    os.rename(st_as_pth, tmp_path / 'b.pth')
    for name in ('a.safetensors', 'b.pth'):
        assert_same_weights(init_from(tmp_path / name), source)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        init_from(tmp_path / 'nope.pth')


def test_unknown_scheme():
    with pytest.raises(ValueError, match=r"s3://b/x\.pth.*torchvision://"):
        resolve_checkpoint('s3://b/x.pth')


def test_offline_url_names_url_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    url = 'http://127.0.0.1:9/weights/r18.pth'
    with pytest.raises(FileNotFoundError,
                       match=r'127\.0\.0\.1:9/weights/r18\.pth.*local path'):
        init_from(url)
    assert not list(tmp_path.rglob('*.partial'))


def test_mmengine_scheme_resolves_to_url(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    monkeypatch.setattr('urllib.request.urlopen', _offline)
    with pytest.raises(FileNotFoundError,
                       match=r'download\.pytorch\.org.*resnet50'):
        resolve_checkpoint('torchvision://resnet50')
    with pytest.raises(KeyError, match='no model'):
        resolve_checkpoint('torchvision://resnet5000')


def _offline(*args, **kwargs):
    import urllib.error
    raise urllib.error.URLError('network is unreachable')


def test_cached_url_is_used_without_network(tmp_path, monkeypatch, source):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    monkeypatch.setattr('urllib.request.urlopen', _offline)
    cache = tmp_path / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    save_state_dict(source.state_dict(), cache / 'r18-cached.pth')
    model = init_from('https://example.org/models/r18-cached.pth')
    assert_same_weights(model, source)


def test_file_url(tmp_path, monkeypatch, source):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'home'))
    path = save_state_dict(source.state_dict(), tmp_path / 'served.pth')
    assert_same_weights(init_from(f'file://{path}'), source)


def test_unknown_init_cfg_key(tmp_path, source):
    path = save_state_dict(source.state_dict(), tmp_path / 'w.pth')
    with pytest.raises(KeyError, match=r"unknown keys \['strict_mode'\]"):
        init_from(path, strict_mode=True)


@pytest.mark.parametrize('scope', ['mmengine', 'mmdet_like'])
def test_same_behaviour_under_another_scope(tmp_path, source, scope):
    path = save_state_dict(
        {f'backbone.{k}': v for k, v in source.state_dict().items()},
        tmp_path / 'cls.pth')
    cfg = dict(type='mmbackbone.ResNet', depth=18, out_indices=(0, 1, 2, 3),
               init_cfg=dict(type='Pretrained', checkpoint=path,
                             prefix='backbone'))
    with DefaultScope.overwrite_default_scope(scope):
        model = ROOT_MODELS.build(cfg)
        model.init_weights()
    assert type(model) is ResNet
    assert_same_weights(model, source)
    with pytest.raises(KeyError, match='prefix'):
        bad = ROOT_MODELS.build({**cfg, 'init_cfg': dict(
            type='Pretrained', checkpoint=path, prefix='head')})
        bad.init_weights()


def test_fp16_checkpoint_warns_and_loads(tmp_path, source):
    half = {k: (v.half() if v.is_floating_point() else v)
            for k, v in source.state_dict().items()}
    path = save_state_dict(half, tmp_path / 'half.safetensors')
    with pytest.warns(UserWarning, match='float16'):
        model = init_from(path)
    assert model.conv1.weight.dtype == torch.float32


def test_build_backbone_tutorial_snippet(tmp_path, source):
    path = save_state_dict({'state_dict': {
        f'backbone.{k}': v for k, v in source.state_dict().items()}},
        tmp_path / 'resnet18_in1k.pth')
    model = build_backbone(dict(
        type='ResNet', depth=18, out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone')))
    model.init_weights()
    outs = model.eval()(torch.rand(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [64, 128, 256, 512]
    assert_same_weights(model, source)
