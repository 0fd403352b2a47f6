"""Models: backbones, necks, heads and classifiers."""
from mmbackbone.apis import build_backbone
from .backbones import *  # noqa: F401,F403
from .backbones import __all__ as _backbones

__all__ = ['build_backbone', *_backbones]
