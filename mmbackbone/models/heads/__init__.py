"""Classification heads."""
from .cls_head import ClsHead, LinearClsHead
from .cosine_head import CosineSimilarityHead

__all__ = ['ClsHead', 'LinearClsHead', 'CosineSimilarityHead']
