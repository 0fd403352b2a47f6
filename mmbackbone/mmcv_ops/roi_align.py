"""RoIAlign kernels: ``roi_align_forward`` and ``roi_align_backward``.

Average pooling (``pool_mode=1``) is torchvision's RoIAlign, which samples
the same points with the same bilinear rule. Max pooling (``pool_mode=0``)
keeps, per output bin, the largest bilinear sample and records its
``(y, x)`` position in ``argmax_y`` / ``argmax_x`` (``-1`` when no sample
beat the initial value ``-10000``); the backward pass sends each bin's
gradient to the four pixels around that position.
"""
import math

import torch

MAX_POOL, AVG_POOL = 0, 1
MAX_INITIAL = -10000.0  # the reference kernel's starting maximum


def _check_pool_mode(pool_mode) -> int:
    if pool_mode not in (MAX_POOL, AVG_POOL):
        raise ValueError(f'pool_mode must be 0 (max) or 1 (avg), got '
                         f'{pool_mode!r}')
    return int(pool_mode)


def axis_weights(coord: torch.Tensor, size: int):
    """Bilinear neighbours along one axis of length ``size``.

    Returns ``(low, high, weight_low, weight_high, valid)``; samples
    further than one pixel outside the axis are not ``valid``.

    Example:
        >>> low, high, w_low, w_high, valid = axis_weights(
        ...     torch.tensor([0.25, 3.5, -2.0]), 4)
        >>> low.tolist(), high.tolist(), w_high.tolist(), valid.tolist()
        ([0, 3, 0], [1, 3, 1], [0.25, 0.0, 0.0], [True, True, False])
    """
    valid = (coord >= -1) & (coord <= size)
    coord = coord.clamp(min=0)
    low = coord.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    coord = torch.where(at_edge, low.to(coord.dtype), coord)
    frac = coord - low.to(coord.dtype)
    return low, high, 1 - frac, frac, valid


def _interpolation_matrix(coord: torch.Tensor, size: int) -> torch.Tensor:
    """``(len(coord), size)`` matrix whose rows interpolate one axis."""
    low, high, w_low, w_high, valid = axis_weights(coord, size)
    rows = torch.arange(coord.numel(), device=coord.device)
    matrix = coord.new_zeros(coord.numel(), size)
    zero = torch.zeros_like(w_low)
    matrix.index_put_((rows, low), torch.where(valid, w_low, zero),
                      accumulate=True)
    matrix.index_put_((rows, high), torch.where(valid, w_high, zero),
                      accumulate=True)
    return matrix


def _roi_geometry(roi, pooled: tuple, spatial_scale: float,
                  sampling_ratio: int, aligned: bool):
    """Sample coordinates ``(ys, xs)``, shaped ``(bins, grid)``, of one RoI."""
    offset = 0.5 if aligned else 0.0
    start_x, start_y, end_x, end_y = (v * spatial_scale - offset
                                      for v in roi[1:5])
    width, height = end_x - start_x, end_y - start_y
    if not aligned:  # legacy behaviour: RoIs are at least one pixel
        width, height = width.clamp(min=1), height.clamp(min=1)
    coords = []
    for start, length, bins in ((start_y, height, pooled[0]),
                                (start_x, width, pooled[1])):
        bin_size = length / bins
        grid = sampling_ratio if sampling_ratio > 0 else max(
            int(math.ceil(float(length) / bins)), 0)
        bin_index = torch.arange(bins, device=roi.device,
                                 dtype=roi.dtype)[:, None]
        step = torch.arange(grid, device=roi.device, dtype=roi.dtype) + 0.5
        coords.append(start + bin_index * bin_size +
                      step[None, :] * bin_size / grid)
    return coords


def _max_pool_one_roi(feature, ys, xs):
    """Max over each bin's samples; returns (value, arg_y, arg_x)."""
    channels = feature.size(0)
    bins_y, grid_y = ys.shape
    bins_x, grid_x = xs.shape
    shape = (channels, bins_y, bins_x)
    if grid_y == 0 or grid_x == 0:
        empty = feature.new_full(shape, MAX_INITIAL)
        return empty, feature.new_full(shape, -1.), feature.new_full(shape,
                                                                     -1.)
    rows = _interpolation_matrix(ys.reshape(-1), feature.size(1))
    cols = _interpolation_matrix(xs.reshape(-1), feature.size(2))
    samples = rows @ feature @ cols.t()  # (C, bins_y*grid_y, bins_x*grid_x)
    samples = samples.view(channels, bins_y, grid_y, bins_x, grid_x)
    samples = samples.permute(0, 1, 3, 2, 4).reshape(*shape, -1)
    value, index = samples.max(dim=-1)  # first maximum in (iy, ix) order
    found = value > MAX_INITIAL
    iy, ix = index // grid_x, index % grid_x
    bin_y = torch.arange(bins_y, device=ys.device)[None, :, None]
    bin_x = torch.arange(bins_x, device=xs.device)[None, None, :]
    arg_y = ys[bin_y.expand(shape), iy]
    arg_x = xs[bin_x.expand(shape), ix]
    minus_one = torch.full_like(value, -1.)
    return (torch.where(found, value, torch.full_like(value, MAX_INITIAL)),
            torch.where(found, arg_y, minus_one),
            torch.where(found, arg_x, minus_one))


def roi_align_forward(input: torch.Tensor, rois: torch.Tensor,
                      output: torch.Tensor, argmax_y: torch.Tensor,
                      argmax_x: torch.Tensor, aligned_height: int,
                      aligned_width: int, spatial_scale: float,
                      sampling_ratio: int, pool_mode: int,
                      aligned: bool) -> None:
    """Pool each RoI ``(batch_index, x1, y1, x2, y2)`` into ``output``.

    ``output`` has shape ``(num_rois, C, aligned_height, aligned_width)``;
    in max mode ``argmax_y`` / ``argmax_x`` (same shape) are filled too.

    Example:
        >>> feature = torch.arange(16.).view(1, 1, 4, 4)
        >>> rois = torch.tensor([[0., 0., 0., 2., 2.]])
        >>> out = torch.zeros(1, 1, 1, 1)
        >>> roi_align_forward(feature, rois, out, torch.zeros(0),
        ...                   torch.zeros(0), 1, 1, 1.0, 2, 1, True)
        >>> out.flatten()
        tensor([2.5000])
    """
    pool_mode = _check_pool_mode(pool_mode)
    pooled = (int(aligned_height), int(aligned_width))
    if pool_mode == AVG_POOL:
        import torchvision
        output.copy_(torchvision.ops.roi_align(
            input, rois.to(input.dtype), pooled, float(spatial_scale),
            int(sampling_ratio), bool(aligned)))
        return
    for index, roi in enumerate(rois.to(input.dtype)):
        ys, xs = _roi_geometry(roi, pooled, spatial_scale,
                               int(sampling_ratio), bool(aligned))
        value, arg_y, arg_x = _max_pool_one_roi(input[int(roi[0])], ys, xs)
        output[index] = value
        argmax_y[index] = arg_y
        argmax_x[index] = arg_x


def _max_pool_backward(grad_output, rois, argmax_y, argmax_x, grad_input):
    batch, channels, height, width = grad_input.shape
    flat = grad_input.view(-1)
    batch_index = rois[:, 0].long().view(-1, 1, 1, 1).expand_as(argmax_y)
    channel = torch.arange(channels, device=grad_input.device).view(
        1, -1, 1, 1).expand_as(argmax_y)
    chosen = argmax_y != -1
    y_low, y_high, wy_low, wy_high, valid_y = axis_weights(argmax_y, height)
    x_low, x_high, wx_low, wx_high, valid_x = axis_weights(argmax_x, width)
    keep = chosen & valid_y & valid_x
    base = (batch_index * channels + channel) * height
    for y, wy in ((y_low, wy_low), (y_high, wy_high)):
        for x, wx in ((x_low, wx_low), (x_high, wx_high)):
            position = (base + y) * width + x
            flat.index_put_((position[keep],), (grad_output * wy * wx)[keep],
                            accumulate=True)


def roi_align_backward(grad_output: torch.Tensor, rois: torch.Tensor,
                       argmax_y: torch.Tensor, argmax_x: torch.Tensor,
                       grad_input: torch.Tensor, aligned_height: int,
                       aligned_width: int, spatial_scale: float,
                       sampling_ratio: int, pool_mode: int,
                       aligned: bool) -> None:
    """Add the gradient of :func:`roi_align_forward` into ``grad_input``.

    Example:
        >>> rois = torch.tensor([[0., 0., 0., 2., 2.]])
        >>> grad = torch.zeros(1, 1, 4, 4)
        >>> roi_align_backward(torch.ones(1, 1, 1, 1), rois, torch.zeros(0),
        ...                    torch.zeros(0), grad, 1, 1, 1.0, 1, 1, True)
        >>> grad[0, 0, :3, :3]
        tensor([[0.2500, 0.2500, 0.0000],
                [0.2500, 0.2500, 0.0000],
                [0.0000, 0.0000, 0.0000]])
    """
    pool_mode = _check_pool_mode(pool_mode)
    if pool_mode == MAX_POOL:
        _max_pool_backward(grad_output, rois, argmax_y, argmax_x, grad_input)
        return
    import torchvision
    # average pooling is linear in the feature map, so its gradient is the
    # vector-Jacobian product at any point: take it at zeros
    with torch.enable_grad():
        feature = grad_input.new_zeros(grad_input.shape, requires_grad=True)
        pooled = torchvision.ops.roi_align(
            feature, rois.to(feature.dtype),
            (int(aligned_height), int(aligned_width)), float(spatial_scale),
            int(sampling_ratio), bool(aligned))
        grad, = torch.autograd.grad(pooled, feature, grad_output)
    grad_input.add_(grad)
