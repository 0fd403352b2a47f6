"""Models: backbones, necks, heads and classifiers."""
from mmbackbone.apis import build_backbone
from .backbones import *  # noqa: F401,F403
from .backbones import __all__ as _backbones
from .classifiers import ImageClassifier
from .data_preprocessor import ClsDataPreprocessor
from .heads import CosineSimilarityHead, LinearClsHead
from .losses import CrossEntropyLoss
from .necks import GlobalAveragePooling, MLPNeck

__all__ = ['build_backbone', *_backbones, 'ImageClassifier',
           'ClsDataPreprocessor', 'CosineSimilarityHead', 'LinearClsHead',
           'CrossEntropyLoss', 'GlobalAveragePooling', 'MLPNeck']
