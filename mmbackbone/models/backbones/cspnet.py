"""Cross Stage Partial networks: CSPDarkNet, CSPResNet, CSPResNeXt.

CSPNet (Wang et al., 2019, https://arxiv.org/abs/1911.11929) splits the
features of each stage in two halves: one half runs through the stage's
blocks, the other crosses the stage untouched, and a 1x1 conv fuses both.

One configurable implementation (:class:`CSPNet`) is driven by an arch
table of frozen dataclass rows (:data:`CSP_ARCHS`); the registered classes
only pick a row from ``depth`` and change defaults. Constructor arguments
and state-dict keys follow mmpretrain 1.2 (``atfer_blocks_conv`` typo
included), so its checkpoints load with ``strict=True``; timm's
``cspdarknet53`` / ``cspresnet50`` / ``cspresnext50`` checkpoints are
converted on load.
"""
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from mmbackbone.checkpoint.convert import register_converter
from mmbackbone.registry import MODELS
from ..layers import (act_layer, check_norm_cfg, conv_layer, conv_module,
                      drop_path_module, norm_layer, run_checkpointed)
from .base_backbone import BaseBackbone

#: Drop-path rates at or below this build no DropPath (as mmpretrain).
_EPS = 1e-5


def _drop_path(rate: float) -> nn.Module:
    return drop_path_module(rate) if rate > _EPS else nn.Identity()


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
        self.drop_path = _drop_path(drop_path_rate)
        self.with_cp = with_cp

    def _forward(self, x: Tensor) -> Tensor:
        out = self.drop_path(self.conv2(self.conv1(x)))
        return out + x if self.add_identity else out

    def forward(self, x: Tensor) -> Tensor:
        return run_checkpointed(self._forward, x, with_cp=self.with_cp)


class ResNetBottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3, 1x1) with an identity shortcut.

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
        conv_cfg, norm_cfg, act_cfg (dict): layer configs.
        drop_path_rate (float): stochastic depth of the residual branch.
        with_cp (bool): gradient checkpointing of the block.
    """

    expand_act = False
    down_groups = 1

    def __init__(self, in_channels: int, out_channels: int,
                 expansion: int = 4, groups: int = 1, base_channels: int = 64,
                 width_per_group: int = 4, conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN', eps=1e-5),
                 act_cfg: dict = dict(type='LeakyReLU', inplace=True),
                 drop_path_rate: float = 0., with_cp: bool = False):
        super().__init__()
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
        self.in_channels, self.out_channels = in_channels, out_channels
        self.mid_channels, self.groups = mid, groups
        self.with_cp = with_cp
        self.conv1 = conv_layer(conv_cfg, in_channels, mid, 1, bias=False)
        self.norm1_name, norm1 = norm_layer(norm_cfg, mid, 1)
        self.add_module(self.norm1_name, norm1)
        self.conv2 = conv_layer(conv_cfg, mid, mid, 3, padding=1,
                                groups=groups, bias=False)
        self.norm2_name, norm2 = norm_layer(norm_cfg, mid, 2)
        self.add_module(self.norm2_name, norm2)
        self.conv3 = conv_layer(conv_cfg, mid, out_channels, 1, bias=False)
        self.norm3_name, norm3 = norm_layer(norm_cfg, out_channels, 3)
        self.add_module(self.norm3_name, norm3)
        self.relu = act_layer(act_cfg)
        self.drop_path = _drop_path(drop_path_rate)

    def _residual(self, x: Tensor) -> Tensor:
        out = self.relu(getattr(self, self.norm1_name)(self.conv1(x)))
        out = self.relu(getattr(self, self.norm2_name)(self.conv2(out)))
        out = getattr(self, self.norm3_name)(self.conv3(out))
        out = self.drop_path(out)
        out += x  # in place: one feature-map allocation less
        return out

    def forward(self, x: Tensor) -> Tensor:
        out = run_checkpointed(self._residual, x, with_cp=self.with_cp)
        return self.relu(out)


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
#: Stem names usable in an arch row: a stride-1 3x3 conv (darknet), or a
#: stride-2 7x7 conv and a stride-2 max pool (resnet).
STEMS = ('darknet', 'resnet')


# ------------------------------------------------------------------ stage
class CSPStage(nn.Module):
    """One cross-stage-partial stage.

    ``downsample_conv`` (3x3 stride 2, or identity) -> ``expand_conv``
    (1x1) -> split in two halves; the second half runs through ``blocks``
    and ``atfer_blocks_conv`` (1x1), is concatenated after the first half
    and fused by ``final_conv`` (1x1).

    Args:
        block_fn (type): block class (see :data:`BLOCKS`).
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
                groups=block_fn.down_groups, conv_cfg=conv_cfg,
                norm_cfg=norm_cfg, act_cfg=act_cfg)
        else:
            self.downsample_conv = nn.Identity()
        exp_channels = int(down_channels * expand_ratio)
        self.expand_conv = conv_module(
            down_channels, exp_channels, 1, conv_cfg=conv_cfg,
            norm_cfg=norm_cfg,
            act_cfg=act_cfg if block_fn.expand_act else None)
        self.split = block_channels = exp_channels // 2
        rates = list(block_dpr) or [0.] * num_blocks
        self.blocks = nn.Sequential(*[
            block_fn(in_channels=block_channels, out_channels=block_channels,
                     expansion=bottle_ratio, drop_path_rate=rates[i],
                     conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg,
                     with_cp=with_cp, **dict(block_args or {}))
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


# ------------------------------------------------------------- arch table
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
        block: block name, one of :data:`BLOCKS`.
        stem: stem name, one of :data:`STEMS`.
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
    block: str
    stem: str
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
        for name, known in (('block', BLOCKS), ('stem', STEMS)):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f'arch {name}={getattr(self, name)!r} must '
                                f'be a name; choose from {sorted(known)}')
        if self.block not in BLOCKS:
            raise KeyError(f'arch block={self.block!r}; choose from '
                           f'{sorted(BLOCKS)}')
        if self.stem not in STEMS:
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

    @property
    def num_stages(self) -> int:
        """How many stages the row defines."""
        return len(self.in_channels)


#: The arch table: mmpretrain 1.2's three CSP networks.
CSP_ARCHS: Dict[str, CSPArch] = {
    'cspdarknet53': CSPArch(
        block='darknet', stem='darknet',
        in_channels=(32, 64, 128, 256, 512),
        out_channels=(64, 128, 256, 512, 1024),
        num_blocks=(1, 2, 8, 8, 4),
        expand_ratio=(2, 1, 1, 1, 1), bottle_ratio=(2, 1, 1, 1, 1),
        has_downsampler=True, down_growth=True),
    'cspresnet50': CSPArch(
        block='resnet', stem='resnet',
        in_channels=(64, 128, 256, 512),
        out_channels=(128, 256, 512, 1024),
        num_blocks=(3, 3, 5, 2), expand_ratio=4, bottle_ratio=2,
        has_downsampler=(False, True, True, True), down_growth=False),
    'cspresnext50': CSPArch(
        block='resnext', stem='resnet',
        in_channels=(64, 256, 512, 1024),
        out_channels=(256, 512, 1024, 2048),
        num_blocks=(3, 3, 5, 2), expand_ratio=(4, 2, 2, 2), bottle_ratio=4,
        has_downsampler=(False, True, True, True), down_growth=False,
        # mmpretrain halves the ResNeXt base width in CSPResNeXt
        block_args=dict(base_channels=32)),
}

_FIELDS = tuple(f.name for f in dataclasses.fields(CSPArch))


def make_arch(arch: Union[str, Mapping, CSPArch],
              base: Optional[CSPArch] = None) -> CSPArch:
    """Turn ``arch`` into a :class:`CSPArch` row.

    Args:
        arch: a name in :data:`CSP_ARCHS`, a row, or a dict of row fields
            (``block_fn`` is accepted for ``block``). With ``base``, the
            dict only overrides fields of that row.
        base: the row a partial dict starts from.

    Example:
        >>> make_arch('cspresnet50').num_blocks
        (3, 3, 5, 2)
        >>> make_arch(dict(num_blocks=(1, 1, 1, 1)),
        ...           base=CSP_ARCHS['cspresnet50']).num_blocks
        (1, 1, 1, 1)
    """
    if isinstance(arch, CSPArch):
        return arch
    if isinstance(arch, str):
        if arch not in CSP_ARCHS:
            raise KeyError(f'arch={arch!r}; choose from {sorted(CSP_ARCHS)}')
        return CSP_ARCHS[arch]
    if not isinstance(arch, Mapping):
        raise TypeError(f'arch={arch!r} must be an arch name '
                        f'{sorted(CSP_ARCHS)} or a dict of the fields '
                        f'{list(_FIELDS)}')
    values = dict(arch)
    if 'block_fn' in values:
        block = values.pop('block_fn')
        names = {cls: name for name, cls in BLOCKS.items()}
        values['block'] = names.get(block, block)
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise KeyError(f'arch={dict(arch)!r} has unknown keys {unknown}; '
                       f'valid keys are {list(_FIELDS)}')
    if base is not None:
        return dataclasses.replace(base, **values)
    missing = [name for name in _FIELDS[:5] if name not in values]
    if missing:
        raise KeyError(f'arch={dict(arch)!r} lacks the keys {missing}; give '
                       f'every one of {list(_FIELDS[:5])}')
    return CSPArch(**values)


# ------------------------------------------------------------------ model
class CSPNet(BaseBackbone):
    """The configurable CSP network the registered classes are built on.

    Args:
        arch (str | dict | CSPArch): a name in :data:`CSP_ARCHS`
            (``'cspdarknet53'``, ``'cspresnet50'``, ``'cspresnext50'``) or
            a dict of :class:`CSPArch` fields.
        in_channels (int): input image channels. Default: 3.
        out_indices (int | Sequence[int]): stages to output; negative
            indices count from the last. Default: -1.
        frozen_stages (int | str): -1 nothing, 0 the stem, k the stem and
            stages 1..k (``self.stages[:k]``), ``'all'`` everything.
            mmpretrain's CSPNet freezes one stage more for the same k.
        drop_path_rate (float): stochastic depth, linear over all blocks.
        deep_stem (bool): for the resnet stem, three 3x3 convs (the first
            of stride 2) and no max pool, as mmpretrain.
        conv_cfg (dict, optional): conv layer config.
        norm_cfg (dict): norm config. Default: ``dict(type='BN', eps=1e-5)``.
        act_cfg (dict): activation config. Default: LeakyReLU (slope 0.01).
        norm_eval (bool): keep norm layers in eval mode. Default: False.
        with_cp (bool): gradient checkpointing per block. Default: False.
        init_cfg (dict | list, optional): mmengine init config.
        pretrained (bool | str): ``True`` loads the weights index's default
            for this arch, or a name (``cspresnet50.ra_in1k``).

    Example:
        >>> import torch
        >>> from mmbackbone.models.backbones.cspnet import CSPNet
        >>> model = CSPNet('cspresnet50', out_indices=(0, 3)).eval()
        >>> for out in model(torch.rand(1, 3, 64, 64)):
        ...     print(tuple(out.shape))
        (1, 128, 16, 16)
        (1, 1024, 2, 2)
    """

    #: ``{depth: arch row}`` of a depth-indexed subclass.
    arch_settings: Dict[int, CSPArch] = {}
    zoo_configs = {name: dict(arch=name) for name in CSP_ARCHS}

    def __init__(self,
                 arch: Union[str, Mapping, CSPArch],
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = -1,
                 frozen_stages: Union[int, str] = -1,
                 drop_path_rate: float = 0.,
                 deep_stem: bool = False,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN', eps=1e-5),
                 act_cfg: dict = dict(type='LeakyReLU', inplace=True),
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 init_cfg: Union[dict, List[dict], None] = dict(
                     type='Kaiming', layer='Conv2d'),
                 pretrained: Union[bool, str] = False):
        super().__init__(init_cfg)
        self.arch = spec = make_arch(arch)
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) \
                or in_channels < 1:
            raise ValueError(f'in_channels={in_channels!r} must be a '
                             f'positive int')
        if not isinstance(drop_path_rate, (int, float)) or \
                not 0 <= drop_path_rate < 1:
            raise ValueError(f'drop_path_rate={drop_path_rate!r} must be in '
                             f'[0, 1)')
        if deep_stem and spec.stem != 'resnet':
            raise ValueError(f'deep_stem=True needs the resnet stem; this '
                             f'arch has stem={spec.stem!r}')
        # validate the layer configs once, with errors naming the argument
        check_norm_cfg(norm_cfg)  # e.g. LN cannot normalize feature maps
        act_layer(act_cfg)
        if conv_cfg is not None:
            conv_layer(conv_cfg, 1, 1, 1)
        self.in_channels, self.deep_stem = in_channels, deep_stem
        self.conv_cfg, self.norm_cfg, self.act_cfg = conv_cfg, norm_cfg, \
            act_cfg
        self.with_cp, self.drop_path_rate = with_cp, drop_path_rate

        stride = {'darknet': 1, 'resnet': 2 if deep_stem else 4}[spec.stem]
        stage_strides = []
        for down in spec.has_downsampler:
            stride *= 2 if down else 1
            stage_strides.append(stride)
        self._setup_outputs(spec.out_channels, stage_strides, out_indices,
                            frozen_stages, norm_eval)

        self.stem = self._make_stem_layer(in_channels)
        total = sum(spec.num_blocks)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages = []
        for i in range(spec.num_stages):
            n = spec.num_blocks[i]
            try:
                stages.append(CSPStage(
                    BLOCKS[spec.block], spec.in_channels[i],
                    spec.out_channels[i],
                    has_downsampler=spec.has_downsampler[i],
                    down_growth=spec.down_growth[i],
                    expand_ratio=spec.expand_ratio[i],
                    bottle_ratio=spec.bottle_ratio[i], num_blocks=n,
                    block_dpr=rates[:n], block_args=spec.block_args[i],
                    conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg,
                    with_cp=with_cp))
            except (ValueError, TypeError) as err:  # a custom arch row
                raise type(err)(
                    f'arch stage {i} (block={spec.block!r}, in_channels='
                    f'{spec.in_channels[i]}, out_channels='
                    f'{spec.out_channels[i]}, block_args='
                    f'{spec.block_args[i]!r}) cannot be built: {err}'
                ) from err
            rates = rates[n:]
        self.stages = nn.Sequential(*stages)
        self._freeze_stages()
        self._setup_pretrained(pretrained, [
            name for name, row in CSP_ARCHS.items() if row == spec
        ] or ['a custom arch'])

    def _make_stem_layer(self, in_channels: int) -> nn.Module:
        """The stem: its width is the first stage's ``in_channels``."""
        width = self.arch.in_channels[0]
        kwargs = dict(conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
                      act_cfg=self.act_cfg)
        if self.arch.stem == 'darknet':
            return conv_module(in_channels, width, 3, padding=1, **kwargs)
        if self.deep_stem:
            half = width // 2
            return nn.Sequential(
                conv_module(in_channels, half, 3, stride=2, padding=1,
                           **kwargs),
                conv_module(half, half, 3, padding=1, **kwargs),
                conv_module(half, width, 3, padding=1, **kwargs))
        return nn.Sequential(
            conv_module(in_channels, width, 7, stride=2, padding=3, **kwargs),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1))

    @classmethod
    def resolve_depth(cls, depth, arch) -> Tuple[Optional[int], CSPArch]:
        """Pick the row of a depth-indexed subclass.

        ``arch`` is an alias of ``depth`` (``50``, ``'50'`` or the arch
        name such as ``'cspresnet50'``); a dict ``arch`` overrides fields
        of the default row. With neither, the only depth is used.

        Returns:
            tuple: the depth (None for a dict arch) and the row.
        """
        name = cls.__name__
        if isinstance(arch, (Mapping, CSPArch)):
            if depth is None:
                depth = next(iter(cls.arch_settings))
            base = cls.resolve_depth(depth, None)[1]
            return None, make_arch(arch, base=base)
        if depth is not None and arch is not None:
            if cls.resolve_depth(depth, None) != cls.resolve_depth(None,
                                                                   arch):
                raise ValueError(f'depth={depth!r} and arch={arch!r} '
                                 f'disagree; give one of them')
            arch = None
        value = depth if depth is not None else arch
        arg = 'depth' if depth is not None or arch is None else 'arch'
        if value is None:
            value = next(iter(cls.arch_settings))
        names = {arch_name: d for d, row in cls.arch_settings.items()
                 for arch_name, known in CSP_ARCHS.items() if known is row}
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise TypeError(f'{arg}={value!r} must be a {name} depth (int) '
                            f'or arch name; choose from '
                            f'{sorted(cls.arch_settings)} or {sorted(names)}')
        if isinstance(value, str):
            lowered = value.lower()
            value = names.get(lowered, int(lowered) if lowered.isdigit()
                              else value)
        if isinstance(value, bool) or value not in cls.arch_settings:
            raise KeyError(f'{arg}={value!r} is not a {name} depth; choose '
                           f'from {sorted(cls.arch_settings)} (or arch names '
                           f'{sorted(names)})')
        return value, cls.arch_settings[value]

    def stage_parts(self) -> List[List[nn.Module]]:
        return [[self.stem]] + [[stage] for stage in self.stages]

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        x = self.stem(x)
        outs = []
        for i in range(self.last_needed_stage + 1):
            x = self.stages[i](x)
            outs.append(x)
        return self._select_outputs(outs)


@MODELS.register_module()
class CSPDarkNet(CSPNet):
    """CSP-DarkNet-53, the YOLOv4 backbone (mmpretrain-compatible).

    Args:
        depth (int | str): 53 (the default; ``'cspdarknet53'`` works).
        in_channels (int): input image channels. Default: 3.
        out_indices (int | Sequence[int]): stages to output (0 to 4).
            Default: ``(4, )``.
        frozen_stages (int | str): -1 nothing, 0 the stem, k the stem and
            stages 1..k, ``'all'`` everything. Default: -1.
        conv_cfg (dict, optional): conv layer config.
        norm_cfg (dict): norm config. Default: ``dict(type='BN', eps=1e-5)``.
        act_cfg (dict): activation config. Default: LeakyReLU, slope 0.01.
        norm_eval (bool): keep norm layers in eval mode. Default: False.
        init_cfg (dict | list, optional): mmengine init config; the default
            is mmpretrain's Kaiming-uniform for leaky ReLU.
        drop_path_rate (float): stochastic depth. Default: 0.
        with_cp (bool): gradient checkpointing per block. Default: False.
        arch (int | str | dict, optional): alias of ``depth``, or a dict
            overriding fields of the CSPDarkNet-53 row.
        pretrained (bool | str): ``True`` loads the weights index's default
            (``mmbackbone.zoo.list_weights()`` lists them), or a name.

    Example:
        >>> import torch
        >>> from mmbackbone.models import CSPDarkNet
        >>> model = CSPDarkNet(depth=53, out_indices=(0, 1, 2, 3, 4)).eval()
        >>> for out in model(torch.rand(1, 3, 64, 64)):
        ...     print(tuple(out.shape))
        (1, 64, 32, 32)
        (1, 128, 16, 16)
        (1, 256, 8, 8)
        (1, 512, 4, 4)
        (1, 1024, 2, 2)
    """

    arch_settings = {53: CSP_ARCHS['cspdarknet53']}
    zoo_configs = {'cspdarknet53': dict(depth=53)}

    def __init__(self,
                 depth: Union[int, str, None] = None,
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = (4, ),
                 frozen_stages: Union[int, str] = -1,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN', eps=1e-5),
                 act_cfg: dict = dict(type='LeakyReLU', inplace=True),
                 norm_eval: bool = False,
                 init_cfg: Union[dict, List[dict], None] = dict(
                     type='Kaiming', layer='Conv2d', a=math.sqrt(5),
                     distribution='uniform', mode='fan_in',
                     nonlinearity='leaky_relu'),
                 drop_path_rate: float = 0.,
                 with_cp: bool = False,
                 arch: Union[int, str, dict, None] = None,
                 pretrained: Union[bool, str] = False):
        self_depth, row = self.resolve_depth(depth, arch)
        super().__init__(
            row, in_channels=in_channels, out_indices=out_indices,
            frozen_stages=frozen_stages, drop_path_rate=drop_path_rate,
            conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg,
            norm_eval=norm_eval, with_cp=with_cp, init_cfg=init_cfg,
            pretrained=pretrained)
        self.depth = self_depth


@MODELS.register_module()
class CSPResNet(CSPNet):
    """CSP-ResNet-50 (mmpretrain-compatible).

    Args:
        depth (int | str): 50 (the default; ``'cspresnet50'`` works).
        in_channels (int): input image channels. Default: 3.
        out_indices (int | Sequence[int]): stages to output (0 to 3).
            Default: ``(3, )``.
        frozen_stages (int | str): -1 nothing, 0 the stem, k the stem and
            stages 1..k, ``'all'`` everything. Default: -1.
        deep_stem (bool): three 3x3 convs (stride 2) instead of the 7x7
            conv and max pool. Default: False.
        conv_cfg (dict, optional): conv layer config.
        norm_cfg (dict): norm config. Default: ``dict(type='BN', eps=1e-5)``.
        act_cfg (dict): activation config. Default: LeakyReLU, slope 0.01.
        norm_eval (bool): keep norm layers in eval mode. Default: False.
        init_cfg (dict | list, optional): mmengine init config.
        drop_path_rate (float): stochastic depth. Default: 0.
        with_cp (bool): gradient checkpointing per block. Default: False.
        arch (int | str | dict, optional): alias of ``depth``, or a dict
            overriding fields of the default row.
        pretrained (bool | str): ``True`` loads the weights index's default
            (``mmbackbone.zoo.list_weights()`` lists them), or a name.

    Example:
        >>> import torch
        >>> from mmbackbone.models import CSPResNet
        >>> model = CSPResNet(depth=50, out_indices=(0, 1, 2, 3)).eval()
        >>> for out in model(torch.rand(1, 3, 64, 64)):
        ...     print(tuple(out.shape))
        (1, 128, 16, 16)
        (1, 256, 8, 8)
        (1, 512, 4, 4)
        (1, 1024, 2, 2)
    """

    arch_settings = {50: CSP_ARCHS['cspresnet50']}
    zoo_configs = {'cspresnet50': dict(depth=50)}

    def __init__(self,
                 depth: Union[int, str, None] = None,
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = (3, ),
                 frozen_stages: Union[int, str] = -1,
                 deep_stem: bool = False,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN', eps=1e-5),
                 act_cfg: dict = dict(type='LeakyReLU', inplace=True),
                 norm_eval: bool = False,
                 init_cfg: Union[dict, List[dict], None] = dict(
                     type='Kaiming', layer='Conv2d'),
                 drop_path_rate: float = 0.,
                 with_cp: bool = False,
                 arch: Union[int, str, dict, None] = None,
                 pretrained: Union[bool, str] = False):
        self_depth, row = self.resolve_depth(depth, arch)
        super().__init__(
            row, in_channels=in_channels, out_indices=out_indices,
            frozen_stages=frozen_stages, drop_path_rate=drop_path_rate,
            deep_stem=deep_stem, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
            act_cfg=act_cfg, norm_eval=norm_eval, with_cp=with_cp,
            init_cfg=init_cfg, pretrained=pretrained)
        self.depth = self_depth


@MODELS.register_module()
class CSPResNeXt(CSPResNet):
    """CSP-ResNeXt-50 (32 groups; mmpretrain-compatible). Same arguments
    as :class:`CSPResNet`.

    Example:
        >>> import torch
        >>> from mmbackbone.models import CSPResNeXt
        >>> model = CSPResNeXt(arch=50, out_indices=(1, 2, 3)).eval()
        >>> model.out_channels
        (512, 1024, 2048)
        >>> for out in model(torch.rand(1, 3, 64, 64)):
        ...     print(tuple(out.shape))
        (1, 512, 8, 8)
        (1, 1024, 4, 4)
        (1, 2048, 2, 2)
    """

    arch_settings = {50: CSP_ARCHS['cspresnext50']}
    zoo_configs = {'cspresnext50': dict(depth=50)}


# ------------------------------------------------------------ conversion
_TIMM_STAGE_PARTS = {'conv_down': 'downsample_conv',
                     'conv_exp': 'expand_conv',
                     'conv_transition_b': 'atfer_blocks_conv',
                     'conv_transition': 'final_conv'}


@register_converter('timm', 'CSPNet')
def cspnet_from_timm(state_dict, model):
    """timm ``CspNet`` (cspdarknet53, cspresnet50, cspresnext50) to ours.

    timm's ``ConvNormAct`` keeps ``conv``/``bn`` like mmcv's ConvModule, so
    only the module names move: ``stem.convK`` -> ``stem`` (darknet) or
    ``stem.{K-1}``; ``conv_down``, ``conv_exp``, ``conv_transition_b`` and
    ``conv_transition`` -> ``downsample_conv``, ``expand_conv``,
    ``atfer_blocks_conv`` and ``final_conv``; a ResNet block's
    ``convK.conv``/``convK.bn`` -> ``convK``/``bnK``. The head is dropped.
    The flattened keys of timm's ``features_only`` models (``stem_conv1``,
    ``stages_0``) are accepted too.
    """
    if not any('.conv_exp.' in k or '.conv_transition.' in k
               for k in state_dict):
        raise KeyError('not a timm CspNet state dict')
    single_stem = not isinstance(model.stem, nn.Sequential)
    converted = {}
    for key, value in state_dict.items():
        parts = key.split('.')
        if parts[0].startswith(('stem_', 'stages_')):
            # timm's features_only wrapper flattens the first level
            parts[0:1] = parts[0].split('_', 1)
        if parts[0] == 'head':
            continue
        if parts[0] == 'stem' and parts[1].startswith('conv'):
            index = int(parts[1][4:]) - 1
            if single_stem and index == 0:
                parts = ['stem'] + parts[2:]
            else:
                parts[1] = str(index)
        elif parts[0] == 'stages':
            stage = model.stages[int(parts[1])]
            if parts[2] in _TIMM_STAGE_PARTS:
                parts[2] = _TIMM_STAGE_PARTS[parts[2]]
            elif parts[2] == 'blocks':
                block = stage.blocks[int(parts[3])]
                if isinstance(block, ResNetBottleneck) and \
                        parts[4].startswith('conv'):
                    k = parts[4][4:]
                    if parts[5] == 'conv':
                        parts[4:6] = [f'conv{k}']
                    else:
                        parts[4:6] = [getattr(block, f'norm{k}_name')]
        converted['.'.join(parts)] = value
    return converted
