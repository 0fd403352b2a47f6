"""Small helpers shared by every family."""
from .base_module import BaseModule
from .indices import normalize_frozen_stages, normalize_out_indices
from .suggest import closest

__all__ = ['BaseModule', 'normalize_out_indices', 'normalize_frozen_stages',
           'closest']
