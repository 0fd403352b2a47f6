"""Convert a checkpoint file (timm, torchvision, mmpretrain or ours) to a
model's keys, with a report of what was kept, renamed and left out.

``mmbackbone convert`` writes the result as ``.safetensors``.

Example:
    >>> import os, tempfile, torch
    >>> from mmbackbone import build_backbone
    >>> model = build_backbone(dict(type='ResNet', depth=18))
    >>> path = os.path.join(tempfile.mkdtemp(), 'r18.pth')
    >>> torch.save({'backbone.' + k: v
    ...             for k, v in model.state_dict().items()}, path)
    >>> state, report = convert_checkpoint(path, model)
    >>> len(state) == len(model.state_dict()), report['prefix']
    (True, 'backbone.')
"""
from typing import Any, Dict, List, Optional, Tuple

from torch import nn

from mmbackbone.checkpoint.convert import best_conversion, fit_score
from mmbackbone.checkpoint.io import CheckpointError, read_state_dict
from mmbackbone.checkpoint.loader import (abbreviate_keys, fit_state_dict,
                                         strip_prefix)

StateDict = Dict[str, Any]


def convert_checkpoint(src: str, model: nn.Module,
                       prefix: Optional[str] = None,
                       allow_missing: bool = False
                       ) -> Tuple[StateDict, Dict[str, Any]]:
    """Convert a checkpoint file to ``model``'s keys.

    Without ``prefix``, the file's keys are tried as they are and, when
    some start with ``backbone.``, with that prefix stripped; the choice
    whose best conversion fits ``model`` better wins.

    Args:
        src (str): the checkpoint file (``.pth``/``.pt``/``.bin``/
            ``.safetensors``), read safely.
        model (nn.Module): the model whose keys and shapes to fit.
        prefix (str, optional): keep only keys under this prefix and strip
            it (e.g. ``'backbone'``). Defaults to None.
        allow_missing (bool): return the state dict even when some of
            ``model``'s keys are not in the file. Defaults to False.

    Returns:
        tuple: the state dict to write and a report dict (``source``,
        ``prefix``, ``dropped`` (file keys not written; ``None`` when they
        cannot be told apart from renamed ones), ``missing``, ``adapted``,
        ``src_keys`` (tensors in the file)).

    Raises:
        ValueError: no key fits, a shape differs, or keys are missing
            (unless ``allow_missing``).

    Example:
        >>> import os, tempfile, torch
        >>> from mmbackbone import build_backbone
        >>> model = build_backbone(dict(type='ResNet', depth=18))
        >>> path = os.path.join(tempfile.mkdtemp(), 'r18.pth')
        >>> torch.save(model.state_dict(), path)
        >>> state, report = convert_checkpoint(path, model)
        >>> report['source'], report['dropped'], report['missing']
        ('mmbackbone', [], [])
    """
    state = read_state_dict(src)
    target = model.state_dict()
    candidates = []
    if prefix:
        candidates.append((prefix, strip_prefix(state, prefix, src)))
    else:
        candidates.append((None, state))
        if any(k.startswith('backbone.') for k in state):
            candidates.append(('backbone.',
                               strip_prefix(state, 'backbone.', src)))
    # the prefix whose best conversion fits the model best
    used_prefix, original = max(
        candidates,
        key=lambda c: fit_score(best_conversion(c[1], model)[1], target))
    written, load_report = fit_state_dict(model, original, src)
    missing = load_report.missing
    if missing and not allow_missing:
        raise CheckpointError(
            f'checkpoint {src}: {len(missing)} tensors of '
            f'{type(model).__name__} are missing from the file: '
            f'{abbreviate_keys(missing, limit=6)}; pass --allow-missing to write it '
            f'anyway')
    report = dict(source=load_report.source, prefix=used_prefix,
                  adapted=load_report.adapted,
                  missing=missing, src_keys=len(state),
                  dropped=_unused_keys(state, original, written,
                                       used_prefix))
    return written, report


def _unused_keys(state: StateDict, original: StateDict, written: StateDict,
                 prefix: Optional[str]) -> Optional[List[str]]:
    """File keys whose tensors were not written, in the file's spelling.

    Converters rename keys and pass tensors through, so a tensor is
    recognised by its storage. When that accounting does not add up
    (a converter built new tensors), ``None``.
    """
    def storage(tensor):
        return tensor.untyped_storage().data_ptr()

    head = prefix.rstrip('.') + '.' if prefix else ''
    outside = [k for k in state if not k.startswith(head)]
    used = {storage(t) for t in written.values()}
    unused = [head + k for k, t in original.items()
              if storage(t) not in used]
    if len(original) - len(unused) != len(written):
        return None
    return sorted(outside + unused)
