"""The contract every backbone of mmbackbone follows.

A family builds its layers, then calls :meth:`BaseBackbone._setup_outputs`
with the channels and strides of each stage. The base class then owns
``out_indices``, ``frozen_stages``, ``norm_eval``, the output metadata,
``train()``, pretrained loading and the flat parameter helpers.
"""
import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.model import BaseModule
from torch import Tensor, nn

from mmbackbone.utils import normalize_frozen_stages, normalize_out_indices
from ..init_cfg import PretrainedRoutingMixin, plan_init_cfg

#: Norm layers that ``norm_eval`` and freezing put in eval mode.
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)

FreezablePart = Union[nn.Module, nn.Parameter]


class BaseBackbone(PretrainedRoutingMixin, BaseModule):
    """Base class of all backbones: the knobs shared by every family.

    Subclasses build their layers, call :meth:`_setup_outputs`, and
    implement :meth:`forward` (returning one tensor per ``out_indices``,
    in the order given) and :meth:`stage_parts` (what ``frozen_stages``
    freezes).

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

    def __init__(self, init_cfg=None):
        super().__init__(init_cfg=copy.deepcopy(init_cfg))
        self.stage_channels: Tuple[int, ...] = ()
        self.stage_strides: Tuple[Optional[int], ...] = ()
        self.out_indices: Tuple[int, ...] = ()
        self.frozen_stages: Union[int, str] = -1
        self.norm_eval = False

    # ------------------------------------------------------------ set-up
    def _setup_outputs(self, stage_channels: Sequence[int],
                       stage_strides: Sequence[Optional[int]],
                       out_indices, frozen_stages=-1,
                       norm_eval: bool = False) -> None:
        """Record stage metadata and validate the shared knobs.

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
    def stage_parts(self) -> List[List[FreezablePart]]:
        """Modules / parameters of the stem (index 0) and of each stage.

        ``frozen_stages=k`` freezes entries ``0..k``. Families override it.
        """
        raise NotImplementedError(
            f'{type(self).__name__} does not define stage_parts()')

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

    def _setup_pretrained(self, pretrained,
                          arch: Union[str, Sequence[str]]) -> None:
        """Load indexed weights now for ``pretrained=True`` or a name.

        ``arch`` is the arch's name in ``zoo_configs`` (or every alias of
        it). Call it last in ``__init__``. The weights index gives the URL,
        hash, prefix and source format; the file is then loaded like any
        ``init_cfg=dict(type='Pretrained', checkpoint=...)``.
        """
        if pretrained is False or pretrained is None:
            return
        from mmbackbone.zoo import weights_for
        entry = weights_for(type(self).__name__, arch, pretrained)
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

    def _select_outputs(self, stage_outputs: Sequence[Tensor]
                        ) -> Tuple[Tensor, ...]:
        """Pick ``out_indices`` from the list of every stage's output."""
        return tuple(stage_outputs[i] for i in self.out_indices)

    @property
    def last_needed_stage(self) -> int:
        """Index of the deepest stage any output needs (skip the rest)."""
        return max(self.out_indices)
