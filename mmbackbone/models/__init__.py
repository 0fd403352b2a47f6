"""Models: backbones, necks, heads and classifiers.

``ImageClassifier`` and ``ClsDataPreprocessor`` are mmengine models; their
modules load ``mmengine.model`` (about 1 s), so they are imported on first
use: an attribute of this package, or the first lookup of a name in the
``mmbackbone`` registry scope (see
:data:`mmbackbone.registry.LAZY_MODEL_MODULES`).

Example:
    >>> import mmbackbone.models as models
    >>> models.ImageClassifier.__module__
    'mmbackbone.models.classifiers.image'
"""
import importlib
from typing import Any, List

from mmbackbone.apis import build_backbone
from mmbackbone.registry import LAZY_MODEL_MODULES
from .backbones import *  # noqa: F401,F403
from .backbones import __all__ as _backbones
from .heads import CosineSimilarityHead, LinearClsHead
from .losses import CrossEntropyLoss
from .necks import GlobalAveragePooling, MLPNeck

__all__ = ['build_backbone', *_backbones, 'ImageClassifier',
           'ClsDataPreprocessor', 'CosineSimilarityHead', 'LinearClsHead',
           'CrossEntropyLoss', 'GlobalAveragePooling', 'MLPNeck']


def __getattr__(name: str) -> Any:
    """Import the module of a lazily loaded type on first access."""
    if name in LAZY_MODEL_MODULES:
        value = getattr(importlib.import_module(LAZY_MODEL_MODULES[name]),
                        name)
        globals()[name] = value
        return value
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> List[str]:
    return sorted({*globals(), *LAZY_MODEL_MODULES})
