"""Train a model from a config with mmengine's Runner.

Usage::

    python tools/train.py configs/resnet/resnet18_digits.py
    python tools/train.py configs/resnet/resnet18_digits.yaml --work-dir w/r18
    python tools/train.py CONFIG --resume              # newest in the work dir
    python tools/train.py CONFIG --resume epoch_3.pth  # a given checkpoint
    python tools/train.py CONFIG --cfg-options train_cfg.max_epochs=2
    python tools/train.py CONFIG --amp           # bf16 on CPU, fp16 on GPU
    python tools/train.py CONFIG --amp bf16      # bf16 on CPU or GPU
    torchrun --nproc_per_node 2 tools/train.py CONFIG --launcher pytorch

Configs are ``.py`` files (mmengine) or ``.yaml``/``.yml`` files (read with
``yaml.safe_load``). Every ``type`` in the final config must be a
registered name: dotted import paths such as ``'os.system'`` are refused
before anything is built.

Checkpoints (``--resume``, ``load_from``) are read with
``weights_only=True`` and must fit the built model and optimizer exactly
(:class:`mmbackbone.engine.runner.SafeLoadRunner`); a file that does not
stops the run with an error naming it (exit status 1).
"""
import argparse
import os
import os.path as osp
import sys
import time
from typing import List, Optional

#: --amp values: auto (also --amp alone) is bf16 on the CPU, fp16 on a GPU.
AMP_CHOICES = ('auto', 'bf16', 'fp16')
AMP_DTYPES = {'bf16': 'bfloat16', 'fp16': 'float16'}
PLAIN_WRAPPERS = ('OptimWrapper', 'mmengine.OptimWrapper')
AMP_WRAPPERS = ('AmpOptimWrapper', 'mmbackbone.AmpOptimWrapper',
                'mmengine.AmpOptimWrapper')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from mmbackbone.engine.options import add_config_arguments
    parser = argparse.ArgumentParser(
        description='Train a model (mmengine Runner, scope mmbackbone)')
    parser.add_argument('config', help='config file (.py, .yaml or .yml)')
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', const='auto', default=None,
                        metavar='CKPT',
                        help='resume from CKPT, or without a value from the '
                        'latest checkpoint in the work dir')
    parser.add_argument('--amp', nargs='?', const='auto', default=None,
                        choices=AMP_CHOICES,
                        help='mixed precision (mmbackbone.AmpOptimWrapper): '
                        'bf16 (CPU or GPU), fp16 (GPU, dynamic loss '
                        'scaling), or without a value auto: bf16 on the '
                        'CPU, fp16 on a GPU')
    add_config_arguments(parser)
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'],
                        default='none', help='job launcher for distributed '
                        'training (torchrun: pytorch)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_config(args: argparse.Namespace):
    """Load the config and apply the command line to it."""
    from mmbackbone.apis import check_config_types
    from mmbackbone.engine import load_config
    cfg = load_config(args.config, args.cfg_options,
                      allow_python_bases=args.allow_python_bases)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        name = osp.splitext(osp.basename(args.config))[0]
        cfg.work_dir = osp.join('./work_dirs', name)
    if args.amp is not None:
        apply_amp(cfg, args.amp)
    check_amp_wrapper(cfg)
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise SystemExit(f'--resume {args.resume}: no such checkpoint')
        cfg.resume, cfg.load_from = True, args.resume
    cfg.setdefault('default_scope', 'mmbackbone')
    check_config_types(cfg.to_dict())
    from mmbackbone.engine import harden_training_config
    return harden_training_config(cfg)


def apply_amp(cfg, amp: str) -> None:
    """``--amp AMP``: switch ``cfg.optim_wrapper`` to mmbackbone's
    ``AmpOptimWrapper`` (bf16 autocast on the CPU; on a GPU fp16 with
    dynamic loss scaling, or bf16)."""
    from mmbackbone.engine.runtime import _accelerator_available
    on_cpu = not _accelerator_available()
    if amp == 'fp16' and on_cpu:
        raise SystemExit('--amp fp16 needs a GPU (float16 autocast with a '
                         'loss scaler); on the CPU use --amp bf16 (or --amp)')
    wrapper = cfg.optim_wrapper
    kind = wrapper.get('type', 'OptimWrapper')
    if kind not in PLAIN_WRAPPERS + AMP_WRAPPERS:
        raise SystemExit(f'--amp replaces optim_wrapper.type OptimWrapper by '
                         f'AmpOptimWrapper; this config has {kind!r}: set '
                         f'mixed precision in the config instead')
    if kind in AMP_WRAPPERS:
        print(f'AMP is already enabled in the config ({kind})', flush=True)
    wrapper.type = 'AmpOptimWrapper'  # ours in the mmbackbone scope
    wrapper.setdefault('loss_scale', 'dynamic')  # unused on the CPU
    if amp in AMP_DTYPES:
        wrapper.dtype = AMP_DTYPES[amp]
    elif on_cpu:
        wrapper.dtype = 'bfloat16'


def check_amp_wrapper(cfg) -> None:
    """Stop before anything runs on a mixed-precision setting that the CPU
    cannot train: mmengine's own AmpOptimWrapper, or a dtype other than
    bfloat16."""
    from mmbackbone.engine.optim import cpu_autocast_dtype
    from mmbackbone.engine.runtime import _accelerator_available
    wrapper = cfg.get('optim_wrapper') or {}
    kind = wrapper.get('type')
    if kind not in AMP_WRAPPERS or _accelerator_available():
        return
    if kind == 'mmengine.AmpOptimWrapper':
        raise SystemExit(
            "optim_wrapper.type='mmengine.AmpOptimWrapper' needs a GPU "
            "(cuda, npu, mlu or musa); on the CPU use type='AmpOptimWrapper' "
            "(mmbackbone's, bfloat16) or --amp bf16")
    try:
        cpu_autocast_dtype(wrapper.get('dtype'))
    except ValueError as err:
        raise SystemExit(f'optim_wrapper: {err}; or --amp bf16') from None


def final_metrics(runner) -> dict:
    """The last validation metrics the runner recorded."""
    scalars = runner.message_hub.log_scalars
    return {key[len('val/'):]: buffer.current()
            for key, buffer in scalars.items() if key.startswith('val/')
            and not key.startswith('val/loss')
            and key[len('val/'):] not in ('time', 'data_time')}


def main(argv: Optional[List[str]] = None):
    """Train; returns the runner (its model is trained)."""
    args = parse_args(argv)
    import mmbackbone  # noqa: F401  (registers models)
    import mmbackbone.datasets  # noqa: F401
    import mmbackbone.evaluation  # noqa: F401
    from mmbackbone.engine import init_cpu_distributed
    from mmbackbone.engine.faults import preflight_checks
    from mmbackbone.engine.optim import amp_summary
    from mmbackbone.engine.runner import build_runner
    cfg = build_config(args)
    init_cpu_distributed(cfg)
    preflight_checks(cfg)  # work dir, resume file: before the Runner exists
    start = time.time()
    runner = build_runner(cfg)  # SafeLoadRunner: checked checkpoint loads
    runner.train()
    elapsed = time.time() - start
    if runner.rank == 0:
        metrics = final_metrics(runner)
        epoch = runner.epoch if runner.train_loop is not None else None
        summary = ', '.join(
            f'{k}: {v:.2f}%' if k.startswith('accuracy') else f'{k}: {v:.4g}'
            for k, v in sorted(metrics.items()))
        print('=' * 72, flush=True)
        print(f'Training finished: {epoch} epochs in {elapsed:.0f} s '
              f'(work dir {cfg.work_dir})', flush=True)
        print(f'Precision: {amp_summary(runner.optim_wrapper)}', flush=True)
        if 'accuracy/top1' in metrics:
            print(f'Final validation accuracy (top-1): '
                  f'{metrics["accuracy/top1"]:.2f}%', flush=True)
        if summary:
            print(f'Final validation metrics: {summary}', flush=True)
        print('=' * 72, flush=True)
    return runner


if __name__ == '__main__':
    from mmbackbone.checkpoint import CheckpointError
    try:
        main(sys.argv[1:])
    except (CheckpointError, FileNotFoundError) as err:
        # the message names the file and the fix; a traceback adds nothing
        raise SystemExit(f'error: {err}') from None
