"""Evaluate a trained checkpoint on a config's test split.

Usage::

    python tools/test.py configs/resnet/resnet18_digits.py \
        work_dirs/resnet18_digits/epoch_15.pth

Prints the metrics of ``test_evaluator`` (top-1 / top-5 accuracy for the
classification configs). The checkpoint is read with torch's
``weights_only=True`` plus the few non-tensor types mmengine training
checkpoints carry, for this read only, and its weights must fit the
config's model exactly (:mod:`mmbackbone.engine.resume`): a truncated,
corrupt or foreign checkpoint exits with status 1 and a message naming it,
never with the metrics of a partly loaded model.
"""
import argparse
import os
import os.path as osp
import sys
from typing import List, Optional


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from mmbackbone.engine.options import add_config_arguments
    parser = argparse.ArgumentParser(
        description='Test a checkpoint (mmengine Runner, scope mmbackbone)')
    parser.add_argument('config', help='config file (.py, .yaml or .yml)')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where the test log goes')
    add_config_arguments(parser)
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main(argv: Optional[List[str]] = None) -> dict:
    """Run the test loop; returns the metrics dict."""
    args = parse_args(argv)
    import mmbackbone  # noqa: F401
    import mmbackbone.datasets  # noqa: F401
    import mmbackbone.evaluation  # noqa: F401
    from mmbackbone.apis import check_config_types
    from mmbackbone.engine import init_cpu_distributed, load_config
    from mmbackbone.engine.resume import read_training_checkpoint
    from mmbackbone.engine.runner import build_runner
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'checkpoint {args.checkpoint} does not exist')
    cfg = load_config(args.config, args.cfg_options,
                      allow_python_bases=args.allow_python_bases)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        name = osp.splitext(osp.basename(args.config))[0]
        cfg.work_dir = osp.join('./work_dirs', name)
    cfg.load_from, cfg.resume = args.checkpoint, False
    cfg.setdefault('default_scope', 'mmbackbone')
    for key in ('test_dataloader', 'test_evaluator', 'test_cfg'):
        if cfg.get(key) is None:
            raise SystemExit(f'config {args.config} has no {key}; '
                             f'tools/test.py needs test_dataloader, '
                             f'test_evaluator and test_cfg')
    check_config_types(cfg.to_dict())
    # a damaged or unsafe file fails before the Runner writes its log
    read_training_checkpoint(args.checkpoint, what='checkpoint')
    init_cpu_distributed(cfg)
    runner = build_runner(cfg)  # SafeLoadRunner: strict, checked load
    metrics = runner.test()
    if runner.rank == 0:
        print('=' * 72, flush=True)
        print(f'Test results of {args.checkpoint}:', flush=True)
        for key, value in sorted(metrics.items()):
            unit = '%' if key.startswith('accuracy') else ''
            print(f'  {key}: {value:.2f}{unit}' if isinstance(value, float)
                  else f'  {key}: {value}', flush=True)
        print('=' * 72, flush=True)
    return metrics


if __name__ == '__main__':
    from mmbackbone.checkpoint import CheckpointError
    try:
        main(sys.argv[1:])
    except (CheckpointError, FileNotFoundError) as err:
        # the message names the file and the fix; a traceback adds nothing
        raise SystemExit(f'error: {err}') from None
