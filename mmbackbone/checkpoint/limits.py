"""What a weights file may declare, checked before its data is allocated.

A small file must not make loading large: every check here runs on the
file's structure (zip directory, safetensors header, the storages a
pickle declares) or on tensor views of storages already bounded by the
file size, before any tensor value is read or computed on. Anything
``torch.save`` or safetensors never write is refused with a
:class:`~mmbackbone.checkpoint.CheckpointError` naming the file.
"""
import io
import json
import pickletools
import re
import struct
import zipfile
from pathlib import Path
from typing import BinaryIO, Dict, Tuple

import torch

#: Most tensors (safetensors entries, zip records) a weights file may hold.
MAX_TENSORS = 100_000
#: Largest safetensors JSON header read (the safetensors library's own cap).
MAX_HEADER_BYTES = 100 * 2**20
#: Deepest JSON nesting in a safetensors header (real files nest 3 deep).
MAX_HEADER_NESTING = 8
#: Most bytes all tensors together may view per stored byte: tied weights
#: view a storage twice, nothing saved from a module views it more.
MAX_VIEWS_PER_STORED_BYTE = 4

_RESAVE = ('re-save the weights with torch.save(model.state_dict()) or '
           'safetensors.torch.save_file from a trusted environment')


def _error(message: str):
    from .io import CheckpointError
    return CheckpointError(message)


# ---------------------------------------------------------------- zip files
def check_zip(path: Path, f: BinaryIO, size: int) -> None:
    """Refuse zip archives ``torch.save`` never writes; verify CRCs.

    ``torch.save`` writes stored (uncompressed) entries, each once, in
    order, inside the file. A compressed entry would be inflated in memory
    by torch's reader (a 1 MiB deflate entry can declare GiBs), and
    entries sharing bytes or reaching past the file are not written by
    any saver. torch.load does not check the CRCs: a flipped bit in tensor
    data would load silently.
    """
    try:
        archive = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise _error(f'checkpoint {path} is truncated or corrupt (a damaged '
                     f'zip archive: {err}); fetch or copy the file again'
                     ) from err
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_TENSORS + 16:
            raise _error(f'checkpoint {path} has {len(infos)} zip entries, '
                         f'more than MAX_TENSORS={MAX_TENSORS}; {_RESAVE}')
        names = set()
        spans = []
        for info in infos:
            if info.filename in names:
                raise _error(f'checkpoint {path}: zip entry '
                             f'{info.filename!r} appears twice; {_RESAVE}')
            names.add(info.filename)
            if info.compress_type != zipfile.ZIP_STORED:
                raise _error(
                    f'checkpoint {path}: zip entry {info.filename!r} is '
                    f'compressed; torch.save writes uncompressed entries '
                    f'only, and a compressed one can inflate to any size. '
                    f'Unzip the archive and {_RESAVE}')
            if info.compress_size != info.file_size:
                raise _error(f'checkpoint {path}: zip entry '
                             f'{info.filename!r} declares {info.file_size} '
                             f'bytes but stores {info.compress_size}; the '
                             f'file is corrupt')
            start = _local_data_start(archive, info, path, size)
            spans.append((start, start + info.file_size, info.filename))
        spans.sort()
        for (_, end, name), (start, _, after) in zip(spans, spans[1:]):
            if end > start:
                raise _error(f'checkpoint {path}: zip entries {name!r} and '
                             f'{after!r} share bytes; {_RESAVE}')
        if spans and spans[-1][1] > size:
            raise _error(f'checkpoint {path}: zip entry {spans[-1][2]!r} '
                         f'reaches past the end of the {size}-byte file; it '
                         f'is truncated or corrupt')
        try:
            bad = archive.testzip()  # streams: memory stays small
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise _error(f'checkpoint {path} is truncated or corrupt (a '
                         f'damaged zip archive: {err}); fetch or copy the '
                         f'file again') from err
    if bad is not None:
        raise _error(f'checkpoint {path} is corrupt: entry {bad!r} fails its '
                     f'CRC check (a damaged download or copy); fetch the '
                     f'file again')


def _local_data_start(archive: zipfile.ZipFile, info: zipfile.ZipInfo,
                      path: Path, size: int) -> int:
    """Where an entry's bytes begin, from its local header."""
    fp = archive.fp
    if info.header_offset < 0 or info.header_offset + 30 > size:
        raise _error(f'checkpoint {path}: zip entry {info.filename!r} lies '
                     f'outside the {size}-byte file; it is corrupt')
    fp.seek(info.header_offset)
    header = fp.read(30)
    if len(header) < 30 or header[:4] != b'PK\x03\x04':
        raise _error(f'checkpoint {path}: zip entry {info.filename!r} has no '
                     f'local header; the file is corrupt')
    name_len, extra_len = struct.unpack('<HH', header[26:30])
    return info.header_offset + 30 + name_len + extra_len


# ------------------------------------------------------ legacy torch pickles
class NoFileno(io.BufferedReader):
    """A file torch.load reads through ``read``: with a file number it
    first tries the pre-2017 tar format, which extracts members to disk."""

    def fileno(self):
        raise io.UnsupportedOperation('fileno')


def check_legacy_storages(path: Path, f: BinaryIO, size: int) -> None:
    """Refuse a legacy (non-zip) torch file whose pickle declares more
    storage than the file holds.

    torch allocates each storage its pickle declares before reading the
    bytes. Here the pickle's opcodes are walked first (nothing is built,
    no global is looked up) and the storage records summed; what cannot
    be walked is left to the real load to report.
    """
    declared: Dict[object, int] = {}
    try:
        for _ in range(3):  # magic number, protocol version, system info
            for _ in pickletools.genops(f):
                pass
        for pid in _persistent_ids(pickletools.genops(f)):
            if not (isinstance(pid, tuple) and len(pid) == 6
                    and pid[0] == 'storage' and isinstance(pid[1], str)
                    and type(pid[4]) is int):
                continue  # the real load refuses it
            try:
                storage_type = torch.serialization.StorageType(
                    pid[1].rsplit(' ', 1)[-1])
                item = torch._utils._element_size(storage_type.dtype)
                declared.setdefault(pid[2], max(pid[4], 0) * item)
            except (KeyError, TypeError, RuntimeError, AttributeError):
                continue  # the real load refuses it
            if sum(declared.values()) > size:
                break
    except (ValueError, EOFError, IndexError, KeyError, TypeError,
            UnicodeDecodeError, struct.error):
        pass  # not walkable further: torch.load reports the damage
    if sum(declared.values()) > size:
        raise _error(f'checkpoint {path} declares {sum(declared.values())} '
                     f'bytes of tensor storage but the file has only {size} '
                     f'bytes; it is corrupt or hostile. {_RESAVE}')


_OPAQUE = object()


def _persistent_ids(ops):
    """The persistent ids a pickle's opcode stream builds, in order.

    A small stack machine: literals, tuples, GLOBAL names and the memo
    are followed (a storage record is a tuple of those); every other
    opcode pops and pushes opaque items as pickletools documents it.
    """
    stack, marks, memo = [], [], {}
    for op, arg, _ in ops:
        name = op.name
        if name == 'MARK':
            marks.append(len(stack))
        elif name == 'TUPLE':
            start = marks.pop()
            stack[start:] = [tuple(stack[start:])]
        elif name in ('TUPLE1', 'TUPLE2', 'TUPLE3'):
            count = int(name[-1])
            stack[-count:] = [tuple(stack[-count:])]
        elif name in ('PUT', 'BINPUT', 'LONG_BINPUT'):
            memo[arg] = stack[-1]
        elif name == 'MEMOIZE':
            memo[len(memo)] = stack[-1]
        elif name in ('GET', 'BINGET', 'LONG_BINGET'):
            stack.append(memo[arg])
        elif name == 'GLOBAL':
            stack.append(arg)  # 'module name'
        elif name == 'BINPERSID':
            yield stack.pop()
            stack.append(_OPAQUE)
        elif name in ('STOP', 'PROTO', 'FRAME'):
            continue
        elif not op.stack_before and len(op.stack_after) == 1:
            stack.append(arg)  # a literal (None/True/False have arg None)
        else:
            if pickletools.markobject in op.stack_before:
                del stack[marks.pop():]
            else:
                del stack[len(stack) - len(op.stack_before):]
            stack.extend(_OPAQUE for _ in op.stack_after)


# -------------------------------------------------------------- safetensors
def read_safetensors_header(path: Path, f: BinaryIO, size: int) -> dict:
    """Read and bound a safetensors header before the library parses it.

    Refuses a header larger than the file or :data:`MAX_HEADER_BYTES`,
    nested deeper than :data:`MAX_HEADER_NESTING` (Python's JSON reader
    would end in a bare ``RecursionError``) or holding more than
    :data:`MAX_TENSORS` tensors (each costs time and memory, even empty).
    """
    f.seek(0)
    (length, ) = struct.unpack('<Q', f.read(8))
    if length > min(size - 8, MAX_HEADER_BYTES):
        limit = ('the file' if length > size - 8 else
                 f'MAX_HEADER_BYTES={MAX_HEADER_BYTES}')
        raise _error(f'checkpoint {path}: safetensors header declares '
                     f'{length} bytes, more than {limit} ({size} bytes in '
                     f'all); the file is truncated, corrupt or not '
                     f'safetensors')
    raw = f.read(length)
    depth, objects = _json_shape(raw)
    # a valid header is one object per tensor, the top one and metadata:
    # refused here, a count bomb costs no JSON parse
    if objects - 2 > MAX_TENSORS:
        raise _error(f'checkpoint {path} declares {objects - 2} or more '
                     f'tensors, more than MAX_TENSORS={MAX_TENSORS}; it is '
                     f'corrupt or hostile')
    if depth > MAX_HEADER_NESTING:
        raise _error(f'checkpoint {path}: safetensors header nests {depth} '
                     f'levels deep (safetensors writes 3; the limit is '
                     f'MAX_HEADER_NESTING={MAX_HEADER_NESTING}); the file is '
                     f'corrupt or hostile')
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError too
        raise _error(f'checkpoint {path}: safetensors header is not valid '
                     f'JSON ({str(err)[:120]}); the file is corrupt') from err
    if not isinstance(header, dict):
        raise _error(f'checkpoint {path}: safetensors header is a '
                     f'{type(header).__name__}, not a JSON object; the file '
                     f'is corrupt')
    count = len(header) - ('__metadata__' in header)
    if count > MAX_TENSORS:
        raise _error(f'checkpoint {path} declares {count} tensors, more than '
                     f'MAX_TENSORS={MAX_TENSORS}; it is corrupt or hostile')
    return header


def _json_shape(raw: bytes) -> Tuple[int, int]:
    """(deepest bracket nesting, number of objects) of JSON text, its
    strings skipped, without parsing it."""
    import numpy as np
    # possessive: no backtracking state on a long or unterminated string
    structure = re.sub(rb'"(?:[^"\\]++|\\.)*+"', b'', raw)
    brackets = structure.translate(None, _NOT_BRACKETS)
    steps = np.zeros(256, dtype=np.int64)
    steps[[ord('{'), ord('[')]] = 1
    steps[[ord('}'), ord(']')]] = -1
    depth = deepest = 0
    for start in range(0, len(brackets), 2**20):  # bounded memory
        chunk = np.frombuffer(brackets[start:start + 2**20], dtype=np.uint8)
        levels = depth + np.cumsum(steps[chunk])
        deepest = max(deepest, int(levels.max()))
        depth = int(levels[-1])
    return deepest, brackets.count(b'{')


_NOT_BRACKETS = bytes(c for c in range(256) if c not in b'{}[]')


# ------------------------------------------------------------------ tensors
def check_tensors(state: Dict[str, torch.Tensor], path: Path) -> None:
    """Refuse tensors a model cannot take, and views larger than their data.

    Runs before any value is read: a stride-0 or overlapping view of a
    few stored bytes can stand for GiBs, which a value check such as
    ``isfinite`` would then allocate.
    """
    stored: Dict[int, int] = {}
    viewed = 0
    for key, tensor in state.items():
        kind = unsupported_kind(tensor)
        if kind:
            raise _error(
                f'checkpoint {path}: {key!r} is a {kind} tensor; mmbackbone '
                f'loads dense real-valued tensors stored in the file. '
                f'Re-save it as a dense float tensor (e.g. '
                f'{{k: v.dequantize() / v.to_dense() / v.real ...}}) with '
                f'torch.save or safetensors')
        _check_view(key, tensor, path)
        storage = tensor.untyped_storage()
        stored[storage.data_ptr()] = storage.nbytes()
        viewed += tensor.numel() * tensor.element_size()
    if viewed > MAX_VIEWS_PER_STORED_BYTE * sum(stored.values()) + 2**20:
        raise _error(
            f'checkpoint {path}: its tensors view {viewed} bytes of '
            f'{sum(stored.values())} stored bytes (more than '
            f'MAX_VIEWS_PER_STORED_BYTE={MAX_VIEWS_PER_STORED_BYTE} views '
            f'of the same data); {_RESAVE}')


def unsupported_kind(tensor: torch.Tensor) -> str:
    """'' for a dense real tensor with data, else what it is."""
    if tensor.is_nested:
        return 'nested'
    if tensor.layout != torch.strided:
        return f'sparse ({tensor.layout})'
    if tensor.is_quantized:
        return 'quantized'
    if tensor.device.type != 'cpu':
        return f'{tensor.device.type}-device (no data in the file)'
    if tensor.is_complex():
        return f'complex ({tensor.dtype})'
    return ''


def _check_view(key: str, tensor: torch.Tensor, path: Path) -> None:
    if tensor.numel() == 0:
        return
    dims = sorted((stride, size) for size, stride in
                  zip(tensor.shape, tensor.stride()) if size > 1)
    needed = 1
    for stride, size in dims:
        if stride < needed:
            what = ('a stride-0 view (one stored value repeated)'
                    if stride == 0 else 'a view whose elements overlap')
            raise _error(
                f'checkpoint {path}: {key!r} (shape {tuple(tensor.shape)}, '
                f'stride {tensor.stride()}) is {what}; torch.save of a '
                f"module's state_dict never writes one. Re-save it with "
                f'.contiguous() or {_RESAVE}')
        needed = stride * size
    extent = tensor.storage_offset() + 1 + sum(
        (size - 1) * stride for size, stride in
        zip(tensor.shape, tensor.stride()))
    if extent * tensor.element_size() > tensor.untyped_storage().nbytes():
        raise _error(f'checkpoint {path}: {key!r} reaches past the end of '
                     f'its storage; the file is corrupt')
