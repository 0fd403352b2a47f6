"""Config files read as data: YAML and JSON parsed without running code.

:func:`parse_data_file` parses one ``.yaml``/``.yml``/``.json`` file with
``yaml.safe_load`` / ``json``: plain mappings, lists, strings and numbers;
a ``!!python/...`` tag raises :class:`UnsafeConfigError` and nothing in the
file is run; nesting deeper than :data:`MAX_DEPTH` is refused while
parsing (PyYAML's scanner is quadratic in it). Checking the parsed data,
following ``_base_`` chains and merging is
:mod:`mmbackbone.engine.config`'s job.

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / 'cfg.yaml'
    >>> _ = path.write_text('model: {type: ResNet, depth: 18}')
    >>> parse_data_file(path)
    {'model': {'type': 'ResNet', 'depth': 18}}
    >>> _ = path.write_text('x: !!python/object/apply:os.system [ls]')
    >>> parse_data_file(path)
    Traceback (most recent call last):
    ...
    mmbackbone.engine.config_data.UnsafeConfigError: config ...
"""
import json
from pathlib import Path
from typing import Any

import yaml

YAML_SUFFIXES = ('.yaml', '.yml')
JSON_SUFFIXES = ('.json', )
#: Config files read as data: they never run code.
DATA_SUFFIXES = YAML_SUFFIXES + JSON_SUFFIXES
#: Deepest nesting of mappings/lists a config may have.
MAX_DEPTH = 100
#: Most values (after YAML aliases are expanded) a config may hold.
MAX_VALUES = 1_000_000


class UnsafeConfigError(ValueError):
    """A config refused because reading it would run code (a YAML tag that
    builds Python objects, ``custom_imports``, a Python base of a data
    config without the opt-in) or exhaust resources (absurd nesting or
    alias expansion). The message names the file and the offending tag,
    key or base, and says what would work."""


def too_big(path, what: str) -> UnsafeConfigError:
    """The error for a config nested too deeply or holding too much."""
    return UnsafeConfigError(
        f'config {path}: {what}; configs hold at most {MAX_VALUES:,} values '
        f'nested at most {MAX_DEPTH} levels deep (self-referencing or '
        f'multiplying YAML aliases count every expansion). Write the data '
        f'out flat')



class _NestingError(Exception):
    pass


class BoundedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that stops at :data:`MAX_DEPTH` levels: PyYAML's
    scanner does work quadratic in the flow nesting depth (a 4 KB
    ``[[[[...`` file takes seconds) and its composer recurses per level."""

    def fetch_flow_collection_start(self, TokenClass):
        if self.flow_level >= MAX_DEPTH:
            raise _NestingError(self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column):
        if len(self.indents) >= MAX_DEPTH:
            raise _NestingError(self.get_mark())
        return super().add_indent(column)


def parse_data_file(path: Path) -> Any:
    """The content of one YAML or JSON file (by suffix), parsed safely.

    Raises:
        UnsafeConfigError: a tag that builds Python objects, or nesting
            deeper than :data:`MAX_DEPTH`.
        ValueError: not valid YAML/JSON or not UTF-8 text.
    """
    is_yaml = path.suffix in YAML_SUFFIXES
    kind = 'YAML' if is_yaml else 'JSON'
    try:
        with open(path, encoding='utf-8') as f:
            return yaml.load(f, Loader=BoundedSafeLoader) if is_yaml else \
                json.load(f)
    except _NestingError as err:
        raise too_big(path, f'the YAML is nested more than {MAX_DEPTH} '
                      f'levels deep at {err.args[0]}') from None
    except yaml.constructor.ConstructorError as err:
        problem = (getattr(err, 'problem', '') or str(err)).strip()
        if 'could not determine a constructor' not in problem:
            raise ValueError(f'config {path} is not valid YAML config data: '
                             f'{problem} at {err.problem_mark}') from None
        raise UnsafeConfigError(
            f'config {path}: {problem} at {err.problem_mark}. YAML '
            f'configs are read with yaml.safe_load: plain mappings, lists, '
            f'strings and numbers only; tags that build Python objects '
            f'(!!python/...) are refused and nothing in the file was run'
        ) from None
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ValueError(f'config {path} is not valid {kind}: {err}') \
            from None
    except UnicodeDecodeError as err:
        raise ValueError(f'config {path} is not UTF-8 text: {err}') from None
    except ValueError as err:  # e.g. an int beyond Python's digit limit
        raise ValueError(f'config {path}: a value cannot be read: '
                         f'{err}') from None
    except RecursionError:
        raise too_big(path, f'the {kind} is nested too deeply to parse') \
            from None
