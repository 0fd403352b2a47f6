"""Your own images: one subfolder per class.

::

    data_root/
        cat/ 001.jpg 002.png ...
        dog/ 001.jpg ...

Class names are the subfolder names in sorted order (or ``classes`` as
given); every image is converted to RGB and resized to ``size``.
"""
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from mmbackbone.registry import DATASETS

from .base import BaseClsDataset, Indices
from .transforms import Size, to_hw

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.tif',
                  '.tiff', '.webp', '.gif')


@DATASETS.register_module()
class ImageFolderDataset(BaseClsDataset):
    """Images in ``data_root/<class name>/*``, resized to ``size``.

    Args:
        data_root (str | Path): folder holding one subfolder per class.
        size (int | tuple[int, int]): output ``(height, width)``. Default: 224.
        classes (Sequence[str], optional): class subfolders to use, in
            label order. Default: every subfolder, sorted.
        extensions (Sequence[str]): image file suffixes (case-insensitive).
        pipeline (list[dict], optional): transforms after the resize.
        indices (int | Sequence[int], optional): a subset, for quick runs.

    Raises:
        FileNotFoundError: ``data_root`` or a named class folder is missing.
        ValueError: no class folders, or no images in ``data_root``.

    Example:
        >>> import tempfile, os
        >>> from PIL import Image
        >>> from mmbackbone.datasets import ImageFolderDataset
        >>> root = tempfile.mkdtemp()
        >>> for name in ('cat', 'dog'):
        ...     os.makedirs(os.path.join(root, name))
        ...     path = os.path.join(root, name, 'a.png')
        ...     Image.new('RGB', (40, 30)).save(path)
        >>> dataset = ImageFolderDataset(root, size=16)
        >>> dataset.classes, len(dataset)
        (('cat', 'dog'), 2)
        >>> item = dataset[1]
        >>> tuple(item['inputs'].shape), int(item['data_samples'].gt_label)
        ((3, 16, 16), 1)
    """

    def __init__(self, data_root: Union[str, Path], size: Size = 224,
                 classes: Optional[Sequence[str]] = None,
                 extensions: Sequence[str] = IMG_EXTENSIONS,
                 pipeline: Optional[Sequence] = None,
                 indices: Indices = None):
        super().__init__(pipeline=pipeline, indices=indices)
        self.data_root = Path(os.path.expanduser(str(data_root)))
        self.size = to_hw(size)
        if isinstance(extensions, str):
            extensions = (extensions, )
        self.extensions = tuple(e.lower() if e.startswith('.') else
                                '.' + e.lower() for e in extensions)
        if not self.data_root.is_dir():
            raise FileNotFoundError(f'data_root={str(data_root)!r} is not a '
                                    f'folder; expected data_root/<class>/'
                                    f'<image files>')
        self.classes = self._find_classes(classes)
        self.samples: List[Tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            files = sorted(p for p in (self.data_root / name).rglob('*')
                           if p.is_file()
                           and p.suffix.lower() in self.extensions)
            self.samples.extend((p, label) for p in files)
        if not self.samples:
            raise ValueError(f'data_root={str(data_root)!r}: no images with '
                             f'suffixes {self.extensions} in the class '
                             f'folders {list(self.classes)}')
        self._labels = [label for _, label in self.samples]
        self._apply_indices()

    def _find_classes(self, classes: Optional[Sequence[str]]) -> tuple:
        found = sorted(p.name for p in self.data_root.iterdir()
                       if p.is_dir() and not p.name.startswith('.'))
        if classes is None:
            if not found:
                raise ValueError(f'data_root={str(self.data_root)!r} has no '
                                 f'class subfolders; expected data_root/'
                                 f'<class>/<image files>')
            return tuple(found)
        if isinstance(classes, str) or not isinstance(classes, Sequence):
            raise TypeError(f'classes={classes!r} must be a list of folder '
                            f'names')
        missing = [c for c in classes if c not in found]
        if missing:
            raise FileNotFoundError(f'classes {missing} have no folder in '
                                    f'{str(self.data_root)!r}; found '
                                    f'{found}')
        return tuple(classes)

    def load_image(self, position: int) -> torch.Tensor:
        path = self.samples[position][0]
        try:
            with Image.open(path) as img:
                img = img.convert('RGB').resize(
                    (self.size[1], self.size[0]), Image.BILINEAR)
                array = np.asarray(img, dtype=np.uint8).copy()
        except OSError as err:
            raise OSError(f'cannot read image {path}: {err}') from err
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def __repr__(self) -> str:
        return (f'ImageFolderDataset(data_root={str(self.data_root)!r}, '
                f'size={self.size}, num_samples={len(self)}, '
                f'classes={self.classes}, pipeline={self.pipeline})')
