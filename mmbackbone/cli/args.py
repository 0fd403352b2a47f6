"""Command-line options inferred from a constructor's signature.

Each keyword argument of a backbone class becomes a ``--NAME VALUE``
option (and ``--NAME-WITH-DASHES`` for names with underscores), described
by the first line of its ``Args:`` entry in the class docstring. Values are
Python literals, read with :func:`ast.literal_eval` (no code runs), and
kept as text otherwise.

Example:
    >>> def make(depth: int = 50, style: str = 'pytorch'):
    ...     pass
    >>> parse_constructor_args(make, ['--depth', '101', '--style', 'caffe'],
    ...                        'demo')
    {'depth': 101, 'style': 'caffe'}
"""
import argparse
import ast
import inspect
import re
import types
import typing
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple


#: Top-level packages whose classes end the walk along a class's MRO: their
#: constructors and docstrings are not a backbone's own.
FRAMEWORK_PACKAGES = ('torch', 'mmengine', 'builtins')


def _from_framework(obj: Any) -> bool:
    """Whether ``obj`` (a class or function) is defined in one of
    :data:`FRAMEWORK_PACKAGES`."""
    module = getattr(obj, '__module__', None) or ''
    return module.split('.')[0] in FRAMEWORK_PACKAGES


def constructor_parameters(obj: Callable
                           ) -> Tuple[List[inspect.Parameter], bool]:
    """Keyword parameters of a class (or function) and whether it also
    takes ``**kwargs`` that no class in its MRO names.

    A subclass ``__init__(self, **kwargs)`` forwarding to its base (e.g.
    ``ResNetV1c``) gets the base's parameters too.

    Example:
        >>> from mmbackbone.models import ResNetV1c
        >>> params, open_kwargs = constructor_parameters(ResNetV1c)
        >>> [p.name for p in params][:3], open_kwargs
        (['depth', 'in_channels', 'stem_channels'], False)
    """
    targets = ([c.__dict__['__init__'] for c in obj.__mro__
                if '__init__' in c.__dict__] if inspect.isclass(obj)
               else [obj])
    params: Dict[str, inspect.Parameter] = {}
    open_kwargs = False
    for target in targets:
        if _from_framework(target):
            break
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            break
        open_kwargs = False
        for name, param in signature.parameters.items():
            if name == 'self' or param.kind is param.VAR_POSITIONAL:
                continue
            if param.kind is param.VAR_KEYWORD:
                open_kwargs = True
            elif param.kind is not param.POSITIONAL_ONLY:
                params.setdefault(name, param)
        if not open_kwargs:
            break
    return list(params.values()), open_kwargs


def _docstring_args(doc: str) -> Dict[str, str]:
    """First line of each argument's description in a Google docstring."""
    docs: Dict[str, str] = {}
    in_args = False
    for line in doc.splitlines():
        if re.match(r'^(Args|Arguments):\s*$', line):
            in_args = True
            continue
        if in_args and line and not line.startswith(' '):
            in_args = False
        match = re.match(r'^\s{4}(\w+)(?:\s*\(.*?\))?:\s*(.*)$', line)
        if in_args and match:
            docs[match.group(1)] = match.group(2)
    return docs


def _arg_docs(obj: Callable) -> Dict[str, str]:
    """First line of each argument's description in ``obj``'s docstring.

    For a class, the docstrings of its bases (along the MRO, up to the
    first class of :data:`FRAMEWORK_PACKAGES`) describe the arguments it
    does not document itself: a variant that documents only what it
    changes (``CSPDarkNet``) gets :class:`CSPNet`'s other descriptions.

    Example:
        >>> class Base:
        ...     '''A backbone.
        ...
        ...     Args:
        ...         depth (int): number of layers.
        ...         frozen_stages (int): stages to freeze.
        ...     '''
        >>> class Variant(Base):
        ...     '''A variant of it.
        ...
        ...     Args:
        ...         depth (int): 53 only.
        ...     '''
        >>> _arg_docs(Variant)
        {'depth': '53 only.', 'frozen_stages': 'stages to freeze.'}
    """
    docs = _docstring_args(inspect.getdoc(obj) or '')
    if inspect.isclass(obj):
        for base in obj.__mro__[1:]:
            if _from_framework(base):
                break
            own = base.__dict__.get('__doc__')
            for name, text in _docstring_args(
                    inspect.cleandoc(own) if isinstance(own, str)
                    else '').items():
                docs.setdefault(name, text)
    return docs


def _expects(annotation: Any, kind: type) -> bool:
    """Whether an annotation is exactly ``kind`` or ``Optional[kind]``."""
    if annotation is kind or annotation == kind.__name__:
        return True
    if isinstance(annotation, str):
        return annotation in (f'Optional[{kind.__name__}]',
                              f'{kind.__name__} | None')
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args == [kind]
    return False


def parse_value(text: str, param: Optional[inspect.Parameter] = None) -> Any:
    """A command-line value as a Python object.

    ``str`` parameters keep the text; ``bool`` ones take true/false/yes/no/
    1/0; others are read with :func:`ast.literal_eval` (no code runs) and
    kept as text when that fails.

    Example:
        >>> parse_value('(0, 3)'), parse_value('101'), parse_value('pytorch')
        ((0, 3), 101, 'pytorch')
    """
    annotation = param.annotation if param is not None else inspect._empty
    default = param.default if param is not None else inspect._empty
    if text == 'None':
        return None
    if _expects(annotation, bool) or (annotation is inspect._empty
                                      and isinstance(default, bool)):
        lowered = text.lower()
        if lowered in ('true', 'yes', '1'):
            return True
        if lowered in ('false', 'no', '0'):
            return False
        raise ValueError(f'--{param.name}={text!r} must be true or false')
    if _expects(annotation, str) or (annotation is inspect._empty
                                     and isinstance(default, str)):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def constructor_parser(obj: Callable, prog: str
                       ) -> Tuple[argparse.ArgumentParser, bool,
                                  Dict[str, inspect.Parameter]]:
    """An argparse parser with one ``--NAME VALUE`` option per argument.

    Returns:
        tuple: the parser, whether ``obj`` takes other keyword arguments
        too, and the parameters by option destination.

    Example:
        >>> def make(out_indices=(3, ), norm_eval: bool = False):
        ...     pass
        >>> parser, open_kwargs, params = constructor_parser(make, 'demo')
        >>> parser.parse_args(['--out-indices', '(0, 3)'])
        Namespace(out_indices='(0, 3)')
    """
    params, open_kwargs = constructor_parameters(obj)
    doc = (inspect.getdoc(obj) or '').split('\n\n')[0]
    epilog = ('Values are Python literals (e.g. "(0, 3)", 101, None, '
              "dict(type='BN') is not a literal: write {'type': 'BN'}); "
              'other text is taken as a string.')
    if open_kwargs:
        epilog += ' Other --NAME VALUE pairs are passed on as keyword ' \
                  'arguments.'
    parser = argparse.ArgumentParser(prog=prog, description=doc,
                                     epilog=epilog, allow_abbrev=False)
    docs = _arg_docs(obj)
    by_dest = {}
    for param in params:
        names = [f'--{param.name}']
        if '_' in param.name:
            names.append(f'--{param.name.replace("_", "-")}')
        if param.annotation is not inspect._empty:
            kind = inspect.formatannotation(param.annotation)
        else:
            kind = None
        parts = [docs.get(param.name, '')]
        if kind:
            parts.append(f'[{kind}]')
        if param.default is not inspect._empty:
            parts.append(f'(default: {param.default!r})')
        else:
            parts.append('(required)')
        parser.add_argument(*names, dest=param.name, metavar='VALUE',
                            default=argparse.SUPPRESS,
                            required=param.default is inspect._empty,
                            help=' '.join(p for p in parts if p)
                            .replace('%', '%%'))
        by_dest[param.name] = param
    return parser, open_kwargs, by_dest


def parse_constructor_args(obj: Callable, argv: Sequence[str],
                           prog: str) -> dict:
    """``--NAME VALUE`` pairs to keyword arguments of ``obj``.

    Names ``obj`` does not take are refused, unless it takes ``**kwargs``:
    then they are passed on, with dashes read as underscores.

    Example:
        >>> def make(depth=50, **kwargs):
        ...     pass
        >>> parse_constructor_args(make, ['--depth', '18', '--drop-rate',
        ...                               '0.1'], 'demo')
        {'depth': 18, 'drop_rate': 0.1}
    """
    parser, open_kwargs, params = constructor_parser(obj, prog)
    if open_kwargs:
        namespace, rest = parser.parse_known_args(list(argv))
    else:
        namespace, rest = parser.parse_args(list(argv)), []
    kwargs = {name: parse_value(text, params[name])
              for name, text in vars(namespace).items()}
    i = 0
    while i < len(rest):
        key = rest[i]
        if not key.startswith('--') or i + 1 >= len(rest):
            parser.error(f'expected --NAME VALUE pairs; got {rest[i:]}')
        kwargs[key[2:].replace('-', '_')] = parse_value(rest[i + 1])
        i += 2
    return kwargs
