"""mmseg's dataset over the embedded digits segmentation set.

Imports mmseg, so it is loaded only by a config's ``custom_imports``
(``'mmbackbone.datasets.downstream_mmseg'``), never by ``import
mmbackbone``. Registered in mmbackbone's scope: an mmseg config (with
``default_scope='mmseg'``) names it ``type='mmbackbone.DigitsSegDataset'``.
"""
from typing import Sequence

# mmseg.datasets imports mmcv.ops, which needs the compiled mmcv._ext
# that mmcv-lite lacks: install the PyTorch stand-in first (a no-op with
# full mmcv).
import mmbackbone.mmcv_ops  # noqa: F401,I100
from mmseg.datasets import BaseSegDataset

from mmbackbone.registry import DATASETS

from .downstream_data import (SEG_CLASSES, SEG_PALETTE,
                              write_digits_segmentation)


@DATASETS.register_module()
class DigitsSegDataset(BaseSegDataset):
    """:class:`mmseg.datasets.BaseSegDataset` whose data is written into
    ``data_root`` by :func:`write_digits_segmentation` on first use.

    Label maps hold 0 (background) and 1..10 (digits 0..9); classes are
    ``('background', '0', ..., '9')``. All other arguments are
    :class:`BaseSegDataset`'s (``data_prefix`` picks the split, e.g.
    ``dict(img_path='img_dir/val', seg_map_path='ann_dir/val')``).

    Args:
        data_root (str): where the set lives (written if absent).
        image_size, num_train, num_val, seed, digit_size, max_digits: the
            set's parameters (see :func:`write_digits_segmentation`); a
            ``data_root`` holding a set made with others is an error.

    Example:
        >>> import tempfile
        >>> from mmengine.registry import DefaultScope
        >>> from mmseg.registry import DATASETS as MMSEG_DATASETS
        >>> cfg = dict(type='mmbackbone.DigitsSegDataset',
        ...            data_root=tempfile.mkdtemp() + '/digits_seg',
        ...            data_prefix=dict(img_path='img_dir/val',
        ...                             seg_map_path='ann_dir/val'),
        ...            num_train=2, num_val=3)
        >>> with DefaultScope.overwrite_default_scope('mmseg'):
        ...     dataset = MMSEG_DATASETS.build(cfg)
        >>> len(dataset), dataset.metainfo['classes'][:2]
        (3, ('background', '0'))
    """

    METAINFO = dict(classes=SEG_CLASSES, palette=SEG_PALETTE)

    def __init__(self, *args, data_root: str, image_size: int = 128,
                 num_train: int = 1200, num_val: int = 200, seed: int = 0,
                 digit_size: Sequence[int] = (20, 48), max_digits: int = 4,
                 img_suffix: str = '.png', seg_map_suffix: str = '.png',
                 reduce_zero_label: bool = False, **kwargs):
        write_digits_segmentation(
            data_root, image_size=image_size, num_train=num_train,
            num_val=num_val, seed=seed, digit_size=tuple(digit_size),
            max_digits=max_digits)
        super().__init__(*args, data_root=data_root, img_suffix=img_suffix,
                         seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=reduce_zero_label, **kwargs)
