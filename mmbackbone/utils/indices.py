"""Validation of the ``out_indices`` and ``frozen_stages`` arguments."""
from typing import Sequence, Tuple, Union

IndexSpec = Union[int, Sequence[int]]


def normalize_out_indices(out_indices: IndexSpec, num_stages: int,
                          name: str = 'out_indices') -> Tuple[int, ...]:
    """Turn ``out_indices`` into a tuple of non-negative stage indices.

    Negative indices count from the last stage. The order given is kept.

    Args:
        out_indices: an int, or a tuple / list of ints.
        num_stages: how many stages can be output.
        name: the argument name used in error messages.

    Returns:
        tuple[int]: the indices, each in ``[0, num_stages)``.

    Raises:
        TypeError: if an entry is not an int.
        ValueError: if an entry is out of range, or none is given.

    Example:
        >>> normalize_out_indices((0, -1), 4)
        (0, 3)
        >>> normalize_out_indices(2, 4)
        (2,)
    """
    if isinstance(out_indices, bool):
        raise TypeError(f'{name}={out_indices!r} must be an int or a '
                        f'sequence of ints')
    if isinstance(out_indices, int):
        out_indices = (out_indices, )
    if not isinstance(out_indices, Sequence) or isinstance(out_indices, str):
        raise TypeError(f'{name}={out_indices!r} must be an int or a '
                        f'tuple/list of ints in [{-num_stages}, '
                        f'{num_stages - 1}]; get {type(out_indices)} '
                        f'instead')
    if len(out_indices) == 0:
        raise ValueError(f'{name}={out_indices!r} is empty; give at least '
                         f'one index in [{-num_stages}, {num_stages - 1}]')
    result = []
    for index in out_indices:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f'{name}={tuple(out_indices)!r} holds '
                            f'{index!r}, which is not an int; valid indices '
                            f'are ints in [{-num_stages}, {num_stages - 1}]')
        if not -num_stages <= index < num_stages:
            raise ValueError(
                f'Invalid out_indices {index}: '
                f'{name}={tuple(out_indices)!r} holds {index}, out of range '
                f'for {num_stages} stages; valid indices are '
                f'[{-num_stages}, {num_stages - 1}]')
        result.append(index % num_stages)
    return tuple(result)


def normalize_frozen_stages(frozen_stages: Union[int, str],
                            num_stages: int) -> int:
    """Validate ``frozen_stages``; ``'all'`` becomes ``num_stages``.

    ``-1`` freezes nothing, ``0`` the stem, ``k`` the stem and stages
    ``1..k``.

    Example:
        >>> normalize_frozen_stages('all', 4)
        4
        >>> normalize_frozen_stages(1, 4)
        1
    """
    if frozen_stages == 'all':
        return num_stages
    if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int):
        raise TypeError(f"frozen_stages={frozen_stages!r} must be an int in "
                        f"[-1, {num_stages}] or 'all'")
    if not -1 <= frozen_stages <= num_stages:
        raise ValueError(
            f"frozen_stages={frozen_stages} is out of range; valid values "
            f"are -1 (nothing), 0 (the stem), 1..{num_stages} (the stem and "
            f"that many stages) or 'all'")
    return frozen_stages
