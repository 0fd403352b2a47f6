"""``--cfg-options KEY=VALUE ...``: command-line overrides read as data.

mmengine's ``DictAction`` reads values with its own recursive splitter:
a value such as ``dict(type='Pretrained', checkpoint='r18.pth')`` ends
in a ``RecursionError`` and ``{'k': 1}`` stays a string.
:class:`ConfigOptionsAction` reads each value as a Python literal instead
(numbers, strings, ``True``/``False``/``None``, lists, tuples, dicts) and
also accepts ``dict(key=value, ...)`` calls, the spelling configs use.
No other call and no name is evaluated: nothing on a command line runs
code. A value that is not a literal stays a string (``work_dir=w/r18``),
and ``a,b,c`` is a list, as in mmengine.

Example:
    >>> parse_option_value("dict(type='Pretrained', checkpoint='r18.pth')")
    {'type': 'Pretrained', 'checkpoint': 'r18.pth'}
    >>> parse_option_value('0.1,0.2'), parse_option_value('w/r18')
    ([0.1, 0.2], 'w/r18')
"""
import argparse
import ast
from typing import Any, Dict, List

from mmbackbone.utils.cli_options import add_allow_python_bases

#: Nesting deeper than this is refused (a literal that deep is no config).
MAX_DEPTH = 32


class OptionValueError(ValueError):
    """A ``--cfg-options`` entry that cannot be read as KEY=VALUE data."""


def _literal(node: ast.AST, text: str, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise OptionValueError(f'{text!r} nests deeper than {MAX_DEPTH} '
                               f'levels')
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(
            node.op, (ast.USub, ast.UAdd)) and isinstance(
                node.operand, ast.Constant) and isinstance(
                    node.operand.value, (int, float)):
        value = node.operand.value
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal(e, text, depth + 1) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise OptionValueError(f'{text!r}: ** unpacking is not data')
        return {_literal(k, text, depth + 1): _literal(v, text, depth + 1)
                for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
            and node.func.id == 'dict' and not node.args \
            and all(k.arg is not None for k in node.keywords):
        return {k.arg: _literal(k.value, text, depth + 1)
                for k in node.keywords}
    raise OptionValueError(
        f'{text!r} is not a literal: use numbers, quoted strings, True/False/'
        f'None, [lists], (tuples), {{dicts}} or dict(key=value, ...)')


def parse_option_value(text: str) -> Any:
    """Read one ``--cfg-options`` value (see the module docstring)."""
    try:
        tree = ast.parse(text.strip(), mode='eval')
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        tree = None
    if tree is not None:
        try:
            value = _literal(tree.body, text)
            if isinstance(value, tuple) and not text.lstrip().startswith('('):
                return list(value)  # a,b,c is a list, as in mmengine
            return value
        except OptionValueError:
            if isinstance(tree.body, (ast.Call, ast.Dict, ast.List,
                                      ast.Tuple)) and not isinstance(
                                          tree.body, ast.Tuple):
                raise  # shaped like data but is not: say so
    if text.lower() in ('true', 'false'):
        return text.lower() == 'true'
    if ',' in text and not text.startswith(('[', '(', '{')):
        return [parse_option_value(part) for part in text.split(',')]
    return text


def parse_options(pairs: List[str]) -> Dict[str, Any]:
    """``['a.b=1', 'c=x']`` -> ``{'a.b': 1, 'c': 'x'}``."""
    options: Dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition('=')
        if not sep or not key:
            raise OptionValueError(
                f'--cfg-options entry {pair!r} must be KEY=VALUE, e.g. '
                f'train_cfg.max_epochs=2')
        try:
            options[key] = parse_option_value(value)
        except OptionValueError as err:
            raise OptionValueError(f'--cfg-options {key}: {err}') from None
    return options


class ConfigOptionsAction(argparse.Action):
    """argparse action for ``--cfg-options KEY=VALUE [KEY=VALUE ...]``.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> _ = parser.add_argument('--cfg-options', nargs='+',
        ...                         action=ConfigOptionsAction)
        >>> parser.parse_args(['--cfg-options', 'a.b=(0, 3)']).cfg_options
        {'a.b': (0, 3)}
    """

    def __call__(self, parser, namespace, values, option_string=None):
        options = dict(getattr(namespace, self.dest, None) or {})
        try:
            options.update(parse_options(list(values)))
        except OptionValueError as err:
            parser.error(str(err))
        setattr(namespace, self.dest, options)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The config options every tool that reads a config takes:
    ``--cfg-options`` and ``--allow-python-bases``."""
    parser.add_argument('--cfg-options', nargs='+', default=None,
                        action=ConfigOptionsAction, metavar='KEY=VALUE',
                        help='override config entries, e.g. '
                        'train_cfg.max_epochs=2 "model.backbone.init_cfg='
                        "dict(type='Pretrained', checkpoint='r18.pth')\"; "
                        'values are literals, never code')
    add_allow_python_bases(parser)
