"""mmbackbone: vision backbones behind one contract.

``import mmbackbone`` registers every type in its own registry scope (the
mmengine model types ``ImageClassifier`` and ``ClsDataPreprocessor`` on
the first lookup there: their modules load ``mmengine.model``) and
changes nothing outside the package: no import hook, no patched module.
Code written for mmcls 0.x that imports ``mmcv.utils.parrots_wrapper``
calls :func:`mmbackbone.compat.alias_mmcv_parrots_wrapper` first.

Example:
    >>> import torch, mmbackbone
    >>> model = mmbackbone.build_backbone(dict(type='ResNet', depth=18))
    >>> model.out_channels
    (512,)
"""
from . import models  # noqa: F401  (registers the types)
from .apis import build_backbone, list_backbones, optimize_for_inference
from .version import __version__

__all__ = ['build_backbone', 'list_backbones', 'optimize_for_inference',
           '__version__']
