"""RegNetX and RegNetY (Radosavovic et al., Designing Network Design Spaces).

Constructor arguments and state-dict keys follow mmpretrain 1.2's
``RegNet`` (a ResNet with a 3x3 stem and ResNeXt-style bottlenecks), so
its checkpoints load with ``strict=True``. RegNetY adds squeeze-excitation
inside each bottleneck, after the grouped 3x3 conv. timm and torchvision
RegNet checkpoints are converted on load.

State-dict keys (``i`` = stage 1..4, ``j`` = block from 0)::

    conv1.weight, bn1.*                         3x3 stride-2 stem
    layer{i}.{j}.conv1.weight, .bn1.*           1x1 conv
    layer{i}.{j}.conv2.weight, .bn2.*           3x3 grouped conv
    layer{i}.{j}.se_layer.conv1.conv.{weight,bias}   SE squeeze (Y only)
    layer{i}.{j}.se_layer.conv2.conv.{weight,bias}   SE excite (Y only)
    layer{i}.{j}.conv3.weight, .bn3.*           1x1 conv
    layer{i}.0.downsample.0.weight, .1.*        projection shortcut

The SE keys follow mmpretrain's ``SELayer`` (as in its SEResNet), which
names the two 1x1 convs ``conv1``/``conv2`` inside ``ConvModule``.
"""
import math
from dataclasses import dataclass, fields
from typing import Dict, List, Optional, Sequence, Tuple, Union

from torch import Tensor, nn

from mmbackbone.checkpoint.convert import register_converter
from mmbackbone.registry import MODELS
from mmbackbone.utils import closest
from ..layers import (ResidualBlock, ResLayer,
                      check_layer_cfgs, check_per_stage, check_positive_ints,
                      check_rate, check_style, conv_layer, drop_path_rates,
                      is_int, is_number, norm_layer, zero_init_last_blocks)
from .base_backbone import BaseBackbone


@dataclass(frozen=True)
class RegNetArch:
    """One row of the RegNet arch table (the paper's design parameters).

    Attributes:
        w0: initial width (a positive multiple of 8).
        wa: slope of the linear width function (>= 0).
        wm: width multiplier between quantized stages (> 1).
        depth: total number of blocks.
        group_w: channels per group of the 3x3 conv.
        bot_mul: bottleneck ratio (middle / output channels).
        se_ratio: squeeze-excitation channels as a fraction of each
            block's input channels; 0 (RegNetX) means no SE.
    """
    w0: int
    wa: float
    wm: float
    depth: int
    group_w: int
    bot_mul: float = 1.0
    se_ratio: float = 0.0


def _x(w0, wa, wm, group_w, depth) -> RegNetArch:
    return RegNetArch(w0, wa, wm, depth, group_w, 1.0, 0.0)


def _y(w0, wa, wm, group_w, depth) -> RegNetArch:
    return RegNetArch(w0, wa, wm, depth, group_w, 1.0, 0.25)


#: The RegNetX rows are mmpretrain's; the RegNetY rows are the paper's
#: (the numbers of timm's ``regnety_002`` ... ``regnety_160``).
REGNET_ARCHS: Dict[str, RegNetArch] = {
    'regnetx_400mf': _x(24, 24.48, 2.54, 16, 22),
    'regnetx_800mf': _x(56, 35.73, 2.28, 16, 16),
    'regnetx_1.6gf': _x(80, 34.01, 2.25, 24, 18),
    'regnetx_3.2gf': _x(88, 26.31, 2.25, 48, 25),
    'regnetx_4.0gf': _x(96, 38.65, 2.43, 40, 23),
    'regnetx_6.4gf': _x(184, 60.83, 2.07, 56, 17),
    'regnetx_8.0gf': _x(80, 49.56, 2.88, 120, 23),
    'regnetx_12gf': _x(168, 73.36, 2.37, 112, 19),
    'regnety_200mf': _y(24, 36.44, 2.49, 8, 13),
    'regnety_400mf': _y(48, 27.89, 2.09, 8, 16),
    'regnety_600mf': _y(48, 32.54, 2.32, 16, 15),
    'regnety_800mf': _y(56, 38.84, 2.40, 16, 14),
    'regnety_1.6gf': _y(48, 20.71, 2.65, 24, 27),
    'regnety_3.2gf': _y(80, 42.63, 2.66, 24, 21),
    'regnety_4.0gf': _y(96, 31.41, 2.24, 64, 22),
    'regnety_6.4gf': _y(112, 33.22, 2.27, 72, 25),
    'regnety_8.0gf': _y(192, 76.82, 2.19, 56, 17),
    'regnety_12gf': _y(168, 73.36, 2.37, 112, 19),
    'regnety_16gf': _y(200, 106.23, 2.48, 112, 18),
}

#: timm's names (FLOPs in hundreds of MF) for the rows above.
REGNET_ALIASES: Dict[str, str] = {
    'regnetx_004': 'regnetx_400mf', 'regnetx_008': 'regnetx_800mf',
    'regnetx_016': 'regnetx_1.6gf', 'regnetx_032': 'regnetx_3.2gf',
    'regnetx_040': 'regnetx_4.0gf', 'regnetx_064': 'regnetx_6.4gf',
    'regnetx_080': 'regnetx_8.0gf', 'regnetx_120': 'regnetx_12gf',
    'regnety_002': 'regnety_200mf', 'regnety_004': 'regnety_400mf',
    'regnety_006': 'regnety_600mf', 'regnety_008': 'regnety_800mf',
    'regnety_016': 'regnety_1.6gf', 'regnety_032': 'regnety_3.2gf',
    'regnety_040': 'regnety_4.0gf', 'regnety_064': 'regnety_6.4gf',
    'regnety_080': 'regnety_8.0gf', 'regnety_120': 'regnety_12gf',
    'regnety_160': 'regnety_16gf',
}

_ARCH_KEYS = tuple(f.name for f in fields(RegNetArch))
_REQUIRED_KEYS = ('w0', 'wa', 'wm', 'depth', 'group_w', 'bot_mul')


def parse_arch(arch) -> RegNetArch:
    """Turn an arch name, alias, dict or :class:`RegNetArch` into a row.

    Example:
        >>> parse_arch('regnetx_040') == parse_arch('regnetx_4.0gf')
        True
        >>> parse_arch(dict(w0=24, wa=36.44, wm=2.49, depth=13, group_w=8,
        ...                 bot_mul=1.0)).se_ratio
        0.0
    """
    if isinstance(arch, RegNetArch):
        row = arch
    elif isinstance(arch, str):
        name = arch.lower()
        name = REGNET_ALIASES.get(name, name)
        if name not in REGNET_ARCHS:
            choices = sorted(REGNET_ARCHS) + sorted(REGNET_ALIASES)
            raise KeyError(
                f'arch={arch!r}; choose from {sorted(REGNET_ARCHS)} (timm '
                f'aliases: {sorted(REGNET_ALIASES)}) or give a dict with '
                f'keys {list(_ARCH_KEYS)}.{closest(arch, choices)}')
        return REGNET_ARCHS[name]
    elif isinstance(arch, dict):
        unknown = sorted(set(arch) - set(_ARCH_KEYS), key=str)
        if unknown:
            raise KeyError(f'arch={arch!r}: unknown keys {unknown}; valid '
                           f'keys are {list(_ARCH_KEYS)}')
        missing = [k for k in _REQUIRED_KEYS if k not in arch]
        if missing:
            raise KeyError(f'arch={arch!r}: missing keys {missing}; a dict '
                           f'arch needs {list(_REQUIRED_KEYS)} (se_ratio is '
                           f'optional, default 0)')
        row = RegNetArch(**arch)
    else:
        raise TypeError(f'arch={arch!r} must be an arch name (one of '
                        f'{sorted(REGNET_ARCHS)}) or a dict with keys '
                        f'{list(_ARCH_KEYS)}')
    _check_row(row, arch)
    return row


def _check_row(row: RegNetArch, arch) -> None:
    checks = (
        ('w0', is_int(row.w0) and row.w0 > 0 and row.w0 % 8 == 0,
         'a positive multiple of 8'),
        ('wa', is_number(row.wa) and row.wa >= 0, 'a number >= 0'),
        ('wm', is_number(row.wm) and row.wm > 1, 'a number > 1'),
        ('depth', is_int(row.depth) and row.depth >= 1, 'an int >= 1'),
        ('group_w', is_int(row.group_w) and row.group_w >= 1,
         'an int >= 1'),
        ('bot_mul', is_number(row.bot_mul) and row.bot_mul > 0,
         'a number > 0'),
        ('se_ratio', is_number(row.se_ratio) and 0 <= row.se_ratio < 1,
         'a number in [0, 1)'),
    )
    for key, ok, valid in checks:
        if not ok:
            raise ValueError(f'arch={arch!r}: {key}={getattr(row, key)!r} '
                             f'must be {valid}')


def regnet_stages(row: RegNetArch, divisor: int = 8
                  ) -> Tuple[List[int], List[int], List[int]]:
    """Per-stage widths, block counts and group widths of an arch.

    Block ``i`` gets the width ``w0 + i * wa`` snapped to the nearest
    ``w0 * wm**k`` and rounded to ``divisor``; runs of equal widths form
    the stages. Widths are then made divisible by the group width.

    Example:
        >>> regnet_stages(REGNET_ARCHS['regnetx_4.0gf'])[0]
        [80, 240, 560, 1360]
    """
    widths = []
    for i in range(row.depth):
        cont = row.w0 + i * row.wa
        k = round(math.log(cont / row.w0) / math.log(row.wm))
        widths.append(int(round(row.w0 * row.wm**k / divisor) * divisor))
    stage_widths, stage_blocks = [], []
    for width in widths:
        if stage_widths and stage_widths[-1] == width:
            stage_blocks[-1] += 1
        else:
            stage_widths.append(width)
            stage_blocks.append(1)
    # Make each stage's bottleneck width a multiple of its group width.
    bot = [int(w * row.bot_mul) for w in stage_widths]
    groups = [min(row.group_w, b) for b in bot]
    bot = [int(round(b / g) * g) for b, g in zip(bot, groups)]
    stage_widths = [int(b / row.bot_mul) for b in bot]
    return stage_widths, stage_blocks, groups


class RegNetBottleneck(ResidualBlock):
    """1x1 - grouped 3x3 - [SE] - 1x1 convs with a residual connection: a
    :class:`~mmbackbone.models.layers.ResidualBlock` with RegNet's widths.

    Middle channels are ``groups * group_width`` (mmpretrain's ResNeXt
    rule with ``base_channels = out_channels``; with a single group they
    equal ``out_channels // expansion``). The SE gate (RegNetY,
    ``se_ratio > 0``) sits after the 3x3 conv and squeezes to
    ``round(in_channels * se_ratio)`` channels, as in the paper and timm.
    Other arguments are :class:`ResidualBlock`'s.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 expansion: int = 1, groups: int = 1, group_width: int = 1,
                 se_ratio: float = 0.0, **kwargs):
        mid = groups * group_width if groups != 1 \
            else out_channels // expansion
        squeeze = int(round(in_channels * se_ratio)) if se_ratio > 0 else 0
        super().__init__(in_channels, out_channels, expansion,
                         mid_channels=mid, groups=groups,
                         se_channels=squeeze, **kwargs)


@MODELS.register_module()
class RegNet(BaseBackbone):
    """RegNetX / RegNetY backbone (mmpretrain-compatible arguments, keys).

    A 3x3 stride-2 stem (``stem_channels``) and up to four stages of
    bottlenecks whose widths, depths and group widths follow from the
    arch's design parameters; RegNetY archs add squeeze-excitation.

    Args:
        arch (str | dict): an arch name (``'regnetx_400mf'`` ...
            ``'regnetx_12gf'``, ``'regnety_200mf'`` ... ``'regnety_16gf'``),
            a timm alias (``'regnetx_004'``, ``'regnety_002'``, ...), or a
            dict with ``w0, wa, wm, depth, group_w, bot_mul`` and optional
            ``se_ratio``.
        in_channels (int): input image channels. Default: 3.
        stem_channels (int): output channels of the stem. Default: 32.
        base_channels (int): kept for mmpretrain compatibility (unused:
            widths come from ``arch``). Default: 32.
        strides (Sequence[int]): stride of each stage's first block, one
            per stage of the arch. Default: ``(2, 2, 2, 2)``.
        dilations (Sequence[int]): dilation of each stage.
        out_indices (Sequence[int] | int): stages to output; negative
            indices count from the last. Default: ``(3, )``.
        style (str): ``'pytorch'`` (stride on the 3x3 conv) or ``'caffe'``
            (stride on the first 1x1 conv).
        deep_stem (bool): not supported (as in mmpretrain); must be False.
        avg_down (bool): average-pool shortcut when downsampling.
        frozen_stages (int | str): -1 nothing, 0 the stem, k the stem and
            stages 1..k, ``'all'`` everything. Default: -1.
        conv_cfg (dict, optional): conv layer config.
        norm_cfg (dict): norm layer config. Default: ``dict(type='BN')``.
        norm_eval (bool): keep norm layers in eval mode. Default: False.
        with_cp (bool): gradient checkpointing per block. Default: False.
        zero_init_residual (bool): zero the last norm of each block after
            random init. Default: True.
        init_cfg (dict | list, optional): mmengine init config, e.g.
            ``dict(type='Pretrained', checkpoint=..., prefix='backbone')``;
            timm and torchvision RegNet files are converted.
        drop_path_rate (float): stochastic depth, linear over blocks.
        pretrained (bool | str): ``True`` loads the weights index's default
            for this arch, a name that entry (``mmbackbone weights regnet*``).

    Example:
        >>> import torch
        >>> from mmbackbone.models import RegNet
        >>> model = RegNet('regnetx_4.0gf', out_indices=(0, 1, 2, 3)).eval()
        >>> model.out_channels
        (80, 240, 560, 1360)
        >>> for out in model(torch.rand(1, 3, 32, 32)):
        ...     print(tuple(out.shape))
        (1, 80, 8, 8)
        (1, 240, 4, 4)
        (1, 560, 2, 2)
        (1, 1360, 1, 1)
    """

    arch_settings = REGNET_ARCHS
    zoo_configs = {name: dict(arch=name)
                   for name in [*REGNET_ARCHS, *REGNET_ALIASES]}

    def __init__(self,
                 arch: Union[str, dict, RegNetArch, None] = None,
                 in_channels: int = 3,
                 stem_channels: int = 32,
                 base_channels: int = 32,
                 strides: Sequence[int] = (2, 2, 2, 2),
                 dilations: Sequence[int] = (1, 1, 1, 1),
                 out_indices: Union[int, Sequence[int]] = (3, ),
                 style: str = 'pytorch',
                 deep_stem: bool = False,
                 avg_down: bool = False,
                 frozen_stages: Union[int, str] = -1,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN', requires_grad=True),
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 zero_init_residual: bool = True,
                 init_cfg: Union[dict, List[dict], None] = None,
                 drop_path_rate: float = 0.0,
                 pretrained: Union[bool, str] = False):
        super().__init__(init_cfg)
        if arch is None:
            raise TypeError(f'RegNet needs arch; choose from '
                            f'{sorted(REGNET_ARCHS)} or give a dict with '
                            f'keys {list(_ARCH_KEYS)}')
        self.arch = parse_arch(arch)
        check_layer_cfgs(norm_cfg=norm_cfg, conv_cfg=conv_cfg)
        widths, blocks, group_widths = regnet_stages(self.arch)
        num_stages = len(widths)
        if num_stages > 4:
            raise ValueError(f'arch={arch!r} yields {num_stages} stages '
                             f'(widths {widths}); RegNet builds at most 4: '
                             f'raise wm or lower depth')
        check_per_stage(num_stages, f' of arch={arch!r}', strides=strides,
                        dilations=dilations)
        check_style(style)
        if deep_stem:
            raise ValueError('deep_stem=True is not supported by RegNet (its '
                             'stem is one 3x3 conv); use deep_stem=False')
        check_positive_ints(in_channels=in_channels,
                            stem_channels=stem_channels,
                            base_channels=base_channels)
        check_rate('drop_path_rate', drop_path_rate)

        self.stage_widths, self.group_widths = widths, group_widths
        self.stage_blocks = blocks
        self.bottleneck_ratio = [self.arch.bot_mul] * num_stages
        self.depth = sum(blocks)
        self.in_channels, self.stem_channels = in_channels, stem_channels
        self.base_channels, self.style = base_channels, style
        self.strides, self.dilations = tuple(strides), tuple(dilations)
        self.deep_stem, self.avg_down = False, avg_down
        self.conv_cfg, self.norm_cfg = conv_cfg, norm_cfg
        self.with_cp, self.zero_init_residual = with_cp, zero_init_residual

        stage_strides, stride = [], 2
        for s in self.strides:
            stride *= s
            stage_strides.append(stride)
        self._setup_outputs(widths, stage_strides, out_indices, frozen_stages,
                            norm_eval)

        self.conv1 = conv_layer(conv_cfg, in_channels, stem_channels, 3,
                                stride=2, padding=1, bias=False)
        self.norm1_name, norm1 = norm_layer(norm_cfg, stem_channels, 1)
        self.add_module(self.norm1_name, norm1)
        self.relu = nn.ReLU(inplace=True)

        rates = drop_path_rates(drop_path_rate, blocks)
        self.res_layers = []
        channels = stem_channels
        for i, num_blocks in enumerate(blocks):
            mid = int(round(widths[i] * self.arch.bot_mul))
            layer = ResLayer(
                block=RegNetBottleneck, num_blocks=num_blocks,
                in_channels=channels, out_channels=widths[i], expansion=1,
                stride=self.strides[i], dilation=self.dilations[i],
                style=style, avg_down=avg_down, with_cp=with_cp,
                conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                drop_path_rates=rates[i],
                groups=mid // group_widths[i], group_width=group_widths[i],
                se_ratio=self.arch.se_ratio)
            channels = widths[i]
            self.add_module(f'layer{i + 1}', layer)
            self.res_layers.append(f'layer{i + 1}')
        self.feat_dim = widths[-1]
        self._freeze_stages()
        self._setup_pretrained(pretrained, [
            name for name in [*REGNET_ARCHS, *REGNET_ALIASES]
            if REGNET_ARCHS[REGNET_ALIASES.get(name, name)] == self.arch])

    @property
    def norm1(self) -> nn.Module:
        return getattr(self, self.norm1_name)

    def stage_parts(self) -> List[List[nn.Module]]:
        return [[self.conv1, self.norm1]] + [[getattr(self, name)]
                                             for name in self.res_layers]

    def _init_after_random(self) -> None:
        if self.zero_init_residual:
            zero_init_last_blocks(self)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        x = self.relu(self.norm1(self.conv1(x)))
        outs = []
        for name in self.res_layers[:self.last_needed_stage + 1]:
            x = getattr(self, name)(x)
            outs.append(x)
        return self._select_outputs(outs)


# ------------------------------------------------------------ conversion
def _block_names(model: RegNet) -> Dict[str, str]:
    """Our leaf-module names inside a block, by role."""
    block = model.layer1[0]
    offset = 1 if model.avg_down else 0  # avg_down puts a pool first
    return {'conv1': 'conv1', 'bn1': block.norm1_name, 'conv2': 'conv2',
            'bn2': block.norm2_name, 'conv3': 'conv3',
            'bn3': block.norm3_name, 'se1': 'se_layer.conv1.conv',
            'se2': 'se_layer.conv2.conv', 'proj': f'downsample.{offset}',
            'proj_bn': f'downsample.{offset + 1}'}


_TIMM_ROLES = {'conv1.conv': 'conv1', 'conv1.bn': 'bn1',
               'conv2.conv': 'conv2', 'conv2.bn': 'bn2',
               'conv3.conv': 'conv3', 'conv3.bn': 'bn3',
               'se.fc1': 'se1', 'se.fc2': 'se2',
               'downsample.conv': 'proj', 'downsample.bn': 'proj_bn'}


@register_converter('timm', 'RegNet')
def regnet_from_timm(state_dict, model):
    """timm: ``stem.conv``/``stem.bn``, ``s{i}.b{j}.conv1.conv`` ... ->
    ``conv1``/``bn1``, ``layer{i}.{j-1}.conv1`` ...; the head is dropped."""
    if 'stem.conv.weight' not in state_dict or \
            not any(k.startswith('s1.b1.') for k in state_dict):
        raise KeyError('not a timm RegNet state dict')
    names = _block_names(model)
    converted = {}
    for key, value in state_dict.items():
        if key.startswith(('head.', 'final_conv.')):
            continue
        parts = key.split('.')
        if parts[0] == 'stem':
            stem = {'conv': 'conv1', 'bn': model.norm1_name}[parts[1]]
            converted['.'.join([stem, *parts[2:]])] = value
            continue
        stage, block = parts[0][1:], int(parts[1][1:]) - 1
        role = _TIMM_ROLES['.'.join(parts[2:4])]
        converted['.'.join([f'layer{stage}', str(block), names[role],
                            *parts[4:]])] = value
    return converted


_TV_ROLES = {'f.a.0': 'conv1', 'f.a.1': 'bn1', 'f.b.0': 'conv2',
             'f.b.1': 'bn2', 'f.c.0': 'conv3', 'f.c.1': 'bn3',
             'f.se.fc1': 'se1', 'f.se.fc2': 'se2', 'proj.0': 'proj',
             'proj.1': 'proj_bn'}


@register_converter('torchvision', 'RegNet')
def regnet_from_torchvision(state_dict, model):
    """torchvision: ``stem.0``/``stem.1``,
    ``trunk_output.block{i}.block{i}-{j}.f.a.0`` ... -> ours; ``fc``
    dropped. (torchvision's regnet_x_400mf and regnet_y_800mf round
    widths differently and do not fit our rows of those names.)"""
    if 'stem.0.weight' not in state_dict or \
            not any(k.startswith('trunk_output.') for k in state_dict):
        raise KeyError('not a torchvision RegNet state dict')
    names = _block_names(model)
    converted = {}
    for key, value in state_dict.items():
        if key.startswith('fc.'):
            continue
        parts = key.split('.')
        if parts[0] == 'stem':
            stem = {'0': 'conv1', '1': model.norm1_name}[parts[1]]
            converted['.'.join([stem, *parts[2:]])] = value
            continue
        stage = parts[1].removeprefix('block')
        block = parts[2].split('-')[1]
        end = 5 if parts[3] == 'proj' else 6
        role = _TV_ROLES['.'.join(parts[3:end])]
        converted['.'.join([f'layer{stage}', block, names[role],
                            *parts[end:]])] = value
    return converted
