"""DLA: Deep Layer Aggregation (Yu et al., CVPR 2018).

mmpretrain has no DLA, so the module layout (and therefore every
state-dict key) follows timm's ``dla*`` models: ``base_layer``, the
plain conv levels ``level0`` and ``level1``, and the aggregation trees
``level2`` .. ``level5`` with their ``tree1`` / ``tree2`` / ``root`` /
``project`` children. timm checkpoints load unchanged once the
classifier ``fc`` is dropped (done by the registered converter), and the
unused ``project`` layers of the original (ucbdrive) checkpoints are
dropped as well.

Stages are the six levels: ``out_indices`` ``0..5`` select ``level0`` ..
``level5`` (strides 1, 2, 4, 8, 16, 32), the same numbering as timm's
``features_only`` indices. Detection / segmentation necks usually take
``out_indices=(2, 3, 4, 5)``. ``frozen_stages=0`` freezes ``base_layer``
and ``frozen_stages=k`` also freezes ``level0`` .. ``level{k-1}``.
"""
import math
from dataclasses import dataclass, fields
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from mmbackbone.checkpoint.convert import register_converter
from mmbackbone.registry import MODELS
from mmbackbone.utils import closest
from ..layers import (ResidualBlock, act_layer, check_layer_cfgs,
                      check_positive_ints, check_rate, conv_layer,
                      drop_path_rates, is_int, norm_layer, run_checkpointed)
from .base_backbone import BaseBackbone, StageInfo

#: Strides of level0 .. level5 (timm asserts output_stride=32 as well).
LEVEL_STRIDES = (1, 2, 4, 8, 16, 32)
BLOCK_TYPES = ('basic', 'bottleneck')


def _is_pos_int(value) -> bool:
    return is_int(value) and value >= 1


def bottleneck_mid_channels(out_channels: int, cardinality: int,
                            base_width: int) -> int:
    """Middle width of a DLA bottleneck (expansion 2, ResNeXt-style)."""
    return int(math.floor(out_channels * base_width / 64) * cardinality) // 2


@dataclass(frozen=True)
class DLAArch:
    """One row of the DLA arch table.

    Attributes:
        levels: six ints: the conv count of ``level0`` and ``level1``,
            then the tree depth of ``level2`` .. ``level5``.
        channels: output channels of ``level0`` .. ``level5``.
        block: ``'basic'`` (two 3x3 convs) or ``'bottleneck'``
            (1x1 - grouped 3x3 - 1x1, expansion 2).
        residual_root: add the first child to each root's output.
        cardinality: groups of the bottleneck 3x3 conv (X variants).
        base_width: width per group of the bottleneck (X variants).
    """
    levels: Tuple[int, ...]
    channels: Tuple[int, ...]
    block: str = 'bottleneck'
    residual_root: bool = False
    cardinality: int = 1
    base_width: int = 64

    def __post_init__(self):
        for name in ('levels', 'channels'):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or \
                    not isinstance(value, Sequence) or len(value) != 6 or \
                    not all(_is_pos_int(v) for v in value):
                raise ValueError(f'arch[{name!r}]={value!r} must be 6 '
                                 f'positive ints (one per level0..level5)')
            object.__setattr__(self, name, tuple(value))
        if self.block not in BLOCK_TYPES:
            raise ValueError(f'arch[\'block\']={self.block!r}; choose from '
                             f'{list(BLOCK_TYPES)}')
        if not isinstance(self.residual_root, bool):
            raise TypeError(f'arch[\'residual_root\']={self.residual_root!r} '
                            f'must be True or False')
        for name in ('cardinality', 'base_width'):
            if not _is_pos_int(getattr(self, name)):
                raise ValueError(f'arch[{name!r}]={getattr(self, name)!r} '
                                 f'must be a positive int')
        if self.block == 'basic' and (self.cardinality, self.base_width) \
                != (1, 64):
            raise ValueError(
                f"arch['cardinality']={self.cardinality}, "
                f"arch['base_width']={self.base_width}: 'basic' blocks have "
                f"no groups; use 1 and 64 or block='bottleneck'")
        if self.block == 'bottleneck':
            for c in self.channels[2:]:
                mid = bottleneck_mid_channels(c, self.cardinality,
                                              self.base_width)
                if mid < 1 or mid % self.cardinality:
                    raise ValueError(
                        f'arch: channels={self.channels}, cardinality='
                        f'{self.cardinality}, base_width={self.base_width} '
                        f'give {mid} bottleneck middle channels for {c} '
                        f'output channels; it must be a positive multiple '
                        f'of cardinality')


DLA_ARCHS: Dict[str, DLAArch] = {
    'dla34': DLAArch((1, 1, 1, 2, 2, 1), (16, 32, 64, 128, 256, 512),
                     block='basic'),
    'dla46_c': DLAArch((1, 1, 1, 2, 2, 1), (16, 32, 64, 64, 128, 256)),
    'dla46x_c': DLAArch((1, 1, 1, 2, 2, 1), (16, 32, 64, 64, 128, 256),
                        cardinality=32, base_width=4),
    'dla60x_c': DLAArch((1, 1, 1, 2, 3, 1), (16, 32, 64, 64, 128, 256),
                        cardinality=32, base_width=4),
    'dla60': DLAArch((1, 1, 1, 2, 3, 1), (16, 32, 128, 256, 512, 1024)),
    'dla60x': DLAArch((1, 1, 1, 2, 3, 1), (16, 32, 128, 256, 512, 1024),
                      cardinality=32, base_width=4),
    'dla102': DLAArch((1, 1, 1, 3, 4, 1), (16, 32, 128, 256, 512, 1024),
                      residual_root=True),
    'dla102x': DLAArch((1, 1, 1, 3, 4, 1), (16, 32, 128, 256, 512, 1024),
                       residual_root=True, cardinality=32, base_width=4),
    'dla102x2': DLAArch((1, 1, 1, 3, 4, 1), (16, 32, 128, 256, 512, 1024),
                        residual_root=True, cardinality=64, base_width=4),
    'dla169': DLAArch((1, 1, 2, 3, 5, 1), (16, 32, 128, 256, 512, 1024),
                      residual_root=True),
}


def arch_key(arch: str) -> str:
    """The table name an arch name spells (``'DLA-34'`` is ``dla34``)."""
    return arch.lower().replace('-', '')


def parse_arch(arch: Union[str, dict, DLAArch]) -> DLAArch:
    """Look up an arch name, or validate a dict against :class:`DLAArch`.

    Example:
        >>> parse_arch('dla34').channels
        (16, 32, 64, 128, 256, 512)
        >>> parse_arch(dict(levels=(1, 1, 1, 1, 1, 1),
        ...                 channels=(8, 16, 32, 64, 64, 128))).block
        'bottleneck'
    """
    if isinstance(arch, DLAArch):
        return arch
    if isinstance(arch, str):
        key = arch_key(arch)
        if key not in DLA_ARCHS:
            raise KeyError(f'arch={arch!r}; choose from {sorted(DLA_ARCHS)}.'
                           f'{closest(arch, DLA_ARCHS)}')
        return DLA_ARCHS[key]
    if isinstance(arch, dict):
        names = [f.name for f in fields(DLAArch)]
        unknown = sorted(set(arch) - set(names))
        if unknown:
            raise KeyError(f'arch={arch!r} has unknown keys {unknown}; '
                           f'valid keys are {names}')
        missing = [n for n in ('levels', 'channels') if n not in arch]
        if missing:
            raise KeyError(f'arch={arch!r} lacks the keys {missing}; '
                           f'required keys are levels, channels')
        return DLAArch(**arch)
    raise TypeError(f'arch={arch!r} must be an arch name (one of '
                    f'{sorted(DLA_ARCHS)}) or a dict with the keys '
                    f'{[f.name for f in fields(DLAArch)]}')


class DLABottleneck(ResidualBlock):
    """1x1 - grouped 3x3 - 1x1 convs (expansion 2, the middle width from
    ``cardinality`` and ``base_width``): a
    :class:`~mmbackbone.models.layers.ResidualBlock` whose shortcut the
    tree hands to :meth:`forward`, with timm's names (``bn1`` ... ``bn3``
    whatever the norm). Other arguments are :class:`ResidualBlock`'s.
    """

    layout = 'bottleneck'
    norm_prefix = 'bn'

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 cardinality: int = 1, base_width: int = 64, **kwargs):
        mid = None
        if self.layout == 'bottleneck':
            mid = bottleneck_mid_channels(out_channels, cardinality,
                                          base_width)
        super().__init__(in_channels, out_channels, stride=stride,
                         mid_channels=mid, groups=cardinality, **kwargs)


class DLABasicBlock(DLABottleneck):
    """Two 3x3 convs (``conv1``/``bn1``, ``conv2``/``bn2``); the tree hands
    the shortcut to :meth:`forward`."""

    layout = 'basic'


class DLARoot(nn.Module):
    """Aggregation node: 1x1 conv over the concatenated children."""

    def __init__(self, in_channels: int, out_channels: int, residual: bool,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: Optional[dict] = dict(type='ReLU', inplace=True)):
        super().__init__()
        self.conv = conv_layer(conv_cfg, in_channels, out_channels, 1,
                               bias=False)
        self.bn = norm_layer(norm_cfg, out_channels)[1]
        self.relu = act_layer(act_cfg)
        self.residual = residual

    def forward(self, children: List[Tensor]) -> Tensor:
        out = self.bn(self.conv(torch.cat(children, 1)))
        if self.residual:
            out = out + children[0]
        return self.relu(out)


class DLATree(nn.Module):
    """A hierarchical aggregation tree of depth ``depth``.

    Depth 1 holds two blocks (``tree1``, ``tree2``) and a ``root`` that
    aggregates them with the ``children`` handed down; a deeper tree
    holds two subtrees, the second one aggregating the first one's output.
    With ``level_root`` the (pooled) input joins the aggregation.
    """

    def __init__(self, depth: int, block: type, in_channels: int,
                 out_channels: int, stride: int = 1, level_root: bool = False,
                 root_channels: int = 0, residual_root: bool = False,
                 with_cp: bool = False,
                 drop_path_rates: Optional[Iterator[float]] = None,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: Optional[dict] = dict(type='ReLU', inplace=True),
                 **block_kwargs):
        super().__init__()
        root_channels = root_channels or 2 * out_channels
        if level_root:
            root_channels += in_channels
        self.depth, self.level_root, self.with_cp = depth, level_root, with_cp
        self.downsample = (nn.MaxPool2d(stride, stride=stride) if stride > 1
                           else nn.Identity())
        self.project = nn.Identity()
        layer_cfg = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        if drop_path_rates is None:
            drop_path_rates = iter(lambda: 0.0, None)
        if depth == 1:
            self.tree1 = block(in_channels, out_channels, stride,
                               drop_path_rate=next(drop_path_rates),
                               **layer_cfg, **block_kwargs)
            self.tree2 = block(out_channels, out_channels, 1,
                               drop_path_rate=next(drop_path_rates),
                               **layer_cfg, **block_kwargs)
            if in_channels != out_channels:
                self.project = nn.Sequential(
                    conv_layer(conv_cfg, in_channels, out_channels, 1,
                               bias=False),
                    norm_layer(norm_cfg, out_channels)[1])
            self.root = DLARoot(root_channels, out_channels, residual_root,
                                **layer_cfg)
        else:
            sub = dict(residual_root=residual_root, with_cp=with_cp,
                       drop_path_rates=drop_path_rates, **layer_cfg,
                       **block_kwargs)
            self.tree1 = DLATree(depth - 1, block, in_channels, out_channels,
                                 stride, **sub)
            self.tree2 = DLATree(depth - 1, block, out_channels, out_channels,
                                 root_channels=root_channels + out_channels,
                                 **sub)
            self.root = None

    def _block(self, block: nn.Module, x: Tensor, shortcut: Tensor) -> Tensor:
        return run_checkpointed(block, x, shortcut, with_cp=self.with_cp)

    def forward(self, x: Tensor, children: Sequence[Tensor] = ()) -> Tensor:
        children = list(children)
        bottom = self.downsample(x) if self.level_root or self.depth == 1 \
            else x
        if self.level_root:
            children.append(bottom)
        if self.depth == 1:
            x1 = self._block(self.tree1, x, self.project(bottom))
            x2 = self._block(self.tree2, x1, x1)
            return self.root([x2, x1] + children)
        x1 = self.tree1(x)
        return self.tree2(x1, children + [x1])


@MODELS.register_module()
class DLA(BaseBackbone):
    """Deep Layer Aggregation backbone (timm-compatible keys).

    Stages are the six levels: ``out_indices`` ``i`` selects ``level{i}``
    with stride ``(1, 2, 4, 8, 16, 32)[i]``, as in timm's
    ``features_only`` indices. Use ``(2, 3, 4, 5)`` for an FPN.

    Args:
        arch (str | dict): one of ``dla34``, ``dla46_c``, ``dla46x_c``,
            ``dla60x_c``, ``dla60``, ``dla60x``, ``dla102``, ``dla102x``,
            ``dla102x2``, ``dla169``, or a dict with the fields of
            :class:`DLAArch` (``levels``, ``channels``, and optionally
            ``block``, ``residual_root``, ``cardinality``,
            ``base_width``). Default: ``'dla34'``.
        in_channels (int): input image channels. Default: 3.
        out_indices (Sequence[int] | int): levels to output (0..5);
            negative indices count from the last. Default: ``(5, )``.
        frozen_stages (int | str): -1 nothing, 0 ``base_layer``, k
            ``base_layer`` and ``level0`` .. ``level{k-1}``, ``'all'``
            everything. Default: -1.
        conv_cfg (dict, optional): conv layer config.
        norm_cfg (dict): norm layer config. Default: ``dict(type='BN')``.
        act_cfg (dict): activation config.
            Default: ``dict(type='ReLU', inplace=True)``.
        norm_eval (bool): keep norm layers in eval mode. Default: False.
        with_cp (bool): gradient checkpointing per tree block.
            Default: False.
        drop_path_rate (float): stochastic depth on the blocks' residual
            branch, linear over the blocks of level2..level5. Default: 0.
        init_cfg (dict | list, optional): mmengine init config, e.g.
            ``dict(type='Pretrained', checkpoint='dla34.pth')``.
        pretrained (bool | str): ``True`` loads the weights index's default
            for this arch, a name that entry (``mmbackbone weights dla*``).

    Example:
        >>> import torch
        >>> from mmbackbone.models import DLA
        >>> model = DLA(arch='dla34', out_indices=(2, 3, 4, 5)).eval()
        >>> model.out_channels, model.out_strides
        ((64, 128, 256, 512), (4, 8, 16, 32))
        >>> [out.shape[-1] for out in model(torch.rand(1, 3, 64, 64))]
        [16, 8, 4, 2]
    """

    arch_settings = DLA_ARCHS
    zoo_configs = {name: dict(arch=name) for name in DLA_ARCHS}

    def __init__(self,
                 arch: Union[str, dict] = 'dla34',
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = (5, ),
                 frozen_stages: Union[int, str] = -1,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN', requires_grad=True),
                 act_cfg: Optional[dict] = dict(type='ReLU', inplace=True),
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 drop_path_rate: float = 0.0,
                 init_cfg: Union[dict, List[dict], None] = [
                     dict(type='Kaiming', layer='Conv2d', mode='fan_out',
                          nonlinearity='relu', distribution='normal'),
                     dict(type='Constant', val=1,
                          layer=['_BatchNorm', 'GroupNorm'])
                 ],
                 pretrained: Union[bool, str] = False):
        super().__init__(init_cfg)
        self.arch = parse_arch(arch)
        check_layer_cfgs(norm_cfg=norm_cfg, act_cfg=act_cfg,
                         conv_cfg=conv_cfg)
        check_positive_ints(in_channels=in_channels)
        if not isinstance(with_cp, bool):
            raise TypeError(f'with_cp={with_cp!r} must be True or False')
        check_rate('drop_path_rate', drop_path_rate)
        levels, channels = self.arch.levels, self.arch.channels
        self._setup_stages(
            [StageInfo(c, stride, (f'level{i}', )) for i, (c, stride) in
             enumerate(zip(channels, LEVEL_STRIDES))],
            stem=('base_layer', ), out_indices=out_indices,
            frozen_stages=frozen_stages, norm_eval=norm_eval)
        self.in_channels, self.with_cp = in_channels, with_cp
        self.conv_cfg, self.norm_cfg, self.act_cfg = conv_cfg, norm_cfg, \
            act_cfg
        layer_cfg = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                         act_cfg=act_cfg)

        self.base_layer = nn.Sequential(
            conv_layer(conv_cfg, in_channels, channels[0], 7, padding=3,
                       bias=False),
            norm_layer(norm_cfg, channels[0])[1],
            act_layer(act_cfg))
        self.level0 = self._conv_level(channels[0], channels[0], levels[0],
                                       1)
        self.level1 = self._conv_level(channels[0], channels[1], levels[1],
                                       2)
        block = DLABasicBlock if self.arch.block == 'basic' \
            else DLABottleneck
        # one rate per block, in the order the trees build them
        rates = iter([rate for stage in drop_path_rates(
            drop_path_rate, [2**depth for depth in levels[2:]])
            for rate in stage])
        for i in range(2, 6):
            self.add_module(f'level{i}', DLATree(
                levels[i], block, channels[i - 1], channels[i], stride=2,
                level_root=i > 2, residual_root=self.arch.residual_root,
                with_cp=with_cp, drop_path_rates=rates,
                cardinality=self.arch.cardinality,
                base_width=self.arch.base_width, **layer_cfg))
        # a named arch has indexed weights; a dict is a custom arch
        self._finish_init(pretrained,
                          arch_key(arch) if isinstance(arch, str) else None)

    def _conv_level(self, in_channels: int, out_channels: int,
                    num_convs: int, stride: int) -> nn.Sequential:
        """``num_convs`` 3x3 conv-norm-act triples, the first strided."""
        layers: List[nn.Module] = []
        for i in range(num_convs):
            layers += [
                conv_layer(self.conv_cfg, in_channels, out_channels, 3,
                           stride=stride if i == 0 else 1, padding=1,
                           bias=False),
                norm_layer(self.norm_cfg, out_channels)[1],
                act_layer(self.act_cfg)
            ]
            in_channels = out_channels
        return nn.Sequential(*layers)


# ------------------------------------------------------------ conversion
@register_converter('timm', 'DLA')
def dla_from_timm(state_dict, model):
    """timm (and ucbdrive) DLA checkpoints share our keys: drop the
    classifier ``fc`` and the ``project`` layers the original release
    kept in deeper trees without using them."""
    if 'base_layer.0.weight' not in state_dict or \
            not any(k.startswith('level5.') for k in state_dict):
        raise KeyError('not a timm DLA state dict')
    target = model.state_dict()
    return {k: v for k, v in state_dict.items()
            if not k.startswith('fc.')
            and not ('.project.' in k and k not in target)}
