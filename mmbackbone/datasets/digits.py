"""scikit-learn's handwritten digits as a small, real, offline dataset.

``sklearn.datasets.load_digits`` ships 1797 grey 8x8 images (values 0..16)
of the digits 0-9 inside the scikit-learn wheel. They are upsampled to
``size`` (default 32x32, bilinear), scaled to 0..255 and repeated to three
channels. The split is fixed: per class, the samples are shuffled with
``numpy.random.RandomState(0)`` and the last 20 % go to ``'val'``
(1438 train / 359 val images, every class in both).
"""
import functools
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from mmbackbone.registry import DATASETS

from .base import BaseClsDataset, Indices
from .transforms import Size, resize_uint8, to_hw

#: Fraction of each class held out for validation, and the split seed.
VAL_FRACTION = 0.2
SPLIT_SEED = 0
SPLITS = ('train', 'val')


def load_sklearn_digits():
    """scikit-learn's ``load_digits()`` bunch, or an error saying what to
    install (scikit-learn is a dependency of mmbackbone; a trimmed
    environment may lack it)."""
    try:  # deferred: scikit-learn takes ~1 s to import; only this needs it
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            f'DigitsDataset needs scikit-learn, whose wheel ships the digits '
            f'images ({err}). Install it: pip install scikit-learn') from err
    return load_digits()


@functools.lru_cache(maxsize=4)
def _digits(size: Tuple[int, int]) -> Tuple[torch.Tensor, np.ndarray]:
    """All images as uint8 ``(N, 3, H, W)`` and their labels."""
    data = load_sklearn_digits()
    images = torch.from_numpy(data.images.astype(np.float32) * (255 / 16))
    images = images[:, None].round().clamp(0, 255).to(torch.uint8)
    if tuple(images.shape[-2:]) != size:
        images = torch.stack([resize_uint8(img, size) for img in images])
    return images.expand(-1, 3, -1, -1).contiguous(), data.target.copy()


@functools.lru_cache(maxsize=1)
def split_positions() -> dict:
    """``{'train': positions, 'val': positions}``: the fixed split."""
    labels = load_sklearn_digits().target
    rng = np.random.RandomState(SPLIT_SEED)
    train, val = [], []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        num_val = int(round(len(members) * VAL_FRACTION))
        train.extend(members[:len(members) - num_val].tolist())
        val.extend(members[len(members) - num_val:].tolist())
    return dict(train=sorted(train), val=sorted(val))


@DATASETS.register_module()
class DigitsDataset(BaseClsDataset):
    """The 10-class handwritten digits, ready for a CNN.

    Args:
        split (str): ``'train'`` (1438 images) or ``'val'`` (359 images).
        size (int | tuple[int, int]): image size. Default: 32.
        pipeline (list[dict], optional): transforms, e.g.
            ``[dict(type='RandomCrop', size=32, padding=2)]``.
        indices (int | Sequence[int], optional): a subset, for quick runs.

    Example:
        >>> from mmbackbone.datasets import DigitsDataset
        >>> train, val = DigitsDataset('train'), DigitsDataset('val')
        >>> len(train), len(val)
        (1438, 359)
        >>> item = train[0]
        >>> tuple(item['inputs'].shape), item['inputs'].dtype
        ((3, 32, 32), torch.uint8)
        >>> int(item['data_samples'].gt_label)
        0
    """

    classes = tuple(str(i) for i in range(10))

    def __init__(self, split: str = 'train', size: Size = 32,
                 pipeline: Optional[Sequence] = None,
                 indices: Indices = None):
        if split not in SPLITS:
            raise ValueError(f'split={split!r}; choose from {SPLITS}')
        super().__init__(pipeline=pipeline, indices=indices)
        self.split, self.size = split, to_hw(size)
        images, labels = _digits(self.size)
        positions = split_positions()[split]
        self._images = images[positions]
        self._labels = [int(labels[p]) for p in positions]
        self._apply_indices()

    def load_image(self, position: int) -> torch.Tensor:
        return self._images[position]

    def __repr__(self) -> str:
        return (f'DigitsDataset(split={self.split!r}, size={self.size}, '
                f'num_samples={len(self)}, pipeline={self.pipeline})')
