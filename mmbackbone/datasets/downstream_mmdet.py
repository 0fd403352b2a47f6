"""mmdet's COCO dataset over the embedded digits detection set.

Imports mmdet, so it is loaded only by a config's ``custom_imports``
(``'mmbackbone.datasets.downstream_mmdet'``), never by ``import
mmbackbone``. Registered in mmbackbone's scope: an mmdet config (with
``default_scope='mmdet'``) names it ``type='mmbackbone.DigitsCocoDataset'``.
"""
from typing import Sequence

# mmdet.datasets imports mmcv.ops, which needs the compiled mmcv._ext
# that mmcv-lite lacks: install the PyTorch stand-in first (a no-op with
# full mmcv).
import mmbackbone.mmcv_ops  # noqa: F401,I100
from mmdet.datasets import CocoDataset

from mmbackbone.registry import DATASETS

from .downstream_data import (DIGIT_CLASSES, DIGIT_PALETTE,
                              write_digits_detection)


@DATASETS.register_module()
class DigitsCocoDataset(CocoDataset):
    """:class:`mmdet.datasets.CocoDataset` whose data is written into
    ``data_root`` by :func:`write_digits_detection` on first use.

    The data is written when the dataset is built, before mmengine's
    ``ValLoop`` / ``TestLoop`` build the ``CocoMetric`` that reads
    ``ann_file``. All other arguments are :class:`CocoDataset`'s.

    Args:
        data_root (str): where the set lives (written if absent).
        image_size, num_train, num_val, seed, digit_size, max_digits: the
            set's parameters (see :func:`write_digits_detection`); a
            ``data_root`` holding a set made with others is an error.

    Example:
        >>> import tempfile
        >>> from mmengine.registry import DefaultScope
        >>> from mmdet.registry import DATASETS as MMDET_DATASETS
        >>> cfg = dict(type='mmbackbone.DigitsCocoDataset',
        ...            data_root=tempfile.mkdtemp() + '/digits_det',
        ...            ann_file='annotations/instances_val.json',
        ...            data_prefix=dict(img='val/'), num_train=2,
        ...            num_val=3, test_mode=True)
        >>> with DefaultScope.overwrite_default_scope('mmdet'):
        ...     dataset = MMDET_DATASETS.build(cfg)  # doctest: +ELLIPSIS
        loading annotations into memory...index created!
        >>> len(dataset), dataset.metainfo['classes'][:2]
        (3, ('0', '1'))
    """

    METAINFO = dict(classes=DIGIT_CLASSES, palette=DIGIT_PALETTE)

    def __init__(self, *args, data_root: str, image_size: int = 128,
                 num_train: int = 1200, num_val: int = 200, seed: int = 0,
                 digit_size: Sequence[int] = (20, 48), max_digits: int = 4,
                 **kwargs):
        write_digits_detection(
            data_root, image_size=image_size, num_train=num_train,
            num_val=num_val, seed=seed, digit_size=tuple(digit_size),
            max_digits=max_digits)
        super().__init__(*args, data_root=data_root, **kwargs)
