"""Detection and segmentation sets drawn from scikit-learn's 8x8 digits.

Each image is a dark, lightly noisy canvas (``image_size`` square, RGB)
holding 1 to ``max_digits`` digits. Every digit is upscaled (bilinear) from
8x8 to a random size in ``digit_size`` and drawn in a random bright colour;
its mask is where the upscaled ink reaches :data:`INK_THRESHOLD`, nothing
is drawn outside the mask, and the tight box of the mask is its box. Boxes
never touch (at least :data:`BOX_GAP` pixels apart), so masks never
overlap. Train images use only the train digits of
:func:`mmbackbone.datasets.digits.split_positions`, val images only its val
digits.

* :func:`write_digits_detection` writes COCO json (boxes, RLE masks);
* :func:`write_digits_segmentation` writes mmseg's ``img_dir`` /
  ``ann_dir`` layout (0 = background, 1..10 = digits 0..9).

The output is a pure function of the parameters (same bytes on every run).
A set is written into a temporary sibling folder and renamed into place,
with a marker file naming its parameters, so concurrent writers (DDP ranks)
cannot corrupt it and a root holding a set made with other parameters is
reported instead of reused.

Command line::

    python -m mmbackbone.datasets.downstream_data det data/digits_det
    python -m mmbackbone.datasets.downstream_data seg data/digits_seg
"""
import argparse
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from .digits import load_sklearn_digits, split_positions

#: Class names of the detection set; the segmentation set adds background.
DIGIT_CLASSES = tuple(str(i) for i in range(10))
SEG_CLASSES = ('background', ) + DIGIT_CLASSES
#: One RGB colour per digit class (for visualisers).
DIGIT_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25),
                 (0, 130, 200), (245, 130, 48), (145, 30, 180),
                 (70, 240, 240), (240, 50, 230), (210, 245, 60),
                 (250, 190, 212)]
SEG_PALETTE = [(0, 0, 0)] + DIGIT_PALETTE

#: Upscaled ink (0..1) at or above this is part of a digit's mask.
INK_THRESHOLD = 0.25
#: Minimum number of background pixels between two boxes.
BOX_GAP = 2
#: Name of the file recording a set's parameters and content hash.
MARKER_NAME = 'digits_set.json'
#: Bumped whenever the drawing changes, so old sets are not reused.
FORMAT_VERSION = 1
SPLITS = ('train', 'val')
KINDS = ('detection', 'segmentation')
_PLACEMENT_TRIES = 50

PathLike = Union[str, os.PathLike]


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or value < minimum:
        raise ValueError(f'{name}={value!r} must be an int >= {minimum}')
    return int(value)


def _params(kind: str, image_size, num_train, num_val, seed, digit_size,
            max_digits) -> dict:
    """The validated parameters of a set, as recorded in its marker."""
    image_size = _check_int('image_size', image_size, 16)
    if (not isinstance(digit_size, Sequence) or len(digit_size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool)
                       for s in digit_size)
            or not 8 <= digit_size[0] <= digit_size[1] <= image_size):
        raise ValueError(
            f'digit_size={digit_size!r} must be (min, max) ints with '
            f'8 <= min <= max <= image_size={image_size}')
    return dict(kind=kind, format_version=FORMAT_VERSION,
                image_size=image_size,
                num_train=_check_int('num_train', num_train, 1),
                num_val=_check_int('num_val', num_val, 1),
                seed=_check_int('seed', seed, 0),
                digit_size=[int(digit_size[0]), int(digit_size[1])],
                max_digits=_check_int('max_digits', max_digits, 1))


def upscale_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a 2-D float array to ``size x size`` (pixel
    centres aligned, edges clamped; numpy only, so identical everywhere).

    Example:
        >>> up = upscale_bilinear(np.eye(2), 4)
        >>> up.shape, float(up[0, 0]), float(up[0, 3])
        ((4, 4), 1.0, 0.0)
    """
    def taps(n_in: int):
        centre = (np.arange(size) + 0.5) * (n_in / size) - 0.5
        centre = np.clip(centre, 0, n_in - 1)
        low = np.floor(centre).astype(int)
        high = np.minimum(low + 1, n_in - 1)
        return low, high, centre - low

    r0, r1, fr = taps(image.shape[0])
    c0, c1, fc = taps(image.shape[1])
    rows = image[r0] * (1 - fr)[:, None] + image[r1] * fr[:, None]
    return rows[:, c0] * (1 - fc) + rows[:, c1] * fc


def rle_encode(mask: np.ndarray) -> Dict[str, object]:
    """COCO's compressed RLE of a 2-D mask (what
    ``pycocotools.mask.encode`` gives, with ``counts`` as ``str``).

    Runs are counted down the columns (Fortran order), starting with a run
    of zeros; the counts are then packed 5 bits per character as in COCO's
    ``rleToString``.

    Example:
        >>> rle_encode(np.array([[0, 1], [0, 1]], dtype=np.uint8))
        {'size': [2, 2], 'counts': '22'}
    """
    flat = np.asarray(mask, dtype=bool).ravel(order='F')
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts.insert(0, 0)
    chars = []
    for i, count in enumerate(counts):
        value = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            chunk = value & 0x1f
            value >>= 5
            more = value != -1 if chunk & 0x10 else value != 0
            chars.append(chr(chunk + (0x20 if more else 0) + 48))
    return {'size': [int(mask.shape[0]), int(mask.shape[1])],
            'counts': ''.join(chars)}


class DigitInstance:
    """One drawn digit: class index, tight box ``(x0, y0, x1, y1)``
    (``x1`` / ``y1`` exclusive), full-canvas mask, and ``source``, its
    position in scikit-learn's digits."""

    __slots__ = ('label', 'box', 'mask', 'source')

    def __init__(self, label: int, box: Tuple[int, int, int, int],
                 mask: np.ndarray, source: int):
        self.label, self.box, self.mask = label, box, mask
        self.source = source

    @property
    def coco_bbox(self) -> List[int]:
        """``[x, y, w, h]`` of the pixels in the mask."""
        x0, y0, x1, y1 = self.box
        return [x0, y0, x1 - x0, y1 - y0]


def _overlaps(box, others) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + BOX_GAP and b[0] < x1 + BOX_GAP and
               y0 < b[3] + BOX_GAP and b[1] < y1 + BOX_GAP for b in others)


def _draw_canvas(rng: np.random.Generator, digits: np.ndarray,
                labels: np.ndarray, pool: np.ndarray, image_size: int,
                digit_size: Sequence[int], max_digits: int
                ) -> Tuple[np.ndarray, List[DigitInstance]]:
    """Draw one canvas from the digits at positions ``pool``.

    Args:
        rng: the generator that decides everything random.
        digits: ``(N, 8, 8)`` ink in 0..1.
        labels: ``(N,)`` class of each digit.
        pool: positions of the digits this canvas may use.
        image_size, digit_size, max_digits: as for
            :func:`write_digits_detection`.

    Returns:
        ``(image, instances)``: ``uint8 (H, W, 3)`` and the drawn digits.
    """
    size = image_size
    background = rng.uniform(0, 50, 3)
    canvas = background + rng.normal(0, rng.uniform(1, 5), (size, size, 3))
    instances: List[DigitInstance] = []
    for _ in range(int(rng.integers(1, max_digits + 1))):
        position = int(rng.choice(pool))
        ink = upscale_bilinear(digits[position],
                               int(rng.integers(digit_size[0],
                                                digit_size[1] + 1)))
        # never empty: every digit has a pixel of ink >= 14/16
        inside = ink >= INK_THRESHOLD
        rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(
            inside.any(0))
        ink = np.where(inside, ink, 0)[rows[0]:rows[-1] + 1,
                                       cols[0]:cols[-1] + 1]
        height, width = ink.shape
        colour = rng.uniform(0.3, 1.0, 3)
        colour *= rng.uniform(160, 255) / colour.max()
        for _ in range(_PLACEMENT_TRIES):
            y, x = (int(rng.integers(0, size - height + 1)),
                    int(rng.integers(0, size - width + 1)))
            box = (x, y, x + width, y + height)
            if not _overlaps(box, [inst.box for inst in instances]):
                break
        else:
            continue  # no free room for this digit: the canvas is full
        alpha = ink[..., None]
        region = canvas[y:y + height, x:x + width]
        region[:] = region * (1 - alpha) + colour * alpha
        mask = np.zeros((size, size), dtype=bool)
        mask[y:y + height, x:x + width] = ink > 0
        instances.append(
            DigitInstance(int(labels[position]), box, mask, position))
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, instances


def generate_canvases(split: str, params: dict
                      ) -> Iterator[Tuple[np.ndarray, List[DigitInstance]]]:
    """Every canvas of ``split``, in order: image ``i`` depends only on
    ``(seed, split, i)`` and the drawing parameters, so a smaller set is a
    prefix of a larger one.

    Example:
        >>> params = _params('detection', 128, 2, 1, 0, (20, 48), 4)
        >>> image, instances = next(generate_canvases('val', params))
        >>> image.shape, 1 <= len(instances) <= 4
        ((128, 128, 3), True)
        >>> inst = instances[0]
        >>> bool(inst.mask.any()), inst.source in split_positions()['val']
        (True, True)
    """
    if split not in SPLITS:
        raise ValueError(f'split={split!r}; choose from {SPLITS}')
    data = load_sklearn_digits()
    digits = data.images.astype(np.float64) / 16.0
    pool = np.asarray(split_positions()[split])
    for index in range(params[f'num_{split}']):
        rng = np.random.default_rng(
            [params['seed'], SPLITS.index(split), index])
        yield _draw_canvas(rng, digits, data.target, pool,
                          params['image_size'], params['digit_size'],
                          params['max_digits'])


def _save_png(array: np.ndarray, path: Path) -> None:
    # fixed settings and no metadata: same bytes for the same array
    Image.fromarray(array).save(path, format='PNG', compress_level=1)


def _image_name(index: int) -> str:
    return f'{index + 1:06d}.png'


def _write_detection_split(tmp: Path, split: str, params: dict) -> dict:
    (tmp / split).mkdir()
    images, annotations = [], []
    for index, (image, instances) in enumerate(
            generate_canvases(split, params)):
        _save_png(image, tmp / split / _image_name(index))
        images.append(dict(id=index + 1, file_name=_image_name(index),
                           height=image.shape[0], width=image.shape[1]))
        for inst in instances:
            annotations.append(dict(
                id=len(annotations) + 1, image_id=index + 1,
                category_id=inst.label + 1, bbox=inst.coco_bbox,
                area=int(inst.mask.sum()), iscrowd=0,
                segmentation=rle_encode(inst.mask)))
    coco = dict(
        info=dict(description='scikit-learn digits on canvases', version=str(
            FORMAT_VERSION)),
        licenses=[], images=images, annotations=annotations,
        categories=[dict(id=i + 1, name=name, supercategory='digit')
                    for i, name in enumerate(DIGIT_CLASSES)])
    (tmp / 'annotations' / f'instances_{split}.json').write_text(
        json.dumps(coco, separators=(',', ':')))
    return dict(images=len(images), instances=len(annotations))


def _write_segmentation_split(tmp: Path, split: str, params: dict) -> dict:
    img_dir, ann_dir = tmp / 'img_dir' / split, tmp / 'ann_dir' / split
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    num_images = num_instances = 0
    for index, (image, instances) in enumerate(
            generate_canvases(split, params)):
        label_map = np.zeros(image.shape[:2], dtype=np.uint8)
        for inst in instances:
            label_map[inst.mask] = inst.label + 1
        _save_png(image, img_dir / _image_name(index))
        _save_png(label_map, ann_dir / _image_name(index))
        num_images += 1
        num_instances += len(instances)
    return dict(images=num_images, instances=num_instances)


def content_hash(root: PathLike) -> str:
    """SHA-256 over the relative path and bytes of every file under
    ``root`` but the marker, in sorted order.

    Example:
        >>> import tempfile
        >>> root = write_digits_detection(tempfile.mkdtemp() + '/det',
        ...                               num_train=1, num_val=1)
        >>> content_hash(root) == read_marker(root)['sha256']
        True
    """
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob('*') if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative == MARKER_NAME:
            continue
        digest.update(relative.encode() + b'\0')
        digest.update(path.read_bytes())
    return digest.hexdigest()


def read_marker(root: PathLike) -> Optional[dict]:
    """The marker of the set in ``root`` (its ``params``, ``counts`` of
    images and digits per split, and ``sha256``), or ``None`` when there
    is none.

    Example:
        >>> import tempfile
        >>> root = write_digits_segmentation(tempfile.mkdtemp() + '/seg',
        ...                                  num_train=2, num_val=1)
        >>> read_marker(root)['counts']['train']['images']
        2
        >>> read_marker(root.parent) is None
        True
    """
    path = Path(root) / MARKER_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f'{path} is not a readable digits set marker '
                         f'({err}); delete {root} to rewrite it') from err


def _existing_set(root: Path, params: dict) -> Optional[Path]:
    """``root`` when it already holds this set, ``None`` when it is free
    (missing or an empty folder); otherwise a clear error."""
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return None
    marker = read_marker(root) if root.is_dir() else None
    if marker is None:
        raise FileExistsError(
            f'{root} exists but holds no digits set ({MARKER_NAME} '
            f'missing); choose another root or delete it')
    if marker.get('params') != params:
        raise ValueError(
            f'{root} holds a digits set made with parameters '
            f'{marker.get("params")}, not the requested {params}; delete '
            f'{root} or choose another root')
    return root


def _write_set(root: PathLike, params: dict, write_split) -> Path:
    root = Path(root)
    if _existing_set(root, params) is not None:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{root.name}.tmp-',
                                dir=root.parent))
    try:
        counts = {split: write_split(tmp, split, params) for split in SPLITS}
        marker = dict(params=params, counts=counts,
                      sha256=content_hash(tmp))
        (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2) + '\n')
        tmp.chmod(0o755)  # mkdtemp makes it private
        try:
            os.rename(tmp, root)  # atomic; fails if another writer won
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            if _existing_set(root, params) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def write_digits_detection(root: PathLike, *, image_size: int = 128,
                           num_train: int = 1200, num_val: int = 200,
                           seed: int = 0,
                           digit_size: Sequence[int] = (20, 48),
                           max_digits: int = 4) -> Path:
    """Write (once) the COCO-format digits detection set into ``root``.

    Layout: ``train/*.png``, ``val/*.png`` (RGB) and
    ``annotations/instances_{train,val}.json`` with category ids 1..10
    named ``'0'``..``'9'``; each annotation has ``bbox`` ``[x, y, w, h]``
    (tight box of the digit's pixels), ``area`` (its pixel count),
    ``iscrowd=0`` and ``segmentation`` (compressed RLE).

    The defaults give about 3000 train digits (each of the 1438 train
    digits about twice, at different sizes and colours), 1200 images being
    75 batches of 16 per epoch, and about 500 val digits, enough for a
    stable mAP; writing takes a few seconds.

    Args:
        root: the folder to write; reused as is when it already holds the
            set with these parameters.
        image_size: canvas side in pixels.
        num_train, num_val: number of images per split.
        seed: decides every random choice.
        digit_size: ``(min, max)`` side of an upscaled digit, in pixels.
        max_digits: most digits per image (at least one each).

    Returns:
        Path: ``root``.

    Raises:
        ValueError: a parameter is invalid, or ``root`` holds a set made
            with other parameters.
        FileExistsError: ``root`` is non-empty and holds no digits set.

    Example:
        >>> import json, tempfile
        >>> root = write_digits_detection(tempfile.mkdtemp() + '/det',
        ...                               num_train=3, num_val=2)
        >>> coco = json.loads((root / 'annotations/instances_val.json')
        ...                   .read_text())
        >>> len(coco['images']), coco['categories'][0]['name']
        (2, '0')
    """
    params = _params('detection', image_size, num_train, num_val, seed,
                     digit_size, max_digits)

    def write_split(tmp: Path, split: str, params: dict) -> dict:
        (tmp / 'annotations').mkdir(exist_ok=True)
        return _write_detection_split(tmp, split, params)

    return _write_set(root, params, write_split)


def write_digits_segmentation(root: PathLike, *, image_size: int = 128,
                              num_train: int = 1200, num_val: int = 200,
                              seed: int = 0,
                              digit_size: Sequence[int] = (20, 48),
                              max_digits: int = 4) -> Path:
    """Write (once) the digits segmentation set into ``root``, in mmseg's
    layout: ``img_dir/{train,val}/*.png`` (RGB) and
    ``ann_dir/{train,val}/*.png`` (``uint8`` label maps: 0 background,
    ``k + 1`` the pixels of digit ``k``; classes :data:`SEG_CLASSES`).

    The canvases are drawn as by :func:`write_digits_detection` (with the
    same parameters, the same images); arguments, defaults, return value
    and errors are those of :func:`write_digits_detection`.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = write_digits_segmentation(tempfile.mkdtemp() + '/seg',
        ...                                  num_train=3, num_val=2)
        >>> labels = np.asarray(Image.open(root / 'ann_dir/val/000001.png'))
        >>> labels.shape, labels.dtype, int(labels.max()) <= 10
        ((128, 128), dtype('uint8'), True)
    """
    params = _params('segmentation', image_size, num_train, num_val, seed,
                     digit_size, max_digits)
    return _write_set(root, params, _write_segmentation_split)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m mmbackbone.datasets.downstream_data det|seg ROOT``:
    write a set, print its path and counts.

    Example:
        >>> import tempfile
        >>> main(['det', tempfile.mkdtemp() + '/det', '--num-train', '2',
        ...       '--num-val', '1'])  # doctest: +ELLIPSIS
        /.../det
        train: 2 images, ... digits
        val: 1 images, ... digits
        0
    """
    parser = argparse.ArgumentParser(
        prog='python -m mmbackbone.datasets.downstream_data',
        description='Write the embedded digits detection (COCO) or '
                    'segmentation (mmseg) set.')
    parser.add_argument('kind', choices=('det', 'seg'))
    parser.add_argument('root', help='folder to write')
    parser.add_argument('--image-size', type=int, default=128)
    parser.add_argument('--num-train', type=int, default=1200)
    parser.add_argument('--num-val', type=int, default=200)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    writer = (write_digits_detection if args.kind == 'det' else
              write_digits_segmentation)
    try:
        root = writer(args.root, image_size=args.image_size,
                      num_train=args.num_train, num_val=args.num_val,
                      seed=args.seed)
    except (ValueError, FileExistsError) as err:
        parser.exit(2, f'error: {err}\n')
    counts = read_marker(root)['counts']
    print(root)
    for split in SPLITS:
        print(f'{split}: {counts[split]["images"]} images, '
              f'{counts[split]["instances"]} digits')
    return 0


if __name__ == '__main__':
    sys.exit(main())
