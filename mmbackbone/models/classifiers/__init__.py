"""Classifiers: a backbone, necks and a head in one mmengine model."""
from .image import ImageClassifier

__all__ = ['ImageClassifier']
