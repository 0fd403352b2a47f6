"""Feature pyramids from single-stride maps (Li et al., 2022, ViTDet).

A plain ViT gives every map at one stride (16). ViTDet's simple feature
pyramid makes the detection levels from its last map alone: stride 4 by
two 2x2 stride-2 transposed convolutions (channel norm and GELU between
them, channels halved at each), stride 8 by one, stride 16 as it is,
stride 32 by a 2x2 max pool; each level is then projected by a 1x1 and a
3x3 convolution, each followed by a norm. The multi-level variant takes one
map per level (e.g. ViT blocks 3, 6, 9 and 12) and rescales each by its
own factor with the same blocks; on a CNN's stages (factors 1) it only
re-projects them.
"""
import math
from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmbackbone.registry import MODELS
from mmbackbone.utils import BaseModule
from ..init_cfg import PretrainedRoutingMixin
from ..layers import check_norm_cfg, norm_layer

MODES = ('last', 'multi_level')
#: Largest rescale step count either way (2**6 = 64x).
MAX_STEPS = 6
#: ViTDet's norm: LayerNorm over the channels of each position.
DEFAULT_NORM = dict(type='LN2d', eps=1e-6)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of ``(N, C, H, W)`` maps, at each
    position (ViTDet's ``LN2d``); an ``nn.LayerNorm``, so ``norm_eval``
    finds it.

    Example:
        >>> import torch
        >>> out = LayerNorm2d(4)(torch.rand(2, 4, 3, 5) * 10)
        >>> bool(out.mean(dim=1).abs().max() < 1e-5)
        True
    """

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape,
                         self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2).contiguous()


def scale_steps(scale, where: str = 'scale') -> int:
    """How many factor-2 steps a power-of-two scale is: ``log2(scale)``.

    Example:
        >>> [scale_steps(s) for s in (4, 2.0, 1, 0.5, 0.25)]
        [2, 1, 0, -1, -2]
        >>> scale_steps(3)
        Traceback (most recent call last):
        ...
        ValueError: scale=3 must be a power of two from 2**-6 to 2**6 ...
    """
    valid = (f'a power of two from 2**-{MAX_STEPS} to 2**{MAX_STEPS} '
             f'(..., 0.25, 0.5, 1, 2, 4, ...)')
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or \
            not 0 < scale < math.inf:
        raise ValueError(f'{where}={scale!r} must be {valid}')
    steps = math.log2(scale)
    if abs(steps - round(steps)) > 1e-9 or abs(steps) > MAX_STEPS:
        raise ValueError(f'{where}={scale!r} must be {valid}')
    return int(round(steps))


def build_map_norm(norm_cfg: Optional[dict], channels: int
                   ) -> Optional[nn.Module]:
    """A norm for ``(N, C, H, W)`` maps: ``'LN2d'`` (channel LayerNorm),
    any registered map norm (``'BN'``, ``'GN'``, ``'SyncBN'``...), or
    None for no norm.

    Example:
        >>> type(build_map_norm(dict(type='LN2d'), 8)).__name__
        'LayerNorm2d'
        >>> type(build_map_norm(dict(type='BN'), 8)).__name__
        'BatchNorm2d'
    """
    if norm_cfg is None:
        return None
    if isinstance(norm_cfg, dict) and norm_cfg.get('type') == 'LN2d':
        options = {k: v for k, v in norm_cfg.items() if k != 'type'}
        unknown = sorted(set(options) - {'eps', 'elementwise_affine'}, key=str)
        if unknown:
            raise KeyError(f'norm_cfg={norm_cfg!r}: LN2d takes eps and '
                           f'elementwise_affine; unknown keys {unknown}')
        eps = options.get('eps', 1e-5)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or \
                not 0 < eps < math.inf:
            raise ValueError(f'norm_cfg={norm_cfg!r}: eps={eps!r} must be a '
                             f'positive number')
        if not isinstance(options.get('elementwise_affine', True), bool):
            raise TypeError(f'norm_cfg={norm_cfg!r}: elementwise_affine must '
                            f'be True or False')
        return LayerNorm2d(channels, **options)
    return norm_layer(norm_cfg, channels)[1]


def check_map_norm(norm_cfg: Optional[dict]) -> None:
    """Fail early when ``norm_cfg`` cannot normalize feature maps."""
    if norm_cfg is None:
        return
    if not isinstance(norm_cfg, dict) or 'type' not in norm_cfg:
        raise TypeError(f"norm_cfg={norm_cfg!r} must be None or a dict with "
                        f"a 'type' key, e.g. dict(type='LN2d')")
    if norm_cfg['type'] == 'LN2d':
        build_map_norm(norm_cfg, 2)
    else:
        check_norm_cfg(norm_cfg, data='maps')


def rescaled_channels(channels: int, steps: int) -> int:
    """Channels after rescaling by ``2 ** steps``: halved per upsampling
    step, kept otherwise.

    Example:
        >>> rescaled_channels(384, 2), rescaled_channels(384, -1)
        (96, 384)
    """
    if steps <= 0:
        return channels
    if channels % 2**steps:
        raise ValueError(f'upsampling by {2**steps} halves the channels '
                         f'{steps} times: in_channels={channels} must be a '
                         f'multiple of {2**steps}')
    return channels // 2**steps


def rescale_block(channels: int, steps: int, norm_cfg: Optional[dict]
                  ) -> Tuple[nn.Module, int]:
    """The block that rescales a map by ``2 ** steps``, and its output
    channels.

    ``steps > 0``: that many 2x2 stride-2 transposed convolutions, each
    halving the channels, with norm and GELU between them; ``0``: the
    identity; ``steps < 0``: one max pool of kernel and stride
    ``2 ** -steps``, rounding odd sides up (``ceil_mode``): a side ``n``
    becomes ``ceil(n / 2 ** -steps)``, as a stride-2 conv backbone's
    levels do (ViTDet's floor differs only on odd sides).

    Example:
        >>> import torch
        >>> block, channels = rescale_block(64, 2, dict(type='LN2d'))
        >>> tuple(block(torch.rand(1, 64, 4, 4)).shape), channels
        ((1, 16, 16, 16), 16)
    """
    rescaled_channels(channels, steps)
    if steps == 0:
        return nn.Identity(), channels
    if steps < 0:
        return nn.MaxPool2d(kernel_size=2**-steps, stride=2**-steps,
                            ceil_mode=True), channels
    layers: List[nn.Module] = []
    for step in range(steps):
        layers.append(nn.ConvTranspose2d(channels, channels // 2, 2, 2))
        channels //= 2
        if step < steps - 1:
            norm = build_map_norm(norm_cfg, channels)
            layers += ([norm] if norm is not None else []) + [nn.GELU()]
    return nn.Sequential(*layers), channels


def projection_block(in_channels: int, out_channels: int,
                     norm_cfg: Optional[dict]) -> nn.Sequential:
    """1x1 conv, norm, 3x3 conv, norm (convolutions without bias when a
    norm follows)."""
    layers: List[nn.Module] = []
    for kernel, channels in ((1, in_channels), (3, out_channels)):
        norm = build_map_norm(norm_cfg, out_channels)
        layers.append(nn.Conv2d(channels, out_channels, kernel,
                                padding=kernel // 2, bias=norm is None))
        if norm is not None:
            layers.append(norm)
    return nn.Sequential(*layers)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{name}={value!r} must be a positive int')
    return value


def check_pyramid_args(mode: str, scales: Sequence[float],
                       out_channels: Optional[int]) -> List[int]:
    """Check the pyramid arguments shared by :class:`SimpleFeaturePyramid`
    and ``PyramidBackbone``; returns each scale's power-of-two step.

    Example:
        >>> check_pyramid_args('last', (4.0, 2.0, 1.0, 0.5), 256)
        [2, 1, 0, -1]
    """
    if mode not in MODES:
        raise ValueError(f'mode={mode!r}; choose from {list(MODES)}')
    if isinstance(scales, (str, bytes)) or \
            not isinstance(scales, Sequence) or not scales:
        raise TypeError(f'scales={scales!r} must be a non-empty sequence '
                        f'of powers of two, e.g. (4.0, 2.0, 1.0, 0.5)')
    steps = [scale_steps(s, f'scales[{i}]') for i, s in enumerate(scales)]
    if out_channels is not None and (
            isinstance(out_channels, bool)
            or not isinstance(out_channels, int) or out_channels < 1):
        raise ValueError(f'out_channels={out_channels!r} must be a '
                         f'positive int or None (keep the rescaled '
                         f'channels)')
    return steps


@MODELS.register_module()
class SimpleFeaturePyramid(PretrainedRoutingMixin, BaseModule):
    """Rescale single-stride maps into a pyramid (ViTDet).

    Level ``i`` rescales its source map by ``scales[i]`` (a power of two:
    ``4.0`` makes stride 16 into stride 4, ``0.5`` into stride 32), then,
    unless ``out_channels`` is None, projects it to ``out_channels``. The
    source is the last input map for every level with ``mode='last'``
    (ViTDet), input map ``i`` with ``mode='multi_level'``.

    In a detector config it is the only neck, or the first one before
    mmdet's ``FPN``: ``neck=[dict(type='mmbackbone.SimpleFeaturePyramid',
    in_channels=768, out_channels=256), dict(type='FPN', in_channels=[256]
    * 4, out_channels=256, num_outs=5)]``.

    Args:
        in_channels (int | Sequence[int]): channels of the input maps: one
            int, or one per level (``'multi_level'``; with ``'last'`` only
            the last entry is used).
        out_channels (int, optional): channels of every level after the
            projection. None: no projection; level ``i`` then has
            ``in_channels / scales[i]`` channels where ``scales[i] > 1``
            (each upsampling step halves them), ``in_channels`` otherwise.
            Default: 256.
        scales (Sequence[float]): rescale factor of each level, powers of
            two. Default: ``(4.0, 2.0, 1.0, 0.5)``.
        mode (str): ``'last'`` or ``'multi_level'``. Default: ``'last'``.
        norm_cfg (dict, optional): norm in the upsampling and projection
            blocks: ``dict(type='LN2d', eps=1e-6)`` (ViTDet's channel
            LayerNorm, the default), a map norm such as ``dict(type='BN')``
            or ``dict(type='GN', num_groups=32)``, or None (then the
            convolutions have biases).
        init_cfg (dict | list, optional): mmengine init config; by default
            the projection convolutions are Kaiming-normal (fan out, as
            ViTDet) with zero biases.

    Attributes:
        level_channels (tuple[int]): channels of each output level.

    Example:
        >>> import torch
        >>> neck = SimpleFeaturePyramid(in_channels=32, out_channels=16)
        >>> outs = neck((torch.rand(1, 32, 4, 6), ))
        >>> [tuple(out.shape) for out in outs]
        [(1, 16, 16, 24), (1, 16, 8, 12), (1, 16, 4, 6), (1, 16, 2, 3)]
        >>> neck = SimpleFeaturePyramid([32, 32], out_channels=None,
        ...                             scales=(2, 0.5), mode='multi_level')
        >>> [tuple(out.shape) for out in neck([torch.rand(1, 32, 4, 4)] * 2)]
        [(1, 16, 8, 8), (1, 32, 2, 2)]
        >>> neck.level_channels
        (16, 32)
    """

    def __init__(self,
                 in_channels: Union[int, Sequence[int]],
                 out_channels: Optional[int] = 256,
                 scales: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
                 mode: str = 'last',
                 norm_cfg: Optional[dict] = DEFAULT_NORM,
                 init_cfg: Union[dict, List[dict], None] = None):
        super().__init__(init_cfg=init_cfg)
        steps = check_pyramid_args(mode, scales, out_channels)
        self.scales = tuple(scales)
        self.mode = mode
        self.in_channels = self._level_inputs(in_channels, len(steps))
        self.out_channels = out_channels
        check_map_norm(norm_cfg)
        self.norm_cfg = norm_cfg

        self.levels = nn.ModuleList()
        channels = []
        for i, (level_in, step) in enumerate(zip(self.in_channels, steps)):
            try:
                rescale, mid = rescale_block(level_in, step, norm_cfg)
            except ValueError as err:
                raise ValueError(f'scales[{i}]={scales[i]!r}: {err}') from None
            project = (nn.Identity() if out_channels is None else
                       projection_block(mid, out_channels, norm_cfg))
            self.levels.append(nn.Sequential(OrderedDict(
                rescale=rescale, project=project)))
            channels.append(mid if out_channels is None else out_channels)
        self.level_channels = tuple(channels)

    def _level_inputs(self, in_channels, num_levels: int) -> Tuple[int, ...]:
        """Input channels of each level's source map."""
        if isinstance(in_channels, int) and not isinstance(in_channels, bool):
            return (_positive_int(in_channels, 'in_channels'), ) * num_levels
        if isinstance(in_channels, (str, bytes)) or \
                not isinstance(in_channels, Sequence) or not in_channels:
            raise TypeError(f'in_channels={in_channels!r} must be an int or '
                            f'a non-empty sequence of ints')
        for i, value in enumerate(in_channels):
            _positive_int(value, f'in_channels[{i}]')
        if self.mode == 'last':
            return (in_channels[-1], ) * num_levels
        if len(in_channels) != num_levels:
            raise ValueError(f"mode='multi_level' takes one input per level: "
                             f'in_channels={tuple(in_channels)!r} has '
                             f'{len(in_channels)} entries but scales='
                             f'{self.scales!r} has {num_levels}')
        return tuple(in_channels)

    def _init_after_random(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode='fan_out',
                                        nonlinearity='relu')
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def _sources(self, inputs) -> List[Tensor]:
        """The map each level starts from, checked."""
        if isinstance(inputs, Tensor):
            inputs = (inputs, )
        if not isinstance(inputs, (tuple, list)) or not inputs:
            raise TypeError(f'SimpleFeaturePyramid takes a Tensor or a '
                            f'non-empty tuple of (N, C, H, W) Tensors; got '
                            f'{type(inputs).__name__}')
        if self.mode == 'last':
            sources = [inputs[-1]] * len(self.levels)
        elif len(inputs) != len(self.levels):
            raise ValueError(f"mode='multi_level' takes one map per level: "
                             f'got {len(inputs)} maps for {len(self.levels)} '
                             f'levels (scales={self.scales!r})')
        else:
            sources = list(inputs)
        if torch.jit.is_tracing():  # shapes are constants in a trace
            return sources
        for i, (x, channels) in enumerate(zip(sources, self.in_channels)):
            if not isinstance(x, Tensor) or x.ndim != 4 or \
                    x.shape[1] != channels:
                shape = tuple(x.shape) if isinstance(x, Tensor) else type(x)
                raise ValueError(f'level {i} needs an (N, {channels}, H, W) '
                                 f'map (in_channels); got {shape}')
        return sources

    def forward(self, inputs: Union[Tensor, Sequence[Tensor]]
                ) -> Tuple[Tensor, ...]:
        """One map per level, in ``scales`` order."""
        return tuple(level(x) for level, x in
                     zip(self.levels, self._sources(inputs)))

    def extra_repr(self) -> str:
        return f'mode={self.mode!r}, scales={self.scales}'
