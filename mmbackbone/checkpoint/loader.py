"""Load a checkpoint into a model: strict about mismatches, one report."""
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import print_log
from torch import nn

from .convert import best_conversion, fit_score
from .io import CheckpointError, read_state_dict
from .resolve import default_prefix, resolve_checkpoint

StateDict = Dict[str, torch.Tensor]


@dataclass
class LoadReport:
    """What a load did: returned by :func:`load_pretrained`."""
    path: Path
    source: str
    num_loaded: int
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    adapted: List[str] = field(default_factory=list)

    def summary(self, model_name: str) -> str:
        text = (f'Loaded {self.num_loaded} tensors into {model_name} from '
                f'{self.path} ({self.source} keys)')
        if self.adapted:
            text += f'; adapted: {self.adapted}'
        if self.missing:
            text += f'; {len(self.missing)} missing: {abbreviate_keys(self.missing)}'
        if self.unexpected:
            text += (f'; {len(self.unexpected)} unexpected: '
                     f'{abbreviate_keys(self.unexpected)}')
        return text


def abbreviate_keys(keys: Sequence[str], limit: int = 8) -> str:
    """The first ``limit`` keys, comma-separated, and how many more.

    Example:
        >>> abbreviate_keys(['a', 'b', 'c'], limit=2)
        'a, b, ... (+1)'
    """
    keys = list(keys)
    more = f', ... (+{len(keys) - limit})' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def _top_prefixes(state_dict: StateDict) -> List[str]:
    return sorted({k.split('.', 1)[0] for k in state_dict if '.' in k})


def strip_prefix(state_dict: StateDict, prefix: str, path) -> StateDict:
    """Keep the keys under ``prefix`` (``'backbone'`` or ``'backbone.'``)."""
    if not isinstance(prefix, str) or not prefix.strip('.'):
        raise ValueError(f'prefix={prefix!r} must be a non-empty string such '
                         f"as 'backbone'")
    head = prefix.rstrip('.') + '.'
    kept = {k[len(head):]: v for k, v in state_dict.items()
            if k.startswith(head)}
    if not kept:
        raise KeyError(f'checkpoint {path}: prefix={prefix!r} matches no '
                       f'key; the file has the prefixes '
                       f'{_top_prefixes(state_dict)}')
    return kept


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Fit a first-conv weight to ``in_channels`` input channels.

    One channel: the sum over the RGB filters. Otherwise the filters are
    repeated and scaled by ``3 / in_channels`` to keep activations alike.

    Example:
        >>> adapt_input_conv(torch.ones(8, 3, 3, 3), 1).shape
        torch.Size([8, 1, 3, 3])
    """
    src_channels = weight.shape[1]
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // src_channels)
    weight = weight.repeat(1, repeats, 1, 1)[:, :in_channels]
    return weight * (src_channels / in_channels)


def load_pretrained(model: nn.Module, checkpoint: Union[str, Path],
                    prefix: Optional[str] = None) -> LoadReport:
    """Load ``checkpoint`` into ``model`` and log one summary line.

    Steps: resolve the file (download if it is a URL or scheme), read it
    safely, keep ``prefix``, convert keys from a recognised format, adapt
    what the model knows how to adapt (``model.adapt_state_dict``), check
    shapes, load, report.

    Raises:
        FileNotFoundError: missing file or unreachable URL.
        KeyError: ``prefix`` matches no key (the file's prefixes listed).
        ValueError: no key of the file fits the model, or a shape differs
            (the key and both shapes named), or the file is corrupt/unsafe.
    """
    path = resolve_checkpoint(checkpoint)
    state_dict = read_state_dict(path)
    if prefix is None:  # mmcls:// and index names imply theirs
        prefix = default_prefix(checkpoint)
    if prefix:
        state_dict = strip_prefix(state_dict, prefix, path)
    fitted, report = fit_state_dict(model, state_dict, path)
    model.load_state_dict(fitted, strict=False)
    level = logging.WARNING if (report.missing or report.unexpected) \
        else logging.INFO
    print_log(report.summary(type(model).__name__), logger='current',
              level=level)
    return report


def fit_state_dict(model: nn.Module, state_dict: StateDict, path
                   ) -> Tuple[StateDict, LoadReport]:
    """Convert, adapt and check ``state_dict`` against ``model``.

    Returns the tensors to load (the keys the model has) and the report.
    Shared by :func:`load_pretrained` and ``mmbackbone convert``.

    Raises:
        CheckpointError: no key fits, or a tensor's shape differs.
    """
    target = model.state_dict()
    source, state_dict = best_conversion(state_dict, model)
    matched = [k for k in state_dict if k in target]
    if not matched:
        raise CheckpointError(
            f'checkpoint {path}: none of its {len(state_dict)} keys match '
            f'{type(model).__name__} (file keys like '
            f'{list(state_dict)[:3]}, model keys like {list(target)[:3]}; '
            f'file prefixes: {_top_prefixes(state_dict)}). '
            f'{mismatch_hint(model, state_dict)}')
    adapted: List[str] = []
    adapt = getattr(model, 'adapt_state_dict', None)
    if adapt is not None:
        state_dict, adapted = adapt(state_dict)
    for key in matched:
        if state_dict[key].shape != target[key].shape:
            raise CheckpointError(
                f'checkpoint {path}: {key} has shape '
                f'{tuple(state_dict[key].shape)} in the file but '
                f'{tuple(target[key].shape)} in {type(model).__name__}; '
                f'the checkpoint is for another architecture or config')
    missing = [k for k in target if k not in state_dict
               and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state_dict if k not in target]
    report = LoadReport(Path(path), source, len(matched), missing,
                        unexpected, adapted)
    return {k: state_dict[k] for k in matched}, report


def _fits(model: nn.Module, state_dict: StateDict) -> bool:
    """At least half of the file's keys (after the best key conversion)
    are the model's, with its shapes."""
    if not state_dict:
        return False
    converted = best_conversion(state_dict, model)[1]
    same = fit_score(converted, model.state_dict())[0]
    return same > 0 and 2 * same >= len(converted)


def mismatch_hint(model: nn.Module, state_dict: StateDict) -> str:
    """What to do when no key of ``state_dict`` fits ``model``.

    * The keys under one prefix of the file fit the model (a classifier's
      file, the model a backbone): ``prefix=...``.
    * The whole file fits a part of the model (a backbone's file, the model
      a classifier): load it into that part, with ``init_cfg`` on the part
      or an ``override`` naming it.
    * Otherwise: a checkpoint of this architecture.
    """
    name = type(model).__name__
    prefixes = _top_prefixes(state_dict)
    by_size = sorted(prefixes, key=lambda p: -sum(
        k.startswith(p + '.') for k in state_dict))
    for prefix in by_size:
        inner = {k[len(prefix) + 1:]: v for k, v in state_dict.items()
                 if k.startswith(prefix + '.')}
        if _fits(model, inner):
            return (f'Its keys under {prefix!r} fit {name}: pass '
                    f'prefix={prefix!r} (e.g. init_cfg=dict('
                    f"type='Pretrained', checkpoint=..., prefix={prefix!r}))")
    parts = [(n, m) for n, m in model.named_children()
             if next(m.parameters(), None) is not None]
    parts.sort(key=lambda item: item[0] != 'backbone')
    for part, module in parts:
        if _fits(module, state_dict):
            return (f'It holds weights of {name}.{part} '
                    f'({type(module).__name__}), not of a whole {name}: '
                    f'load it into the {part}, with init_cfg=dict('
                    f"type='Pretrained', checkpoint=...) in the {part} "
                    f'config, or on {name} with init_cfg=dict(type='
                    f"'Normal', layer=[], override=dict(type='Pretrained', "
                    f"name={part!r}, checkpoint=...))")
    hint = 'Pass a checkpoint of this architecture'
    if prefixes:
        hint += (', or prefix=... naming the part of the file that holds '
                 f'{name}')
    return hint
