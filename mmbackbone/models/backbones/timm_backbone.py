"""TIMMBackbone: any timm model behind the mmbackbone contract.

The timm model lives in ``self.timm_model``, so state-dict keys are
``timm_model.<key of the timm model>`` as in mmpretrain 1.2's wrapper.
With ``features_only=True`` that model is timm's own feature extractor
(``timm.create_model(..., features_only=True)``): its keys are timm's keys,
except where timm flattens a top-level ``nn.Sequential`` (``stages.0`` ->
``stages_0``) or wraps the model (``model.`` for ViT-style getters).
Checkpoints with plain timm keys are converted on load. How the weights
are found and loaded is in :mod:`.timm_weights`.

timm is imported when the class is built, never when mmbackbone is.
"""
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from torch import Tensor, nn

from mmbackbone.checkpoint.convert import register_converter
from mmbackbone.registry import MODELS
from mmbackbone.utils import closest, normalize_frozen_stages
from .base_backbone import BaseBackbone, FreezablePart
from .timm_layer_depth import timm_layer_depths
from .timm_probe import (build_probe, is_nhwc, no_dynamic_img_size,
                         probe_levels, probe_output, remove_head,
                         whole_model_outputs)
from .timm_weights import create_timm_model, timm_key_candidates

#: Arguments that belong to TIMMBackbone itself, not to ``timm_kwargs``.
_OWN_ARGUMENTS = {'features_only': 'features_only',
                  'in_chans': 'in_channels', 'out_indices': 'out_indices',
                  'checkpoint_path': 'checkpoint_path'}
#: The norm layers mmcv registers (``norm_layer`` strings).
_NORM_NAMES = ('BN', 'BN1d', 'BN2d', 'BN3d', 'SyncBN', 'GN', 'LN', 'IN',
               'IN1d', 'IN2d', 'IN3d')


def import_timm():
    """Import timm, or fail with the install command."""
    try:
        import timm
    except ImportError as err:  # pragma: no cover - timm is a dependency
        raise ImportError('TIMMBackbone needs timm: pip install timm') from err
    return timm


def check_model_name(timm, model_name) -> None:
    """Raise ``KeyError`` naming close timm names for an unknown name."""
    if not isinstance(model_name, str) or not model_name:
        raise TypeError(f'model_name={model_name!r} must be a timm model '
                        f"name such as 'resnet18'")
    if timm.is_model(model_name):
        return
    base = model_name.split('.', 1)[0]
    hint = closest(base, timm.list_models()) or (
        " See timm.list_models('*pattern*') for the names.")
    raise KeyError(f'model_name={model_name!r} is not a timm model.{hint}')


def timm_norm_layer(name: str) -> Union[str, Callable[..., nn.Module]]:
    """A ``norm_layer`` string for timm, resolved as mmpretrain does.

    A name in the registry (mmcv's ``'BN2d'``, ``'SyncBN'``, ``'LN'``,
    ``'GN'``, ...; case-insensitive, so ``'bn2d'`` and ``'syncbn'`` too)
    becomes a builder that timm calls with its own arguments, as
    mmpretrain's ``TIMMBackbone`` makes it; one of timm's own names
    (``'batchnorm2d'``, ``'layernorm2d'``, ...) is left for timm.

    Raises:
        KeyError: neither the registry nor timm knows the name; the
            message suggests the closest names.

    Example:
        >>> [type(timm_norm_layer(n)(8)).__name__ for n in ('SyncBN', 'bn2d')]
        ['SyncBatchNorm', 'BatchNorm2d']
    """
    if not isinstance(name, str):
        return name
    import mmcv.cnn  # noqa: F401  (registers mmcv's norm layers)
    from mmengine.registry import MODELS as ROOT_MODELS
    from timm.layers.create_norm import _NORM_MAP as TIMM_NORMS
    registered = {k.lower(): k for k in ROOT_MODELS.module_dict}
    registered.update({k.lower(): k for k in MODELS.module_dict})
    key = name if MODELS.get(name) is not None else \
        registered.get(name.lower())
    if key is None:
        if name.replace('_', '').lower() in TIMM_NORMS:
            return name
        raise KeyError(f'norm_layer={name!r} is neither a registered norm '
                       f'layer ({", ".join(_NORM_NAMES)}) nor one of '
                       f"timm's ({', '.join(sorted(TIMM_NORMS))})."
                       f'{closest(name, _NORM_NAMES + tuple(TIMM_NORMS))}')
    norm_class = MODELS.get(key)

    def build_norm(*args, **kwargs) -> nn.Module:
        return norm_class(*args, **kwargs)

    build_norm.__name__ = build_norm.__qualname__ = key
    return build_norm


@MODELS.register_module()
class TIMMBackbone(BaseBackbone):
    """Any `timm <https://github.com/huggingface/pytorch-image-models>`_
    model as a backbone, with mmpretrain 1.2's arguments and defaults.

    With ``features_only=False`` (the default, as in mmpretrain) the whole
    timm model is built and ``reset_classifier(0, '')`` removes its global
    pooling and classifier (``global_pool.pool``, ``fc`` / ``classifier``
    / ``head`` become ``nn.Identity``): the output is timm's unpooled last
    feature map as a one-tuple, e.g. ``(1, 512, 7, 7)`` for a 224 input
    to ``resnet18``, or the tokens ``(B, L, C)`` of a ViT (stride
    ``None``). NHWC maps (Swin and friends) are permuted to NCHW (where
    mmpretrain returns them as timm does). ``pooled=True`` gives the
    model's pooled pre-logits vector instead,
    ``forward_head(forward_features(x), pre_logits=True)``, stride
    ``None``. ``out_channels``/``out_strides`` are read from a forward of
    a copy on the meta device at build time.

    With ``features_only=True`` the outputs are the feature levels timm
    reports in ``feature_info`` (for CNNs the stem and each stage; for
    ViT-style models each block, as NCHW maps through timm's
    ``forward_intermediates``). ``out_indices`` index into those levels
    (negative ones count from the last); by default the levels timm
    itself returns. ``out_channels``/``out_strides`` are timm's
    ``feature_info``, checked by a forward of a copy on the meta device at
    build time: where the model's maps disagree with it (timm reports
    reductions the arguments changed, e.g. ``nest_tiny`` with
    ``patch_size=8``) the measured values are used. NHWC outputs are
    permuted to NCHW.

    ``with_cp=True`` turns on timm's gradient checkpointing
    (``set_grad_checkpointing``): activations inside the checkpointed
    blocks are recomputed in the backward pass instead of kept.
    ``dynamic_img_size=True`` (a timm argument of ViT, DeiT, EVA and Swin
    models) lets the model take input sizes other than ``img_size``, also
    non-square: the maps of an ``H x W`` input are ``H / s x W / s`` for
    stride ``s`` (Swin rounds up; a ViT needs multiples of its patch size
    unless ``dynamic_img_pad=True`` pads the input, then rounds up too).

    Weights come from ``checkpoint_path`` (a file of timm keys, loaded
    through timm's loader), ``pretrained=True`` (timm's weights, from the
    cache offline) or ``init_cfg=dict(type='Pretrained', ...)``
    (mmbackbone's loader); :mod:`.timm_weights` says how each is found
    and checked.

    Args:
        model_name (str): a timm model name (``timm.list_models()``), with
            an optional pretrained tag (``'resnet18.a1_in1k'``).
        features_only (bool): timm's feature levels (True) or the whole
            model's last output (False). Default: False.
        pretrained (bool): load timm's pretrained weights. Default: False.
        checkpoint_path (str): a weights file to load through timm.
        in_channels (int): input channels (timm's ``in_chans``). Default: 3.
        out_indices (Sequence[int] | int, optional): feature levels to
            output; default timm's own default for the model (with
            ``features_only=False`` the one output, ``(0, )``).
        frozen_stages (int | str): ``k`` freezes everything that feeds
            feature level ``k`` (the modules up to and including that
            level's module, in module order, and the model's own
            parameters such as ``cls_token``); ``'all'`` everything.
            With ``features_only=False`` it counts the same levels.
            Default: -1.
        norm_eval (bool): keep norm layers in eval mode. Default: False.
        pooled (bool): with ``features_only=False``, output the pooled
            pre-logits vector instead of the unpooled map. Default: False.
        with_cp (bool): gradient checkpointing through timm's
            ``set_grad_checkpointing``. Default: False.
        init_cfg (dict | list, optional): mmengine init config.
        **timm_kwargs: passed to ``timm.create_model`` (``img_size``,
            ``drop_path_rate``, ``output_stride``, ``dynamic_img_size``,
            ...). A ``norm_layer`` string is resolved through the registry
            (:func:`timm_norm_layer`).

    Raises:
        ValueError: ``with_cp=True`` for a timm model without gradient
            checkpointing, or ``dynamic_img_size=True`` for one that does
            not take it (both name the model).

    Example:
        >>> import torch
        >>> from mmbackbone.models import TIMMBackbone
        >>> model = TIMMBackbone('resnet18').eval()
        >>> model.out_channels, model.out_strides
        ((512,), (32,))
        >>> tuple(model(torch.rand(1, 3, 64, 64))[0].shape)
        (1, 512, 2, 2)
        >>> model = TIMMBackbone('resnet18', features_only=True,
        ...                      out_indices=(1, -1)).eval()
        >>> model.out_channels, model.out_strides
        ((64, 512), (4, 32))
        >>> for out in model(torch.rand(1, 3, 64, 64)):
        ...     print(tuple(out.shape))
        (1, 64, 16, 16)
        (1, 512, 2, 2)
    """

    zoo_configs = {
        **{name: dict(model_name=name, features_only=True) for name in (
            'resnet18', 'mobilenetv3_small_050', 'efficientnet_b0',
            'convnext_atto')},
        'vit_tiny_patch16_224': dict(model_name='vit_tiny_patch16_224',
                                     img_size=64, features_only=True),
        'resnet18-pooled': dict(model_name='resnet18', pooled=True),
        'resnet18-unpooled': dict(model_name='resnet18'),
    }

    def __init__(self,
                 model_name: str,
                 features_only: bool = False,
                 pretrained: bool = False,
                 checkpoint_path: str = '',
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int], None] = None,
                 frozen_stages: Union[int, str] = -1,
                 norm_eval: bool = False,
                 pooled: bool = False,
                 with_cp: bool = False,
                 init_cfg: Union[dict, List[dict], None] = None,
                 **timm_kwargs):
        timm = import_timm()
        super().__init__(init_cfg)
        for name, value in (('features_only', features_only),
                            ('pretrained', pretrained), ('pooled', pooled),
                            ('with_cp', with_cp),
                            ('dynamic_img_size',
                             timm_kwargs.get('dynamic_img_size', False))):
            if not isinstance(value, bool):
                hint = (' (give a weights file as checkpoint_path)'
                        if name == 'pretrained' else '')
                raise TypeError(f'{name}={value!r} must be True or False'
                                f'{hint}')
        if pooled and features_only:
            raise ValueError('pooled=True takes the whole model '
                             '(features_only=False), not the feature levels '
                             'of features_only=True')
        if isinstance(checkpoint_path, os.PathLike):
            checkpoint_path = os.fspath(checkpoint_path)
        if not isinstance(checkpoint_path, str):
            raise TypeError(f'checkpoint_path={checkpoint_path!r} must be a '
                            f"file path or '' (no file)")
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) \
                or in_channels < 1:
            raise ValueError(f'in_channels={in_channels!r} must be a '
                             f'positive int')
        for key, own in _OWN_ARGUMENTS.items():
            if key in timm_kwargs:
                raise TypeError(f'{key}={timm_kwargs[key]!r} is not passed '
                                f'through to timm; use the TIMMBackbone '
                                f'argument {own!r}')
        check_model_name(timm, model_name)
        self.model_name = model_name
        self.features_only, self.pooled = features_only, pooled
        self.with_cp = with_cp
        self.in_channels = in_channels
        self.checkpoint_path = checkpoint_path
        kwargs = dict(timm_kwargs, in_chans=in_channels)
        if 'norm_layer' in kwargs:
            kwargs['norm_layer'] = timm_norm_layer(kwargs['norm_layer'])
        self._timm_kwargs = dict(kwargs)  # the whole model's, for its groups

        if features_only:
            levels, default = probe_levels(timm, model_name, kwargs,
                                           in_channels)
            self._setup_outputs([f['num_chs'] for f in levels],
                                [f['reduction'] for f in levels],
                                default if out_indices is None
                                else out_indices, frozen_stages, norm_eval)
            built = tuple(sorted(set(self.out_indices)))
            kwargs.update(features_only=True, out_indices=built)
            self._timm_positions = tuple(built.index(i)
                                         for i in self.out_indices)
        else:
            kwargs.setdefault('num_classes', 0)
            channels, strides, self._nhwc = probe_output(
                timm, model_name, kwargs, in_channels, pooled)
            self._setup_outputs(channels, strides,
                                (0, ) if out_indices is None else out_indices,
                                -1, norm_eval)
        self.timm_model = create_timm_model(timm, model_name, pretrained,
                                            checkpoint_path, kwargs)
        # timm initialised (or loaded) the weights; mmengine must not call
        # the timm model's own init_weights() again.
        self.timm_model.is_init = True
        if timm_kwargs.get('dynamic_img_size'):
            self._check_dynamic_img_size()
        if with_cp:
            self._enable_grad_checkpointing()

        if features_only:
            levels = list(self.timm_model.feature_info.info)
            self._nhwc = is_nhwc(self.timm_model)
        else:
            remove_head(self.timm_model, pooled)
            levels = list(getattr(self.timm_model, 'feature_info', None)
                          or [])
            if not levels and frozen_stages not in (-1, 'all'):
                raise ValueError(
                    f'frozen_stages={frozen_stages!r}: timm model '
                    f'{model_name!r} reports no feature_info levels; use -1 '
                    f"or 'all'")
            normalize_frozen_stages(frozen_stages, len(levels))
            self.frozen_stages = frozen_stages
        self._level_paths = self._resolve_level_paths(
            [f['module'] for f in levels])
        self._freeze_stages()

    # ------------------------------------------------------------ building
    def _enable_grad_checkpointing(self) -> None:
        """timm's gradient checkpointing on, or a ValueError naming the
        model where timm has none for it."""
        model = self.timm_model
        # timm's FeatureGetterNet (ViT-style features) has no switch of its
        # own; the model it wraps has.
        if not hasattr(model, 'set_grad_checkpointing'):
            model = getattr(model, 'model', model)
        try:
            model.set_grad_checkpointing(True)
        except (AttributeError, AssertionError, NotImplementedError) as err:
            detail = f' ({err})' if str(err) else ''
            raise ValueError(
                f'with_cp=True: timm model {self.model_name!r} '
                f'({type(model).__name__}) has no gradient checkpointing'
                f'{detail}; use with_cp=False') from err

    def _check_dynamic_img_size(self) -> None:
        """A ValueError naming the model where ``dynamic_img_size=True``
        was swallowed without effect (a model taking ``**kwargs``)."""
        # timm's features models may leave out the model that holds the
        # flag (Swin's); its patch embedding then says it is not strict
        if not any(getattr(m, 'dynamic_img_size', None) is True or
                   getattr(m, 'strict_img_size', None) is False
                   for m in self.timm_model.modules()):
            raise no_dynamic_img_size(self.model_name)

    def _resolve_level_paths(self, names: Sequence[str]
                             ) -> List[Optional[str]]:
        """Module path of each feature level in ``self.timm_model``
        (``None`` for levels timm pruned because no output needs them)."""
        modules = dict(self.timm_model.named_modules())
        paths = []
        for name in names:
            found = [c for c in timm_key_candidates(name) if c in modules]
            paths.append(found[0] if found else None)
        return paths

    @property
    def num_levels(self) -> int:
        """How many feature levels the timm model reports."""
        return len(self._level_paths)

    # ------------------------------------------------------------ freezing
    def stage_parts(self) -> List[List[FreezablePart]]:
        """Parts feeding each feature level, in the model's module order.

        Entry ``i`` holds the modules after level ``i - 1``'s module up to
        and including level ``i``'s; the model's direct parameters
        (``cls_token``, ``pos_embed``) go with entry 0. Modules after the
        last level (final norm, head) are in no entry.
        """
        count = self.num_levels
        parts: List[List[FreezablePart]] = [[] for _ in range(count + 1)]
        targets = {path: i for i, path in enumerate(self._level_paths)
                   if path is not None}
        ancestors = {path.rsplit('.', n)[0] for path in targets
                     for n in range(1, path.count('.') + 1)}
        current = 0

        def visit(module: nn.Module, prefix: str) -> None:
            nonlocal current
            parts[min(current, count)].extend(
                module.parameters(recurse=False))
            for name, child in module.named_children():
                path = prefix + name
                if path in targets:
                    index = max(targets[path], current)
                    parts[min(index, count)].append(child)
                    current = index + 1
                elif path in ancestors:
                    visit(child, path + '.')
                else:
                    parts[min(current, count)].append(child)

        visit(self.timm_model, '')
        return parts[:count]

    # ------------------------------------------------ layer-wise lr decay
    def get_layer_depth(self, param_name: str, prefix: str = ''
                        ) -> Tuple[int, int]:
        """Depth of a parameter for layer-wise lr decay, from timm's
        ``group_matcher()`` as timm's own layer decay numbers it.

        The groups are those of the whole timm model, classifier included
        (read from a copy on the meta device), also with
        ``features_only=True`` or the classifier removed: the stem group
        is 0, each block group (``coarse=False``) its index, and the
        classifier, unmatched parameters and names not under ``prefix``
        the last depth.

        Raises:
            NotImplementedError: the timm model has no ``group_matcher``.

        Example:
            >>> model = TIMMBackbone('resnet18', features_only=True)
            >>> model.get_layer_depth('backbone.timm_model.conv1.weight',
            ...                       'backbone.')
            (0, 10)
            >>> model.get_layer_depth('timm_model.layer4.1.conv2.weight')
            (8, 10)
        """
        cached = self.__dict__.get('_layer_depths')
        if cached is None:
            cached = self._timm_layer_depths()
            self.__dict__['_layer_depths'] = cached
        depths, num_layers = cached
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        name = param_name[len(prefix):]
        return depths.get(name, num_layers - 1), num_layers

    def _timm_layer_depths(self) -> Tuple[Dict[str, int], int]:
        """``({parameter name: depth}, num_layers)`` of this backbone."""
        own = [name.removeprefix('timm_model.')
               for name, _ in self.named_parameters()]
        kwargs = {k: v for k, v in self._timm_kwargs.items()
                  if k not in ('num_classes', 'features_only', 'out_indices')}
        full = build_probe(import_timm(), self.model_name, kwargs,
                           'to read its parameter groups', lambda m: m)
        depths, num_layers = timm_layer_depths(full, own)
        return {'timm_model.' + k: v for k, v in depths.items()}, num_layers

    # ------------------------------------------------------------- loading
    def classifier_names(self) -> Tuple[str, ...]:
        """timm names of the classifier (dropped when loading timm keys)."""
        cfg = dict(getattr(self.timm_model, 'pretrained_cfg', None) or {})
        names = cfg.get('classifier')
        if names is None and cfg.get('architecture'):
            from timm.models import get_pretrained_cfg
            full = cfg['architecture'] + (f".{cfg['tag']}" if cfg.get('tag')
                                          else '')
            found = get_pretrained_cfg(full)
            names = getattr(found, 'classifier', None)
        if not names:
            return ()
        return (names, ) if isinstance(names, str) else tuple(names)

    def adapt_state_dict(self, state_dict: Dict[str, Tensor]):
        """Also resize ViT-style ``pos_embed`` to the model's grid."""
        state_dict, notes = super().adapt_state_dict(state_dict)
        target = self.state_dict()
        for key in [k for k in state_dict if k.endswith('pos_embed')]:
            if key not in target or state_dict[key].ndim != 3 or \
                    state_dict[key].shape == target[key].shape:
                continue
            owner = self.get_submodule(key.rpartition('.')[0])
            grid = getattr(getattr(owner, 'patch_embed', None), 'grid_size',
                           None)
            if grid is None:
                continue
            from timm.layers import resample_abs_pos_embed
            prefix = (0 if getattr(owner, 'no_embed_class', False) else
                      getattr(owner, 'num_prefix_tokens', 1))
            old = state_dict[key]
            state_dict = dict(state_dict)
            state_dict[key] = resample_abs_pos_embed(
                old, new_size=list(grid), num_prefix_tokens=prefix)
            notes.append(f'{key}: {tuple(old.shape)} -> '
                         f'{tuple(state_dict[key].shape)}')
        return state_dict, notes

    # ------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        if not self.features_only:
            return whole_model_outputs(self.timm_model, x, self._nhwc,
                                       self.pooled)
        feats = self.timm_model(x)
        if isinstance(feats, dict):
            feats = list(feats.values())
        outs = [feats[i] for i in self._timm_positions]
        if self._nhwc:
            outs = [out.permute(0, 3, 1, 2) for out in outs]
        return tuple(outs)


@register_converter('timm', 'TIMMBackbone')
def timm_backbone_from_timm(state_dict, model):
    """Plain timm keys -> ``timm_model.*`` keys of the built model.

    Follows timm's features-mode renames (``stages.0`` -> ``stages_0``,
    ``model.`` / ``body.`` wrappers) and drops the classifier; keys the
    model does not have are kept (and reported as unexpected).
    """
    if any(k.startswith('timm_model.') for k in state_dict):
        raise KeyError('already TIMMBackbone keys')
    target = model.state_dict()
    classifier = tuple(name + '.' for name in model.classifier_names())
    converted = {}
    for key, value in state_dict.items():
        found = [c for c in timm_key_candidates(key)
                 if 'timm_model.' + c in target]
        if found:
            converted['timm_model.' + found[0]] = value
        elif not (classifier and key.startswith(classifier)):
            converted['timm_model.' + key] = value
    return converted
