"""``mmbackbone weights [PATTERN]``: the pretrained weights index.

Example:
    >>> import argparse
    >>> run(argparse.Namespace(pattern='resnet18.tv_*'))  # doctest: +ELLIPSIS
    name  ...
    resnet18.tv_in1k  ResNet  resnet18  torchvision  ...
    0
"""
import argparse

from mmbackbone.zoo import list_weights

HELP = 'list the pretrained weights (pretrained=True)'


def setup(parser: argparse.ArgumentParser) -> None:
    """Add the optional ``PATTERN``."""
    parser.add_argument('pattern', nargs='?', default=None,
                        help="fnmatch pattern over weights names, e.g. "
                        "'resnet50.*' or '*mmpretrain*'")


def run(args: argparse.Namespace) -> int:
    """Print the weights index: name, type/arch, source, top-1, size; 1
    when no entry matches ``args.pattern``."""
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
