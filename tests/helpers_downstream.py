"""Shared by the downstream tests: mmdet / mmseg on mmcv-lite.

``mmdet.models`` and ``mmseg.models`` import ``mmcv.ops``, which loads the
compiled extension ``mmcv._ext`` that mmcv-lite does not ship.
:func:`install_mmcv_ext_standin` puts a stand-in module in ``sys.modules``
before they are imported: every attribute of it is a function that raises
``RuntimeError('needs compiled mmcv')``, so a test fails loudly if a
compiled op is ever called (training losses on CPU never need one).
"""
import importlib.machinery
import importlib.util
import sys
import types

import torch

STANDIN_MESSAGE = 'needs compiled mmcv'


def _compiled_ext_present() -> bool:
    module = sys.modules.get('mmcv._ext')
    if module is not None:
        return not getattr(module, '__mmbackbone_standin__', False)
    try:
        return importlib.util.find_spec('mmcv._ext') is not None
    except (ImportError, ValueError):
        return False


def install_mmcv_ext_standin() -> types.ModuleType:
    """Install (once) and return the stand-in ``mmcv._ext`` module.

    A real compiled ``mmcv._ext`` (full mmcv) is left in place.
    """
    if _compiled_ext_present():
        import mmcv._ext as ext  # noqa: F401
        return ext
    module = sys.modules.get('mmcv._ext')
    if module is not None:
        return module
    module = types.ModuleType('mmcv._ext')
    module.__mmbackbone_standin__ = True
    # a spec without a loader: importlib.util.find_spec works on it, and
    # mmengine's mmcv_full_available() (pkgutil.find_loader) stays False
    module.__spec__ = importlib.machinery.ModuleSpec('mmcv._ext', None)

    def __getattr__(name):
        if name.startswith('__') and name.endswith('__'):
            raise AttributeError(name)

        def compiled_op(*args, **kwargs):
            raise RuntimeError(f'mmcv._ext.{name} {STANDIN_MESSAGE} (the '
                               f'mmcv-lite stand-in was called)')
        compiled_op.__name__ = name
        return compiled_op

    module.__getattr__ = __getattr__
    sys.modules['mmcv._ext'] = module
    return module


def save_backbone_checkpoint(backbone_cfg: dict, path) -> dict:
    """Save a randomly initialised backbone of ours as an mmengine-style
    classifier checkpoint (``state_dict`` with ``backbone.`` keys)."""
    from mmbackbone import build_backbone
    model = build_backbone(backbone_cfg)
    model.init_weights()
    state = {f'backbone.{k}': v for k, v in model.state_dict().items()}
    torch.save({'state_dict': state, 'meta': {}}, str(path))
    return state
