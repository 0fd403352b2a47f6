"""Backbone families, one file each."""
from .base_backbone import BaseBackbone
from .dla import DLA
from .resnet import ResNet, ResNetV1c, ResNetV1d

__all__ = ['BaseBackbone', 'DLA', 'ResNet', 'ResNetV1c', 'ResNetV1d']
