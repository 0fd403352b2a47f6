"""``mmbackbone convert SRC DST.safetensors``: a timm, torchvision,
mmpretrain (or our) checkpoint in our keys, written as safetensors.

The conversion itself is
:func:`mmbackbone.checkpoint.convert_file.convert_checkpoint`; this module
adds the options, the dtype cast, the atomic write and the summary.

Example:
    >>> import os, tempfile, torch
    >>> from mmbackbone import build_backbone
    >>> from mmbackbone.cli import main
    >>> folder = tempfile.mkdtemp()
    >>> src, dst = (os.path.join(folder, name)
    ...             for name in ('r18.pth', 'r18.safetensors'))
    >>> torch.save(build_backbone(dict(type='ResNet', depth=18)).state_dict(),
    ...            src)
    >>> main(['convert', src, dst, '--type', 'resnet18'])  # doctest: +ELLIPSIS
    Converted ... to ResNet(depth=18): 120 tensors written to ...
    0
"""
import argparse
import json
import os
from pathlib import Path
from typing import Dict, List

import torch
from safetensors.torch import save_file

from mmbackbone.checkpoint.convert_file import convert_checkpoint
from mmbackbone.checkpoint.loader import abbreviate_keys

from .args import parse_constructor_args
from .backbone import (add_config_options, backbone_from_config, build,
                       call_repr, check_config_options, resolve_backbone)

HELP = 'convert timm/torchvision/mmpretrain weights to ours'


def setup(parser: argparse.ArgumentParser) -> None:
    """Add ``SRC``, ``DST``, the target (``--type`` or ``--config``) and the
    conversion options."""
    parser.add_argument('src', metavar='SRC',
                        help='checkpoint of timm, torchvision, mmpretrain '
                        'or ours (.pth/.pt/.bin/.safetensors)')
    parser.add_argument('dst', metavar='DST',
                        help='output file, ending in .safetensors')
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument('--type', metavar='TYPE',
                        help='target type (ResNet) or arch (resnet50); '
                        'further --ARG VALUE options configure it')
    add_config_options(parser, 'convert to', group=target)
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


def write_safetensors(tensors: Dict[str, torch.Tensor], dst: Path,
                      metadata: Dict[str, str]) -> None:
    """Write ``tensors`` next to ``dst``, then rename: never a half-written
    ``dst``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(dst.name + '.tmp')
    try:
        save_file(tensors, str(partial), metadata=metadata)
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)


def run(args: argparse.Namespace, extra: List[str]) -> int:
    """Convert a checkpoint to our keys and write ``.safetensors``."""
    # the package's bar: its terminal test, mmbackbone.cli.stderr_is_terminal,
    # is the one switch for every command and tool
    from mmbackbone.cli import progress
    dst = Path(args.dst)
    if dst.suffix != '.safetensors':
        raise ValueError(f'DST={args.dst!r} must end with .safetensors')
    check_config_options(args, extra)
    if args.config is not None:
        obj, type_name, kwargs = backbone_from_config(
            args.config, args.allow_python_bases)
    else:
        obj, type_name, kwargs = resolve_backbone(args.type)
        kwargs.update(parse_constructor_args(
            obj, extra, f'mmbackbone convert SRC DST --type {args.type}'))
    model = build(obj, type_name, kwargs)
    state, report = convert_checkpoint(args.src, model, args.prefix,
                                       args.allow_missing)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    tensors = {}
    for key in progress(list(state), 'converting', unit='tensor',
                        enabled=False if args.no_progress else None):
        tensor = state[key].detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[key] = tensor.contiguous().clone()
    write_safetensors(tensors, dst, {
        'format': 'pt', 'type': type_name,
        'kwargs': json.dumps(kwargs, default=repr),
        'source': report['source'], 'converted_from': str(args.src)})
    _print_summary(args.src, dst, call_repr(type_name, kwargs), len(tensors),
                   report)
    return 0


def _print_summary(src: str, dst: Path, target: str, written: int,
                   report: dict) -> None:
    print(f'Converted {src} ({report["source"]} keys'
          + (f", prefix {report['prefix']!r} stripped"
             if report['prefix'] else '')
          + f') to {target}: {written} tensors written to {dst}')
    if report['adapted']:
        print(f'  adapted: {"; ".join(report["adapted"])}')
    if report['dropped']:
        print(f'  dropped {len(report["dropped"])} keys the model does not '
              f'have: {abbreviate_keys(report["dropped"], limit=6)}')
    elif report['dropped'] is None:
        print(f'  {report["src_keys"] - written} of the file\'s '
              f'{report["src_keys"]} tensors were not written')
    if report['missing']:
        print(f'  missing {len(report["missing"])} model keys: '
              f'{abbreviate_keys(report["missing"], limit=6)}')
