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
  built from the validated arrays.
* :func:`load_model_state` loads the model state strictly: missing,
  unexpected and mis-shaped keys are an error naming the file.
* :func:`check_optimizer_state` compares the saved optimizer state with
  the built optimizer's parameter groups before it is loaded.
* :class:`~mmbackbone.engine.runner.SafeLoadRunner` is mmengine's
  ``Runner`` with ``resume`` and ``load_checkpoint`` going through the
  three above; tools/train.py and tools/test.py use it.

Every error is a :class:`~mmbackbone.checkpoint.CheckpointError` (or
``FileNotFoundError``) naming the file and what to do.
"""
import contextlib
import io
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import torch

from mmbackbone.checkpoint import limits
from mmbackbone.checkpoint.io import (CheckpointError, InertValue,
                                      UnsafeCheckpointError)

HISTORY_BUFFER_NAME = 'mmengine.logging.history_buffer.HistoryBuffer'
GETATTR_NAME = 'builtins.getattr'
#: Names in a HistoryBuffer's pickled state that are read; any other is an
#: error (mmengine's ``statistics_methods`` is never loaded).
HISTORY_BUFFER_FIELDS = ('_log_history', '_count_history', 'max_length')
#: How to fix a checkpoint that does not fit the model.
PARTIAL_HINT = (
    'to start from part of a checkpoint (e.g. its backbone), use '
    "model.backbone.init_cfg=dict(type='Pretrained', checkpoint=..., "
    "prefix='backbone') instead of load_from / --resume")
#: Optimizer state entries that have the shape of their parameter.
PARAM_SHAPED_STATE = ('momentum_buffer', 'exp_avg', 'exp_avg_sq',
                      'max_exp_avg_sq', 'square_avg', 'acc_delta', 'sum',
                      'ax', 'grad_avg', 'prev')


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's model or optimizer state does not fit the built one."""


class HistoryBufferRecord:
    """What a pickled mmengine ``HistoryBuffer`` unpickles to here.

    It stores the pickled state and does nothing else: no class-level
    table is touched. :func:`history_buffer_from_record` builds the real
    buffer from it.
    """

    def __init__(self) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class GetattrRecord(InertValue):
    """What ``builtins.getattr`` unpickles to here: its arguments, stored.

    mmengine's ``HistoryBuffer.__getstate__`` adds the class's statistics
    methods to each buffer's state, and pickle protocol 2 (torch's) writes
    ``HistoryBuffer.min`` as ``getattr(HistoryBuffer, 'min')``. Every
    checkpoint plain mmengine writes (``Runner.save_checkpoint``,
    ``CheckpointHook``) holds them. Here the call only records
    ``(HistoryBufferRecord, 'min')``; getattr is never called, and
    :func:`history_buffer_from_record` drops the methods (they are
    class-level and already set).
    """
    origin = GETATTR_NAME

    @property
    def names_statistics_method(self) -> bool:
        """``getattr(HistoryBuffer, '<name>')`` and nothing else."""
        args = self.__dict__.get('args', ())
        return (len(args) == 2 and args[0] is HistoryBufferRecord
                and isinstance(args[1], str) and args[1].isidentifier()
                and 'state' not in self.__dict__)


def _numpy_globals() -> List[Any]:
    import numpy as np
    try:
        multiarray = np._core.multiarray
    except AttributeError:  # numpy < 2
        multiarray = np.core.multiarray
    found: List[Any] = [np.ndarray, np.dtype]
    found += [type(np.dtype(name)) for name in
              ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8',
               'float16', 'float32', 'float64')]
    # numpy 2 pickles these under numpy._core, numpy 1 under numpy.core:
    # accept both spellings so checkpoints move between the two.
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        found.append((multiarray._reconstruct, f'{module}._reconstruct'))
        found.append((multiarray.scalar, f'{module}.scalar'))
    return found


def training_checkpoint_globals() -> List[Any]:
    """The globals a training checkpoint may use besides torch's own.

    numpy arrays, dtypes and scalars, ``HistoryBuffer`` mapped to the
    inert :class:`HistoryBufferRecord` and ``getattr`` to the inert
    :class:`GetattrRecord`.
    """
    return _numpy_globals() + [(HistoryBufferRecord, HISTORY_BUFFER_NAME),
                               (GetattrRecord, GETATTR_NAME)]


@contextlib.contextmanager
def training_checkpoint_context() -> Iterator[None]:
    """Allow :func:`training_checkpoint_globals` while the block runs.

    Only entries not already allowed are added (torch's context removes on
    exit what it was given, even entries that were there before).

    Raises:
        RuntimeError: torch's process-wide safe globals hold mmengine's real
            ``HistoryBuffer`` or the builtin ``getattr``
            (``add_safe_globals``): both would answer to the name of a
            stand-in, and unpickling the real ones runs code (the buffer's
            ``__setstate__`` changes class-level state; ``getattr`` reads
            any attribute of any allowed object).
    """
    from mmengine.logging import HistoryBuffer
    already = torch.serialization.get_safe_globals()
    for real in (HistoryBuffer, getattr):
        if any(g is real or (isinstance(g, tuple) and g[0] is real)
               for g in already):
            name = ("mmengine's HistoryBuffer" if real is HistoryBuffer
                    else 'the builtin getattr')
            raise RuntimeError(
                f"torch.serialization's safe globals hold {name} (added with "
                f'add_safe_globals); loading it from a file runs code (a '
                f"HistoryBuffer changes the statistics table of every buffer "
                f'in the process). Remove it '
                f'(torch.serialization.clear_safe_globals()); training '
                f'checkpoints are read without it')
    extra = [g for g in training_checkpoint_globals() if g not in already]
    with torch.serialization.safe_globals(extra):
        yield


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ''


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


def _walk(obj: Any, limit: int = 100_000) -> Iterator[Tuple[str, Any]]:
    """Every (path, value) inside nested dicts, lists and tuples."""
    stack = [('', obj)]
    seen = 0
    while stack:
        where, value = stack.pop()
        seen += 1
        if seen > limit:
            raise CheckpointError(f'more than {limit} nested values')
        yield where, value
        if isinstance(value, Mapping):
            stack.extend((f'{where}[{k!r}]', v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((f'{where}[{i}]', v) for i, v in enumerate(value))


def history_buffer_from_record(record: HistoryBufferRecord, path: Any,
                               key: str):
    """A real ``HistoryBuffer`` from a record's validated arrays."""
    import numpy as np
    from mmengine.logging import HistoryBuffer
    state = record.state
    where = f'checkpoint {path}: message_hub log scalar {key!r}'
    if not isinstance(state, dict):
        raise CheckpointError(f'{where} is not a HistoryBuffer state')
    methods = state.get('statistics_methods')
    if isinstance(methods, dict) and all(
            isinstance(k, str) and isinstance(v, GetattrRecord)
            and v.names_statistics_method for k, v in methods.items()):
        # plain mmengine's getattr(HistoryBuffer, 'min') entries: dropped,
        # never looked up (the class keeps its own table)
        state = {k: v for k, v in state.items() if k != 'statistics_methods'}
    unknown = sorted(map(str, set(state) - set(HISTORY_BUFFER_FIELDS)))
    if unknown:
        raise CheckpointError(
            f'{where} holds {unknown}; only {list(HISTORY_BUFFER_FIELDS)} are '
            f'read (statistics functions are never loaded from a file). Use '
            f"a checkpoint written by mmengine's Runner or tools/train.py")
    log = state.get('_log_history')
    count = state.get('_count_history')
    max_length = state.get('max_length', 1000000)
    for name, array in (('_log_history', log), ('_count_history', count)):
        if not (isinstance(array, np.ndarray) and array.ndim == 1
                and array.dtype.kind in 'biuf'):
            raise CheckpointError(f'{where}: {name} is not a 1-D numeric '
                                  f'array')
    if len(log) != len(count):
        raise CheckpointError(f'{where}: {len(log)} values but '
                              f'{len(count)} counts')
    if isinstance(max_length, bool) or not isinstance(
            max_length, (int, np.integer)) or max_length < 1:
        raise CheckpointError(f'{where}: max_length={max_length!r} is not a '
                              f'positive int')
    return HistoryBuffer(log.copy(), count.copy(), int(max_length))


def _rebuild_message_hub(checkpoint: dict, path: Any) -> None:
    hub = checkpoint.get('message_hub')
    if hub is not None:
        _rebuild_log_scalars(checkpoint, hub, path)
    _refuse_stray_records(checkpoint, path)


def _rebuild_log_scalars(checkpoint: dict, hub: Any, path: Any) -> None:
    if not isinstance(hub, Mapping) or not all(
            isinstance(hub.get(k), Mapping)
            for k in ('log_scalars', 'runtime_info', 'resumed_keys')):
        raise CheckpointError(
            f'checkpoint {path}: message_hub is not a MessageHub state '
            f'(log_scalars, runtime_info, resumed_keys)')
    scalars = OrderedDict()
    for key, value in hub['log_scalars'].items():
        if not isinstance(value, HistoryBufferRecord):
            raise CheckpointError(
                f'checkpoint {path}: message_hub log scalar {key!r} is a '
                f'{type(value).__name__}, not a HistoryBuffer')
        scalars[key] = history_buffer_from_record(value, path, key)
    hub = dict(hub)
    hub['log_scalars'] = scalars
    checkpoint['message_hub'] = hub


def _refuse_stray_records(checkpoint: dict, path: Any) -> None:
    """Stand-ins left anywhere else mean a file mmengine did not write."""
    try:
        found = [(where, value) for where, value in _walk(checkpoint)
                 if isinstance(value, (HistoryBufferRecord, GetattrRecord))]
    except CheckpointError as err:
        raise CheckpointError(f'checkpoint {path} holds {err}; it is not a '
                              f'training checkpoint') from None
    if found:
        where, value = found[0]
        what = ('a HistoryBuffer' if isinstance(value, HistoryBufferRecord)
                else 'a getattr call')
        raise CheckpointError(
            f'checkpoint {path}: {what} at {where}, outside the statistics '
            f'of message_hub.log_scalars; it is not a training checkpoint '
            f'written by mmengine')


def _check_runtime_info(checkpoint: dict, path: Any) -> None:
    """The message-hub entries mmengine's hooks turn into file names."""
    hub = checkpoint.get('message_hub')
    if not hub:
        return
    info = hub['runtime_info']
    ids = info.get('keep_ckpt_ids')
    if ids is not None and not (
            isinstance(ids, (list, tuple)) and all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0
                for i in ids)):
        raise CheckpointError(
            f'checkpoint {path}: message_hub keep_ckpt_ids={ids!r} is not a '
            f'list of epoch or iteration numbers; the checkpoint hook would '
            f'delete files named from it')
    for key, value in info.items():
        if (key in ('last_ckpt', 'best_ckpt') or key.startswith(
                'best_ckpt_')) and not isinstance(value, str):
            raise CheckpointError(f'checkpoint {path}: message_hub {key}='
                                  f'{value!r} is not a path')


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
    _rebuild_message_hub(checkpoint, path)
    _check_runtime_info(checkpoint, path)
    return _to_device(checkpoint, device)


# ------------------------------------------------------------- model state
def _brief(keys: Sequence[str], n: int = 5) -> str:
    keys = list(keys)
    shown = ', '.join(repr(k) for k in keys[:n])
    return shown + (f' and {len(keys) - n} more' if len(keys) > n else '')


def model_state_from(checkpoint: Mapping, path: Any,
                     revise_keys: Sequence[Tuple[str, str]] = (
                         (r'^module\.', ''), )) -> 'OrderedDict':
    """The model state of a checkpoint: ``state_dict`` or the top level,
    tensors only, with ``revise_keys`` applied (mmengine's convention)."""
    state = checkpoint.get('state_dict', checkpoint)
    if not isinstance(state, Mapping):
        raise CheckpointError(f'checkpoint {path}: state_dict is a '
                              f'{type(state).__name__}, not a dict')
    odd = [str(k) for k, v in state.items()
           if not isinstance(v, torch.Tensor)]
    if state is checkpoint:  # a bare state dict: other keys are not weights
        state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    elif odd:
        raise CheckpointError(f'checkpoint {path}: state_dict entries '
                              f'{_brief(odd)} are not tensors')
    if not state:
        raise CheckpointError(f'checkpoint {path} holds no model weights '
                              f'(keys: {_brief(sorted(map(str, checkpoint)))})')
    bad = [k for k, v in state.items()
           if v.layout != torch.strided or v.is_meta or v.is_quantized]
    if bad:
        raise CheckpointError(
            f'checkpoint {path}: tensors {_brief(bad)} are sparse, meta or '
            f'quantized; the model takes dense weights. Re-save them dense')
    revised = OrderedDict()
    for key, value in state.items():
        for pattern, replacement in revise_keys:
            key = re.sub(pattern, replacement, key)
        revised[key] = value
    metadata = getattr(state, '_metadata', None)
    if metadata is not None:
        revised._metadata = metadata  # type: ignore[attr-defined]
    return revised


_SIZE_MISMATCH = re.compile(
    r'size mismatch for ([^:]+): copying a param with shape torch\.Size\('
    r'(\[[^\]]*\])\) from checkpoint, the shape in current model is '
    r'torch\.Size\((\[[^\]]*\])\)')


def load_model_state(model: torch.nn.Module, state: Mapping, path: Any,
                     strict: bool = True) -> None:
    """Load ``state`` into ``model``; any mismatch is an error.

    With ``strict`` (the default) missing or unexpected keys are an error;
    without it they are allowed, but a shape mismatch or no common key at
    all still is. On an error the model may be partly loaded: discard it.

    Raises:
        CheckpointMismatchError: naming the file, the keys and the fix.
    """
    own = model.state_dict()
    complex_into_real = [k for k, v in state.items()
                         if v.is_complex() and k in own
                         and not own[k].is_complex()]
    if complex_into_real:
        raise CheckpointMismatchError(
            f'checkpoint {path}: tensors {_brief(complex_into_real)} are '
            f'complex; the model\'s are real. It is not a checkpoint of '
            f'this model')
    if not set(state) & set(own):
        raise CheckpointMismatchError(
            f'checkpoint {path} shares no key with the model (checkpoint: '
            f'{_brief(sorted(state), 3)}; model: {_brief(sorted(own), 3)}); '
            f'it is another model\'s checkpoint. Check the config, or '
            f'{PARTIAL_HINT}')
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        found = _SIZE_MISMATCH.findall(str(err))
        if not found:
            raise CheckpointMismatchError(
                f'checkpoint {path} does not fit the model '
                f'({_first_line(err)})') from err
        listed = '; '.join(f'{k}: {a} in the file, {b} in the model'
                           for k, a, b in found[:5])
        more = f' and {len(found) - 5} more' if len(found) > 5 else ''
        raise CheckpointMismatchError(
            f'checkpoint {path} does not fit the model: {len(found)} '
            f'tensors have other shapes ({listed}{more}). It was trained '
            f'with another config; use that config, or {PARTIAL_HINT}'
        ) from None
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f'{len(missing)} missing ({_brief(missing)})')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected '
                         f'({_brief(unexpected)})')
        raise CheckpointMismatchError(
            f'checkpoint {path} does not fit the model: keys '
            f'{"; ".join(parts)}. It was trained with another config; use '
            f'that config, or {PARTIAL_HINT}')


# --------------------------------------------------------- optimizer state
def _optimizers(optim_wrapper) -> Dict[str, torch.optim.Optimizer]:
    from mmengine.optim import OptimWrapperDict
    if isinstance(optim_wrapper, OptimWrapperDict):
        return {name: w.optimizer for name, w in optim_wrapper.items()}
    return {'': optim_wrapper.optimizer}


def check_optimizer_state(optim_wrapper, saved: Any, path: Any) -> None:
    """Refuse an optimizer state that does not fit ``optim_wrapper``.

    Compares the number of parameter groups, the parameters per group and
    the shape of every per-parameter state tensor (momentum, Adam moments)
    with the built optimizer, and the hyperparameters each group needs.

    Raises:
        CheckpointMismatchError: naming the file, the group and the fix.
    """
    hint = ('the optimizer or the trainable parameters differ from the run '
            'that wrote it (optim_wrapper, paramwise_cfg, frozen_stages). '
            'Resume with the same config, or start from its weights with '
            'load_from and without --resume')
    optimizers = _optimizers(optim_wrapper)
    if not isinstance(saved, Mapping):
        raise CheckpointMismatchError(f'checkpoint {path}: optimizer state '
                                      f'is not a dict')
    states = {'': saved} if '' in optimizers else saved
    for name, optimizer in optimizers.items():
        where = f'checkpoint {path}: optimizer{f" {name!r}" if name else ""}'
        state = states.get(name)
        if not isinstance(state, Mapping) or not isinstance(
                state.get('param_groups'), list) or not isinstance(
                state.get('state'), Mapping):
            raise CheckpointMismatchError(
                f'{where} state is missing or malformed (no param_groups / '
                f'state); {hint}')
        groups = state['param_groups']
        if len(groups) != len(optimizer.param_groups):
            raise CheckpointMismatchError(
                f'{where} has {len(groups)} parameter groups, the built '
                f'optimizer {len(optimizer.param_groups)}; {hint}')
        for index, (group, built) in enumerate(
                zip(groups, optimizer.param_groups)):
            ids = group.get('params') if isinstance(group, Mapping) else None
            if not isinstance(ids, list) or len(ids) != len(built['params']):
                count = len(ids) if isinstance(ids, list) else '?'
                raise CheckpointMismatchError(
                    f'{where} group {index} has {count} parameters, the '
                    f'built one {len(built["params"])}; {hint}')
            needed = sorted(k for k in built if k != 'params'
                            and k not in group and k not in (
                                'foreach', 'differentiable', 'fused',
                                'capturable', 'maximize',
                                'decoupled_weight_decay', 'initial_lr'))
            if needed:
                raise CheckpointMismatchError(
                    f'{where} group {index} lacks {needed}: it was written '
                    f'by another optimizer type; {hint}')
            for pid, param in zip(ids, built['params']):
                entry = state['state'].get(pid)
                if entry is None:
                    continue
                if not isinstance(entry, Mapping):
                    raise CheckpointMismatchError(
                        f'{where}: state of parameter {pid} is not a dict')
                for key, value in entry.items():
                    if key in PARAM_SHAPED_STATE and isinstance(
                            value, torch.Tensor) and \
                            value.shape != param.shape:
                        raise CheckpointMismatchError(
                            f'{where}: {key} of parameter {pid} (group '
                            f'{index}) has shape {list(value.shape)}, the '
                            f'parameter {list(param.shape)}; {hint}')
