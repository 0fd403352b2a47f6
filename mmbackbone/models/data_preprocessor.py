"""Batch preparation for classifiers: stack, cast, normalise, BGR->RGB."""
from numbers import Number
from typing import Optional, Sequence

import torch
from mmengine.model import ImgDataPreprocessor

from mmbackbone.registry import MODELS
from .heads.cls_head import to_plain


def _check_stats(value, name: str) -> Optional[tuple]:
    if value is None:
        return None
    if isinstance(value, Number) and not isinstance(value, bool):
        value = (value, )
    if not isinstance(value, Sequence) or isinstance(value, str) or any(
            isinstance(v, bool) or not isinstance(v, Number) for v in value):
        raise TypeError(f'{name}={value!r} must be a sequence of 1 or 3 '
                        f'numbers')
    if len(value) not in (1, 3):
        raise ValueError(f'{name}={value!r} must hold 1 value (gray) or 3 '
                         f'(one per channel); got {len(value)}')
    return tuple(float(v) for v in value)


@MODELS.register_module()
class ClsDataPreprocessor(ImgDataPreprocessor):
    """Turn a collated batch into a normalised float tensor.

    Takes what mmengine's ``pseudo_collate`` makes of the dataset items,
    ``dict(inputs=[CHW uint8/float tensors], data_samples=[...])`` (or an
    ``NCHW`` tensor), moves it to the model's device, swaps BGR to RGB when
    ``to_rgb``, casts to float, subtracts ``mean`` and divides by ``std``
    (given in the channel order after the swap, i.e. RGB), and stacks
    (padding smaller images at the bottom/right with zeros).

    Args:
        mean (Sequence[float], optional): 1 or 3 channel means, e.g.
            ``[123.675, 116.28, 103.53]``; ``None`` skips normalisation.
        std (Sequence[float], optional): 1 or 3 channel std devs (given
            together with ``mean``).
        to_rgb (bool): reverse the channel order (BGR images, as read by
            OpenCV, to RGB). Defaults to False.
        num_classes (int, optional): when set, ``gt_label`` values of a
            training batch are checked to lie in ``[0, num_classes)``.

    Example:
        >>> import torch
        >>> pre = ClsDataPreprocessor(mean=[127.5] * 3, std=[127.5] * 3)
        >>> batch = pre(dict(inputs=[torch.full((3, 4, 4), 255,
        ...                                     dtype=torch.uint8)] * 2))
        >>> tuple(batch['inputs'].shape), float(batch['inputs'].max())
        ((2, 3, 4, 4), 1.0)
    """

    def __init__(self, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None,
                 to_rgb: bool = False,
                 num_classes: Optional[int] = None):
        mean = _check_stats(to_plain(mean), 'mean')
        std = _check_stats(to_plain(std), 'std')
        if (mean is None) != (std is None):
            raise ValueError(f'mean={mean!r} and std={std!r}: give both (to '
                             f'normalise) or neither')
        if std is not None and any(s == 0 for s in std):
            raise ValueError(f'std={std!r} must not contain 0')
        if not isinstance(to_rgb, bool):
            raise TypeError(f'to_rgb={to_rgb!r} must be True or False')
        if num_classes is not None and (isinstance(num_classes, bool)
                                        or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ValueError(f'num_classes={num_classes!r} must be None or '
                             f'an integer >= 1')
        super().__init__(mean=mean, std=std, bgr_to_rgb=to_rgb)
        self.to_rgb = to_rgb
        self.num_classes = num_classes

    def forward(self, data: dict, training: bool = False) -> dict:
        if not isinstance(data, dict) or 'inputs' not in data:
            raise TypeError(f'ClsDataPreprocessor takes dict(inputs=..., '
                            f'data_samples=...) as made by pseudo_collate; '
                            f'got {type(data).__name__}')
        inputs = data['inputs']
        images = list(inputs) if isinstance(inputs, (list, tuple)) else (
            [inputs] if isinstance(inputs, torch.Tensor) else None)
        if images is None or not images:
            raise TypeError(f'inputs must be a list of CHW tensors or an '
                            f'NCHW tensor; got {type(inputs).__name__}')
        want = 4 if isinstance(inputs, torch.Tensor) else 3
        for i, image in enumerate(images):
            if not isinstance(image, torch.Tensor) or image.ndim != want:
                got = (f'shape {tuple(image.shape)}'
                       if isinstance(image, torch.Tensor)
                       else type(image).__name__)
                raise ValueError(f'inputs[{i}] must be a '
                                 f'{"NCHW" if want == 4 else "CHW"} tensor; '
                                 f'got {got}')
            channels = image.shape[-3]
            if (self._channel_conversion or (
                    self._enable_normalize and self.mean.shape[0] == 3)) \
                    and channels != 3:
                raise ValueError(f'inputs[{i}] has {channels} channels; '
                                 f'to_rgb and 3-value mean/std need 3')
        if training and self.num_classes is not None:
            for sample in data.get('data_samples') or ():
                label = getattr(sample, 'gt_label', None)
                if label is not None and not (
                        0 <= int(label.reshape(-1)[0]) < self.num_classes):
                    raise ValueError(f'gt_label={int(label.reshape(-1)[0])} '
                                     f'is out of range for num_classes='
                                     f'{self.num_classes}')
        return super().forward(data, training)
