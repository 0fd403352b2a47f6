"""``mmbackbone info``: build a backbone, print its outputs, parameters and
GFLOPs.

Example:
    >>> from torch import nn
    >>> for line in describe(nn.Conv2d(3, 8, 3), (1, 3, 32, 32)):
    ...     print(line)
    out_channels: 8
    params:       0.00 M (224; 224 trainable)
    GFLOPs:       0.00 at 1x3x32x32 (multiply-adds)
"""
import argparse
import re
from typing import List, Optional, Tuple

from torch import nn

from mmbackbone.utils.flops import count_flops

from .args import parse_constructor_args
from .backbone import (add_config_options, backbone_from_config, build,
                       call_repr, check_config_options, resolve_backbone)
from .errors import error_message

HELP = 'build a backbone; print its outputs, params, GFLOPs'


def setup(parser: argparse.ArgumentParser) -> None:
    """Add ``--help`` (forwarded to TYPE), ``--flops-at``, ``--no-flops``,
    the ``--config`` options and ``TYPE``."""
    parser.add_argument('-h', '--help', action='store_true',
                        help='show this help, or with TYPE the options of '
                        'its constructor')
    parser.add_argument('--flops-at', default='224', metavar='N|HxW',
                        help='input size of the FLOP count (default 224)')
    parser.add_argument('--no-flops', action='store_true',
                        help='skip the FLOP count (a jit trace)')
    add_config_options(parser, 'describe instead of TYPE')
    parser.add_argument('type', nargs='?', metavar='TYPE',
                        help='a registered type (ResNet) or arch (resnet50)')


def input_size(text: str) -> Tuple[int, int]:
    """``(height, width)`` of ``--flops-at``: ``N`` or ``HxW``.

    Example:
        >>> input_size('224'), input_size('224x320')
        ((224, 224), (224, 320))
    """
    match = re.fullmatch(r'(\d+)(?:[x,](\d+))?', text.strip())
    if not match or int(match.group(1)) < 1:
        raise ValueError(f'--flops-at={text!r} must be N or HxW, e.g. 224 '
                         f'or 224x320')
    height = int(match.group(1))
    return height, int(match.group(2) or height)


def describe(model: nn.Module, shape: Optional[Tuple[int, ...]]
             ) -> List[str]:
    """Lines of ``mmbackbone info``: outputs, params, GFLOPs at ``shape``
    (none when ``shape`` is None; ``n/a`` and why when tracing fails)."""
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
                         f'{error_message(err).splitlines()[0][:120]})')
    return lines


def run(args: argparse.Namespace, extra: List[str]) -> int:
    """Build a backbone from the command line and describe it."""
    if args.type is None and (args.help or args.config is None):
        args._parser.print_help()
        return 0 if args.help else 2
    check_config_options(args, extra)
    if args.config is not None and args.type is not None:
        raise ValueError(f'give TYPE ({args.type!r}) or --config '
                         f'({args.config!r}), not both')
    height, width = input_size(args.flops_at)
    if args.config is not None:
        obj, type_name, kwargs = backbone_from_config(
            args.config, args.allow_python_bases)
    else:
        obj, type_name, kwargs = resolve_backbone(args.type)
        prog = f'mmbackbone info {args.type}'
        argv = list(extra) + (['--help'] if args.help else [])
        kwargs.update(parse_constructor_args(obj, argv, prog))
    model = build(obj, type_name, kwargs).eval()
    in_channels = kwargs.get('in_channels', 3)
    if not isinstance(in_channels, int) or isinstance(in_channels, bool):
        in_channels = 3
    shape = None if args.no_flops else (1, in_channels, height, width)
    print(call_repr(type_name, kwargs))
    for line in describe(model, shape):
        print(f'  {line}')
    return 0
