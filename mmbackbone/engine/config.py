"""Load training configs: Python files through mmengine, YAML safely.

mmengine reads ``.yaml`` files with an unsafe YAML loader (tags such as
``!!python/object/apply`` would run code while the file is parsed).
:func:`load_config` parses YAML with ``yaml.safe_load`` instead (plain
data only) and wraps the result in an mmengine ``Config``. YAML configs
may inherit with ``_base_`` (a path or a list of paths, relative to the
file; ``.yaml``/``.yml`` or ``.py``) and ``_delete_: true`` like Python
configs.

Example:
    >>> import tempfile, os
    >>> from mmbackbone.engine import load_config
    >>> path = os.path.join(tempfile.mkdtemp(), 'cfg.yaml')
    >>> with open(path, 'w') as f:
    ...     _ = f.write('model:\\n  type: ResNet\\n  depth: 18\\n')
    >>> load_config(path).model
    {'type': 'ResNet', 'depth': 18}
"""
import copy
from pathlib import Path
from typing import Any, List, Optional, Union

from mmengine.config import Config

YAML_SUFFIXES = ('.yaml', '.yml')
BASE_KEY = '_base_'


class UnsafeConfigError(ValueError):
    """A YAML config uses tags that would construct Python objects."""


def _read_yaml(path: Path) -> dict:
    import yaml
    try:
        with open(path, encoding='utf-8') as f:
            data = yaml.safe_load(f)
    except yaml.constructor.ConstructorError as err:
        tag = getattr(err, 'problem', '') or str(err)
        raise UnsafeConfigError(
            f'config {path}: {tag.strip()} at {err.problem_mark}. YAML '
            f'configs are read with yaml.safe_load: plain mappings, lists, '
            f'strings and numbers only; tags that build Python objects '
            f'(!!python/...) are refused and nothing in the file was run'
        ) from None
    except yaml.YAMLError as err:
        raise ValueError(f'config {path} is not valid YAML: {err}') from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f'config {path} must hold a mapping at the top '
                         f'level (key: value lines); got a '
                         f'{type(data).__name__}')
    if 'custom_imports' in data:
        raise ValueError(f'config {path}: custom_imports is not supported '
                         f'in YAML configs (importing modules runs code); '
                         f'import your plugin in a Python config or before '
                         f'calling the tools')
    return data


def _tuples_to_lists(value: Any) -> Any:
    """YAML has no tuples: keep a YAML config dumpable as plain YAML."""
    if isinstance(value, dict):
        return {k: _tuples_to_lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tuples_to_lists(v) for v in value]
    return value


def _load_yaml_dict(path: Path, chain: List[Path]) -> dict:
    if path in chain:
        raise ValueError(f'config {path}: _base_ inheritance loops through '
                         f'{" -> ".join(map(str, chain + [path]))}')
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str)
                                              for b in bases):
        raise TypeError(f'config {path}: _base_={bases!r} must be a path or '
                        f'a list of paths')
    merged: dict = {}
    for base in bases:
        if '::' in base:
            raise ValueError(f'config {path}: _base_ {base!r}: package '
                             f'configs (pkg::path) are not supported in '
                             f'YAML; give a file path')
        base_path = (path.parent / base).resolve()
        if not base_path.is_file():
            raise FileNotFoundError(f'config {path}: _base_ file {base!r} '
                                    f'({base_path}) does not exist')
        if base_path.suffix in YAML_SUFFIXES:
            base_dict = _load_yaml_dict(base_path, chain + [path])
        else:
            base_dict = Config.fromfile(str(base_path)).to_dict()
        duplicated = set(merged) & set(base_dict)
        if duplicated:
            raise KeyError(f'config {path}: keys {sorted(duplicated)} are '
                           f'defined in more than one _base_ file')
        merged.update(base_dict)
    return Config._merge_a_into_b(data, merged)


def load_config(path: Union[str, Path],
                cfg_options: Optional[dict] = None) -> Config:
    """Read a ``.py`` or ``.yaml``/``.yml`` config into an mmengine Config.

    Args:
        path (str | Path): the config file.
        cfg_options (dict, optional): overrides such as
            ``{'train_cfg.max_epochs': 2}`` (merged with
            ``Config.merge_from_dict``).

    Returns:
        mmengine.config.Config

    Raises:
        FileNotFoundError: the file (or a ``_base_``) does not exist.
        UnsafeConfigError: a YAML file with a ``!!python/...`` tag.
        ValueError: invalid YAML, not a mapping, or an inheritance loop.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'config file {str(path)!r} does not exist')
    if path.suffix in YAML_SUFFIXES:
        data = _tuples_to_lists(_load_yaml_dict(path.resolve(), []))
        cfg = Config(copy.deepcopy(data), filename=str(path))
    else:
        cfg = Config.fromfile(str(path))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
        if path.suffix in YAML_SUFFIXES:
            cfg = Config(_tuples_to_lists(cfg.to_dict()), filename=str(path))
    return cfg
