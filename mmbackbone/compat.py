"""Compatibility with code written for mmcls 0.x / mmcv 1.x.

mmcls tutorials check frozen norm layers with
``from mmcv.utils.parrots_wrapper import _BatchNorm``. mmcv 2 moved that
module to ``mmengine.utils.dl_utils.parrots_wrapper``; when the old path is
missing, it is registered as an alias of the new one, so such snippets run
unchanged with mmbackbone. Nothing is replaced if the path exists.
"""
import importlib.util
import sys


def alias_mmcv_parrots_wrapper() -> None:
    """Make ``mmcv.utils.parrots_wrapper`` importable on mmcv 2."""
    name = 'mmcv.utils.parrots_wrapper'
    if name in sys.modules:
        return
    try:
        if importlib.util.find_spec(name) is not None:
            return
    except ModuleNotFoundError:
        return  # no mmcv at all
    import mmcv.utils
    from mmengine.utils.dl_utils import parrots_wrapper
    sys.modules[name] = parrots_wrapper
    mmcv.utils.parrots_wrapper = parrots_wrapper
