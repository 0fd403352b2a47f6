"""Reduced-precision inference for :func:`mmbackbone.optimize_for_inference`:
dtype names, the casts, the measured error bounds.

The precision follows autocast's rule, set once per module instead of per
call: convolutions, linear layers and ``nn.MultiheadAttention`` keep their
weights in the reduced dtype and cast their inputs to it; every other
module with its own floating state (norms, layer scales, BNs that could
not be folded) keeps it in float32 and casts its inputs to float32;
parameters a container uses directly (position embeddings, class tokens)
stay float32, so type promotion keeps a transformer's residual stream in
float32. Measured on the zoo (max relative error, random weights): ViT-B/16
feature maps 2.0e-2 when every tensor is bfloat16, 6.3e-3 this way; the
convolutional families are unchanged (their tensors between convs are
bfloat16 either way) and run as fast.

Only ``torch`` is imported here; nothing heavy is loaded at import.
"""
import itertools
import warnings
from typing import Any, Dict, List, Optional, Union

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves, tree_map

__all__ = ['resolve_dtype', 'feature_error', 'native_kernels',
           'cast_by_module', 'floating_dtypes', 'remove_hooks',
           'warn_if_slow', 'CastInputs', 'CastOutputs', 'ERROR_BOUNDS',
           'DTYPE_NAMES']

#: Every accepted spelling of the compute dtypes.
DTYPE_NAMES: Dict[str, torch.dtype] = {
    'fp32': torch.float32, 'float32': torch.float32,
    'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16,
    'fp16': torch.float16, 'float16': torch.float16,
}

#: Modules whose work runs in the reduced dtype: weights stored in it,
#: inputs cast to it (autocast's lower-precision list, by module).
LOW_PRECISION_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
                         nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
                         nn.MultiheadAttention)

#: The largest :func:`feature_error` of an optimised model against the
#: fp32 eager model, per compute dtype. ``tests/test_deploy.py`` checks
#: every zoo family against it (the smallest arch, random weights and BN
#: statistics); the worst measured were 1.6e-2 (bf16, timm's
#: MobileNetV3) and 3e-3 (fp16). bf16 keeps 8 significant bits, so each
#: rounding is up to 2**-9 = 0.2 % and the error grows with depth; fp16
#: keeps 11 bits but overflows above 65504.
ERROR_BOUNDS: Dict[torch.dtype, float] = {
    torch.float32: 1e-4,
    torch.bfloat16: 2e-2,
    torch.float16: 5e-3,
}


def resolve_dtype(dtype: Union[torch.dtype, str, None],
                  name: str = 'dtype', allow_none: bool = False
                  ) -> Optional[torch.dtype]:
    """The compute dtype named by ``dtype``: a ``torch.dtype`` or one of
    :data:`DTYPE_NAMES`.

    Args:
        dtype (torch.dtype | str | None): ``torch.float32``,
            ``torch.bfloat16``, ``torch.float16`` or their names
            ('fp32', 'float32', 'bf16', 'bfloat16', 'fp16', 'float16').
        name (str): the argument's name, for the error message.
        allow_none (bool): accept ``None`` (returned as is).

    Returns:
        torch.dtype | None: the dtype.

    Raises:
        ValueError: any other value; the message names it and the valid
            ones.

    Example:
        >>> resolve_dtype('bf16')
        torch.bfloat16
        >>> resolve_dtype('int8')  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: dtype='int8' is not a compute dtype; valid: ...
    """
    if dtype is None and allow_none:
        return None
    if isinstance(dtype, torch.dtype) and dtype in ERROR_BOUNDS:
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPE_NAMES:
        return DTYPE_NAMES[dtype.lower()]
    valid = ', '.join(str(d) for d in ERROR_BOUNDS)
    names = ', '.join(repr(n) for n in DTYPE_NAMES)
    none = ', or None' if allow_none else ''
    raise ValueError(f'{name}={dtype!r} is not a compute dtype; valid: '
                     f'{valid} or {names}{none}')


def feature_error(got: Any, want: Any) -> List[float]:
    """Relative error of each output: ``max |got - want| / max |want|``.

    The outputs (a tensor, or a tuple/list/dict of them) are compared leaf
    by leaf in float32; a ``want`` that is all zeros gives the absolute
    error.

    Args:
        got: the outputs to check (any floating dtype).
        want: the reference outputs (same structure and shapes).

    Returns:
        list[float]: one error per output tensor.

    Raises:
        ValueError: the structures or shapes differ.

    Example:
        >>> import torch
        >>> got = (torch.tensor([99., 202.]), torch.tensor([1., 0.]))
        >>> want = (torch.tensor([100., 200.]), torch.tensor([1., -1.]))
        >>> [round(e, 4) for e in feature_error(got, want)]
        [0.01, 1.0]
    """
    got_leaves = [t for t in tree_leaves(got) if isinstance(t, Tensor)]
    want_leaves = [t for t in tree_leaves(want) if isinstance(t, Tensor)]
    if len(got_leaves) != len(want_leaves):
        raise ValueError(f'{len(got_leaves)} outputs to compare with '
                         f'{len(want_leaves)} reference outputs')
    errors = []
    for g, w in zip(got_leaves, want_leaves):
        if g.shape != w.shape:
            raise ValueError(f'output shape {tuple(g.shape)} differs from '
                             f'the reference {tuple(w.shape)}')
        g, w = g.detach().float(), w.detach().float()
        scale = w.abs().max().item() if w.numel() else 0.0
        diff = (g - w).abs().max().item() if w.numel() else 0.0
        errors.append(diff / scale if scale > 0 else diff)
    return errors


class CastInputs:
    """Forward pre-hook: floating inputs to the compute dtype (and 4-D
    ones to channels-last), so callers keep passing float32 images."""

    def __init__(self, dtype: torch.dtype, channels_last: bool):
        self.dtype = dtype
        self.channels_last = channels_last

    def __call__(self, module: nn.Module, inputs: tuple) -> tuple:
        return tuple(self._cast(x) for x in inputs)

    def _cast(self, x: Any) -> Any:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            return x
        if self.channels_last and x.dim() == 4:
            return x.to(self.dtype, memory_format=torch.channels_last)
        return x.to(self.dtype)


class CastOutputs:
    """Forward hook: floating outputs back to ``dtype`` (the layout is
    kept)."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def __call__(self, module: nn.Module, inputs: tuple, output: Any) -> Any:
        return tree_map(
            lambda t: t.to(self.dtype) if isinstance(t, Tensor)
            and t.is_floating_point() else t, output)


def remove_hooks(model: nn.Module, kinds: tuple) -> None:
    """Drop the forward (pre-)hooks of ``model`` and its submodules that
    are functions in ``kinds`` or instances of the classes in ``kinds``
    (those a previous optimisation registered)."""

    def ours(hook) -> bool:
        return any(hook is k or (isinstance(k, type) and isinstance(hook, k))
                   for k in kinds)

    for module in model.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for key in [k for k, hook in hooks.items() if ours(hook)]:
                del hooks[key]
                for extra in ('_forward_pre_hooks_with_kwargs',
                              '_forward_hooks_with_kwargs',
                              '_forward_hooks_always_called'):
                    getattr(module, extra, {}).pop(key, None)


def _owns_floating_state(module: nn.Module) -> bool:
    return any(t.is_floating_point() for t in itertools.chain(
        module.parameters(recurse=False), module.buffers(recurse=False)))


def cast_by_module(model: nn.Module, dtype: torch.dtype) -> None:
    """Give a float32 model the precision rule of this module's docstring:
    :data:`LOW_PRECISION_MODULES` in ``dtype``, the rest float32."""
    for module in model.modules():
        if isinstance(module, LOW_PRECISION_MODULES):
            module.to(dtype)
            module.register_forward_pre_hook(CastInputs(dtype, False))
        elif _owns_floating_state(module) and not any(module.children()):
            module.register_forward_pre_hook(CastInputs(torch.float32,
                                                        False))


def floating_dtypes(model: nn.Module) -> set:
    """The dtypes of the floating parameters and buffers of ``model``."""
    return {t.dtype for t in list(model.parameters()) + list(model.buffers())
            if t.is_floating_point()}


def native_kernels(dtype: torch.dtype) -> bool:
    """Whether oneDNN has native kernels for ``dtype`` on this CPU
    (AVX512-BF16/AMX for bfloat16, AVX512-FP16/AMX-FP16 for float16).

    Example:
        >>> import torch
        >>> native_kernels(torch.float32)
        True
        >>> native_kernels(torch.bfloat16) in (True, False)
        True
    """
    if dtype == torch.float32:
        return True
    probe = {torch.bfloat16: '_is_mkldnn_bf16_supported',
             torch.float16: '_is_mkldnn_fp16_supported'}[dtype]
    try:
        return bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):  # a build without the probe
        return False


def warn_if_slow(model: nn.Module, dtype: torch.dtype) -> None:
    """Warn when ``dtype`` has no native kernels on the model's CPU.

    float16 on a CPU without AVX512-FP16/AMX-FP16 runs through
    conversions: on an AVX512-BF16 EPYC it measured 1.5-2x slower than
    float32.
    """
    on_cpu = any(t.device.type == 'cpu' for t in model.parameters())
    if on_cpu and not native_kernels(dtype):
        hint = (' (bfloat16 is the fast reduced precision on CPUs with '
                'AVX512-BF16 or AMX)' if dtype == torch.float16 else '')
        warnings.warn(f'dtype={dtype} on this CPU has no native oneDNN '
                      f'kernels and is likely slower than float32{hint}',
                      UserWarning, stacklevel=3)
