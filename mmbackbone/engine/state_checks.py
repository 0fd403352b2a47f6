"""Strict checks of a checkpoint's model and optimizer state.

mmengine loads a training checkpoint's model state non-strictly and its
optimizer state without comparing it with the built optimizer, so another
model's checkpoint gives a random model or a crash in the optimizer's step.
Here:

* :func:`model_state_from` takes the model state out of a checkpoint;
* :func:`load_model_state` loads it strictly: missing, unexpected and
  mis-shaped keys are an error naming the file;
* :func:`check_optimizer_state` compares the saved optimizer state with
  the built optimizer's parameter groups before it is loaded.

Every error is a :class:`CheckpointMismatchError` (a
:class:`~mmbackbone.checkpoint.CheckpointError`) naming the file and the fix.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> state = model_state_from({'state_dict': model.state_dict()}, 'w.pth')
    >>> load_model_state(model, state, 'w.pth')
    >>> try:
    ...     load_model_state(torch.nn.Linear(3, 1), state, 'w.pth')
    ... except CheckpointMismatchError as err:
    ...     print(str(err).split(' (')[0])
    checkpoint w.pth does not fit the model: 1 tensors have other shapes
"""
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Dict, Sequence, Tuple

import torch

from mmbackbone.checkpoint.io import CheckpointError

#: How to fix a checkpoint that does not fit the model.
PARTIAL_HINT = (
    'to start from part of a checkpoint (e.g. its backbone), use '
    "model.backbone.init_cfg=dict(type='Pretrained', checkpoint=..., "
    "prefix='backbone') instead of load_from / --resume")
#: Optimizer state entries that have the shape of their parameter.
PARAM_SHAPED_STATE = ('momentum_buffer', 'exp_avg', 'exp_avg_sq',
                      'max_exp_avg_sq', 'square_avg', 'acc_delta', 'sum',
                      'ax', 'grad_avg', 'prev')


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's model or optimizer state does not fit the built one."""


def _first_line(err: BaseException) -> str:
    """The first line of an error's message (``''`` when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else ''


# ------------------------------------------------------------- model state
def _brief(keys: Sequence[str], n: int = 5) -> str:
    keys = list(keys)
    shown = ', '.join(repr(k) for k in keys[:n])
    return shown + (f' and {len(keys) - n} more' if len(keys) > n else '')


def model_state_from(checkpoint: Mapping, path: Any,
                     revise_keys: Sequence[Tuple[str, str]] = (
                         (r'^module\.', ''), )) -> 'OrderedDict':
    """The model state of a checkpoint: ``state_dict`` or the top level,
    tensors only, with ``revise_keys`` applied (mmengine's convention)."""
    state = checkpoint.get('state_dict', checkpoint)
    if not isinstance(state, Mapping):
        raise CheckpointError(f'checkpoint {path}: state_dict is a '
                              f'{type(state).__name__}, not a dict')
    odd = [str(k) for k, v in state.items()
           if not isinstance(v, torch.Tensor)]
    if state is checkpoint:  # a bare state dict: other keys are not weights
        state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    elif odd:
        raise CheckpointError(f'checkpoint {path}: state_dict entries '
                              f'{_brief(odd)} are not tensors')
    if not state:
        raise CheckpointError(f'checkpoint {path} holds no model weights '
                              f'(keys: {_brief(sorted(map(str, checkpoint)))})')
    bad = [k for k, v in state.items()
           if v.layout != torch.strided or v.is_meta or v.is_quantized]
    if bad:
        raise CheckpointError(
            f'checkpoint {path}: tensors {_brief(bad)} are sparse, meta or '
            f'quantized; the model takes dense weights. Re-save them dense')
    revised = OrderedDict()
    for key, value in state.items():
        for pattern, replacement in revise_keys:
            key = re.sub(pattern, replacement, key)
        revised[key] = value
    metadata = getattr(state, '_metadata', None)
    if metadata is not None:
        revised._metadata = metadata  # type: ignore[attr-defined]
    return revised


_SIZE_MISMATCH = re.compile(
    r'size mismatch for ([^:]+): copying a param with shape torch\.Size\('
    r'(\[[^\]]*\])\) from checkpoint, the shape in current model is '
    r'torch\.Size\((\[[^\]]*\])\)')


def load_model_state(model: torch.nn.Module, state: Mapping, path: Any,
                     strict: bool = True) -> None:
    """Load ``state`` into ``model``; any mismatch is an error.

    With ``strict`` (the default) missing or unexpected keys are an error;
    without it they are allowed, but a shape mismatch or no common key at
    all still is. On an error the model may be partly loaded: discard it.

    Raises:
        CheckpointMismatchError: naming the file, the keys and the fix.
    """
    own = model.state_dict()
    complex_into_real = [k for k, v in state.items()
                         if v.is_complex() and k in own
                         and not own[k].is_complex()]
    if complex_into_real:
        raise CheckpointMismatchError(
            f'checkpoint {path}: tensors {_brief(complex_into_real)} are '
            f'complex; the model\'s are real. It is not a checkpoint of '
            f'this model')
    if not set(state) & set(own):
        raise CheckpointMismatchError(
            f'checkpoint {path} shares no key with the model (checkpoint: '
            f'{_brief(sorted(state), 3)}; model: {_brief(sorted(own), 3)}); '
            f'it is another model\'s checkpoint. Check the config, or '
            f'{PARTIAL_HINT}')
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        found = _SIZE_MISMATCH.findall(str(err))
        if not found:
            raise CheckpointMismatchError(
                f'checkpoint {path} does not fit the model '
                f'({_first_line(err)})') from err
        listed = '; '.join(f'{k}: {a} in the file, {b} in the model'
                           for k, a, b in found[:5])
        more = f' and {len(found) - 5} more' if len(found) > 5 else ''
        raise CheckpointMismatchError(
            f'checkpoint {path} does not fit the model: {len(found)} '
            f'tensors have other shapes ({listed}{more}). It was trained '
            f'with another config; use that config, or {PARTIAL_HINT}'
        ) from None
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f'{len(missing)} missing ({_brief(missing)})')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected '
                         f'({_brief(unexpected)})')
        raise CheckpointMismatchError(
            f'checkpoint {path} does not fit the model: keys '
            f'{"; ".join(parts)}. It was trained with another config; use '
            f'that config, or {PARTIAL_HINT}')


# --------------------------------------------------------- optimizer state
def _optimizers(optim_wrapper) -> Dict[str, torch.optim.Optimizer]:
    from mmengine.optim import OptimWrapperDict
    if isinstance(optim_wrapper, OptimWrapperDict):
        return {name: w.optimizer for name, w in optim_wrapper.items()}
    return {'': optim_wrapper.optimizer}


def check_optimizer_state(optim_wrapper, saved: Any, path: Any) -> None:
    """Refuse an optimizer state that does not fit ``optim_wrapper``.

    Compares the number of parameter groups, the parameters per group and
    the shape of every per-parameter state tensor (momentum, Adam moments)
    with the built optimizer, and the hyperparameters each group needs.

    Raises:
        CheckpointMismatchError: naming the file, the group and the fix.
    """
    hint = ('the optimizer or the trainable parameters differ from the run '
            'that wrote it (optim_wrapper, paramwise_cfg, frozen_stages). '
            'Resume with the same config, or start from its weights with '
            'load_from and without --resume')
    optimizers = _optimizers(optim_wrapper)
    if not isinstance(saved, Mapping):
        raise CheckpointMismatchError(f'checkpoint {path}: optimizer state '
                                      f'is not a dict')
    states = {'': saved} if '' in optimizers else saved
    for name, optimizer in optimizers.items():
        where = f'checkpoint {path}: optimizer{f" {name!r}" if name else ""}'
        state = states.get(name)
        if not isinstance(state, Mapping) or not isinstance(
                state.get('param_groups'), list) or not isinstance(
                state.get('state'), Mapping):
            raise CheckpointMismatchError(
                f'{where} state is missing or malformed (no param_groups / '
                f'state); {hint}')
        groups = state['param_groups']
        if len(groups) != len(optimizer.param_groups):
            raise CheckpointMismatchError(
                f'{where} has {len(groups)} parameter groups, the built '
                f'optimizer {len(optimizer.param_groups)}; {hint}')
        for index, (group, built) in enumerate(
                zip(groups, optimizer.param_groups)):
            ids = group.get('params') if isinstance(group, Mapping) else None
            if not isinstance(ids, list) or len(ids) != len(built['params']):
                count = len(ids) if isinstance(ids, list) else '?'
                raise CheckpointMismatchError(
                    f'{where} group {index} has {count} parameters, the '
                    f'built one {len(built["params"])}; {hint}')
            needed = sorted(k for k in built if k != 'params'
                            and k not in group and k not in (
                                'foreach', 'differentiable', 'fused',
                                'capturable', 'maximize',
                                'decoupled_weight_decay', 'initial_lr'))
            if needed:
                raise CheckpointMismatchError(
                    f'{where} group {index} lacks {needed}: it was written '
                    f'by another optimizer type; {hint}')
            for pid, param in zip(ids, built['params']):
                entry = state['state'].get(pid)
                if entry is None:
                    continue
                if not isinstance(entry, Mapping):
                    raise CheckpointMismatchError(
                        f'{where}: state of parameter {pid} is not a dict')
                for key, value in entry.items():
                    if key in PARAM_SHAPED_STATE and isinstance(
                            value, torch.Tensor) and \
                            value.shape != param.shape:
                        raise CheckpointMismatchError(
                            f'{where}: {key} of parameter {pid} (group '
                            f'{index}) has shape {list(value.shape)}, the '
                            f'parameter {list(param.shape)}; {hint}')
