"""Cross Stage Partial networks (Wang et al., 2019,
https://arxiv.org/abs/1911.11929; the stage is in
:mod:`mmbackbone.models.layers.csp_layer`): CSPNet and its depth-indexed
CSPDarkNet, CSPResNet, CSPResNeXt.

One configurable implementation (:class:`CSPNet`) is driven by an arch
table of frozen dataclass rows (:data:`CSP_ARCHS`); the other classes
only pick a row from ``depth`` and change defaults. Constructor arguments
and state-dict keys follow mmpretrain 1.2 (``atfer_blocks_conv`` typo
included), so its checkpoints load with ``strict=True``; timm's
``cspdarknet53`` / ``cspresnet50`` / ``cspresnext50`` checkpoints are
converted on load.
"""
import inspect
import math
from typing import (Any, Callable, Dict, List, Mapping, Optional,
                    Sequence, Tuple, Union)

from torch import nn

from mmbackbone.checkpoint.convert import register_converter
from mmbackbone.registry import MODELS
from mmbackbone.utils import normalize_out_indices
from ..layers import (check_layer_cfgs, check_positive_ints, check_rate,
                      drop_path_rates)
# the blocks keep their mmpretrain home: importable from this module
from ..layers.csp_layer import (BLOCKS, STEMS, CSPArch, CSPStage,  # noqa
                                DarknetBottleneck, ResNetBottleneck,
                                ResNeXtBottleneck, build_stem,
                                stem_stride)
from .base_backbone import (BaseBackbone, FreezablePart, StageInfo,
                            bind_arguments)

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

def make_arch(arch: Union[str, Mapping, CSPArch],
              base: Optional[CSPArch] = None,
              custom_stem: bool = False) -> CSPArch:
    """Turn ``arch`` into a :class:`CSPArch` row.

    Args:
        arch: a name in :data:`CSP_ARCHS`, a row, or a dict of row fields
            (``block_fn``, one block class or one per stage, is accepted
            for ``block``). With ``base``, the dict only overrides fields
            of that row.
        base: the row a partial dict starts from.
        custom_stem: a ``stem_fn`` builds the stem, so a dict needs no
            ``stem`` (mmpretrain's arch dicts have none).

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
                        f'{CSPArch.field_names()}')
    return CSPArch.from_dict(arch, base=base, custom_stem=custom_stem)


def _check_frozen_stages(frozen_stages, num_stages: int) -> None:
    """mmpretrain's CSP numbering: ``k`` freezes the stem and stages
    ``0..k``, so ``k`` runs up to ``num_stages - 1``."""
    valid = (f"valid values are -1 (nothing), 0..{num_stages - 1} (the "
             f"stem and stages[0..k]) or 'all'")
    if frozen_stages == 'all':
        return
    if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int):
        raise TypeError(f'frozen_stages={frozen_stages!r} must be an int; '
                        f'{valid}')
    if not -1 <= frozen_stages < num_stages:
        raise ValueError(f'frozen_stages={frozen_stages} is out of range; '
                         f'{valid}')


# ------------------------------------------------------------------ model
@MODELS.register_module()
class CSPNet(BaseBackbone):
    """The configurable CSP network the depth-indexed classes are built on
    (mmpretrain's ``CSPNet``: an arch dict and a ``stem_fn``).

    Args:
        arch (str | dict | CSPArch): a name in :data:`CSP_ARCHS`
            (``'cspdarknet53'``, ``'cspresnet50'``, ``'cspresnext50'``) or
            a dict of :class:`CSPArch` fields; ``block_fn`` (a block class,
            or one per stage) and ``block_args`` (one dict, or one per
            stage) as in mmpretrain.
        stem_fn (callable, optional): builds the stem from the input
            channels, ``stem_fn(in_channels)``; its output channels must be
            ``arch['in_channels'][0]``. The strides of a custom stem are
            unknown, so ``out_strides`` are None. Default: the arch row's
            ``stem``.
        in_channels (int): input image channels. Default: 3.
        out_indices (int | Sequence[int]): stages to output; negative
            indices count from the last. Default: -1.
        frozen_stages (int | str): as mmpretrain's CSP networks: -1
            nothing, k the stem and stages ``0..k`` (``self.stages[:k + 1]``),
            ``'all'`` everything.
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
        >>> from functools import partial
        >>> import torch
        >>> from mmbackbone.models import CSPNet
        >>> from mmbackbone.models.backbones.cspnet import ResNetBottleneck
        >>> arch = dict(block_fn=ResNetBottleneck, in_channels=[32, 64],
        ...             out_channels=[64, 128], num_blocks=[3, 4])
        >>> stem_fn = partial(torch.nn.Conv2d, out_channels=32, kernel_size=3)
        >>> model = CSPNet(arch, stem_fn, out_indices=(0, 1)).eval()
        >>> [tuple(out.shape) for out in model(torch.rand(1, 3, 34, 34))]
        [(1, 64, 16, 16), (1, 128, 8, 8)]
    """

    #: ``{depth: arch row}`` and ``{depth: arch name}`` (the name the
    #: weights index knows the row by) of a depth-indexed subclass.
    arch_settings: Dict[int, CSPArch] = {}
    depth_archs: Dict[int, str] = {}
    zoo_configs = {name: dict(arch=name) for name in CSP_ARCHS}

    def __init__(self,
                 arch: Union[str, Mapping, CSPArch],
                 stem_fn: Optional[Callable[[int], nn.Module]] = None,
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
        if stem_fn is not None and not callable(stem_fn):
            raise TypeError(f'stem_fn={stem_fn!r} must be a callable that '
                            f'builds the stem from in_channels')
        self.arch = spec = make_arch(arch, custom_stem=stem_fn is not None)
        check_positive_ints(in_channels=in_channels)
        check_rate('drop_path_rate', drop_path_rate)
        if spec.stem is None and stem_fn is None:
            raise ValueError(f'arch={arch!r} names no stem; give stem_fn or '
                             f'an arch stem from {list(STEMS)}')
        if deep_stem and (spec.stem != 'resnet' or stem_fn is not None):
            raise ValueError(f'deep_stem=True needs the resnet stem; this '
                             f'arch has stem={spec.stem!r}' +
                             (' and a stem_fn' if stem_fn else ''))
        normalize_out_indices(out_indices, spec.num_stages)
        _check_frozen_stages(frozen_stages, spec.num_stages)
        # validate the layer configs once, with errors naming the argument
        check_layer_cfgs(norm_cfg=norm_cfg, act_cfg=act_cfg,
                         conv_cfg=conv_cfg)
        self.in_channels, self.deep_stem = in_channels, deep_stem
        self.conv_cfg, self.norm_cfg, self.act_cfg, self.with_cp, \
            self.drop_path_rate = conv_cfg, norm_cfg, act_cfg, with_cp, \
            drop_path_rate

        self._setup_stages(
            [StageInfo(channels, stride, (f'stages.{i}', ))
             for i, (channels, stride) in enumerate(zip(
                 spec.out_channels, self._stage_strides(stem_fn)))],
            stem=('stem', ), out_indices=out_indices,
            frozen_stages=frozen_stages, norm_eval=norm_eval)
        self.stem = (stem_fn(in_channels) if stem_fn is not None
                     else self._make_stem_layer(in_channels))
        rates = drop_path_rates(drop_path_rate, spec.num_blocks)
        stages = []
        for i, block_fn in enumerate(spec.stage_blocks):
            try:
                stages.append(CSPStage(
                    block_fn, spec.in_channels[i], spec.out_channels[i],
                    has_downsampler=spec.has_downsampler[i],
                    down_growth=spec.down_growth[i],
                    expand_ratio=spec.expand_ratio[i],
                    bottle_ratio=spec.bottle_ratio[i],
                    num_blocks=spec.num_blocks[i], block_dpr=rates[i],
                    block_args=spec.block_args[i], conv_cfg=conv_cfg,
                    norm_cfg=norm_cfg, act_cfg=act_cfg, with_cp=with_cp))
            except (ValueError, TypeError) as err:  # a custom arch row
                raise type(err)(
                    f'arch stage {i} (block={block_fn!r}, in_channels='
                    f'{spec.in_channels[i]}, out_channels='
                    f'{spec.out_channels[i]}, block_args='
                    f'{spec.block_args[i]!r}) cannot be built: {err}'
                ) from err
        self.stages = nn.Sequential(*stages)
        self._finish_init(pretrained, arch if isinstance(arch, str) else None)

    def _stage_strides(self, stem_fn) -> List[Optional[int]]:
        """Stride of each stage's output (None after a custom stem)."""
        if stem_fn is not None:
            return [None] * self.arch.num_stages
        stride, strides = stem_stride(self.arch.stem, self.deep_stem), []
        for down in self.arch.has_downsampler:
            stride *= 2 if down else 1
            strides.append(stride)
        return strides

    def _make_stem_layer(self, in_channels: int) -> nn.Module:
        """The arch row's stem, as wide as the first stage's input."""
        return build_stem(self.arch.stem, in_channels,
                          self.arch.in_channels[0], self.deep_stem,
                          conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
                          act_cfg=self.act_cfg)

    def stage_parts(self) -> List[List[FreezablePart]]:
        """mmpretrain's CSP numbering: entry 0 is the stem with
        ``stages[0]``, entry k is ``stages[k]``, so ``frozen_stages=k``
        freezes the stem and stages ``0..k``."""
        stem, first, *rest = super().stage_parts()
        return [stem + first] + rest

    @classmethod
    def resolve_depth(cls, depth, arch) -> Tuple[Optional[int],
                                                 Union[str, CSPArch]]:
        """The depth and arch name (:attr:`depth_archs`) of a
        depth-indexed subclass, or None and the row for a dict ``arch``
        (it overrides fields of the default row). ``arch`` is otherwise an
        alias of ``depth`` (``50``, ``'50'``, ``'cspresnet50'``); with
        neither, the only depth is used."""
        name = cls.__name__
        if isinstance(arch, (Mapping, CSPArch)):
            if depth is None:
                depth = next(iter(cls.arch_settings))
            base = cls.arch_settings[cls.resolve_depth(depth, None)[0]]
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
        depths, names = sorted(cls.arch_settings), sorted(
            cls.depth_archs.values())
        valid = f'depth must be one of {depths} (or arch names {names})'
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise TypeError(f'{arg}={value!r} must be a {name} depth (int) '
                            f'or arch name; {valid}')
        if isinstance(value, str):
            lowered = value.lower()
            by_name = {n: d for d, n in cls.depth_archs.items()}
            value = by_name.get(lowered, int(lowered) if lowered.isdigit()
                                else value)
        if isinstance(value, bool) or value not in cls.arch_settings:
            raise KeyError(f'{arg}={value!r} is not a {name} depth; choose '
                           f'from {depths} (or arch names {names}); {valid}')
        return value, cls.depth_archs[value]


def depth_indexed_init(defaults: Mapping[str, Any],
                       without: Sequence[str] = ()) -> Callable:
    """The ``__init__`` of a depth-indexed CSP type: ``depth`` (or
    ``arch``) picks a row of the type's ``arch_settings``; the other
    arguments are :class:`CSPNet`'s but ``stem_fn`` (the row names the
    stem), with ``defaults`` in place of its defaults and ``without`` left
    out.

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
        if name not in ('arch', 'stem_fn', *without):
            params.append(param.replace(
                default=defaults.get(name, param.default)))
    signature = inspect.Signature(params)

    def __init__(self, *args, **kwargs):
        arguments = bind_arguments(signature, self, args, kwargs)
        depth, arch = self.resolve_depth(arguments.pop('depth'),
                                         arguments.pop('arch'))
        CSPNet.__init__(self, arch, **arguments)
        self.depth = depth

    __init__.__signature__ = signature
    __init__.__annotations__ = {
        name: param.annotation for name, param in
        signature.parameters.items() if name != 'self'}
    return __init__


@MODELS.register_module()
class CSPDarkNet(CSPNet):
    """CSP-DarkNet-53, the YOLOv4 backbone (mmpretrain-compatible).

    Arguments are :class:`CSPNet`'s but ``arch``, ``stem_fn`` and
    ``deep_stem``, plus ``depth``; the defaults differ where listed.

    Args:
        depth (int | str): 53 (the default; ``'cspdarknet53'`` works).
        out_indices (int | Sequence[int]): stages to output (0 to 4).
            Default: ``(4, )``.
        init_cfg (dict | list, optional): mmengine init config; the default
            is mmpretrain's Kaiming-uniform for leaky ReLU.
        arch (int | str | dict, optional): alias of ``depth``, or a dict
            overriding fields of the CSPDarkNet-53 row.

    Example:
        >>> from mmbackbone.models import CSPDarkNet
        >>> model = CSPDarkNet(depth=53, out_indices=(0, 1, 2, 3, 4))
        >>> model.out_channels
        (64, 128, 256, 512, 1024)
        >>> model.out_strides
        (2, 4, 8, 16, 32)
    """

    arch_settings = {53: CSP_ARCHS['cspdarknet53']}
    depth_archs = {53: 'cspdarknet53'}
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

    Arguments are :class:`CSPNet`'s but ``arch`` and ``stem_fn``, plus
    ``depth``; the defaults differ where listed.

    Args:
        depth (int | str): 50 (the default; ``'cspresnet50'`` works).
        out_indices (int | Sequence[int]): stages to output (0 to 3).
            Default: ``(3, )``.
        arch (int | str | dict, optional): alias of ``depth``, or a dict
            overriding fields of the default row.

    Example:
        >>> import torch
        >>> from mmbackbone.models import CSPResNet
        >>> model = CSPResNet(depth=50, deep_stem=True).eval()
        >>> model.out_strides
        (16,)
        >>> tuple(model(torch.rand(1, 3, 64, 64))[0].shape)
        (1, 1024, 4, 4)
    """

    arch_settings = {50: CSP_ARCHS['cspresnet50']}
    depth_archs = {50: 'cspresnet50'}
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
        >>> outs = model(torch.rand(1, 3, 64, 64))
        >>> [out.shape[-1] for out in outs]
        [8, 4, 2]
    """

    arch_settings = {50: CSP_ARCHS['cspresnext50']}
    depth_archs = {50: 'cspresnext50'}
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
