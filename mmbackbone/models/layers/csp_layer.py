"""The cross-stage-partial stage (Wang et al., 2019), its blocks and the
row type (:class:`CSPArch`) that describes a stack of such stages.

A CSP stage splits its features in two halves: one half runs through the
blocks, the other crosses the stage untouched, and a 1x1 conv fuses both.
Module names follow mmpretrain 1.2 (``atfer_blocks_conv`` typo included),
so its checkpoints load with ``strict=True``.

Example:
    >>> import torch
    >>> stage = CSPStage(ResNetBottleneck, 16, 32, expand_ratio=2,
    ...                  bottle_ratio=2, num_blocks=2)
    >>> tuple(stage(torch.rand(1, 16, 8, 8)).shape)
    (1, 32, 4, 4)
"""
from dataclasses import dataclass, field, fields, replace
from typing import (Any, List, Mapping, Optional, Sequence, Tuple,
                    Union)

import torch
from torch import Tensor, nn

from .bottleneck import ResidualBlock
from .checkpointing import run_checkpointed
from .drop import drop_path_or_identity
from .factory import conv_module

#: Drop-path rates at or below this build no DropPath (as mmpretrain).
_EPS = 1e-5


def _csp_rate(rate: float) -> float:
    """The drop-path rate a CSP block uses: 0 at or below :data:`_EPS`."""
    return rate if rate > _EPS else 0.


# ----------------------------------------------------------------- blocks
class DarknetBottleneck(nn.Module):
    """1x1 conv then 3x3 conv (each conv-norm-act), plus the input.

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels.
        expansion (float): ``out_channels / hidden channels``. Default: 2.
        add_identity (bool): add the input when the shapes allow it.
        conv_cfg, norm_cfg, act_cfg (dict): layer configs.
        drop_path_rate (float): stochastic depth of the residual branch.
        with_cp (bool): gradient checkpointing of the block.
    """

    #: The expand conv of a stage of these blocks has an activation.
    expand_act = True
    #: Groups of the stage's 3x3 downsampling conv.
    down_groups = 1

    def __init__(self, in_channels: int, out_channels: int,
                 expansion: float = 2, add_identity: bool = True,
                 conv_cfg: Optional[dict] = None, drop_path_rate: float = 0.,
                 norm_cfg: dict = dict(type='BN', eps=1e-5),
                 act_cfg: dict = dict(type='LeakyReLU', inplace=True),
                 with_cp: bool = False):
        super().__init__()
        hidden = int(out_channels / expansion)
        self.conv1 = conv_module(in_channels, hidden, 1, conv_cfg=conv_cfg,
                                norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.conv2 = conv_module(hidden, out_channels, 3, padding=1,
                                conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                act_cfg=act_cfg)
        self.add_identity = add_identity and in_channels == out_channels
        self.drop_path = drop_path_or_identity(_csp_rate(drop_path_rate))
        self.with_cp = with_cp

    def _forward(self, x: Tensor) -> Tensor:
        out = self.drop_path(self.conv2(self.conv1(x)))
        return out + x if self.add_identity else out

    def forward(self, x: Tensor) -> Tensor:
        return run_checkpointed(self._forward, x, with_cp=self.with_cp)


class ResNetBottleneck(ResidualBlock):
    """ResNet bottleneck (1x1, 3x3, 1x1) with an identity shortcut: a
    :class:`~mmbackbone.models.layers.ResidualBlock` with CSP's widths.

    The middle width is ``out_channels // expansion``; with ``groups > 1``
    it becomes ``groups * width_per_group * that // base_channels`` and
    the 3x3 conv is grouped (the ResNeXt rule). Keys follow mmpretrain:
    ``conv1``, ``bn1``, ``conv2``, ``bn2``, ``conv3``, ``bn3``.

    Args:
        in_channels (int): input channels (equal to ``out_channels``).
        out_channels (int): output channels.
        expansion (int): ``out_channels / middle channels``. Default: 4.
        groups (int): groups of the 3x3 conv. Default: 1.
        base_channels (int): ResNeXt base width. Default: 64.
        width_per_group (int): ResNeXt width per group. Default: 4.
        drop_path_rate (float): stochastic depth of the residual branch.
        **layer_kwargs: ``conv_cfg``, ``norm_cfg``, ``act_cfg`` and
            ``with_cp`` of :class:`ResidualBlock` (its defaults, BN and
            ReLU, are those of mmpretrain's ResNet bottleneck; a CSP stage
            passes its own).
    """

    expand_act = False
    down_groups = 1

    def __init__(self, in_channels: int, out_channels: int,
                 expansion: int = 4, groups: int = 1, base_channels: int = 64,
                 width_per_group: int = 4, drop_path_rate: float = 0.,
                 **layer_kwargs: Any):
        if in_channels != out_channels:
            raise ValueError(f'in_channels={in_channels} and out_channels='
                             f'{out_channels} must be equal: CSP blocks have '
                             f'no downsample shortcut')
        if out_channels % expansion:
            raise ValueError(f'block channels {out_channels} are not '
                             f'divisible by bottle_ratio={expansion}')
        mid = out_channels // expansion
        if groups != 1:
            if mid % base_channels:
                raise ValueError(f'middle channels {mid} are not divisible '
                                 f'by base_channels={base_channels}')
            mid = groups * width_per_group * mid // base_channels
        super().__init__(in_channels, out_channels, mid_channels=mid,
                         groups=groups,
                         drop_path_rate=_csp_rate(drop_path_rate),
                         **layer_kwargs)


class ResNeXtBottleneck(ResNetBottleneck):
    """ResNeXt bottleneck: :class:`ResNetBottleneck` with 32 groups of
    width 4 by default; its stage's downsampling conv has 32 groups."""

    down_groups = 32

    def __init__(self, in_channels: int, out_channels: int,
                 expansion: int = 4, groups: int = 32,
                 base_channels: int = 64, width_per_group: int = 4,
                 **kwargs: Any):
        super().__init__(in_channels, out_channels, expansion=expansion,
                         groups=groups, base_channels=base_channels,
                         width_per_group=width_per_group, **kwargs)


#: Block names usable in an arch row.
BLOCKS = {'darknet': DarknetBottleneck, 'resnet': ResNetBottleneck,
          'resnext': ResNeXtBottleneck}

# ------------------------------------------------------------------ stage
class CSPStage(nn.Module):
    """One cross-stage-partial stage.

    ``downsample_conv`` (3x3 stride 2, or identity) -> ``expand_conv``
    (1x1) -> split in two halves; the second half runs through ``blocks``
    and ``atfer_blocks_conv`` (1x1), is concatenated after the first half
    and fused by ``final_conv`` (1x1).

    Args:
        block_fn (type): block class (see :data:`BLOCKS`), or any block
            taking ``in_channels``, ``out_channels``, ``expansion``,
            ``drop_path_rate`` and the layer configs (its class attributes
            ``down_groups`` and ``expand_act`` default to 1 and False).
        in_channels (int): input channels.
        out_channels (int): output channels.
        has_downsampler (bool): start with a stride-2 3x3 conv.
        down_growth (bool): that conv outputs ``out_channels`` (else it
            keeps ``in_channels``).
        expand_ratio (float): expand conv channels per downsampled channel.
        bottle_ratio (float): the blocks' ``expansion``.
        num_blocks (int): number of blocks.
        block_dpr (Sequence[float]): drop-path rate of each block.
        block_args (dict): extra block arguments.
        conv_cfg, norm_cfg, act_cfg (dict): layer configs.
        with_cp (bool): gradient checkpointing per block.
    """

    def __init__(self, block_fn: type, in_channels: int, out_channels: int,
                 has_downsampler: bool = True, down_growth: bool = False,
                 expand_ratio: float = 0.5, bottle_ratio: float = 2,
                 num_blocks: int = 1, block_dpr: Sequence[float] = (),
                 block_args: Optional[Mapping] = None,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN', eps=1e-5),
                 act_cfg: dict = dict(type='LeakyReLU', inplace=True),
                 with_cp: bool = False):
        super().__init__()
        down_channels = out_channels if down_growth else in_channels
        if has_downsampler:
            self.downsample_conv = conv_module(
                in_channels, down_channels, 3, stride=2, padding=1,
                groups=getattr(block_fn, 'down_groups', 1), conv_cfg=conv_cfg,
                norm_cfg=norm_cfg, act_cfg=act_cfg)
        else:
            self.downsample_conv = nn.Identity()
        exp_channels = int(down_channels * expand_ratio)
        self.expand_conv = conv_module(
            down_channels, exp_channels, 1, conv_cfg=conv_cfg,
            norm_cfg=norm_cfg,
            act_cfg=act_cfg if getattr(block_fn, 'expand_act', False)
            else None)
        self.split = block_channels = exp_channels // 2
        rates = list(block_dpr) or [0.] * num_blocks
        # with_cp only when asked: a foreign block may not take it
        extra = dict(block_args or {}, **(dict(with_cp=True) if with_cp
                                           else {}))
        self.blocks = nn.Sequential(*[
            block_fn(in_channels=block_channels, out_channels=block_channels,
                     expansion=bottle_ratio, drop_path_rate=rates[i],
                     conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg,
                     **extra)
            for i in range(num_blocks)
        ])
        self.atfer_blocks_conv = conv_module(
            block_channels, block_channels, 1, conv_cfg=conv_cfg,
            norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.final_conv = conv_module(
            2 * block_channels, out_channels, 1, conv_cfg=conv_cfg,
            norm_cfg=norm_cfg, act_cfg=act_cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = self.expand_conv(self.downsample_conv(x))
        cross, part = x[:, :self.split], x[:, self.split:]
        part = self.atfer_blocks_conv(self.blocks(part)).contiguous()
        return self.final_conv(torch.cat((cross, part), dim=1))


# ------------------------------------------------------- stage stack row
#: Stem names usable in an arch row: a stride-1 3x3 conv (darknet), or a
#: stride-2 7x7 conv and a stride-2 max pool (resnet). A row whose stem a
#: ``stem_fn`` builds has ``stem=None``.
STEMS = ('darknet', 'resnet')


def stem_stride(stem: str, deep_stem: bool = False) -> int:
    """The stride of a named stem (the deep resnet stem has no pool)."""
    return {'darknet': 1, 'resnet': 2 if deep_stem else 4}[stem]


def build_stem(stem: str, in_channels: int, width: int,
               deep_stem: bool = False, **layer_cfg: Any) -> nn.Module:
    """A named stem (:data:`STEMS`) of ``width`` output channels; with
    ``deep_stem`` the resnet stem is three 3x3 convs (the first of stride
    2) and no max pool, as mmpretrain. ``layer_cfg``: ``conv_cfg``,
    ``norm_cfg``, ``act_cfg``.

    Example:
        >>> len(build_stem('resnet', 3, 64, deep_stem=True))
        3
    """
    if stem == 'darknet':
        return conv_module(in_channels, width, 3, padding=1, **layer_cfg)
    if deep_stem:
        half = width // 2
        return nn.Sequential(
            conv_module(in_channels, half, 3, stride=2, padding=1,
                        **layer_cfg),
            conv_module(half, half, 3, padding=1, **layer_cfg),
            conv_module(half, width, 3, padding=1, **layer_cfg))
    return nn.Sequential(
        conv_module(in_channels, width, 7, stride=2, padding=3, **layer_cfg),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1))


def _is_seq(value) -> bool:
    """A list / tuple (or Hydra ListConfig), not a string."""
    return isinstance(value, Sequence) and not isinstance(value, str)


def _per_stage(value, name: str, num_stages: int) -> tuple:
    """A scalar broadcast to every stage, or a tuple of one per stage."""
    if _is_seq(value):
        if len(value) != num_stages:
            raise ValueError(f'arch {name}={tuple(value)!r} has {len(value)} '
                             f'entries but the arch has {num_stages} stages')
        return tuple(value)
    return (value, ) * num_stages


@dataclass(frozen=True)
class CSPArch:
    """One row of the CSP arch table (per-stage values are tuples; a
    scalar given to a per-stage field is broadcast to every stage).

    Attributes:
        block: block name, one of :data:`BLOCKS`, or a block class; or
            one of those per stage (:attr:`stage_blocks` gives the classes).
        stem: stem name, one of :data:`STEMS`; None where the network's
            ``stem_fn`` builds the stem.
        in_channels: input channels of each stage (the first is the
            stem's width).
        out_channels: output channels of each stage.
        num_blocks: blocks per stage.
        expand_ratio: expand conv width per downsampled channel.
        bottle_ratio: the blocks' expansion.
        has_downsampler: whether a stage starts with a stride-2 conv.
        down_growth: whether that conv grows to ``out_channels``.
        block_args: extra block arguments (one dict, or one per stage).
    """
    block: Union[str, type, Tuple[Union[str, type], ...]]
    stem: Optional[str]
    in_channels: Tuple[int, ...]
    out_channels: Tuple[int, ...]
    num_blocks: Tuple[int, ...]
    expand_ratio: Union[float, Tuple[float, ...]] = 0.5
    bottle_ratio: Union[float, Tuple[float, ...]] = 2
    has_downsampler: Union[bool, Tuple[bool, ...]] = True
    down_growth: Union[bool, Tuple[bool, ...]] = False
    block_args: Union[Mapping, Tuple[Mapping, ...]] = field(
        default_factory=dict)

    def __post_init__(self):
        if self.stem is not None and not isinstance(self.stem, str):
            raise TypeError(f'arch stem={self.stem!r} must be a name; '
                            f'choose from {list(STEMS)}')
        if self.stem is not None and self.stem not in STEMS:
            raise KeyError(f'arch stem={self.stem!r}; choose from '
                           f'{list(STEMS)}')
        if not _is_seq(self.in_channels) or not self.in_channels:
            raise ValueError(f'arch in_channels={self.in_channels!r} must be '
                             f'a non-empty tuple of ints, one per stage')
        num_stages = len(self.in_channels)
        for name in ('in_channels', 'out_channels', 'num_blocks'):
            value = getattr(self, name)
            if not _is_seq(value) or any(
                    isinstance(v, bool) or not isinstance(v, int) or v < 1
                    for v in value):
                raise ValueError(f'arch {name}={value!r} must be a tuple of '
                                 f'positive ints')
        blocks = _per_stage(self.block, 'block', num_stages)
        for block in blocks:
            if isinstance(block, str) and block not in BLOCKS:
                raise KeyError(f'arch block={block!r}; choose from '
                               f'{sorted(BLOCKS)}')
            if not isinstance(block, str) and not callable(block):
                raise TypeError(f'arch block={block!r} must be a name in '
                                f'{sorted(BLOCKS)} or a block class')
        if _is_seq(self.block):
            object.__setattr__(self, 'block', blocks)
        for name in ('in_channels', 'out_channels', 'num_blocks',
                     'expand_ratio', 'bottle_ratio', 'has_downsampler',
                     'down_growth', 'block_args'):
            object.__setattr__(self, name, _per_stage(
                getattr(self, name), name, num_stages))
        for name in ('expand_ratio', 'bottle_ratio'):
            for v in getattr(self, name):
                if isinstance(v, bool) or not isinstance(v, (int, float)) \
                        or not 0 < v < float('inf'):
                    raise ValueError(f'arch {name}={getattr(self, name)!r} '
                                     f'must hold positive numbers')
        for name in ('has_downsampler', 'down_growth'):
            if not all(isinstance(v, bool) for v in getattr(self, name)):
                raise TypeError(f'arch {name}={getattr(self, name)!r} must '
                                f'hold True or False')
        for i in range(1, num_stages):
            if self.in_channels[i] != self.out_channels[i - 1]:
                raise ValueError(
                    f'arch in_channels[{i}]={self.in_channels[i]} differs '
                    f'from out_channels[{i - 1}]={self.out_channels[i - 1]}')
        for i in range(num_stages):
            if not isinstance(self.block_args[i], Mapping):
                raise TypeError(f'arch block_args={self.block_args!r} must be '
                                f'a dict or one dict per stage')
            down = (self.out_channels[i] if self.down_growth[i]
                    else self.in_channels[i])
            exp = int(down * self.expand_ratio[i])
            if exp < 2 or exp % 2:
                raise ValueError(
                    f'arch expand_ratio={self.expand_ratio[i]!r} gives '
                    f'{exp} channels before the split in stage {i}; they '
                    f'must be even and at least 2')

    @classmethod
    def field_names(cls) -> List[str]:
        """The field names, in order (the keys an arch dict may hold)."""
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, arch: Mapping, base: Optional['CSPArch'] = None,
                  custom_stem: bool = False) -> 'CSPArch':
        """A row from a dict of its fields (``block_fn``, one block class
        or one per stage, is accepted for ``block``); with ``base``, the
        dict only overrides fields of that row. ``custom_stem``: a
        ``stem_fn`` builds the stem, so ``stem`` may be left out.
        """
        values, names = dict(arch), cls.field_names()
        if 'block_fn' in values:
            block = values.pop('block_fn')
            known = {block_cls: name for name, block_cls in BLOCKS.items()}
            values['block'] = (tuple(known.get(b, b) for b in block)
                               if _is_seq(block) else known.get(block, block))
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise KeyError(f'arch={dict(arch)!r} has unknown keys {unknown}; '
                           f'valid keys are {names}')
        if base is not None:
            return replace(base, **values)
        if custom_stem:
            values.setdefault('stem', None)
        missing = [name for name in names[:5] if name not in values]
        if missing:
            raise KeyError(f'arch={dict(arch)!r} lacks the keys {missing}; '
                           f'give every one of {names[:5]}')
        return cls(**values)

    @property
    def num_stages(self) -> int:
        """How many stages the row defines."""
        return len(self.in_channels)

    @property
    def stage_blocks(self) -> Tuple[Any, ...]:
        """The block class of each stage."""
        blocks = _per_stage(self.block, 'block', self.num_stages)
        return tuple(BLOCKS.get(b, b) if isinstance(b, str) else b
                     for b in blocks)
