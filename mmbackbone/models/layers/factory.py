"""One factory for conv / norm / activation layers.

Every family builds its layers here, so ``norm_cfg=dict(type='SyncBN')``
from a detector config works everywhere and an unknown type gets one
clear error that lists the known names.

Which builder makes a layer depends on its type alone, never on what was
imported before: the plain torch layers that mmcv registers under the
default names (``Conv2d``, ``BN``/``BN2d``, ``ReLU``) are built here
directly with mmcv's rules (``eps`` 1e-5, ``requires_grad``, names
``bn1``...), giving exactly the module mmcv's builder gives; every other
type (mmcv's own ``Conv`` wrapper, ``SyncBN``, ``GN``, ``LeakyReLU``...),
and a default name someone registered to another class, goes through
mmcv's builders (``mmcv.cnn``), imported on first use. Importing mmcv
costs about 0.25 s (it loads PIL and OpenCV), so ``import mmbackbone`` plus
a default ResNet build does not import it at all.

Example:
    >>> name, layer = norm_layer(dict(type='BN'), 8, postfix=1)
    >>> name, type(layer).__name__
    ('bn1', 'BatchNorm2d')
"""
from typing import Mapping, Optional, Tuple

from mmengine.registry import MODELS as ROOT_MODELS
from torch import nn

from mmbackbone.utils import closest

_NORM_NAMES = ('BN', 'BN1d', 'BN2d', 'BN3d', 'SyncBN', 'GN', 'LN', 'IN',
               'IN1d', 'IN2d', 'IN3d')
_ACT_NAMES = ('ReLU', 'LeakyReLU', 'PReLU', 'RReLU', 'ReLU6', 'ELU',
              'Sigmoid', 'Tanh', 'GELU', 'SiLU', 'Swish', 'HSigmoid',
              'HSwish', 'Mish', 'Clamp', 'Clip')
#: torch / timm spellings users write, and the registered name they mean.
_SPELLINGS = {
    'batchnorm': 'BN', 'batchnorm2d': 'BN2d', 'batchnorm1d': 'BN1d',
    'batchnorm3d': 'BN3d', 'syncbatchnorm': 'SyncBN', 'groupnorm': 'GN',
    'layernorm': 'LN', 'layernorm2d': 'LN', 'instancenorm': 'IN',
    'instancenorm1d': 'IN1d', 'instancenorm2d': 'IN2d',
    'instancenorm3d': 'IN3d', 'hardswish': 'HSwish',
    'hardsigmoid': 'HSigmoid', 'relu': 'ReLU', 'gelu': 'GELU',
    'silu': 'SiLU', 'swish': 'Swish', 'mish': 'Mish',
}


def _did_you_mean(layer_type: str, known: Tuple[str, ...]) -> str:
    meant = _SPELLINGS.get(layer_type.lower().replace('_', ''))
    if meant in known:
        return f' Did you mean {meant!r}?'
    return closest(layer_type, known)


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
        if layer_type not in known and \
                layer_type not in _registered_names():
            raise KeyError(f'{arg}={cfg!r}: unknown type {layer_type!r}.'
                           f'{_did_you_mean(layer_type, known)} Known types: '
                           f'{", ".join(known)}')
    return cfg


#: Keys of layer configs whose values must be bools / positive numbers.
_BOOL_KEYS = ('requires_grad', 'inplace', 'affine', 'track_running_stats',
              'bias')
_POSITIVE_KEYS = ('eps', 'num_groups')


def _check_values(cfg: dict, arg: str) -> None:
    for key in _BOOL_KEYS:
        if key in cfg and not isinstance(cfg[key], bool):
            raise TypeError(f'{arg}={cfg!r}: {key}={cfg[key]!r} must be True '
                            f'or False')
    for key in _POSITIVE_KEYS:
        if key not in cfg:
            continue
        value = cfg[key]
        integral = key == 'num_groups'
        kinds = (int, ) if integral else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) \
                or not 0 < value < float('inf'):
            raise ValueError(f'{arg}={cfg!r}: {key}={value!r} must be a '
                             f'positive {"int" if integral else "number"}')
    if cfg.get('type') == 'GN' and 'num_groups' not in cfg:
        raise KeyError(f"{arg}={cfg!r}: GN needs num_groups, e.g. "
                       f"dict(type='GN', num_groups=32)")
    if 'momentum' in cfg and cfg['momentum'] is not None and (
            isinstance(cfg['momentum'], bool)
            or not isinstance(cfg['momentum'], (int, float))
            or not 0 <= cfg['momentum'] <= 1):
        raise ValueError(f'{arg}={cfg!r}: momentum={cfg["momentum"]!r} must '
                         f'be a number in [0, 1] or None')


#: The torch classes mmcv.cnn registers under these names.
_TORCH_LAYERS = {'Conv2d': nn.Conv2d, 'BN': nn.BatchNorm2d,
                 'BN2d': nn.BatchNorm2d, 'ReLU': nn.ReLU}


def _torch_layer(cfg: Optional[dict]) -> Optional[type]:
    """The torch class to build ``cfg`` with directly, or None: use
    mmcv's builder. Only the type decides (and a registration of that
    name to another class), not whether ``mmcv.cnn`` is imported."""
    layer_type = 'Conv2d' if cfg is None else cfg.get('type')
    if not isinstance(layer_type, str) or layer_type not in _TORCH_LAYERS:
        return None
    cls = _TORCH_LAYERS[layer_type]
    registered = ROOT_MODELS.module_dict.get(layer_type, cls)
    return cls if registered is cls else None


def _build_norm_layer(cfg: dict, num_features: int, postfix=''):
    cls = _torch_layer(cfg)
    if cls is not nn.BatchNorm2d:
        from mmcv.cnn import build_norm_layer
        return build_norm_layer(cfg, num_features, postfix=postfix)
    kwargs = {k: v for k, v in cfg.items()
              if k not in ('type', 'requires_grad')}
    kwargs.setdefault('eps', 1e-5)
    layer = cls(num_features, **kwargs)
    for param in layer.parameters():
        param.requires_grad = cfg.get('requires_grad', True)
    return f'bn{postfix}', layer


def _build_conv_layer(cfg: Optional[dict], *args, **kwargs) -> nn.Module:
    cls = _torch_layer(cfg)
    if cls is not nn.Conv2d:
        from mmcv.cnn import build_conv_layer
        return build_conv_layer(cfg, *args, **kwargs)
    options = {k: v for k, v in (cfg or {}).items() if k != 'type'}
    return cls(*args, **kwargs, **options)


def _build_activation_layer(cfg: dict) -> nn.Module:
    cls = _torch_layer(cfg)
    if cls is not nn.ReLU:
        from mmcv.cnn import build_activation_layer
        return build_activation_layer(cfg)
    return cls(**{k: v for k, v in cfg.items() if k != 'type'})


def conv_module(*args, **kwargs) -> nn.Module:
    """mmcv's ``ConvModule(*args, **kwargs)`` (conv, norm, activation)."""
    from mmcv.cnn import ConvModule
    return ConvModule(*args, **kwargs)


def _build(builder, cfg: dict, arg: str, *args, **kwargs) -> nn.Module:
    """Run a layer builder; its errors name the config argument."""
    try:
        return builder(cfg, *args, **kwargs)
    except (TypeError, ValueError, KeyError, AssertionError,
            RuntimeError) as err:
        kind = ValueError if isinstance(err, (AssertionError, RuntimeError)) \
            else type(err)
        shown = ', '.join(map(repr, args))
        raise kind(f'{arg}={cfg!r} cannot build a layer ({shown}): '
                   f'{type(err).__name__}: {err}') from err


def check_norm_cfg(cfg, data: str = 'maps', arg: str = 'norm_cfg') -> None:
    """Fail early if ``cfg`` cannot normalize the family's features.

    Builds a small layer and runs it on a zero input:
    feature maps ``(N, C, H, W)`` for ``data='maps'`` (so ``LN``, ``BN1d``
    and ``BN3d`` are refused for conv nets) or tokens ``(N, L, C)`` for
    ``data='tokens'`` (so ``BN`` is refused for transformers).

    Example:
        >>> check_norm_cfg(dict(type='BN'))
        >>> check_norm_cfg(dict(type='LN'))
        Traceback (most recent call last):
        ...
        ValueError: norm_cfg={'type': 'LN'} builds LayerNorm, which cannot normalize feature maps (N, C, H, W)...
    """
    import torch
    channels = 4
    if isinstance(cfg, Mapping) and isinstance(cfg.get('num_groups'), int):
        channels = max(cfg['num_groups'], 1) * 2
    # A tiny probe on the CPU: cheap, and unlike the meta device it does
    # not load torch's decomposition tables (about 0.6 s of start-up).
    with torch.device('cpu'), torch.no_grad():
        _, layer = norm_layer(cfg, channels, arg=arg)
        shape = (2, channels, 3, 3) if data == 'maps' else (2, 3, channels)
        try:
            layer.eval()(torch.zeros(shape))
        except Exception as err:  # the layer cannot take this data
            what = ('feature maps (N, C, H, W)' if data == 'maps' else
                    'tokens (N, L, C)')
            first = str(err).splitlines()[0] if str(err) else ''
            hint = 'BN' if data == 'maps' else 'LN'
            raise ValueError(f'{arg}={cfg!r} builds {type(layer).__name__}, '
                             f'which cannot normalize {what} ({first}); '
                             f'use e.g. dict(type={hint!r})') from None


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
    cfg = _check_cfg(cfg, arg, _NORM_NAMES)
    _check_values(cfg, arg)
    return _build(_build_norm_layer, cfg, arg, num_features,
                  postfix=postfix)


def act_layer(cfg: Optional[dict], arg: str = 'act_cfg') -> nn.Module:
    """Build an activation (``None`` gives ``nn.Identity``).

    Example:
        >>> type(act_layer(dict(type='ReLU'))).__name__
        'ReLU'
    """
    if cfg is None:
        return nn.Identity()
    cfg = _check_cfg(cfg, arg, _ACT_NAMES)
    _check_values(cfg, arg)
    return _build(_build_activation_layer, cfg, arg)


def conv_layer(cfg: Optional[dict], *args, **kwargs) -> nn.Module:
    """Build a conv layer (``None`` gives ``nn.Conv2d``).

    Example:
        >>> conv_layer(None, 3, 8, 3, padding=1).weight.shape
        torch.Size([8, 3, 3, 3])
    """
    if cfg is not None:
        cfg = _check_cfg(cfg, 'conv_cfg', ('Conv2d', 'Conv', 'Conv1d',
                                           'Conv3d'))
        _check_values(cfg, 'conv_cfg')
        return _build(_build_conv_layer, cfg, 'conv_cfg', *args, **kwargs)
    return _build_conv_layer(cfg, *args, **kwargs)
