"""Turn a ``checkpoint`` value into a local file path.

Accepted: a local path; an ``http(s)://`` URL (downloaded once into the
torch hub cache, under a key no other URL shares, kept only when complete
and checked on every load); a ``file://`` URL (read in place, so the file
loaded is the file as it is now); mmengine's ``torchvision://``,
``open-mmlab://`` and ``mmcls://`` names; ``mmbackbone://NAME`` entries of
the weights index (or their mmpretrain model names). An ``mmcls://`` name
the index holds (mmengine's table where the file is indexed, and the mmcls
tutorial's short names, :mod:`mmbackbone.zoo.names`) resolves through the
index: mirror, cache and hash checks included; the rest through mmengine's
table.
"""
import os
from pathlib import Path
from typing import Optional, Union

# The module, not its names: the zoo imports .download, whose package
# (this one) may be mid-import when the zoo is imported first.
from mmbackbone import zoo
from mmbackbone.utils import closest

from .download import cache_dir
from .download import cached_download as _cached_url
from .download import local_path, sha256_of, verify  # noqa: F401

SCHEMES = ('torchvision://', 'open-mmlab://', 'openmmlab://', 'mmcls://',
           'mmbackbone://', 'http://', 'https://', 'file://')


def hub_checkpoint_dir() -> Path:
    """Where downloaded checkpoints are cached
    (``$TORCH_HOME/hub/checkpoints``)."""
    return cache_dir()


def cached_download(url: str, sha256: Optional[str] = None,
                    sha256_prefix: Optional[str] = None,
                    progress: Optional[bool] = None) -> Path:
    """The local file of a URL: ``file://`` in place, ``http(s)://`` through
    the verified download cache (see :mod:`mmbackbone.checkpoint.download`)."""
    if url.startswith('file://'):
        path = local_path(url)
        if sha256 or sha256_prefix:
            verify(path, url=url, sha256=sha256, sha256_prefix=sha256_prefix)
        return path
    return _cached_url(url, sha256=sha256, sha256_prefix=sha256_prefix,
                       progress=progress)


def mmcls_entry(name: str) -> Optional[str]:
    """The weights index entry that ``mmcls://NAME`` stands for, if any
    (:data:`mmbackbone.zoo.names.MMCLS_NAMES`).

    Example:
        >>> mmcls_entry('cspresnext50'), mmcls_entry('vgg16')
        ('cspresnext50.mmpretrain_in1k', None)
    """
    return zoo.MMCLS_NAMES.get(name)


def default_prefix(checkpoint: Union[str, os.PathLike]) -> Optional[str]:
    """The key prefix a scheme implies when the config gives none.

    ``mmcls://NAME`` keeps the ``backbone.`` keys (stripped), as mmengine's
    ``mmcls://`` loader does; ``mmbackbone://NAME`` uses the entry's
    ``prefix``. Anything else: None (the file's keys as they are).

    Example:
        >>> default_prefix('mmcls://regnet-4g'), default_prefix('r50.pth')
        ('backbone', None)
        >>> default_prefix('mmbackbone://resnet50_8xb32_in1k')
        'backbone'
    """
    if not isinstance(checkpoint, str):
        return None
    if checkpoint.startswith('mmcls://'):
        return 'backbone'
    if checkpoint.startswith('mmbackbone://'):
        return zoo.get_weights(checkpoint[len('mmbackbone://'):]).prefix
    return None


def _mmengine_url(checkpoint: str) -> str:
    # Deferred for import cost: mmengine.runner loads its Runner (~0.7 s),
    # which `import mmbackbone` must not pay; only these schemes need it.
    from mmengine.runner import checkpoint as mmckpt
    scheme, name = checkpoint.split('://', 1)
    if scheme == 'torchvision':
        table = mmckpt.get_torchvision_models()
    elif scheme == 'mmcls':
        table = mmckpt.get_mmcls_models()
    else:
        table = dict(mmckpt.get_external_models())
        for old, new in mmckpt.get_deprecated_model_names().items():
            table.setdefault(old, table.get(new))
    if name not in table or table[name] is None:
        known = [*table, *zoo.MMCLS_NAMES] if scheme == 'mmcls' else table
        raise KeyError(f'checkpoint={checkpoint!r}: no model {name!r} under '
                       f'{scheme}://.{closest(name, known)}')
    url = table[name]
    if not url.startswith(('http://', 'https://')):
        url = 'https://download.openmmlab.com/' + url.lstrip('/')
    return url


def resolve_checkpoint(checkpoint: Union[str, os.PathLike]) -> Path:
    """Return a local path for ``checkpoint``, downloading when needed.

    Example:
        >>> resolve_checkpoint('/no/such/file.pth')
        Traceback (most recent call last):
        ...
        FileNotFoundError: checkpoint file /no/such/file.pth does not exist
    """
    if isinstance(checkpoint, os.PathLike):
        checkpoint = os.fspath(checkpoint)
    if not isinstance(checkpoint, str) or not checkpoint:
        raise TypeError(f'checkpoint={checkpoint!r} must be a file path, a '
                        f'URL or one of the schemes {", ".join(SCHEMES)}')
    if checkpoint.startswith('mmbackbone://'):
        return zoo.resolve_weights(checkpoint[len('mmbackbone://'):])
    if checkpoint.startswith(('http://', 'https://', 'file://')):
        return cached_download(checkpoint)
    if checkpoint.startswith('mmcls://') and \
            mmcls_entry(checkpoint[len('mmcls://'):]):
        return zoo.resolve_weights(mmcls_entry(checkpoint[len('mmcls://'):]))
    if checkpoint.startswith(('torchvision://', 'open-mmlab://',
                              'openmmlab://', 'mmcls://')):
        return cached_download(_mmengine_url(checkpoint))
    if '://' in checkpoint:
        raise ValueError(f'checkpoint={checkpoint!r} has an unknown scheme; '
                         f'valid schemes: {", ".join(SCHEMES)}')
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint file {checkpoint} does not exist')
    return path
