"""The contract every backbone of mmbackbone follows.

A family declares its stages as data, one :class:`StageInfo` per stage
(channels, stride, the modules that form it), with
:meth:`BaseBackbone._setup_stages`, builds those modules, and ends its
``__init__`` with :meth:`BaseBackbone._finish_init`. The base class then
owns ``out_indices``, ``frozen_stages``, ``norm_eval``, the output
metadata, ``train()``, the stem-then-stages ``forward``, pretrained loading
and the flat parameter helpers.

Example:
    >>> import torch
    >>> from torch import nn
    >>> class TwoStageNet(BaseBackbone):
    ...     def __init__(self, out_indices=(0, 1), frozen_stages=-1,
    ...                  norm_eval=False, init_cfg=None):
    ...         super().__init__(init_cfg)
    ...         self._setup_stages(
    ...             [StageInfo(8, 2, ('layer1', )),
    ...              StageInfo(16, 4, ('layer2', ))],
    ...             stem=('stem', ), out_indices=out_indices,
    ...             frozen_stages=frozen_stages, norm_eval=norm_eval)
    ...         self.stem = nn.Conv2d(3, 8, 3, padding=1)
    ...         self.layer1 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
    ...         self.layer2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
    ...         self._finish_init()
    >>> model = TwoStageNet(frozen_stages=1)
    >>> [tuple(out.shape) for out in model(torch.rand(1, 3, 16, 16))]
    [(1, 8, 8, 8), (1, 16, 4, 4)]
    >>> model.out_channels, model.out_strides
    ((8, 16), (2, 4))
    >>> model.layer1.weight.requires_grad, model.layer2.weight.requires_grad
    (False, True)
"""
import copy
import inspect
from dataclasses import dataclass
from typing import (Any, ClassVar, Dict, List, Optional, Sequence, Tuple,
                    Union)

import torch
from torch import Tensor, nn

from mmbackbone.utils import (BaseModule, normalize_frozen_stages,
                              normalize_out_indices)
from ..init_cfg import PretrainedRoutingMixin, plan_init_cfg

#: Norm layers that ``norm_eval`` and freezing put in eval mode.
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)

FreezablePart = Union[nn.Module, nn.Parameter]
Stride = Union[int, Tuple[int, int], None]


def bind_arguments(signature: 'inspect.Signature', module: nn.Module,
                   args: tuple, kwargs: dict) -> Dict[str, Any]:
    """Bind a derived constructor signature (one that restates no
    arguments of the base class it comes from) and return the arguments,
    defaults applied, ``self`` left out; a wrong call names the class.

    Example:
        >>> import inspect
        >>> def f(self, depth=18, out_indices=(3, )): ...
        >>> bind_arguments(inspect.signature(f), nn.Identity(), (50, ), {})
        {'depth': 50, 'out_indices': (3,)}
    """
    try:
        bound = signature.bind(module, *args, **kwargs)
    except TypeError as err:
        raise TypeError(f'{type(module).__name__}: {err}') from None
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    arguments.pop(next(iter(signature.parameters)))
    return arguments


@dataclass(frozen=True)
class StageInfo:
    """One stage of a backbone: what freezing, forward and the output
    metadata derive from (timm's ``feature_info``, detectron2's
    ``ShapeSpec``).

    Attributes:
        channels: channels of the stage's output.
        stride: its stride from the input; None where the output is not
            a map (a class token, a pooled vector).
        modules: attribute names (dotted for children, ``'layers.0'``) of
            the modules or parameters that form the stage: ``frozen_stages``
            freezes them, and the default :meth:`BaseBackbone.forward` runs
            them in this order.

    Example:
        >>> StageInfo(256, 4, ('layer1', )).modules
        ('layer1',)
    """
    channels: int
    stride: Stride
    modules: Tuple[str, ...]

    def __post_init__(self):
        if isinstance(self.channels, bool) or \
                not isinstance(self.channels, int) or self.channels < 1:
            raise ValueError(f'StageInfo channels={self.channels!r} must be '
                             f'a positive int')
        if isinstance(self.modules, str) or not all(
                isinstance(name, str) and name for name in self.modules):
            raise TypeError(f'StageInfo modules={self.modules!r} must be a '
                            f'tuple of attribute names')
        object.__setattr__(self, 'modules', tuple(self.modules))


class BaseBackbone(PretrainedRoutingMixin, BaseModule):
    """Base class of all backbones: the knobs shared by every family.

    A family declares its stem and stages with :meth:`_setup_stages`
    (one :class:`StageInfo` each), builds them and calls
    :meth:`_finish_init` last; :meth:`stage_parts`, :meth:`forward` and
    the metadata derive from the stages. A family whose stages are not a
    plain chain overrides :meth:`forward_stem` / :meth:`forward_stage` or
    :meth:`forward` (returning one tensor per ``out_indices``, in the order
    given). Families that predate stage records call :meth:`_setup_outputs`
    and implement :meth:`stage_parts` and :meth:`forward` themselves.

    Attributes:
        out_indices (tuple[int]): the stages returned, non-negative.
        frozen_stages (int | str): as given (``'all'`` kept as is).
        norm_eval (bool): keep norm layers in eval mode in training.
        out_channels (tuple[int]): channels of each output.
        out_strides (tuple[int | None]): stride of each output.
        out_features (int): channels of the last output.
    """

    #: Named configs of this type that the zoo test, the demo table and
    #: the docs walk: ``{arch name: constructor kwargs}``.
    zoo_configs: Dict[str, dict] = {}
    #: Other names of an arch: ``{alias: canonical name}``. The canonical
    #: name is the one the weights index uses (``'deit-b': 'deit-base'``).
    arch_aliases: ClassVar[Dict[str, str]] = {}

    def __init__(self, init_cfg=None):
        super().__init__(init_cfg=copy.deepcopy(init_cfg))
        self.stage_info: Tuple[StageInfo, ...] = ()
        self.stem_modules: Tuple[str, ...] = ()
        self.stage_channels: Tuple[int, ...] = ()
        self.stage_strides: Tuple[Optional[int], ...] = ()
        self.out_indices: Tuple[int, ...] = ()
        self.frozen_stages: Union[int, str] = -1
        self.norm_eval = False

    # ------------------------------------------------------------ set-up
    def _setup_stages(self, stages: Sequence[StageInfo],
                      stem: Sequence[str] = ('stem', ),
                      out_indices: Union[int, Sequence[int]] = -1,
                      frozen_stages: Union[int, str] = -1,
                      norm_eval: bool = False) -> None:
        """Declare the stem and the stages, and validate the shared knobs.

        Call it from ``__init__``, before or after building the modules
        it names (before fails fast on bad arguments); names are looked up
        when used, and :meth:`_finish_init` checks that each exists.

        Args:
            stages: one record per stage, in forward order.
            stem: names of the modules (or parameters) before the first
                stage; ``frozen_stages=0`` freezes them and the default
                forward runs them in order.
            out_indices: the stages to output; negatives count from the
                last.
            frozen_stages: -1 nothing, 0 the stem, k also stages 1..k, or
                ``'all'``.
            norm_eval: keep norm layers in eval mode in training.
        """
        stages = tuple(stages)
        if not stages or not all(isinstance(s, StageInfo) for s in stages):
            raise TypeError(f'stages={stages!r} must be StageInfo records, '
                            f'one per stage')
        if isinstance(stem, str):
            raise TypeError(f'stem={stem!r} must be a tuple of attribute '
                            f'names')
        self.stage_info, self.stem_modules = stages, tuple(stem)
        self._setup_outputs([s.channels for s in stages],
                            [s.stride for s in stages], out_indices,
                            frozen_stages, norm_eval)

    def _setup_outputs(self, stage_channels: Sequence[int],
                       stage_strides: Sequence[Optional[int]],
                       out_indices, frozen_stages=-1,
                       norm_eval: bool = False) -> None:
        """Record stage metadata and validate the shared knobs (families
        without :class:`StageInfo` records; prefer :meth:`_setup_stages`).

        Call it from ``__init__``; it may run before the layers exist (to
        fail fast on bad arguments) and :meth:`_freeze_stages` once they do.
        """
        if len(stage_channels) != len(stage_strides):
            raise ValueError('stage_channels and stage_strides differ in '
                             'length')
        self.stage_channels = tuple(int(c) for c in stage_channels)
        self.stage_strides = tuple(stage_strides)
        num_stages = len(self.stage_channels)
        self.out_indices = normalize_out_indices(out_indices, num_stages)
        normalize_frozen_stages(frozen_stages, num_stages)
        self.frozen_stages = frozen_stages
        if not isinstance(norm_eval, bool):
            raise TypeError(f'norm_eval={norm_eval!r} must be True or False')
        self.norm_eval = norm_eval

    @property
    def num_stages(self) -> int:
        """How many stages ``out_indices`` can pick from."""
        return len(self.stage_channels)

    @property
    def out_channels(self) -> Tuple[int, ...]:
        """Channels of each output, in ``out_indices`` order."""
        return tuple(self.stage_channels[i] for i in self.out_indices)

    @property
    def out_strides(self) -> Tuple[Optional[int], ...]:
        """Stride of each output, in ``out_indices`` order."""
        return tuple(self.stage_strides[i] for i in self.out_indices)

    @property
    def out_features(self) -> int:
        """Channels of the last output: what a classification head takes."""
        return self.out_channels[-1]

    # --------------------------------------------------------- freezing
    def _part(self, name: str) -> FreezablePart:
        """The module or parameter a :class:`StageInfo` name points at."""
        part: Any = self
        for attr in name.split('.'):
            part = getattr(part, attr, None)
            if part is None:
                raise AttributeError(
                    f'{type(self).__name__}: stage part {name!r} does not '
                    f'exist; build it before _finish_init()')
        if not isinstance(part, (nn.Module, nn.Parameter)):
            raise TypeError(f'{type(self).__name__}: stage part {name!r} '
                            f'is a {type(part).__name__}, not a module or '
                            f'a parameter')
        return part

    def stage_parts(self) -> List[List[FreezablePart]]:
        """Modules / parameters of the stem (index 0) and of each stage.

        ``frozen_stages=k`` freezes entries ``0..k``. Derived from the
        :class:`StageInfo` records; families without them override it.
        """
        if not self.stage_info:
            raise NotImplementedError(
                f'{type(self).__name__} declares no stages: call '
                f'_setup_stages() or define stage_parts()')
        names = [self.stem_modules] + [s.modules for s in self.stage_info]
        return [[self._part(name) for name in group] for group in names]

    def _freeze_stages(self) -> None:
        """Apply ``frozen_stages``: no grad, eval mode."""
        if self.frozen_stages == 'all':
            parts: List[FreezablePart] = [self]
        elif self.frozen_stages < 0:
            return
        else:
            parts = [p for stage in self.stage_parts()[:self.frozen_stages + 1]
                     for p in stage]
        for part in parts:
            if isinstance(part, nn.Parameter):
                part.requires_grad_(False)
                continue
            for module in part.modules():  # not .eval(): it would recurse
                module.training = False
            for param in part.parameters():
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> 'BaseBackbone':
        """Set the training mode, keeping frozen parts and norms in eval.

        Returns:
            BaseBackbone: ``self``, so ``model.eval()`` chains.
        """
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, NORM_TYPES):
                    module.eval()
        return self

    # ------------------------------------------------ layer-wise lr decay
    def get_layer_depth(self, param_name: str, prefix: str = ''
                        ) -> Tuple[int, int]:
        """Depth of a parameter for layer-wise learning-rate decay.

        mmpretrain's convention, from the stage records: the stem is depth
        0, stage ``i`` depth ``i + 1``, and everything else (parameters
        after the last stage, names not under ``prefix``) the last depth,
        ``num_stages + 1``. Families whose depth is finer than a stage
        (a ViT's blocks) override it.

        Args:
            param_name: a parameter name, as the model holding this
                backbone names it (``'backbone.layer1.0.conv1.weight'``).
            prefix: where this backbone's names start in ``param_name``
                (``'backbone.'``); names outside it get the last depth.

        Returns:
            tuple[int, int]: ``(layer_id, num_layers)``, ``0 <= layer_id <
            num_layers``.

        Example:
            >>> from mmbackbone.models import ResNet
            >>> model = ResNet(depth=18)
            >>> model.get_layer_depth('backbone.conv1.weight', 'backbone.')
            (0, 6)
            >>> model.get_layer_depth('layer2.0.conv1.weight')
            (2, 6)
            >>> model.get_layer_depth('head.fc.weight', 'backbone.')
            (5, 6)
        """
        if not self.stage_info:
            raise NotImplementedError(
                f'{type(self).__name__} declares no stages: call '
                f'_setup_stages() or define get_layer_depth()')
        num_layers = len(self.stage_info) + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        name = param_name[len(prefix):]
        depths = self.__dict__.get('_layer_depths')
        if depths is None or name not in depths:
            depths = self._stage_layer_depths(num_layers - 1)
            self.__dict__['_layer_depths'] = depths
        return depths.get(name, num_layers - 1), num_layers

    def _stage_layer_depths(self, last: int) -> Dict[str, int]:
        """Depth of every parameter name: 0 in the stem, ``i + 1`` in
        stage ``i`` (by identity, so a part named through a property, like
        ResNet's ``norm1``, counts), ``last`` elsewhere."""
        owner: Dict[int, int] = {}
        groups = [self.stem_modules] + [s.modules for s in self.stage_info]
        for depth, group in enumerate(groups):
            for part_name in group:
                part = self._part(part_name)
                params = ([part] if isinstance(part, nn.Parameter) else
                          part.parameters())
                for param in params:
                    owner.setdefault(id(param), depth)
        return {name: owner.get(id(param), last)
                for name, param in self.named_parameters()}

    # ----------------------------------------------------- initialisation
    # init_weights (PretrainedRoutingMixin): every init_cfg entry that loads
    # weights, whatever its spelling ('Pretrained', 'mmengine.Pretrained',
    # PretrainedInit, inside override=...), goes through
    # mmbackbone.checkpoint.load_pretrained (safe unpickling, key
    # conversion, shape checks, one summary log line), whichever registry
    # scope built the model; see mmbackbone.models.init_cfg.

    def adapt_state_dict(self, state_dict):
        """Adapt checkpoint tensors the model knows how to fit.

        The base class adapts the first conv to other input channels
        (``in_channels != 3``). Families add their own (ViT resizes
        ``pos_embed``) and call this one.

        Returns:
            tuple: the state dict and a list describing each adaptation.
        """
        from mmbackbone.checkpoint.loader import adapt_input_conv
        key = next((name for name, param in self.named_parameters()
                    if param.ndim == 4), None)
        if key is None or key not in state_dict:
            return state_dict, []
        weight, want = state_dict[key], self.state_dict()[key]
        if (weight.ndim != 4 or weight.shape[1] == want.shape[1]
                or weight.shape[0] != want.shape[0]
                or weight.shape[2:] != want.shape[2:]):
            return state_dict, []
        state_dict = dict(state_dict)
        state_dict[key] = adapt_input_conv(weight, want.shape[1])
        return state_dict, [f'{key}: {weight.shape[1]} -> {want.shape[1]} '
                            f'input channels']

    @classmethod
    def canonical_arch(cls, arch: str) -> str:
        """The canonical name of an arch name (itself unless an alias).

        Example:
            >>> from mmbackbone.models import VisionTransformer
            >>> VisionTransformer.canonical_arch('deit-b')
            'deit-base'
        """
        return cls.arch_aliases.get(arch, arch)

    def _finish_init(self, pretrained: Union[bool, str, None] = False,
                     arch: Union[str, Sequence[str], None] = None) -> None:
        """Call last in ``__init__``: freeze, set the train-mode state,
        then load indexed weights.

        Checks that every declared stage part exists, applies
        ``frozen_stages`` and ``norm_eval`` (through :meth:`train`, so the
        model starts as it will be after every ``train()``), then loads the
        weights ``pretrained`` names (:meth:`_setup_pretrained`); loading
        only copies values, so what is frozen stays frozen.

        Args:
            pretrained: ``True`` for the index's default of ``arch``, a
                weights name, or False / None for none.
            arch: the arch's name (an alias is mapped through
                :attr:`arch_aliases`); None for a custom arch, which has
                no indexed weights.
        """
        if self.stage_info:
            self.stage_parts()  # every named part exists
        self.train(self.training)
        self._setup_pretrained(pretrained, arch)

    def _setup_pretrained(self, pretrained,
                          arch: Union[str, Sequence[str], None]) -> None:
        """Load indexed weights now for ``pretrained=True`` or a name.

        ``arch`` is the arch's name (aliases map to their canonical name
        through :attr:`arch_aliases`); families not yet calling
        :meth:`_finish_init` call this last in ``__init__``. The weights
        index gives the URL, hash, prefix and source format; the file is
        then loaded like any ``init_cfg=dict(type='Pretrained',
        checkpoint=...)``.
        """
        if pretrained is False or pretrained is None:
            return
        from mmbackbone.zoo import weights_for
        type_name = type(self).__name__
        if arch is None:
            raise ValueError(
                f'pretrained={pretrained!r}: {type_name} with a custom arch '
                f'has no indexed weights; give a named arch, or load a file '
                f"with init_cfg=dict(type='Pretrained', checkpoint=...)")
        if isinstance(arch, str):
            arch = self.canonical_arch(arch)
        else:
            arch = [self.canonical_arch(name) for name in arch]
        entry = weights_for(type_name, arch, pretrained)
        given = plan_init_cfg(self.init_cfg, type(self).__name__).loads
        if given:
            raise ValueError(f'pretrained={pretrained!r} and '
                             f'{given[0].where}={self.init_cfg!r} both name '
                             f'weights; give one')
        self.init_cfg = dict(type='Pretrained',
                             checkpoint=f'mmbackbone://{entry.name}',
                             prefix=entry.prefix)
        self.init_weights()

    def _init_after_random(self) -> None:
        """Hook run after random initialisation (not after loading)."""

    def _dump_init_info(self) -> None:
        """Skip mmengine's per-parameter init log (one line per tensor);
        loading reports one summary line instead."""

    # --------------------------------------------- flat parameter helpers
    def get_params(self) -> Tensor:
        """All parameters as one flat tensor (a copy)."""
        return torch.cat([p.detach().reshape(-1) for p in self.parameters()])

    def set_params(self, new_params: Tensor) -> None:
        """Copy a flat tensor made by :meth:`get_params` into the model."""
        self._scatter(new_params, 'set_params', grads=False)

    def get_grads(self) -> Tensor:
        """All gradients as one flat tensor (zeros where none exists)."""
        return torch.cat([
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
            for p in self.parameters()
        ])

    def set_grads(self, new_grads: Tensor) -> None:
        """Copy a flat tensor made by :meth:`get_grads` into the grads."""
        self._scatter(new_grads, 'set_grads', grads=True)

    def _scatter(self, flat: Tensor, name: str, grads: bool) -> None:
        total = sum(p.numel() for p in self.parameters())
        if not isinstance(flat, Tensor) or flat.numel() != total:
            got = flat.numel() if isinstance(flat, Tensor) else type(flat)
            raise ValueError(f'{name}() needs a flat tensor of {total} '
                             f'elements (the parameter count); got {got}')
        flat = flat.reshape(-1)
        offset = 0
        with torch.no_grad():
            for param in self.parameters():
                chunk = flat[offset:offset + param.numel()].view_as(param)
                if grads:
                    param.grad = chunk.clone().to(param)
                else:
                    param.copy_(chunk)
                offset += param.numel()

    # ------------------------------------------------------------ forward
    def forward_stem(self, x: Tensor) -> Tensor:
        """Run the stem modules in order (override for another stem)."""
        for name in self.stem_modules:
            x = self._part(name)(x)
        return x

    def forward_stage(self, index: int, x: Tensor) -> Tensor:
        """Run stage ``index``'s modules in order."""
        for name in self.stage_info[index].modules:
            x = self._part(name)(x)
        return x

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """The stem, then the stages up to the last one ``out_indices``
        needs; one output per ``out_indices``, in the order given."""
        if not self.stage_info:
            raise NotImplementedError(
                f'{type(self).__name__} declares no stages: call '
                f'_setup_stages() or define forward()')
        x = self.forward_stem(x)
        outs = []
        for index in range(self.last_needed_stage + 1):
            x = self.forward_stage(index, x)
            outs.append(x)
        return self._select_outputs(outs)

    def _select_outputs(self, stage_outputs: Sequence[Tensor]
                        ) -> Tuple[Tensor, ...]:
        """Pick ``out_indices`` from the list of every stage's output."""
        return tuple(stage_outputs[i] for i in self.out_indices)

    @property
    def last_needed_stage(self) -> int:
        """Index of the deepest stage any output needs (skip the rest)."""
        return max(self.out_indices)
