"""Reading training checkpoints (``--resume``, ``load_from``, tools/test.py).

A training checkpoint written by mmengine holds more than tensors: the
message hub's ``HistoryBuffer`` objects, numpy arrays and scalars, the
optimizer and scheduler states. mmengine reads it with a bare
``torch.load`` (no ``weights_only``; torch >= 2.6 then refuses those
types, and before 2.6 it runs any pickle) and loads the model non-strictly,
so another model's checkpoint gives a random model or a crash in the
optimizer's step. Here:

* :func:`read_training_checkpoint` applies the limits of the weights
  reader (:mod:`mmbackbone.checkpoint.limits`: zip structure and CRCs,
  legacy storage sizes, tensor views) and unpickles with
  ``weights_only=True`` plus numpy's array and scalar types, allowed only
  while this one file is read (a ``torch.serialization.safe_globals``
  context, nothing process-wide). A ``HistoryBuffer`` in the file becomes
  an inert :class:`HistoryBufferRecord` (mmengine's own ``__setstate__``
  would update the class-level statistics table of every buffer in the
  process), and the ``getattr(HistoryBuffer, 'min')`` entries plain
  mmengine pickles for its statistics methods become inert
  :class:`GetattrRecord` objects that are dropped; real buffers are then
  built from the validated arrays
  (:mod:`mmbackbone.engine.message_hub_records`).
* :func:`load_model_state` loads the model state strictly: missing,
  unexpected and mis-shaped keys are an error naming the file.
* :func:`check_optimizer_state` compares the saved optimizer state with
  the built optimizer's parameter groups before it is loaded (both in
  :mod:`mmbackbone.engine.state_checks`).
* :class:`~mmbackbone.engine.runner.SafeLoadRunner` is mmengine's
  ``Runner`` with ``resume`` and ``load_checkpoint`` going through the
  three above; tools/train.py and tools/test.py use it.

All of these are importable from here.

Every error is a :class:`~mmbackbone.checkpoint.CheckpointError` (or
``FileNotFoundError``) naming the file and what to do.
"""
import io
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, List

import torch

from mmbackbone.checkpoint import limits
from mmbackbone.checkpoint.io import CheckpointError, UnsafeCheckpointError

from .message_hub_records import (GETATTR_NAME, HISTORY_BUFFER_FIELDS,
                                  HISTORY_BUFFER_NAME, GetattrRecord,
                                  HistoryBufferRecord, _numpy_globals,
                                  check_runtime_info,
                                  history_buffer_from_record,
                                  rebuild_message_hub,
                                  training_checkpoint_context,
                                  training_checkpoint_globals)
from .state_checks import (PARAM_SHAPED_STATE, PARTIAL_HINT,
                           CheckpointMismatchError, _first_line,
                           check_optimizer_state, load_model_state,
                           model_state_from)

__all__ = [
    'read_training_checkpoint', 'CheckpointMismatchError',
    'HistoryBufferRecord', 'GetattrRecord', 'history_buffer_from_record',
    'training_checkpoint_globals', 'training_checkpoint_context',
    'model_state_from', 'load_model_state', 'check_optimizer_state',
    'HISTORY_BUFFER_NAME', 'GETATTR_NAME', 'HISTORY_BUFFER_FIELDS',
    'PARTIAL_HINT', 'PARAM_SHAPED_STATE'
]


def _blocked_globals(path: Path, message: str) -> List[str]:
    """The globals torch refused (call while our globals are allowed)."""
    if 'GLOBAL' not in message and 'global' not in message:
        return []
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(
            str(path)) or ['unknown']
    except Exception:  # an archive torch cannot list: take the message's
        return sorted(set(re.findall(r'GLOBAL ([\w.]+)', message))) or [
            'unknown']


def _unpickle(path: Path, f: Any) -> Any:
    """``torch.load`` of an open file, on the CPU (see
    :func:`_target_device`)."""
    with training_checkpoint_context():
        try:
            # A file object, not the name: torch would pick a loader by the
            # suffix (.safetensors).
            return torch.load(f, map_location='cpu', weights_only=True)
        except pickle.UnpicklingError as err:
            blocked = _blocked_globals(path, str(err))
            if blocked:
                raise UnsafeCheckpointError(
                    f'checkpoint {path} needs unsafe unpickling (blocked '
                    f'globals: {", ".join(blocked)}); training checkpoints '
                    f'are read with weights_only=True and nothing in them is '
                    f'run. Use a checkpoint written by mmengine or this '
                    f'library\'s training, or re-save the weights with '
                    f'torch.save(state_dict)') from err
            raise CheckpointError(f'checkpoint {path} is corrupt '
                                  f'({_first_line(err)})') from err
        except (RuntimeError, EOFError, OSError, ValueError, TypeError,
                AttributeError, KeyError, IndexError, MemoryError,
                RecursionError, UnicodeDecodeError) as err:
            raise CheckpointError(
                f'checkpoint {path} is truncated or corrupt '
                f'({type(err).__name__}: {_first_line(err)}); use an earlier '
                f'checkpoint or copy the file again') from err


def _read_pickle(path: Path, size: int, legacy: bool) -> Any:
    """Unpickle a torch file after the weights reader's structure checks:
    :func:`~mmbackbone.checkpoint.limits.check_zip` (no compressed,
    overlapping or out-of-file entries; CRCs) or
    :func:`~mmbackbone.checkpoint.limits.check_legacy_storages`."""
    if legacy:
        with limits.NoFileno(io.FileIO(path)) as f:
            limits.check_legacy_storages(path, f, size)
            f.seek(0)
            return _unpickle(path, f)
    with open(path, 'rb') as f:
        try:
            limits.check_zip(path, f, size)
        except CheckpointError as err:
            cause = err.__cause__
            if cause is None:
                raise
            # an archive zipfile cannot open: a cut-short copy, named as
            # tools/test.py and the docs name it
            raise CheckpointError(
                f'checkpoint {path} is truncated or corrupt (a damaged zip '
                f'archive: {_first_line(cause)}); use an earlier checkpoint '
                f'or copy the file again') from cause
        f.seek(0)
        return _unpickle(path, f)


def _tensors(obj: Any, path: Any, limit: int = 10 * limits.MAX_TENSORS
             ) -> Dict[str, torch.Tensor]:
    """Every tensor inside nested dicts, lists and tuples, by its place
    (``'optimizer.state.0.exp_avg'``); each container once."""
    found: Dict[str, torch.Tensor] = {}
    seen = set()
    stack = [('', obj)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, torch.Tensor):
            found.setdefault(where, value)
        elif isinstance(value, (Mapping, list, tuple)):
            if id(value) in seen:
                continue
            seen.add(id(value))
            if len(seen) > limit:
                raise CheckpointError(
                    f'checkpoint {path} holds more than {limit} nested '
                    f'containers; it is not a training checkpoint')
            items = (value.items() if isinstance(value, Mapping)
                     else enumerate(value))
            stack.extend((f'{where}.{k}' if where else str(k), v)
                         for k, v in items)
    return found


def _target_device(map_location: Any, path: Any) -> torch.device:
    """The device ``map_location`` names (checked before the file is read).

    The file is always read on the CPU so that
    :func:`~mmbackbone.checkpoint.limits.check_tensors` sees every view
    before anything is computed on; the checked tensors are then moved
    (:func:`_to_device`). ``model.load_state_dict`` and the optimizer's
    ``load_state_dict`` copy to their parameters' device in any case.
    """
    if map_location is None:
        return torch.device('cpu')
    if isinstance(map_location, (str, torch.device)):
        try:
            return torch.device(map_location)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f'map_location={map_location!r} for checkpoint '
                             f'{path} is not a device ({_first_line(err)})'
                             ) from err
    raise TypeError(
        f'map_location={map_location!r} for checkpoint {path}: give a device '
        f"name such as 'cpu' or 'cuda:0' or a torch.device; a training "
        f'checkpoint is read on the CPU, checked, then moved')


def _to_device(value: Any, device: torch.device) -> Any:
    """``value`` with its tensors on ``device`` (containers kept)."""
    if device.type == 'cpu':
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):  # in place: keeps _metadata and order
        for key, item in value.items():
            value[key] = _to_device(item, device)
        return value
    if isinstance(value, list):
        value[:] = [_to_device(item, device) for item in value]
        return value
    if type(value) is tuple:
        return tuple(_to_device(item, device) for item in value)
    return value


def read_training_checkpoint(path: Any, map_location: Any = 'cpu',
                             what: str = 'checkpoint') -> Dict[str, Any]:
    """Read a checkpoint for ``load_from``, ``--resume`` or testing.

    PyTorch files (zip or legacy) are checked as the weights reader
    checks them (:mod:`mmbackbone.checkpoint.limits`), unpickled on the
    CPU with ``weights_only=True`` and the globals of
    :func:`training_checkpoint_globals` for this read only, and every
    tensor in them (model, optimizer, anything else) goes through
    :func:`~mmbackbone.checkpoint.limits.check_tensors`. Other formats
    (safetensors) go through :func:`~mmbackbone.checkpoint.read_state_dict`
    and come back as ``{'state_dict': ...}``. Message-hub buffers are
    rebuilt from validated arrays; the statistics methods plain mmengine
    pickles with them are dropped, never looked up.

    Args:
        path: a local file.
        map_location: a device name or ``torch.device`` the tensors are
            moved to once checked (default ``'cpu'``).
        what: how the file was named (``'--resume'``, ``'load_from'``), for
            the messages.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: empty, truncated, corrupt, unsafe or malformed.
        TypeError: ``map_location`` is a dict or a function.

    Example:
        >>> import os, tempfile, torch
        >>> path = os.path.join(tempfile.mkdtemp(), 'w.pth')
        >>> torch.save({'state_dict': {'w': torch.ones(2)}}, path)
        >>> read_training_checkpoint(path)['state_dict']['w']
        tensor([1., 1.])
    """
    if not isinstance(path, (str, Path)) or '://' in str(path):
        raise CheckpointError(
            f'{what}={path!r}: only local checkpoint files can be loaded; '
            f'download it and pass the local path')
    path = Path(path)
    device = _target_device(map_location, path)
    if not path.is_file():
        raise FileNotFoundError(f'{what}: checkpoint file {path} does not '
                                f'exist')
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f'{what}: checkpoint {path} is empty (0 bytes)')
    with open(path, 'rb') as f:
        head = f.read(16)
    if head[:2] == b'PK' or (head[:1] == b'\x80' and head[8:9] != b'{'):
        checkpoint = _read_pickle(path, size, legacy=head[:2] != b'PK')
    else:
        # safetensors hold weights only (and anything else is named by the
        # weights reader): read_state_dict judges them
        from mmbackbone.checkpoint import read_state_dict
        checkpoint = {'state_dict': read_state_dict(path)}
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f'{what}: checkpoint {path} holds a {type(checkpoint).__name__}, '
            f'not a dict')
    # the weights reader's limits: views, kinds, bytes viewed per stored
    # byte, for the model state and everything else (optimizer moments)
    limits.check_tensors(_tensors(checkpoint, path), path)
    rebuild_message_hub(checkpoint, path)
    check_runtime_info(checkpoint, path)
    return _to_device(checkpoint, device)
