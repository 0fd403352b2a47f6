"""One factory for conv / norm / activation layers.

Every family builds its layers here, so ``norm_cfg=dict(type='SyncBN')``
from a detector config works everywhere and an unknown type gets one
clear error that lists the known names.
"""
from typing import Mapping, Optional, Tuple

from mmcv.cnn import build_activation_layer, build_conv_layer, build_norm_layer
from mmengine.registry import MODELS as ROOT_MODELS
from torch import nn

from mmbackbone.utils import closest

_NORM_NAMES = ('BN', 'BN1d', 'BN2d', 'BN3d', 'SyncBN', 'GN', 'LN', 'IN',
               'IN1d', 'IN2d', 'IN3d')
_ACT_NAMES = ('ReLU', 'LeakyReLU', 'PReLU', 'RReLU', 'ReLU6', 'ELU',
              'Sigmoid', 'Tanh', 'GELU', 'SiLU', 'Swish', 'HSigmoid',
              'HSwish', 'Mish', 'Clamp', 'Clip')


def _check_cfg(cfg, arg: str, known: Tuple[str, ...]) -> dict:
    if isinstance(cfg, Mapping) and not isinstance(cfg, dict):
        cfg = dict(cfg)  # e.g. an OmegaConf DictConfig from Hydra
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f"{arg}={cfg!r} must be a dict with a 'type' key, "
                        f"e.g. dict(type={known[0]!r}); known types: "
                        f'{", ".join(known)}')
    layer_type = cfg['type']
    if isinstance(layer_type, str):
        if '.' in layer_type:
            raise ValueError(f'{arg}={cfg!r}: dotted type {layer_type!r} is '
                             f'not allowed; known types: {", ".join(known)}')
        registered = _registered_names()
        if layer_type not in known and layer_type not in registered:
            raise KeyError(f'{arg}={cfg!r}: unknown type {layer_type!r}.'
                           f'{closest(layer_type, known)} Known types: '
                           f'{", ".join(known)}')
    return cfg


def _registered_names():
    import mmcv.cnn  # noqa: F401  (registers mmcv's layers)
    names = set()
    for registry in [ROOT_MODELS, *ROOT_MODELS.children.values()]:
        names.update(registry.module_dict)
    return names


def norm_layer(cfg: dict, num_features: int, postfix='',
               arg: str = 'norm_cfg') -> Tuple[str, nn.Module]:
    """Build a norm layer; returns ``(name, layer)`` like mmcv's builder.

    Example:
        >>> name, layer = norm_layer(dict(type='BN'), 8, postfix=1)
        >>> name, type(layer).__name__
        ('bn1', 'BatchNorm2d')
    """
    return build_norm_layer(_check_cfg(cfg, arg, _NORM_NAMES), num_features,
                            postfix=postfix)


def act_layer(cfg: Optional[dict], arg: str = 'act_cfg') -> nn.Module:
    """Build an activation (``None`` gives ``nn.Identity``).

    Example:
        >>> type(act_layer(dict(type='ReLU'))).__name__
        'ReLU'
    """
    if cfg is None:
        return nn.Identity()
    return build_activation_layer(_check_cfg(cfg, arg, _ACT_NAMES))


def conv_layer(cfg: Optional[dict], *args, **kwargs) -> nn.Module:
    """Build a conv layer (``None`` gives ``nn.Conv2d``).

    Example:
        >>> conv_layer(None, 3, 8, 3, padding=1).weight.shape
        torch.Size([8, 3, 3, 3])
    """
    if cfg is not None:
        cfg = _check_cfg(cfg, 'conv_cfg', ('Conv2d', 'Conv', 'Conv1d',
                                           'Conv3d'))
    return build_conv_layer(cfg, *args, **kwargs)


def linear_rates(max_rate: float, count: int) -> list:
    """``count`` rates rising linearly from 0 to ``max_rate`` (stochastic
    depth). Pure Python, so it also works under ``torch.device('meta')``.

    Example:
        >>> linear_rates(0.2, 3)
        [0.0, 0.1, 0.2]
    """
    if count <= 1:
        return [0.0] * count
    return [max_rate * i / (count - 1) for i in range(count)]
