"""Turn a ``checkpoint`` value into a local file path.

Accepted: a local path; an ``http(s)://`` or ``file://`` URL (downloaded
once into the torch hub cache); mmengine's ``torchvision://``,
``open-mmlab://`` and ``mmcls://`` names; ``mmbackbone://NAME`` entries of
the weights index.
"""
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional, Union

from mmbackbone.utils import closest

SCHEMES = ('torchvision://', 'open-mmlab://', 'openmmlab://', 'mmcls://',
           'mmbackbone://', 'http://', 'https://', 'file://')


def hub_checkpoint_dir() -> Path:
    """Where downloaded checkpoints are cached (``$TORCH_HOME/hub/checkpoints``)."""
    import torch.hub
    return Path(torch.hub.get_dir()) / 'checkpoints'


def sha256_of(path: Union[str, Path]) -> str:
    """The SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def check_hash(path: Path, sha256: Optional[str]) -> None:
    """Raise if ``path`` does not start with the expected SHA-256 (prefix)."""
    if not sha256:
        return
    actual = sha256_of(path)
    if not actual.startswith(sha256.lower()):
        raise ValueError(f'checkpoint {path} has SHA-256 {actual}, expected '
                         f'{sha256}; the file is corrupt or not the one '
                         f'published. Delete it and download again')


def download(url: str, dst: Path, sha256: Optional[str] = None,
             progress: bool = True) -> Path:
    """Download ``url`` to ``dst`` (atomically), checking the hash.

    Raises:
        FileNotFoundError: the URL cannot be reached (offline, 404, ...);
            the message names the URL and where to put the file by hand.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, suffix='.partial')
    os.close(fd)
    try:
        if url.startswith('file://'):
            src = urllib.request.url2pathname(urllib.parse.urlparse(url).path)
            shutil.copyfile(src, tmp)
        else:
            import torch.hub
            torch.hub.download_url_to_file(url, tmp, progress=progress)
        check_hash(Path(tmp), sha256)
        os.replace(tmp, dst)
    except (urllib.error.URLError, OSError, ConnectionError) as err:
        raise FileNotFoundError(
            f'cannot download checkpoint {url} ({err}). Download it on a '
            f'machine with network access and pass the local path as '
            f'checkpoint=..., or place it at {dst}') from err
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dst


def cached_download(url: str, sha256: Optional[str] = None,
                    filename: Optional[str] = None) -> Path:
    """The cached copy of ``url``, downloading it on first use."""
    name = filename or Path(urllib.parse.urlparse(url).path).name
    dst = hub_checkpoint_dir() / name
    if dst.is_file():
        check_hash(dst, sha256)
        return dst
    return download(url, dst, sha256)


def _mmengine_url(checkpoint: str) -> str:
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
        raise KeyError(f'checkpoint={checkpoint!r}: no model {name!r} under '
                       f'{scheme}://.{closest(name, table)}')
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
        from mmbackbone.zoo import resolve_weights
        return resolve_weights(checkpoint[len('mmbackbone://'):])
    if checkpoint.startswith(('http://', 'https://', 'file://')):
        return cached_download(checkpoint)
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
