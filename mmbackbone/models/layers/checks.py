"""Argument checks shared by every family: each error names the argument,
the value given and what is valid."""
from typing import Any, Optional, Sequence, Tuple

from .factory import act_layer, check_norm_cfg, conv_layer

#: Where a residual block puts its stride: on the 3x3 conv (``'pytorch'``)
#: or on the first 1x1 conv (``'caffe'``).
STYLES = ('pytorch', 'caffe')

_UNSET: Any = object()


def is_int(value) -> bool:
    """An int that is not a bool.

    Example:
        >>> is_int(3), is_int(True), is_int(3.0)
        (True, False, False)
    """
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An int or float that is not a bool.

    Example:
        >>> is_number(0.5), is_number(False)
        (True, False)
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_positive_ints(**values) -> None:
    """Raise ``ValueError`` naming the first argument that is not a
    positive int.

    Example:
        >>> check_positive_ints(in_channels=3, stem_channels=0)
        Traceback (most recent call last):
        ...
        ValueError: stem_channels=0 must be a positive int
    """
    for name, value in values.items():
        if not is_int(value) or value < 1:
            raise ValueError(f'{name}={value!r} must be a positive int')


def check_rate(name: str, value) -> None:
    """Raise ``ValueError`` unless ``value`` is a number in [0, 1) (a drop
    or drop-path rate).

    Example:
        >>> check_rate('drop_path_rate', 0.1)
        >>> check_rate('drop_path_rate', 1.5)
        Traceback (most recent call last):
        ...
        ValueError: drop_path_rate=1.5 must be in [0, 1)
    """
    if not is_number(value) or not 0 <= value < 1:
        raise ValueError(f'{name}={value!r} must be in [0, 1)')


def check_style(style) -> None:
    """Raise ``ValueError`` unless ``style`` is one of :data:`STYLES`.

    Example:
        >>> check_style('tf')
        Traceback (most recent call last):
        ...
        ValueError: style='tf'; choose 'pytorch' or 'caffe'
    """
    if style not in STYLES:
        raise ValueError(f"style={style!r}; choose 'pytorch' or 'caffe'")


def check_per_stage(num_stages: int, where: str = '',
                    **values: Sequence[int]) -> None:
    """Raise ``ValueError`` unless each value holds ``num_stages``
    positive ints (``strides``, ``dilations``); ``where`` ends the
    message (``' of arch=...'``).

    Example:
        >>> check_per_stage(2, strides=(1, 2), dilations=(1, ))
        Traceback (most recent call last):
        ...
        ValueError: dilations=(1,) must hold 2 positive ints, one per stage
    """
    for name, value in values.items():
        if isinstance(value, str) or not isinstance(value, Sequence) or \
                len(value) != num_stages or \
                not all(is_int(v) and v >= 1 for v in value):
            raise ValueError(f'{name}={value!r} must hold {num_stages} '
                             f'positive ints, one per stage{where}')


def to_pair(value, name: str) -> Tuple[int, int]:
    """``8`` -> ``(8, 8)``; a pair is kept; both must be positive ints.

    Example:
        >>> to_pair(8, 'patch_size'), to_pair((4, 2), 'stride')
        ((8, 8), (4, 2))
    """
    pair = (value, value) if isinstance(value, int) else value
    if (isinstance(pair, str) or not isinstance(pair, Sequence)
            or len(pair) != 2 or not all(is_int(v) and v >= 1
                                         for v in pair)):
        raise ValueError(f'{name}={value!r} must be a positive int or a '
                         f'pair of positive ints')
    return int(pair[0]), int(pair[1])


def check_layer_cfgs(norm_cfg: Any = _UNSET, act_cfg: Any = _UNSET,
                     conv_cfg: Optional[dict] = None,
                     data: str = 'maps') -> None:
    """Validate a family's layer configs once, before building, with errors
    that name the argument: ``norm_cfg`` must normalize ``data`` (feature
    maps or tokens, see :func:`check_norm_cfg`), ``act_cfg`` and
    ``conv_cfg`` must build. Configs not given are not checked.

    Example:
        >>> check_layer_cfgs(norm_cfg=dict(type='BN'), conv_cfg=None)
        >>> check_layer_cfgs(norm_cfg=dict(type='LN'))
        Traceback (most recent call last):
        ...
        ValueError: norm_cfg={'type': 'LN'} builds LayerNorm, which cannot...
    """
    if norm_cfg is not _UNSET:
        check_norm_cfg(norm_cfg, data=data)
    if act_cfg is not _UNSET:
        act_layer(act_cfg)
    if conv_cfg is not None:
        conv_layer(conv_cfg, 1, 1, 1)
