"""Checkpoint fuzzing: damaged and hostile files lose nothing, run nothing.

Hypothesis draws a pristine checkpoint of a small ResNet (zip ``.pth``,
legacy pickle, safetensors, a training checkpoint with a ``backbone.``
prefix, fp16 weights, NaN weights, another architecture's weights,
pickles whose unpickling would run code) and damages it: random
truncation, bit flips, overwritten or inserted bytes, a renamed suffix
(``.pth`` <-> ``.safetensors``), a huge declared safetensors header,
garbage safetensors headers, zip archives with garbage entries, empty
files, text. Each file then goes through the same door as
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
traceback after ``HANG_SECONDS``), and never code execution: every hostile
pickle writes a marker file when unpickled unsafely (checked to work at
the end), and the marker must never appear.
"""
import faulthandler
import io
import json
import os
import pickle
import struct
import sys
import tempfile
import time
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as safetensors_bytes

from mmbackbone import build_backbone
from mmbackbone.checkpoint import (CheckpointError, UnsafeCheckpointError,
                                   load_pretrained)

#: Fuzzed checkpoints per CI run (the acceptance floor is 300).
MAX_EXAMPLES = 330
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
    return files


PRISTINE = _pristine()
OPS = ['none', 'truncate', 'bitflip', 'data_bitflip', 'overwrite',
       'insert', 'empty',
       'rename', 'huge_header', 'bad_header', 'garbage_zip',
       'zip_replace_entry', 'text']
SUFFIXES = ['.pth', '.pt', '.bin', '.safetensors']


@st.composite
def corrupted_checkpoints(draw):
    name = draw(st.sampled_from(sorted(PRISTINE)))
    data, clean_outcome = PRISTINE[name]
    data = bytearray(data)
    op = draw(st.sampled_from(OPS))
    suffix = draw(st.sampled_from(SUFFIXES))
    size = len(data)
    if op == 'truncate':
        data = data[:draw(st.integers(0, size - 1))]
    elif op == 'bitflip':
        for _ in range(draw(st.integers(1, 8))):
            bit = draw(st.integers(0, size * 8 - 1))
            data[bit // 8] ^= 1 << (bit % 8)
    elif op == 'data_bitflip':  # in the tensor bytes (the last 40%)
        for _ in range(draw(st.integers(1, 4))):
            bit = draw(st.integers(size * 8 * 6 // 10, size * 8 - 9))
            data[bit // 8] ^= 1 << (bit % 8)
    elif op == 'overwrite':
        start = draw(st.integers(0, size - 1))
        junk = draw(st.binary(min_size=1, max_size=64))
        data[start:start + len(junk)] = junk
    elif op == 'insert':
        start = draw(st.integers(0, size))
        data[start:start] = draw(st.binary(min_size=1, max_size=64))
    elif op == 'empty':
        data = bytearray()
    elif op == 'rename':  # .pth bytes as .safetensors and back
        suffix = '.pth' if suffix == '.safetensors' else '.safetensors'
    elif op == 'huge_header':
        declared = draw(st.sampled_from([size, size + 1, 2**31, 2**40,
                                         2**63, 2**64 - 1]))
        data = bytearray(struct.pack('<Q', declared) + b'{"a":' + data[:64])
    elif op == 'bad_header':
        header = draw(st.sampled_from([
            b'{', b'{}', b'[]', b'null', b'{"w": 1}',
            b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 99]}}',
            b'{"w": {"dtype": "F32", "shape": [4096, 4096], '
            b'"data_offsets": [0, 8]}}',
            b'{"w": {"dtype": "X99", "shape": [2], "data_offsets": [0, 8]}}',
            b'{"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}',
            b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}',
            b'{"__metadata__": {"a": 1}}',
            b'{"' + b'k' * 3000 + b'": 1}',
        ]))
        data = bytearray(struct.pack('<Q', len(header)) + header
                         + b'\0' * draw(st.integers(0, 16)))
    elif op == 'garbage_zip':
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, 'w') as archive, \
                warnings.catch_warnings():
            warnings.simplefilter('ignore')  # duplicate entry names
            for _ in range(draw(st.integers(0, 4))):
                entry = draw(st.sampled_from([
                    'archive/data.pkl', 'archive/data/0', 'archive/version',
                    'archive/byteorder', '../evil', 'a/b/c',
                    'archive/.data/serialization_id']))
                archive.writestr(entry, draw(st.binary(max_size=256)))
        data = bytearray(buffer.getvalue())
    elif op == 'zip_replace_entry':
        if data[:2] == b'PK':
            source = zipfile.ZipFile(io.BytesIO(bytes(data)))
            names = source.namelist()
            victim = draw(st.sampled_from(names))
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, 'w') as archive:
                for entry in names:
                    if entry != victim:
                        archive.writestr(entry, source.read(entry))
                    elif draw(st.booleans()):  # else: the entry is dropped
                        archive.writestr(entry, draw(st.binary(max_size=512)))
            data = bytearray(buffer.getvalue())
    elif op == 'text':
        data = bytearray(draw(st.text(max_size=200)).encode())
    prefix = draw(st.sampled_from([None, 'backbone', 'backbone.',
                                   'matches_nothing']))
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
    if clean_outcome == 'unsafe':
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


@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None,
          database=None, suppress_health_check=list(HealthCheck),
          print_blob=True)
@given(case=corrupted_checkpoints())
def fuzz_checkpoints(model, case):
    with tempfile.TemporaryDirectory() as directory:
        _check(*case, model=model, directory=directory)


def test_fuzzed_checkpoints_end_in_a_named_error_or_a_load(model):
    STATS.clear()
    fuzz_checkpoints(model)
    # every example ran, every file and damage was drawn, nothing ran
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
