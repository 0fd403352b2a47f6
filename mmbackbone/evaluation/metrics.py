"""Classification metrics for mmengine's evaluator.

Example:
    >>> import torch
    >>> from mmbackbone.evaluation import Accuracy
    >>> metric = Accuracy(topk=(1, 2))
    >>> metric.process({}, [dict(pred_score=torch.tensor([.1, .7, .2]),
    ...                          gt_label=torch.tensor([1])),
    ...                     dict(pred_score=torch.tensor([.5, .1, .4]),
    ...                          gt_label=torch.tensor([2]))])
    >>> metric.evaluate(size=2)
    {'accuracy/top1': 50.0, 'accuracy/top2': 100.0}
"""
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from mmengine.evaluator import BaseMetric

from mmbackbone.registry import METRICS


def _get(sample: Any, key: str) -> Any:
    if isinstance(sample, dict):
        return sample.get(key)
    return getattr(sample, key, None)


@METRICS.register_module()
class Accuracy(BaseMetric):
    """Top-k accuracy in percent.

    Reads ``pred_score`` (scores per class; ``pred_label`` alone allows
    top-1 only) and ``gt_label`` of each data sample, and reports
    ``accuracy/top1``, ``accuracy/top5``, ... (prefix ``accuracy``).

    Args:
        topk (int | Sequence[int]): the k values. Default: ``(1, )``.
        collect_device (str): ``'cpu'`` or ``'gpu'`` for distributed
            gathering. Default: ``'cpu'``.
        prefix (str, optional): metric name prefix. Default: ``'accuracy'``.

    Raises:
        ValueError: a k that is not a positive int.
    """

    default_prefix: Optional[str] = 'accuracy'

    def __init__(self, topk: Union[int, Sequence[int]] = (1, ),
                 collect_device: str = 'cpu', prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        ks = (topk, ) if isinstance(topk, int) else tuple(topk)
        if not ks or any(isinstance(k, bool) or not isinstance(k, int)
                         or k < 1 for k in ks):
            raise ValueError(f'topk={topk!r} must be a positive int or a '
                             f'sequence of positive ints, e.g. (1, 5)')
        self.topk = ks

    def process(self, data_batch: Any, data_samples: Sequence) -> None:
        """Keep the scores (or labels) and the ground truth of a batch."""
        for sample in data_samples:
            gt = _get(sample, 'gt_label')
            if gt is None:
                raise KeyError('Accuracy needs gt_label in every data sample; '
                               'the dataset must set it')
            score = _get(sample, 'pred_score')
            pred = _get(sample, 'pred_label')
            if score is None and pred is None:
                raise KeyError('Accuracy needs pred_score (or pred_label) in '
                               "every data sample: the model's predict "
                               'mode must set it')
            self.results.append(dict(
                gt_label=torch.as_tensor(gt).reshape(-1)[:1].cpu(),
                pred_score=None if score is None else
                torch.as_tensor(score).detach().float().cpu(),
                pred_label=None if pred is None else
                torch.as_tensor(pred).reshape(-1)[:1].cpu()))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        """Top-k accuracy (percent) over every processed sample."""
        if not results:
            return {f'top{k}': 0.0 for k in self.topk}
        target = torch.cat([r['gt_label'] for r in results]).long()
        if all(r['pred_score'] is not None for r in results):
            scores = torch.stack([r['pred_score'] for r in results])
            num_classes = scores.shape[1]
            metrics = {}
            for k in self.topk:
                top = scores.topk(min(k, num_classes), dim=1).indices
                hit = (top == target[:, None]).any(dim=1)
                metrics[f'top{k}'] = float(hit.float().mean() * 100)
            return metrics
        if self.topk != (1, ):
            raise ValueError(f'topk={self.topk}: the data samples have '
                             f'pred_label only, which gives top-1 only; set '
                             f'topk=1 or make the model return pred_score')
        pred = torch.cat([r['pred_label'] for r in results]).long()
        return {'top1': float((pred == target).float().mean() * 100)}
