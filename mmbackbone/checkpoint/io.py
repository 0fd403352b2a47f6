"""Read a checkpoint file into a flat ``{key: Tensor}`` dict, safely.

Pickled files go through ``torch.load(weights_only=True)``; safetensors
through the safetensors library. Nothing in a file can run code: a file
that needs other globals fails with :class:`UnsafeCheckpointError`.
"""
import json
import pickle
import struct
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Dict, Union

import torch

#: Containers that hold the weights inside training checkpoints.
STATE_DICT_KEYS = ('state_dict', 'model', 'module', 'model_state',
                   'state_dict_ema', 'model_ema')


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or unreadable."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint needs globals that could run code."""


def _allowed_globals():
    """Types training checkpoints carry besides tensors (no code runs)."""
    import numpy as np
    allowed = [np.dtype, np.ndarray, type(np.dtype('float32')),
               type(np.dtype('float64')), type(np.dtype('int64'))]
    try:
        allowed.append(np._core.multiarray._reconstruct)
        allowed.append(np._core.multiarray.scalar)
    except AttributeError:  # numpy < 2
        allowed.append(np.core.multiarray._reconstruct)
        allowed.append(np.core.multiarray.scalar)
    try:
        from mmengine.logging import HistoryBuffer
        allowed.append(HistoryBuffer)
    except ImportError:  # pragma: no cover
        pass
    return allowed


allowed_globals = _allowed_globals  # public: tools/train.py allow-lists these


def _is_safetensors(head: bytes, size: int, path: Path) -> bool:
    if len(head) < 9 or head[8:9] != b'{':
        return False
    (header_len, ) = struct.unpack('<Q', head[:8])
    if header_len > size - 8:
        raise CheckpointError(
            f'checkpoint {path}: safetensors header declares {header_len} '
            f'bytes but the file has only {size}; the file is truncated or '
            f'corrupt')
    return True


def _has_safetensors_header(path: Path, head: bytes, size: int) -> bool:
    """A plausible length followed by a JSON object: safetensors."""
    if len(head) < 9 or head[8:9] != b'{':
        return False
    (header_len, ) = struct.unpack('<Q', head[:8])
    if header_len > min(size - 8, 100 * 2**20):
        return False
    with open(path, 'rb') as f:
        f.seek(8)
        header = f.read(header_len)
    try:
        return isinstance(json.loads(header), dict)
    except ValueError:  # includes UnicodeDecodeError
        return False


def _load_safetensors(path: Path) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    try:
        return load_file(str(path), device='cpu')
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(f'checkpoint {path}: not a valid safetensors '
                              f'file ({err})') from err


def _check_zip_crc(path: Path) -> None:
    """torch.load does not verify the zip CRCs: a flipped bit in tensor
    data would load silently. A CRC mismatch is an error here; archives
    Python's zipfile cannot parse are left to torch.load to judge."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception:  # not parseable here: torch.load reports it
        return
    if bad is not None:
        raise CheckpointError(f'checkpoint {path} is corrupt: entry {bad!r} '
                              f'fails its CRC check (a damaged download or '
                              f'copy); fetch the file again')


def _load_pickle(path: Path) -> object:
    try:
        # Only globals not already allowed: torch's safe_globals context
        # removes on exit what it added, even process-wide allow-listed ones
        # (tools/train.py's allow_checkpoint_globals).
        already = torch.serialization.get_safe_globals()
        extra = [g for g in _allowed_globals() if g not in already]
        # A file object, not the name: torch would pick a loader by suffix.
        with torch.serialization.safe_globals(extra), \
                open(path, 'rb') as f:
            return torch.load(f, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        message = str(err)
        if 'GLOBAL' in message or 'global' in message:
            try:
                blocked = torch.serialization.get_unsafe_globals_in_checkpoint(
                    str(path))
            except Exception:  # legacy (non-zip) files cannot be listed
                blocked = [line.strip() for line in message.splitlines()
                           if 'GLOBAL' in line]
            raise UnsafeCheckpointError(
                f'checkpoint {path} needs unsafe unpickling (blocked '
                f'globals: {", ".join(blocked) or "unknown"}); mmbackbone '
                f'loads weights only. Re-save the tensors with '
                f'torch.save(state_dict) or safetensors from a trusted '
                f'environment') from err
        raise CheckpointError(f'checkpoint {path} is corrupt: {message}'
                              ) from err
    except Exception as err:  # any parse failure of a damaged file
        raise CheckpointError(f'checkpoint {path} is truncated or corrupt '
                              f'({type(err).__name__}: '
                              f'{str(err).splitlines()[0] if str(err) else ""})'
                              ) from err


def extract_state_dict(obj: object, path: Union[str, Path]
                       ) -> Dict[str, torch.Tensor]:
    """Find the tensors in a loaded checkpoint object.

    Looks inside the usual containers (``state_dict``, ``model``, ...),
    keeps tensor values only, and strips a ``module.`` prefix that every
    key carries (DataParallel checkpoints).
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f'checkpoint {path} holds a '
                              f'{type(obj).__name__}, not a dict of tensors')
    for key in STATE_DICT_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(
                isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(
            f'checkpoint {path} holds no tensors (top-level keys: '
            f'{sorted(map(str, obj))[:10]})')
    if all(k.startswith('module.') for k in state):
        state = {k[len('module.'):]: v for k, v in state.items()}
    return state


def read_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """Read a ``.pth``/``.pt``/``.bin``/``.safetensors`` file safely.

    The format is detected from the bytes, not the suffix, so a renamed
    file still loads or fails with a clear error.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: empty, truncated, corrupt or unknown format.
        UnsafeCheckpointError: unpickling would need unsafe globals.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint file {path} does not exist')
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f'checkpoint {path} is empty (0 bytes)')
    with open(path, 'rb') as f:
        head = f.read(16)
    if head[:2] == b'PK':
        _check_zip_crc(path)
        state = extract_state_dict(_load_pickle(path), path)
    elif _has_safetensors_header(path, head, size):
        # before the pickle test: a header length like 0x7080 starts with
        # the byte 0x80 that also opens a pickle
        state = _load_safetensors(path)
    elif head[:1] == b'\x80':
        state = extract_state_dict(_load_pickle(path), path)
    elif _is_safetensors(head, size, path):
        state = _load_safetensors(path)
    else:
        raise CheckpointError(
            f'checkpoint {path} is neither a PyTorch file (zip or pickle) '
            f'nor safetensors (first bytes: {head[:8]!r})')
    _warn_unusual_values(state, path)
    return state


def _warn_unusual_values(state: Dict[str, torch.Tensor], path: Path) -> None:
    half = [k for k, v in state.items()
            if v.dtype in (torch.float16, torch.bfloat16)]
    if half:
        warnings.warn(f'checkpoint {path}: {len(half)} tensors are '
                      f'{state[half[0]].dtype} (e.g. {half[0]!r}); they are '
                      f"cast to the model's dtype on load", stacklevel=3)
    bad = [k for k, v in state.items()
           if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        warnings.warn(f'checkpoint {path}: {len(bad)} tensors hold NaN or '
                      f'Inf values (e.g. {bad[:3]})', stacklevel=3)

