"""RoIPool kernels: ``roi_pool_forward`` and ``roi_pool_backward``.

Each RoI ``(batch_index, x1, y1, x2, y2)`` covers the pixels
``[x1, x2 + 1) * spatial_scale`` (likewise in y). Its bins are cut from
those float bounds (floor of the start, ceil of the end, clipped to the
map), and each output is the maximum pixel of its bin. ``argmax`` (int32)
holds that pixel's flat ``y * width + x`` index, the first one in
row-major order on ties, or ``-1`` for an empty bin (output 0).

torchvision's ``roi_pool`` rounds the RoI corners to whole pixels first,
so it agrees only when ``corner * spatial_scale`` is an integer; the bins
here keep the fractional bounds.
"""
import torch


def _bin_bounds(start, length, bins: int, size: int):
    """Integer ``[begin, end)`` of each bin along one axis, clipped."""
    index = torch.arange(bins, device=start.device, dtype=start.dtype)
    bin_size = length / bins
    begin = torch.floor(index * bin_size + start).long().clamp(0, size)
    end = torch.ceil((index + 1) * bin_size + start).long().clamp(0, size)
    return begin, end


def _membership(begin, end, size: int) -> torch.Tensor:
    """``(bins, size)`` mask of the positions each bin covers."""
    position = torch.arange(size, device=begin.device)
    return (position[None, :] >= begin[:, None]) & \
        (position[None, :] < end[:, None])


def _pool_one_roi(feature, roi, pooled, spatial_scale):
    channels, height, width = feature.shape
    x1, y1 = roi[1] * spatial_scale, roi[2] * spatial_scale
    x2, y2 = (roi[3] + 1) * spatial_scale, (roi[4] + 1) * spatial_scale
    shape = (channels, pooled[0], pooled[1])
    if x2 - x1 <= 0 or y2 - y1 <= 0:  # malformed RoI: nothing pooled
        return feature.new_zeros(shape), feature.new_full(shape, -1,
                                                          dtype=torch.long)
    rows = _membership(*_bin_bounds(y1, y2 - y1, pooled[0], height), height)
    cols = _membership(*_bin_bounds(x1, x2 - x1, pooled[1], width), width)
    lowest = torch.finfo(feature.dtype).min
    # max over x inside each column bin, then over y inside each row bin:
    # the first maximum of the row with the first maximum reproduces the
    # row-major first maximum
    masked = feature[:, :, None, :].masked_fill(~cols[None, None], lowest)
    by_col, arg_x = masked.max(dim=-1)  # (C, H, bins_x)
    masked = by_col[:, None].masked_fill(~rows[None, :, :, None], lowest)
    value, arg_y = masked.max(dim=2)  # (C, bins_y, bins_x)
    arg_x = arg_x.gather(1, arg_y)
    empty = ~(rows.any(1)[:, None] & cols.any(1)[None, :])
    found = (value > lowest) & ~empty[None]
    index = torch.where(found, arg_y * width + arg_x,
                        torch.full_like(arg_x, -1))
    return torch.where(empty[None], torch.zeros_like(value), value), index


def roi_pool_forward(input: torch.Tensor, rois: torch.Tensor,
                     output: torch.Tensor, argmax: torch.Tensor,
                     pooled_height: int, pooled_width: int,
                     spatial_scale: float) -> None:
    """Max-pool each RoI into ``output``; fill ``argmax`` (int32).

    Example:
        >>> feature = torch.arange(16.).view(1, 1, 4, 4)
        >>> rois = torch.tensor([[0., 0., 0., 1., 1.]])
        >>> out, arg = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2,
        ...                                                 dtype=torch.int)
        >>> roi_pool_forward(feature, rois, out, arg, 2, 2, 1.0)
        >>> out.flatten().tolist(), arg.flatten().tolist()
        ([0.0, 1.0, 4.0, 5.0], [0, 1, 4, 5])
    """
    pooled = (int(pooled_height), int(pooled_width))
    for position, roi in enumerate(rois.to(input.dtype)):
        value, index = _pool_one_roi(input[int(roi[0])], roi, pooled,
                                     float(spatial_scale))
        output[position] = value
        argmax[position] = index.to(argmax.dtype)


def roi_pool_backward(grad_output: torch.Tensor, rois: torch.Tensor,
                      argmax: torch.Tensor, grad_input: torch.Tensor,
                      pooled_height: int, pooled_width: int,
                      spatial_scale: float) -> None:
    """Add each bin's gradient into ``grad_input`` at its ``argmax`` pixel.

    Example:
        >>> rois = torch.tensor([[0., 0., 0., 1., 1.]])
        >>> grad = torch.zeros(1, 1, 2, 2)
        >>> roi_pool_backward(torch.ones(1, 1, 1, 1), rois,
        ...                   torch.tensor([[[[3]]]], dtype=torch.int), grad,
        ...                   1, 1, 1.0)
        >>> grad.flatten().tolist()
        [0.0, 0.0, 0.0, 1.0]
    """
    _, channels, height, width = grad_input.shape
    batch_index = rois[:, 0].long().view(-1, 1, 1, 1)
    channel = torch.arange(channels, device=grad_input.device).view(
        1, -1, 1, 1)
    index = argmax.long()
    position = (batch_index * channels + channel) * (height * width) + index
    keep = index != -1
    grad_input.view(-1).index_put_((position[keep],), grad_output[keep],
                                   accumulate=True)
