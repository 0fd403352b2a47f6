"""Classification datasets and transforms.

Registered in ``mmbackbone.registry.DATASETS`` / ``TRANSFORMS``.

Example:
    >>> from mmbackbone.registry import DATASETS
    >>> dataset = DATASETS.build(dict(type='DigitsDataset', split='val'))
    >>> len(dataset), dataset.metainfo['classes'][:3]
    (359, ('0', '1', '2'))
"""
from .base import BaseClsDataset
from .digits import DigitsDataset
from .image_folder import ImageFolderDataset
from .transforms import RandomCrop, RandomFlip, Resize, build_pipeline

__all__ = ['BaseClsDataset', 'DigitsDataset', 'ImageFolderDataset',
           'RandomCrop', 'RandomFlip', 'Resize', 'build_pipeline']
