"""Deformable convolution kernels (v1 and modulated v2) on torchvision.

The offset layout is the one both libraries share: for each deformable
group and each kernel tap ``k`` (row-major over the kernel), channel ``2k``
shifts the sampling row and ``2k + 1`` the column. The modulated variant
multiplies each sample by its mask channel. Backward kernels take the
vector-Jacobian product of ``torchvision.ops.deform_conv2d`` and add it
into the zero-initialised gradient tensors they are given, with the offset
gradient set to 0 for samples outside ``(-1, size)`` as mmcv's kernels do.
``im2col_step`` only splits the batch for memory in the reference kernels;
the result does not depend on it, so it is checked and otherwise unused.
"""
import torch


def _check_layout(input, weight, offset, mask, group, deformable_group,
                  im2col_step=None):
    kernel = weight.size(2) * weight.size(3)
    if group < 1 or input.size(1) != weight.size(1) * group:
        raise ValueError(
            f'group={group!r} does not fit {input.size(1)} input channels '
            f'and weight of shape {tuple(weight.shape)} (input channels must '
            f'equal weight.size(1) * group)')
    if deformable_group < 1 or \
            offset.size(1) != 2 * kernel * deformable_group:
        raise ValueError(
            f'deformable_group={deformable_group!r} does not fit an offset '
            f'with {offset.size(1)} channels (expected 2 * {kernel} kernel '
            f'taps * deformable_group)')
    if mask is not None and mask.size(1) != kernel * deformable_group:
        raise ValueError(
            f'mask has {mask.size(1)} channels; expected {kernel} kernel '
            f'taps * deformable_group={deformable_group}')
    if im2col_step is not None and (
            im2col_step < 1 or input.size(0) % im2col_step != 0):
        raise ValueError(f'im2col_step={im2col_step!r} must be a positive '
                         f'divisor of the batch size {input.size(0)}')


def _conv(input, offset, weight, mask, bias, stride, padding, dilation):
    import torchvision
    return torchvision.ops.deform_conv2d(
        input, offset, weight, bias=bias, stride=stride, padding=padding,
        dilation=dilation, mask=mask)


def _zero_outside_offset_grad(grad_offset, offset, input_size, kernel,
                              stride, padding, dilation) -> torch.Tensor:
    """Zero the offset gradient of samples at or beyond the map's border.

    Both kernels read zero outside ``(-1, size)``, but at exactly ``-1``
    torchvision still takes a one-sided derivative towards the border
    pixel, while mmcv's kernels give 0 for any sample outside
    ``(-1, size)``. Zero offsets with padding put samples exactly there,
    so mmcv's convention is restored here.
    """
    batch, channels, out_h, out_w = offset.shape
    taps = kernel[0] * kernel[1]
    shape = (batch, channels // (2 * taps), taps, 2, out_h, out_w)
    offset = offset.detach().reshape(shape)
    tap = torch.arange(taps, device=offset.device)
    outside = torch.zeros(shape[:3] + shape[4:], dtype=torch.bool,
                          device=offset.device)
    for axis, tap_index in ((0, tap // kernel[1]), (1, tap % kernel[1])):
        out = (out_h, out_w)[axis]
        base = torch.arange(out, device=offset.device) * stride[axis] - \
            padding[axis]
        position = base[None, :] + tap_index[:, None] * dilation[axis]
        position = position.view(taps, out, 1) if axis == 0 else \
            position.view(taps, 1, out)
        coord = offset[:, :, :, axis] + position
        outside |= (coord <= -1) | (coord >= input_size[axis])
    outside = outside[:, :, :, None].expand(shape).reshape(grad_offset.shape)
    return grad_offset.masked_fill(outside, 0)


def _vjp(grad_output, tensors: dict, wanted: tuple, **conv_args) -> dict:
    """Gradients of the convolution w.r.t. the ``wanted`` named tensors."""
    with torch.enable_grad():
        leaves = {name: (None if value is None else
                         value.detach().requires_grad_(name in wanted))
                  for name, value in tensors.items()}
        output = _conv(**leaves, **conv_args)
        grads = torch.autograd.grad(output, [leaves[n] for n in wanted],
                                    grad_output)
    return dict(zip(wanted, grads))


def deform_conv_forward(input: torch.Tensor, weight: torch.Tensor,
                        offset: torch.Tensor, output: torch.Tensor,
                        columns: torch.Tensor, ones: torch.Tensor, kW: int,
                        kH: int, dW: int, dH: int, padW: int, padH: int,
                        dilationW: int, dilationH: int, group: int,
                        deformable_group: int, im2col_step: int) -> None:
    """Deformable convolution (v1, no bias) written into ``output``.

    ``columns`` and ``ones`` are the reference kernels' scratch buffers and
    are not used.

    Example:
        >>> x, w = torch.ones(1, 1, 3, 3), torch.ones(1, 1, 1, 1)
        >>> out = torch.empty(1, 1, 3, 3)
        >>> offset = torch.zeros(1, 2, 3, 3)
        >>> offset[:, 1] = 0.5  # half a pixel right: the last column halves
        >>> deform_conv_forward(x, w, offset, out, torch.empty(0),
        ...                     torch.empty(0), 1, 1, 1, 1, 0, 0, 1, 1, 1, 1,
        ...                     1)
        >>> out[0, 0, 0]
        tensor([1.0000, 1.0000, 0.5000])
    """
    _check_layout(input, weight, offset, None, group, deformable_group,
                  im2col_step)
    output.copy_(_conv(input, offset, weight, None, None, (dH, dW),
                       (padH, padW), (dilationH, dilationW)))


def deform_conv_backward_input(input: torch.Tensor, offset: torch.Tensor,
                               gradOutput: torch.Tensor,
                               gradInput: torch.Tensor,
                               gradOffset: torch.Tensor,
                               weight: torch.Tensor, columns: torch.Tensor,
                               kW: int, kH: int, dW: int, dH: int, padW: int,
                               padH: int, dilationW: int, dilationH: int,
                               group: int, deformable_group: int,
                               im2col_step: int) -> None:
    """Add the gradients w.r.t. ``input`` and ``offset`` into
    ``gradInput`` / ``gradOffset``.

    Example:
        >>> x, w = torch.ones(1, 1, 2, 2), torch.full((1, 1, 1, 1), 2.)
        >>> grad_x, grad_offset = torch.zeros(1, 1, 2, 2), torch.zeros(
        ...     1, 2, 2, 2)
        >>> deform_conv_backward_input(
        ...     x, torch.zeros(1, 2, 2, 2), torch.ones(1, 1, 2, 2), grad_x,
        ...     grad_offset, w, torch.empty(0), 1, 1, 1, 1, 0, 0, 1, 1, 1, 1,
        ...     1)
        >>> grad_x.flatten().tolist()
        [2.0, 2.0, 2.0, 2.0]
    """
    _check_layout(input, weight, offset, None, group, deformable_group,
                  im2col_step)
    grads = _vjp(gradOutput, dict(input=input, offset=offset, weight=weight,
                                  mask=None, bias=None),
                 ('input', 'offset'), stride=(dH, dW), padding=(padH, padW),
                 dilation=(dilationH, dilationW))
    grads['offset'] = _zero_outside_offset_grad(
        grads['offset'], offset, input.shape[2:], (kH, kW), (dH, dW),
        (padH, padW), (dilationH, dilationW))
    gradInput.add_(grads['input'])
    gradOffset.add_(grads['offset'])


def deform_conv_backward_parameters(input: torch.Tensor,
                                    offset: torch.Tensor,
                                    gradOutput: torch.Tensor,
                                    gradWeight: torch.Tensor,
                                    columns: torch.Tensor, ones: torch.Tensor,
                                    kW: int, kH: int, dW: int, dH: int,
                                    padW: int, padH: int, dilationW: int,
                                    dilationH: int, group: int,
                                    deformable_group: int, scale: float,
                                    im2col_step: int) -> None:
    """Add ``scale`` times the gradient w.r.t. the weight into
    ``gradWeight``.

    Example:
        >>> grad_w = torch.zeros(1, 1, 1, 1)
        >>> deform_conv_backward_parameters(
        ...     torch.ones(1, 1, 2, 2), torch.zeros(1, 2, 2, 2),
        ...     torch.ones(1, 1, 2, 2), grad_w, torch.empty(0),
        ...     torch.empty(0), 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1.0, 1)
        >>> grad_w.flatten().tolist()
        [4.0]
    """
    _check_layout(input, gradWeight, offset, None, group, deformable_group,
                  im2col_step)
    grads = _vjp(gradOutput, dict(input=input, offset=offset,
                                  weight=gradWeight.new_zeros(
                                      gradWeight.shape),
                                  mask=None, bias=None),
                 ('weight',), stride=(dH, dW), padding=(padH, padW),
                 dilation=(dilationH, dilationW))
    gradWeight.add_(grads['weight'], alpha=scale)


def modulated_deform_conv_forward(
        input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
        ones: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor,
        output: torch.Tensor, columns: torch.Tensor, kernel_h: int,
        kernel_w: int, stride_h: int, stride_w: int, pad_h: int, pad_w: int,
        dilation_h: int, dilation_w: int, group: int, deformable_group: int,
        with_bias: bool) -> None:
    """Modulated deformable convolution (DCNv2) written into ``output``.

    Example:
        >>> x, w = torch.ones(1, 1, 2, 2), torch.ones(1, 1, 1, 1)
        >>> out = torch.empty(1, 1, 2, 2)
        >>> modulated_deform_conv_forward(
        ...     x, w, torch.tensor([1.]), torch.empty(0),
        ...     torch.zeros(1, 2, 2, 2), torch.full((1, 1, 2, 2), 0.5), out,
        ...     torch.empty(0), 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, True)
        >>> out.flatten().tolist()
        [1.5, 1.5, 1.5, 1.5]
    """
    _check_layout(input, weight, offset, mask, group, deformable_group)
    output.copy_(_conv(input, offset, weight, mask,
                       bias if with_bias else None, (stride_h, stride_w),
                       (pad_h, pad_w), (dilation_h, dilation_w)))


def modulated_deform_conv_backward(
        input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
        ones: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor,
        columns: torch.Tensor, grad_input: torch.Tensor,
        grad_weight: torch.Tensor, grad_bias: torch.Tensor,
        grad_offset: torch.Tensor, grad_mask: torch.Tensor,
        grad_output: torch.Tensor, kernel_h: int, kernel_w: int,
        stride_h: int, stride_w: int, pad_h: int, pad_w: int,
        dilation_h: int, dilation_w: int, group: int, deformable_group: int,
        with_bias: bool) -> None:
    """Add the gradients of :func:`modulated_deform_conv_forward` w.r.t.
    input, weight, bias (when ``with_bias``), offset and mask.

    Example:
        >>> x, w = torch.ones(1, 1, 2, 2), torch.ones(1, 1, 1, 1)
        >>> grads = [torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 1),
        ...          torch.zeros(1), torch.zeros(1, 2, 2, 2),
        ...          torch.zeros(1, 1, 2, 2)]
        >>> modulated_deform_conv_backward(
        ...     x, w, torch.zeros(1), torch.empty(0), torch.zeros(1, 2, 2, 2),
        ...     torch.full((1, 1, 2, 2), 0.5), torch.empty(0), *grads,
        ...     torch.ones(1, 1, 2, 2), 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, True)
        >>> grads[1].item(), grads[2].item()
        (2.0, 4.0)
    """
    _check_layout(input, weight, offset, mask, group, deformable_group)
    wanted = ('input', 'weight', 'offset', 'mask') + (
        ('bias',) if with_bias else ())
    grads = _vjp(grad_output, dict(input=input, offset=offset, weight=weight,
                                   mask=mask,
                                   bias=bias if with_bias else None),
                 wanted, stride=(stride_h, stride_w), padding=(pad_h, pad_w),
                 dilation=(dilation_h, dilation_w))
    grads['offset'] = _zero_outside_offset_grad(
        grads['offset'], offset, input.shape[2:], (kernel_h, kernel_w),
        (stride_h, stride_w), (pad_h, pad_w), (dilation_h, dilation_w))
    for name, target in (('input', grad_input), ('weight', grad_weight),
                         ('offset', grad_offset), ('mask', grad_mask),
                         ('bias', grad_bias)):
        if name in grads:
            target.add_(grads[name])
