"""Backbone families, one file each."""
from .base_backbone import BaseBackbone
from .resnet import ResNet, ResNetV1c, ResNetV1d

__all__ = ['BaseBackbone', 'ResNet', 'ResNetV1c', 'ResNetV1d']
