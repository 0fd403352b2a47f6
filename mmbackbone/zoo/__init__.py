"""The weights index: named pretrained checkpoints for the native archs.

The index is data, one JSON table per family beside this file. Each entry
names the type and arch it fits, the URL, the SHA-256 (or the prefix the
file name carries), the source format (so the converter is known), the
published top-1 and the parameter count of the whole classifier.

``checkpoint='mmbackbone://resnet50.tv_in1k'`` and ``pretrained=True``
resolve through it. Files are looked up, in order, in the directory or
mirror named by ``$MMBACKBONE_WEIGHTS``, then the torch hub cache, then
downloaded (hash checked).

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
import urllib.parse
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from mmbackbone.utils import closest

INDEX_DIR = Path(__file__).parent
SOURCES = ('mmbackbone', 'mmpretrain', 'timm', 'torchvision')
#: Generic file names (Hugging Face) that would collide in one cache folder.
GENERIC_NAMES = ('model.safetensors', 'pytorch_model.bin', 'model.pth')


@dataclass(frozen=True)
class WeightsEntry:
    """One named checkpoint of the index."""
    name: str
    type: str
    arch: str
    url: str
    source: str
    params: int
    sha256: Optional[str] = None
    prefix: Optional[str] = None
    top1: Optional[float] = None
    num_classes: int = 1000
    license: Optional[str] = None
    default: bool = False
    config: Dict[str, object] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        """The file's name in the cache (the URL's, unless generic)."""
        base = Path(urllib.parse.urlparse(self.url).path).name
        if base in GENERIC_NAMES:
            return f'{self.name}{Path(base).suffix}'
        return base

    @property
    def build_config(self) -> dict:
        """The backbone config this entry fits (for the index tests)."""
        from mmbackbone.registry import MODELS
        cls = MODELS.get(self.type)
        return dict(type=self.type, **cls.zoo_configs[self.arch],
                    **self.config)


def _parse_entry(raw: dict, table: Path) -> WeightsEntry:
    names = {f.name for f in fields(WeightsEntry)}
    unknown = set(raw) - names
    if unknown:
        raise ValueError(f'weights index {table.name}: entry '
                         f'{raw.get("name")!r} has unknown fields '
                         f'{sorted(unknown)}; valid fields: {sorted(names)}')
    entry = WeightsEntry(**raw)
    if entry.source not in SOURCES:
        raise ValueError(f'weights index {table.name}: {entry.name} has '
                         f'source={entry.source!r}; choose from {SOURCES}')
    return entry


@lru_cache(maxsize=None)
def load_index() -> Dict[str, WeightsEntry]:
    """Every entry of every table, by name."""
    index: Dict[str, WeightsEntry] = {}
    for table in sorted(INDEX_DIR.glob('*.json')):
        for raw in json.loads(table.read_text())['weights']:
            entry = _parse_entry(raw, table)
            if entry.name in index:
                raise ValueError(f'weights index: {entry.name} appears twice')
            index[entry.name] = entry
    return index


def list_weights(pattern: Optional[str] = None) -> List[WeightsEntry]:
    """Entries whose name matches an fnmatch ``pattern``, sorted by name."""
    return [e for name, e in sorted(load_index().items())
            if pattern is None or fnmatch.fnmatch(name, pattern)]


def get_weights(name: str) -> WeightsEntry:
    """The entry called ``name`` (KeyError with close names otherwise)."""
    index = load_index()
    if name not in index:
        raise KeyError(f'weights {name!r} are not in the index.'
                       f'{closest(name, index)} See `mmbackbone weights`')
    return index[name]


def _arch_names(arch: Union[str, Sequence[str]]) -> List[str]:
    return [arch] if isinstance(arch, str) else list(arch)


def default_weights(type_name: str,
                    arch: Union[str, Sequence[str]]) -> WeightsEntry:
    """The default entry for a type and arch (or any of its alias names)."""
    names = _arch_names(arch)
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
    if entry.type != type_name or entry.arch not in _arch_names(arch):
        raise ValueError(f'pretrained={pretrained!r} fits {entry.type} '
                         f'{entry.arch}, not {type_name} '
                         f'{_arch_names(arch)[0]}')
    return entry


def _mirror_candidate(entry: WeightsEntry) -> Optional[Union[Path, str]]:
    mirror = os.environ.get('MMBACKBONE_WEIGHTS')
    if not mirror:
        return None
    if '://' in mirror:
        return mirror.rstrip('/') + '/' + entry.filename
    return Path(mirror).expanduser() / entry.filename


def resolve_weights(name: str) -> Path:
    """Local path of the entry's file: mirror, cache, then download.

    Raises:
        KeyError: unknown name.
        FileNotFoundError: offline with nothing cached; names the entry,
            the URL and where to put the file.
        ValueError: the file's hash differs from the index.
    """
    from mmbackbone.checkpoint.resolve import (check_hash, download,
                                               hub_checkpoint_dir)
    entry = get_weights(name)
    cached = hub_checkpoint_dir() / entry.filename
    mirror = _mirror_candidate(entry)
    if isinstance(mirror, Path) and mirror.is_file():
        check_hash(mirror, entry.sha256)
        return mirror
    if cached.is_file():
        check_hash(cached, entry.sha256)
        return cached
    urls = ([mirror] if isinstance(mirror, str) else []) + [entry.url]
    errors = []
    for url in urls:
        try:
            return download(url, cached, entry.sha256)
        except FileNotFoundError as err:
            errors.append(str(err.__cause__ or err))
    where = f' or into $MMBACKBONE_WEIGHTS={mirror}' if mirror else ''
    raise FileNotFoundError(
        f'weights {entry.name!r} are not available offline: cannot download '
        f'{" or ".join(urls)} ({"; ".join(errors)}). Download the file on a '
        f'machine with network access and place it at {cached}{where}')
