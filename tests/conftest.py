"""Session set-up shared by every test module.

mmdet / mmseg import ``mmcv.ops``, which needs the compiled ``mmcv._ext``
that mmcv-lite lacks; ``mmbackbone.mmcv_ops`` provides one on PyTorch /
torchvision. It must be in place before anything imports
``mmcv.cnn.bricks.transformer`` (mmpretrain does, at import): that module
looks up ``MultiScaleDeformableAttention`` once, and mmdet imports the
name. So it is installed here, before any test module loads, whatever
order pytest (or a pytest-xdist worker) collects modules in.
"""
from helpers_downstream import install_mmcv_ops

install_mmcv_ops()
