"""The ``mmbackbone`` command: list, inspect and convert backbones.

Usage::

    mmbackbone [--import MODULE] COMMAND ...
    mmbackbone list [PATTERN]
    mmbackbone info [--flops-at N] [--no-flops] (TYPE [--ARG VALUE ...]
                                                 | --config FILE)
    mmbackbone convert SRC DST.safetensors (--type TYPE [--ARG VALUE ...]
                                            | --config FILE) [--prefix P]
    mmbackbone weights [PATTERN]

``TYPE`` is a registered type (``ResNet``) or a zoo arch name
(``resnet50``). ``--ARG VALUE`` options come from the constructor's
signature (``mmbackbone info ResNet --help`` lists them); values are read
as Python literals (``--out_indices "(0, 3)"``, ``--depth 101``) with
:func:`ast.literal_eval`, and kept as strings otherwise. ``--config`` files
are read by :func:`mmbackbone.engine.load_config`: YAML/JSON are data, and
their ``.py`` bases are run only with ``--allow-python-bases``.

``--import MODULE`` finds modules in the current directory, as
``python -m`` does (``mmbackbone --import my_project info LeNet5`` from the
folder holding ``my_project/``).

Long work (``convert``) shows a tqdm bar on stderr when stderr is a
terminal; ``--no-progress`` turns it off.

Subcommands live in :data:`SUBCOMMANDS`, one module each (:mod:`.list_cmd`,
:mod:`.info`, :mod:`.convert`, :mod:`.weights`); :func:`register_subcommand`
adds one. :mod:`.args` turns constructor signatures into options.

Example:
    >>> from mmbackbone.cli import main
    >>> main(['list', 'ResNet'])  # doctest: +ELLIPSIS
    ResNet  resnet18, resnet34, resnet50, ...
    0
"""
import argparse
import contextlib
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, Optional, Sequence

from mmbackbone.checkpoint.convert_file import convert_checkpoint
from mmbackbone.utils.flops import count_flops
from mmbackbone.version import __version__

from . import convert, info, list_cmd, weights
from .args import (constructor_parameters, constructor_parser,
                   parse_constructor_args, parse_value)
from .backbone import backbone_from_config, resolve_backbone
from .errors import USER_ERRORS, error_message
from .info import describe

#: The former private name, kept for callers of the config reader.
_backbone_from_config = backbone_from_config

__all__ = ['main', 'build_parser', 'register_subcommand', 'Subcommand',
           'SUBCOMMANDS', 'USER_ERRORS', 'import_modules', 'progress',
           'stderr_is_terminal', 'resolve_backbone', 'constructor_parameters',
           'constructor_parser', 'parse_constructor_args', 'parse_value',
           'describe', 'count_flops', 'convert_checkpoint']


def stderr_is_terminal() -> bool:
    """Whether stderr is an interactive terminal (not a CI log or pipe)."""
    isatty = getattr(sys.stderr, 'isatty', None)
    try:
        return bool(isatty is not None and isatty())
    except ValueError:  # a closed stream
        return False


def progress(iterable: Iterable, desc: str, *, total: Optional[int] = None,
             unit: str = 'it', enabled: Optional[bool] = None) -> Iterable:
    """``iterable`` with a tqdm bar on stderr, or ``iterable`` itself.

    The bar is off when ``enabled`` is False, by default when stderr is not
    a terminal (CI logs stay clean; :func:`stderr_is_terminal` of this
    package decides, for every command and for ``tools/``), and when tqdm
    (carried by timm through huggingface_hub) is not installed.

    Example:
        >>> list(progress(range(3), 'counting', enabled=False))
        [0, 1, 2]
    """
    if enabled is None:
        enabled = stderr_is_terminal()
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, unit=unit,
                file=sys.stderr, leave=False, dynamic_ncols=True)


# ----------------------------------------------------------- subcommands
@dataclass
class Subcommand:
    """``setup(parser)`` adds the arguments; ``run(args, extra) -> int``
    gets the parsed namespace and the arguments left over (``--ARG VALUE``
    pairs for the constructor), or ``run(args)`` when it takes no extras."""
    setup: Callable[[argparse.ArgumentParser], None]
    run: Callable[..., int]
    help: str
    takes_extra: bool = False


SUBCOMMANDS: Dict[str, Subcommand] = {}


def register_subcommand(name: str, setup: Callable, run: Callable,
                        help: str, takes_extra: bool = False) -> None:
    """Add (or replace) a subcommand of ``mmbackbone``; ``help`` is its
    one-line description in ``mmbackbone --help`` (keep it under about 55
    characters so that it fits one line).

    Example:
        >>> def setup(parser):
        ...     parser.add_argument('name')
        >>> def run(args):
        ...     print(f'hello {args.name}')
        >>> register_subcommand('hello', setup, run, 'greet someone')
        >>> main(['hello', 'world'])
        hello world
        0
        >>> del SUBCOMMANDS['hello']
    """
    SUBCOMMANDS[name] = Subcommand(setup, run, help, takes_extra)


register_subcommand('list', list_cmd.setup, list_cmd.run, list_cmd.HELP)
register_subcommand('info', info.setup, info.run, info.HELP,
                    takes_extra=True)
register_subcommand('convert', convert.setup, convert.run, convert.HELP,
                    takes_extra=True)
register_subcommand('weights', weights.setup, weights.run, weights.HELP)


# ------------------------------------------------------------------ main
@contextlib.contextmanager
def _cwd_importable(needed: bool) -> Iterator[None]:
    """Put the current directory at the front of ``sys.path`` (as
    ``python -m`` does) while the command runs, unless it is there already;
    restore ``sys.path`` afterwards."""
    cwd = os.getcwd()
    present = any(os.path.realpath(entry or os.curdir)
                  == os.path.realpath(cwd) for entry in sys.path
                  if isinstance(entry, str))
    if not needed or present:
        yield
        return
    sys.path.insert(0, cwd)
    try:
        yield
    finally:
        try:
            sys.path.remove(cwd)
        except ValueError:  # the command removed it already
            pass


def import_modules(names: Sequence[str]) -> None:
    """Import the ``--import`` modules (the current directory is searched
    first while :func:`main` runs).

    Raises:
        ImportError: a module cannot be imported; says where it was looked
            for.

    Example:
        >>> import_modules(['json'])
    """
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not (name == err.name or name.startswith(
                    err.name + '.')):
                raise  # the module itself failed importing another one
            raise ModuleNotFoundError(
                f'--import {name}: no module named {err.name!r} in the '
                f'current directory ({os.getcwd()}) or on sys.path; run '
                f'from the folder that holds it, or add that folder to '
                f'PYTHONPATH', name=err.name) from None


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser, one subparser per :data:`SUBCOMMANDS` entry.

    Example:
        >>> build_parser().parse_args(['list', 'res*']).pattern
        'res*'
    """
    parser = argparse.ArgumentParser(
        prog='mmbackbone',
        description='List, inspect and convert mmbackbone backbones.',
        allow_abbrev=False)
    parser.add_argument('--version', action='version',
                        version=f'mmbackbone {__version__}')
    parser.add_argument('--import', dest='imports', action='append',
                        default=[], metavar='MODULE',
                        help='import a module first (repeatable), e.g. one '
                        'that registers your own backbones; the current '
                        'directory is searched first, as with python -m')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    for name, command in SUBCOMMANDS.items():
        add_help = name != 'info'  # info forwards --help to the TYPE
        child = sub.add_parser(name, help=command.help,
                               description=command.help, add_help=add_help,
                               allow_abbrev=False)
        command.setup(child)
        child.set_defaults(_command=command, _parser=child)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``mmbackbone``; returns the exit code (0 ok, 1 error, 2 usage).

    Example:
        >>> main(['info', '--no-flops', 'ResNet', '--depth', '18'])
        ResNet(depth=18)
          out_indices:  (3,)
          out_channels: (512,)
          out_strides:  (32,)
          out_features: 512
          params:       11.18 M (11,176,512; 11,176,512 trainable)
        0
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, extra = parser.parse_known_args(argv)
        command = getattr(args, '_command', None)
        if command is None:
            parser.print_help()
            return 2
        if extra and not command.takes_extra:
            args._parser.error(f'unrecognized arguments: {" ".join(extra)}')
        with _cwd_importable(bool(args.imports)):
            import_modules(args.imports)
            if command.takes_extra:
                return int(command.run(args, extra) or 0)
            return int(command.run(args) or 0)
    except SystemExit as exit_:  # --help, usage errors
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    except (*USER_ERRORS, ImportError) as err:
        print(f'mmbackbone {args.command}: error: '
              f'{error_message(err)}', file=sys.stderr)
        return 1
