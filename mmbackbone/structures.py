"""Data samples passed between datasets, classifiers and metrics.

:class:`ClsDataSample` carries one image's annotation (``gt_label``, and
optionally a soft target ``gt_score``) and the model's prediction
(``pred_score``, ``pred_label``). Values are normalised when set, so every
consumer sees the same shapes and dtypes:

=============  ==========================================  ==============
field          accepted values                             stored as
=============  ==========================================  ==============
``gt_label``   int, 0-d / 1-element int tensor or array    LongTensor (1,)
``pred_label`` same as ``gt_label``                        LongTensor (1,)
``pred_score`` 1-D float tensor or array (num_classes,)    float Tensor
``gt_score``   1-D float tensor or array (num_classes,)    float Tensor
=============  ==========================================  ==============

Example:
    >>> import torch
    >>> sample = ClsDataSample().set_gt_label(3)
    >>> sample.gt_label
    tensor([3])
    >>> sample = ClsDataSample(gt_label=torch.tensor(2))
    >>> sample.gt_label
    tensor([2])
    >>> sample.set_pred_score(torch.tensor([0.1, 0.7, 0.2])).pred_label
    tensor([1])
"""
import numbers
from typing import Any, Callable, Dict

import numpy as np
import torch
from mmengine.structures import BaseDataElement
from torch import Tensor


def format_label(value: Any, name: str = 'gt_label') -> Tensor:
    """A single class index as a LongTensor of shape ``(1,)``.

    Raises:
        TypeError: not an integer (e.g. a float or a string).
        ValueError: several labels, or a negative one.
    """
    if isinstance(value, bool):
        raise TypeError(f'{name}={value!r} must be an integer class index, '
                        f'not a bool')
    if isinstance(value, numbers.Integral):
        tensor = torch.tensor([int(value)], dtype=torch.long)
    elif isinstance(value, (Tensor, np.ndarray, list, tuple)):
        tensor = torch.as_tensor(value)
        if tensor.is_floating_point() or tensor.is_complex() \
                or tensor.dtype == torch.bool:
            raise TypeError(f'{name} must hold an integer class index; got '
                            f'a {tensor.dtype} tensor {tensor!r}')
        if tensor.numel() != 1:
            raise ValueError(f'{name} must be a single class index; got '
                             f'{tensor.numel()} values {tensor.tolist()!r}')
        tensor = tensor.reshape(1).long()
    else:
        raise TypeError(f'{name}={value!r} must be an int or a 1-element '
                        f'integer tensor; got {type(value).__name__}')
    if tensor.device.type != 'meta' and int(tensor[0]) < 0:
        raise ValueError(f'{name}={int(tensor[0])} must be a non-negative '
                         f'class index')
    return tensor


def format_score(value: Any, name: str = 'pred_score') -> Tensor:
    """Per-class scores as a 1-D floating tensor.

    Raises:
        TypeError: not a tensor or array.
        ValueError: not 1-D.
    """
    if not isinstance(value, (Tensor, np.ndarray, list, tuple)):
        raise TypeError(f'{name} must be a 1-D tensor of per-class scores; '
                        f'got {type(value).__name__}')
    tensor = torch.as_tensor(value)
    if tensor.ndim != 1:
        raise ValueError(f'{name} must be 1-D (num_classes,); got shape '
                         f'{tuple(tensor.shape)}')
    if not tensor.is_floating_point():
        tensor = tensor.float()
    return tensor


_FORMATTERS: Dict[str, Callable[[Any, str], Tensor]] = {
    'gt_label': format_label,
    'pred_label': format_label,
    'gt_score': format_score,
    'pred_score': format_score,
}


class ClsDataSample(BaseDataElement):
    """Annotation and prediction of one image for classification.

    An mmengine ``BaseDataElement``: it moves with ``.to(device)``, prints
    its fields, and ``'gt_label' in sample`` tells whether a field is set.
    Fields given to the constructor or assigned as attributes are
    normalised like the ``set_*`` methods do (see the module docstring).

    Example:
        >>> sample = ClsDataSample(gt_label=1)
        >>> _ = sample.set_pred_score([0.2, 0.5, 0.3])
        >>> sample.pred_label, 'gt_label' in sample
        (tensor([1]), True)
    """

    def __setattr__(self, name: str, value: Any) -> None:
        formatter = _FORMATTERS.get(name)
        if formatter is not None:
            value = formatter(value, name)
        super().__setattr__(name, value)

    def set_gt_label(self, value: Any) -> 'ClsDataSample':
        """Set ``gt_label`` (an int or a 1-element integer tensor)."""
        self.gt_label = value
        return self

    def set_gt_score(self, value: Any) -> 'ClsDataSample':
        """Set ``gt_score``, a soft target over the classes (mixup etc.)."""
        self.gt_score = value
        return self

    def set_pred_label(self, value: Any) -> 'ClsDataSample':
        """Set ``pred_label`` (an int or a 1-element integer tensor)."""
        self.pred_label = value
        return self

    def set_pred_score(self, value: Any) -> 'ClsDataSample':
        """Set ``pred_score`` (softmax scores, shape ``(num_classes,)``).

        ``pred_label`` is set to the arg-max of the scores as well (call
        :meth:`set_pred_label` afterwards to store another label).
        """
        self.pred_score = value
        self.pred_label = self.pred_score.argmax().reshape(1)
        return self


__all__ = ['ClsDataSample', 'format_label', 'format_score']
