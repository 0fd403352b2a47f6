"""The weights index: every entry fits its arch; pretrained=True resolves."""
import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from helpers import save_state_dict

from mmbackbone import build_backbone
from mmbackbone.checkpoint import CheckpointError
from mmbackbone.checkpoint.download import WeightsHashError
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
    assert entry.sha256 is None or re.fullmatch('[0-9a-f]{64}', entry.sha256)
    if entry.sha256_prefix:  # the digest prefix of the published name
        assert f'-{entry.sha256_prefix}.' in entry.filename
    elif entry.source in ('torchvision', 'mmpretrain'):
        assert entry.sha256  # these publishers always name a digest


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
    fake = WeightsEntry(**{**entry.__dict__, 'sha256': sha256(path),
                           'sha256_prefix': None})
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
                        WeightsEntry(**{**entry.__dict__, 'sha256': '0' * 64,
                                        'sha256_prefix': None}))
    with pytest.raises(WeightsHashError, match=f'{path}.*SHA-256'):
        resolve_weights('resnet18.tv_in1k')


def test_file_url_mirror_is_read_in_place(tmp_path, monkeypatch, served):
    """A file:// mirror is not copied: the file checked is the file loaded,
    and a changed mirror file is refused (its digest is in the index)."""
    source, path = served
    monkeypatch.setenv('MMBACKBONE_WEIGHTS',
                       f'file://{path.rsplit("/", 1)[0]}')
    assert str(resolve_weights('resnet18.tv_in1k')) == path
    assert not (tmp_path / 'torch').exists()  # nothing copied
    with open(path, 'ab') as f:
        f.write(b'appended')
    with pytest.raises(WeightsHashError, match=f'{path}.*SHA-256'):
        resolve_weights('resnet18.tv_in1k')


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
    path = save_state_dict(peer.state_dict(), entry.cache_file)
    assert Path(path).parent == cache
    monkeypatch.setitem(load_index(), entry.name,
                        WeightsEntry(**{**entry.__dict__,
                                        'sha256_prefix': None,
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
                             r"/resnet50\.tv_in1k-[0-9a-f]{32}\.pth"):
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


# ------------------------------------------------------ the download cache
# Every download below is served by a local http.server on 127.0.0.1 that
# the test starts and stops; nothing reaches the network.
import http.server  # noqa: E402
import io  # noqa: E402
import threading  # noqa: E402
from collections import Counter  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mmbackbone.checkpoint import resolve_checkpoint  # noqa: E402
from mmbackbone.checkpoint.download import (  # noqa: E402
    DownloadError, cache_dir, cache_key, cached_download, forget,
    load_records, records_path)
from mmbackbone.zoo import WeightsIndexError, parse_table  # noqa: E402


class _Server:
    """Serves ``routes[path_with_query]``: bytes, or (bytes, announced
    Content-Length) to cut a download short, or an int HTTP status."""

    def __init__(self):
        self.routes, self.hits = {}, Counter()
        routes, hits = self.routes, self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits[self.path] += 1
                reply = routes.get(self.path, 404)
                if isinstance(reply, int):
                    self.send_error(reply)
                    return
                body, length = reply if isinstance(reply, tuple) else (
                    reply, len(reply))
                self.send_response(200)
                self.send_header('Content-Length', str(length))
                self.end_headers()
                self.wfile.write(body)  # then HTTP/1.0 closes the socket

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path):
        return f'http://127.0.0.1:{self.httpd.server_port}{path}'

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    monkeypatch.delenv('MMBACKBONE_WEIGHTS', raising=False)
    srv = _Server()
    yield srv
    srv.stop()


def _cache_files():
    root = cache_dir()
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_same_basename_urls_do_not_collide(server):
    a, b = server.url('/x/pytorch_model.bin?id=A'), server.url(
        '/x/pytorch_model.bin?id=B')
    server.routes.update({'/x/pytorch_model.bin?id=A': b'weights A',
                          '/x/pytorch_model.bin?id=B': b'weights B'})
    path_a = resolve_checkpoint(a)
    path_b = resolve_checkpoint(b)
    assert path_a != path_b and path_a.parent == path_b.parent == cache_dir()
    assert path_a.read_bytes() == b'weights A'
    assert path_b.read_bytes() == b'weights B'
    assert resolve_checkpoint(a).read_bytes() == b'weights A'
    assert server.hits['/x/pytorch_model.bin?id=A'] == 1  # cached after


def test_file_url_reads_the_changed_source(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    src = tmp_path / 'w.pth'
    src.write_bytes(b'old')
    assert resolve_checkpoint(f'file://{src}').read_bytes() == b'old'
    src.write_bytes(b'new content')
    path = resolve_checkpoint(f'file://{src}')
    assert path == src and path.read_bytes() == b'new content'
    assert not (tmp_path / 'torch').exists()  # never copied into a cache
    with pytest.raises(ValueError, match='file:///absolute'):
        resolve_checkpoint(f'file://otherhost{src}')


def test_short_read_keeps_nothing_and_retry_succeeds(server):
    url = server.url('/r18.pth')
    server.routes['/r18.pth'] = (b'0123456789', 110)  # closes after 10
    with pytest.raises(DownloadError,
                       match=r'127\.0\.0\.1:\d+/r18\.pth was cut short: '
                             r'received 10 of the 110 bytes.*run again'):
        resolve_checkpoint(url)
    assert _cache_files() == []  # no file, no .partial, no record
    server.routes['/r18.pth'] = b'0123456789' * 11
    assert resolve_checkpoint(url).read_bytes() == b'0123456789' * 11
    assert server.hits['/r18.pth'] == 2


def test_http_error_keeps_nothing_and_names_url(server):
    url = server.url('/missing.pth')
    with pytest.raises(FileNotFoundError,
                       match=r'127\.0\.0\.1:\d+/missing\.pth.*404'
                             r'.*local path'):
        resolve_checkpoint(url)
    assert _cache_files() == []


def test_first_use_records_and_refuses_a_changed_file(server):
    url = server.url('/w.pth')
    server.routes['/w.pth'] = b'published'
    path = resolve_checkpoint(url)
    record = load_records()[path.name]
    assert record == dict(sha256=hashlib.sha256(b'published').hexdigest(),
                          url=url, size=9)
    path.write_bytes(b'tampered')
    tampered = hashlib.sha256(b'tampered').hexdigest()
    with pytest.raises(WeightsHashError, match=(
            rf'{path} has SHA-256 {tampered}, but the first download.*'
            rf'{record["sha256"]}.*delete {path} and that record')):
        resolve_checkpoint(url)
    # the publisher's file changes: the new download is refused, not kept
    path.unlink()
    server.routes['/w.pth'] = b'replaced'
    with pytest.raises(WeightsHashError, match='first download'):
        resolve_checkpoint(url)
    assert not path.exists() and not [
        n for n in _cache_files() if n.endswith('.partial')]
    assert forget(path.name)  # the documented reset
    assert resolve_checkpoint(url).read_bytes() == b'replaced'


def test_corrupt_record_store_is_a_named_error(server):
    server.routes['/w.pth'] = b'x'
    resolve_checkpoint(server.url('/w.pth'))
    records_path().write_text('{not json')
    with pytest.raises(CheckpointError, match=f'{records_path()}.*Delete it'):
        resolve_checkpoint(server.url('/w.pth'))


@pytest.fixture
def entry(server, monkeypatch):
    """An unhashed index entry (trusted on first use) served locally."""
    base = get_weights('resnet18.tv_in1k')
    fake = WeightsEntry(**{**base.__dict__, 'url': server.url('/r18-x.pth'),
                           'sha256': None, 'sha256_prefix': None})
    monkeypatch.setitem(load_index(), fake.name, fake)
    server.routes['/r18-x.pth'] = b'the published weights'
    return fake


def test_entry_records_on_first_download_and_checks_mirrors(
        entry, server, tmp_path, monkeypatch):
    path = resolve_weights(entry.name)
    assert path == entry.cache_file and path.name.startswith(entry.name)
    trusted = hashlib.sha256(b'the published weights').hexdigest()
    assert load_records()[path.name]['sha256'] == trusted
    # a mirror folder holding another file under the entry's name
    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    (mirror / entry.filename).write_bytes(b'something else')
    monkeypatch.setenv('MMBACKBONE_WEIGHTS', str(mirror))
    with pytest.raises(WeightsHashError, match=(
            rf'{mirror / entry.filename} has SHA-256 '
            rf'{sha256(mirror / entry.filename)}.*{trusted}')):
        resolve_weights(entry.name)
    (mirror / entry.filename).write_bytes(b'the published weights')
    assert resolve_weights(entry.name) == mirror / entry.filename
    # an http mirror serving another file: refused, the cache untouched
    path.unlink()
    server.routes['/m/r18-x.pth'] = b'mirror tampered'
    monkeypatch.setenv('MMBACKBONE_WEIGHTS', server.url('/m'))
    with pytest.raises(WeightsHashError, match=trusted):
        resolve_weights(entry.name)
    assert not path.exists()


def test_prefix_mismatch_is_refused(entry, monkeypatch):
    good = hashlib.sha256(b'the published weights').hexdigest()
    bad = 'ff' if not good.startswith('ff') else '00'
    monkeypatch.setitem(load_index(), entry.name, WeightsEntry(**{
        **entry.__dict__, 'sha256_prefix': bad + good[2:8]}))
    with pytest.raises(WeightsHashError, match=f'does not start with {bad}'):
        resolve_weights(entry.name)
    assert _cache_files() == []
    monkeypatch.setitem(load_index(), entry.name, WeightsEntry(**{
        **entry.__dict__, 'sha256_prefix': good[:8]}))
    assert resolve_weights(entry.name).read_bytes() == b'the published weights'


def test_full_hash_is_checked_before_keeping(entry, monkeypatch):
    monkeypatch.setitem(load_index(), entry.name, WeightsEntry(**{
        **entry.__dict__, 'sha256': 'a' * 64}))
    with pytest.raises(WeightsHashError, match='a' * 64):
        resolve_weights(entry.name)
    assert _cache_files() == []


def test_hostile_url_path_stays_in_the_cache(server, tmp_path):
    hostile = '/..%2F..%2F..%2Fescape.pth'
    server.routes[hostile] = b'payload'
    path = resolve_checkpoint(server.url(hostile))
    assert path.parent == cache_dir() and path.read_bytes() == b'payload'
    assert {p for p in tmp_path.rglob('*') if p.is_file()} == {
        path, records_path()}


class _TTY(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize('tty,progress,shown', [
    (False, None, False), (True, None, True), (True, False, False)])
def test_progress_bar_only_on_a_terminal(server, monkeypatch, tty, progress,
                                         shown):
    server.routes['/big.pth'] = b'x' * 300_000
    err = _TTY() if tty else io.StringIO()
    monkeypatch.setattr('sys.stderr', err)
    cached_download(server.url('/big.pth'), progress=progress)
    assert ('big.pth' in err.getvalue()) == shown


# ----------------------------------------------------- index validation
SAFE_ENTRY = dict(name='r.ok', type='ResNet', arch='resnet18',
                  url='https://h.example/m/r-0123abcd.pth', source='timm',
                  params=1)


@pytest.mark.parametrize('change,match', [
    (dict(name='../evil'), 'name must be'),
    (dict(name='a/b'), 'name must be'),
    (dict(name='a\\b'), 'name must be'),
    (dict(name='a\x00b'), 'name must be'),
    (dict(name='..'), 'name must be'),
    (dict(name='.hidden'), 'name must be'),
    (dict(name='a..b'), 'name must be'),
    (dict(name='n' * 300), 'name must be'),
    (dict(name=3), 'name must be'),
    (dict(url='file:///etc/passwd'), 'http:// or https://'),
    (dict(url='ftp://h/x.pth'), 'http:// or https://'),
    (dict(url='https:///x.pth'), 'with a host'),
    (dict(url='https://h/x.pth\n'), 'http:// or https://'),
    (dict(url='https://h/'), 'plain file name'),
    (dict(url='https://h/a/..'), 'plain file name'),
    (dict(url='https://h/a%2F..%2F..%2Fb.pth'), 'plain file name'),
    (dict(url='https://h/a%00b.pth'), 'plain file name'),
    (dict(sha256='0123abcd'), 'sha256.*64 lowercase hex'),
    (dict(sha256='A' * 64), 'sha256.*64 lowercase hex'),
    (dict(sha256='g' * 64), 'sha256.*64 lowercase hex'),
    (dict(sha256_prefix='xyz123'), 'sha256_prefix.*6 to 64'),
    (dict(sha256_prefix='abc'), 'sha256_prefix.*6 to 64'),
    (dict(sha256='0' * 64, sha256_prefix='0123abcd'), 'does not start'),
    (dict(source='pickle'), 'choose from'),
    (dict(params='1'), 'params'),
    (dict(default='yes'), 'default'),
    (dict(config=[]), 'config'),
])
def test_bad_index_entries_are_named_errors(change, match):
    with pytest.raises(WeightsIndexError, match=match):
        WeightsEntry(**{**SAFE_ENTRY, **change})


@pytest.mark.parametrize('data,match', [
    ([], 'a "weights" list'),
    ({'weights': {}}, 'a "weights" list'),
    ({'weights': ['x']}, 'must be an object'),
    ({'weights': [{**SAFE_ENTRY, 'md5': 'x'}]}, r"unknown fields \['md5'\]"),
    ({'weights': [{'name': 'r.ok'}]}, "'r.ok'.*missing"),
    ({'weights': [{**SAFE_ENTRY, 'name': '../x'}]}, r'bad\.json.*name must'),
])
def test_bad_index_tables_are_named_errors(data, match):
    with pytest.raises(WeightsIndexError, match=match):
        parse_table(data, Path('bad.json'))


def test_valid_entry_is_accepted_and_cached_inside(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    entry = WeightsEntry(**SAFE_ENTRY, sha256_prefix='0123abcd')
    assert entry.cache_file.parent == cache_dir()
    assert re.fullmatch(r'r\.ok-[0-9a-f]{32}\.pth', entry.cache_file.name)


_TEXT = st.lists(st.characters() | st.sampled_from(
    ['/', '\\', '\x00', '..', '.', '%2F', '?', '#', ':', '.pth', 'x' * 90]),
    max_size=60).map(''.join)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(url_a=_TEXT, url_b=_TEXT, label=st.none() | _TEXT)
def test_cache_keys_are_distinct_plain_names(url_a, url_b, label):
    """Any URL and label (from an index entry or a URL): one plain file name
    inside the cache folder; distinct URLs never share a key."""
    root = Path('/cache/root')
    for url in (url_a, url_b):
        key = cache_key(url, label)
        assert (root / key).parent == root and Path(key).name == key
        assert not set(key) & {'/', '\\', '\x00', ':'}
        assert not key.startswith(('.', '-')) and len(key) <= 130
    if url_a != url_b:
        assert cache_key(url_a, label) != cache_key(url_b, label)
