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
    from mmbackbone.checkpoint.download import cache_path
    url = 'https://example.org/models/r18-cached.pth'
    cached = cache_path(url)
    assert cached.parent == tmp_path / 'hub' / 'checkpoints'
    cached.parent.mkdir(parents=True)
    save_state_dict(source.state_dict(), cached)
    model = init_from(url)
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


def _hub_checkpoint(path, hub_state, **extra):
    """A weights file with a message_hub whose buffer pickles with
    ``hub_state`` (what HistoryBuffer.__setstate__ would receive)."""
    import copyreg

    from mmengine.logging import HistoryBuffer

    class Buffer:
        __class__ = property(lambda self: HistoryBuffer)

        def __reduce_ex__(self, protocol):
            return (copyreg.__newobj__, (HistoryBuffer, ), hub_state)

    torch.save({'state_dict': {'conv1.weight': torch.ones(2)},
                'message_hub': {'log_scalars': {'loss': Buffer()}},
                **extra}, path)
    return path


@pytest.mark.parametrize('refused', [False, True])
@pytest.mark.parametrize('training_globals', [False, True])
def test_history_buffer_state_changes_no_class_state(tmp_path, refused,
                                                     training_globals):
    """A weights file's HistoryBuffer is read as an inert stand-in: the
    class-level statistics table (and every other class attribute) stays
    as it was, whether the file loads or is refused, even while the real
    class is allow-listed process-wide for resuming."""
    from mmengine.logging import HistoryBuffer

    from mmbackbone.checkpoint import InertValue
    from mmbackbone.checkpoint.io import _only_weights_globals, allowed_globals

    class Exploit:
        def __reduce__(self):
            return (os.system, (f'touch {tmp_path / "pwned"}', ))

    HistoryBuffer()
    before = (dict(HistoryBuffer._statistics_methods), dict(
        (k, v) for k, v in vars(HistoryBuffer).items()
        if k != '_statistics_methods'))
    hostile = {'statistics_methods': {'mean': 'hijacked', 'extra': 'x'},
               'max_length': -1}
    path = _hub_checkpoint(tmp_path / 'hub.pth', hostile,
                           **({'payload': Exploit()} if refused else {}))
    saved = torch.serialization.get_safe_globals()
    try:
        if training_globals:
            torch.serialization.add_safe_globals(allowed_globals())
        if refused:
            with pytest.raises(UnsafeCheckpointError, match=r'hub\.pth'):
                read_state_dict(path)
        else:
            assert list(read_state_dict(path)) == ['conv1.weight']
            with _only_weights_globals(), open(path, 'rb') as f:
                buffer = torch.load(f, weights_only=True)[
                    'message_hub']['log_scalars']['loss']
            assert isinstance(buffer, InertValue)
            assert buffer.state == hostile  # kept, not applied
        after_globals = torch.serialization.get_safe_globals()
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(saved)
    assert HistoryBuffer._statistics_methods == before[0]
    assert {k: v for k, v in vars(HistoryBuffer).items()
            if k != '_statistics_methods'} == before[1]
    # the process-wide list is back as it was
    assert set(map(str, after_globals)) == set(map(str, saved + (
        allowed_globals() if training_globals else [])))
    assert not (tmp_path / 'pwned').exists()


def test_published_meta_loads_as_inert_values(tmp_path, source):
    """numpy scalars / arrays / dtypes in ``meta`` and a real mmengine
    message hub do not stop the tensors from loading."""
    import numpy as np
    from mmengine.logging import MessageHub

    from mmbackbone.checkpoint import weights_globals
    hub = MessageHub.get_instance('test_published_meta')
    hub.update_scalar('train/loss', 1.5)
    hub.update_scalar('train/lr', np.float64(0.1))
    path = tmp_path / 'published.pth'
    torch.save({'state_dict': source.state_dict(),
                'meta': {'epoch': np.int64(3), 'seed': np.int32(7),
                         'hist': np.arange(3.0), 'dtype': np.dtype('f2')},
                'message_hub': hub.state_dict()}, path)
    assert_same_weights(init_from(path), source)
    names = {name for _, name in weights_globals()}
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in names
    assert all(not name.startswith('torch') for name in names)


@pytest.mark.parametrize('kind,match', [
    ('sparse', 'sparse'), ('quantized', 'quantized'),
    ('complex', 'complex'), ('meta', 'meta-device'),
    ('stride0', 'stride-0'), ('overlap', 'overlap')])
@pytest.mark.parametrize('legacy', [False, True])
def test_unusable_tensors_are_named(tmp_path, kind, match, legacy):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        tensor = {
            'sparse': lambda: torch.eye(3).to_sparse(),
            'quantized': lambda: torch.quantize_per_tensor(
                torch.rand(4), 0.1, 0, torch.qint8),
            'complex': lambda: torch.zeros(2, dtype=torch.cfloat),
            'meta': lambda: torch.empty(2**30, device='meta'),
            'stride0': lambda: torch.zeros(1).expand(2**28),
            'overlap': lambda: torch.zeros(64).as_strided((32, 32), (1, 1)),
        }[kind]()
    path = tmp_path / f'{kind}.safetensors'  # the suffix misleads on purpose
    torch.save({'layer.w': tensor}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError,
                       match=rf"{kind}\.safetensors: 'layer\.w'.*{match}"
                             r'.*(Re-save|re-save)'):
        read_state_dict(path)


def test_zip_that_torch_save_never_writes(tmp_path):
    import zipfile
    path = tmp_path / 'deflated.pth'
    torch.save({'w': torch.zeros(1024)}, path)
    source = zipfile.ZipFile(path)
    entries = {n: source.read(n) for n in source.namelist()}
    source.close()
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    with pytest.raises(CheckpointError,
                       match=r"deflated\.pth: zip entry '.*' is compressed"):
        read_state_dict(path)


def test_safetensors_limits_are_named(tmp_path, monkeypatch):
    import json
    import struct

    from mmbackbone.checkpoint import limits
    monkeypatch.setattr(limits, 'MAX_TENSORS', 10)
    header = json.dumps({f't{i}': {'dtype': 'F32', 'shape': [0],
                                   'data_offsets': [0, 0]}
                         for i in range(11)}).encode()
    path = tmp_path / 'many.safetensors'
    path.write_bytes(struct.pack('<Q', len(header)) + header)
    with pytest.raises(CheckpointError, match=r'many\.safetensors declares '
                                              r'11 tensors.*MAX_TENSORS=10'):
        read_state_dict(path)
    deep = b'{"a":' + b'[' * 5000 + b']' * 5000 + b'}'
    path = tmp_path / 'deep.pth'  # safetensors bytes, .pth name
    path.write_bytes(struct.pack('<Q', len(deep)) + deep)
    with pytest.raises(CheckpointError, match=r'deep\.pth.*nests 5001 '
                                              r'levels.*MAX_HEADER_NESTING'):
        read_state_dict(path)


# ------------------------------------------- hints when no key matches
def _classifier(**kwargs):
    from mmbackbone.models import ImageClassifier
    return ImageClassifier(backbone=dict(type='ResNet', depth=18),
                           neck=dict(type='GlobalAveragePooling'),
                           head=dict(type='LinearClsHead', num_classes=10,
                                     in_channels=512), **kwargs)


def test_backbone_file_into_a_classifier_points_to_the_backbone(
        tmp_path, source):
    """A backbone's file given to a whole classifier: prefix='backbone'
    would not help; loading into the backbone does."""
    path = save_state_dict(source.state_dict(), tmp_path / 'r18.pth')
    model = _classifier(init_cfg=dict(type='Pretrained',
                                      checkpoint=str(path)))
    with pytest.raises(CheckpointError) as info:
        model.init_weights()
    message = str(info.value)
    assert f'checkpoint {path}: none of its' in message
    assert "prefix='backbone'" not in message
    assert ('It holds weights of ImageClassifier.backbone (ResNet), not of '
            'a whole ImageClassifier') in message
    assert ("init_cfg=dict(type='Normal', layer=[], override=dict("
            "type='Pretrained', name='backbone', checkpoint=...))") in message
    # what the hint says works
    fine = _classifier(init_cfg=dict(
        type='Normal', layer=[], override=dict(
            type='Pretrained', name='backbone', checkpoint=str(path))))
    fine.init_weights()
    assert_same_weights(fine.backbone, source)


def test_classifier_file_into_a_backbone_points_to_the_prefix(tmp_path,
                                                               source):
    classifier = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    classifier['head.fc.weight'] = torch.zeros(10, 512)
    path = save_state_dict(classifier, tmp_path / 'cls.pth')
    with pytest.raises(CheckpointError,
                       match=rf"checkpoint {path}: none of its .* Its keys "
                             r"under 'backbone' fit ResNet: pass "
                             r"prefix='backbone'"):
        init_from(path)


def test_foreign_file_asks_for_this_architecture(tmp_path):
    path = save_state_dict({'encoder.layer.weight': torch.zeros(3)},
                           tmp_path / 'bert.pth')
    with pytest.raises(CheckpointError) as info:
        init_from(path)
    message = str(info.value)
    assert message.endswith('Pass a checkpoint of this architecture, or '
                            'prefix=... naming the part of the file that '
                            'holds ResNet'), message
    assert "prefix='backbone'" not in message and 'override' not in message
