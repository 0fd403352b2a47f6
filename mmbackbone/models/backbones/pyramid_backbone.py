"""PyramidBackbone: any backbone, with a feature pyramid on its maps.

Plain ViTs (ours, DINOv2 rows included, and ``TIMMBackbone`` ViT / DeiT /
EVA) give every map at one stride; detectors want strides 4/8/16/32. The
wrapper builds the backbone from its config and puts a
:class:`~mmbackbone.models.necks.SimpleFeaturePyramid` on its outputs, so
mmdet's unchanged ``FPN`` (or a head) takes the levels. Its state-dict
keys are ``backbone.<the backbone's keys>`` and ``pyramid.<...>``; a
checkpoint of the plain backbone loads into it as it is.
"""
import copy
import inspect
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from torch import Tensor

from mmbackbone.checkpoint.convert import best_conversion, register_converter
from mmbackbone.registry import MODELS
from mmbackbone.utils import normalize_frozen_stages
from ..necks.simple_pyramid import (DEFAULT_NORM, SimpleFeaturePyramid,
                                    check_pyramid_args, rescaled_channels,
                                    scale_steps)
from .base_backbone import BaseBackbone, FreezablePart

#: Arguments filled in the wrapped config where its class takes them and
#: the config leaves them out: the pyramid needs maps, not tokens.
MAP_DEFAULTS = {'out_type': 'featmap', 'features_only': True}
INNER = 'backbone.'


def _level_stride(stride, scale: float, where: str) -> Union[int, float]:
    """``stride / scale``: an int where it is whole (3.5 for a patch-14
    ViT's stride-4 level)."""
    if isinstance(stride, bool) or not isinstance(stride, (int, float)):
        hint = (" (set out_type='featmap' for a VisionTransformer, "
                'features_only=True for a TIMMBackbone)' if stride is None
                else ' (a square stride is needed)')
        raise ValueError(f'{where} has stride {stride!r}: the pyramid needs '
                         f'feature maps with one stride{hint}')
    value = stride / scale
    return int(value) if float(value).is_integer() else value


@MODELS.register_module()
class PyramidBackbone(BaseBackbone):
    """A backbone whose outputs are made into a feature pyramid.

    ``mode='last'`` (ViTDet's simple pyramid) rescales the wrapped
    backbone's last output by each of ``scales``; ``mode='multi_level'``
    rescales its output ``i`` by ``scales[i]`` (e.g. a ViT's
    ``out_indices=(2, 5, 8, 11)``; a CNN's stages with scales of 1 are only
    re-projected). With a stride-16 ViT and the default scales the levels
    have strides 4, 8, 16 and 32.

    ``out_indices`` pick among the pyramid levels and only those levels
    are built (no unused parameters). ``out_channels`` and ``out_strides``
    come from the wrapped backbone's metadata, before any forward: level
    stride = backbone stride / scale (a float where not whole, e.g. 3.5
    for patch 14). Any input size the wrapped backbone takes works (ours
    resizes ViT position embeddings; give timm ViTs
    ``dynamic_img_size=True``).

    ``frozen_stages`` counts the wrapped backbone's stem and stages (the
    pyramid is new and trains), ``'all'`` also freezes the pyramid;
    ``norm_eval`` covers every norm. :meth:`stage_parts` and
    :meth:`get_layer_depth` are the wrapped backbone's (the pyramid gets
    the last depth). Weights: an ``init_cfg`` in the wrapped config, or
    ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)`` here
    with a checkpoint of the plain backbone (its keys, or any format the
    backbone converts) or of this wrapper.

    Args:
        backbone (dict): config of any registered backbone, e.g.
            ``dict(type='VisionTransformer', arch='deit-small')``.
            ``out_type='featmap'`` / ``features_only=True`` are filled in
            where the type takes them and the config leaves them out.
        scales (Sequence[float]): rescale factor of each level, powers of
            two. Default: ``(4.0, 2.0, 1.0, 0.5)``.
        mode (str): ``'last'`` or ``'multi_level'`` (the backbone then has
            one output per level). Default: ``'last'``.
        out_channels (int, optional): channels of every level; None keeps
            the rescaled channels (halved per upsampling step). Default:
            256.
        norm_cfg (dict, optional): norm of the pyramid; default ViTDet's
            channel LayerNorm ``dict(type='LN2d', eps=1e-6)``.
        out_indices (int | Sequence[int], optional): pyramid levels to
            output; None for all. Default: None.
        frozen_stages (int | str): -1 nothing, k the backbone's stem and
            stages 1..k, ``'all'`` everything. Default: -1.
        norm_eval (bool): keep norm layers in eval mode. Default: False.
        init_cfg (dict | list, optional): mmengine init config.

    Example:
        >>> import torch
        >>> model = PyramidBackbone(
        ...     dict(type='VisionTransformer', arch='deit-tiny', img_size=64),
        ...     out_channels=32)
        >>> model.out_channels, model.out_strides
        ((32, 32, 32, 32), (4, 8, 16, 32))
        >>> [tuple(o.shape) for o in model(torch.rand(1, 3, 64, 96))]
        [(1, 32, 16, 24), (1, 32, 8, 12), (1, 32, 4, 6), (1, 32, 2, 3)]
    """

    zoo_configs = {
        'deit-tiny-last': dict(
            backbone=dict(type='VisionTransformer', arch='deit-tiny',
                          img_size=32),
            out_channels=64),
        'deit-tiny-multi-level': dict(
            backbone=dict(type='VisionTransformer', arch='deit-tiny',
                          img_size=32, out_indices=(2, 5, 8, 11)),
            mode='multi_level', out_channels=64),
        'resnet18-multi-level': dict(
            backbone=dict(type='ResNet', depth=18, out_indices=(0, 1, 2, 3)),
            mode='multi_level', scales=(1, 1, 1, 1), out_channels=64,
            norm_cfg=dict(type='BN')),
    }

    def __init__(self,
                 backbone: dict,
                 scales: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
                 mode: str = 'last',
                 out_channels: Optional[int] = 256,
                 norm_cfg: Optional[dict] = DEFAULT_NORM,
                 out_indices: Union[int, Sequence[int], None] = None,
                 frozen_stages: Union[int, str] = -1,
                 norm_eval: bool = False,
                 init_cfg: Union[dict, List[dict], None] = None):
        super().__init__(init_cfg)
        check_pyramid_args(mode, scales, out_channels)
        self.mode, self.scales = mode, tuple(scales)
        self.backbone = self._build_inner(backbone, frozen_stages)
        sources = self._level_sources()
        channels = [self._rescaled(c, scale, i) if out_channels is None
                    else out_channels for i, ((c, _), scale) in
                    enumerate(zip(sources, self.scales))]
        strides = [_level_stride(stride, scale,
                                 f'the backbone output feeding level {i}')
                   for i, ((_, stride), scale) in
                   enumerate(zip(sources, self.scales))]
        self._setup_outputs(channels,
                            strides,
                            tuple(range(len(self.scales)))
                            if out_indices is None else out_indices,
                            -1, norm_eval)
        normalize_frozen_stages(frozen_stages, self.backbone.num_stages)
        self.frozen_stages = frozen_stages
        self.pyramid = SimpleFeaturePyramid(
            [sources[i][0] for i in self.out_indices], out_channels,
            [self.scales[i] for i in self.out_indices], mode, norm_cfg)
        self._finish_init()

    # ------------------------------------------------------------ building
    @staticmethod
    def _rescaled(channels: int, scale: float, index: int) -> int:
        try:
            return rescaled_channels(channels, scale_steps(scale))
        except ValueError as err:
            raise ValueError(f'scales[{index}]={scale!r}: {err}') from None

    @staticmethod
    def _build_inner(cfg, frozen_stages) -> BaseBackbone:
        from mmbackbone.apis import build_backbone, resolve_type
        if isinstance(cfg, BaseBackbone):
            raise TypeError('backbone must be a config dict (so that the '
                            'wrapper can be rebuilt from its config), not a '
                            'built module')
        if not isinstance(cfg, Mapping) or 'type' not in cfg:
            raise TypeError(f"backbone={cfg!r} must be a backbone config: a "
                            f"dict with a 'type' key, e.g. dict(type="
                            f"'VisionTransformer', arch='deit-small')")
        cfg = copy.deepcopy(dict(cfg))
        inner_frozen = cfg.get('frozen_stages', -1)
        if frozen_stages != -1 and inner_frozen != -1:
            raise ValueError(f'frozen_stages={frozen_stages!r} and backbone.'
                             f'frozen_stages={inner_frozen!r}: give one')
        cls = resolve_type(cfg['type'], arg='backbone.type')
        if inspect.isclass(cls):
            params = inspect.signature(cls.__init__).parameters
            for key, value in MAP_DEFAULTS.items():
                if key in params:
                    cfg.setdefault(key, value)
        inner = build_backbone(cfg)
        if not isinstance(inner, BaseBackbone):
            raise TypeError(f'backbone type {cfg["type"]!r} built a '
                            f'{type(inner).__name__}, not a backbone with '
                            f'out_channels / out_strides metadata')
        return inner

    def _level_sources(self) -> List[Tuple[int, object]]:
        """``(channels, stride)`` of the backbone output each level uses."""
        outputs = list(zip(self.backbone.out_channels,
                           self.backbone.out_strides))
        if self.mode == 'last':
            return [outputs[-1]] * len(self.scales)
        if len(outputs) != len(self.scales):
            raise ValueError(
                f"mode='multi_level' rescales backbone output i by scales[i]"
                f': the backbone has {len(outputs)} outputs (out_indices='
                f'{self.backbone.out_indices}) but scales={self.scales!r} '
                f'has {len(self.scales)}; set the backbone\'s out_indices, '
                f'e.g. (2, 5, 8, 11) for a 12-layer ViT')
        return outputs

    # ------------------------------------------------------------ freezing
    def stage_parts(self) -> List[List[FreezablePart]]:
        """The wrapped backbone's stem and stages."""
        return self.backbone.stage_parts()

    def get_layer_depth(self, param_name: str, prefix: str = ''
                        ) -> Tuple[int, int]:
        """The wrapped backbone's depths; the pyramid (like everything
        after the backbone) gets the last depth.

        Example:
            >>> model = PyramidBackbone(dict(type='ResNet', depth=18),
            ...                         scales=(1, ))
            >>> model.get_layer_depth('backbone.backbone.conv1.weight',
            ...                       'backbone.')
            (0, 6)
            >>> model.get_layer_depth('pyramid.levels.0.project.0.weight')
            (5, 6)
        """
        return self.backbone.get_layer_depth(param_name, prefix + INNER)

    # ------------------------------------------------------------- loading
    def adapt_state_dict(self, state_dict: Dict[str, Tensor]):
        """The wrapped backbone's adaptations (ViT ``pos_embed`` resizing,
        input channels) on its keys."""
        inner = {k[len(INNER):]: v for k, v in state_dict.items()
                 if k.startswith(INNER)}
        if not inner:
            return state_dict, []
        inner, notes = self.backbone.adapt_state_dict(inner)
        adapted = {k: v for k, v in state_dict.items()
                   if not k.startswith(INNER)}
        adapted.update({INNER + k: v for k, v in inner.items()})
        return adapted, [INNER + note for note in notes]

    # ------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """One map per ``out_indices`` level, in the order given."""
        feats = self.backbone(x)
        if isinstance(feats, Tensor):
            feats = (feats, )
        if self.mode == 'multi_level':
            feats = [feats[i] for i in self.out_indices]
        return self.pyramid(feats)


@register_converter('backbone', 'PyramidBackbone')
def pyramid_from_plain_backbone(state_dict, model):
    """A checkpoint of the wrapped backbone alone (in any format it
    converts) -> ``backbone.*`` keys; the pyramid stays as initialised."""
    if any(k.startswith((INNER, 'pyramid.')) for k in state_dict):
        raise KeyError('already PyramidBackbone keys')
    _, converted = best_conversion(state_dict, model.backbone)
    return {INNER + k: v for k, v in converted.items()}
