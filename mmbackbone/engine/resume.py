"""Reading training checkpoints (``--resume``, ``load_from``, tools/test.py).

A training checkpoint written by mmengine holds more than tensors: the
message hub's ``HistoryBuffer`` objects, numpy arrays and scalars, the
optimizer and scheduler states. mmengine reads it with a bare
``torch.load`` (no ``weights_only``; torch >= 2.6 then refuses those
types, and before 2.6 it runs any pickle) and loads the model non-strictly,
so another model's checkpoint gives a random model or a crash in the
optimizer's step. Here:

* :func:`read_training_checkpoint` unpickles with ``weights_only=True``
  plus numpy's array and scalar types, allowed only while this one file is
  read (a ``torch.serialization.safe_globals`` context, nothing
  process-wide). A ``HistoryBuffer`` in the file becomes an inert
  :class:`HistoryBufferRecord` (mmengine's own ``__setstate__`` would
  update the class-level statistics table of every buffer in the process);
  real buffers are then built from its validated arrays.
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
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import torch

from mmbackbone.checkpoint.io import CheckpointError, UnsafeCheckpointError

HISTORY_BUFFER_NAME = 'mmengine.logging.history_buffer.HistoryBuffer'
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

    numpy arrays, dtypes and scalars, and ``HistoryBuffer`` mapped to the
    inert :class:`HistoryBufferRecord`.
    """
    return _numpy_globals() + [(HistoryBufferRecord, HISTORY_BUFFER_NAME)]


@contextlib.contextmanager
def training_checkpoint_context() -> Iterator[None]:
    """Allow :func:`training_checkpoint_globals` while the block runs.

    Only entries not already allowed are added (torch's context removes on
    exit what it was given, even entries that were there before).

    Raises:
        RuntimeError: torch's process-wide safe globals hold mmengine's real
            ``HistoryBuffer`` (``add_safe_globals``), whose unpickling
            changes class-level state; both would answer to one name.
    """
    from mmengine.logging import HistoryBuffer
    already = torch.serialization.get_safe_globals()
    if any(g is HistoryBuffer or (isinstance(g, tuple) and g[0] is
                                  HistoryBuffer) for g in already):
        raise RuntimeError(
            "torch.serialization's safe globals hold mmengine's HistoryBuffer "
            '(added with add_safe_globals); loading it from a file changes '
            'the statistics table of every buffer in the process. Remove it '
            '(torch.serialization.clear_safe_globals()); training '
            'checkpoints are read without it')
    extra = [g for g in training_checkpoint_globals() if g not in already]
    with torch.serialization.safe_globals(extra):
        yield


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ''


def _check_zip(path: Path) -> None:
    """What torch.save never writes, refused before torch allocates."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            compressed = [i.filename for i in infos
                          if i.compress_type != zipfile.ZIP_STORED]
            if compressed:
                raise CheckpointError(
                    f'checkpoint {path} has compressed zip entries (e.g. '
                    f'{compressed[0]!r}); torch.save never writes them. '
                    f'Re-save it with torch.save')
            size = path.stat().st_size
            declared = sum(i.file_size for i in infos)
            if declared > size:
                raise CheckpointError(
                    f'checkpoint {path} declares {declared} bytes of entries '
                    f'in a {size}-byte file; it is truncated or corrupt')
            bad = archive.testzip()
    except zipfile.BadZipFile as err:
        raise CheckpointError(
            f'checkpoint {path} is truncated or corrupt ({_first_line(err)}); '
            f'use an earlier checkpoint or copy the file again') from err
    if bad is not None:
        raise CheckpointError(f'checkpoint {path} is corrupt: entry {bad!r} '
                              f'fails its CRC check; copy the file again')


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


def _unpickle(path: Path, map_location: Any) -> Any:
    with training_checkpoint_context():
        try:
            with open(path, 'rb') as f:
                return torch.load(f, map_location=map_location,
                                  weights_only=True)
        except pickle.UnpicklingError as err:
            blocked = _blocked_globals(path, str(err))
            if blocked:
                raise UnsafeCheckpointError(
                    f'checkpoint {path} needs unsafe unpickling (blocked '
                    f'globals: {", ".join(blocked)}); training checkpoints '
                    f'are read with weights_only=True and nothing in them is '
                    f'run. Use a checkpoint written by this library\'s '
                    f'training, or re-save the weights with '
                    f'torch.save(state_dict)') from err
            raise CheckpointError(f'checkpoint {path} is corrupt '
                                  f'({_first_line(err)})') from err
        except (RuntimeError, EOFError, OSError, ValueError, TypeError,
                AttributeError, KeyError, IndexError, MemoryError,
                RecursionError) as err:
            raise CheckpointError(
                f'checkpoint {path} is truncated or corrupt '
                f'({type(err).__name__}: {_first_line(err)}); use an earlier '
                f'checkpoint or copy the file again') from err


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
    unknown = sorted(map(str, set(state) - set(HISTORY_BUFFER_FIELDS)))
    if unknown:
        raise CheckpointError(
            f'{where} holds {unknown}; only {list(HISTORY_BUFFER_FIELDS)} are '
            f'read (statistics functions are never loaded from a file). Use '
            f'a checkpoint written by tools/train.py')
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
    if hub is None:
        return
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
    try:
        found = [where for where, value in _walk(checkpoint)
                 if isinstance(value, HistoryBufferRecord)]
    except CheckpointError as err:
        raise CheckpointError(f'checkpoint {path} holds {err}; it is not a '
                              f'training checkpoint') from None
    if found:
        raise CheckpointError(
            f'checkpoint {path}: a HistoryBuffer at {found[0]}, outside '
            f'message_hub.log_scalars; it is not a training checkpoint '
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

    PyTorch files are unpickled with ``weights_only=True`` and the globals
    of :func:`training_checkpoint_globals` for this read only; other
    formats (safetensors) go through
    :func:`~mmbackbone.checkpoint.read_state_dict` and come back as
    ``{'state_dict': ...}``. Message-hub buffers are rebuilt from
    validated arrays.

    Args:
        path: a local file.
        map_location: as for ``torch.load``.
        what: how the file was named (``'--resume'``, ``'load_from'``), for
            the messages.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: empty, truncated, corrupt, unsafe or malformed.

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
    if not path.is_file():
        raise FileNotFoundError(f'{what}: checkpoint file {path} does not '
                                f'exist')
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f'{what}: checkpoint {path} is empty (0 bytes)')
    with open(path, 'rb') as f:
        head = f.read(4)
    if head[:2] == b'PK':
        _check_zip(path)
        checkpoint = _unpickle(path, map_location)
    else:
        # legacy pickles and safetensors hold weights only: the weights
        # reader judges them
        from mmbackbone.checkpoint import read_state_dict
        checkpoint = {'state_dict': read_state_dict(path)}
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f'{what}: checkpoint {path} holds a {type(checkpoint).__name__}, '
            f'not a dict')
    _rebuild_message_hub(checkpoint, path)
    _check_runtime_info(checkpoint, path)
    return checkpoint


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
