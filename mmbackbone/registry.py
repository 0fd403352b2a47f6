"""The scoped registries of mmbackbone.

``MODELS`` has scope ``mmbackbone`` and is a child of mmengine's root
``MODELS``, so mmdet / mmseg configs reach our classes as
``type='mmbackbone.ResNet'``. ``import mmbackbone`` registers the
backbones, necks, heads and losses; the types in
:data:`LAZY_MODEL_MODULES` register on the first lookup of any name in the
scope (mmengine then imports the registry's locations). The other
registries exist so that mmengine's Runner, run with
``default_scope='mmbackbone'``, finds every kind of component in our scope
(falling back to mmengine's own).
"""
from mmengine import registry as root
from mmengine.registry import Registry


def _child(name: str, parent: Registry, *locations: str) -> Registry:
    return Registry(name, parent=parent, scope='mmbackbone',
                    locations=list(locations))


#: Types that are mmengine models (``BaseModel``, ``ImgDataPreprocessor``)
#: and their modules: importing one loads ``mmengine.model``, whose
#: optimizers and distributed wrappers load ``torch.distributed.fsdp`` and
#: sympy (about 1 s), so ``import mmbackbone`` leaves them to the first
#: lookup (they are locations of ``MODELS``) or attribute access
#: (``mmbackbone.models.ImageClassifier``).
LAZY_MODEL_MODULES = {
    'ImageClassifier': 'mmbackbone.models.classifiers',
    'ClsDataPreprocessor': 'mmbackbone.models.data_preprocessor',
}

MODELS = _child('model', root.MODELS, 'mmbackbone.models',
                *LAZY_MODEL_MODULES.values())
DATASETS = _child('dataset', root.DATASETS, 'mmbackbone.datasets')
TRANSFORMS = _child('transform', root.TRANSFORMS, 'mmbackbone.datasets')
METRICS = _child('metric', root.METRICS, 'mmbackbone.evaluation')
HOOKS = _child('hook', root.HOOKS, 'mmbackbone.engine')

RUNNERS = _child('runner', root.RUNNERS, 'mmbackbone.engine.runner')
# Runner components we do not add to, but that must resolve in our scope.
RUNNER_CONSTRUCTORS = _child('runner constructor', root.RUNNER_CONSTRUCTORS)
LOOPS = _child('loop', root.LOOPS)
DATA_SAMPLERS = _child('data sampler', root.DATA_SAMPLERS)
OPTIMIZERS = _child('optimizer', root.OPTIMIZERS)
OPTIM_WRAPPERS = _child('optim_wrapper', root.OPTIM_WRAPPERS,
                        'mmbackbone.engine.optim')
OPTIM_WRAPPER_CONSTRUCTORS = _child('optimizer wrapper constructor',
                                    root.OPTIM_WRAPPER_CONSTRUCTORS,
                                    'mmbackbone.engine.optim')
PARAM_SCHEDULERS = _child('parameter scheduler', root.PARAM_SCHEDULERS)
EVALUATOR = _child('evaluator', root.EVALUATOR)
VISUALIZERS = _child('visualizer', root.VISUALIZERS)
VISBACKENDS = _child('vis_backend', root.VISBACKENDS)
LOG_PROCESSORS = _child('log_processor', root.LOG_PROCESSORS)
WEIGHT_INITIALIZERS = _child('weight initializer', root.WEIGHT_INITIALIZERS)

__all__ = ['MODELS', 'DATASETS', 'TRANSFORMS', 'METRICS', 'HOOKS', 'RUNNERS',
           'RUNNER_CONSTRUCTORS', 'LOOPS', 'DATA_SAMPLERS', 'OPTIMIZERS',
           'OPTIM_WRAPPERS', 'OPTIM_WRAPPER_CONSTRUCTORS', 'PARAM_SCHEDULERS',
           'EVALUATOR', 'VISUALIZERS', 'VISBACKENDS', 'LOG_PROCESSORS',
           'WEIGHT_INITIALIZERS']
