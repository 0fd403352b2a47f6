"""The backbone a command line names: ``TYPE [--ARG VALUE ...]`` or
``--config FILE``.

``TYPE`` is a registered type (``ResNet``) or a zoo arch name
(``resnet50``); an arch brings its table row as base keyword arguments.

Example:
    >>> obj, type_name, kwargs = resolve_backbone('resnet50')
    >>> type_name, kwargs
    ('ResNet', {'depth': 50})
    >>> build(obj, type_name, kwargs).out_channels
    (2048,)
"""
import argparse
from typing import Any, Callable, Dict, List, Optional, Tuple

from torch import nn

from mmbackbone.apis import (build_backbone, check_config_types,
                             list_backbones, resolve_type)
from mmbackbone.registry import MODELS
from mmbackbone.utils.cli_options import add_allow_python_bases
from mmbackbone.utils import closest


def zoo_configs(obj: Any) -> Dict[str, dict]:
    """The ``zoo_configs`` table of a backbone class (arch name to keyword
    arguments); empty when it has none."""
    zoo = getattr(obj, 'zoo_configs', None)
    return dict(zoo) if isinstance(zoo, dict) else {}


def resolve_backbone(name: str) -> Tuple[Callable, str, dict]:
    """``(class or function, type name, base kwargs)`` for a type or arch.

    Raises:
        KeyError: neither a registered type nor a zoo arch name.

    Example:
        >>> resolve_backbone('ResNet')[1:]
        ('ResNet', {})
    """
    try:
        obj = resolve_type(name, MODELS)
        return obj, name.split('.')[-1], {}
    except KeyError:
        pass
    archs = {}
    for type_name in list_backbones():
        for arch, kwargs in zoo_configs(MODELS.get(type_name)).items():
            archs.setdefault(arch, (type_name, kwargs))
    if name in archs:
        type_name, kwargs = archs[name]
        return MODELS.get(type_name), type_name, dict(kwargs)
    names = list_backbones() + sorted(archs)
    raise KeyError(f'{name!r} is neither a registered backbone type nor a '
                   f'zoo arch name.{closest(name, names)} Run '
                   f'`mmbackbone list` to see them')


def call_repr(type_name: str, kwargs: dict) -> str:
    """How the command line reads as a call.

    Example:
        >>> call_repr('ResNet', {'depth': 18, 'style': 'caffe'})
        "ResNet(depth=18, style='caffe')"
    """
    return f'{type_name}({", ".join(f"{k}={v!r}" for k, v in kwargs.items())})'


def build(obj: Callable, type_name: str, kwargs: dict) -> nn.Module:
    """Build the backbone: by its registered name when ``obj`` is the
    registered one, else from ``obj`` itself."""
    registered = MODELS.get(type_name) is obj
    return build_backbone(dict(type=type_name if registered else obj,
                               **kwargs))


def add_config_options(parser: argparse.ArgumentParser, what: str,
                       group: Optional[Any] = None) -> None:
    """``--config FILE`` and ``--allow-python-bases``, alike in every
    subcommand that reads a config; ``--config`` goes into ``group`` when
    given (e.g. one exclusive with ``--type``)."""
    (group or parser).add_argument(
        '--config', metavar='FILE',
        help=f'an mmengine config (.yaml/.json data, or .py code); its '
        f'model.backbone (or backbone) is the model to {what}')
    add_allow_python_bases(parser, '--config')


def check_config_options(args: argparse.Namespace, extra: List[str]
                         ) -> None:
    """Refuse options that would be ignored next to (or without)
    ``--config``.

    Raises:
        ValueError: ``--allow-python-bases`` without ``--config``, or
            ``--ARG`` options with it.
    """
    if args.config is None:
        if args.allow_python_bases:
            raise ValueError('--allow-python-bases applies to --config '
                             'files only; no --config was given')
        return
    if extra:
        raise ValueError(f'--ARG options {extra} apply to a TYPE only; '
                         f'set them in the config {args.config}')


def backbone_from_config(path: str, allow_python_bases: bool = False
                         ) -> Tuple[Callable, str, dict]:
    """Read a config with :func:`mmbackbone.engine.load_config` (YAML/JSON
    as data; ``.py`` bases of those only with ``allow_python_bases``) and
    return its backbone's ``(class, type name, kwargs)``.

    The first of ``model.backbone``, ``backbone`` and ``model`` (unless an
    ``ImageClassifier``) that has a ``type`` is the backbone; its
    ``init_cfg`` is dropped (no pretrained load).

    Raises:
        KeyError: no such entry, or its type is unknown.
    """
    # mmengine's config machinery costs about half a second: only --config
    # pays for it
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
