"""Message-hub records: what mmengine's ``HistoryBuffer`` unpickles to here.

A training checkpoint written by mmengine holds the message hub's
``HistoryBuffer`` objects and, in plain mmengine's pickles, the
``getattr(HistoryBuffer, 'min')`` entries of its statistics methods.
While :func:`training_checkpoint_context` is active, both unpickle to inert
stand-ins (:class:`HistoryBufferRecord`, :class:`GetattrRecord`) whose
construction runs no code of mmengine; :func:`rebuild_message_hub` then
builds real buffers from the validated arrays, drops the statistics
methods and refuses stand-ins found anywhere else.
:func:`check_runtime_info` checks the message-hub entries mmengine's hooks
turn into file names. :func:`~mmbackbone.engine.resume.read_training_checkpoint`
uses all of them.

Example:
    >>> import numpy as np
    >>> record = HistoryBufferRecord()
    >>> record.__setstate__({'_log_history': np.array([0.5, 0.25]),
    ...                      '_count_history': np.array([1, 1]),
    ...                      'max_length': 10})
    >>> checkpoint = {'message_hub': {
    ...     'log_scalars': {'train/loss': record},
    ...     'runtime_info': {}, 'resumed_keys': {}}}
    >>> rebuild_message_hub(checkpoint, 'epoch_1.pth')
    >>> float(checkpoint['message_hub']['log_scalars']['train/loss'].current())
    0.25
"""
import contextlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Iterator, List, Tuple

import torch

from mmbackbone.checkpoint.io import CheckpointError, InertValue

HISTORY_BUFFER_NAME = 'mmengine.logging.history_buffer.HistoryBuffer'
GETATTR_NAME = 'builtins.getattr'
#: Names in a HistoryBuffer's pickled state that are read; any other is an
#: error (mmengine's ``statistics_methods`` is never loaded).
HISTORY_BUFFER_FIELDS = ('_log_history', '_count_history', 'max_length')


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


def rebuild_message_hub(checkpoint: dict, path: Any) -> None:
    """Replace the records of ``checkpoint['message_hub']`` in place.

    Each ``log_scalars`` entry becomes a real ``HistoryBuffer``
    (:func:`history_buffer_from_record`); a record anywhere else in the
    checkpoint is refused.

    Args:
        checkpoint: the unpickled checkpoint (changed in place).
        path: the file it came from, for the messages.

    Raises:
        CheckpointError: the message hub is malformed, or a record lies
            outside ``message_hub.log_scalars``.
    """
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


def check_runtime_info(checkpoint: dict, path: Any) -> None:
    """Check the message-hub entries mmengine's hooks turn into file names.

    Call after :func:`rebuild_message_hub` (which checks that
    ``runtime_info`` is a dict).

    Args:
        checkpoint: the checkpoint, its message hub rebuilt.
        path: the file it came from, for the messages.

    Raises:
        CheckpointError: ``keep_ckpt_ids`` is not a list of non-negative
            ints, or ``last_ckpt`` / ``best_ckpt*`` is not a path string.
    """
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
