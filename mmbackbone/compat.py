"""Compatibility with code written for mmcls 0.x / mmcv 1.x.

mmcls tutorials check frozen norm layers with
``from mmcv.utils.parrots_wrapper import _BatchNorm``. mmcv 2 moved that
module to ``mmengine.utils.dl_utils.parrots_wrapper``; when the old path is
missing, :func:`alias_mmcv_parrots_wrapper` makes importing it give the
new one, so such snippets run with mmbackbone after one call. Nothing is
replaced if the path exists.

The alias is opt-in: ``import mmbackbone`` installs nothing. Once called,
it is an import hook that answers for that one module name only, so the
call does not import mmcv (about 0.25 s) to set it up.
"""
import importlib.abc
import importlib.util
import os
import sys

ALIASED = 'mmcv.utils.parrots_wrapper'
TARGET = 'mmengine.utils.dl_utils.parrots_wrapper'


class _AliasLoader(importlib.abc.Loader):
    """Makes the aliased name the already-imported target module."""

    def create_module(self, spec):
        module = importlib.import_module(TARGET)
        self.target_spec = module.__spec__
        return module

    def exec_module(self, module):
        # The target ran when it was imported; the import system has just
        # given it the alias's spec: give it back its own.
        module.__spec__ = self.target_spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Finds :data:`ALIASED` (and nothing else) when mmcv lacks it."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != ALIASED:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader())


def _mmcv_has_parrots_wrapper() -> bool:
    """Whether the installed mmcv ships the module (found without
    importing mmcv)."""
    spec = importlib.util.find_spec('mmcv')
    for root in (spec.submodule_search_locations or []) if spec else []:
        base = os.path.join(root, 'utils', 'parrots_wrapper')
        if os.path.exists(base + '.py') or os.path.isdir(base):
            return True
    return False


def alias_mmcv_parrots_wrapper() -> None:
    """Make ``mmcv.utils.parrots_wrapper`` importable on mmcv 2.

    Installs an import hook (first in ``sys.meta_path``) for that one name
    when mmcv is installed without it; does nothing when mmcv 1.x ships the
    module, when mmcv is missing, or when already called. Call it before
    running mmcls 0.x code that imports the old path.

    Example:
        >>> from mmbackbone.compat import alias_mmcv_parrots_wrapper
        >>> alias_mmcv_parrots_wrapper()
        >>> from mmcv.utils.parrots_wrapper import _BatchNorm
        >>> _BatchNorm.__name__
        '_BatchNorm'
    """
    if ALIASED in sys.modules or any(isinstance(f, _AliasFinder)
                                     for f in sys.meta_path):
        return
    if importlib.util.find_spec('mmcv') is None or \
            _mmcv_has_parrots_wrapper():
        return  # no mmcv at all, or mmcv 1.x with the real module
    sys.meta_path.insert(0, _AliasFinder())
