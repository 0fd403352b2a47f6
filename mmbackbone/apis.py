"""Public entry points: build_backbone, list_backbones,
optimize_for_inference (implemented in :mod:`mmbackbone.deploy`)."""
import fnmatch
import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional

from mmbackbone.deploy import optimize_for_inference
from mmbackbone.registry import MODELS
from mmbackbone.utils import closest

__all__ = ['build_backbone', 'list_backbones', 'optimize_for_inference',
           'build_from_config', 'resolve_type', 'check_config_types',
           'check_arguments']

#: Errors a bad config may raise; anything else from a constructor is
#: reported as a ValueError naming the type and the config.
CONFIG_ERRORS = (KeyError, ValueError, TypeError, FileNotFoundError)


def _registries() -> Dict[str, Any]:
    """Every registry scope reachable from mmengine's root MODELS."""
    root = MODELS
    while root.parent is not None:
        root = root.parent
    found, stack = {}, [root]
    while stack:
        registry = stack.pop()
        found[registry.scope] = registry
        stack.extend(registry.children.values())
    return found


def _registered_objects() -> List[Any]:
    objects = []
    for registry in _registries().values():
        objects.extend(registry.module_dict.values())
    return objects


def resolve_type(type_: Any, registry=MODELS, arg: str = 'type') -> Callable:
    """Find a registered class or function by name, scoped or not.

    Only registered objects are returned: a dotted path such as
    ``'os.system'`` is refused instead of imported.

    Raises:
        KeyError: the name is not registered (close names suggested).
        ValueError: a dotted name whose scope is no registry.
        TypeError: an object that is not registered.
    """
    if not isinstance(type_, str):
        if callable(type_) and any(type_ is obj
                                   for obj in _registered_objects()):
            return type_
        raise TypeError(f'{arg}={type_!r} is neither a registered name nor '
                        f'a registered class or function; register it with '
                        f'@MODELS.register_module()')
    if '.' in type_:
        scope, name = type_.split('.', 1)
        registries = _registries()
        if scope not in registries:
            raise ValueError(
                f'{arg}={type_!r} is not a registered type: configs may '
                f'name registered types only (optionally scoped, e.g. '
                f"'mmbackbone.ResNet'), never an import path. Known scopes: "
                f'{sorted(registries)}')
        registry = registries[scope]
        type_ = name
    obj = registry.module_dict.get(type_)
    if obj is None:  # registered on first lookup (LAZY_MODEL_MODULES)
        registry.import_from_location()
        obj = registry.module_dict.get(type_)
    if obj is None:
        names = sorted(registry.module_dict)
        raise KeyError(f'{arg}={type_!r} is not registered in scope '
                       f"'{registry.scope}'.{closest(type_, names)} "
                       f'Registered: {", ".join(names)}')
    return obj


def _all_registries() -> List[Any]:
    """Every mmengine registry (models, hooks, optimizers, ...), all scopes."""
    from mmengine.registry import Registry, root
    stack = [r for r in vars(root).values() if isinstance(r, Registry)]
    found: Dict[int, Any] = {}
    while stack:
        registry = stack.pop()
        if id(registry) not in found:
            found[id(registry)] = registry
            stack.extend(registry.children.values())
    return list(found.values())


def _registered_anywhere(name: str, scope: Optional[str] = None) -> bool:
    registries = [r for r in _all_registries()
                  if scope is None or r.scope == scope]
    if any(name in r.module_dict for r in registries):
        return True
    for registry in registries:  # lazy locations, e.g. mmbackbone.engine
        if registry.scope in ('mmbackbone', scope):
            registry.import_from_location()
    return any(name in r.module_dict for r in registries)


def _check_scoped_name(value: str, where: str) -> None:
    """``'scope.Name'``: Name must be registered in that scope.

    mmengine's ``Registry.get`` imports any dotted path it cannot find
    (``'mmengine.dump'``, ``'mmengine.runner.runner.os.system'``), so an
    unregistered name behind a known scope is refused here.
    """
    scope, name = value.split('.', 1)
    if '.' in name or not _registered_anywhere(name, scope):
        names = sorted({n for r in _all_registries() if r.scope == scope
                        for n in r.module_dict})
        raise KeyError(f'{where}={value!r}: {name!r} is not registered in '
                       f'scope {scope!r}; configs may name registered types '
                       f'only, never an import path.{closest(name, names)}')


def _check_plain_name(value: str, where: str) -> None:
    """An unscoped name that no registry knows must not name a module:
    mmengine's ``Registry.get`` would import it (running its code).

    The module is looked for first: most names (``'BN'``, ``'Conv2d'``)
    name none, and then the registries' lazy locations (the engine, the
    datasets, the mmengine models: seconds of imports) stay unimported.
    """
    import importlib.util
    try:
        spec = importlib.util.find_spec(value)
    except (ImportError, ValueError, AttributeError):
        spec = None
    if spec is not None and not _registered_anywhere(value):
        raise ValueError(f'{where}={value!r} is not a registered type but '
                         f'the name of an importable module; configs may '
                         f'name registered types only (nothing is imported)')


def _initializer_registries() -> Dict[str, Any]:
    from mmbackbone.models.init_cfg import _initializer_registries
    return _initializer_registries()


def _registered_initializer(name: str, scope: Optional[str]) -> bool:
    """``name`` in ``scope``'s weight-initializer registry or its parents
    (as ``init_cfg`` resolves it), or in any scope when ``scope`` is None."""
    registries = _initializer_registries()
    if scope is None:
        return any(name in r.module_dict for r in registries.values())
    registry = registries.get(scope)
    while registry is not None:
        if name in registry.module_dict:
            return True
        registry = registry.parent
    return False


def _check_initializer_type(value: Any, where: str) -> None:
    """An ``init_cfg`` type: a registered weight initializer (scoped or
    not, as :mod:`mmbackbone.models.init_cfg` resolves it), or a spelling
    of the loader that mmbackbone routes to its own (``'PretrainedInit'``,
    the class ``PretrainedInit`` or a subclass). Nothing is imported."""
    from mmengine.model.weight_init import PretrainedInit

    from mmbackbone.models.init_cfg import PRETRAINED_NAMES
    registries = _initializer_registries()
    names = sorted({n for r in registries.values() for n in r.module_dict})
    if isinstance(value, str):
        scope, _, name = value.rpartition('.')
        if '.' in scope:
            raise ValueError(
                f'{where}={value!r} is an import path; init_cfg may name '
                f"registered weight initializers only (e.g. 'Kaiming' or "
                f"'mmengine.Kaiming'), never an import path")
        if scope and scope not in registries:
            example = (f' (e.g. {name!r} or \'mmengine.{name}\')'
                       if name in names else '')
            raise ValueError(
                f'{where}={value!r}: {scope!r} is not a scope with weight '
                f'initializers (known: {sorted(registries)}); init_cfg may '
                f'name registered weight initializers only{example}, never '
                f'an import path')
        if not _registered_initializer(name, scope or None) and not (
                not scope and name in PRETRAINED_NAMES):
            where_ = f' in scope {scope!r}' if scope else ''
            raise KeyError(f'{where}={value!r}: {name!r} is not a registered '
                           f'weight initializer{where_}.'
                           f'{closest(name, names)} Registered: '
                           f'{", ".join(names)}')
        return
    if isinstance(value, type) and issubclass(value, PretrainedInit):
        return  # loads are routed to mmbackbone's loader
    if callable(value) and any(value is obj for r in registries.values()
                               for obj in r.module_dict.values()):
        return
    raise TypeError(f'{where}={value!r} is neither a registered weight '
                    f'initializer name nor a registered initializer class; '
                    f"e.g. 'Kaiming' or 'Pretrained'")


def _check_init_cfg(cfg: Any, path: str) -> None:
    """``type`` and ``_scope_`` at any depth of an ``init_cfg`` (its
    entries, their ``override``), checked against the weight-initializer
    registries."""
    if isinstance(cfg, Mapping):
        for key, value in cfg.items():
            where = f'{path}.{key}'
            if key == 'type':
                _check_initializer_type(value, where)
            elif key in ('_scope_', 'default_scope') and value is not None:
                known = (_initializer_registries() if key == '_scope_'
                         else _registries())
                if not isinstance(value, str) or value not in known:
                    # mmengine would import f'{value}.registry'
                    raise ValueError(f'{where}={value!r} is not a registered '
                                     f'scope; known scopes: {sorted(known)}')
            else:
                _check_init_cfg(value, where)
    elif isinstance(cfg, (list, tuple)):
        for i, value in enumerate(cfg):
            _check_init_cfg(value, f'{path}[{i}]')


def check_config_types(cfg: Any, path: str = 'cfg') -> None:
    """Refuse dotted import paths in any nested ``type`` of a config.

    Types name registered classes of any registry (scoped or not); inside
    ``init_cfg`` (at any depth, ``override`` included) they name
    registered weight initializers, resolved as ``init_cfg`` resolves them
    (``'mmbackbone.Pretrained'`` is mmengine's, found through the scope's
    parent).

    Example:
        >>> check_config_types(dict(type='ResNet', norm_cfg=dict(type='BN')))
        >>> check_config_types(dict(type='os.system'))
        Traceback (most recent call last):
        ...
        ValueError: cfg.type='os.system' is a dotted path that is not a registered scope; configs may name registered types only (e.g. 'ResNet' or 'mmbackbone.ResNet')
    """
    if isinstance(cfg, Mapping):
        for key, value in cfg.items():
            where = f'{path}.{key}'
            if key == 'type' and isinstance(value, str) and '.' in value:
                scope = value.split('.', 1)[0]
                if scope not in _registries():
                    raise ValueError(
                        f'{where}={value!r} is a dotted path that is not a '
                        f'registered scope; configs may name registered '
                        f"types only (e.g. 'ResNet' or 'mmbackbone.ResNet')")
                _check_scoped_name(value, where)
            elif key == 'type' and isinstance(value, str):
                _check_plain_name(value, where)
            elif key == 'type' and not isinstance(value, str):
                resolve_type(value, arg=where)
            elif key == 'init_cfg':
                _check_init_cfg(value, where)
            elif key in ('_scope_', 'default_scope') and value is not None \
                    and (not isinstance(value, str)
                         or value not in _registries()):
                # mmengine would import f'{value}.registry' (running code)
                raise ValueError(f'{where}={value!r} is not a registered '
                                 f'scope; known scopes: '
                                 f'{sorted(_registries())}')
            else:
                check_config_types(value, where)
    elif isinstance(cfg, (list, tuple)):
        for i, value in enumerate(cfg):
            check_config_types(value, f'{path}[{i}]')


#: Argument names of the backbone code mmbackbone replaces (the seed
#: ResNet/DLA/RegNet modules, a YAML model config, Mammoth) and what they
#: are here; an unknown argument with one of these names says so.
OLD_ARGUMENTS: Dict[str, str] = {
    'return_idx': 'out_indices',
    'return_index': 'out_indices',
    'dla': "arch (DLA(arch='dla34'))",
    'variant': "arch (RegNet(arch='regnety_8.0gf') for 'regnet-y-080') or "
               "depth (ResNet(depth=50))",
    'architecture': "type plus depth or arch ('resnet50' is "
                    "dict(type='ResNet', depth=50); 'jit' is "
                    "dict(type='TorchScriptBackbone', path=...))",
    'use_pretrained': 'pretrained (True loads the default weights of the '
                      'arch)',
    'backbone_trainable': "frozen_stages (backbone_trainable=False is "
                          "frozen_stages='all')",
    'input_size': 'a data setting here (a Resize in the data pipeline); '
                  'only TorchScriptBackbone takes input_size',
    'path': "TorchScriptBackbone's path; weights of a native backbone are "
            "init_cfg=dict(type='Pretrained', checkpoint=...)",
    'nr_features': 'the out_features attribute here, known from the arch; '
                   'only TorchScriptBackbone takes nr_features',
    'intermediate_mlp_depth': "the depth of an MLPNeck (ImageClassifier("
                              "neck=[dict(type='GlobalAveragePooling'), "
                              "dict(type='MLPNeck', depth=2)]))",
    'returnt': "a forward argument of ImageClassifier "
               "(model(x, returnt='features')), not a constructor one",
}


def old_argument_hint(key: str) -> str:
    """``" return_idx is out_indices here."`` for an old spelling, else ``""``.

    Example:
        >>> old_argument_hint('return_idx')
        ' return_idx is out_indices here.'
    """
    meaning = OLD_ARGUMENTS.get(key)
    return f' {key} is {meaning} here.' if meaning else ''


def check_arguments(obj: Callable, args: Mapping[str, Any],
                    type_name: str) -> None:
    """Name unknown constructor arguments before building: close names,
    and what an old spelling (:data:`OLD_ARGUMENTS`) means here.

    Example:
        >>> from mmbackbone.models import ResNet
        >>> check_arguments(ResNet, dict(return_idx=[0, 1]), 'ResNet')
        Traceback (most recent call last):
        ...
        TypeError: ResNet got an unknown argument 'return_idx'. return_idx is out_indices here. Valid arguments: ...
    """
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # builtins without a signature
        return
    params = signature.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in args:
        if key not in valid:
            hint = old_argument_hint(key) or closest(key, valid)
            raise TypeError(f'{type_name} got an unknown argument {key!r}.'
                            f'{hint} Valid arguments: {", ".join(valid)}')


#: Integers in a model config must lie strictly within +-2**31: no layer
#: count, width or size is that large, and a garbage value such as
#: ``num_layers=2**40`` must fail at once instead of exhausting memory.
MAX_CONFIG_INT = 2**31


def check_int_range(value: Any, where: str, type_name: str) -> None:
    """Refuse integers beyond :data:`MAX_CONFIG_INT`, naming the key."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -MAX_CONFIG_INT < value < MAX_CONFIG_INT:
            raise ValueError(f'{type_name}: {where}={value!r} is out of '
                             f'range; integers in a model config must lie '
                             f'within +-2**31')
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_int_range(item, f'{where}.{key}', type_name)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_int_range(item, f'{where}[{i}]', type_name)


def build_from_config(cfg: Mapping, registry=MODELS, what: str = 'model'):
    """Build a registered object from a config dict, safely.

    Shared by :func:`build_backbone` and the model builders of necks,
    heads and classifiers.
    """
    if not isinstance(cfg, Mapping):
        raise TypeError(f'{what} config must be a dict with a "type" key; '
                        f'got {type(cfg).__name__}: {cfg!r}')
    if 'type' not in cfg:
        raise KeyError(f'{what} config {dict(cfg)!r} has no "type" key; '
                       f'e.g. dict(type="ResNet", depth=50)')
    check_config_types(cfg)
    args = dict(cfg)
    type_ = args.pop('type')
    args.pop('_scope_', None)
    obj = resolve_type(type_, registry)
    name = getattr(obj, '__name__', str(obj))
    check_arguments(obj, args, name)
    for key, value in args.items():
        check_int_range(value, key, name)
    from mmengine.registry import DefaultScope
    try:
        with DefaultScope.overwrite_default_scope(registry.scope):
            return obj(**args)
    except CONFIG_ERRORS:
        raise
    except Exception as err:  # e.g. an assert or a shape error deep inside
        raise ValueError(f'{name}({", ".join(f"{k}={v!r}" for k, v in args.items())}) '
                         f'failed: {type(err).__name__}: {err}') from err


def build_backbone(cfg: Mapping):
    """Build a registered backbone from a config dict.

    Args:
        cfg (dict): ``type`` (a registered name such as ``'ResNet'`` or
            ``'mmbackbone.ResNet'``, or a registered class) and the
            constructor arguments.

    Returns:
        nn.Module: the backbone; ``forward(x)`` returns a tuple of maps.

    Raises:
        KeyError: unknown ``type`` (close names suggested) or arch key.
        TypeError: unknown argument, or a type that is not registered.
        ValueError: a value out of range, or a dotted import path.

    Example:
        >>> import torch
        >>> from mmbackbone import build_backbone
        >>> model = build_backbone(dict(type='ResNet', depth=18,
        ...                             out_indices=(0, 1, 2, 3))).eval()
        >>> [tuple(o.shape) for o in model(torch.rand(1, 3, 64, 64))]
        [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]
    """
    return build_from_config(cfg, MODELS, 'backbone')


def list_backbones(pattern: Optional[str] = None) -> List[str]:
    """Names of the registered backbone types, sorted.

    Args:
        pattern (str, optional): an fnmatch pattern, e.g. ``'ResNet*'``.

    Example:
        >>> list_backbones('ResNet*')
        ['ResNet', 'ResNetV1c', 'ResNetV1d']
    """
    # every backbone registers on import; the lazy types are no backbones
    from mmbackbone.models.backbones.base_backbone import BaseBackbone
    names = [name for name, obj in MODELS.module_dict.items()
             if getattr(obj, 'is_backbone', False)
             or (inspect.isclass(obj) and issubclass(obj, BaseBackbone))]
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return sorted(names)
