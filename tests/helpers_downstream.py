"""Shared by the downstream tests: mmdet / mmseg on mmcv-lite.

``mmdet.models`` and ``mmseg.models`` import ``mmcv.ops``, which loads the
compiled extension ``mmcv._ext`` that mmcv-lite does not ship.
:func:`install_mmcv_ops` installs ``mmbackbone.mmcv_ops`` in its place
before they are imported: NMS, RoIAlign, focal losses, deformable
convolution and attention run on PyTorch / torchvision, and any other
compiled op raises ``NotImplementedError`` naming it.
"""
import types

import torch


def install_mmcv_ops() -> types.ModuleType:
    """Install (once) and return ``mmcv._ext``; a compiled one (full mmcv)
    is left in place."""
    from mmbackbone.mmcv_ops import install
    return install()


def save_backbone_checkpoint(backbone_cfg: dict, path) -> dict:
    """Save a randomly initialised backbone of ours as an mmengine-style
    classifier checkpoint (``state_dict`` with ``backbone.`` keys)."""
    from mmbackbone import build_backbone
    model = build_backbone(backbone_cfg)
    model.init_weights()
    state = {f'backbone.{k}': v for k, v in model.state_dict().items()}
    torch.save({'state_dict': state, 'meta': {}}, str(path))
    return state
