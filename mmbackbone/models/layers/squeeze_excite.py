"""Squeeze-and-excitation (Hu et al., 2018): a learned channel gate."""
from typing import Optional

from torch import Tensor, nn

from .factory import conv_module


class SqueezeExcite(nn.Module):
    """Channel gate: mean-pool, 1x1 conv, ReLU, 1x1 conv, sigmoid.

    Keys ``conv1.conv.*`` and ``conv2.conv.*`` as in mmpretrain's SELayer.

    Args:
        channels (int): channels gated.
        squeeze_channels (int): channels between the two 1x1 convs.
        conv_cfg (dict, optional): conv layer config.

    Example:
        >>> import torch
        >>> se = SqueezeExcite(8, 2)
        >>> tuple(se(torch.rand(1, 8, 4, 4)).shape)
        (1, 8, 4, 4)
    """

    def __init__(self, channels: int, squeeze_channels: int,
                 conv_cfg: Optional[dict] = None):
        super().__init__()
        self.conv1 = conv_module(channels, squeeze_channels, 1, bias=True,
                                 conv_cfg=conv_cfg,
                                 act_cfg=dict(type='ReLU'))
        self.conv2 = conv_module(squeeze_channels, channels, 1, bias=True,
                                 conv_cfg=conv_cfg,
                                 act_cfg=dict(type='Sigmoid'))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.conv2(self.conv1(x.mean((2, 3), keepdim=True)))
