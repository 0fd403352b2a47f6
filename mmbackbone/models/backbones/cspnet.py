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
import inspect
import math
from typing import (Any, Callable, Dict, List, Mapping, Optional,
                    Sequence, Tuple, Union)

from torch import Tensor, nn

from mmbackbone.checkpoint.convert import register_converter
from mmbackbone.registry import MODELS
from ..layers import (check_layer_cfgs, check_positive_ints, check_rate,
                      conv_module, drop_path_rates)
# the blocks keep their mmpretrain home: importable from this module
from ..layers.csp_layer import (BLOCKS, STEMS, CSPArch, CSPStage,  # noqa
                                DarknetBottleneck, ResNetBottleneck,
                                ResNeXtBottleneck)
from .base_backbone import BaseBackbone

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
        check_positive_ints(in_channels=in_channels)
        check_rate('drop_path_rate', drop_path_rate)
        if deep_stem and spec.stem != 'resnet':
            raise ValueError(f'deep_stem=True needs the resnet stem; this '
                             f'arch has stem={spec.stem!r}')
        # validate the layer configs once, with errors naming the argument
        check_layer_cfgs(norm_cfg=norm_cfg, act_cfg=act_cfg,
                         conv_cfg=conv_cfg)
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
        rates = drop_path_rates(drop_path_rate, spec.num_blocks)
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
                    block_dpr=rates[i], block_args=spec.block_args[i],
                    conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg,
                    with_cp=with_cp))
            except (ValueError, TypeError) as err:  # a custom arch row
                raise type(err)(
                    f'arch stage {i} (block={spec.block!r}, in_channels='
                    f'{spec.in_channels[i]}, out_channels='
                    f'{spec.out_channels[i]}, block_args='
                    f'{spec.block_args[i]!r}) cannot be built: {err}'
                ) from err
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


def depth_indexed_init(defaults: Mapping[str, Any],
                       without: Sequence[str] = ()) -> Callable:
    """The ``__init__`` of a registered CSP type: ``depth`` (or ``arch``)
    picks a row of the type's ``arch_settings``; the other arguments are
    :class:`CSPNet`'s, with ``defaults`` in place of its defaults and
    ``without`` left out.

    The signature is derived from :class:`CSPNet`'s, not restated, and
    set as ``__signature__``, so ``inspect.signature`` (``mmbackbone info
    CSPDarkNet --help``, Hydra, argument checks) lists every argument with
    this type's default; calls bind to it as to a written-out signature.
    """
    Parameter = inspect.Parameter
    params = [Parameter('self', Parameter.POSITIONAL_OR_KEYWORD),
              Parameter('depth', Parameter.POSITIONAL_OR_KEYWORD,
                        default=None, annotation=Union[int, str, None])]
    for name, param in inspect.signature(CSPNet).parameters.items():
        if name == 'pretrained':
            params.append(Parameter(
                'arch', Parameter.POSITIONAL_OR_KEYWORD, default=None,
                annotation=Union[int, str, dict, None]))
        if name != 'arch' and name not in without:
            params.append(param.replace(
                default=defaults.get(name, param.default)))
    signature = inspect.Signature(params)

    def __init__(self, *args, **kwargs):
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as err:
            raise TypeError(f'{type(self).__name__}: {err}') from None
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        del arguments['self']
        depth, row = self.resolve_depth(arguments.pop('depth'),
                                        arguments.pop('arch'))
        CSPNet.__init__(self, row, **arguments)
        self.depth = depth

    __init__.__signature__ = signature
    __init__.__annotations__ = {
        name: param.annotation for name, param in
        signature.parameters.items() if name != 'self'}
    return __init__


@MODELS.register_module()
class CSPDarkNet(CSPNet):
    """CSP-DarkNet-53, the YOLOv4 backbone (mmpretrain-compatible).

    Arguments are :class:`CSPNet`'s but ``arch`` and ``deep_stem``, plus
    ``depth``; the defaults differ where listed.

    Args:
        depth (int | str): 53 (the default; ``'cspdarknet53'`` works).
        out_indices (int | Sequence[int]): stages to output (0 to 4).
            Default: ``(4, )``.
        init_cfg (dict | list, optional): mmengine init config; the default
            is mmpretrain's Kaiming-uniform for leaky ReLU.
        arch (int | str | dict, optional): alias of ``depth``, or a dict
            overriding fields of the CSPDarkNet-53 row.

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
    __init__ = depth_indexed_init(
        dict(out_indices=(4, ),
             init_cfg=dict(type='Kaiming', layer='Conv2d', a=math.sqrt(5),
                           distribution='uniform', mode='fan_in',
                           nonlinearity='leaky_relu')),
        without=('deep_stem', ))


@MODELS.register_module()
class CSPResNet(CSPNet):
    """CSP-ResNet-50 (mmpretrain-compatible).

    Arguments are :class:`CSPNet`'s but ``arch``, plus ``depth``; the
    defaults differ where listed.

    Args:
        depth (int | str): 50 (the default; ``'cspresnet50'`` works).
        out_indices (int | Sequence[int]): stages to output (0 to 3).
            Default: ``(3, )``.
        arch (int | str | dict, optional): alias of ``depth``, or a dict
            overriding fields of the default row.

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
    __init__ = depth_indexed_init(dict(out_indices=(3, )))


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
