"""Files that readers see whole or not at all, and checkpoints that load
with ``torch.load(weights_only=True)``.

A file is written to ``<name>.part`` in its final directory, flushed to
disk, renamed over the final name with ``os.replace`` (atomic on POSIX),
and the directory entry is flushed too. A ``.part`` left by a failure is
deleted; the final file is never touched until the new one is complete.
Used by the training hooks in :mod:`mmbackbone.engine.hooks`.

Example:
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> final = os.path.join(folder, 'notes.txt')
    >>> part = final + PART_SUFFIX
    >>> with removed_on_error(part):
    ...     _ = open(part, 'w').write('complete')
    ...     commit_part(part, final)
    >>> open(final).read(), os.listdir(folder)
    ('complete', ['notes.txt'])
"""
import contextlib
import copyreg
import os
import os.path as osp
from typing import Any, Iterator

from mmengine.logging import HistoryBuffer

PART_SUFFIX = '.part'


def is_local(path: Any) -> bool:
    """Whether ``path`` is on the local file system (no ``scheme://``)."""
    return '://' not in str(path)


def fsync_file(path: str) -> None:
    """Flush the file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Flush the directory's entries (a rename into it) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover (e.g. platforms without dir fds)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def removed_on_error(part: str) -> Iterator[str]:
    """Delete ``part`` when the block raises (anything, even Ctrl-C)."""
    try:
        yield part
    except BaseException:
        if osp.exists(part):
            os.remove(part)
        raise


def commit_part(part: str, final: str) -> None:
    """Flush ``part`` to disk and rename it over ``final``."""
    fsync_file(part)
    os.replace(part, final)


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old or the new file.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), 'last_checkpoint')
        >>> atomic_write_text(path, 'epoch_1.pth')
        >>> open(path).read()
        'epoch_1.pth'
    """
    directory = osp.dirname(osp.abspath(path))
    tmp = f'{path}.{os.getpid()}{PART_SUFFIX}'
    with removed_on_error(tmp):
        with open(tmp, 'w') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    fsync_dir(directory)


def _reduce_history_buffer(buffer):
    """Pickle a HistoryBuffer without its statistics functions.

    mmengine's ``HistoryBuffer.__getstate__`` adds the class's statistics
    methods to the state; pickle protocol 2 (torch's) stores them as
    ``getattr(HistoryBuffer, 'min')``, a global that
    ``torch.load(weights_only=True)`` (torch >= 2.6's default, used by
    mmengine's resume) refuses, so such a checkpoint cannot be resumed
    safely. The methods are class-level and set again on load.
    """
    state = {k: v for k, v in buffer.__dict__.items()
             if k != 'statistics_methods'}
    return copyreg.__newobj__, (type(buffer), ), state


@contextlib.contextmanager
def portable_history_buffers() -> Iterator[None]:
    """Within the block, mmengine's ``HistoryBuffer`` pickles without the
    functions that ``torch.load(weights_only=True)`` refuses.

    Example:
        >>> import pickle
        >>> buffer = HistoryBuffer()
        >>> buffer.update(1.0)
        >>> b'statistics_methods' in pickle.dumps(buffer, protocol=2)
        True
        >>> with portable_history_buffers():
        ...     data = pickle.dumps(buffer, protocol=2)
        >>> b'statistics_methods' in data, float(pickle.loads(data).mean())
        (False, 1.0)
    """
    previous = copyreg.dispatch_table.get(HistoryBuffer)
    copyreg.dispatch_table[HistoryBuffer] = _reduce_history_buffer
    try:
        yield
    finally:
        if previous is None:
            copyreg.dispatch_table.pop(HistoryBuffer, None)
        else:
            copyreg.dispatch_table[HistoryBuffer] = previous
