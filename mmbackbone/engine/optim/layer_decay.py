"""Layer-wise learning-rate decay: an optimizer wrapper constructor.

Each backbone parameter gets ``lr = base_lr * layer_decay_rate **
(num_layers - layer_id - 1)`` from the backbone's ``get_layer_depth``
(mmpretrain 1.2's formula and option names), so the stem learns slowest
and the last stage fastest; the neck and head keep the base lr. Norms,
biases, other 1-D parameters, position embeddings and class / register /
mask tokens get no weight decay unless the config says otherwise.

A config (ours, mmdet's or mmseg's) selects it with::

    optim_wrapper = dict(
        constructor='mmbackbone.LayerDecayOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
        paramwise_cfg=dict(layer_decay_rate=0.65))
"""
import inspect
import numbers
from typing import Callable, List, Optional, Tuple

from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIMIZERS
from torch import nn

from mmbackbone.registry import OPTIM_WRAPPER_CONSTRUCTORS

#: Norm layers whose parameters take ``norm_decay_mult`` (timm's and
#: mmcv's norms subclass these).
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm,
               *((nn.RMSNorm, ) if hasattr(nn, 'RMSNorm') else ()))
#: Parameter names (the last part of the dotted name) of position
#: embeddings and learned tokens; they take ``token_decay_mult``.
TOKEN_NAMES = frozenset({
    'pos_embed', 'absolute_pos_embed', 'relative_position_bias_table',
    'cls_token', 'dist_token', 'reg_token', 'register_tokens',
    'mask_token'})
#: paramwise_cfg options and their defaults.
DEFAULT_OPTIONS = dict(layer_decay_rate=1.0, bias_decay_mult=0.0,
                       norm_decay_mult=0.0, flat_decay_mult=0.0,
                       token_decay_mult=0.0, custom_keys={})
#: What a ``custom_keys`` entry may set.
CUSTOM_KEY_OPTIONS = ('lr_mult', 'decay_mult')

DepthFn = Callable[[str], Tuple[int, int]]


def _check_number(where: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or value < 0:
        raise ValueError(f'{where}={value!r} must be a number >= 0'
                         + (' or None' if allow_none else ''))


def check_paramwise_cfg(paramwise_cfg: Optional[dict]) -> dict:
    """The options with defaults filled in; a bad one raises an error that
    names it.

    Example:
        >>> check_paramwise_cfg(dict(layer_decay_rate=0.65))['norm_decay_mult']
        0.0
        >>> check_paramwise_cfg(dict(layer_decay=0.65))
        Traceback (most recent call last):
        ...
        KeyError: "paramwise_cfg option 'layer_decay' is unknown; valid: ..."
    """
    if paramwise_cfg is None:
        paramwise_cfg = {}
    if not isinstance(paramwise_cfg, dict):
        raise TypeError(f'paramwise_cfg={paramwise_cfg!r} must be a dict or '
                        f'None')
    for key in paramwise_cfg:
        if key not in DEFAULT_OPTIONS:
            raise KeyError(f'paramwise_cfg option {key!r} is unknown; valid: '
                           f'{", ".join(DEFAULT_OPTIONS)}')
    options = {**DEFAULT_OPTIONS, **paramwise_cfg}
    rate = options['layer_decay_rate']
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or \
            not 0 < rate <= 1:
        raise ValueError(f'layer_decay_rate={rate!r} must be a number in '
                         f'(0, 1]')
    for key in ('bias_decay_mult', 'norm_decay_mult', 'flat_decay_mult',
                'token_decay_mult'):
        _check_number(key, options[key], allow_none=True)
    custom_keys = options['custom_keys']
    if not isinstance(custom_keys, dict):
        raise TypeError(f'custom_keys={custom_keys!r} must be a dict of '
                        f'name substring -> dict(lr_mult=..., decay_mult=...)')
    for key, cfg in custom_keys.items():
        if not isinstance(key, str) or not isinstance(cfg, dict):
            raise TypeError(f'custom_keys entry {key!r}: {cfg!r} must map a '
                            f'name substring to a dict')
        for option, value in cfg.items():
            if option not in CUSTOM_KEY_OPTIONS:
                raise KeyError(f'custom_keys[{key!r}] option {option!r} is '
                               f'unknown; valid: '
                               f'{", ".join(CUSTOM_KEY_OPTIONS)}')
            _check_number(f'custom_keys[{key!r}][{option!r}]', value)
    return options


def find_layer_depth(model: nn.Module) -> Tuple[DepthFn, str]:
    """The depth function for ``model``'s parameter names and the name
    prefix of the part it covers: ``model.backbone`` (``'backbone.'``),
    or ``model`` itself when it has ``get_layer_depth``."""
    backbone = getattr(model, 'backbone', None)
    if isinstance(backbone, nn.Module):
        depth_fn = getattr(backbone, 'get_layer_depth', None)
        if not callable(depth_fn):
            raise NotImplementedError(
                f'layer-wise lr decay needs get_layer_depth() on the '
                f'backbone; {type(backbone).__name__} has none')
        return (lambda name: depth_fn(name, 'backbone.')), 'backbone.'
    depth_fn = getattr(model, 'get_layer_depth', None)
    if not callable(depth_fn):
        raise NotImplementedError(
            f'layer-wise lr decay needs a model with a backbone that has '
            f'get_layer_depth(), or get_layer_depth() on the model; '
            f'{type(model).__name__} has neither')
    return depth_fn, ''


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """One parameter group per parameter, with layer-wise lr decay.

    ``paramwise_cfg`` options (mmpretrain's names):

    - ``layer_decay_rate`` (float, (0, 1]): lr factor per depth; a
      parameter at depth ``d`` of ``n`` gets ``rate ** (n - d - 1)``.
      Default 1.0 (no decay).
    - ``norm_decay_mult``, ``bias_decay_mult``, ``flat_decay_mult``,
      ``token_decay_mult`` (float or None): weight decay factor for norm
      layers' parameters, other biases, other 1-D parameters, and
      position embeddings / learned tokens (:data:`TOKEN_NAMES`). Default
      0.0 each; None gives the full weight decay.
    - ``custom_keys`` (dict): ``{name substring: dict(lr_mult=...,
      decay_mult=...)}``; the longest matching key wins over the four
      rules above, ``lr_mult`` multiplies the decayed lr.

    Frozen parameters (``requires_grad=False``) are left out. Each group
    also records ``param_name``, ``layer_id`` and ``lr_scale``.

    Example:
        >>> import torch
        >>> from mmbackbone.models import ResNet
        >>> model = torch.nn.Module()
        >>> model.backbone = ResNet(depth=18)
        >>> model.head = torch.nn.Linear(512, 10)
        >>> wrapper = LayerDecayOptimWrapperConstructor(
        ...     dict(optimizer=dict(type='AdamW', lr=1.0, weight_decay=0.1)),
        ...     dict(layer_decay_rate=0.5))(model)
        >>> groups = {g['param_name']: g for g in
        ...           wrapper.optimizer.param_groups}
        >>> groups['backbone.conv1.weight']['lr']  # depth 0 of 6
        0.03125
        >>> groups['backbone.layer4.1.conv2.weight']['lr']  # depth 4
        0.5
        >>> groups['head.weight']['lr'], groups['head.bias']['weight_decay']
        (1.0, 0.0)
    """

    def __init__(self, optim_wrapper_cfg: dict,
                 paramwise_cfg: Optional[dict] = None):
        self.options = check_paramwise_cfg(paramwise_cfg)
        # never empty, so the base class always calls add_params
        super().__init__(optim_wrapper_cfg, dict(self.options))

    def _validate_cfg(self) -> None:
        if not isinstance(self.base_lr, numbers.Real) or \
                isinstance(self.base_lr, bool):
            raise ValueError(f'optimizer lr={self.base_lr!r}: layer-wise lr '
                             f'decay needs the base lr as a number in '
                             f'optimizer=dict(..., lr=...)')

    def _weight_decay(self) -> Optional[float]:
        """The optimizer's weight decay: the config's, else the optimizer
        class's default (so that the no-decay rules still apply)."""
        if self.base_wd is not None:
            return self.base_wd
        optimizer = self.optimizer_cfg.get('type')
        if isinstance(optimizer, str):
            with OPTIMIZERS.switch_scope_and_registry(None) as registry:
                optimizer = registry.get(optimizer)
        try:
            param = inspect.signature(optimizer).parameters['weight_decay']
        except (TypeError, ValueError, KeyError):
            return None
        default = param.default
        return default if isinstance(default, numbers.Real) else None

    def _decay_mult(self, name: str, param: nn.Parameter,
                    module: nn.Module) -> float:
        """Weight decay factor of one parameter by the rules above."""
        options = self.options
        keys = sorted(sorted(options['custom_keys']), key=len, reverse=True)
        key = next((k for k in keys if k in name), None)
        leaf = name.rpartition('.')[2]
        if key is not None:
            return options['custom_keys'][key].get('decay_mult', 1.0)
        for rule, option in ((leaf in TOKEN_NAMES, 'token_decay_mult'),
                             (isinstance(module, NORM_LAYERS),
                              'norm_decay_mult'),
                             (leaf == 'bias', 'bias_decay_mult'),
                             (param.ndim == 1, 'flat_decay_mult')):
            if rule and options[option] is not None:
                return options[option]
        return 1.0

    def _lr_mult(self, name: str) -> float:
        custom_keys = self.options['custom_keys']
        keys = sorted(sorted(custom_keys), key=len, reverse=True)
        key = next((k for k in keys if k in name), None)
        return 1.0 if key is None else custom_keys[key].get('lr_mult', 1.0)

    def add_params(self, params: List[dict], module: nn.Module,
                   **kwargs) -> None:
        """Append one group per trainable parameter of ``module`` (the
        whole model) to ``params``."""
        depth_fn, prefix = find_layer_depth(module)
        rate = self.options['layer_decay_rate']
        weight_decay = self._weight_decay()
        seen = set()
        for module_name, owner in module.named_modules():
            for leaf, param in owner.named_parameters(recurse=False):
                if id(param) in seen or not param.requires_grad:
                    continue
                seen.add(id(param))
                name = f'{module_name}.{leaf}' if module_name else leaf
                layer_id, num_layers = depth_fn(name)
                if not 0 <= layer_id < num_layers:
                    raise ValueError(
                        f'get_layer_depth({name!r}) of '
                        f'{type(getattr(module, "backbone", module)).__name__}'
                        f' gave ({layer_id}, {num_layers}); the depth must be '
                        f'in [0, num_layers)')
                scale = rate**(num_layers - layer_id - 1)
                group = dict(params=[param], param_name=name,
                             layer_id=layer_id, lr_scale=scale,
                             lr=self.base_lr * scale * self._lr_mult(name))
                if weight_decay is not None:
                    group['weight_decay'] = weight_decay * self._decay_mult(
                        name, param, owner)
                params.append(group)
        outside = sum(not g['param_name'].startswith(prefix) for g in params)
        print_log(f'layer-wise lr decay (rate {rate}): {len(params)} '
                  f'parameter groups, {outside} outside the backbone at the '
                  f'base lr', logger='current', level=10)  # DEBUG
