"""Checkpoint fuzzing: damaged and hostile files lose nothing, run nothing.

Every pristine checkpoint of a small ResNet (zip ``.pth``,
legacy pickle, safetensors, a training checkpoint with a ``backbone.``
prefix, fp16 weights, NaN weights, another architecture's weights,
pickles whose unpickling would run code) and damages it: random
truncation, bit flips, overwritten or inserted bytes, a renamed suffix
(``.pth`` <-> ``.safetensors``), a huge declared safetensors header,
garbage safetensors headers, zip archives with garbage entries, empty
files, text. Hostile families join them: stride-0 and overlapping views,
a deflate zip bomb, zip entries past the file, a legacy pickle declaring
a huge storage, safetensors tensor-count and nesting bombs, a deeply
nested pickle, meta / sparse / quantized / complex / nested tensors,
mmengine ``HistoryBuffer`` states that would rewrite the class-level
statistics table, and a published-style ``meta`` / ``message_hub``.
Each file then goes through the same door as
``init_cfg=dict(type='Pretrained', checkpoint=...)``
(:func:`mmbackbone.checkpoint.load_pretrained`), with a prefix that fits,
none, or one that matches nothing.

Every case must end in one of:

* a load (bit flips in tensor data still unpickle into a valid state dict;
  if the shapes fit, that is a load, logged as usual);
* ``CheckpointError`` / ``UnsafeCheckpointError`` / ``FileNotFoundError``
  whose message names the file, or a ``KeyError`` naming the file and the
  prefix;
* for fp16 and NaN weights: a load with a warning naming the file;

never another exception, never a hang (a watchdog ends the process with a
traceback after ``HANG_SECONDS``), never a change to ``HistoryBuffer``'s
class state, and never code execution: every hostile pickle writes a
marker file when unpickled unsafely (checked to work at the end), and the
marker must never appear. A last test loads each hostile family in a
child process and checks its peak memory.
"""
import copyreg
import faulthandler
import io
import json
import os
import pickle
import random
import re
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import pytest
import torch
from mmengine.logging import HistoryBuffer
from safetensors.torch import save as safetensors_bytes

from mmbackbone import build_backbone
from mmbackbone.checkpoint import (CheckpointError, UnsafeCheckpointError,
                                   load_pretrained)

#: Fuzzed checkpoints per CI run (this file's share of the 500 floor is
#: 350; the deterministic tests below add the hostile families).
MAX_EXAMPLES = 360
#: Peak memory a hostile file under 2 MiB may cost before its error.
MAX_HOSTILE_RSS_MIB = 512
HANG_SECONDS = 60
SMALL = dict(type='ResNet', depth=18, base_channels=8, stem_channels=8,
             out_indices=(0, 1, 2, 3))

MARKER_DIR = Path(tempfile.mkdtemp(prefix='fuzz_ckpt_marker_'))
MARKER = MARKER_DIR / 'payload_ran'
STATS = Counter()


class ExecPayload:
    """Unpickling this (unsafely) writes MARKER: exec of Python code."""

    def __reduce__(self):
        return (exec, (f'open({str(MARKER)!r}, "w").write("ran")', ))


class SystemPayload:
    """Unpickling this (unsafely) runs a shell command that writes MARKER."""

    def __reduce__(self):
        return (os.system, (f'touch {MARKER}', ))


class HostileHistoryBuffer:
    """Pickles as mmengine's ``HistoryBuffer`` with a chosen state: a real
    unpickle runs ``HistoryBuffer.__setstate__``, which copies
    ``state['statistics_methods']`` into the class-level table shared by
    every buffer of the process."""
    __class__ = property(lambda self: HistoryBuffer)

    def __init__(self, state):
        self.state = state

    def __reduce_ex__(self, protocol):
        return (copyreg.__newobj__, (HistoryBuffer, ), self.state)


HOSTILE_HB_STATE = {
    'statistics_methods': {'mean': 'hijacked', 'min': None,
                           'injected': 'x'},
    '_log_history': [1.0], 'max_length': -1}


def _history_buffer_state():
    """Everything class-level a HistoryBuffer load could change."""
    return (dict(HistoryBuffer._statistics_methods),
            {k: v for k, v in vars(HistoryBuffer).items()
             if k != '_statistics_methods'})


HistoryBuffer()  # fills the class-level table as training does
HB_BEFORE = _history_buffer_state()


def _torch_bytes(obj, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def _safetensors_opening_with_0x80(state: dict) -> bytes:
    """A valid safetensors file whose header length ends in 0x80, so its
    first byte is the pickle opcode PROTO (a detection trap)."""
    for pad in range(256):
        data = safetensors_bytes(state, metadata={'pad': 'x' * pad})
        if data[0] == 0x80:
            return data
    raise AssertionError('no padding gives a 0x80 first byte')


def _replace_zip_entry(data: bytes, suffix: str, body: bytes) -> bytes:
    """The torch zip ``data`` with the entry ending in ``suffix`` replaced
    (stored, as torch.save writes)."""
    source = zipfile.ZipFile(io.BytesIO(data))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as archive:
        for name in source.namelist():
            archive.writestr(name, body if name.endswith(suffix)
                             else source.read(name))
    return buffer.getvalue()


def _deflate_bomb(declared: int = 2**30) -> bytes:
    """A torch zip whose one tensor record is a deflate entry of ~1 MiB
    that inflates to ``declared`` bytes of zeros (valid CRC)."""
    block = 2**20
    segment = zlib.compressobj(9, zlib.DEFLATED, -15)
    # a full flush ends each segment on a byte with no back-references:
    # segments repeat into one valid stream
    segment = segment.compress(bytes(block)) + segment.flush(zlib.Z_FULL_FLUSH)
    stream = segment * (declared // block) + b'\x03\x00'  # final empty block
    crc, zeros = 0, bytes(4 * block)
    for _ in range(declared // len(zeros)):
        crc = zlib.crc32(zeros, crc)
    data = _replace_zip_entry(_torch_bytes({'w': torch.zeros(1)}),
                              'data/0', stream)
    archive = zipfile.ZipFile(io.BytesIO(data))
    info = [i for i in archive.infolist() if i.filename.endswith('data/0')][0]
    data = bytearray(data)
    local = info.header_offset  # method, time, date, crc, csize, usize
    data[local + 8:local + 10] = struct.pack('<H', zipfile.ZIP_DEFLATED)
    data[local + 14:local + 26] = struct.pack('<III', crc, len(stream),
                                              declared)
    central = bytes(data).rindex(b'PK\x01\x02', 0,
                                 bytes(data).rindex(info.filename.encode()))
    data[central + 10:central + 12] = struct.pack('<H', zipfile.ZIP_DEFLATED)
    data[central + 16:central + 28] = struct.pack('<III', crc, len(stream),
                                                  declared)
    return bytes(data)


def _zip_sizes_past_end() -> bytes:
    """A torch zip whose tensor entry declares 1 GiB stored bytes."""
    data = bytearray(_torch_bytes({'w': torch.zeros(4)}))
    name = re.search(rb'[\w/]+/data/0', bytes(data)).group()
    central = bytes(data).rindex(b'PK\x01\x02', 0, bytes(data).rindex(name))
    data[central + 20:central + 28] = struct.pack('<II', 2**30, 2**30)
    return bytes(data)


def _legacy_huge_storage(numel: int = 2**28) -> bytes:
    """A legacy torch file declaring a 1 GiB float storage for 4 bytes."""
    data = _torch_bytes({'w': torch.zeros(1)}, legacy=True)
    at = data.index(b'K\x01Nt')  # numel 1, no view, end of the record
    return (data[:at] + b'\x8a\x08' + struct.pack('<q', numel)
            + data[at + 2:])


def _safetensors_raw(header: bytes) -> bytes:
    return struct.pack('<Q', len(header)) + header


def _empty_tensors_header(count: int) -> bytes:
    return json.dumps({f'{i:x}': {'dtype': 'F32', 'shape': [0],
                                  'data_offsets': [0, 0]}
                       for i in range(count)}, separators=(',', ':')).encode()


def _deep_pickle_zip(depth: int = 200_000) -> bytes:
    """A torch zip whose pickle nests ``depth`` lists under one key."""
    body = (b'\x80\x02}X\x01\x00\x00\x00w' + b']' * depth
            + b'a' * (depth - 1) + b's.')
    return _replace_zip_entry(_torch_bytes({'w': torch.zeros(1)}),
                              'data.pkl', body)


def _hostile(state: dict) -> dict:
    """name -> (bytes, outcome): files torch.save / safetensors never
    write from a module, or whose side parts must stay inert. An outcome
    ``('refuse', pattern)`` is a CheckpointError matching ``pattern``."""
    one = torch.zeros(1)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # deprecated / prototype kinds
        quantized = torch.quantize_per_tensor(torch.rand(4), 0.1, 0,
                                              torch.qint8)
        nested = torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)])
    import numpy as np
    wrapped = {'state_dict': dict(state),
               'meta': {'epoch': np.int64(3), 'lr': np.float64(0.1),
                        'hist': np.zeros(3, dtype=np.float32),
                        'dtype': np.dtype('float16')}}
    kind = 'refuse'
    return {
        'stride0_zip': (_torch_bytes({'w': one.expand(2**28)}),
                        (kind, 'stride-0 view')),
        'stride0_legacy': (_torch_bytes({'w': one.expand(2**28)}, True),
                           (kind, 'stride-0 view')),
        'overlap_zip': (_torch_bytes({'w': torch.zeros(2**14).as_strided(
            (2**13, 2**13), (1, 1))}), (kind, 'elements overlap')),
        'deflate_bomb': (DEFLATE_BOMB, (kind, 'is compressed')),
        'zip_sizes_past_end': (_zip_sizes_past_end(),
                               (kind, 'share bytes|past the end')),
        'legacy_huge_storage': (_legacy_huge_storage(),
                                (kind, 'bytes of tensor storage')),
        'safetensors_object_bomb': (_safetensors_raw(
            b'{' + b','.join(b'"%x":{}' % i for i in range(120_000)) + b'}'),
            (kind, 'MAX_TENSORS')),
        'safetensors_many_empty': (
            _safetensors_raw(_empty_tensors_header(2000)), 'error'),
        'safetensors_deep': (_safetensors_raw(
            b'{"a":' * 100_000 + b'1' + b'}' * 100_000), (kind, 'nests')),
        'safetensors_deep_list': (_safetensors_raw(
            b'{"a":{"dtype":"F32","shape":' + b'[' * 100_000
            + b']' * 100_000 + b',"data_offsets":[0,0]}}'), (kind, 'nests')),
        'pickle_deep_zip': (_deep_pickle_zip(), (kind, 'holds no tensors')),
        'sparse_zip': (_torch_bytes({'w': torch.eye(3).to_sparse()}),
                       (kind, 'sparse')),
        'sparse_legacy': (_torch_bytes({'w': torch.eye(3).to_sparse()}, True),
                          (kind, 'sparse')),
        'quantized_zip': (_torch_bytes({'w': quantized}),
                          (kind, 'quantized')),
        'quantized_legacy': (_torch_bytes({'w': quantized}, True),
                             (kind, 'quantized')),
        'complex_zip': (_torch_bytes({'w': torch.zeros(2, dtype=torch.cfloat)}
                                     ), (kind, 'complex')),
        'meta_zip': (_torch_bytes({'w': torch.empty(2**30, device='meta')}),
                     (kind, 'meta-device')),
        'nested_zip': (_torch_bytes({'w': nested}), (kind, 'nested')),
        'history_buffer_state': (_torch_bytes({
            'state_dict': state,
            'message_hub': {'log_scalars': {
                'loss': HostileHistoryBuffer(HOSTILE_HB_STATE)}}}), 'load'),
        'history_buffer_payload': (_torch_bytes({
            'state_dict': state, 'payload': ExecPayload(),
            'message_hub': HostileHistoryBuffer(HOSTILE_HB_STATE)}),
            'unsafe'),
        'published_meta': (_torch_bytes(wrapped), 'load'),
    }


DEFLATE_BOMB = _deflate_bomb()


def _pristine() -> dict:
    """name -> (bytes, what a clean load of it must do)."""
    torch.manual_seed(0)
    state = build_backbone(SMALL).state_dict()
    wrapped = {'state_dict': {f'backbone.{k}': v for k, v in state.items()},
               'meta': {'epoch': 3, 'note': 'a training checkpoint'}}
    half = {k: v.half() if v.is_floating_point() else v
            for k, v in state.items()}
    nan = dict(state)
    nan['conv1.weight'] = torch.full_like(state['conv1.weight'],
                                          float('nan'))
    wider = build_backbone(dict(SMALL, base_channels=16)).state_dict()
    vit = build_backbone(dict(
        type='VisionTransformer', img_size=32, patch_size=8,
        arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                  feedforward_channels=64))).state_dict()
    files = {
        'safetensors_0x80': (_safetensors_opening_with_0x80(state), 'load'),
        'zip': (_torch_bytes(state), 'load'),
        'zip_wrapped': (_torch_bytes(wrapped), 'load_prefix'),
        'legacy': (_torch_bytes(state, legacy=True), 'load'),
        'safetensors': (safetensors_bytes(state), 'load'),
        'fp16_safetensors': (safetensors_bytes(half), 'warn'),
        'fp16_zip': (_torch_bytes(half), 'warn'),
        'nan_zip': (_torch_bytes(nan), 'warn'),
        'wider_resnet': (_torch_bytes(wider), 'error'),
        'vit': (safetensors_bytes(vit), 'error'),
        'payload_zip': (_torch_bytes({'state_dict': state,
                                      'meta': ExecPayload()}), 'unsafe'),
        'payload_legacy': (_torch_bytes({'x': SystemPayload(), **state},
                                        legacy=True), 'unsafe'),
        'payload_raw_pickle': (pickle.dumps(ExecPayload(), protocol=2),
                               'unsafe'),
        'payload_protocol0': (pickle.dumps(SystemPayload(), protocol=0),
                              'error'),
        # torch's weights-only unpickler stops at protocol 5's first FRAME
        # opcode: refused as corrupt before any global is looked at.
        'payload_protocol5': (pickle.dumps({'w': ExecPayload()}, protocol=5),
                              'error'),
    }
    files.update(_hostile(state))
    return files


PRISTINE = _pristine()
OPS = ['none', 'truncate', 'bitflip', 'data_bitflip', 'overwrite',
       'insert', 'empty',
       'rename', 'huge_header', 'bad_header', 'garbage_zip',
       'zip_replace_entry', 'text']
SUFFIXES = ['.pth', '.pt', '.bin', '.safetensors']


def _text(rng: random.Random, max_size: int) -> str:
    """Random text: ASCII and other code points (no surrogates)."""
    points = [rng.randint(32, 126) if rng.random() < 0.7 else
              rng.choice([rng.randint(0x80, 0xD7FF),
                          rng.randint(0xE000, 0x10FFFF)])
              for _ in range(rng.randint(0, max_size))]
    return ''.join(map(chr, points))


def _junk_zip_entry(data: bytearray, rng: random.Random) -> bytearray:
    """A zip archive rebuilt with one entry replaced by junk or dropped
    (any other bytes unchanged)."""
    if data[:2] != b'PK':
        return data
    source = zipfile.ZipFile(io.BytesIO(bytes(data)))
    names = source.namelist()
    victim = rng.choice(names)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as archive:
        for entry in names:
            if entry != victim:
                archive.writestr(entry, source.read(entry))
            elif rng.random() < 0.5:  # else: the entry is dropped
                archive.writestr(entry, rng.randbytes(rng.randint(0, 512)))
    return bytearray(buffer.getvalue())


def corrupted_checkpoint(name: str, op: str, rng: random.Random):
    """Pristine file ``name`` damaged by ``op``; the positions, bytes,
    suffix and prefix come from ``rng``."""
    data, clean_outcome = PRISTINE[name]
    data = bytearray(data)
    if name == 'deflate_bomb' and op == 'zip_replace_entry':
        op = 'none'  # rewriting the archive would inflate the bomb here
    suffix = rng.choice(SUFFIXES)
    size = len(data)
    if op == 'truncate':
        data = data[:rng.randint(0, size - 1)]
    elif op == 'bitflip':
        for _ in range(rng.randint(1, 8)):
            bit = rng.randint(0, size * 8 - 1)
            data[bit // 8] ^= 1 << (bit % 8)
    elif op == 'data_bitflip':  # in the tensor bytes (the last 40%)
        for _ in range(rng.randint(1, 4)):
            bit = rng.randint(size * 8 * 6 // 10, size * 8 - 9)
            data[bit // 8] ^= 1 << (bit % 8)
    elif op == 'overwrite':
        start = rng.randint(0, size - 1)
        junk = rng.randbytes(rng.randint(1, 64))
        data[start:start + len(junk)] = junk
    elif op == 'insert':
        start = rng.randint(0, size)
        data[start:start] = rng.randbytes(rng.randint(1, 64))
    elif op == 'empty':
        data = bytearray()
    elif op == 'rename':  # .pth bytes as .safetensors and back
        suffix = '.pth' if suffix == '.safetensors' else '.safetensors'
    elif op == 'huge_header':
        declared = rng.choice([size, size + 1, 2**31, 2**40, 2**63,
                               2**64 - 1])
        data = bytearray(struct.pack('<Q', declared) + b'{"a":' + data[:64])
    elif op == 'bad_header':
        header = rng.choice([
            b'{', b'{}', b'[]', b'null', b'{"w": 1}',
            b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 99]}}',
            b'{"w": {"dtype": "F32", "shape": [4096, 4096], '
            b'"data_offsets": [0, 8]}}',
            b'{"w": {"dtype": "X99", "shape": [2], "data_offsets": [0, 8]}}',
            b'{"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}',
            b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}',
            b'{"__metadata__": {"a": 1}}',
            b'{"' + b'k' * 3000 + b'": 1}',
        ])
        data = bytearray(struct.pack('<Q', len(header)) + header
                         + b'\0' * rng.randint(0, 16))
    elif op == 'garbage_zip':
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, 'w') as archive, \
                warnings.catch_warnings():
            warnings.simplefilter('ignore')  # duplicate entry names
            for _ in range(rng.randint(0, 4)):
                entry = rng.choice([
                    'archive/data.pkl', 'archive/data/0', 'archive/version',
                    'archive/byteorder', '../evil', 'a/b/c',
                    'archive/.data/serialization_id'])
                archive.writestr(entry, rng.randbytes(rng.randint(0, 256)))
        data = bytearray(buffer.getvalue())
    elif op == 'zip_replace_entry':
        try:
            data = _junk_zip_entry(data, rng)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError):
            pass  # a hostile archive that zipfile cannot read: as it is
    elif op == 'text':
        data = bytearray(_text(rng, 200).encode())
    prefix = rng.choice([None, 'backbone', 'backbone.', 'matches_nothing'])
    return name, op, bytes(data), suffix, prefix, clean_outcome


@pytest.fixture(scope='module')
def model():
    return build_backbone(SMALL)


def _load(model, path: Path, prefix):
    """load_pretrained under a hang watchdog; returns (outcome, warnings)."""
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            try:
                report = load_pretrained(model, str(path), prefix=prefix)
            except (CheckpointError, FileNotFoundError, KeyError) as err:
                return err, caught
            return report, caught
    finally:
        faulthandler.cancel_dump_traceback_later()


def _check(name, op, data, suffix, prefix, clean_outcome, model, directory):
    path = Path(directory) / f'ckpt{suffix}'
    path.write_bytes(data)
    outcome, caught = _load(model, path, prefix)
    text = str(outcome) if isinstance(outcome, Exception) else ''
    STATS['total'] += 1
    STATS[f'op:{op}'] += 1
    STATS[f'file:{name}'] += 1
    STATS[type(outcome).__name__] += 1
    assert not MARKER.exists(), f'{name}/{op}: the payload ran'
    assert _history_buffer_state() == HB_BEFORE, (name, op)
    if isinstance(outcome, Exception):
        assert str(path) in text, (name, op, text)
        if isinstance(outcome, KeyError) and not isinstance(
                outcome, CheckpointError):
            assert f'prefix={prefix!r}' in text, (name, op, text)
    if op == 'data_bitflip' and prefix is None:
        if name == 'safetensors':  # no checksum: a valid file, it loads
            assert not isinstance(outcome, Exception), (name, outcome)
        elif name == 'zip':  # the zip CRC catches it
            assert isinstance(outcome, CheckpointError), outcome
            assert 'fails its CRC check' in text, text
    if op != 'none':
        return
    # Undamaged files: the exact outcome is known.
    fits_prefix = (prefix in (None, 'backbone', 'backbone.')
                   if clean_outcome == 'load_prefix' else prefix is None)
    if isinstance(clean_outcome, tuple):
        assert isinstance(outcome, CheckpointError), (name, outcome)
        assert re.search(clean_outcome[1], text), (name, text)
    elif clean_outcome == 'unsafe':
        assert isinstance(outcome, UnsafeCheckpointError), (name, outcome)
        assert 'blocked globals' in text
    elif clean_outcome == 'error':
        assert isinstance(outcome, (CheckpointError, KeyError)), (name,
                                                                  outcome)
    elif not fits_prefix:
        assert isinstance(outcome, KeyError), (name, prefix, outcome)
        assert 'matches no key' in text
    elif clean_outcome == 'load_prefix' and prefix is None:
        assert isinstance(outcome, CheckpointError), (name, outcome)
        assert "prefix='backbone'" in text  # the hint to pass the prefix
    else:
        assert not isinstance(outcome, Exception), (name, prefix, outcome)
        assert outcome.num_loaded == len(model.state_dict())
        messages = [str(w.message) for w in caught if str(path) in
                    str(w.message)]
        if clean_outcome == 'warn':
            assert messages and any(k in messages[0] for k in
                                    ('float16', 'NaN')), (name, messages)


def fuzz_cases():
    """Every pristine file damaged by every operation, then seeded random
    pairs up to ``MAX_EXAMPLES``: each case's details come from a
    generator seeded by its position, so every run tests the same bytes
    and covers every file and every operation by construction."""
    pairs = [(name, op) for name in sorted(PRISTINE) for op in OPS]
    picker = random.Random('extra pairs')
    while len(pairs) < MAX_EXAMPLES:
        pairs.append((picker.choice(sorted(PRISTINE)), picker.choice(OPS)))
    for index, (name, op) in enumerate(pairs):
        yield corrupted_checkpoint(name, op, random.Random(
            f'{index}:{name}:{op}'))


def test_fuzzed_checkpoints_end_in_a_named_error_or_a_load(model):
    STATS.clear()
    for case in fuzz_cases():
        with tempfile.TemporaryDirectory() as directory:
            _check(*case, model=model, directory=directory)
    # every case ran, every file and damage was tested, nothing ran
    assert STATS['total'] >= MAX_EXAMPLES, STATS
    for name in PRISTINE:
        assert STATS[f'file:{name}'] > 0, (name, STATS)
    for op in OPS:
        assert STATS[f'op:{op}'] > 0, (op, STATS)
    assert not MARKER.exists()
    summary = {k: v for k, v in sorted(STATS.items())}
    print('checkpoint fuzz:', json.dumps(summary), file=sys.stderr)


def test_every_pristine_file_outcome(model):
    """Each pristine file with each prefix, undamaged (no sampling)."""
    for name, (data, outcome) in sorted(PRISTINE.items()):
        for prefix in (None, 'backbone', 'matches_nothing'):
            with tempfile.TemporaryDirectory() as directory:
                _check(name, 'none', data, '.pth', prefix, outcome,
                       model=model, directory=directory)
    assert not MARKER.exists()


@pytest.mark.parametrize('name', ['payload_zip', 'payload_legacy',
                                  'payload_raw_pickle', 'payload_protocol0',
                                  'payload_protocol5'])
def test_the_payloads_are_real(name, tmp_path):
    """Unpickled unsafely, each payload does write the marker: the fuzz
    test's "marker never appears" is a real check (runs after it)."""
    data, _ = PRISTINE[name]
    path = tmp_path / 'evil.pth'
    path.write_bytes(data)
    if MARKER.exists():
        MARKER.unlink()
    if name in ('payload_raw_pickle', 'payload_protocol0',
                'payload_protocol5'):
        pickle.loads(data)
    else:
        torch.load(path, weights_only=False)
    deadline = time.time() + 5
    while not MARKER.exists() and time.time() < deadline:
        time.sleep(0.01)
    assert MARKER.exists()
    MARKER.unlink()


@pytest.mark.parametrize('fmt', ['zip', 'legacy', 'safetensors',
                                 'safetensors_0x80'])
def test_renamed_formats_load_by_content(model, fmt, tmp_path):
    """The bytes choose the reader, never the suffix."""
    data, _ = PRISTINE[fmt]
    for suffix in SUFFIXES:
        path = tmp_path / f'renamed{suffix}'
        path.write_bytes(data)
        report = load_pretrained(model, str(path))
        assert report.num_loaded == len(model.state_dict()), (fmt, suffix)


def test_the_history_buffer_state_is_real(tmp_path):
    """Unpickled with the real class allow-listed (as the resume path's
    globals do), the hostile state does rewrite the class-level table:
    the fuzz test's "class state unchanged" is a real check."""
    from mmbackbone.checkpoint.io import allowed_globals
    path = tmp_path / 'hub.pth'
    path.write_bytes(PRISTINE['history_buffer_state'][0])
    saved = dict(HistoryBuffer._statistics_methods)
    try:
        with torch.serialization.safe_globals(allowed_globals()), \
                open(path, 'rb') as f:
            torch.load(f, weights_only=True)
        assert HistoryBuffer._statistics_methods['mean'] == 'hijacked'
    finally:
        HistoryBuffer._statistics_methods.clear()
        HistoryBuffer._statistics_methods.update(saved)
    assert _history_buffer_state() == HB_BEFORE


def test_the_bombs_are_real():
    """Each size bomb is under 2 MiB and stands for at least 1 GiB."""
    for name, (data, outcome) in PRISTINE.items():
        if isinstance(outcome, tuple):
            assert len(data) < 2 * 2**20, (name, len(data))
    archive = zipfile.ZipFile(io.BytesIO(DEFLATE_BOMB))
    bomb = [i for i in archive.infolist() if i.filename.endswith('data/0')][0]
    assert bomb.compress_type == zipfile.ZIP_DEFLATED
    assert bomb.file_size >= 2**30 and bomb.compress_size < 2 * 2**20
    with archive.open(bomb) as entry:
        assert entry.read(2**20) == bytes(2**20)  # it does inflate
    for name in ('stride0_zip', 'overlap_zip'):
        tensor = torch.load(io.BytesIO(PRISTINE[name][0]),
                            weights_only=True)['w']
        assert tensor.numel() * tensor.element_size() >= 2**28
    with pytest.raises(RuntimeError, match='storage has wrong byte size'):
        torch.load(io.BytesIO(PRISTINE['legacy_huge_storage'][0]),
                   weights_only=True)  # after allocating 1 GiB


#: The child loads each file in a fork of one warmed-up process and
#: reports its peak-RSS growth (ru_maxrss is a high-water mark, so each
#: fork starts from the same baseline).
RSS_CHILD = textwrap.dedent('''
    import json, os, resource, sys, warnings
    import torch
    torch.set_num_threads(1)
    from mmbackbone import build_backbone
    from mmbackbone.checkpoint import load_pretrained
    model = build_backbone(json.loads(sys.argv[1]))
    for path in sys.argv[2:]:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter('ignore')
                    load_pretrained(model, path)
                outcome = 'loaded'
            except Exception as err:
                outcome = f'{type(err).__name__}: {err}'
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            os.write(write, json.dumps([path, (peak - before) / 1024,
                                        outcome]).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            print(pipe.read(), flush=True)
        os.waitpid(pid, 0)
''')


def test_hostile_files_stay_small_in_memory(tmp_path):
    """No hostile file under 2 MiB costs MAX_HOSTILE_RSS_MIB of memory
    before its error."""
    names = [name for name, (_, outcome) in PRISTINE.items()
             if isinstance(outcome, tuple)]
    files = {name: PRISTINE[name][0] for name in names}
    count = 37_000  # as many empty tensors as fit under 2 MiB
    files['safetensors_2mib_of_empty'] = _safetensors_raw(
        _empty_tensors_header(count))
    files['pickle_2mib_deep'] = _deep_pickle_zip(2**20 - 4096)
    paths = []
    for name, data in files.items():
        assert len(data) < 2 * 2**20, (name, len(data))
        path = tmp_path / f'{name}.pth'
        path.write_bytes(data)
        paths.append(str(path))
    env = dict(os.environ, OMP_NUM_THREADS='1')
    result = subprocess.run(
        [sys.executable, '-c', RSS_CHILD, json.dumps(SMALL), *paths],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()
            if line.startswith('[')]
    assert [row[0] for row in rows] == paths
    figures = {}
    for path, mib, outcome in rows:
        name = Path(path).stem
        figures[name] = round(mib, 1)
        assert outcome != 'loaded', name
        assert path in outcome, (name, outcome)  # a named error
        assert outcome.split(':')[0] in ('CheckpointError', 'KeyError'), \
            outcome
        assert mib < MAX_HOSTILE_RSS_MIB, (name, mib)
    print('peak RSS growth (MiB):', json.dumps(figures), file=sys.stderr)
