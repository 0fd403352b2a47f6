"""Classification losses used by the heads."""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmbackbone.registry import MODELS


@MODELS.register_module()
class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy, with hard or soft targets.

    Args:
        loss_weight (float): multiplies the loss. Defaults to 1.0.
        label_smoothing (float): in ``[0, 1)``. Defaults to 0.0.
        class_weight (Sequence[float], optional): one weight per class.
        reduction (str): ``'mean'``, ``'sum'`` or ``'none'``.

    ``forward(cls_score, target)`` takes logits ``(N, C)`` and either class
    indices ``(N,)`` or per-class probabilities ``(N, C)`` (mixup / cutmix
    targets).

    Example:
        >>> loss = CrossEntropyLoss()
        >>> float(loss(torch.zeros(2, 4), torch.tensor([0, 3])))  # log(4)
        1.3862943649291992
    """

    def __init__(self, loss_weight: float = 1.0,
                 label_smoothing: float = 0.0,
                 class_weight: Optional[Sequence[float]] = None,
                 reduction: str = 'mean'):
        super().__init__()
        if not isinstance(loss_weight, (int, float)) or isinstance(
                loss_weight, bool):
            raise TypeError(f'loss_weight={loss_weight!r} must be a number')
        if not isinstance(label_smoothing, (int, float)) or not (
                0.0 <= label_smoothing < 1.0):
            raise ValueError(f'label_smoothing={label_smoothing!r} must be '
                             f'a number in [0, 1)')
        if reduction not in ('mean', 'sum', 'none'):
            raise ValueError(f"reduction={reduction!r}; choose from 'mean', "
                             f"'sum', 'none'")
        self.loss_weight = float(loss_weight)
        self.label_smoothing = float(label_smoothing)
        self.reduction = reduction
        if class_weight is not None:
            class_weight = torch.as_tensor(class_weight, dtype=torch.float)
            if class_weight.ndim != 1:
                raise ValueError(f'class_weight must be a flat sequence of '
                                 f'per-class weights; got shape '
                                 f'{tuple(class_weight.shape)}')
        self.register_buffer('class_weight', class_weight, persistent=False)

    def forward(self, cls_score: Tensor, target: Tensor) -> Tensor:
        weight = self.class_weight
        if weight is not None:
            weight = weight.to(cls_score)
        if target.is_floating_point():
            target = target.to(cls_score)
        loss = F.cross_entropy(cls_score, target, weight=weight,
                               reduction=self.reduction,
                               label_smoothing=self.label_smoothing)
        return self.loss_weight * loss


__all__ = ['CrossEntropyLoss']
