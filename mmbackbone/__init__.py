"""mmbackbone: vision backbones behind one contract.

Example:
    >>> import torch, mmbackbone
    >>> model = mmbackbone.build_backbone(dict(type='ResNet', depth=18))
    >>> model.out_channels
    (512,)
"""
from . import models  # noqa: F401  (registers every type)
from .compat import alias_mmcv_parrots_wrapper
from .apis import build_backbone, list_backbones, optimize_for_inference
from .version import __version__

__all__ = ['build_backbone', 'list_backbones', 'optimize_for_inference',
           '__version__']

alias_mmcv_parrots_wrapper()
