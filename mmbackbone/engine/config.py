"""Load configs: data files (YAML, JSON) as data, Python files as code.

One loader, :func:`load_config`, serves every tool and command that reads
a config. Two kinds of config file:

* **Data configs** (``.yaml``, ``.yml``, ``.json``) never run code,
  whatever their ``_base_`` chain holds. They are parsed
  (:mod:`mmbackbone.engine.config_data`) with
  ``yaml.safe_load`` / ``json`` (plain mappings, lists, strings, numbers;
  a ``!!python/...`` tag raises :class:`UnsafeConfigError` and nothing in
  the file is run) and their ``_base_`` chains are followed by this
  module, not by mmengine (whose YAML reader is unsafe). Their bases must
  be data configs too: a ``.py`` base is refused unless the caller opts in
  with ``allow_python_bases=True`` (``--allow-python-bases`` on the
  tools). ``custom_imports`` (which mmengine turns into imports) is
  refused in every data file, base or not. Nesting deeper than
  :data:`MAX_DEPTH` or more than :data:`MAX_VALUES` values (YAML aliases
  can multiply a small file) are refused before anything is copied.
* **Python configs** (``.py``) are code chosen by the user and run by
  mmengine's ``Config.fromfile``, as in every OpenMMLab tool. Any YAML or
  JSON file in their ``_base_`` chain is still read by the data loader
  above, with the same rules.

Inheritance works as in mmengine: ``_base_`` is a path or a list of paths
relative to the file, keys of different bases must not collide, and
``_delete_: true`` replaces a base's dict instead of merging into it.
(Data configs do not support ``{{_base_.x}}`` references, predefined
variables or ``pkg::`` bases; write a Python config for those.)

Example:
    >>> import tempfile, os
    >>> from mmbackbone.engine import load_config
    >>> path = os.path.join(tempfile.mkdtemp(), 'cfg.yaml')
    >>> with open(path, 'w') as f:
    ...     _ = f.write('model:\\n  type: ResNet\\n  depth: 18\\n')
    >>> load_config(path).model
    {'type': 'ResNet', 'depth': 18}
"""
import contextlib
import copy
import os
import threading
from pathlib import Path
from typing import Any, Iterator, List, Mapping, Optional, Union

import yaml
from mmengine.config import Config
from mmengine.fileio.handlers.yaml_handler import YamlHandler

from .config_data import (DATA_SUFFIXES, MAX_DEPTH, MAX_VALUES,
                          UnsafeConfigError, parse_data_file, too_big)
from .upstream import check_mmengine_version

# _data_files_read_safely stands in for mmengine 0.10.7's private
# Config._file2dict and YamlHandler.load_from_fileobj while it reads.
check_mmengine_version(__name__)

#: Config files that are code (run by mmengine's ``Config.fromfile``).
PYTHON_SUFFIXES = ('.py', )
BASE_KEY = '_base_'
#: Keys that make mmengine import modules (``Config.fromfile`` imports
#: ``custom_imports``): refused in data configs and in ``cfg_options``.
CODE_KEYS = ('custom_imports', )
#: Top-level names mmengine's ``Config`` keeps for itself.
RESERVED_KEYS = ('filename', 'text', 'pretty_text', 'env_variables')
#: The keyword of :func:`load_config` that lets data configs have Python
#: bases, and the command-line flag of the tools that passes it.
OPT_IN = 'allow_python_bases=True (--allow-python-bases on the command line)'
PLAIN_TYPES = (str, int, float, bool, type(None))


def check_plain_data(value: Any, where: str, path, *,
                     plain_only: bool = False) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` and more than
    :data:`MAX_VALUES` values, counting every expansion of a shared
    (YAML alias) node without making it: each container is measured
    once. A container inside itself is refused. With ``plain_only`` every
    value must also be None, a bool, number, string, list, tuple or dict.
    """
    measured = {}  # id(container) -> (values, levels below)
    open_ids = set()

    def deep(at: str) -> UnsafeConfigError:
        at = at or 'the top level'
        shown = at if len(at) <= 80 else at[:80] + '...'
        return too_big(path, f'{shown} is nested more than {MAX_DEPTH} '
                       f'levels deep')

    def measure(node: Any, depth: int, at: str):
        if depth > MAX_DEPTH:
            raise deep(at)
        if isinstance(node, Mapping):
            children = [(item, f'{at}.{key}' if at else str(key))
                        for key, item in node.items()]
        elif isinstance(node, (list, tuple)):
            children = [(item, f'{at}[{i}]') for i, item in enumerate(node)]
        else:
            if plain_only and not isinstance(node, PLAIN_TYPES):
                raise TypeError(f'config {path}: {at}={node!r} is a '
                                f'{type(node).__name__}; config values are '
                                f'plain data (None, bool, int, float, str, '
                                f'list, tuple, dict)')
            return 1, 0
        key = id(node)
        if key in measured:
            count, below = measured[key]
            if depth + below > MAX_DEPTH:
                raise deep(at)
            return count, below
        if key in open_ids:
            raise too_big(path, f'{at} contains itself (a YAML alias of '
                          f'an enclosing node)')
        open_ids.add(key)
        count, below = 1, 0
        for item, item_at in children:
            item_count, item_below = measure(item, depth + 1, item_at)
            count += item_count
            below = max(below, item_below + 1)
            if count > MAX_VALUES:
                raise too_big(path, f'{where or "the file"} holds more than '
                              f'{MAX_VALUES:,} values')
        open_ids.discard(key)
        measured[key] = (count, below)
        return count, below

    measure(value, 0, where)



def _read_data(path: Path) -> dict:
    """One data file, parsed and checked (its ``_base_`` not followed)."""
    data = parse_data_file(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f'config {path} must hold a mapping at the top '
                         f'level (key: value lines); got a '
                         f'{type(data).__name__}')
    check_plain_data(data, '', path)
    for key in data:
        if not isinstance(key, str):
            raise ValueError(f'config {path}: top-level key {key!r} is a '
                             f'{type(key).__name__}; top-level keys are '
                             f'names (strings)')
        if key in CODE_KEYS:
            raise UnsafeConfigError(
                f'config {path}: {key} is not supported in data (YAML/JSON) '
                f'configs (importing modules runs code); import your plugin '
                f'in a Python config or before calling the tools')
        if key in RESERVED_KEYS:
            raise KeyError(f'config {path}: top-level key {key!r} is '
                           f'reserved by mmengine Config ({RESERVED_KEYS}); '
                           f'rename it')
    return data


def _tuples_to_lists(value: Any) -> Any:
    """YAML has no tuples: keep a YAML config dumpable as plain YAML."""
    if isinstance(value, dict):
        return {k: _tuples_to_lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tuples_to_lists(v) for v in value]
    return value


class _Walk:
    """One ``load_config`` call: the opt-in and the files being read (to
    name the chain in errors and to stop inheritance loops)."""

    def __init__(self, allow_python_bases: bool):
        self.allow_python_bases = allow_python_bases
        self.stack: List[Path] = []

    @contextlib.contextmanager
    def entering(self, path: Path) -> Iterator[None]:
        if path in self.stack:
            raise ValueError(f'config {self.stack[-1]}: _base_ inheritance '
                             f'loops through '
                             f'{" -> ".join(map(str, self.stack + [path]))}')
        self.stack.append(path)
        try:
            yield
        except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
            raise self._named_chain(err) from err.__cause__
        finally:
            self.stack.pop()

    def _named_chain(self, err: Exception) -> Exception:
        """Add the _base_ chain to an error raised in a base file."""
        if len(self.stack) < 2 or getattr(err, '_chain_named', False) or \
                len(err.args) != 1 or not isinstance(err.args[0], str):
            return err
        chain = ' -> '.join(map(str, self.stack))
        try:
            named = type(err)(f'{err.args[0]} (_base_ chain: {chain})')
        except Exception:  # an exception type with other arguments
            return err
        named._chain_named = True
        return named


def _base_paths(path: Path, bases: Any, walk: _Walk) -> List[Path]:
    """The files a data config's ``_base_`` names, checked."""
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str)
                                              for b in bases):
        raise TypeError(f'config {path}: _base_={bases!r} must be a path or '
                        f'a list of paths')
    paths = []
    for base in bases:
        if '::' in base:
            raise ValueError(f'config {path}: _base_ {base!r}: package '
                             f'configs (pkg::path) are not supported in '
                             f'data (YAML/JSON) configs; give a file path, '
                             f'or inherit from it in a Python config')
        base_path = (path.parent / base).resolve()
        suffix = base_path.suffix
        if suffix not in DATA_SUFFIXES + PYTHON_SUFFIXES:
            raise ValueError(f'config {path}: _base_ {base!r} is not a '
                             f'config file; bases end in '
                             f'{", ".join(DATA_SUFFIXES)} (or .py, with '
                             f'{OPT_IN})')
        if suffix in PYTHON_SUFFIXES and not walk.allow_python_bases:
            raise UnsafeConfigError(
                f'config {path}: _base_ {base!r} is a Python file, and a '
                f'data (YAML/JSON) config does not run code: its bases '
                f'must be {"/".join(DATA_SUFFIXES)} files. Nothing was run. '
                f'If you trust {base_path}, pass {OPT_IN}, or write a '
                f'Python config')
        if not base_path.is_file():
            raise FileNotFoundError(f'config {path}: _base_ file {base!r} '
                                    f'({base_path}) does not exist')
        paths.append(base_path)
    return paths


def _load_data_dict(path: Path, walk: _Walk) -> dict:
    """A data config with its ``_base_`` chain merged in."""
    with walk.entering(path):
        data = _read_data(path)
        bases = data.pop(BASE_KEY, None)
        if bases is None:
            return data
        merged: dict = {}
        for base_path in _base_paths(path, bases, walk):
            if base_path.suffix in DATA_SUFFIXES:
                base_dict = _load_data_dict(base_path, walk)
            else:  # a Python base, opted in
                base_dict = _load_python_config(base_path, walk).to_dict()
            duplicated = set(merged) & set(base_dict)
            if duplicated:
                raise KeyError(f'config {path}: keys {sorted(duplicated)} '
                               f'are defined in more than one _base_ file')
            merged.update(base_dict)
        try:
            return Config._merge_a_into_b(data, merged)
        except (KeyError, TypeError, ValueError) as err:
            raise type(err)(f'config {path}: cannot merge into its _base_: '
                            f'{err}') from None


# mmengine's Config._file2dict reads the YAML/JSON files of a Python
# config's _base_ chain with mmengine.load, whose YAML handler uses
# yaml.load with the full (code-running) Loader, imports their
# custom_imports and recurses without a loop check; mmengine has no hook
# to change that. While mmengine reads a Python config, _file2dict is
# routed here: data files go to _load_data_dict (safe, same rules as a
# data config), Python files to mmengine's own _file2dict. The YAML
# handler is also made safe for the duration, for any other read.
_HOOK_LOCK = threading.RLock()
_ACTIVE: List[_Walk] = []  # the walk whose hook is installed, if any


def _file2dict_hook(walk: _Walk, original):

    def _file2dict(filename, use_predefined_variables=True,
                   use_environment_variables=True, lazy_import=None):
        path = Path(os.path.abspath(os.path.expanduser(filename))).resolve()
        if path.suffix in DATA_SUFFIXES:
            if not path.is_file():
                raise FileNotFoundError(f'config {walk.stack[-1]}: _base_ '
                                        f'file {path} does not exist')
            data = _load_data_dict(path, walk)
            text = path.read_text(encoding='utf-8', errors='replace')
            return data, f'{path}\n{text}', {}
        if path.suffix not in PYTHON_SUFFIXES:
            raise ValueError(f'config {walk.stack[-1]}: _base_ {path} is '
                             f'not a config file; bases end in .py, '
                             f'{", ".join(DATA_SUFFIXES)}')
        with walk.entering(path):
            try:
                return original(filename, use_predefined_variables,
                                use_environment_variables, lazy_import)
            except (KeyError, TypeError, ValueError) as err:
                text = err.args[0] if len(err.args) == 1 else str(err)
                if not isinstance(text, str) or str(path) in text:
                    raise
                # e.g. mmengine's 'Duplicate key is not allowed among bases'
                raise type(err)(f'config {path}: {text}') from None

    return _file2dict


@contextlib.contextmanager
def _data_files_read_safely(walk: _Walk) -> Iterator[None]:
    def safe_load_from_fileobj(self, file, **kwargs):
        kwargs['Loader'] = yaml.SafeLoader
        return yaml.load(file, **kwargs)

    with _HOOK_LOCK:
        if _ACTIVE:  # a Python base of a data file of a Python config
            yield
            return
        saved_file2dict = Config.__dict__['_file2dict']
        saved_yaml = YamlHandler.__dict__['load_from_fileobj']
        Config._file2dict = staticmethod(
            _file2dict_hook(walk, saved_file2dict.__func__))
        YamlHandler.load_from_fileobj = safe_load_from_fileobj
        _ACTIVE.append(walk)
        try:
            yield
        finally:
            _ACTIVE.pop()
            Config._file2dict = saved_file2dict
            YamlHandler.load_from_fileobj = saved_yaml


def _load_python_config(path: Path, walk: _Walk) -> Config:
    with _data_files_read_safely(walk):
        try:
            return Config.fromfile(str(path))
        except RecursionError:
            raise too_big(path, 'the config (or its _base_ chain) is '
                          'nested too deeply to read') from None


def _check_options(cfg_options: Any, path) -> None:
    if not isinstance(cfg_options, Mapping):
        raise TypeError(f'config {path}: cfg_options={cfg_options!r} must '
                        f'be a dict of dotted keys to values')
    for key, value in cfg_options.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f'config {path}: cfg_options key {key!r} must '
                            f'be a dotted name such as '
                            f"'train_cfg.max_epochs'")
        head = key.split('.', 1)[0]
        if head in CODE_KEYS or head == BASE_KEY:
            raise UnsafeConfigError(
                f'config {path}: cfg_options {key!r} cannot be set from '
                f'the command line ({head} makes mmengine import or read '
                f'more files); put it in a Python config')
        check_plain_data(value, f'cfg_options {key!r}', path,
                         plain_only=True)


def load_config(path: Union[str, Path],
                cfg_options: Optional[dict] = None, *,
                allow_python_bases: bool = False) -> Config:
    """Read a config file into an mmengine ``Config``.

    ``.yaml``/``.yml``/``.json`` files are data and never run code;
    ``.py`` files are code (see the module docstring).

    Args:
        path (str | Path): the config file.
        cfg_options (dict, optional): overrides such as
            ``{'train_cfg.max_epochs': 2}`` (merged with
            ``Config.merge_from_dict``); values must be plain data, and
            ``custom_imports`` / ``_base_`` cannot be set this way.
        allow_python_bases (bool): let data configs (the file and any data
            file in its ``_base_`` chain) inherit from ``.py`` files, which
            are then run. Off by default: a data config's ``.py`` base
            raises :class:`UnsafeConfigError`. The tools pass
            ``--allow-python-bases`` here. Only for Python files you trust.

    Returns:
        mmengine.config.Config

    Raises:
        FileNotFoundError: the file (or a ``_base_``) does not exist.
        UnsafeConfigError: a ``!!python/...`` YAML tag, ``custom_imports``
            in a data file, a ``.py`` base of a data config without
            ``allow_python_bases``, or absurd nesting / size.
        ValueError: invalid YAML/JSON, not a mapping, an unsupported file
            type, or an inheritance loop.
        KeyError: keys defined in two bases, or a reserved key.
        TypeError: a malformed ``_base_`` or ``cfg_options``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'config file {str(path)!r} does not exist')
    suffix = path.suffix
    if suffix not in DATA_SUFFIXES + PYTHON_SUFFIXES:
        raise ValueError(f'config {path}: unsupported file type '
                         f'{suffix or "(none)"!r}; configs are '
                         f'{", ".join(DATA_SUFFIXES)} (data) or .py (code)')
    if cfg_options:
        _check_options(cfg_options, path)
    walk = _Walk(allow_python_bases)
    if suffix in DATA_SUFFIXES:
        data = _tuples_to_lists(_load_data_dict(path.resolve(), walk))
        cfg = Config(copy.deepcopy(data), filename=str(path))
    else:
        cfg = _load_python_config(path.resolve(), walk)
    if cfg_options:
        try:
            cfg.merge_from_dict(dict(cfg_options))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise KeyError(f'config {path}: cfg_options {dict(cfg_options)} '
                           f'cannot be merged: {type(err).__name__}: '
                           f'{err}') from None
        if suffix in DATA_SUFFIXES:
            cfg = Config(_tuples_to_lists(cfg.to_dict()), filename=str(path))
    return cfg
