"""Safe checkpoint loading: resolve, read, convert, load, report.

Example:
    >>> import torch, tempfile, os
    >>> from mmbackbone import build_backbone
    >>> from mmbackbone.checkpoint import load_pretrained
    >>> from mmengine.logging import MMLogger  # the summary line is INFO:
    >>> _ = MMLogger.get_instance('example', log_level='WARNING')  # quiet
    >>> src = build_backbone(dict(type='ResNet', depth=18))
    >>> path = os.path.join(tempfile.mkdtemp(), 'r18.pth')
    >>> torch.save({'state_dict': {'backbone.' + k: v for k, v in
    ...             src.state_dict().items()}}, path)
    >>> dst = build_backbone(dict(type='ResNet', depth=18))
    >>> report = load_pretrained(dst, path, prefix='backbone')
    >>> report.num_loaded == len(dst.state_dict())
    True
"""
from .convert import register_converter
from .io import (CheckpointError, InertValue, UnsafeCheckpointError,
                 read_state_dict, weights_globals)
from .loader import LoadReport, load_pretrained
from .resolve import resolve_checkpoint

__all__ = ['load_pretrained', 'LoadReport', 'read_state_dict',
           'resolve_checkpoint', 'register_converter', 'CheckpointError',
           'UnsafeCheckpointError', 'InertValue', 'weights_globals']
