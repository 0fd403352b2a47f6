"""Checkpoint names users copy from mmcls / mmpretrain docs and configs.

Two explicit maps to entries of the weights index (data, no guessing):

* :data:`MMCLS_NAMES`: ``mmcls://NAME``. mmengine's ``mmcls://`` table
  (``mmengine/hub/mmcls.json``, 57 names) where an index entry holds the
  same file, plus the short names of the mmcls backbone tutorial's mmdet
  and mmseg configs (``cspresnext50``, ``regnet-4g``), which that table
  lacks. The other names of mmengine's table (VGG, Swin, ...: types this
  library does not build) still resolve through mmengine's URL.
* :data:`MMPRETRAIN_NAMES`: mmpretrain's model names (its metafiles,
  ``mmpretrain.get_model(NAME)``), accepted wherever an index name is
  (``mmbackbone://NAME``, ``pretrained=NAME``).

Example:
    >>> MMCLS_NAMES['regnet-4g']
    'regnetx_4.0gf.mmpretrain_in1k'
    >>> MMPRETRAIN_NAMES['resnet50_8xb32_in1k']
    'resnet50.mmpretrain_in1k'
"""
from typing import Dict

#: ``mmcls://NAME`` -> weights index entry.
MMCLS_NAMES: Dict[str, str] = {
    # mmengine's table: the same URL as the index entry
    'resnet18': 'resnet18.mmpretrain_in1k',
    'resnet34': 'resnet34.mmpretrain_in1k',
    'resnet50': 'resnet50.mmpretrain_in1k',
    'resnet101': 'resnet101.mmpretrain_in1k',
    'resnet152': 'resnet152.mmpretrain_in1k',
    'resnet50_v1d': 'resnetv1d50.mmpretrain_in1k',
    'resnet101_v1d': 'resnetv1d101.mmpretrain_in1k',
    'resnet152_v1d': 'resnetv1d152.mmpretrain_in1k',
    'vit_base_p16': 'vit-base-p16.mmpretrain_in21k_ft_in1k_384',
    'vit_base_p32': 'vit-base-p32.mmpretrain_in21k_ft_in1k_384',
    'vit_large_p16': 'vit-large-p16.mmpretrain_in21k_ft_in1k_384',
    # the mmcls backbone tutorial's configs (not in mmengine's table)
    'cspresnext50': 'cspresnext50.mmpretrain_in1k',  # its mmdet YOLOX config
    'regnet-4g': 'regnetx_4.0gf.mmpretrain_in1k',  # its mmseg UPerNet config
}

#: mmpretrain model name -> weights index entry.
MMPRETRAIN_NAMES: Dict[str, str] = {
    'resnet18_8xb32_in1k': 'resnet18.mmpretrain_in1k',
    'resnet34_8xb32_in1k': 'resnet34.mmpretrain_in1k',
    'resnet50_8xb32_in1k': 'resnet50.mmpretrain_in1k',
    'resnet101_8xb32_in1k': 'resnet101.mmpretrain_in1k',
    'resnet152_8xb32_in1k': 'resnet152.mmpretrain_in1k',
    'resnet50_8xb256-rsb-a1-600e_in1k': 'resnet50.mmpretrain_rsb_a1_in1k',
    'resnetv1c50_8xb32_in1k': 'resnetv1c50.mmpretrain_in1k',
    'resnetv1d50_8xb32_in1k': 'resnetv1d50.mmpretrain_in1k',
    'resnetv1d101_8xb32_in1k': 'resnetv1d101.mmpretrain_in1k',
    'resnetv1d152_8xb32_in1k': 'resnetv1d152.mmpretrain_in1k',
    'vit-base-p16_in21k-pre_3rdparty_in1k-384px':
    'vit-base-p16.mmpretrain_in21k_ft_in1k_384',
    'vit-base-p32_in21k-pre_3rdparty_in1k-384px':
    'vit-base-p32.mmpretrain_in21k_ft_in1k_384',
    'vit-large-p16_in21k-pre_3rdparty_in1k-384px':
    'vit-large-p16.mmpretrain_in21k_ft_in1k_384',
}
