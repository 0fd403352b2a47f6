"""mmcv's compiled ops on stock PyTorch and torchvision (opt-in).

mmdet and mmseg import ``mmcv.ops``, whose wrappers load the compiled
extension ``mmcv._ext``; mmcv-lite ships none, so detectors could not run
NMS, RoI heads, deformable convolution or deformable attention. Importing
this package installs, once, a module ``mmcv._ext`` whose functions do the
same work with torchvision ops and PyTorch, on CPU and CUDA, with the
signatures and in-place output conventions mmcv's wrappers expect:

* ``nms``, ``softnms``, ``nms_match``
* ``roi_align_forward`` / ``_backward`` (average and max pooling),
  ``roi_pool_forward`` / ``_backward``
* ``sigmoid_focal_loss_*`` and ``softmax_focal_loss_*``
* ``deform_conv_*`` and ``modulated_deform_conv_*`` (DCN v1 / v2)
* ``ms_deform_attn_forward`` / ``_backward`` (Deformable DETR, DINO)

Every other extension function raises ``NotImplementedError`` naming its op
and the models that need it. Nothing happens when a compiled ``mmcv._ext``
(full mmcv) is importable. ``import mmbackbone`` does not import this
package; a config opts in with::

    custom_imports = dict(imports=['mmbackbone', 'mmbackbone.mmcv_ops'])

Import it before mmdet / mmseg models are built. If
``mmcv.cnn.bricks.transformer`` was imported earlier (it looks up
``MultiScaleDeformableAttention`` in ``mmcv.ops`` once, at import),
:func:`install` completes that lookup and the registration.

Example:
    >>> import torch, mmbackbone.mmcv_ops
    >>> from mmcv.ops import nms
    >>> boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]])
    >>> dets, keep = nms(boxes, torch.tensor([0.9, 0.8]), iou_threshold=0.5)
    >>> keep
    tensor([0])
"""
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types

from . import deform_conv, focal_loss, info, ms_deform_attn, nms, roi_align
from . import roi_pool
from .unsupported import unsupported

EXT_NAME = 'mmcv._ext'
_FUNCTIONS = {name: getattr(module, name) for module, names in (
    (nms, ('nms', 'softnms', 'nms_match')),
    (roi_align, ('roi_align_forward', 'roi_align_backward')),
    (roi_pool, ('roi_pool_forward', 'roi_pool_backward')),
    (focal_loss, ('sigmoid_focal_loss_forward', 'sigmoid_focal_loss_backward',
                  'softmax_focal_loss_forward',
                  'softmax_focal_loss_backward')),
    (deform_conv, ('deform_conv_forward', 'deform_conv_backward_input',
                   'deform_conv_backward_parameters',
                   'modulated_deform_conv_forward',
                   'modulated_deform_conv_backward')),
    (ms_deform_attn, ('ms_deform_attn_forward', 'ms_deform_attn_backward')),
    (info, ('get_compiler_version', 'get_compiling_cuda_version')),
) for name in names}

PROVIDED_OPS = tuple(_FUNCTIONS)


def _compiled_ext_path():
    """Path of a compiled ``mmcv._ext`` next to mmcv, found without
    importing mmcv; None when there is none."""
    spec = importlib.util.find_spec('mmcv')
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, '_ext' + suffix)
            if os.path.exists(path):
                return path
    return None


def _ext_getattr(name: str):
    if name.startswith('__') and name.endswith('__'):
        raise AttributeError(name)
    return unsupported(name)


def _build_module() -> types.ModuleType:
    module = types.ModuleType(EXT_NAME, __doc__)
    module.__dict__.update(_FUNCTIONS)
    module.__getattr__ = _ext_getattr
    module.__mmbackbone_mmcv_ops__ = True
    # a spec without a loader: importlib.util.find_spec('mmcv._ext') works,
    # while mmengine's mmcv_full_available() (pkgutil.find_loader) stays
    # False, so the Runner does not swap in mmcv's compiled SyncBN
    module.__spec__ = importlib.machinery.ModuleSpec(EXT_NAME, None)
    return module


def _complete_deformable_attention_lookup() -> None:
    transformer = sys.modules.get('mmcv.cnn.bricks.transformer')
    if transformer is None or hasattr(transformer,
                                      'MultiScaleDeformableAttention'):
        return
    # importing it registers the class in mmengine's MODELS registry, which
    # mmcv's and mmdet's registries look up
    from mmcv.ops.multi_scale_deform_attn import \
        MultiScaleDeformableAttention
    transformer.MultiScaleDeformableAttention = MultiScaleDeformableAttention


def install() -> types.ModuleType:
    """Install ``mmcv._ext`` (once) and return it.

    An ``mmcv._ext`` already in ``sys.modules``, or a compiled one that can
    be imported, is returned unchanged.

    Example:
        >>> import sys
        >>> ext = install()
        >>> install() is ext is sys.modules['mmcv._ext']
        True
    """
    module = sys.modules.get(EXT_NAME)
    if module is None:
        if _compiled_ext_path() is not None:
            module = importlib.import_module(EXT_NAME)
        else:
            module = sys.modules.setdefault(EXT_NAME, _build_module())
    _complete_deformable_attention_lookup()
    return module


install()

__all__ = ['install', 'PROVIDED_OPS']
