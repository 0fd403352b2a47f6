"""Download and verify weights files into the cache.

The cache is ``$TORCH_HOME/hub/checkpoints``. What it promises:

* **Keys that cannot collide.** A file is cached as
  ``<label>-<sha256(url)[:32]><suffix>``: the label (the URL's file name,
  or the index entry's name) is only for people reading the folder; the
  128-bit digest of the full URL makes the key unique, so two URLs that end
  in the same file name (``.../pytorch_model.bin``, ``?id=A`` / ``?id=B``)
  get two files. Labels are reduced to ``[A-Za-z0-9._-]``, so no name from
  an index entry or a URL can leave the cache folder.
* **Only complete, verified files are kept.** A download goes to a
  ``.partial`` file beside its target; the bytes received must equal the
  ``Content-Length`` the server announced, and the SHA-256 must match what
  is known (below). Only then is it renamed into place (``os.replace``).
* **Trust on first use.** When no full SHA-256 is known, the digest of
  the first complete file is recorded in ``mmbackbone-sha256.json`` in the
  cache folder; every later load of that key, from the cache, a mirror or
  a new download, must have the same digest.
* ``file://`` sources are read in place, never copied: the file loaded is
  the file named, as it is now (see :func:`local_path`).

Example:
    >>> a = cache_key('https://a.example/x/pytorch_model.bin?id=A')
    >>> b = cache_key('https://a.example/x/pytorch_model.bin?id=B')
    >>> a != b, a.startswith('pytorch_model-'), a.endswith('.bin')
    (True, True, True)
"""
import hashlib
import http.client
import json
import os
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Dict, Optional, Union

import torch.hub

from .io import CheckpointError

#: The file in the cache folder that holds the trusted-on-first-use digests.
RECORDS_NAME = 'mmbackbone-sha256.json'
#: Hex digits of sha256(url) in a cache key (128 bits: no practical
#: collision, even between URLs chosen to collide).
KEY_DIGEST_CHARS = 32
_MAX_LABEL = 80
_UNSAFE = re.compile(r'[^A-Za-z0-9._-]')
_SUFFIX = re.compile(r'\.[A-Za-z0-9]{1,16}')
_HEX = re.compile(r'[0-9a-f]+')
_CHUNK = 1 << 20


class DownloadError(FileNotFoundError):
    """A URL could not be fetched completely (offline, HTTP error, cut short).

    Nothing is kept in the cache when this is raised.
    """


class WeightsHashError(CheckpointError):
    """A file's SHA-256 differs from the index, its prefix, or the record."""


def cache_dir() -> Path:
    """Where downloads are cached (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / 'checkpoints'


def url_basename(url: str) -> str:
    """The last segment of the URL's path, percent-decoded (may be unsafe)."""
    path = urllib.parse.urlsplit(url).path
    return urllib.parse.unquote(path.rsplit('/', 1)[-1])


def cache_key(url: str, label: Optional[str] = None) -> str:
    """The cache file name of ``url``: ``<label>-<digest><suffix>``.

    ``label`` defaults to the URL's file name. Whatever it holds, the key is
    one plain file name (no separator, no leading dot, at most ~130 chars)
    and distinct URLs give distinct keys.

    Example:
        >>> cache_key('https://h/models/resnet50-0676ba61.pth')[:17]
        'resnet50-0676ba61'
        >>> '/' in cache_key('https://h/x', label='../../etc/passwd')
        False
    """
    if not isinstance(url, str):
        raise TypeError(f'url={url!r} must be a string')
    label = url_basename(url) if label is None else label
    safe = _UNSAFE.sub('_', label)
    stem, suffix = os.path.splitext(safe)
    if not _SUFFIX.fullmatch(suffix):
        stem, suffix = safe, ''
    stem = stem.lstrip('.-')[:_MAX_LABEL] or 'download'
    # surrogatepass: a str with lone surrogates still maps to unique bytes.
    digest = hashlib.sha256(url.encode('utf-8', 'surrogatepass')).hexdigest()
    return f'{stem}-{digest[:KEY_DIGEST_CHARS]}{suffix}'


def cache_path(url: str, label: Optional[str] = None) -> Path:
    """The path ``url`` is cached at (see :func:`cache_key`)."""
    root = cache_dir()
    path = root / cache_key(url, label)
    if path.parent != root:  # unreachable by construction; kept as a guard
        raise ValueError(f'cache key for {url!r} leaves {root}')
    return path


def sha256_of(path: Union[str, Path]) -> str:
    """The SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(_CHUNK), b''):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(value: Optional[str], what: str, full: bool = True) -> None:
    """Raise ValueError unless ``value`` is None or lowercase hex (64 digits
    when ``full``, 6 to 64 otherwise)."""
    if value is None:
        return
    ok = isinstance(value, str) and _HEX.fullmatch(value) and (
        len(value) == 64 if full else 6 <= len(value) <= 64)
    if not ok:
        need = '64' if full else '6 to 64'
        raise ValueError(f'{what}={value!r} must be {need} lowercase hex '
                         f'digits of a SHA-256 digest')


# ----------------------------------------------------- first-use records
def records_path() -> Path:
    """The JSON file holding the digests trusted on first use."""
    return cache_dir() / RECORDS_NAME


def load_records() -> Dict[str, dict]:
    """``{cache key: {"sha256", "url", "size"}}`` recorded so far."""
    path = records_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(text)
        files = data['files']
        if not isinstance(files, dict) or not all(
                isinstance(r, dict) and isinstance(r.get('sha256'), str)
                for r in files.values()):
            raise ValueError('bad "files" table')
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f'the download record {path} is corrupt ({err}). Delete it to '
            f'start over (every download is then trusted anew on its next '
            f'load)') from err
    return files


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + '.',
                               suffix='.partial')
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def record_sha256(key: str, digest: str, url: str, size: int) -> None:
    """Record ``digest`` as the trusted content of cache key ``key``."""
    path = records_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    files = load_records()  # read again just before writing: fewer lost
    files[key] = dict(sha256=digest, url=url, size=size)  # concurrent adds
    _write_atomic(path, json.dumps({'version': 1, 'files': files},
                                   indent=1, sort_keys=True) + '\n')


def forget(key: str) -> bool:
    """Drop the record of ``key`` (after a publisher replaced a file)."""
    files = load_records()
    if key not in files:
        return False
    del files[key]
    _write_atomic(records_path(), json.dumps({'version': 1, 'files': files},
                                             indent=1, sort_keys=True) + '\n')
    return True


# ------------------------------------------------------------ verifying
def verify(path: Union[str, Path], *, key: Optional[str] = None,
           url: Optional[str] = None, sha256: Optional[str] = None,
           sha256_prefix: Optional[str] = None,
           digest: Optional[str] = None, cached: Optional[Path] = None,
           record: bool = True) -> str:
    """Check a file against every digest known for it; return its SHA-256.

    Args:
        path: the file to check.
        key: its cache key; the first-use record of that key must match,
            and when there is none (and no full ``sha256``) one is made
            (unless ``record=False``).
        url: the URL the key stands for (for messages and the record).
        sha256: the full digest expected, if known.
        sha256_prefix: a digest prefix the publisher put in the file name.
        digest: the file's digest when already computed (while
            downloading), else it is computed here.
        cached: the cache path of ``key`` (for the reset advice).

    Raises:
        WeightsHashError: naming the file, both digests and what to do.
    """
    actual = digest or sha256_of(path)
    size = os.path.getsize(path)
    if sha256 and actual != sha256:
        raise WeightsHashError(
            f'checkpoint {path} has SHA-256 {actual}, but {sha256} is '
            f'expected for {url or path}; the file is corrupt or not the one '
            f'published. Delete it and download again')
    if sha256_prefix and not actual.startswith(sha256_prefix):
        raise WeightsHashError(
            f'checkpoint {path} has SHA-256 {actual}, which does not start '
            f'with {sha256_prefix} as its published name says ({url or path})'
            f'; the file is corrupt or not the one published. Delete it and '
            f'download again')
    if key is None:
        return actual
    trusted = load_records().get(key)
    if trusted is not None and trusted['sha256'] != actual:
        where = f'{cached} and ' if cached else ''
        raise WeightsHashError(
            f'checkpoint {path} has SHA-256 {actual}, but the first download '
            f'of {trusted.get("url", url)} on this machine had SHA-256 '
            f'{trusted["sha256"]} (recorded under "{key}" in '
            f'{records_path()}); the file changed since it was first '
            f'trusted. If the publisher really replaced it, delete '
            f'{where}that record (or call mmbackbone.checkpoint.download.'
            f'forget({key!r})) and load again')
    if trusted is None and not sha256 and record:
        try:
            record_sha256(key, actual, url or str(path), size)
        except OSError as err:
            warnings.warn(f'could not record the SHA-256 of {path} in '
                          f'{records_path()} ({err}); later changes to it '
                          f'will not be detected until the cache folder is '
                          f'writable')
    return actual


# ---------------------------------------------------------- downloading
def local_path(url: str) -> Path:
    """The file a ``file://`` URL names (read in place, never copied).

    Raises:
        ValueError: a host other than localhost, a query or a fragment.
        FileNotFoundError: no such file.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != 'file' or parts.netloc not in ('', 'localhost') \
            or parts.query or parts.fragment:
        raise ValueError(f'{url!r} is not a local file:// URL; write it as '
                         f'file:///absolute/path/to/file.pth')
    path = Path(urllib.request.url2pathname(parts.path))
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {url} names {path}, which is not '
                                f'a file')
    return path


def _progress_bar(total: Optional[int], desc: str, enabled: Optional[bool]):
    """A tqdm bar on stderr, or None: off when ``enabled`` is False, and by
    default when stderr is not a terminal (CI logs)."""
    if enabled is None:
        enabled = bool(getattr(sys.stderr, 'isatty', lambda: False)())
    if not enabled:
        return None
    try:
        # optional (timm brings it through huggingface_hub); no bar without
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit='B', unit_scale=True,
                unit_divisor=1024, file=sys.stderr, leave=False)


def _content_length(headers) -> Optional[int]:
    value = headers.get('Content-Length')
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def download(url: str, dst: Union[str, Path], *, key: Optional[str] = None,
             record_url: Optional[str] = None, sha256: Optional[str] = None,
             sha256_prefix: Optional[str] = None,
             progress: Optional[bool] = None, timeout: float = 60) -> Path:
    """Download ``url`` to ``dst``, keeping it only when complete and verified.

    The bytes go to a ``.partial`` file beside ``dst``; their count must
    equal ``Content-Length`` (when sent) and their digest must pass
    :func:`verify` (full hash, prefix, first-use record of ``key``); then
    the file is renamed to ``dst`` and, without a full hash, recorded.

    Raises:
        DownloadError: offline, HTTP error, or fewer/more bytes than
            announced; names the URL, the byte counts and what to do.
        WeightsHashError: the content differs from what is expected.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=dst.name + '.',
                               suffix='.partial')
    received, total = 0, None
    hasher = hashlib.sha256()
    try:
        try:
            request = urllib.request.Request(
                url, headers={'User-Agent': 'mmbackbone'})
            # Looked up at call time so that callers (and tests) can swap
            # urllib.request.urlopen for an offline stand-in.
            with urllib.request.urlopen(request, timeout=timeout) as resp, \
                    os.fdopen(fd, 'wb') as out:
                fd = None
                final = urllib.parse.urlsplit(resp.geturl()).scheme
                if final not in ('http', 'https'):
                    raise DownloadError(
                        f'cannot download checkpoint {url}: it redirects to '
                        f'{resp.geturl()}, which is not http(s). Download it '
                        f'by hand and pass the local path as checkpoint=...')
                total = _content_length(resp.headers)
                bar = _progress_bar(total, url_basename(url)[:40], progress)
                try:
                    for block in iter(lambda: resp.read(_CHUNK), b''):
                        out.write(block)
                        hasher.update(block)
                        received += len(block)
                        if bar is not None:
                            bar.update(len(block))
                finally:
                    if bar is not None:
                        bar.close()
                out.flush()
                os.fsync(out.fileno())
        except DownloadError:
            raise
        except (urllib.error.URLError, http.client.HTTPException, OSError,
                ConnectionError) as err:
            got = (f'after {received} of {total} bytes' if total is not None
                   else f'after {received} bytes')
            raise DownloadError(
                f'cannot download checkpoint {url} ({got}: {err}). Nothing '
                f'was kept; run again to retry, or download it on a machine '
                f'with network access and pass the local path as '
                f'checkpoint=..., or place it at {dst}') from err
        if total is not None and received != total:
            raise DownloadError(
                f'download of checkpoint {url} was cut short: received '
                f'{received} of the {total} bytes the server announced. '
                f'Nothing was kept; run again to retry, or download it by '
                f'hand and pass the local path as checkpoint=... (or place it '
                f'at {dst})')
        verify(tmp, key=key, url=record_url or url, sha256=sha256,
               sha256_prefix=sha256_prefix, digest=hasher.hexdigest(),
               cached=dst, record=False)
        os.replace(tmp, dst)
    finally:
        if fd is not None:
            os.close(fd)
        if os.path.exists(tmp):
            os.remove(tmp)
    if key is not None and not sha256:
        verify(dst, key=key, url=record_url or url, digest=hasher.hexdigest(),
               cached=dst)  # records the first-use digest
    return dst


def cached_download(url: str, *, label: Optional[str] = None,
                    sha256: Optional[str] = None,
                    sha256_prefix: Optional[str] = None,
                    progress: Optional[bool] = None) -> Path:
    """The verified cached copy of an ``http(s)://`` URL, fetched on first use.

    A cached file is checked on every load (full hash or first-use record).
    """
    dst = cache_path(url, label)
    if dst.is_file():
        verify(dst, key=dst.name, url=url, sha256=sha256,
               sha256_prefix=sha256_prefix, cached=dst)
        return dst
    return download(url, dst, key=dst.name, sha256=sha256,
                    sha256_prefix=sha256_prefix, progress=progress)
