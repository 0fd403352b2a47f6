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
import inspect
import math
from dataclasses import dataclass, fields
from typing import Dict, List, Optional, Tuple, Union

from mmbackbone.checkpoint.convert import register_converter
from mmbackbone.registry import MODELS
from mmbackbone.utils import closest
from ..layers import ResidualBlock, is_int, is_number
from .base_backbone import bind_arguments
from .resnet import ResNet, StagePlan


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

    expansion = 1

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
class RegNet(ResNet):
    """RegNetX / RegNetY backbone (mmpretrain-compatible arguments, keys).

    A 3x3 stride-2 stem (``stem_channels``) and up to four stages of
    bottlenecks whose widths, depths and group widths follow from the
    arch's design parameters; RegNetY archs add squeeze-excitation.

    A :class:`~mmbackbone.models.ResNet` (as in mmpretrain) whose arch
    fixes the stages: the arguments are ResNet's but ``depth``,
    ``expansion`` and ``num_stages``, with ``arch`` first and other
    defaults (the signature is derived from ResNet's, not restated).

    Args:
        arch (str | dict): an arch name (``'regnetx_400mf'`` ...
            ``'regnetx_12gf'``, ``'regnety_200mf'`` ... ``'regnety_16gf'``),
            a timm alias (``'regnetx_004'``, ``'regnety_002'``, ...), or a
            dict with ``w0, wa, wm, depth, group_w, bot_mul`` and optional
            ``se_ratio``.
        stem_channels (int): output channels of the stem. Default: 32.
        base_channels (int): kept for mmpretrain compatibility (unused:
            widths come from ``arch``). Default: 32.
        strides (Sequence[int]): stride of each stage's first block, one
            per stage of the arch. Default: ``(2, 2, 2, 2)``.
        deep_stem (bool): not supported (as in mmpretrain); must be False.
        init_cfg (dict | list, optional): mmengine init config, e.g.
            ``dict(type='Pretrained', checkpoint=..., prefix='backbone')``;
            timm and torchvision RegNet files are converted. Default: None.
        pretrained (bool | str): ``True`` loads the weights index's default
            for this arch, a name that entry (``mmbackbone weights regnet*``).

    The other arguments (``in_channels``, ``dilations``, ``out_indices``,
    ``style``, ``avg_down``, ``frozen_stages``, ``conv_cfg``,
    ``norm_cfg``, ``norm_eval``, ``with_cp``, ``zero_init_residual``,
    ``drop_path_rate``) are :class:`~mmbackbone.models.ResNet`'s.

    Example:
        >>> import torch
        >>> from mmbackbone.models import RegNet
        >>> model = RegNet('regnetx_4.0gf', out_indices=(0, 1, 2, 3)).eval()
        >>> model.out_channels, model.out_strides
        ((80, 240, 560, 1360), (4, 8, 16, 32))
        >>> [tuple(out.shape) for out in model(torch.rand(1, 3, 32, 32))]
        [(1, 80, 8, 8), (1, 240, 4, 4), (1, 560, 2, 2), (1, 1360, 1, 1)]
    """

    arch_settings = REGNET_ARCHS
    arch_aliases = REGNET_ALIASES
    zoo_configs = {name: dict(arch=name)
                   for name in [*REGNET_ARCHS, *REGNET_ALIASES]}
    stem_kernel_size = 3
    stem_pool_stride = 1

    def __init__(self, *args, **kwargs):
        arguments = bind_arguments(REGNET_SIGNATURE, self, args, kwargs)
        if arguments['deep_stem']:
            raise ValueError('deep_stem=True is not supported by RegNet (its '
                             'stem is one 3x3 conv); use deep_stem=False')
        super().__init__(**arguments)

    def _plan_stages(self, depth, arch, expansion, num_stages,
                     base_channels) -> StagePlan:
        """Resolve ``arch`` (``depth``, ``expansion`` and ``num_stages``
        are not RegNet's arguments); set ``arch``, the per-stage lists and
        ``depth`` (the total block count)."""
        if arch is None:
            raise TypeError(f'RegNet needs arch; choose from '
                            f'{sorted(REGNET_ARCHS)} or give a dict with '
                            f'keys {list(_ARCH_KEYS)}')
        self.arch = parse_arch(arch)
        widths, blocks, group_widths = regnet_stages(self.arch)
        if len(widths) > 4:
            raise ValueError(f'arch={arch!r} yields {len(widths)} stages '
                             f'(widths {widths}); RegNet builds at most 4: '
                             f'raise wm or lower depth')
        self.stage_widths, self.group_widths = widths, group_widths
        self.stage_blocks = blocks
        self.bottleneck_ratio = [self.arch.bot_mul] * len(widths)
        self.depth = sum(blocks)
        self.block, self.expansion = RegNetBottleneck, 1
        if isinstance(arch, str):
            name = arch.lower()  # an alias maps through arch_aliases
        else:  # a dict naming a row's numbers is that row
            name = next((key for key, row in REGNET_ARCHS.items()
                         if row == self.arch), None)
        return StagePlan(tuple(widths), tuple(blocks), f' of arch={arch!r}',
                         name)

    def _stage_blocks_args(self, index: int) -> dict:
        mid = int(round(self.stage_widths[index] * self.arch.bot_mul))
        width = self.group_widths[index]
        return dict(block=RegNetBottleneck, expansion=1, groups=mid // width,
                    group_width=width, se_ratio=self.arch.se_ratio)


def _regnet_signature() -> inspect.Signature:
    """ResNet's arguments without ``depth``, ``expansion`` and
    ``num_stages``, ``arch`` first, and RegNet's defaults."""
    parameter = inspect.Parameter
    defaults = dict(stem_channels=32, base_channels=32,
                    strides=(2, 2, 2, 2), init_cfg=None)
    params = [parameter('self', parameter.POSITIONAL_OR_KEYWORD),
              parameter('arch', parameter.POSITIONAL_OR_KEYWORD,
                        default=None,
                        annotation=Union[str, dict, RegNetArch, None])]
    for name, param in inspect.signature(ResNet).parameters.items():
        if name not in ('depth', 'expansion', 'num_stages', 'arch'):
            params.append(param.replace(
                default=defaults.get(name, param.default)))
    return inspect.Signature(params)


REGNET_SIGNATURE = _regnet_signature()
RegNet.__init__.__signature__ = REGNET_SIGNATURE
RegNet.__init__.__annotations__ = {
    name: param.annotation for name, param in
    REGNET_SIGNATURE.parameters.items() if name != 'self'}


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


def _convert(state_dict, model, head: Tuple[str, ...], stem: Dict[str, str],
             locate) -> dict:
    """Rename a peer's RegNet keys: ``head`` keys dropped, ``stem.<k>``
    through ``stem`` (``'bn'`` standing for the model's norm name), block
    keys through ``locate(parts) -> (stage, block, role, rest)``."""
    names = _block_names(model)
    converted = {}
    for key, value in state_dict.items():
        if key.startswith(head):
            continue
        parts = key.split('.')
        if parts[0] == 'stem':
            name = stem[parts[1]]
            name = model.norm1_name if name == 'bn' else name
            converted['.'.join([name, *parts[2:]])] = value
            continue
        stage, block, role, rest = locate(parts)
        converted['.'.join([f'layer{stage}', str(block), names[role],
                            *rest])] = value
    return converted


def _timm_block(parts):
    role = _TIMM_ROLES['.'.join(parts[2:4])]
    return parts[0][1:], int(parts[1][1:]) - 1, role, parts[4:]


@register_converter('timm', 'RegNet')
def regnet_from_timm(state_dict, model):
    """timm: ``stem.conv``/``stem.bn``, ``s{i}.b{j}.conv1.conv`` ... ->
    ``conv1``/``bn1``, ``layer{i}.{j-1}.conv1`` ...; the head is dropped."""
    if 'stem.conv.weight' not in state_dict or \
            not any(k.startswith('s1.b1.') for k in state_dict):
        raise KeyError('not a timm RegNet state dict')
    return _convert(state_dict, model, ('head.', 'final_conv.'),
                    {'conv': 'conv1', 'bn': 'bn'}, _timm_block)


_TV_ROLES = {'f.a.0': 'conv1', 'f.a.1': 'bn1', 'f.b.0': 'conv2',
             'f.b.1': 'bn2', 'f.c.0': 'conv3', 'f.c.1': 'bn3',
             'f.se.fc1': 'se1', 'f.se.fc2': 'se2', 'proj.0': 'proj',
             'proj.1': 'proj_bn'}


def _torchvision_block(parts):
    end = 5 if parts[3] == 'proj' else 6
    role = _TV_ROLES['.'.join(parts[3:end])]
    return (parts[1].removeprefix('block'), parts[2].split('-')[1], role,
            parts[end:])


@register_converter('torchvision', 'RegNet')
def regnet_from_torchvision(state_dict, model):
    """torchvision: ``stem.0``/``stem.1``,
    ``trunk_output.block{i}.block{i}-{j}.f.a.0`` ... -> ours; ``fc``
    dropped. (torchvision's regnet_x_400mf and regnet_y_800mf round
    widths differently and do not fit our rows of those names.)"""
    if 'stem.0.weight' not in state_dict or \
            not any(k.startswith('trunk_output.') for k in state_dict):
        raise KeyError('not a torchvision RegNet state dict')
    return _convert(state_dict, model, ('fc.', ), {'0': 'conv1', '1': 'bn'},
                    _torchvision_block)
