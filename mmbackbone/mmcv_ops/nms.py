"""Non-maximum suppression kernels: ``nms``, ``softnms``, ``nms_match``.

Boxes are ``(x1, y1, x2, y2)``. ``offset=1`` is the legacy pixel
convention where a box's width is ``x2 - x1 + 1``.
"""
import numpy as np
import torch

SOFT_NMS_METHODS = {0: 'naive', 1: 'linear', 2: 'gaussian'}


def _check_offset(offset) -> int:
    if offset not in (0, 1):
        raise ValueError(f'offset must be 0 or 1, got {offset!r}')
    return int(offset)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
        offset: int = 0) -> torch.Tensor:
    """Indices of the boxes kept by hard NMS, highest score first.

    A box is dropped when its IoU with a kept, higher-scoring box is
    greater than ``iou_threshold``.

    Example:
        >>> boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.],
        ...                       [20., 20., 30., 30.]])
        >>> nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
        tensor([0, 2])
    """
    import torchvision
    offset = _check_offset(offset)
    if boxes.numel() == 0:
        return boxes.new_zeros(0, dtype=torch.long)
    compute_dtype = boxes.dtype
    if boxes.device.type == 'cpu' and compute_dtype == torch.half:
        compute_dtype = torch.float  # no half NMS kernel on CPU
    boxes = boxes.to(compute_dtype)
    if offset == 1:
        boxes = torch.cat([boxes[:, :2], boxes[:, 2:4] + 1], dim=1)
    return torchvision.ops.nms(boxes, scores.to(compute_dtype),
                               float(iou_threshold))


def _pairwise_iou(box: np.ndarray, others: np.ndarray,
                  offset: int) -> np.ndarray:
    """IoU of one ``(x1, y1, x2, y2, area)`` row against many such rows."""
    width = np.maximum(np.minimum(box[2], others[:, 2]) -
                       np.maximum(box[0], others[:, 0]) + offset, 0)
    height = np.maximum(np.minimum(box[3], others[:, 3]) -
                        np.maximum(box[1], others[:, 1]) + offset, 0)
    inter = width * height
    return inter / (box[4] + others[:, 4] - inter)


def _compact(rows: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Drop the rows where ``keep`` is False the way the reference kernel
    does: each dropped row takes the last surviving row from the end."""
    size = int(keep.sum())
    holes = np.flatnonzero(~keep[:size])
    movers = np.flatnonzero(keep[size:])[::-1] + size
    rows = rows[:size].copy() if len(holes) == 0 else rows.copy()
    rows[holes] = rows[movers]
    return rows[:size]


def softnms(boxes: torch.Tensor, scores: torch.Tensor, dets: torch.Tensor,
            iou_threshold: float, sigma: float, min_score: float,
            method: int, offset: int = 0) -> torch.Tensor:
    """Soft-NMS: decay the scores of overlapping boxes instead of dropping.

    ``method`` 0 (naive) zeroes, 1 (linear) multiplies by ``1 - iou`` the
    scores of boxes with IoU >= ``iou_threshold``; 2 (gaussian) multiplies
    every score by ``exp(-iou ** 2 / sigma)``. Boxes whose score falls below
    ``min_score`` are dropped. The kept boxes, in the order picked, are
    written as ``(x1, y1, x2, y2, score)`` rows into the first rows of
    ``dets`` (shape ``(N, 5)``, on the CPU); their original indices are
    returned.

    Example:
        >>> boxes = torch.tensor([[0., 0., 10., 10.], [0., 0., 10., 9.]])
        >>> dets = boxes.new_zeros(2, 5)
        >>> softnms(boxes, torch.tensor([0.9, 0.8]), dets, 0.3, 0.5, 1e-3,
        ...         method=1)
        tensor([0, 1])
        >>> dets[:, 4]
        tensor([0.9000, 0.0800])
    """
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f'method must be one of {SOFT_NMS_METHODS} (an int '
                         f'key), got {method!r}')
    offset = _check_offset(offset)
    dtype = np.float64 if boxes.dtype == torch.float64 else np.float32
    coords = boxes.detach().cpu().numpy().astype(dtype)[:, :4]
    # columns: x1, y1, x2, y2, area, score, original index
    rows = np.zeros((coords.shape[0], 7), dtype=dtype)
    rows[:, :4] = coords
    rows[:, 4] = ((coords[:, 2] - coords[:, 0] + offset) *
                  (coords[:, 3] - coords[:, 1] + offset))
    rows[:, 5] = scores.detach().cpu().numpy()
    rows[:, 6] = np.arange(coords.shape[0])
    picked = []
    while len(rows):
        best = int(np.argmax(rows[:, 5]))  # first maximum, as the kernel
        rows[[0, best]] = rows[[best, 0]]
        top, rows = rows[0].copy(), rows[1:]
        picked.append(top)
        iou = _pairwise_iou(top, rows, offset)
        if method == 2:
            rows[:, 5] *= np.exp(-(iou * iou) / sigma)
        elif method == 1:
            rows[:, 5] *= np.where(iou >= iou_threshold, 1 - iou, 1)
        else:
            rows[:, 5] *= np.where(iou >= iou_threshold, 0, 1)
        rows = _compact(rows, rows[:, 5] >= min_score)
    picked = np.asarray(picked, dtype=dtype).reshape(-1, 7)
    result = torch.from_numpy(picked[:, [0, 1, 2, 3, 5]].copy())
    dets[:len(picked)] = result.to(dets.dtype)
    return torch.from_numpy(picked[:, 6].astype(np.int64))


def nms_match(dets: torch.Tensor, iou_threshold: float) -> list:
    """Group boxes by the kept box that suppresses them.

    ``dets`` rows are ``(x1, y1, x2, y2, score)``. Returns one list per
    kept box, highest score first: the kept index, then the indices it
    suppresses (IoU >= ``iou_threshold``), in descending score order.

    Example:
        >>> dets = torch.tensor([[0., 0., 10., 10., 0.9],
        ...                      [20., 20., 30., 30., 0.8],
        ...                      [0., 0., 10., 9., 0.7]])
        >>> nms_match(dets, 0.5)
        [[0, 2], [1]]
    """
    rows = dets.detach().cpu().numpy()
    if rows.shape[0] == 0:
        return []
    boxes = np.concatenate(
        [rows[:, :4], ((rows[:, 2] - rows[:, 0]) *
                       (rows[:, 3] - rows[:, 1]))[:, None]], axis=1)
    order = np.argsort(-rows[:, 4], kind='stable')
    suppressed = np.zeros(len(rows), dtype=bool)
    groups = []
    for position, index in enumerate(order):
        if suppressed[index]:
            continue
        rest = order[position + 1:]
        rest = rest[~suppressed[rest]]
        matched = rest[_pairwise_iou(boxes[index], boxes[rest], 0) >=
                       iou_threshold]
        suppressed[matched] = True
        groups.append([int(index)] + [int(i) for i in matched])
    return groups
