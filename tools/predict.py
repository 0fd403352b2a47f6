"""Predict one image with a trained mmdet detector or mmseg segmenter.

Usage::

    python tools/predict.py configs/downstream/mmdet/retinanet_r18_fpn_digits.py \
        work_dirs/demo_det/epoch_8.pth data/digits_det/val/000000.png \
        --out-dir work_dirs/demo_det/predictions

The config's ``default_scope`` picks the inferencer: mmdet's
``DetInferencer`` (boxes, labels, scores; masks for Mask R-CNN) or mmseg's
``MMSegInferencer`` (a label map). The image with the predictions drawn on
it is written under ``--out-dir/vis/`` and a summary is printed.

The checkpoint is read by :func:`mmbackbone.engine.resume.read_training_checkpoint`
(``weights_only`` plus checked tensors) and loaded strictly: the
inferencers' own loader calls mmengine's ``load_checkpoint``, which loads
non-strictly and trusts the file. The class names come from the
checkpoint's ``meta['dataset_meta']``, which mmengine's Runner writes.
"""
import argparse
import sys
from typing import List, Optional

INFERENCERS = {'mmdet': ('mmdet.apis', 'DetInferencer'),
               'mmseg': ('mmseg.apis', 'MMSegInferencer')}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Predict one image with an mmdet / mmseg config')
    parser.add_argument('config', help='mmdet or mmseg config (.py)')
    parser.add_argument('checkpoint', help='checkpoint written by training')
    parser.add_argument('image', help='image file')
    parser.add_argument('--out-dir', default='',
                        help='where the drawn prediction goes (vis/)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detections below this score are not shown')
    parser.add_argument('--device', default='cpu')
    return parser.parse_args(argv)


def build_inferencer(config: str, checkpoint: str, device: str = 'cpu'):
    """The mmdet/mmseg inferencer of ``config`` with ``checkpoint`` loaded.

    Raises:
        ValueError: the config's ``default_scope`` is neither mmdet nor mmseg.
        CheckpointError: naming a damaged, unsafe or foreign checkpoint.
    """
    import importlib

    from mmengine.config import Config

    from mmbackbone.engine.resume import read_training_checkpoint
    from mmbackbone.engine.state_checks import (load_model_state,
                                                model_state_from)
    cfg = Config.fromfile(config)  # runs custom_imports (our ops, data)
    scope = cfg.get('default_scope')
    if scope not in INFERENCERS:
        raise ValueError(
            f'config {config}: default_scope={scope!r}; tools/predict.py '
            f'predicts with {sorted(INFERENCERS)} configs')
    module, name = INFERENCERS[scope]
    inferencer_cls = getattr(importlib.import_module(module), name)
    content = read_training_checkpoint(checkpoint, what='checkpoint')
    inferencer = inferencer_cls(model=cfg, weights=None, device=device)
    load_model_state(inferencer.model, model_state_from(content, checkpoint),
                     checkpoint, strict=True)
    meta = (content.get('meta') or {}).get('dataset_meta') or {}
    # the names and colours only: mmseg's visualizer takes no other key
    meta = {k: meta[k] for k in ('classes', 'palette') if k in meta}
    if meta:
        inferencer.model.dataset_meta = meta
        if getattr(inferencer, 'visualizer', None) is not None:
            inferencer.visualizer.dataset_meta = dict(meta)
    return inferencer


def summarize(scope: str, prediction: dict, classes, score_thr: float) -> str:
    """One line per detection above ``score_thr`` (``prediction``: mmdet's
    dict), or the pixel count of each class (``prediction``: mmseg's label
    map)."""
    import numpy as np
    if scope == 'mmdet':
        lines = []
        for label, score, box in zip(prediction['labels'],
                                     prediction['scores'],
                                     prediction['bboxes']):
            if score >= score_thr:
                lines.append(f'  {classes[label]!s:>10}  score {score:.2f}  '
                             f'box {[round(v, 1) for v in box]}')
        return f'{len(lines)} detections (score >= {score_thr}):\n' + \
            '\n'.join(lines)
    labels = np.asarray(prediction)
    values, counts = np.unique(labels, return_counts=True)
    return 'pixels per class: ' + ', '.join(
        f'{classes[v]}: {c}' for v, c in zip(values, counts))


def main(argv: Optional[List[str]] = None) -> dict:
    """Predict; returns the inferencer's prediction for the image."""
    args = parse_args(argv)
    inferencer = build_inferencer(args.config, args.checkpoint, args.device)
    scope = 'mmdet' if type(inferencer).__name__ == 'DetInferencer' \
        else 'mmseg'
    kwargs = dict(out_dir=args.out_dir) if args.out_dir else dict(
        return_vis=False)
    if scope == 'mmdet':
        kwargs['pred_score_thr'] = args.score_thr
    result = inferencer(args.image, **kwargs)
    prediction = result['predictions']
    if isinstance(prediction, list):  # mmdet: one entry per image
        prediction = prediction[0]   # (mmseg returns one image's map bare)
    classes = inferencer.model.dataset_meta['classes']
    print(summarize(scope, prediction, classes, args.score_thr), flush=True)
    if args.out_dir:
        print(f'drawn prediction: {args.out_dir}/vis/', flush=True)
    return prediction


if __name__ == '__main__':
    from mmbackbone.checkpoint import CheckpointError
    try:
        main(sys.argv[1:])
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f'error: {err}') from None
