"""Global average pooling of every backbone output."""
from typing import Sequence, Tuple, Union

from torch import Tensor, nn

from mmbackbone.registry import MODELS

Features = Union[Tensor, Sequence[Tensor]]


def pool_features(x: Tensor, where: str = 'input') -> Tensor:
    """Average a ``(N, C, H, W)`` map to ``(N, C)``; pass ``(N, C)`` through.

    Raises:
        ValueError: any other number of dimensions.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f'{where} must be a Tensor; got {type(x).__name__}')
    if x.ndim == 4:
        return x.mean(dim=(2, 3))
    if x.ndim == 2:
        return x
    raise ValueError(f'{where} has shape {tuple(x.shape)}: '
                     f'GlobalAveragePooling takes (N, C, H, W) maps or '
                     f'(N, C) features')


@MODELS.register_module()
class GlobalAveragePooling(nn.Module):
    """Pool each backbone output to an ``N x C`` feature vector.

    4-D maps ``(N, C, H, W)`` are averaged over ``H, W``; ``(N, C)`` tensors
    (e.g. a ViT class token) pass through unchanged. A tuple in gives a
    tuple out (one entry per input, or only the last with
    ``last_only=True``); a single tensor in gives a tensor out. The neck
    has no parameters, so it keeps the keys of an mmpretrain classifier.

    Args:
        last_only (bool): keep only the last output (what a head uses),
            skipping the work of pooling the others. Defaults to False.

    Example:
        >>> import torch
        >>> gap = GlobalAveragePooling()
        >>> outs = gap((torch.rand(2, 8, 4, 4), torch.rand(2, 16)))
        >>> [tuple(o.shape) for o in outs]
        [(2, 8), (2, 16)]
        >>> [tuple(o.shape) for o in GlobalAveragePooling(last_only=True)(
        ...     (torch.rand(2, 8, 4, 4), torch.rand(2, 16, 2, 2)))]
        [(2, 16)]
    """

    def __init__(self, last_only: bool = False):
        super().__init__()
        if not isinstance(last_only, bool):
            raise TypeError(f'last_only={last_only!r} must be True or False')
        self.last_only = last_only

    def forward(self, inputs: Features) -> Union[Tensor, Tuple[Tensor, ...]]:
        if isinstance(inputs, Tensor):
            return pool_features(inputs)
        if not isinstance(inputs, (tuple, list)) or not inputs:
            raise TypeError(f'GlobalAveragePooling takes a Tensor or a '
                            f'non-empty tuple of Tensors; got {inputs!r:.80}')
        if self.last_only:
            return (pool_features(inputs[-1], 'inputs[-1]'), )
        return tuple(pool_features(x, f'inputs[{i}]')
                     for i, x in enumerate(inputs))

    def extra_repr(self) -> str:
        return f'last_only={self.last_only}'
