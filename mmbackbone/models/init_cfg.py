"""One route for every ``init_cfg`` entry that loads weights.

mmengine's ``BaseModule.init_weights`` hands ``init_cfg`` to its weight
initializers. The one registered as ``'Pretrained'``
(``mmengine.model.PretrainedInit``) loads with mmengine's
``load_checkpoint``: a non-strict load that only warns about keys that do
not fit, and that unpickles with whatever ``torch.load`` defaults to. It
is reached by many spellings: ``'Pretrained'``, any scoped
``'<scope>.Pretrained'``, the class ``PretrainedInit`` itself (Python
configs), any name registered to a subclass of it, and a ``Pretrained``
inside ``override=`` (which mmengine applies before the children are
initialised, so the children's own initialisation then overwrites it).

:class:`PretrainedRoutingMixin` (used by every ``BaseModule`` of
mmbackbone: backbones, heads, :class:`ImageClassifier`) plans ``init_cfg``
with :func:`plan_init_cfg` before mmengine sees it:

* every entry able to load weights, at top level or inside ``override``
  (an override entry without ``type`` inherits its parent's), becomes a
  :class:`PretrainedLoad` that goes through
  :func:`mmbackbone.checkpoint.load_pretrained` (safe read, shape checks,
  one report), into the module or, for an override, into its ``name``
  submodule;
* everything else is left to mmengine's initializers, which may then name
  registered initializers only (a dotted import path is refused: mmengine
  would import it and call what it finds);
* what cannot be routed is refused with :class:`InitCfgError` naming the
  entry and what to write instead.

Order (mmengine's priority): the other entries, then the children's
``init_weights``, then the loads, each once.

Example:
    >>> plan = plan_init_cfg([dict(type='Kaiming', layer='Conv2d'),
    ...                       dict(type='mmengine.Pretrained',
    ...                            checkpoint='r18.pth', prefix='backbone')],
    ...                      'ResNet')
    >>> plan.others
    [{'type': 'Kaiming', 'layer': 'Conv2d'}]
    >>> [(load.checkpoint, load.prefix, load.name) for load in plan.loads]
    [('r18.pth', 'backbone', None)]
"""
import copy
import functools
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from torch import nn

#: Last components of a ``type`` string that name mmengine's loader.
PRETRAINED_NAMES = ('Pretrained', 'PretrainedInit')
#: Arguments of a load entry (``map_location`` is accepted for mmengine
#: configs: tensors are read on the CPU and copied to the model's device).
LOAD_KEYS = ('checkpoint', 'prefix', 'map_location')
#: What a load entry should look like, for error messages.
CANONICAL = "dict(type='Pretrained', checkpoint=..., prefix=...)"


class InitCfgError(ValueError):
    """An ``init_cfg`` entry that mmbackbone refuses to run."""


@dataclass(frozen=True)
class PretrainedLoad:
    """One load planned from ``init_cfg``.

    Attributes:
        checkpoint: path, URL or scheme name, as given.
        prefix: keep only the file's keys under this prefix.
        name: submodule to load into (from ``override``), or None for the
            module that owns the ``init_cfg``.
        where: the entry's place in the config, e.g.
            ``'ImageClassifier.init_cfg[0].override[1]'``.
    """
    checkpoint: Any
    prefix: Optional[str]
    name: Optional[str]
    where: str

    def target(self, module: nn.Module) -> nn.Module:
        """The module this load goes into."""
        if self.name is None:
            return module
        if not isinstance(self.name, str) or not self.name:
            raise InitCfgError(f'{self.where}: name={self.name!r} must be '
                               f'the name of a submodule, e.g. '
                               f"name='backbone'")
        try:
            found = module.get_submodule(self.name)
        except AttributeError:
            found = None
        if not isinstance(found, nn.Module):
            children = [n for n, _ in module.named_children()]
            raise KeyError(f'{self.where}: name={self.name!r} is not a '
                           f'submodule of {type(module).__name__}; its '
                           f'submodules are {children}')
        return found

    def apply(self, module: nn.Module):
        """Load into :meth:`target`; returns the ``LoadReport``."""
        from mmbackbone.checkpoint import load_pretrained
        return load_pretrained(self.target(module), self.checkpoint,
                               prefix=self.prefix)


@dataclass
class InitPlan:
    """``init_cfg`` split into mmengine's part and the loads."""
    others: Optional[List[dict]] = None
    loads: List[PretrainedLoad] = field(default_factory=list)

    @property
    def loads_whole(self) -> bool:
        """Whether a load goes into the owning module itself."""
        return any(load.name is None for load in self.loads)


# ------------------------------------------------------------- resolving
def _initializer_registries() -> Dict[str, Any]:
    """Every weight-initializer registry, by scope."""
    from mmengine.registry import WEIGHT_INITIALIZERS

    import mmbackbone.registry  # noqa: F401  (our scope's registry)
    found: Dict[str, Any] = {}
    stack = [WEIGHT_INITIALIZERS]
    while stack:
        registry = stack.pop()
        found.setdefault(registry.scope, registry)
        stack.extend(registry.children.values())
    return found


def _lookup(name: str, scope: Optional[str], where: str) -> Any:
    """The registered initializer mmengine would build, without imports.

    mmengine's ``Registry.get`` imports a dotted name it does not find
    (``'os.system'`` would be called with the entry's arguments); here only
    registered names resolve.
    """
    registries = _initializer_registries()
    from mmengine.registry import WEIGHT_INITIALIZERS
    if scope is None:
        from mmengine.registry import DefaultScope
        current = DefaultScope.get_current_instance()
        scope_name = None if current is None else current.scope_name
        registry = registries.get(scope_name, WEIGHT_INITIALIZERS)
    else:
        registry = registries.get(scope)
        if registry is None:
            raise KeyError(f'{where}: scope {scope!r} has no weight '
                           f'initializers (known scopes: '
                           f'{sorted(registries)}); init_cfg may name '
                           f'registered initializers only, never an import '
                           f'path')
    while registry is not None:
        if name in registry.module_dict:
            return registry.module_dict[name]
        registry = registry.parent
    names = sorted({n for r in registries.values() for n in r.module_dict})
    raise KeyError(f'{where}: type {name!r} is not a registered weight '
                   f'initializer; registered: {", ".join(names)}')


def loads_weights(type_: Any, scope: Optional[str] = None,
                  where: str = 'init_cfg') -> bool:
    """Whether an ``init_cfg`` type would load weights.

    True for every spelling of mmengine's ``PretrainedInit``: a string whose
    last dotted component is ``'Pretrained'`` or ``'PretrainedInit'``
    (``'mmengine.Pretrained'``, any scope), a name registered to a subclass
    of it, and the class or a subclass itself.

    Raises:
        KeyError: a string that names no registered initializer (an
            import path, an unknown scope or name).
        InitCfgError: ``functools.partial`` of the loader.
    """
    from mmengine.model.weight_init import PretrainedInit
    if isinstance(type_, functools.partial):
        inner = type_.func
        if isinstance(inner, type) and issubclass(inner, PretrainedInit):
            raise InitCfgError(f'{where}: type={type_!r} wraps '
                               f'{inner.__name__} in functools.partial; '
                               f'write {CANONICAL}')
        return False
    if isinstance(type_, type):
        return issubclass(type_, PretrainedInit)
    if not isinstance(type_, str):
        return False  # mmengine reports what it cannot build
    if type_.rsplit('.', 1)[-1] in PRETRAINED_NAMES:
        return True
    if '.' in type_:
        scope, name = type_.split('.', 1)
        if '.' in name:
            raise KeyError(f'{where}: type={type_!r} is an import path; '
                           f'init_cfg may name registered initializers only '
                           f"(e.g. 'Kaiming' or 'mmengine.Kaiming')")
    else:
        name = type_
    found = _lookup(name, scope, where)
    return isinstance(found, type) and issubclass(found, PretrainedInit)


# --------------------------------------------------------------- planning
def _entry_scope(cfg: dict, where: str) -> Optional[str]:
    scope = cfg.get('_scope_')
    if scope is not None and scope not in _initializer_registries():
        # mmengine would import f'{scope}.registry'
        raise KeyError(f'{where}: _scope_={scope!r} is not a registered '
                       f'scope; known: {sorted(_initializer_registries())}')
    return scope


def _is_load(cfg: dict, where: str) -> bool:
    type_ = cfg['type']
    scope = _entry_scope(cfg, where)
    if isinstance(type_, str) and '.' in type_:
        scope = None  # the type's own scope wins, as in mmengine
    return loads_weights(type_, scope, where)


def _make_load(cfg: dict, where: str, name: Optional[str],
               extra_keys: Tuple[str, ...] = ()) -> PretrainedLoad:
    args = {k: v for k, v in cfg.items()
            if k not in ('type', '_scope_') + extra_keys}
    unknown = sorted(set(args) - set(LOAD_KEYS), key=str)
    if unknown:
        raise KeyError(f'{where}={dict(cfg)!r}: unknown keys {unknown}; '
                       f'valid keys are {", ".join(LOAD_KEYS)}')
    if args.get('checkpoint') in (None, ''):
        raise KeyError(f"{where}={dict(cfg)!r} has no 'checkpoint'; give a "
                       f'file path, URL or scheme name: {CANONICAL}')
    return PretrainedLoad(args['checkpoint'], args.get('prefix'), name, where)


def _as_list(value: Any, where: str) -> List[Any]:
    if isinstance(value, dict):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise TypeError(f'{where}={value!r} must be a dict or a list of dicts')


def plan_init_cfg(init_cfg: Any, owner: str) -> InitPlan:
    """Split ``init_cfg`` into mmengine's entries and the loads.

    Args:
        init_cfg: a dict, a list of dicts, or None.
        owner: the module's class name (or path), used in messages.

    Raises:
        TypeError: an entry that is not a dict with a ``'type'``.
        KeyError: an unknown key in a load entry, a load without
            ``checkpoint``, a type that names no registered initializer.
        InitCfgError: an entry that loads but cannot be routed (two loads
            into one module, a load entry's override that does not load).
    """
    if init_cfg is None:
        return InitPlan()
    base = f'{owner}.init_cfg'
    entries = _as_list(init_cfg, base)
    single = isinstance(init_cfg, dict)
    plan = InitPlan()
    others: List[dict] = []
    for i, entry in enumerate(entries):
        where = base if single else f'{base}[{i}]'
        if not isinstance(entry, dict) or 'type' not in entry:
            raise TypeError(f'{base}={init_cfg!r}: every entry must be a '
                            f"dict with a 'type' key")
        override = entry.get('override')
        if _is_load(entry, where):
            plan.loads.append(_make_load(entry, where, None, ('override', )))
            parent = {k: v for k, v in entry.items()
                      if k not in ('override', 'layer')}
            if override is not None:
                plan.loads.extend(_override_loads(
                    override, parent, f'{where}.override', loading=True))
            continue
        entry = copy.deepcopy(entry)
        if override is not None:
            parent = {k: v for k, v in entry.items()
                      if k not in ('override', 'layer')}
            loads = _override_loads(override, parent, f'{where}.override',
                                    loading=False)
            plan.loads.extend(load for load, _ in loads)
            kept = [item for load, item in loads if load is None]
            if kept:
                entry['override'] = kept if isinstance(override, list) \
                    else kept[0]
            else:
                del entry['override']
        others.append(entry)
    plan.loads = [load for load in plan.loads if load is not None]
    targets: Dict[Optional[str], str] = {}
    for load in plan.loads:
        if load.name in targets:
            into = owner if load.name is None else f'{owner}.{load.name}'
            raise InitCfgError(
                f'{targets[load.name]} and {load.where} both load weights '
                f'into {into}; give one load per module (load other parts '
                f"with override=dict(type='Pretrained', name=..., "
                f'checkpoint=...))')
        targets[load.name] = load.where
    plan.others = others or None
    return plan


def _override_loads(override: Any, parent: dict, base: str, loading: bool):
    """Loads of an ``override`` (mmengine's ``_initialize_override``).

    With ``loading`` (the parent loads) every override must load: a list of
    :class:`PretrainedLoad`. Otherwise ``[(load or None, entry)]``, where
    entries with ``None`` stay with mmengine.
    """
    items = _as_list(override, base)
    single = isinstance(override, dict)
    found = []
    for j, item in enumerate(items):
        where = base if single else f'{base}[{j}]'
        if not isinstance(item, dict):
            raise TypeError(f'{where}={item!r} must be a dict with a '
                            f"'name' key")
        name = item.get('name')
        rest = {k: v for k, v in item.items() if k != 'name'}
        if not rest:  # name only: mmengine applies the parent's config
            load = (_make_load(parent, where, name) if loading else None)
        elif 'type' in rest and _is_load(rest, where):
            if name is None:
                raise InitCfgError(f'{where}={item!r} loads weights but has '
                                   f"no 'name'; give the submodule, e.g. "
                                   f"name='backbone'")
            load = _make_load(rest, where, name)
        elif loading:
            raise InitCfgError(
                f'{where}={item!r}: the override of a Pretrained entry may '
                f'only name submodules to load into; give {item!r} in an '
                f"entry of its own (e.g. dict(type='Constant', val=0, "
                f'layer=[], override=...))')
        else:
            load = None
        found.append(load if loading else (load, item))
    return found


# ----------------------------------------------------------------- mixin
def check_nested_init_cfgs(module: nn.Module) -> None:
    """Refuse a load in the ``init_cfg`` of a submodule that does not
    route its loads (a ``BaseModule`` of another library): mmengine would
    load it with ``PretrainedInit``."""
    from mmbackbone.utils.base_module import BaseModule, mmengine_base_module
    for path, sub in module.named_modules():
        if (not path or isinstance(sub, PretrainedRoutingMixin)
                or not isinstance(sub, (BaseModule, mmengine_base_module()))
                or getattr(sub, 'is_init', False) or not sub.init_cfg):
            continue
        plan = plan_init_cfg(sub.init_cfg, f'{type(module).__name__}.{path}')
        if plan.loads:
            raise InitCfgError(
                f'{plan.loads[0].where} loads weights, but '
                f'{type(sub).__name__} is not an mmbackbone module and '
                f"would load with mmengine's PretrainedInit (unchecked). "
                f'Remove it there and load through the owner: '
                f"init_cfg=dict(type='Normal', layer=[], override=dict("
                f"type='Pretrained', name={path!r}, checkpoint=...))")


class PretrainedRoutingMixin:
    """``init_weights`` that sends every load through ``load_pretrained``.

    Put it before ``BaseModule`` (or ``BaseModel``) in the bases. Order:
    ``init_cfg``'s other entries, the children, :meth:`_init_after_random`
    (unless a load goes into this whole module), then the loads. A module
    already initialised (e.g. loaded at construction with
    ``pretrained=True``) is left alone.
    """

    def init_weights(self) -> None:
        if self._is_init:
            return
        plan = plan_init_cfg(self.init_cfg, type(self).__name__)
        check_nested_init_cfgs(self)
        for load in plan.loads:
            if load.name is not None:
                inner = plan_init_cfg(getattr(load.target(self), 'init_cfg',
                                              None),
                                      f'{type(self).__name__}.{load.name}')
                if inner.loads:
                    raise InitCfgError(
                        f'{load.where} and {inner.loads[0].where} both load '
                        f'weights into {load.name}; give one')
        full, self.init_cfg = self.init_cfg, plan.others
        try:
            super().init_weights()
        finally:
            self.init_cfg = full
        try:
            if not plan.loads_whole:
                self._init_after_random()
            for load in plan.loads:
                load.apply(self)
        except BaseException:
            self._is_init = False
            raise

    def _init_after_random(self) -> None:
        """Hook run after random initialisation (not when a load goes into
        the whole module)."""
