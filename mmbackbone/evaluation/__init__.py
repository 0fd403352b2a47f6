"""Metrics registered in ``mmbackbone.registry.METRICS``."""
from .metrics import Accuracy

__all__ = ['Accuracy']
