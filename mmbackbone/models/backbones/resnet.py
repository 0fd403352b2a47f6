"""ResNet, ResNetV1c and ResNetV1d (He et al., 2016; Bag of Tricks, 2019).

Constructor arguments and state-dict keys follow mmpretrain 1.2, so its
checkpoints load with ``strict=True``; torchvision and timm ResNet
checkpoints are converted on load.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Type, Union

from torch import nn

from mmbackbone.checkpoint.convert import register_converter
from mmbackbone.registry import MODELS
from ..layers import (ResidualBlock, ResLayer, check_layer_cfgs,
                      check_per_stage, check_positive_ints, check_rate,
                      check_style, conv_layer, conv_module, drop_path_rates,
                      get_expansion, norm_layer, zero_init_last_blocks)
from .base_backbone import BaseBackbone, StageInfo


class BasicBlock(ResidualBlock):
    """Two 3x3 convs with a residual connection (ResNet-18/34): a
    :class:`~mmbackbone.models.layers.ResidualBlock` of the basic layout
    (same arguments; keys ``conv1``, ``bn1``, ``conv2``, ``bn2``)."""

    layout = 'basic'
    expansion = 1


class Bottleneck(ResidualBlock):
    """1x1 - 3x3 - 1x1 convs with a residual connection (ResNet-50+): a
    :class:`~mmbackbone.models.layers.ResidualBlock` (same arguments; keys
    ``conv1``, ``bn1`` ... ``conv3``, ``bn3``).

    ``style='pytorch'`` puts the stride on the 3x3 conv, ``'caffe'`` on
    the first 1x1 conv.
    """

    layout = 'bottleneck'
    expansion = 4


@dataclass(frozen=True)
class StagePlan:
    """What an arch fixes of a ResNet-style network's stages.

    Attributes:
        widths: output channels of each stage built.
        rate_blocks: block counts the drop-path rates spread over (the
            whole arch, also where fewer stages are built).
        where: how the error messages name the stage count.
        arch_name: the arch's name in the weights index; None for a
            custom arch.
    """
    widths: Tuple[int, ...]
    rate_blocks: Tuple[int, ...]
    where: str
    arch_name: Optional[str]


@dataclass(frozen=True)
class ResNetArch:
    """One row of the ResNet arch table."""
    block: Type[nn.Module]
    stage_blocks: Tuple[int, ...]


RESNET_ARCHS: Dict[int, ResNetArch] = {
    18: ResNetArch(BasicBlock, (2, 2, 2, 2)),
    34: ResNetArch(BasicBlock, (3, 4, 6, 3)),
    50: ResNetArch(Bottleneck, (3, 4, 6, 3)),
    101: ResNetArch(Bottleneck, (3, 4, 23, 3)),
    152: ResNetArch(Bottleneck, (3, 8, 36, 3)),
}


def parse_depth(depth, arch) -> int:
    """Pick the depth from ``depth`` or ``arch`` (``50`` or ``'resnet50'``)."""
    if depth is not None and arch is not None and depth != arch:
        raise ValueError(f'depth={depth!r} and arch={arch!r} disagree; give '
                         f'one of them')
    value = depth if depth is not None else arch
    if value is None:
        raise TypeError(f'ResNet needs depth (or arch); choose from '
                        f'{sorted(RESNET_ARCHS)}')
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        arg = 'depth' if depth is not None else 'arch'
        raise TypeError(f'{arg}={value!r} must be a depth (int) or an arch '
                        f'name; choose from {sorted(RESNET_ARCHS)}')
    if isinstance(value, str):
        digits = value.lower().removeprefix('resnet').removeprefix('-')
        value = int(digits) if digits.isdigit() else value
    if isinstance(value, bool) or value not in RESNET_ARCHS:
        raise KeyError(f'depth={value!r} is not a ResNet depth; choose from '
                       f'{sorted(RESNET_ARCHS)} (or arch names '
                       f'{["resnet%d" % d for d in sorted(RESNET_ARCHS)]})')
    return value


@MODELS.register_module()
class ResNet(BaseBackbone):
    """ResNet backbone (mmpretrain-compatible arguments and keys).

    Args:
        depth (int | str): 18, 34, 50, 101 or 152 (``'resnet50'`` works).
        in_channels (int): input image channels. Default: 3.
        stem_channels (int): output channels of the stem. Default: 64.
        base_channels (int): middle channels of the first stage. Default: 64.
        expansion (int, optional): block expansion; default 1 for
            BasicBlock and 4 for Bottleneck.
        num_stages (int): stages built, 1 to 4. Default: 4.
        strides (Sequence[int]): stride of each stage's first block.
        dilations (Sequence[int]): dilation of each stage.
        out_indices (Sequence[int] | int): stages to output; negative
            indices count from the last. Default: ``(3, )``.
        style (str): ``'pytorch'`` (stride on the 3x3 conv) or ``'caffe'``.
        deep_stem (bool): three 3x3 convs instead of the 7x7 stem.
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
            ``dict(type='Pretrained', checkpoint=..., prefix='backbone')``.
        drop_path_rate (float): stochastic depth, linear over blocks.
        arch (int | str, optional): alias of ``depth``.
        pretrained (bool | str): ``True`` loads the weights index's default
            for this arch, a name (``'resnet50.mmpretrain_in1k'``) that
            entry; see ``mmbackbone weights``. Default: False.

    Example:
        >>> import torch
        >>> from mmbackbone.models import ResNet
        >>> model = ResNet(depth=18, out_indices=(0, 1, 2, 3)).eval()
        >>> for out in model(torch.rand(1, 3, 32, 32)):
        ...     print(tuple(out.shape))
        (1, 64, 8, 8)
        (1, 128, 4, 4)
        (1, 256, 2, 2)
        (1, 512, 1, 1)
    """

    arch_settings = {d: (a.block, a.stage_blocks)
                     for d, a in RESNET_ARCHS.items()}
    zoo_configs = {f'resnet{d}': dict(depth=d) for d in RESNET_ARCHS}
    #: Kernel size of the single-conv stem (not the deep stem).
    stem_kernel_size = 7
    #: Stride of the max pool closing the stem; 1 builds none.
    stem_pool_stride = 2

    def __init__(self,
                 depth: Union[int, str, None] = None,
                 in_channels: int = 3,
                 stem_channels: int = 64,
                 base_channels: int = 64,
                 expansion: Optional[int] = None,
                 num_stages: int = 4,
                 strides: Sequence[int] = (1, 2, 2, 2),
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
                 init_cfg: Union[dict, List[dict], None] = [
                     dict(type='Kaiming', layer=['Conv2d']),
                     dict(type='Constant', val=1,
                          layer=['_BatchNorm', 'GroupNorm'])
                 ],
                 drop_path_rate: float = 0.0,
                 arch: Union[int, str, None] = None,
                 pretrained: Union[bool, str] = False):
        super().__init__(init_cfg)
        plan = self._plan_stages(depth=depth, arch=arch, expansion=expansion,
                                 num_stages=num_stages,
                                 base_channels=base_channels)
        # layer configs checked once (the deep stem's ConvModule skips the
        # factory); a norm that cannot take feature maps is refused here
        check_layer_cfgs(norm_cfg=norm_cfg, conv_cfg=conv_cfg)
        check_per_stage(len(plan.widths), plan.where, strides=strides,
                        dilations=dilations)
        check_style(style)
        check_positive_ints(in_channels=in_channels,
                            stem_channels=stem_channels,
                            base_channels=base_channels)
        check_rate('drop_path_rate', drop_path_rate)
        self.in_channels, self.stem_channels = in_channels, stem_channels
        self.base_channels, self.style = base_channels, style
        self.strides, self.dilations = tuple(strides), tuple(dilations)
        self.deep_stem, self.avg_down = deep_stem, avg_down
        self.conv_cfg, self.norm_cfg = conv_cfg, norm_cfg
        self.with_cp, self.zero_init_residual = with_cp, zero_init_residual

        stem = ('stem', ) if deep_stem else ('conv1', 'norm1', 'relu')
        if self.stem_pool_stride > 1:
            stem += ('maxpool', )
        stride = 2 * self.stem_pool_stride
        stages = []
        for i, (width, step) in enumerate(zip(plan.widths, self.strides)):
            stride *= step
            stages.append(StageInfo(width, stride, (f'layer{i + 1}', )))
        self._setup_stages(stages, stem=stem, out_indices=out_indices,
                           frozen_stages=frozen_stages, norm_eval=norm_eval)

        self._make_stem_layer(in_channels, stem_channels)
        rates = drop_path_rates(drop_path_rate, plan.rate_blocks)
        self.res_layers = []
        channels = stem_channels
        for i, num_blocks in enumerate(self.stage_blocks):
            layer = self.make_res_layer(
                num_blocks=num_blocks, in_channels=channels,
                out_channels=plan.widths[i], stride=self.strides[i],
                dilation=self.dilations[i], style=style, avg_down=avg_down,
                with_cp=with_cp, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                drop_path_rate=rates[i], **self._stage_blocks_args(i))
            channels = plan.widths[i]
            self.add_module(f'layer{i + 1}', layer)
            self.res_layers.append(f'layer{i + 1}')
        self.feat_dim = plan.widths[-1]
        self._finish_init(pretrained, plan.arch_name)

    def _plan_stages(self, depth: Union[int, str, None],
                     arch: Union[int, str, None], expansion: Optional[int],
                     num_stages: int, base_channels: int) -> StagePlan:
        """Resolve the arch into per-stage numbers; set ``depth``,
        ``block``, ``expansion`` and ``stage_blocks``."""
        self.depth = parse_depth(depth, arch)
        spec = RESNET_ARCHS[self.depth]
        if isinstance(num_stages, bool) or num_stages not in (1, 2, 3, 4):
            raise ValueError(f'num_stages={num_stages!r}; choose from 1, 2, '
                             f'3, 4')
        self.block = spec.block
        self.expansion = get_expansion(spec.block, expansion)
        self.stage_blocks = spec.stage_blocks[:num_stages]
        widths = tuple(base_channels * self.expansion * 2**i
                       for i in range(num_stages))
        return StagePlan(widths, spec.stage_blocks,
                         f' (num_stages={num_stages})',
                         f'resnet{self.depth}')

    def _stage_blocks_args(self, index: int) -> dict:
        """Block class and block arguments of stage ``index``."""
        return dict(block=self.block, expansion=self.expansion)

    def make_res_layer(self, **kwargs) -> ResLayer:
        """Build one stage (override to change the block layout)."""
        return ResLayer(**kwargs)

    @property
    def norm1(self) -> nn.Module:
        """The stem's norm layer (single-conv stem)."""
        return getattr(self, self.norm1_name)

    def _make_stem_layer(self, in_channels: int, stem_channels: int) -> None:
        if self.deep_stem:
            half = stem_channels // 2
            self.stem = nn.Sequential(*[
                conv_module(c_in, c_out, 3, stride=s, padding=1,
                           conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
                           inplace=True)
                for c_in, c_out, s in ((in_channels, half, 2),
                                       (half, half, 1),
                                       (half, stem_channels, 1))
            ])
        else:
            size = self.stem_kernel_size
            self.conv1 = conv_layer(self.conv_cfg, in_channels,
                                    stem_channels, size, stride=2,
                                    padding=size // 2, bias=False)
            self.norm1_name, norm1 = norm_layer(self.norm_cfg, stem_channels,
                                                1)
            self.add_module(self.norm1_name, norm1)
            self.relu = nn.ReLU(inplace=True)
        if self.stem_pool_stride > 1:
            self.maxpool = nn.MaxPool2d(kernel_size=3,
                                        stride=self.stem_pool_stride,
                                        padding=1)

    def _init_after_random(self) -> None:
        if self.zero_init_residual:
            zero_init_last_blocks(self)


@MODELS.register_module()
class ResNetV1c(ResNet):
    """ResNet-V1c: the 7x7 stem replaced by three 3x3 convs.

    Example:
        >>> import torch
        >>> from mmbackbone.models import ResNetV1c
        >>> model = ResNetV1c(depth=50).eval()
        >>> print(tuple(model(torch.rand(1, 3, 64, 64))[0].shape))
        (1, 2048, 2, 2)
    """

    def __init__(self, **kwargs):
        super().__init__(deep_stem=True, avg_down=False, **kwargs)


@MODELS.register_module()
class ResNetV1d(ResNet):
    """ResNet-V1d: deep stem and average-pool shortcuts.

    Example:
        >>> import torch
        >>> from mmbackbone.models import ResNetV1d
        >>> model = ResNetV1d(depth=18, out_indices=(0, 3))
        >>> model.deep_stem, model.avg_down, model.out_strides
        (True, True, (4, 32))
    """

    def __init__(self, **kwargs):
        super().__init__(deep_stem=True, avg_down=True, **kwargs)


# ------------------------------------------------------------ conversion
_TIMM_DEEP_STEM = {'conv1.0': 'stem.0.conv', 'conv1.1': 'stem.0.bn',
                   'conv1.3': 'stem.1.conv', 'conv1.4': 'stem.1.bn',
                   'conv1.6': 'stem.2.conv', 'bn1': 'stem.2.bn'}


@register_converter('torchvision/timm', 'ResNet')
def resnet_from_torchvision_or_timm(state_dict, model):
    """torchvision and timm ResNets share our stage keys; drop ``fc`` and
    map timm's deep stem (``conv1.0`` ... ``conv1.6``, ``bn1``) and its
    average-pool shortcut, which keeps an ``Identity`` slot at stride 1.
    Only for models built of :class:`BasicBlock` / :class:`Bottleneck`
    (not a subclass with other blocks, such as RegNet)."""
    if getattr(model, 'block', None) not in (BasicBlock, Bottleneck):
        raise KeyError(f'{type(model).__name__} is not built of ResNet '
                       f'blocks; the torchvision/timm ResNet layout does not '
                       f'apply')
    if 'fc.weight' not in state_dict and 'conv1.0.weight' not in state_dict \
            and not any(k.startswith('conv1.') for k in state_dict):
        raise KeyError('not a torchvision/timm ResNet state dict')
    converted = {}
    for key, value in state_dict.items():
        if key.startswith('fc.'):
            continue
        module, _, leaf = key.rpartition('.')
        if model.deep_stem and module in _TIMM_DEEP_STEM:
            key = f'{_TIMM_DEEP_STEM[module]}.{leaf}'
        parts = key.split('.')
        if (model.avg_down and len(parts) > 3 and parts[2] == 'downsample'
                and parts[0].startswith('layer')
                and model.strides[int(parts[0][5:]) - 1] == 1):
            parts[3] = str(int(parts[3]) - 1)
            key = '.'.join(parts)
        converted[key] = value
    return converted
