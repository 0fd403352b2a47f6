"""``mmbackbone list [PATTERN]``: backbone types and their zoo arch names.

Example:
    >>> import argparse
    >>> run(argparse.Namespace(pattern='resnetv1*'))  # doctest: +ELLIPSIS
    ResNetV1c  resnet18, resnet34, resnet50, ...
    ResNetV1d  resnet18, resnet34, resnet50, ...
    0
"""
import argparse
import fnmatch
import sys

from mmbackbone.apis import list_backbones
from mmbackbone.registry import MODELS

from .backbone import zoo_configs

HELP = 'list backbone types and their zoo arch names'


def setup(parser: argparse.ArgumentParser) -> None:
    """Add the optional ``PATTERN``."""
    parser.add_argument('pattern', nargs='?', default=None,
                        help='fnmatch pattern (case-insensitive) matched '
                        "against type and arch names, e.g. 'ResNet*' or "
                        "'*50'")


def run(args: argparse.Namespace) -> int:
    """Print each backbone type with its zoo arch names; 1 when none
    matches ``args.pattern``."""
    rows = []
    pattern = args.pattern.lower() if args.pattern else None
    for name in list_backbones():
        archs = list(zoo_configs(MODELS.get(name)))
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
