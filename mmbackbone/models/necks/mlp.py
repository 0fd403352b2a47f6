"""A constant-width MLP between a pooled backbone and a head."""
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from mmbackbone.registry import MODELS
from ..heads.cls_head import to_plain
from ..layers import act_layer, norm_layer

#: 2-D norm names mapped to their 1-D form: the MLP sees (N, C) features.
_NORM_1D = {'BN': 'BN1d', 'BN2d': 'BN1d', 'IN': 'IN1d', 'IN2d': 'IN1d'}


def _positive_int(value, name: str, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f'{name}={value!r} must be an integer >= {low}')
    return value


@MODELS.register_module()
class MLPNeck(nn.Module):
    """``depth`` fully connected layers of constant width.

    Each layer is ``Linear -> norm (optional) -> activation``; the first
    maps ``in_channels`` to ``hidden_channels``, the others keep
    ``hidden_channels``. ``depth=0`` is the identity. Use it to reshape
    the feature space of a frozen backbone before a linear head (e.g.
    ordinal regression); it takes ``(N, C)`` features, so put a
    :class:`GlobalAveragePooling` before it when the backbone returns
    maps: ``neck=[dict(type='GlobalAveragePooling'), dict(type='MLPNeck',
    depth=2)]`` (an :class:`ImageClassifier` fills ``in_channels`` from the
    backbone's ``out_features``).

    Args:
        in_channels (int): features of the input.
        depth (int): number of layers, ``>= 0``.
        hidden_channels (int, optional): width of every layer; defaults to
            ``in_channels`` (a constant width).
        act_cfg (dict, optional): activation after every layer (``None``
            for none). Defaults to ``dict(type='ReLU')``.
        norm_cfg (dict, optional): norm after every linear layer, e.g.
            ``dict(type='BN1d')`` or ``dict(type='LN')``; ``'BN'`` means
            ``'BN1d'`` here. Defaults to None.

    Attributes:
        in_features (int): ``in_channels``.
        out_features (int): ``hidden_channels``, or ``in_channels`` when
            ``depth=0``.

    A tuple input is reduced to its last entry, transformed, and returned
    as a 1-tuple; a tensor gives a tensor.

    Example:
        >>> import torch
        >>> neck = MLPNeck(in_channels=16, depth=2)
        >>> tuple(neck(torch.rand(4, 16)).shape), neck.out_features
        ((4, 16), 16)
        >>> neck = MLPNeck(16, depth=1, hidden_channels=8,
        ...                norm_cfg=dict(type='LN'))
        >>> [tuple(o.shape) for o in neck((torch.rand(4, 16), ))]
        [(4, 8)]
    """

    def __init__(self, in_channels: int, depth: int,
                 hidden_channels: Optional[int] = None,
                 act_cfg: Optional[dict] = dict(type='ReLU'),
                 norm_cfg: Optional[dict] = None):
        super().__init__()
        act_cfg, norm_cfg = to_plain(act_cfg), to_plain(norm_cfg)
        self.in_features = _positive_int(in_channels, 'in_channels')
        self.depth = _positive_int(depth, 'depth', allow_zero=True)
        if hidden_channels is None:
            hidden_channels = in_channels
        self.hidden_channels = _positive_int(hidden_channels,
                                             'hidden_channels')
        self.out_features = hidden_channels if depth > 0 else in_channels
        if norm_cfg is not None and isinstance(norm_cfg, dict) and \
                norm_cfg.get('type') in _NORM_1D:
            norm_cfg = dict(norm_cfg, type=_NORM_1D[norm_cfg['type']])
        layers = []
        width = in_channels
        for _ in range(depth):
            layer = [nn.Linear(width, hidden_channels,
                               bias=norm_cfg is None)]
            if norm_cfg is not None:
                layer.append(norm_layer(norm_cfg, hidden_channels)[1])
            layer.append(act_layer(act_cfg))
            layers.append(nn.Sequential(*layer))
            width = hidden_channels
        self.layers = nn.Sequential(*layers)

    @property
    def in_channels(self) -> int:
        return self.in_features

    def forward(self, inputs: Union[Tensor, Sequence[Tensor]]
                ) -> Union[Tensor, Tuple[Tensor]]:
        as_tuple = isinstance(inputs, (tuple, list))
        x = inputs[-1] if as_tuple else inputs
        if not isinstance(x, Tensor):
            raise TypeError(f'MLPNeck takes a Tensor or a tuple of Tensors; '
                            f'got {type(x).__name__}')
        if not torch.jit.is_tracing() and (
                x.ndim != 2 or x.shape[1] != self.in_features):
            hint = (' (a map: put GlobalAveragePooling before MLPNeck)'
                    if x.ndim == 4 else '')
            raise ValueError(f'MLPNeck(in_channels={self.in_features}) '
                             f'takes (N, {self.in_features}) features; got '
                             f'shape {tuple(x.shape)}{hint}')
        x = self.layers(x)
        return (x, ) if as_tuple else x

    def extra_repr(self) -> str:
        return (f'in_features={self.in_features}, depth={self.depth}, '
                f'out_features={self.out_features}')
