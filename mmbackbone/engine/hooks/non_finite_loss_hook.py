"""``NonFiniteLossHook``: a NaN or infinite loss stops training before the
broken weights are saved."""
import math
from typing import Any, List, Optional, Tuple

from mmengine.hooks import Hook

from mmbackbone.registry import HOOKS


def _loss_items(outputs: Any) -> List[Tuple[str, float]]:
    """The ``*loss*`` entries of a train step's outputs, as floats."""
    if not isinstance(outputs, dict):
        return []
    items = []
    for key, value in outputs.items():
        if 'loss' not in key:
            continue
        try:
            number = float(value.detach().float().mean()
                           if hasattr(value, 'detach') else value)
        except (TypeError, ValueError, RuntimeError):
            continue
        items.append((key, number))
    return items


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Stop training when a loss is NaN or infinite.

    After every training iteration each ``*loss*`` value the model returned
    is checked; a NaN or Inf raises ``FloatingPointError`` naming the
    iteration (1-based, as logged), the epoch and the value. It runs before
    the checkpoint hook, so the broken weights are never saved and the last
    checkpoint stays usable for ``--resume`` (e.g. with a lower lr).

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> hook = NonFiniteLossHook()
        >>> runner = SimpleNamespace(iter=6, epoch=0)
        >>> hook.after_train_iter(runner, 6,
        ...                       outputs={'loss': torch.tensor(1.)})
        >>> hook.after_train_iter(runner, 6,
        ...                       outputs={'loss': torch.tensor(float('nan'))})
        Traceback (most recent call last):
        ...
        FloatingPointError: loss is nan at iteration 7 (epoch 1, batch 7)...
    """

    priority = 'ABOVE_NORMAL'

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        bad = [(k, v) for k, v in _loss_items(outputs)
               if not math.isfinite(v)]
        if not bad:
            return
        key, value = bad[0]
        raise FloatingPointError(
            f'{key} is {value} at iteration {runner.iter + 1} (epoch '
            f'{runner.epoch + 1}, batch {batch_idx + 1}); training stopped '
            f'before saving the broken weights. Lower the learning rate, '
            f'check the data, or enable gradient clipping '
            f'(optim_wrapper.clip_grad), then --resume from the last '
            f'checkpoint')
