"""The shared part of the classification datasets.

A dataset item is ``dict(inputs=uint8 Tensor[3, H, W],
data_samples=ClsDataSample)`` with ``gt_label`` set, the layout that
mmengine's ``pseudo_collate`` batches and ``ClsDataPreprocessor`` stacks.
"""
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch.utils.data import Dataset

from mmbackbone.structures import ClsDataSample

from .transforms import build_pipeline

Indices = Union[int, Sequence[int], None]


class BaseClsDataset(Dataset):
    """Map-style dataset of (image, label) pairs with a transform pipeline.

    Subclasses set ``self.classes`` and ``self._labels`` and implement
    :meth:`load_image`.

    Args:
        pipeline (list[dict], optional): transform configs applied to each
            item (registered types, see :mod:`mmbackbone.datasets.transforms`).
        indices (int | Sequence[int], optional): keep only the first
            ``indices`` items, or the items at these positions (quick runs).
    """

    classes: tuple = ()

    def __init__(self, pipeline: Optional[Sequence] = None,
                 indices: Indices = None):
        self.pipeline = build_pipeline(pipeline)
        self._indices_arg = indices
        self._labels: List[int] = []
        self._index: List[int] = []

    def _apply_indices(self) -> None:
        """Set ``self._index``, positions into the full data, from
        ``indices``."""
        total = len(self._labels)
        indices = self._indices_arg
        if indices is None:
            self._index = list(range(total))
        elif isinstance(indices, int) and not isinstance(indices, bool):
            if indices < 1:
                raise ValueError(f'indices={indices!r} must be >= 1 (keep the '
                                 f'first N items) or a list of positions')
            self._index = list(range(min(indices, total)))
        elif isinstance(indices, Sequence) and not isinstance(indices, str):
            bad = [i for i in indices if isinstance(i, bool)
                   or not isinstance(i, int) or not 0 <= i < total]
            if bad:
                raise ValueError(f'indices: {bad[:5]} out of range; valid '
                                 f'positions are 0..{total - 1}')
            self._index = list(indices)
        else:
            raise TypeError(f'indices={indices!r} must be an int, a list of '
                            f'ints or None')

    @property
    def metainfo(self) -> Dict[str, Any]:
        """``dict(classes=...)``: what evaluators and visualizers read."""
        return dict(classes=tuple(self.classes))

    def __len__(self) -> int:
        return len(self._index)

    def get_label(self, idx: int) -> int:
        """The class index of item ``idx``."""
        return self._labels[self._index[idx]]

    def load_image(self, position: int) -> torch.Tensor:
        """The uint8 ``(3, H, W)`` image at ``position`` of the full data."""
        raise NotImplementedError

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        if not -len(self) <= idx < len(self):
            raise IndexError(f'index {idx} out of range for '
                             f'{type(self).__name__} of length {len(self)}')
        idx = idx % len(self)
        position = self._index[idx]
        img = self.load_image(position)
        results = dict(img=img, gt_label=self._labels[position],
                       sample_idx=idx, img_shape=tuple(img.shape[-2:]))
        for transform in self.pipeline:
            results = transform(results)
        return pack_inputs(results)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(num_samples={len(self)}, '
                f'num_classes={len(self.classes)}, pipeline={self.pipeline})')


def pack_inputs(results: Dict[str, Any]) -> Dict[str, Any]:
    """Turn a results dict into ``dict(inputs=..., data_samples=...)``."""
    sample = ClsDataSample(metainfo=dict(sample_idx=results['sample_idx'],
                                         img_shape=results['img_shape']))
    sample.set_gt_label(results['gt_label'])
    return dict(inputs=results['img'].contiguous(), data_samples=sample)
