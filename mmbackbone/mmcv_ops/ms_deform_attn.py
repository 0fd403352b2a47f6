"""Multi-scale deformable attention kernels (Deformable DETR, DINO).

Each query, head, level and point bilinearly samples the value map of its
level at a location given in ``[0, 1]`` image coordinates (``(x, y)``,
pixel centres at ``(i + 0.5) / size``, zero outside), and the samples are
summed with the attention weights. This is ``F.grid_sample`` with
``align_corners=False`` and zero padding; the backward kernel is the
autograd of that computation.
"""
import torch
import torch.nn.functional as F


def deformable_attention(value: torch.Tensor, spatial_shapes: torch.Tensor,
                         level_start_index: torch.Tensor,
                         sampling_locations: torch.Tensor,
                         attention_weights: torch.Tensor) -> torch.Tensor:
    """Differentiable multi-scale deformable attention.

    Args:
        value: ``(batch, keys, heads, dims)``, the levels' maps flattened
            and concatenated.
        spatial_shapes: ``(levels, 2)`` ``(height, width)`` per level.
        level_start_index: ``(levels,)`` first key of each level.
        sampling_locations: ``(batch, queries, heads, levels, points, 2)``.
        attention_weights: ``(batch, queries, heads, levels, points)``.

    Returns:
        ``(batch, queries, heads * dims)``.

    Example:
        >>> value = torch.arange(4.).view(1, 4, 1, 1)  # one 2x2 level
        >>> where = torch.tensor([0.5, 0.5]).view(1, 1, 1, 1, 1, 2)
        >>> deformable_attention(value, torch.tensor([[2, 2]]),
        ...                      torch.tensor([0]), where,
        ...                      torch.ones(1, 1, 1, 1, 1))
        tensor([[[1.5000]]])
    """
    batch, _, heads, dims = value.shape
    queries, levels, points = sampling_locations.shape[1], \
        sampling_locations.shape[3], sampling_locations.shape[4]
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, ((height, width), start) in enumerate(
            zip(spatial_shapes.tolist(), level_start_index.tolist())):
        level_value = value[:, start:start + height * width]
        # (batch, keys, heads, dims) -> (batch * heads, dims, height, width)
        level_value = level_value.permute(0, 2, 3, 1).reshape(
            batch * heads, dims, height, width)
        # (batch, queries, heads, points, 2) -> (batch * heads, queries,
        # points, 2)
        level_grid = grids[:, :, :, level].transpose(1, 2).reshape(
            batch * heads, queries, points, 2)
        sampled.append(F.grid_sample(level_value, level_grid,
                                     mode='bilinear', padding_mode='zeros',
                                     align_corners=False))
    # (batch * heads, dims, queries, levels * points)
    sampled = torch.stack(sampled, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(
        batch * heads, 1, queries, levels * points)
    output = (sampled * weights).sum(-1)  # (batch * heads, dims, queries)
    return output.view(batch, heads * dims, queries).transpose(1, 2) \
        .contiguous()


def _check_step(im2col_step) -> None:
    if int(im2col_step) < 1:
        raise ValueError(f'im2col_step must be a positive int, got '
                         f'{im2col_step!r}')


def ms_deform_attn_forward(value: torch.Tensor, value_spatial_shapes:
                           torch.Tensor, value_level_start_index:
                           torch.Tensor, sampling_locations: torch.Tensor,
                           attention_weights: torch.Tensor,
                           im2col_step: int) -> torch.Tensor:
    """Return the attention output ``(batch, queries, heads * dims)``.

    ``im2col_step`` (batch chunking in the reference kernel) does not
    change the result.

    Example:
        >>> value = torch.ones(1, 4, 1, 2)
        >>> where = torch.full((1, 3, 1, 1, 1, 2), 0.5)
        >>> ms_deform_attn_forward(value, torch.tensor([[2, 2]]),
        ...                        torch.tensor([0]), where,
        ...                        torch.ones(1, 3, 1, 1, 1), 64).shape
        torch.Size([1, 3, 2])
    """
    _check_step(im2col_step)
    return deformable_attention(value, value_spatial_shapes,
                                value_level_start_index, sampling_locations,
                                attention_weights)


def ms_deform_attn_backward(value: torch.Tensor,
                            value_spatial_shapes: torch.Tensor,
                            value_level_start_index: torch.Tensor,
                            sampling_locations: torch.Tensor,
                            attention_weights: torch.Tensor,
                            grad_output: torch.Tensor,
                            grad_value: torch.Tensor,
                            grad_sampling_loc: torch.Tensor,
                            grad_attn_weight: torch.Tensor,
                            im2col_step: int) -> None:
    """Add the gradients w.r.t. value, sampling locations and attention
    weights into ``grad_value``, ``grad_sampling_loc``, ``grad_attn_weight``.

    Example:
        >>> value = torch.arange(4.).view(1, 4, 1, 1)
        >>> where = torch.tensor([0.5, 0.5]).view(1, 1, 1, 1, 1, 2)
        >>> grads = [torch.zeros(1, 4, 1, 1), torch.zeros_like(where),
        ...          torch.zeros(1, 1, 1, 1, 1)]
        >>> ms_deform_attn_backward(value, torch.tensor([[2, 2]]),
        ...                         torch.tensor([0]), where,
        ...                         torch.ones(1, 1, 1, 1, 1),
        ...                         torch.ones(1, 1, 1), *grads, 64)
        >>> grads[0].flatten().tolist(), grads[2].item()
        ([0.25, 0.25, 0.25, 0.25], 1.5)
    """
    _check_step(im2col_step)
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in
                  (value, sampling_locations, attention_weights)]
        output = deformable_attention(leaves[0], value_spatial_shapes,
                                      value_level_start_index, leaves[1],
                                      leaves[2])
        grads = torch.autograd.grad(output, leaves, grad_output)
    for target, grad in zip((grad_value, grad_sampling_loc,
                             grad_attn_weight), grads):
        target.add_(grad)
