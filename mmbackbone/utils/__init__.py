"""Small helpers shared by every family."""
from .indices import normalize_frozen_stages, normalize_out_indices
from .suggest import closest

__all__ = ['normalize_out_indices', 'normalize_frozen_stages', 'closest']
