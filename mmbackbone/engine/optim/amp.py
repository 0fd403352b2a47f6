"""Mixed-precision training on a GPU or on the CPU: an optim wrapper.

mmengine's ``AmpOptimWrapper`` refuses to be built without an accelerator
(CUDA, NPU, MLU or MUSA). :class:`AmpOptimWrapper` here is that class
where it works, and adds the CPU:

* With an accelerator it is mmengine's wrapper unchanged: autocast to
  ``dtype`` (None: float16 on CUDA) with a ``GradScaler`` (``loss_scale``).
* On the CPU the forward pass runs under ``torch.autocast('cpu',
  dtype=torch.bfloat16)``. bfloat16 keeps float32's exponent range, so
  gradients do not underflow and no loss scaling is done. float16 is
  refused on the CPU. Parameters, gradients and optimizer state stay
  float32.

Checkpoints keep mmengine's format (the optimizer's state dict, plus
``'loss_scaler'`` where a scaler runs), so a run resumes across the two:
a CPU checkpoint has no ``'loss_scaler'`` (a GPU run starts a new scale),
and a GPU checkpoint's ``'loss_scaler'`` is dropped on the CPU.

It is registered in mmbackbone's scope, so ``type='AmpOptimWrapper'`` in
our configs (``default_scope='mmbackbone'``) and
``type='mmbackbone.AmpOptimWrapper'`` in mmdet / mmseg configs build it::

    optim_wrapper = dict(
        type='mmbackbone.AmpOptimWrapper', dtype='bfloat16',
        optimizer=dict(type='SGD', lr=0.1, momentum=0.9))
"""
import logging
from contextlib import contextmanager
from typing import Optional, Union

import torch
from mmengine.device import get_device
from mmengine.logging import print_log
from mmengine.optim import AmpOptimWrapper as MMEngineAmpOptimWrapper
from mmengine.optim import OptimWrapper
from torch import nn

from mmbackbone.registry import OPTIM_WRAPPERS

#: Devices on which mmengine's own wrapper runs.
ACCELERATORS = ('cuda', 'npu', 'mlu', 'musa')
#: ``dtype`` values accepted on the CPU (None means bfloat16).
CPU_DTYPES = ('bfloat16', torch.bfloat16, None)


def cpu_autocast_dtype(dtype: Union[str, torch.dtype, None]) -> torch.dtype:
    """The autocast type of a CPU run for the wrapper's ``dtype``.

    Args:
        dtype: ``'bfloat16'``, ``torch.bfloat16`` or None (bfloat16).

    Returns:
        ``torch.bfloat16``.

    Raises:
        ValueError: for any other value, float16 included.

    Example:
        >>> cpu_autocast_dtype(None)
        torch.bfloat16
        >>> cpu_autocast_dtype('float16')
        Traceback (most recent call last):
        ...
        ValueError: AmpOptimWrapper(dtype='float16') on the CPU: ...bfloat16...
    """
    if any(dtype is valid or (isinstance(dtype, str) and dtype == valid)
           for valid in CPU_DTYPES):
        return torch.bfloat16
    raise ValueError(
        f'AmpOptimWrapper(dtype={dtype!r}) on the CPU: mixed precision on '
        f"the CPU is bfloat16 (dtype='bfloat16' or None); float16 needs a "
        f'loss scaler and a GPU')


@OPTIM_WRAPPERS.register_module(name='AmpOptimWrapper')
class AmpOptimWrapper(MMEngineAmpOptimWrapper):
    """mmengine's ``AmpOptimWrapper`` that also trains on the CPU (bfloat16).

    Args:
        loss_scale (str, float or dict): the ``GradScaler``'s settings with
            an accelerator (mmengine's meaning). Unused on the CPU; a value
            other than the default ``'dynamic'`` is logged as ignored.
        dtype (str, torch.dtype or None): the autocast type. With an
            accelerator any of mmengine's (None: float16 on CUDA); on the
            CPU ``'bfloat16'`` or None, anything else is a ``ValueError``.
        use_fsdp (bool): FSDP's sharded scaler (accelerators only).
        **kwargs: ``optimizer``, ``accumulative_counts``, ``clip_grad``
            (:class:`~mmengine.optim.OptimWrapper`'s arguments).

    Attributes:
        device_type (str): ``'cpu'`` or the accelerator (mmengine's
            ``get_device()`` when the wrapper was built).

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(4, 2)
        >>> wrapper = AmpOptimWrapper(
        ...     optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
        >>> wrapper.device_type, wrapper.cast_dtype
        ('cpu', torch.bfloat16)
        >>> with wrapper.optim_context(model):
        ...     out = model(torch.ones(3, 4))
        >>> out.dtype, model.weight.dtype
        (torch.bfloat16, torch.float32)
        >>> wrapper.update_params(out.float().sum())
        >>> 'loss_scaler' in wrapper.state_dict()
        False
    """

    def __init__(self, loss_scale: Union[str, float, dict] = 'dynamic',
                 dtype: Union[str, torch.dtype, None] = None,
                 use_fsdp: bool = False, **kwargs):
        self.device_type = get_device()
        if self.device_type in ACCELERATORS:
            super().__init__(loss_scale=loss_scale, dtype=dtype,
                             use_fsdp=use_fsdp, **kwargs)
            return
        if self.device_type != 'cpu':
            raise ValueError(
                f'AmpOptimWrapper: mixed precision on device '
                f'{self.device_type!r} is not supported; it trains on '
                f'{", ".join(ACCELERATORS)} or on the CPU (bfloat16)')
        cast_dtype = cpu_autocast_dtype(dtype)
        if use_fsdp:
            raise ValueError('AmpOptimWrapper(use_fsdp=True) on the CPU: '
                             "FSDP's sharded loss scaler needs a GPU; set "
                             'use_fsdp=False')
        if loss_scale != 'dynamic':
            print_log(f'AmpOptimWrapper: loss_scale={loss_scale!r} is '
                      f'ignored on the CPU (bfloat16 needs no loss scaling)',
                      logger='current', level=logging.WARNING)
        # mmengine's __init__ asserts an accelerator: skip to its base
        OptimWrapper.__init__(self, **kwargs)
        self._scale_update_param = None
        self.cast_dtype = cast_dtype
        # A disabled scaler: mmengine's backward() and step() call it, and
        # disabled it hands the loss and the step through unchanged.
        self.loss_scaler = torch.amp.GradScaler('cpu', enabled=False)

    @property
    def scales_loss(self) -> bool:
        """Whether a ``GradScaler`` scales the loss (accelerators only)."""
        return self.loss_scaler.is_enabled()

    def state_dict(self) -> dict:
        """The optimizer's state dict, with ``'loss_scaler'`` when a scaler
        runs (mmengine's format)."""
        if self.scales_loss:
            return super().state_dict()
        return OptimWrapper.state_dict(self)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load mmengine's format; without a scaler a saved
        ``'loss_scaler'`` (from a GPU run) is dropped."""
        if not self.scales_loss and 'loss_scaler' in state_dict:
            state_dict = dict(state_dict)
            scale = state_dict.pop('loss_scaler').get('scale')
            print_log(f'AmpOptimWrapper: the checkpoint\'s loss scale '
                      f'({scale}) is not used on the CPU (bfloat16 needs no '
                      f'loss scaling)', logger='current', level=logging.INFO)
        super().load_state_dict(state_dict)

    @contextmanager
    def optim_context(self, model: nn.Module):
        """mmengine's context (gradient accumulation), with autocast on
        the wrapper's device."""
        if self.device_type != 'cpu':
            with super().optim_context(model):
                yield
            return
        with OptimWrapper.optim_context(self, model), \
                torch.autocast('cpu', dtype=self.cast_dtype):
            yield


def amp_summary(wrapper: Optional[OptimWrapper]) -> str:
    """One line on a wrapper's precision, for logs.

    Example:
        >>> import torch
        >>> w = AmpOptimWrapper(optimizer=torch.optim.SGD(
        ...     torch.nn.Linear(2, 2).parameters(), lr=0.1))
        >>> amp_summary(w)
        'mixed precision: bfloat16 autocast on cpu, no loss scaling'
        >>> amp_summary(None)
        'full precision (float32)'
    """
    if not isinstance(wrapper, MMEngineAmpOptimWrapper):
        return 'full precision (float32)'
    dtype = (str(wrapper.cast_dtype).replace('torch.', '')
             if wrapper.cast_dtype is not None else 'the default type')
    device = getattr(wrapper, 'device_type', get_device())
    scaling = ('loss scaling' if wrapper.loss_scaler.is_enabled() else
               'no loss scaling')
    return f'mixed precision: {dtype} autocast on {device}, {scaling}'
