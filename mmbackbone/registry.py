"""The scoped registries of mmbackbone.

``MODELS`` has scope ``mmbackbone`` and is a child of mmengine's root
``MODELS``, so mmdet / mmseg configs reach our classes as
``type='mmbackbone.ResNet'``. Building imports ``mmbackbone.models`` lazily.
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmbackbone',
                  locations=['mmbackbone.models'])
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='mmbackbone',
                    locations=['mmbackbone.datasets'])
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS,
                      scope='mmbackbone', locations=['mmbackbone.datasets'])
METRICS = Registry('metric', parent=MMENGINE_METRICS, scope='mmbackbone',
                   locations=['mmbackbone.evaluation'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='mmbackbone',
                 locations=['mmbackbone.engine'])

__all__ = ['MODELS', 'DATASETS', 'TRANSFORMS', 'METRICS', 'HOOKS']
