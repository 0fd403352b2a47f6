"""Write docs/backbones.md: every registered type and arch with params,
GFLOPs at 224x224 (mmengine's complexity analysis), channels and strides.

Usage:
    python tools/analysis/zoo_table.py [--out docs/backbones.md]
        [--types ResNet RegNet ...] [--archs resnet50 ...] [--no-flops]

GFLOPs count one multiply-add as one FLOP (mmengine's convention), for a
single 3x224x224 image (the arch's own ``img_size`` where it has one),
with every stage returned.
"""
import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import torch

HEADER = ('| type | arch | params (M) | GFLOPs | stage channels | '
          'stage strides |\n|---|---|---:|---:|---|---|')


def zoo_rows(types: Optional[Sequence[str]] = None,
             archs: Optional[Sequence[str]] = None, flops: bool = True):
    """Yield one table row (a tuple of strings) per type and arch."""
    from mmbackbone import build_backbone, list_backbones
    from mmbackbone.registry import MODELS
    for type_name in list_backbones():
        if types and type_name not in types:
            continue
        cls = MODELS.get(type_name)
        for arch, kwargs in getattr(cls, 'zoo_configs', {}).items():
            if archs and arch not in archs:
                continue
            with torch.device('meta'):
                meta = build_backbone(dict(type=type_name, **kwargs))
            all_stages = tuple(range(meta.num_stages))
            model = build_backbone(dict(type=type_name, **kwargs,
                                        out_indices=all_stages)).eval()
            params = sum(p.numel() for p in model.parameters()) / 1e6
            gflops = '-'
            if flops:
                size = kwargs.get('img_size', 224)
                gflops = f'{count_gflops(model, size):.2f}'
            yield (type_name, arch, f'{params:.2f}', gflops,
                   str(model.stage_channels), str(model.stage_strides))


def count_gflops(model: torch.nn.Module, size: int) -> float:
    """Multiply-adds of one forward at ``size`` x ``size``, in G."""
    from mmengine.analysis import get_model_complexity_info
    with torch.no_grad():
        info = get_model_complexity_info(
            model, inputs=(torch.rand(1, 3, size, size), ),
            show_table=False, show_arch=False)
    return info['flops'] / 1e9


def render(rows: List[tuple]) -> str:
    lines = ['# Backbones', '',
             'Every registered type and arch (`mmbackbone list`), written by '
             '`python tools/analysis/zoo_table.py`. Params are the backbone '
             'alone (no head); GFLOPs are multiply-adds for one 224x224 image '
             "(the arch's own `img_size` where its zoo config sets one) with "
             'every stage returned; strides are `None` for vector outputs.',
             '', HEADER]
    lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
    return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='docs/backbones.md')
    parser.add_argument('--types', nargs='*', help='only these types')
    parser.add_argument('--archs', nargs='*', help='only these arch names')
    parser.add_argument('--no-flops', action='store_true',
                        help='skip the GFLOPs column (fast)')
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = []
    for row in zoo_rows(args.types, args.archs,
                        flops=not args.no_flops):
        rows.append(row)
        print(' | '.join(row), flush=True)
    Path(args.out).write_text(render(rows))
    print(f'wrote {len(rows)} rows to {args.out} in '
          f'{time.perf_counter() - start:.0f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
