"""Read a checkpoint file into a flat ``{key: Tensor}`` dict, safely.

Pickled files go through ``torch.load(weights_only=True)`` with the
minimum of globals (:func:`weights_globals`); safetensors through the
safetensors library after its header is bounded. Nothing in a file can
run code or change state outside the objects it builds: a file that
needs other globals fails with :class:`UnsafeCheckpointError`, and what
a file declares is checked against its size before anything is allocated
(:mod:`mmbackbone.checkpoint.limits`).
"""
import io
import pickle
import threading
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Union

import torch

from . import limits

#: Containers that hold the weights inside training checkpoints.
STATE_DICT_KEYS = ('state_dict', 'model', 'module', 'model_state',
                   'state_dict_ema', 'model_ema')


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or unreadable."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint needs globals that could run code."""


def _allowed_globals():
    """The real classes training checkpoints carry besides tensors.

    For the resume path only, which rebuilds mmengine's buffers itself:
    unpickling a real ``HistoryBuffer`` calls its ``__setstate__``, which
    writes the file's entries into the class-level statistics table.
    Weights files use :func:`weights_globals` instead.
    """
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


allowed_globals = _allowed_globals  # public: the resume path's globals


class InertValue:
    """A non-tensor value of a weights file, kept as the file's raw parts.

    Published checkpoints carry numpy scalars and arrays in ``meta`` and
    mmengine ``HistoryBuffer`` objects in ``message_hub``. Weights files
    never need them: each such global is read as a subclass of this one,
    whose construction and ``__setstate__`` only store their arguments on
    the instance, so no code of numpy or mmengine runs and no class-level
    or global state changes.
    """
    origin = ''  #: the global this stands for, e.g. ``numpy.dtype``

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        self.__dict__['args'] = args
        return self

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__['state'] = state

    def __repr__(self):
        return f'<{self.origin} from a checkpoint, not rebuilt>'


#: The globals published weights files carry besides torch's own.
INERT_GLOBALS = (
    'numpy.dtype', 'numpy.ndarray',
    'numpy.core.multiarray._reconstruct', 'numpy.core.multiarray.scalar',
    'numpy._core.multiarray._reconstruct', 'numpy._core.multiarray.scalar',
    'mmengine.logging.history_buffer.HistoryBuffer',
    # protocol 2 pickles HistoryBuffer's statistics methods as
    # getattr(HistoryBuffer, 'min'): a stand-in, never the builtin
    'builtins.getattr',
)
_STAND_INS = {name: type(name.rsplit('.', 1)[-1], (InertValue, ),
                         dict(origin=name, __module__=__name__))
              for name in INERT_GLOBALS}


def weights_globals() -> List[tuple]:
    """The globals a weights file may use besides torch's defaults:
    ``(stand-in class, name)`` pairs for :data:`INERT_GLOBALS`."""
    return [(cls, name) for name, cls in _STAND_INS.items()]


_SAFE_GLOBALS_LOCK = threading.Lock()


@contextmanager
def _only_weights_globals():
    """torch's allow-list is process-wide: a training process adds the
    real training-checkpoint classes (resume needs them). For a weights
    file exactly :func:`weights_globals` apply, whatever else is listed;
    the list is restored afterwards."""
    serialization = torch.serialization
    with _SAFE_GLOBALS_LOCK:
        saved = serialization.get_safe_globals()
        serialization.clear_safe_globals()
        serialization.add_safe_globals(weights_globals())
        try:
            yield
        finally:
            serialization.clear_safe_globals()
            serialization.add_safe_globals(saved)


def _looks_like_safetensors(head: bytes) -> bool:
    """An 8-byte header length, then a JSON object.

    Checked before the pickle test: a header length like 0x7080 starts
    with the byte 0x80 that also opens a pickle. A torch file cannot
    match: zip archives open with ``PK``, legacy files with a fixed magic
    number whose ninth byte is not ``{``. The header itself is judged by
    :func:`~mmbackbone.checkpoint.limits.read_safetensors_header`.
    """
    return len(head) >= 9 and head[8:9] == b'{'


def _load_safetensors(path: Path, f) -> Dict[str, torch.Tensor]:
    limits.read_safetensors_header(path, f, path.stat().st_size)
    from safetensors.torch import load_file
    try:
        return load_file(str(path), device='cpu')
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(f'checkpoint {path}: not a valid safetensors '
                              f'file ({err})') from err


def _load_pickle(path: Path, f, size: int, legacy: bool) -> object:
    try:
        with _only_weights_globals():
            if legacy:
                limits.check_legacy_storages(path, f, size)
                f.seek(0)
            # A file object, not the name: torch would pick a loader by
            # the suffix (.safetensors).
            return torch.load(f, map_location='cpu', weights_only=True)
    except CheckpointError:
        raise
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
        raise CheckpointError(f'checkpoint {path} is corrupt: '
                              f'{message.splitlines()[0] if message else ""}'
                              ) from err
    except RecursionError as err:
        raise CheckpointError(f'checkpoint {path} nests its objects too '
                              f'deeply to read; it is corrupt or hostile'
                              ) from err
    except Exception as err:  # any parse failure of a damaged file
        first = str(err).splitlines()[0] if str(err) else ''
        raise CheckpointError(f'checkpoint {path} is truncated or corrupt '
                              f'({type(err).__name__}: {first})') from err


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
    with open(path, 'rb') as raw:
        head = raw.read(16)
        raw.seek(0)
        if head[:2] == b'PK':
            limits.check_zip(path, raw, size)
            raw.seek(0)
            state = extract_state_dict(
                _load_pickle(path, raw, size, legacy=False), path)
        elif _looks_like_safetensors(head):
            state = _load_safetensors(path, raw)
        elif head[:1] == b'\x80':
            with limits.NoFileno(io.FileIO(path)) as f:
                state = extract_state_dict(
                    _load_pickle(path, f, size, legacy=True), path)
        else:
            raise CheckpointError(
                f'checkpoint {path} is neither a PyTorch file (zip or '
                f'pickle) nor safetensors (first bytes: {head[:8]!r}); '
                f'pass a .pth/.pt/.bin or .safetensors weights file')
    limits.check_tensors(state, path)
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

