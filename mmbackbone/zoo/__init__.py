"""The weights index: named pretrained checkpoints for the native archs.

The index is data, one JSON table per family beside this file. Each entry
names the type and arch it fits, the URL, the SHA-256 and/or the digest
prefix the published file name carries, the source format (so the converter
is known), the published top-1 and the parameter count of the whole
classifier (fields: :class:`WeightsEntry`). Entries are validated when the
index loads: a malformed one is a :class:`WeightsIndexError`, never a path
outside the cache.

``checkpoint='mmbackbone://resnet50.tv_in1k'`` and ``pretrained=True``
resolve through it. Files are looked up, in order, in the folder (or
``file://`` / ``http(s)://`` mirror) named by ``$MMBACKBONE_WEIGHTS``, then
the torch hub cache, then downloaded. Every file, wherever it comes from, is
checked: against the entry's full ``sha256`` when the index has one, else
against the digest recorded on its first download (trust on first use),
and against the ``sha256_prefix`` of the published name.

Example:
    >>> from mmbackbone.zoo import get_weights, default_weights
    >>> get_weights('resnet50.tv_in1k').source
    'torchvision'
    >>> default_weights('ResNet', 'resnet50').name
    'resnet50.tv_in1k'
"""
import fnmatch
import json
import os
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from mmbackbone.checkpoint.download import (DownloadError, cache_path,
                                            check_sha256, download,
                                            url_basename, verify)
from mmbackbone.registry import MODELS
from mmbackbone.utils import closest

from .names import MMCLS_NAMES, MMPRETRAIN_NAMES  # noqa: F401

INDEX_DIR = Path(__file__).parent
SOURCES = ('mmbackbone', 'mmpretrain', 'timm', 'torchvision')
#: Generic file names (Hugging Face) that would collide in one mirror folder.
GENERIC_NAMES = ('model.safetensors', 'pytorch_model.bin', 'model.pth')
#: Entry names and URL file names: plain file names, no path.
SAFE_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9._-]{0,127}')


class WeightsIndexError(ValueError):
    """An index entry is malformed (bad field, hash, URL or name)."""


@dataclass(frozen=True)
class WeightsEntry:
    """One named checkpoint of the index.

    Attributes:
        name: the entry's name (``mmbackbone://NAME``, ``pretrained=NAME``);
            letters, digits and ``._-`` only.
        type: the backbone type it fits (``'ResNet'``).
        arch: the arch name of that type it fits (``'resnet50'``).
        url: where it is published; ``http(s)://`` only.
        source: its key format: one of :data:`SOURCES` (picks the converter).
        params: parameter count of the whole classifier (backbone + head).
        sha256: the file's full SHA-256 (64 lowercase hex digits) where the
            publisher gives one. Without it, the digest of the first
            complete download is recorded and every later load (cache,
            mirror, new download) must match it: trust on first use.
        sha256_prefix: the digest prefix the publisher put in the file name
            (torchvision's ``resnet50-0676ba61.pth``, OpenMMLab's
            ``..._20210831-fbbb1da6.pth``); checked as well. No full digest
            of the current entries is known, so they are all trusted on
            first use, with this prefix as an extra check where published.
        top1: published ImageNet top-1, if known.
        num_classes: classes of the published head.
        license: the weights' license.
        default: the entry ``pretrained=True`` picks for its type and arch.
        config: extra backbone config the weights need.
        prefix: the state-dict key prefix to keep and strip (``backbone``).
    """
    name: str
    type: str
    arch: str
    url: str
    source: str
    params: int
    sha256: Optional[str] = None
    sha256_prefix: Optional[str] = None
    prefix: Optional[str] = None
    top1: Optional[float] = None
    num_classes: int = 1000
    license: Optional[str] = None
    default: bool = False
    config: Dict[str, object] = field(default_factory=dict)

    def __post_init__(self):
        _validate(self)

    @property
    def filename(self) -> str:
        """The file's name in a mirror folder (the URL's, unless generic)."""
        base = url_basename(self.url)
        if base in GENERIC_NAMES:
            return f'{self.name}{Path(base).suffix}'
        return base

    @property
    def cache_file(self) -> Path:
        """Where the download is cached: keyed by entry name and URL."""
        return cache_path(self.url, label=self.name +
                          Path(url_basename(self.url)).suffix)

    @property
    def build_config(self) -> dict:
        """The backbone config this entry fits (for the index tests)."""
        cls = MODELS.get(self.type)
        return dict(type=self.type, **cls.zoo_configs[self.arch],
                    **self.config)


def _validate(entry: WeightsEntry) -> None:
    """Refuse entries that could write or read outside the cache, or that
    carry hashes which cannot be checked."""
    name = entry.name
    label = f'weights index entry {name!r}'
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) \
            or '..' in name:
        raise WeightsIndexError(
            f'{label}: the name must be 1-128 letters, digits, ".", "_" or '
            f'"-", start with a letter or digit and hold no ".."')
    for key, kind in (('type', str), ('arch', str), ('url', str),
                      ('source', str), ('params', int), ('num_classes', int),
                      ('default', bool), ('config', dict)):
        value = getattr(entry, key)
        if not isinstance(value, kind) or (kind is int and
                                           isinstance(value, bool)):
            raise WeightsIndexError(f'{label}: {key}={value!r} must be a '
                                    f'{kind.__name__}')
    for key in ('prefix', 'license'):
        if getattr(entry, key) is not None and \
                not isinstance(getattr(entry, key), str):
            raise WeightsIndexError(f'{label}: {key} must be a string')
    if entry.top1 is not None and (isinstance(entry.top1, bool) or
                                   not isinstance(entry.top1, (int, float))):
        raise WeightsIndexError(f'{label}: top1={entry.top1!r} must be a '
                                f'number')
    if entry.source not in SOURCES:
        raise WeightsIndexError(f'{label}: source={entry.source!r}; choose '
                                f'from {SOURCES}')
    url = entry.url
    parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ('http', 'https') \
            or not parts.netloc or any(c.isspace() or ord(c) < 32
                                       for c in url):
        raise WeightsIndexError(f'{label}: url={url!r} must be an http:// or '
                                f'https:// URL with a host')
    base = url_basename(url)
    if not SAFE_NAME.fullmatch(base) or '..' in base:
        raise WeightsIndexError(
            f'{label}: url={url!r} must end in a plain file name (letters, '
            f'digits, "._-"); got {base!r}')
    try:
        check_sha256(entry.sha256, f'{label}: sha256')
        check_sha256(entry.sha256_prefix, f'{label}: sha256_prefix',
                     full=False)
    except ValueError as err:
        raise WeightsIndexError(str(err)) from None
    if entry.sha256 and entry.sha256_prefix and \
            not entry.sha256.startswith(entry.sha256_prefix):
        raise WeightsIndexError(f'{label}: sha256 {entry.sha256} does not '
                                f'start with sha256_prefix '
                                f'{entry.sha256_prefix}')


def _parse_entry(raw: dict, table: Path) -> WeightsEntry:
    if not isinstance(raw, dict):
        raise WeightsIndexError(f'weights index {table.name}: every entry '
                                f'must be an object, got {raw!r}')
    names = {f.name for f in fields(WeightsEntry)}
    unknown = set(raw) - names
    if unknown:
        raise WeightsIndexError(
            f'weights index {table.name}: entry {raw.get("name")!r} has '
            f'unknown fields {sorted(unknown)}; valid fields: {sorted(names)}')
    try:
        return WeightsEntry(**raw)
    except WeightsIndexError as err:
        raise WeightsIndexError(f'weights index {table.name}: {err}') from None
    except TypeError as err:  # a required field is missing
        raise WeightsIndexError(f'weights index {table.name}: entry '
                                f'{raw.get("name")!r}: {err}') from None


def parse_table(data: dict, table: Path) -> List[WeightsEntry]:
    """The entries of one index table (``{"weights": [...]}``), validated."""
    if not isinstance(data, dict) or not isinstance(data.get('weights'),
                                                    list):
        raise WeightsIndexError(f'weights index {table.name}: expected an '
                                f'object with a "weights" list')
    return [_parse_entry(raw, table) for raw in data['weights']]


@lru_cache(maxsize=None)
def load_index() -> Dict[str, WeightsEntry]:
    """Every entry of every table, by name."""
    index: Dict[str, WeightsEntry] = {}
    for table in sorted(INDEX_DIR.glob('*.json')):
        for entry in parse_table(json.loads(table.read_text()), table):
            if entry.name in index:
                raise WeightsIndexError(
                    f'weights index: {entry.name} appears twice')
            index[entry.name] = entry
    return index


def list_weights(pattern: Optional[str] = None) -> List[WeightsEntry]:
    """Entries whose name matches an fnmatch ``pattern``, sorted by name."""
    return [e for name, e in sorted(load_index().items())
            if pattern is None or fnmatch.fnmatch(name, pattern)]


def get_weights(name: str) -> WeightsEntry:
    """The entry called ``name``, or named by its mmpretrain model name
    (:data:`~mmbackbone.zoo.names.MMPRETRAIN_NAMES`); a KeyError with close
    names of both otherwise.

    Example:
        >>> get_weights('resnetv1d152_8xb32_in1k').name
        'resnetv1d152.mmpretrain_in1k'
    """
    index = load_index()
    name = MMPRETRAIN_NAMES.get(name, name)
    if name not in index:
        raise KeyError(f'weights {name!r} are not in the index.'
                       f'{closest(name, [*index, *MMPRETRAIN_NAMES])} See '
                       f'`mmbackbone weights`')
    return index[name]


def canonical_arch(type_name: str, arch: str) -> str:
    """The canonical name of ``arch`` for a type: its declared alias map
    (``arch_aliases`` of the registered class) applied, no other guessing.

    Example:
        >>> canonical_arch('VisionTransformer', 'deit-b')
        'deit-base'
        >>> canonical_arch('ResNet', 'resnet50')
        'resnet50'
    """
    cls = MODELS.get(type_name)
    aliases = getattr(cls, 'arch_aliases', None) or {}
    return aliases.get(arch, arch)


def _arch_names(type_name: str,
                arch: Union[str, Sequence[str]]) -> List[str]:
    names = [arch] if isinstance(arch, str) else list(arch)
    return [canonical_arch(type_name, name) for name in names]


def default_weights(type_name: str,
                    arch: Union[str, Sequence[str]]) -> WeightsEntry:
    """The default entry for a type and arch.

    An alias names its canonical arch's entry (``arch_aliases`` of the
    type). A sequence of names (families that list every name of an arch)
    is tried in order.

    Example:
        >>> default_weights('VisionTransformer', 'deit-b').name
        'deit_base_patch16_224.fb_in1k'
    """
    names = _arch_names(type_name, arch)
    entries = [e for e in load_index().values() if e.type == type_name]
    for name in names:  # the first name (the one given) wins over aliases
        matches = [e for e in entries if e.arch == name]
        if matches:
            break
    else:
        raise KeyError(f'no pretrained weights are indexed for '
                       f'{type_name} arch {names[0]!r}; indexed archs of '
                       f'{type_name}: {sorted({e.arch for e in entries})}')
    defaults = [e for e in matches if e.default] or matches
    return defaults[0]


def weights_for(type_name: str, arch: Union[str, Sequence[str]],
                pretrained: Union[bool, str]) -> WeightsEntry:
    """Resolve a ``pretrained`` argument (True or a name) for a model."""
    if pretrained is True:
        return default_weights(type_name, arch)
    if not isinstance(pretrained, str):
        raise TypeError(f'pretrained={pretrained!r} must be True, False or '
                        f'a weights name such as "resnet50.tv_in1k"')
    entry = get_weights(pretrained)
    names = _arch_names(type_name, arch)
    if entry.type != type_name or entry.arch not in names:
        raise ValueError(f'pretrained={pretrained!r} fits {entry.type} '
                         f'{entry.arch}, not {type_name} {names[0]}')
    return entry


def _mirror_candidate(entry: WeightsEntry) -> Optional[Union[Path, str]]:
    """The entry's file in ``$MMBACKBONE_WEIGHTS``: a Path for a folder or a
    ``file://`` URL (read in place), a URL string for an http(s) mirror."""
    mirror = os.environ.get('MMBACKBONE_WEIGHTS')
    if not mirror:
        return None
    if mirror.startswith('file://'):
        parts = urllib.parse.urlsplit(mirror)
        if parts.netloc not in ('', 'localhost') or parts.query \
                or parts.fragment:
            raise ValueError(f'$MMBACKBONE_WEIGHTS={mirror!r} is not a local '
                             f'file:// URL; give a folder path or '
                             f'file:///absolute/folder')
        return Path(urllib.request.url2pathname(parts.path)) / entry.filename
    if mirror.startswith(('http://', 'https://')):
        return mirror.rstrip('/') + '/' + entry.filename
    if '://' in mirror:
        raise ValueError(f'$MMBACKBONE_WEIGHTS={mirror!r}: give a folder, a '
                         f'file:// URL or an http(s):// URL')
    return Path(mirror).expanduser() / entry.filename


def resolve_weights(name: str, progress: Optional[bool] = None) -> Path:
    """Local path of the entry's file: mirror, cache, then download.

    A mirror folder's file is read in place; downloads (from an http(s)
    mirror, then the entry's URL) go to :attr:`WeightsEntry.cache_file`.
    Every file is checked against the entry's ``sha256`` and
    ``sha256_prefix`` and, without a full ``sha256``, against the digest
    recorded on first use.

    Raises:
        KeyError: unknown name.
        FileNotFoundError: offline with nothing cached; names the entry,
            the URL and where to put the file.
        ValueError: the file's hash differs from the index or the record
            (:class:`~mmbackbone.checkpoint.download.WeightsHashError`).
    """
    entry = get_weights(name)
    cached = entry.cache_file
    expect = dict(key=cached.name, url=entry.url, sha256=entry.sha256,
                  sha256_prefix=entry.sha256_prefix, cached=cached)
    mirror = _mirror_candidate(entry)
    if isinstance(mirror, Path) and mirror.is_file():
        verify(mirror, **expect)
        return mirror
    if cached.is_file():
        verify(cached, **expect)
        return cached
    urls = ([mirror] if isinstance(mirror, str) else []) + [entry.url]
    errors = []
    for url in urls:
        try:
            return download(url, cached, key=cached.name, record_url=entry.url,
                            sha256=entry.sha256,
                            sha256_prefix=entry.sha256_prefix,
                            progress=progress)
        except DownloadError as err:
            errors.append(str(err.__cause__ or err))
    where = f' or at {mirror} ($MMBACKBONE_WEIGHTS)' \
        if isinstance(mirror, Path) else ''
    raise DownloadError(
        f'weights {entry.name!r} are not available offline: cannot download '
        f'{" or ".join(urls)} ({"; ".join(errors)}). Download the file on a '
        f'machine with network access and place it at {cached}{where}')
