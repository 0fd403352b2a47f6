"""Stochastic depth: the drop-path layer and its per-block rates."""
from typing import List, Sequence

from torch import nn


def drop_path_module(drop_prob: float) -> nn.Module:
    """mmcv's ``DropPath(drop_prob)`` (stochastic depth per sample).

    Example:
        >>> drop_path_module(0.1).drop_prob
        0.1
    """
    from mmcv.cnn.bricks import DropPath
    return DropPath(drop_prob)


def drop_path_or_identity(rate: float) -> nn.Module:
    """A drop-path layer for ``rate > 0``, else ``nn.Identity()`` (no
    module to run, nothing random).

    Example:
        >>> type(drop_path_or_identity(0.0)).__name__
        'Identity'
        >>> type(drop_path_or_identity(0.1)).__name__
        'DropPath'
    """
    return drop_path_module(rate) if rate > 0 else nn.Identity()


def linear_rates(max_rate: float, count: int) -> List[float]:
    """``count`` rates rising linearly from 0 to ``max_rate`` (stochastic
    depth). Pure Python, so it also works under ``torch.device('meta')``.

    Example:
        >>> linear_rates(0.2, 3)
        [0.0, 0.1, 0.2]
    """
    if count <= 1:
        return [0.0] * count
    return [max_rate * i / (count - 1) for i in range(count)]


def drop_path_rates(rate: float, depths: Sequence[int]) -> List[List[float]]:
    """Drop-path rate of every block, rising linearly from 0 to ``rate``
    over all blocks, split into stages of ``depths`` blocks.

    Example:
        >>> drop_path_rates(0.2, (1, 2))
        [[0.0], [0.1, 0.2]]
    """
    rates = linear_rates(rate, sum(depths))
    stages = []
    for depth in depths:
        stages.append(rates[:depth])
        rates = rates[depth:]
    return stages
