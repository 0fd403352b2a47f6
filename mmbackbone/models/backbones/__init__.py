"""Backbone families, one file each."""
from .base_backbone import BaseBackbone
from .cspnet import CSPDarkNet, CSPNet, CSPResNet, CSPResNeXt
from .dla import DLA
from .exported_backbone import ExportedBackbone
from .pyramid_backbone import PyramidBackbone
from .regnet import RegNet
from .resnet import ResNet, ResNetV1c, ResNetV1d
from .timm_backbone import TIMMBackbone
from .torchscript_backbone import TorchScriptBackbone
from .vision_transformer import VisionTransformer

__all__ = ['BaseBackbone', 'CSPDarkNet', 'CSPNet', 'CSPResNet', 'CSPResNeXt', 'DLA', 'ExportedBackbone', 'PyramidBackbone', 'RegNet', 'ResNet', 'ResNetV1c', 'ResNetV1d', 'TIMMBackbone', 'TorchScriptBackbone', 'VisionTransformer']
