"""Make a backbone fast for inference: fold BN into convs, channels-last,
bfloat16/float16 weights (:mod:`mmbackbone.deploy_precision`), optional
``torch.compile``.

Which BatchNorm layers can be folded is found from the model itself, not
from names: one forward pass on a small input records which tensor each
conv produced and every operation that read it. A BN is
folded into a conv when, on every call, its input is exactly that conv's
output and nothing else (no residual add, no in-place activation, no
returned feature) reads that output. This covers ``nn.Sequential``
pairs, mmcv ``ConvModule`` (conv, norm), the ``conv1``/``bn1`` attribute
pairs of residual blocks and any other layout, in every family, and it
never folds a BN whose input is also used elsewhere (that would change
the features).

Only ``torch`` is imported here; nothing heavy is loaded at import.
"""
import copy
import itertools
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from mmbackbone.deploy_precision import (CastInputs, CastOutputs,
                                         cast_by_module, floating_dtypes,
                                         remove_hooks, resolve_dtype,
                                         warn_if_slow)

__all__ = ['optimize_for_inference', 'fuse_conv_bn', 'find_conv_bn_pairs']

#: Convs whose forward is exactly ``conv(x, weight, bias)``: folding
#: rewrites ``weight`` and ``bias``, so a conv that transforms its weight
#: in forward (weight standardisation, parametrizations) is left alone.
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: Tensor reads that look at metadata only; they do not consume values.
_METADATA_FUNCS = frozenset({'dim', 'size', 'numel', 'stride', 'nelement',
                             'ndimension', 'is_contiguous', 'element_size',
                             'get_device', 'is_floating_point',
                             'is_complex', 'storage_offset'})
_METADATA_ATTRS = frozenset({'shape', 'dtype', 'device', 'ndim',
                             'requires_grad', 'is_cuda', 'is_meta', 'layout',
                             'is_sparse', 'is_quantized', 'is_leaf',
                             'grad_fn', 'names', 'is_mkldnn'})


def _plain_forward(module: nn.Module, base: type) -> bool:
    """True when ``module`` runs ``base``'s own conv/BN computation."""
    cls = type(module)
    if cls.forward is not base.forward:
        # mmcv's Conv2d wrapper only adds an empty-batch shortcut.
        if not (cls.__module__.startswith('mmcv.cnn.bricks.wrappers')
                and issubclass(cls, base)):
            return False
    if getattr(cls, '_conv_forward', None) is not getattr(
            base, '_conv_forward', None):
        return False
    return not (module._forward_hooks or module._forward_pre_hooks
                or getattr(module, 'parametrizations', None))


def _is_plain_conv(module: nn.Module) -> bool:
    for base in _CONV_TYPES:
        if isinstance(module, base):
            return (_plain_forward(module, base)
                    and module.padding_mode == 'zeros'
                    and module.weight is not None)
    return False


def _is_foldable_bn(module: nn.Module) -> bool:
    """A BN whose forward only normalises (timm's ``BatchNormAct2d``, which
    also applies an activation, is not one)."""
    if not isinstance(module, _BatchNorm):
        return False
    if type(module).forward not in (_BatchNorm.forward,
                                    nn.SyncBatchNorm.forward):
        return False
    if module.training or module.running_mean is None \
            or module.running_var is None:
        return False
    return not (module._forward_hooks or module._forward_pre_hooks)


def _is_metadata(func: Any) -> bool:
    name = getattr(func, '__name__', '')
    if name == '__get__':
        owner = getattr(func, '__self__', None)
        return getattr(owner, '__name__', '') in _METADATA_ATTRS
    return name in _METADATA_FUNCS


class _UseTracker(TorchFunctionMode):
    """Records, during one forward, who reads every conv output."""

    def __init__(self):
        super().__init__()
        self.produced: Dict[int, Tuple[nn.Module, Tensor]] = {}
        self.escaped: set = set()
        self.bn_stack: List[Tuple[nn.Module, int]] = []
        self.bn_inputs: Dict[nn.Module, List[int]] = {}
        self.conv_outputs: Dict[nn.Module, List[int]] = {}
        self.keep_alive: List[Tensor] = []  # ids stay unique while tracing

    # module hooks --------------------------------------------------------
    def conv_hook(self, module, inputs, output):
        if isinstance(output, Tensor):
            self.produced[id(output)] = (module, output)
            self.conv_outputs.setdefault(module, []).append(id(output))

    def bn_pre_hook(self, module, inputs):
        x = inputs[0] if inputs else None
        key = id(x) if isinstance(x, Tensor) else -1
        if isinstance(x, Tensor):
            self.keep_alive.append(x)
        self.bn_inputs.setdefault(module, []).append(key)
        self.bn_stack.append((module, key))

    def bn_post_hook(self, module, inputs, output):
        self.bn_stack.pop()

    # every torch function call -------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.produced and not _is_metadata(func):
            inside = self.bn_stack[-1][1] if self.bn_stack else None
            for leaf in tree_leaves((args, kwargs)):
                if isinstance(leaf, Tensor) and id(leaf) in self.produced \
                        and id(leaf) != inside:
                    self.escaped.add(id(leaf))
        return func(*args, **kwargs)


def _default_input(model: nn.Module) -> Tensor:
    """A one-image input for the structure probe.

    ``model.in_channels`` channels (else the first conv's) at
    ``model.img_size`` (else 64x64: small, and still 2x2 after a stride
    of 32), on the device of the model's parameters.
    """
    channels = getattr(model, 'in_channels', None)
    if not isinstance(channels, int) or isinstance(channels, bool):
        first = next((m for m in model.modules()
                      if isinstance(m, _CONV_TYPES)), None)
        channels = first.in_channels if first is not None else 3
    size = getattr(model, 'img_size', None)
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    elif not (isinstance(size, Sequence) and len(size) == 2
              and all(isinstance(s, int) for s in size)):
        size = (64, 64)
    param = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = param.device if param is not None else 'cpu'
    dtype = param.dtype if param is not None and param.is_floating_point() \
        else torch.float32
    return torch.zeros(1, channels, *size, device=device, dtype=dtype)


def find_conv_bn_pairs(model: nn.Module,
                       example_input: Optional[Tensor] = None
                       ) -> List[Tuple[str, str]]:
    """Names of the (conv, BN) pairs whose BN can be folded.

    The model must be in eval mode (a BN in training mode normalises with
    batch statistics and cannot be folded).

    Args:
        model (nn.Module): the model to inspect (not changed).
        example_input (Tensor, optional): an input for the probe forward;
            by default one image of ``model.in_channels`` channels at
            ``model.img_size`` (else 64x64).

    Returns:
        list[tuple[str, str]]: ``(conv name, bn name)`` pairs.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8),
        ...                     nn.ReLU()).eval()
        >>> find_conv_bn_pairs(net)
        [('0', '1')]
    """
    names = {m: n for n, m in model.named_modules(remove_duplicate=False)}
    convs = [m for m in names if _is_plain_conv(m)]
    bns = [m for m in names if _is_foldable_bn(m)]
    if not convs or not bns:
        return []
    if example_input is None:
        example_input = _default_input(model)
    tracker = _UseTracker()
    handles = [c.register_forward_hook(tracker.conv_hook) for c in convs]
    for bn in bns:
        handles.append(bn.register_forward_pre_hook(tracker.bn_pre_hook))
        handles.append(bn.register_forward_hook(tracker.bn_post_hook))
    try:
        with torch.no_grad(), tracker:
            outputs = model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    for leaf in tree_leaves(outputs):
        if isinstance(leaf, Tensor):
            tracker.escaped.add(id(leaf))

    consumers: Dict[int, List[nn.Module]] = {}
    for bn, inputs in tracker.bn_inputs.items():
        for key in inputs:
            consumers.setdefault(key, []).append(bn)
    pairs, used_convs = [], set()
    for bn, inputs in tracker.bn_inputs.items():
        sources = {tracker.produced[k][0] if k in tracker.produced else None
                   for k in inputs}
        if len(sources) != 1 or None in sources:
            continue
        conv = sources.pop()
        outs = tracker.conv_outputs[conv]
        if any(k in tracker.escaped or consumers.get(k) != [bn]
               for k in outs):
            continue
        if conv in used_convs:
            continue
        if conv.out_channels != bn.num_features:
            continue
        used_convs.add(conv)
        pairs.append((names[conv], names[bn]))
    return pairs


def fuse_conv_bn(model: nn.Module, example_input: Optional[Tensor] = None
                 ) -> List[Tuple[str, str]]:
    """Fold every foldable BN into the conv before it, in place.

    The conv gets the folded weight and bias; the BN is replaced by
    ``nn.Identity`` wherever it is registered. The model must be in eval
    mode. See :func:`find_conv_bn_pairs` for what is folded.

    Returns:
        list[tuple[str, str]]: the ``(conv name, bn name)`` pairs folded.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).eval()
        >>> x = torch.rand(1, 3, 8, 8)
        >>> ref = net(x)
        >>> fuse_conv_bn(net)
        [('0', '1')]
        >>> type(net[1]).__name__, torch.allclose(net(x), ref, atol=1e-5)
        ('Identity', True)
    """
    pairs = find_conv_bn_pairs(model, example_input)
    modules = dict(model.named_modules(remove_duplicate=False))
    with torch.no_grad():
        for conv_name, bn_name in pairs:
            conv, bn = modules[conv_name], modules[bn_name]
            weight, bias = torch.nn.utils.fusion.fuse_conv_bn_weights(
                conv.weight, conv.bias, bn.running_mean, bn.running_var,
                bn.eps, bn.weight, bn.bias)
            conv.weight, conv.bias = weight, bias
            for parent in model.modules():
                for key, child in parent._modules.items():
                    if child is bn:
                        parent._modules[key] = nn.Identity()
    return pairs


def _channels_last_input(module: nn.Module, inputs: tuple) -> tuple:
    """Forward pre-hook: give 4-D inputs the channels-last layout."""
    return tuple(x.contiguous(memory_format=torch.channels_last)
                 if isinstance(x, Tensor) and x.dim() == 4 else x
                 for x in inputs)


class _WithFreezing:
    """Runs a compiled forward with inductor's ``freezing`` on: weights
    become constants, folded and prepacked for oneDNN (under no_grad or
    inference_mode only).

    ``torch.compile(options={'freezing': True})`` is not enough in torch
    2.14: the option reaches inductor, but dynamo reads the global flag
    while tracing to decide whether parameters become constants, so the
    flag is set around each call instead.
    """

    def __init__(self, forward):
        self.forward = forward

    def __call__(self, *args, **kwargs):
        from torch._inductor import config
        with config.patch(freezing=True):
            return self.forward(*args, **kwargs)


def optimize_for_inference(model: nn.Module,
                           channels_last: bool = True,
                           fuse: bool = True,
                           compile: Union[bool, dict] = False,
                           *,
                           dtype: Union[torch.dtype, str] = torch.float32,
                           output_dtype: Union[torch.dtype, str, None] = (
                               torch.float32),
                           inplace: bool = False,
                           example_input: Optional[Tensor] = None
                           ) -> nn.Module:
    """Return the model ready for fast inference.

    The model is put in eval mode; then, as asked, every foldable BN is
    folded into its conv (see :func:`find_conv_bn_pairs`), the model is
    cast for ``dtype`` (below), 4-D weights and inputs take the channels-last
    memory format (the fast layout of oneDNN convolutions on CPU and of
    cuDNN with tensor cores), and the model is wrapped by
    ``torch.compile``. In float32, features equal the original model's up
    to float rounding (about 1e-6 relative).

    Reduced precision (``dtype`` bfloat16 or float16): BN is folded in
    float32 first; then convolutions, linear layers and
    ``nn.MultiheadAttention`` take their weights in ``dtype`` and cast
    their inputs to it, while norms and every other module with its own
    parameters stay float32 and cast their inputs to float32 (autocast's
    rule, fixed per module: see :mod:`mmbackbone.deploy_precision`). A
    forward pre-hook casts the model's floating inputs to ``dtype``, so
    callers keep passing float32 images; a forward hook casts the outputs
    to ``output_dtype`` (float32 by default, so code after the backbone is
    unchanged; ``None`` returns them as computed: ``dtype`` after a conv,
    float32 after a norm). The error against the float32 model,
    ``max |a - b| / max |b|`` per output
    (:func:`mmbackbone.deploy_precision.feature_error`), stays within
    :data:`~mmbackbone.deploy_precision.ERROR_BOUNDS` (2e-2 for bfloat16,
    5e-3 for float16) for every zoo family. bfloat16 is the fast choice on
    CPUs with AVX512-BF16 or AMX and on recent GPUs; float16 is for GPUs
    (on a CPU without native fp16 kernels it warns: it ran 1.5-2x slower
    than float32), and it overflows where an activation exceeds 65504.

    By default the original model is left untouched and a deep copy is
    optimised (folded BNs cannot be trained again, so changing the
    caller's model in place would be a surprise); ``inplace=True`` skips
    the copy to save memory.

    Args:
        model (nn.Module): a backbone (or any module).
        channels_last (bool): convert 4-D parameters and buffers, and
            4-D inputs (via a forward pre-hook), to channels-last.
        fuse (bool): fold BatchNorm into the preceding convs.
        compile (bool | dict): wrap the result with ``torch.compile``;
            a dict gives its keyword arguments (``dict(mode='max-autotune')``).
            With ``dtype`` other than float32, ``True`` also turns on
            inductor's freezing (weights become constants, prepacked for
            oneDNN); the result is then for inference only.
        dtype (torch.dtype | str): the compute dtype: ``torch.float32``
            (default), ``torch.bfloat16`` or ``torch.float16``, or one of
            'fp32', 'float32', 'bf16', 'bfloat16', 'fp16', 'float16'.
        output_dtype (torch.dtype | str | None): the dtype the outputs are
            cast to when ``dtype`` is not float32 (default float32);
            ``None`` returns them as computed.
        inplace (bool): optimise ``model`` itself instead of a copy.
        example_input (Tensor, optional): input of the structure probe,
            one forward pass (defaults to one image at ``model.img_size``,
            else 64x64).

    Returns:
        nn.Module: the optimised model in eval mode (a
        ``torch._dynamo`` wrapper when ``compile`` is set; attributes such
        as ``out_channels`` still resolve through it).

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``compile`` is
            neither a bool nor a dict.
        ValueError: ``dtype`` or ``output_dtype`` is not one of the
            accepted dtypes or names.

    Example:
        >>> import torch
        >>> from mmbackbone import build_backbone, optimize_for_inference
        >>> model = build_backbone(dict(type='ResNet', depth=18)).eval()
        >>> fast = optimize_for_inference(model)
        >>> x = torch.rand(1, 3, 64, 64)
        >>> with torch.no_grad():
        ...     diff = (fast(x)[0] - model(x)[0]).abs().max().item()
        >>> print(tuple(fast(x)[0].shape), diff < 1e-4)
        (1, 512, 2, 2) True
        >>> sum(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
        0
        >>> half = optimize_for_inference(model, dtype='bf16')
        >>> with torch.no_grad():
        ...     out, ref = half(x)[0], model(x)[0]
        >>> err = ((out - ref).abs().max() / ref.abs().max()).item()
        >>> print(half.conv1.weight.dtype, out.dtype, err < 2e-2)
        torch.bfloat16 torch.float32 True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f'model must be an nn.Module; got '
                        f'{type(model).__name__}')
    if not isinstance(compile, (bool, dict)):
        raise TypeError(f'compile={compile!r} must be True, False or a dict '
                        f'of torch.compile keyword arguments')
    dtype = resolve_dtype(dtype)
    output_dtype = resolve_dtype(output_dtype, 'output_dtype',
                                 allow_none=True)
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    # float32 models optimised in float32 take exactly the original path
    cast = dtype != torch.float32 or bool(floating_dtypes(model)
                                          - {torch.float32})
    if cast:  # fold in float32, then cast the folded weights
        warn_if_slow(model, dtype)
        remove_hooks(model, (_channels_last_input, CastInputs, CastOutputs))
        model.float()
        if example_input is not None and example_input.is_floating_point():
            example_input = example_input.float()
    if fuse:
        fuse_conv_bn(model, example_input)
    if cast and dtype != torch.float32:
        cast_by_module(model, dtype)
    if channels_last:
        with torch.no_grad():
            for tensor in itertools.chain(model.parameters(),
                                          model.buffers()):
                if tensor.dim() == 4:
                    tensor.data = tensor.data.contiguous(
                        memory_format=torch.channels_last)
    if cast:
        model.register_forward_pre_hook(CastInputs(dtype, channels_last))
        if output_dtype is not None and output_dtype != dtype:
            model.register_forward_hook(CastOutputs(output_dtype))
    elif channels_last and \
            _channels_last_input not in model._forward_pre_hooks.values():
        model.register_forward_pre_hook(_channels_last_input)
    if compile is not False:  # True, or a dict (an empty one included)
        options = compile if isinstance(compile, dict) else {}
        model = torch.compile(model, **options)
        if compile is True and dtype != torch.float32:
            model.forward = _WithFreezing(model.forward)
    return model
