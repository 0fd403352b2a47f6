"""The residual block every conv family shares, and a stage of them.

ResNet's ``BasicBlock`` / ``Bottleneck``, RegNet's bottleneck (grouped,
with squeeze-excite), CSPResNet's / CSPResNeXt's bottleneck and DLA's
blocks are :class:`ResidualBlock` with other defaults and width rules;
each family keeps its class names as thin subclasses so its checkpoint
keys stay the same.
"""
from typing import List, Optional, Sequence, Type, Union

from torch import Tensor, nn

from .checkpointing import run_checkpointed
from .checks import check_style
from .drop import drop_path_or_identity
from .factory import act_layer, conv_layer, norm_layer
from .squeeze_excite import SqueezeExcite

#: ``'basic'``: two 3x3 convs; ``'bottleneck'``: 1x1, 3x3, 1x1 convs.
LAYOUTS = ('basic', 'bottleneck')
#: ``out_channels / mid_channels`` of each layout unless a block says.
LAYOUT_EXPANSION = {'basic': 1, 'bottleneck': 4}


class ResidualBlock(nn.Module):
    """Conv-norm layers on a residual branch, the shortcut added, then
    the activation.

    ``layout='bottleneck'``: ``conv1`` 1x1 (in -> mid), ``conv2`` 3x3
    (mid -> mid, grouped, dilated), optional squeeze-excite
    (``se_layer``), ``conv3`` 1x1 (mid -> out). ``layout='basic'``:
    ``conv1`` 3x3 (in -> mid, dilated), ``conv2`` 3x3 (mid -> out). Each
    conv is followed by its norm and, but for the last, the activation.
    The shortcut is ``downsample(x)`` (or ``x``), or what the caller hands
    to :meth:`forward`.

    Children, in state-dict order: ``conv1``, norm 1, ``conv2``, norm 2,
    [``se_layer``], [``conv3``, norm 3], ``relu``, [``downsample``],
    ``drop_path``. Norm names are mmcv's (``bn1``, ``gn2``: the layer's
    abbreviation and index, as mmpretrain's keys) or, with the class
    attribute :attr:`norm_prefix`, that prefix and the index (timm's
    ``bn1`` whatever the norm).

    Args:
        in_channels (int): input channels.
        out_channels (int): output channels.
        expansion (int, optional): ``out_channels / mid_channels`` when
            ``mid_channels`` is not given; default the class attribute
            :attr:`expansion`, else 1 (basic) or 4 (bottleneck). A basic
            block supports only 1.
        stride (int): stride of the block: on the 3x3 conv
            (``style='pytorch'``, and basic blocks) or the first 1x1 conv
            (``'caffe'``).
        dilation (int): dilation of the (first) 3x3 conv.
        downsample (nn.Module, optional): the shortcut's projection.
        style (str): ``'pytorch'`` or ``'caffe'``.
        with_cp (bool): gradient checkpointing of the residual branch.
        conv_cfg (dict, optional): conv layer config.
        norm_cfg (dict): norm layer config. Default: ``dict(type='BN')``.
        act_cfg (dict, optional): activation config (None: identity).
            Default: ReLU, in place.
        drop_path_rate (float): stochastic depth of the residual branch.
        mid_channels (int, optional): middle channels; overrides
            ``expansion``.
        groups (int): groups of the bottleneck's 3x3 conv. Default: 1.
        se_channels (int): squeeze channels of a squeeze-excite gate after
            the bottleneck's 3x3 conv; 0 builds none. Default: 0.
        layout (str, optional): ``'basic'`` or ``'bottleneck'``; default
            the class attribute :attr:`layout`.

    Example:
        >>> import torch
        >>> block = ResidualBlock(64, 64, groups=4, mid_channels=32,
        ...                       se_channels=8, drop_path_rate=0.1)
        >>> names = [name for name, _ in block.named_children()]
        >>> names[:5]
        ['conv1', 'bn1', 'conv2', 'bn2', 'se_layer']
        >>> names[5:]
        ['conv3', 'bn3', 'relu', 'drop_path']
        >>> block.zero_init_last()
        >>> block.bn3.weight.any().item()
        False
        >>> tuple(block.eval()(torch.rand(1, 64, 8, 8)).shape)
        (1, 64, 8, 8)
    """

    #: The layout built when the ``layout`` argument is not given.
    layout: str = 'bottleneck'
    #: Prefix of the norm layers' names; None: mmcv's abbreviation.
    norm_prefix: Optional[str] = None
    #: The default ``expansion`` (what :func:`get_expansion` reads); None:
    #: the layout's (:data:`LAYOUT_EXPANSION`). Instances hold their own.
    expansion: Optional[int] = None

    def __init__(self, in_channels: int, out_channels: int,
                 expansion: Optional[int] = None, stride: int = 1,
                 dilation: int = 1, downsample: Optional[nn.Module] = None,
                 style: str = 'pytorch', with_cp: bool = False,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: Optional[dict] = dict(type='ReLU', inplace=True),
                 drop_path_rate: float = 0.0, *,
                 mid_channels: Optional[int] = None, groups: int = 1,
                 se_channels: int = 0, layout: Optional[str] = None):
        super().__init__()
        self.layout = layout = layout or self.layout
        if layout not in LAYOUTS:
            raise ValueError(f'layout={layout!r}; choose from {LAYOUTS}')
        check_style(style)
        basic = layout == 'basic'
        if expansion is None:
            expansion = type(self).expansion or LAYOUT_EXPANSION[layout]
        name = type(self).__name__
        if basic and (expansion != 1 or groups != 1 or se_channels):
            raise ValueError(
                f'expansion={expansion}, groups={groups}, se_channels='
                f'{se_channels}: {name} (basic layout) supports only 1, 1, 0')
        if mid_channels is None:
            if out_channels % expansion:
                raise ValueError(f'out_channels={out_channels} is not '
                                 f'divisible by expansion={expansion}')
            mid_channels = out_channels // expansion
        self.in_channels, self.out_channels = in_channels, out_channels
        self.expansion = expansion
        self.mid_channels, self.groups = mid_channels, groups
        self.stride, self.dilation, self.style = stride, dilation, style
        self.with_cp = with_cp
        self.conv_cfg, self.norm_cfg = conv_cfg, norm_cfg
        self.se_layer: Optional[nn.Module] = None
        if basic:
            self._add_conv(1, in_channels, mid_channels, 3, stride=stride,
                           padding=dilation, dilation=dilation)
            self._add_conv(2, mid_channels, out_channels, 3, padding=1)
        else:
            first, second = (1, stride) if style == 'pytorch' else (stride, 1)
            self._add_conv(1, in_channels, mid_channels, 1, stride=first)
            self._add_conv(2, mid_channels, mid_channels, 3, stride=second,
                           padding=dilation, dilation=dilation, groups=groups)
            if se_channels:
                self.se_layer = SqueezeExcite(mid_channels, se_channels,
                                              conv_cfg)
            self._add_conv(3, mid_channels, out_channels, 1)
        self.relu = act_layer(act_cfg)
        self.downsample = downsample
        self.drop_path = drop_path_or_identity(drop_path_rate)

    def _add_conv(self, index: int, in_channels: int, out_channels: int,
                  kernel_size: int, **kwargs) -> None:
        """Add ``conv{index}`` (no bias) and its norm layer."""
        self.add_module(f'conv{index}', conv_layer(
            self.conv_cfg, in_channels, out_channels, kernel_size,
            bias=False, **kwargs))
        name, norm = norm_layer(self.norm_cfg, out_channels, index)
        if self.norm_prefix is not None:
            name = f'{self.norm_prefix}{index}'
        setattr(self, f'norm{index}_name', name)
        self.add_module(name, norm)

    @property
    def norm1(self) -> nn.Module:
        """The norm layer after ``conv1``."""
        return getattr(self, self.norm1_name)

    @property
    def norm2(self) -> nn.Module:
        """The norm layer after ``conv2``."""
        return getattr(self, self.norm2_name)

    @property
    def norm3(self) -> nn.Module:
        """The norm layer after ``conv3`` (bottleneck layout only)."""
        return getattr(self, self.norm3_name)

    @property
    def last_norm(self) -> nn.Module:
        """The norm layer at the end of the residual branch."""
        return self.norm2 if self.layout == 'basic' else self.norm3

    def zero_init_last(self) -> None:
        """Zero the last norm's affine parameters, so the block starts as
        its shortcut (Goyal et al., 2017)."""
        for param in (getattr(self.last_norm, 'weight', None),
                      getattr(self.last_norm, 'bias', None)):
            if param is not None:
                nn.init.zeros_(param)

    def _residual(self, x: Tensor, shortcut: Optional[Tensor]) -> Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        if self.layout == 'bottleneck':
            out = self.relu(out)
            if self.se_layer is not None:
                out = self.se_layer(out)
            out = self.norm3(self.conv3(out))
        if shortcut is None:
            shortcut = x if self.downsample is None else self.downsample(x)
        out = self.drop_path(out)
        out += shortcut  # in place: one feature-map allocation less
        return out

    def forward(self, x: Tensor, shortcut: Optional[Tensor] = None
                ) -> Tensor:
        """Run the block; ``shortcut`` replaces ``downsample(x)`` (DLA's
        trees hand it in)."""
        out = run_checkpointed(self._residual, x, shortcut,
                               with_cp=self.with_cp)
        return self.relu(out)


def zero_init_last_blocks(model: nn.Module) -> None:
    """Call ``zero_init_last()`` on every submodule that defines it.

    Example:
        >>> model = nn.Sequential(ResidualBlock(8, 8), ResidualBlock(8, 8))
        >>> zero_init_last_blocks(model)
        >>> model[1].bn3.weight.any().item()
        False
    """
    for module in model.modules():
        if module is not model and callable(
                getattr(module, 'zero_init_last', None)):
            module.zero_init_last()


def get_expansion(block: Type[nn.Module],
                  expansion: Optional[int] = None) -> int:
    """The expansion of a residual block class (mmpretrain's rule).

    ``expansion`` if given; else the block's ``expansion`` attribute; else
    its layout's (:data:`LAYOUT_EXPANSION`: 1 basic, 4 bottleneck).

    Raises:
        TypeError: ``expansion`` is not an int or None, or the block says
            nothing that gives one.
        ValueError: ``expansion`` is not positive.

    Example:
        >>> get_expansion(ResidualBlock), get_expansion(ResidualBlock, 2)
        (4, 2)
        >>> class Wide(nn.Module):
        ...     expansion = 8
        >>> get_expansion(Wide)
        8
    """
    if expansion is None:
        expansion = getattr(block, 'expansion', None)
        if expansion is None and isinstance(block, type) and \
                issubclass(block, ResidualBlock):
            expansion = LAYOUT_EXPANSION[block.layout]
        if expansion is None:
            raise TypeError(f'expansion is not specified for '
                            f'{getattr(block, "__name__", block)!r} (no '
                            f'expansion attribute); give expansion=<int>')
    if isinstance(expansion, bool) or not isinstance(expansion, int):
        raise TypeError(f'expansion={expansion!r} must be an integer or '
                        f'None')
    if expansion < 1:
        raise ValueError(f'expansion={expansion!r} must be a positive int')
    return expansion


class ResLayer(nn.Sequential):
    """A stage: ``num_blocks`` blocks, the first one downsampling
    (mmpretrain's ``ResLayer``: same arguments).

    The shortcut of the first block projects with a 1x1 conv and a norm
    when the stride or the channels change; with ``avg_down`` it pools
    before a stride-1 1x1 conv (ResNet-V1d).

    Args:
        block (type): the block class, called with ``in_channels``,
            ``out_channels``, ``expansion``, ``stride``, ``downsample``,
            ``conv_cfg``, ``norm_cfg``, ``drop_path_rate`` and ``kwargs``.
        num_blocks (int): blocks in the stage.
        in_channels (int): input channels of the stage.
        out_channels (int): output channels of each block.
        expansion (int, optional): the blocks' expansion; default
            :func:`get_expansion` of ``block``.
        stride (int): stride of the first block. Default: 1.
        avg_down (bool): average-pool, then a stride-1 1x1 conv, in the
            first block's shortcut. Default: False.
        conv_cfg (dict, optional): conv layer config.
        norm_cfg (dict): norm layer config. Default: ``dict(type='BN')``.
        drop_path_rate (float | Sequence[float]): stochastic depth, one
            rate for all blocks or one per block. Default: 0.
        **kwargs: passed to every block (``dilation``, ``style``, ...).

    Attributes:
        block (type): the block class.
        expansion (int): the blocks' expansion.

    Example:
        >>> import torch
        >>> stage = ResLayer(ResidualBlock, 2, 16, 32, stride=2)
        >>> stage.expansion, stage[0].mid_channels, stage[0].stride
        (4, 8, 2)
        >>> tuple(stage(torch.rand(1, 16, 8, 8)).shape)
        (1, 32, 4, 4)
    """

    def __init__(self, block: Type[nn.Module], num_blocks: int,
                 in_channels: int, out_channels: int,
                 expansion: Optional[int] = None, stride: int = 1,
                 avg_down: bool = False, conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN'),
                 drop_path_rate: Union[float, Sequence[float]] = 0.0,
                 **kwargs):
        expansion = get_expansion(block, expansion)
        if isinstance(drop_path_rate, (int, float)):
            rates = [float(drop_path_rate)] * num_blocks
        else:
            rates = list(drop_path_rate)
        if len(rates) != num_blocks:
            raise ValueError(f'drop_path_rate={drop_path_rate!r} gives '
                             f'{len(rates)} rates for num_blocks='
                             f'{num_blocks}; give one rate or one per block')
        downsample = None
        if stride != 1 or in_channels != out_channels:
            layers: List[nn.Module] = []
            conv_stride = stride
            if avg_down and stride != 1:
                conv_stride = 1
                layers.append(nn.AvgPool2d(stride, stride, ceil_mode=True,
                                           count_include_pad=False))
            layers += [
                conv_layer(conv_cfg, in_channels, out_channels, 1,
                           stride=conv_stride, bias=False),
                norm_layer(norm_cfg, out_channels)[1]
            ]
            downsample = nn.Sequential(*layers)
        blocks = []
        for i in range(num_blocks):
            blocks.append(block(
                in_channels=in_channels if i == 0 else out_channels,
                out_channels=out_channels, expansion=expansion,
                stride=stride if i == 0 else 1,
                downsample=downsample if i == 0 else None,
                conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                drop_path_rate=rates[i], **kwargs))
        super().__init__(*blocks)
        self.block, self.expansion = block, expansion
