"""Key conversion from other libraries' checkpoints to ours.

A family registers one function per source format::

    @register_converter('timm', 'ResNet')
    def resnet_from_timm(state_dict, model):
        return {...}  # our keys

:func:`best_conversion` tries the file as it is and every converter
registered for the model's class (or a base class) and keeps the one
whose keys and shapes fit the model best, so checkpoints of timm,
torchvision and mmpretrain load without the user naming the source.
"""
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

StateDict = Dict[str, torch.Tensor]
Converter = Callable[[StateDict, nn.Module], StateDict]

_CONVERTERS: Dict[str, List[Tuple[str, Converter]]] = {}


def register_converter(source: str, *class_names: str):
    """Register ``fn(state_dict, model) -> state_dict`` for classes.

    Args:
        source: the format's name, reported in the load summary
            (``'timm'``, ``'torchvision'``, ...).
        class_names: backbone class names (subclasses inherit it).
    """

    def decorator(fn: Converter) -> Converter:
        for name in class_names:
            _CONVERTERS.setdefault(name, []).append((source, fn))
        return fn

    return decorator


def converters_for(model: nn.Module) -> List[Tuple[str, Converter]]:
    """Converters registered for the model's class and its bases."""
    found = []
    for cls in type(model).__mro__:
        found.extend(_CONVERTERS.get(cls.__name__, []))
    return found


def fit_score(state_dict: StateDict, target: StateDict
              ) -> Tuple[int, int, int]:
    """How well a candidate fits: higher is better.

    (keys present with equal shapes, keys present, minus keys the model
    does not have).
    """
    present = [k for k in state_dict if k in target]
    same = sum(state_dict[k].shape == target[k].shape for k in present)
    return same, len(present), len(present) - len(state_dict)


def best_conversion(state_dict: StateDict, model: nn.Module
                    ) -> Tuple[str, StateDict]:
    """Return ``(source name, converted state dict)`` that fits best."""
    target = model.state_dict()
    best = ('mmbackbone', state_dict)
    best_score = fit_score(state_dict, target)
    if best_score[0] == len(state_dict) == len(target):
        return best
    for source, fn in converters_for(model):
        try:
            converted = fn(dict(state_dict), model)
        except (KeyError, ValueError, IndexError, RuntimeError):
            continue  # the file is not in this converter's format
        score = fit_score(converted, target)
        if score > best_score:
            best, best_score = (source, converted), score
    return best
