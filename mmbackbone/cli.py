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

Subcommands live in :data:`SUBCOMMANDS`; :func:`register_subcommand` adds
one (e.g. ``weights``).

Example:
    >>> from mmbackbone.cli import main
    >>> main(['list', 'ResNet'])  # doctest: +ELLIPSIS
    ResNet  resnet18, resnet34, resnet50, ...
    0
"""
import argparse
import ast
import contextlib
import fnmatch
import importlib
import inspect
import json
import os
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import (Any, Callable, Dict, Iterable, List, Optional,
                    Sequence, Tuple)

#: Errors reported as ``mmbackbone CMD: error: ...`` with exit code 1.
USER_ERRORS = (KeyError, ValueError, TypeError, FileNotFoundError)


@dataclass
class Subcommand:
    """``setup(parser)`` adds the arguments; ``run(args, extra) -> int``
    gets the parsed namespace and the arguments left over (``--ARG VALUE``
    pairs for the constructor), or ``None`` when it takes no extras."""
    setup: Callable[[argparse.ArgumentParser], None]
    run: Callable[..., int]
    help: str
    takes_extra: bool = False


SUBCOMMANDS: Dict[str, Subcommand] = {}


def register_subcommand(name: str, setup: Callable, run: Callable,
                        help: str, takes_extra: bool = False) -> None:
    """Add (or replace) a subcommand of ``mmbackbone``; ``help`` is its
    one-line description in ``mmbackbone --help`` (keep it under about 55
    characters so that it fits one line)."""
    SUBCOMMANDS[name] = Subcommand(setup, run, help, takes_extra)


def _message(err: BaseException) -> str:
    if isinstance(err, KeyError) and len(err.args) == 1:
        return str(err.args[0])
    return str(err)


# -------------------------------------------------------------- progress
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
    a terminal (CI logs stay clean), and when tqdm (carried by timm through
    huggingface_hub) is not installed.

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


# ------------------------------------------------------------- resolving
def _zoo(obj) -> Dict[str, dict]:
    zoo = getattr(obj, 'zoo_configs', None)
    return dict(zoo) if isinstance(zoo, dict) else {}


def resolve_backbone(name: str) -> Tuple[Callable, str, dict]:
    """``(class or function, type name, base kwargs)`` for a type or arch.

    Raises:
        KeyError: neither a registered type nor a zoo arch name.
    """
    from mmbackbone.apis import list_backbones, resolve_type
    from mmbackbone.registry import MODELS
    from mmbackbone.utils import closest
    try:
        obj = resolve_type(name, MODELS)
        return obj, name.split('.')[-1], {}
    except KeyError:
        pass
    archs = {}
    for type_name in list_backbones():
        for arch, kwargs in _zoo(MODELS.get(type_name)).items():
            archs.setdefault(arch, (type_name, kwargs))
    if name in archs:
        type_name, kwargs = archs[name]
        return MODELS.get(type_name), type_name, dict(kwargs)
    names = list_backbones() + sorted(archs)
    raise KeyError(f'{name!r} is neither a registered backbone type nor a '
                   f'zoo arch name.{closest(name, names)} Run '
                   f'`mmbackbone list` to see them')


# ------------------------------------------------ constructor arguments
def constructor_parameters(obj: Callable
                           ) -> Tuple[List[inspect.Parameter], bool]:
    """Keyword parameters of a class (or function) and whether it also
    takes ``**kwargs`` that no class in its MRO names.

    A subclass ``__init__(self, **kwargs)`` forwarding to its base (e.g.
    ``ResNetV1c``) gets the base's parameters too.
    """
    targets = ([c.__dict__['__init__'] for c in obj.__mro__
                if '__init__' in c.__dict__] if inspect.isclass(obj)
               else [obj])
    params: Dict[str, inspect.Parameter] = {}
    open_kwargs = False
    for target in targets:
        if getattr(target, '__module__', '').split('.')[0] in (
                'torch', 'mmengine', 'builtins'):
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


def _arg_docs(obj: Callable) -> Dict[str, str]:
    """First line of each argument's description in a Google docstring."""
    docs: Dict[str, str] = {}
    in_args = False
    for line in (inspect.getdoc(obj) or '').splitlines():
        if re.match(r'^(Args|Arguments):\s*$', line):
            in_args = True
            continue
        if in_args and line and not line.startswith(' '):
            in_args = False
        match = re.match(r'^\s{4}(\w+)(?:\s*\(.*?\))?:\s*(.*)$', line)
        if in_args and match:
            docs[match.group(1)] = match.group(2)
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
    """An argparse parser with one ``--NAME VALUE`` option per argument."""
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
    """``--NAME VALUE`` pairs to keyword arguments of ``obj``."""
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


def _call_repr(type_name: str, kwargs: dict) -> str:
    return f'{type_name}({", ".join(f"{k}={v!r}" for k, v in kwargs.items())})'


def _build(obj: Callable, type_name: str, kwargs: dict):
    from mmbackbone.apis import build_backbone
    from mmbackbone.registry import MODELS
    registered = MODELS.get(type_name) is obj
    return build_backbone(dict(type=type_name if registered else obj,
                               **kwargs))


# -------------------------------------------------------------- list
def _setup_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('pattern', nargs='?', default=None,
                        help='fnmatch pattern (case-insensitive) matched '
                        "against type and arch names, e.g. 'ResNet*' or "
                        "'*50'")


def run_list(args: argparse.Namespace) -> int:
    """Print each backbone type with its zoo arch names."""
    from mmbackbone.apis import list_backbones
    from mmbackbone.registry import MODELS
    rows = []
    pattern = args.pattern.lower() if args.pattern else None
    for name in list_backbones():
        archs = list(_zoo(MODELS.get(name)))
        if pattern is not None and not fnmatch.fnmatchcase(name.lower(),
                                                           pattern):
            archs = [a for a in archs
                     if fnmatch.fnmatchcase(a.lower(), pattern)]
            if not archs:
                continue
        rows.append((name, archs))
    if not rows:
        print(f'no backbone type or arch matches {args.pattern!r}; '
              f'registered types: {", ".join(list_backbones())}',
              file=sys.stderr)
        return 1
    width = max(len(name) for name, _ in rows)
    for name, archs in rows:
        print(f'{name:<{width}}  {", ".join(archs) or "-"}'.rstrip())
    return 0


# -------------------------------------------------------------- info
def _setup_info(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('-h', '--help', action='store_true',
                        help='show this help, or with TYPE the options of '
                        'its constructor')
    parser.add_argument('--flops-at', default='224', metavar='N|HxW',
                        help='input size of the FLOP count (default 224)')
    parser.add_argument('--no-flops', action='store_true',
                        help='skip the FLOP count (a jit trace)')
    _add_config_options(parser, 'describe instead of TYPE')
    parser.add_argument('type', nargs='?', metavar='TYPE',
                        help='a registered type (ResNet) or arch (resnet50)')


def _add_config_options(parser: argparse.ArgumentParser, what: str,
                        group=None) -> None:
    """``--config FILE`` and ``--allow-python-bases``, alike in every
    subcommand that reads a config."""
    (group or parser).add_argument(
        '--config', metavar='FILE',
        help=f'an mmengine config (.yaml/.json data, or .py code); its '
        f'model.backbone (or backbone) is the model to {what}')
    parser.add_argument('--allow-python-bases', action='store_true',
                        help='let a YAML/JSON --config inherit from .py '
                        'files (which are then run); off by default')


def _check_config_options(args: argparse.Namespace, extra: List[str]
                          ) -> None:
    """Refuse options that would be ignored next to (or without)
    ``--config``."""
    if args.config is None:
        if args.allow_python_bases:
            raise ValueError('--allow-python-bases applies to --config '
                             'files only; no --config was given')
        return
    if extra:
        raise ValueError(f'--ARG options {extra} apply to a TYPE only; '
                         f'set them in the config {args.config}')


def _input_size(text: str) -> Tuple[int, int]:
    match = re.fullmatch(r'(\d+)(?:[x,](\d+))?', text.strip())
    if not match or int(match.group(1)) < 1:
        raise ValueError(f'--flops-at={text!r} must be N or HxW, e.g. 224 '
                         f'or 224x320')
    height = int(match.group(1))
    return height, int(match.group(2) or height)


def count_flops(model, shape: Tuple[int, ...]) -> int:
    """Multiply-adds of one forward pass (mmengine's FlopAnalyzer, the
    fvcore convention: one fused multiply-add counts as one flop)."""
    import torch
    from mmengine.analysis import FlopAnalyzer
    with torch.no_grad():
        analyzer = FlopAnalyzer(model, (torch.zeros(shape), ))
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        return int(analyzer.total())


def describe(model, shape: Optional[Tuple[int, ...]]) -> List[str]:
    """Lines of ``mmbackbone info``: outputs, params, GFLOPs."""
    lines = []
    for attr in ('out_indices', 'out_channels', 'out_strides',
                 'out_features'):
        value = getattr(model, attr, None)
        if value is not None:
            lines.append(f'{attr + ":":<14}{value}')
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines.append(f'{"params:":<14}{params / 1e6:.2f} M ({params:,}; '
                 f'{trainable:,} trainable)')
    if shape is not None:
        try:
            flops = count_flops(model, shape)
            lines.append(f'{"GFLOPs:":<14}{flops / 1e9:.2f} at '
                         f'{"x".join(map(str, shape))} (multiply-adds)')
        except Exception as err:  # tracing can fail on exotic models
            lines.append(f'{"GFLOPs:":<14}n/a ({type(err).__name__}: '
                         f'{_message(err).splitlines()[0][:120]})')
    return lines


def run_info(args: argparse.Namespace, extra: List[str]) -> int:
    """Build a backbone from the command line and describe it."""
    if args.type is None and (args.help or args.config is None):
        args._parser.print_help()
        return 0 if args.help else 2
    _check_config_options(args, extra)
    if args.config is not None and args.type is not None:
        raise ValueError(f'give TYPE ({args.type!r}) or --config '
                         f'({args.config!r}), not both')
    height, width = _input_size(args.flops_at)
    if args.config is not None:
        obj, type_name, kwargs = _backbone_from_config(
            args.config, args.allow_python_bases)
    else:
        obj, type_name, kwargs = resolve_backbone(args.type)
        prog = f'mmbackbone info {args.type}'
        argv = list(extra) + (['--help'] if args.help else [])
        kwargs.update(parse_constructor_args(obj, argv, prog))
    model = _build(obj, type_name, kwargs).eval()
    in_channels = kwargs.get('in_channels', 3)
    if not isinstance(in_channels, int) or isinstance(in_channels, bool):
        in_channels = 3
    shape = None if args.no_flops else (1, in_channels, height, width)
    print(_call_repr(type_name, kwargs))
    for line in describe(model, shape):
        print(f'  {line}')
    return 0


# ----------------------------------------------------------- convert
def _setup_convert(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('src', metavar='SRC',
                        help='checkpoint of timm, torchvision, mmpretrain '
                        'or ours (.pth/.pt/.bin/.safetensors)')
    parser.add_argument('dst', metavar='DST',
                        help='output file, ending in .safetensors')
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument('--type', metavar='TYPE',
                        help='target type (ResNet) or arch (resnet50); '
                        'further --ARG VALUE options configure it')
    _add_config_options(parser, 'convert to', group=target)
    parser.add_argument('--prefix', default=None,
                        help="keep and strip this key prefix (e.g. "
                        "'backbone'); by default 'backbone.' is stripped "
                        'when that fits the model better')
    parser.add_argument('--dtype', choices=('float32', 'float16',
                                            'bfloat16'), default=None,
                        help='cast floating tensors (default: keep)')
    parser.add_argument('--allow-missing', action='store_true',
                        help='write even if model keys are missing from '
                        'the file')
    parser.add_argument('--no-progress', action='store_true',
                        help='no progress bar (it is shown only when '
                        'stderr is a terminal)')


def _backbone_from_config(path: str, allow_python_bases: bool = False
                          ) -> Tuple[Callable, str, dict]:
    """Read a config with :func:`mmbackbone.engine.load_config` (YAML/JSON
    as data; ``.py`` bases of those only with ``allow_python_bases``) and
    return its backbone's ``(class, type name, kwargs)``."""
    from mmbackbone.apis import check_config_types
    from mmbackbone.engine import load_config
    cfg = load_config(path, allow_python_bases=allow_python_bases).to_dict()
    for where in (('model', 'backbone'), ('backbone', ), ('model', )):
        node: Any = cfg
        for key in where:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and 'type' in node and (
                where != ('model', ) or node['type'] != 'ImageClassifier'):
            check_config_types(node, f'config {path}: {".".join(where)}')
            kwargs = dict(node)
            type_name = kwargs.pop('type')
            kwargs.pop('init_cfg', None)  # no pretrained load while converting
            try:
                obj, type_name, base = resolve_backbone(type_name)
            except KeyError as err:
                raise KeyError(f'config {path}: {".".join(where)}.type: '
                               f'{err.args[0]}') from None
            return obj, type_name, {**base, **kwargs}
    raise KeyError(f'config {path} has no model.backbone, backbone or model '
                   f'entry with a "type"; top-level keys: {sorted(cfg)}')


def _short(keys: Sequence[str], limit: int = 6) -> str:
    keys = list(keys)
    more = f', ... (+{len(keys) - limit})' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def convert_checkpoint(src: str, model, prefix: Optional[str] = None,
                       allow_missing: bool = False
                       ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Convert a checkpoint file to ``model``'s keys.

    Returns:
        tuple: the state dict to write and a report dict (``source``,
        ``prefix``, ``dropped`` (file keys not written; ``None`` when they
        cannot be told apart from renamed ones), ``missing``, ``adapted``,
        ``src_keys`` (tensors in the file)).

    Raises:
        ValueError: no key fits, a shape differs, or keys are missing
            (unless ``allow_missing``).
    """
    from mmbackbone.checkpoint import CheckpointError, read_state_dict
    from mmbackbone.checkpoint.convert import best_conversion, fit_score
    from mmbackbone.checkpoint.loader import fit_state_dict, strip_prefix
    state = read_state_dict(src)
    target = model.state_dict()
    candidates = []
    if prefix:
        candidates.append((prefix, strip_prefix(state, prefix, src)))
    else:
        candidates.append((None, state))
        if any(k.startswith('backbone.') for k in state):
            candidates.append(('backbone.',
                               strip_prefix(state, 'backbone.', src)))
    # the prefix whose best conversion fits the model best
    used_prefix, original = max(
        candidates,
        key=lambda c: fit_score(best_conversion(c[1], model)[1], target))
    written, load_report = fit_state_dict(model, original, src)
    missing = load_report.missing
    if missing and not allow_missing:
        raise CheckpointError(
            f'checkpoint {src}: {len(missing)} tensors of '
            f'{type(model).__name__} are missing from the file: '
            f'{_short(missing)}; pass --allow-missing to write it anyway')
    report = dict(source=load_report.source, prefix=used_prefix,
                  adapted=load_report.adapted,
                  missing=missing, src_keys=len(state),
                  dropped=_unused_keys(state, original, written,
                                       used_prefix))
    return written, report


def _unused_keys(state: Dict[str, Any], original: Dict[str, Any],
                 written: Dict[str, Any],
                 prefix: Optional[str]) -> Optional[List[str]]:
    """File keys whose tensors were not written, in the file's spelling.

    Converters rename keys and pass tensors through, so a tensor is
    recognised by its storage. When that accounting does not add up
    (a converter built new tensors), ``None``.
    """
    def storage(tensor):
        return tensor.untyped_storage().data_ptr()

    head = prefix.rstrip('.') + '.' if prefix else ''
    outside = [k for k in state if not k.startswith(head)]
    used = {storage(t) for t in written.values()}
    unused = [head + k for k, t in original.items()
              if storage(t) not in used]
    if len(original) - len(unused) != len(written):
        return None
    return sorted(outside + unused)


def run_convert(args: argparse.Namespace, extra: List[str]) -> int:
    """Convert a checkpoint to our keys and write ``.safetensors``."""
    import torch
    from safetensors.torch import save_file
    dst = Path(args.dst)
    if dst.suffix != '.safetensors':
        raise ValueError(f'DST={args.dst!r} must end with .safetensors')
    _check_config_options(args, extra)
    if args.config is not None:
        obj, type_name, kwargs = _backbone_from_config(
            args.config, args.allow_python_bases)
    else:
        obj, type_name, kwargs = resolve_backbone(args.type)
        kwargs.update(parse_constructor_args(
            obj, extra, f'mmbackbone convert SRC DST --type {args.type}'))
    model = _build(obj, type_name, kwargs)
    state, report = convert_checkpoint(args.src, model, args.prefix,
                                       args.allow_missing)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    tensors = {}
    keys = list(state)
    for key in progress(keys, 'converting', unit='tensor',
                        enabled=False if args.no_progress else None):
        tensor = state[key].detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[key] = tensor.contiguous().clone()
    dst.parent.mkdir(parents=True, exist_ok=True)
    metadata = {'format': 'pt', 'type': type_name,
                'kwargs': json.dumps(kwargs, default=repr),
                'source': report['source'], 'converted_from': str(args.src)}
    partial = dst.with_name(dst.name + '.tmp')
    try:  # write next to DST, then rename: no half-written DST
        save_file(tensors, str(partial), metadata=metadata)
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)
    print(f'Converted {args.src} ({report["source"]} keys'
          + (f", prefix {report['prefix']!r} stripped"
             if report['prefix'] else '')
          + f') to {_call_repr(type_name, kwargs)}: '
          f'{len(tensors)} tensors written to {dst}')
    if report['adapted']:
        print(f'  adapted: {"; ".join(report["adapted"])}')
    if report['dropped']:
        print(f'  dropped {len(report["dropped"])} keys the model does not '
              f'have: {_short(report["dropped"])}')
    elif report['dropped'] is None:
        print(f'  {report["src_keys"] - len(tensors)} of the file\'s '
              f'{report["src_keys"]} tensors were not written')
    if report['missing']:
        print(f'  missing {len(report["missing"])} model keys: '
              f'{_short(report["missing"])}')
    return 0


def _setup_weights(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('pattern', nargs='?', default=None,
                        help="fnmatch pattern over weights names, e.g. "
                        "'resnet50.*' or '*mmpretrain*'")


def run_weights(args: argparse.Namespace) -> int:
    """Print the weights index: name, type/arch, source, top-1, size."""
    from mmbackbone.zoo import list_weights
    entries = list_weights(args.pattern)
    if not entries:
        print(f'no weights match {args.pattern!r}')
        return 1
    header = ('name', 'type', 'arch', 'source', 'top-1', 'params', 'default')
    rows = [(e.name, e.type, e.arch, e.source,
             '-' if e.top1 is None else f'{e.top1:.2f}',
             f'{e.params / 1e6:.1f}M', '*' if e.default else '')
            for e in entries]
    widths = [max(len(str(r[i])) for r in [header, *rows])
              for i in range(len(header))]
    for row in [header, *rows]:
        print('  '.join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


register_subcommand('list', _setup_list, run_list,
                    'list backbone types and their zoo arch names')
register_subcommand('info', _setup_info, run_info,
                    'build a backbone; print its outputs, params, GFLOPs',
                    takes_extra=True)
register_subcommand('convert', _setup_convert, run_convert,
                    'convert timm/torchvision/mmpretrain weights to ours',
                    takes_extra=True)
register_subcommand('weights', _setup_weights, run_weights,
                    'list the pretrained weights (pretrained=True)')


# --------------------------------------------------------------- main
@contextlib.contextmanager
def _cwd_importable(needed: bool):
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
    """The top-level parser, one subparser per :data:`SUBCOMMANDS` entry."""
    parser = argparse.ArgumentParser(
        prog='mmbackbone',
        description='List, inspect and convert mmbackbone backbones.',
        allow_abbrev=False)
    from mmbackbone.version import __version__
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
              f'{_message(err)}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
