"""Gradient checkpointing of a block (``with_cp``)."""
from typing import Callable

import torch.utils.checkpoint as cp


def run_checkpointed(fn: Callable, *args, with_cp: bool):
    """``fn(*args)``; with ``with_cp`` and a first input that needs grad,
    ``fn``'s activations are recomputed in backward instead of stored
    (``torch.utils.checkpoint``, non-reentrant).

    Example:
        >>> import torch
        >>> x = torch.rand(2, 3, requires_grad=True)
        >>> run_checkpointed(torch.sigmoid, x, with_cp=True).sum().backward()
        >>> x.grad.shape
        torch.Size([2, 3])
    """
    if with_cp and args[0].requires_grad:
        return cp.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
