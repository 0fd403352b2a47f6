"""Session set-up shared by every test module.

mmdet / mmseg import ``mmcv.ops``, which needs the compiled ``mmcv._ext``
that mmcv-lite lacks. Their tests use a stand-in whose every function
raises. It must be in place before anything imports
``mmcv.cnn.bricks.transformer`` (mmpretrain does, at import): that module
decides once whether ``MultiScaleDeformableAttention`` exists, and mmdet
imports the name. So it is installed here, before any test module loads,
whatever order pytest (or a pytest-xdist worker) collects modules in.
"""
from helpers_downstream import install_mmcv_ext_standin

install_mmcv_ext_standin()
