"""Necks: between a backbone's tuple of maps and a head."""
from .gap import GlobalAveragePooling
from .mlp import MLPNeck
from .simple_pyramid import SimpleFeaturePyramid

__all__ = ['GlobalAveragePooling', 'MLPNeck', 'SimpleFeaturePyramid']
