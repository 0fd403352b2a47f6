"""FLOP counting: multiply-adds of one forward pass.

Example:
    >>> from torch import nn
    >>> count_flops(nn.Linear(8, 4, bias=False), (2, 8))
    64
"""
from typing import Tuple

import torch
from mmengine.analysis import FlopAnalyzer
from torch import nn


def count_flops(model: nn.Module, shape: Tuple[int, ...]) -> int:
    """Multiply-adds of one forward pass of ``model`` on zeros of ``shape``.

    Counted by mmengine's ``FlopAnalyzer`` (a jit trace), in the fvcore
    convention: one fused multiply-add counts as one flop.

    Args:
        model (nn.Module): the model, usually in eval mode.
        shape (tuple[int]): the input shape, e.g. ``(1, 3, 224, 224)``.

    Returns:
        int: the multiply-adds of one forward pass.

    Example:
        >>> from mmbackbone import build_backbone
        >>> model = build_backbone(dict(type='ResNet', depth=18)).eval()
        >>> round(count_flops(model, (1, 3, 224, 224)) / 1e9, 2)
        1.82
    """
    with torch.no_grad():
        analyzer = FlopAnalyzer(model, (torch.zeros(shape), ))
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        return int(analyzer.total())
