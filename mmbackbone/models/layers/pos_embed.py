"""Absolute position embeddings on a token grid: resizing them to another
grid, at forward time (inputs of another size) and when a checkpoint made
for another grid is loaded (one function serves both)."""
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def resize_pos_embed(pos_embed: Tensor, src_shape: Sequence[int],
                     dst_shape: Sequence[int], mode: str = 'bicubic',
                     num_extra_tokens: int = 1) -> Tensor:
    """Resize a ``(1, extra + H*W, C)`` position embedding to another grid.

    The extra (class) tokens are kept; the grid part is interpolated with
    ``align_corners=False`` and no antialiasing, as mmpretrain does.

    Args:
        pos_embed: the embedding, ``(1, L, C)``.
        src_shape: its grid ``(H, W)``.
        dst_shape: the wanted grid ``(H', W')``.
        mode: ``F.interpolate`` mode. Default: ``'bicubic'``.
        num_extra_tokens: leading tokens that are not on the grid.

    Returns:
        Tensor: ``(1, extra + H'*W', C)``.

    Example:
        >>> resize_pos_embed(torch.zeros(1, 17, 8), (4, 4), (2, 3)).shape
        torch.Size([1, 7, 8])
    """
    src_h, src_w = int(src_shape[0]), int(src_shape[1])
    if same_grid((src_h, src_w), dst_shape):
        return pos_embed
    # a traced grid that may equal the source is interpolated all the
    # same: to the same grid, the interpolation gives the same values
    dst_h, dst_w = dst_shape[0], dst_shape[1]
    if not is_traced_size(dst_h) and not is_traced_size(dst_w):
        dst_h, dst_w = int(dst_h), int(dst_w)
    length, channels = pos_embed.shape[1], pos_embed.shape[2]
    if not torch.jit.is_tracing() and \
            length != src_h * src_w + num_extra_tokens:
        raise ValueError(f'pos_embed has {length} tokens, not {src_h}x'
                         f'{src_w} + {num_extra_tokens} extra; check '
                         f'img_size and patch_size')
    extra = pos_embed[:, :num_extra_tokens]
    grid = pos_embed[:, num_extra_tokens:].reshape(1, src_h, src_w, channels)
    grid = F.interpolate(grid.permute(0, 3, 1, 2).float(),
                         size=(dst_h, dst_w), mode=mode,
                         align_corners=False if mode in (
                             'bilinear', 'bicubic') else None)
    grid = grid.flatten(2).transpose(1, 2).to(pos_embed.dtype)
    return torch.cat((extra, grid), dim=1)


def is_traced_size(size) -> bool:
    """Whether a size is traced rather than a plain number: a ``SymInt``
    (``torch.export``, a dynamic ``torch.compile``), any size inside
    ``torch.compile`` (which may make it symbolic on a recompile) or
    under ``torch.jit.trace`` (which gives sizes as 0-dim tensors).

    Example:
        >>> from torch.fx.experimental.symbolic_shapes import ShapeEnv
        >>> is_traced_size(14)
        False
        >>> is_traced_size(ShapeEnv().create_unbacked_symint())
        True
    """
    return (torch.jit.is_tracing() or torch.compiler.is_compiling()
            or isinstance(size, torch.SymInt))


def same_grid(src_shape: Sequence[int], dst_shape: Sequence) -> bool:
    """Whether a grid ``(H, W)`` equals another, where that is known
    without fixing a traced size.

    Plain numbers compare as usual. A symbolic size counts as equal only
    when it is equal for every value it may take, so the comparison adds
    no guard to the traced program; a ``torch.jit.trace`` size (a 0-dim
    tensor) always counts as different.

    Example:
        >>> same_grid((14, 14), (14, 14)), same_grid((14, 14), (16, 14))
        (True, False)
    """
    if torch.jit.is_tracing():
        return False
    if any(is_traced_size(size) for size in dst_shape[:2]):
        # sympy-backed; loaded already wherever sizes are symbolic
        from torch.fx.experimental.symbolic_shapes import \
            statically_known_true
        return all(statically_known_true(dst == src) for src, dst in
                   zip(src_shape[:2], dst_shape[:2]))
    return (int(src_shape[0]), int(src_shape[1])) == \
        (int(dst_shape[0]), int(dst_shape[1]))


def is_square(number: int) -> bool:
    """A positive perfect square (a square token grid).

    Example:
        >>> is_square(196), is_square(197)
        (True, False)
    """
    return number > 0 and math.isqrt(number) ** 2 == number


def fit_pos_embed(pos_embed: Tensor, want_shape: Sequence[int],
                  grid: Tuple[int, int], num_extra_tokens: int = 1,
                  mode: str = 'bicubic') -> Tuple[Tensor, Optional[str]]:
    """A checkpoint's position embedding fitted to a model's tokens.

    A model without a class token drops the checkpoint's class entry; a
    square grid of another size is resized (:func:`resize_pos_embed`).
    Anything else is returned as is, for the loader to report.

    Args:
        pos_embed: the checkpoint's embedding, ``(1, L, C)``.
        want_shape: the model's ``pos_embed`` shape.
        grid: the model's token grid ``(H, W)``.
        num_extra_tokens: the model's leading non-grid tokens (0 or 1).
        mode: ``F.interpolate`` mode.

    Returns:
        tuple: the embedding, and a note ``'pos_embed: before -> after'``
        when it was changed (None otherwise).

    Example:
        >>> fitted, note = fit_pos_embed(torch.zeros(1, 17, 8), (1, 10, 8),
        ...                               (3, 3))
        >>> tuple(fitted.shape), note
        ((1, 10, 8), 'pos_embed: (1, 17, 8) -> (1, 10, 8)')
    """
    want = tuple(want_shape)
    if pos_embed.ndim != 3 or tuple(pos_embed.shape) == want:
        return pos_embed, None
    before, length = tuple(pos_embed.shape), pos_embed.shape[1]
    note = f'pos_embed: {before} -> {want}'
    if not num_extra_tokens and (length == want[1] + 1 or (
            is_square(length - 1) and not is_square(length))):
        pos_embed = pos_embed[:, 1:]  # the class-token entry
        if tuple(pos_embed.shape) == want:
            return pos_embed, note
    if pos_embed.shape[2] != want[2] or \
            not is_square(pos_embed.shape[1] - num_extra_tokens):
        return pos_embed, None  # not a square grid; the loader reports
    side = math.isqrt(pos_embed.shape[1] - num_extra_tokens)
    pos_embed = resize_pos_embed(pos_embed, (side, side), grid, mode,
                                 num_extra_tokens)
    return pos_embed, note
