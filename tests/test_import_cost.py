"""Start-up hygiene: ``import mmbackbone`` stays light, registers every
type (the mmengine model types on first lookup), and building a backbone
loads neither ``mmengine.model`` nor anything it pulls in, and
initialises each weight once."""
import collections
import json
import subprocess
import sys

import pytest
import torch
from mmengine.model import BaseModule as MMEngineBaseModule
from torch import nn
from torch.nn import init

import mmbackbone
from mmbackbone import build_backbone
from mmbackbone.models import BaseBackbone
from mmbackbone.registry import LAZY_MODEL_MODULES
from mmbackbone.utils import BaseModule

HEAVY = ('timm', 'torchvision', 'onnx', 'onnxruntime', 'mmpretrain',
         'mmdet', 'mmseg')

#: What ``mmengine.model`` loads (its optimizers and distributed
#: wrappers): about 1 s of a cold start, none of it needed to build.
MMENGINE_MODEL = ('mmengine.model', 'mmengine.optim',
                  'torch.distributed.fsdp', 'torch.distributed.tensor',
                  'sympy')
#: The registries' lazy locations and what they load (OpenCV, PIL).
LOCATIONS = ('mmbackbone.engine', 'mmbackbone.datasets',
             'mmbackbone.evaluation', 'mmbackbone.models.classifiers',
             'mmbackbone.models.data_preprocessor', 'cv2', 'PIL')


def run_python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line."""
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_pulls_in_no_heavy_package():
    loaded = run_python(
        'import json, sys, mmbackbone\n'
        'from mmbackbone import optimize_for_inference, build_backbone\n'
        f'print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))')
    assert loaded == []


def test_building_resnet_and_optimizing_pull_in_nothing_heavy():
    loaded = run_python(
        'import json, sys, torch, mmbackbone\n'
        "m = mmbackbone.build_backbone(dict(type='ResNet', depth=18))\n"
        'mmbackbone.optimize_for_inference(m)\n'
        f'print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))')
    assert loaded == []


def test_custom_imports_registers_every_type():
    """What mmdet/mmseg configs do: custom_imports=dict(imports=[...])."""
    found = run_python(
        'import json\n'
        'from mmengine.utils import import_modules_from_strings\n'
        "import_modules_from_strings(['mmbackbone'])\n"
        'from mmengine.registry import MODELS as ROOT\n'
        "scope = ROOT.children['mmbackbone']\n"
        'import mmbackbone.models as models\n'
        'print(json.dumps(dict(registered=sorted(scope.module_dict), '
        'exported=sorted(models.__all__))))')
    exported = [n for n in found['exported'] if n not in
                ('BaseBackbone', 'build_backbone', *LAZY_MODEL_MODULES)]
    missing = [n for n in exported if n not in found['registered']]
    assert not missing, f'exported but not registered on import: {missing}'
    assert set(mmbackbone.list_backbones()) <= set(found['registered'])
    assert not set(LAZY_MODEL_MODULES) & set(found['registered'])


def test_mmengine_model_types_register_on_first_lookup():
    """ImageClassifier and ClsDataPreprocessor (their modules load
    mmengine.model) are found by every route a config or user takes."""
    found = run_python(
        'import json, mmbackbone\n'
        'from mmengine.registry import MODELS as ROOT, DefaultScope\n'
        "scope = ROOT.children['mmbackbone']\n"
        'before = sorted(set(scope.module_dict) & {"ImageClassifier", '
        '"ClsDataPreprocessor"})\n'
        "pre = ROOT.build(dict(type='mmbackbone.ClsDataPreprocessor'))\n"
        'after = sorted(set(scope.module_dict) & {"ImageClassifier", '
        '"ClsDataPreprocessor"})\n'
        "with DefaultScope.overwrite_default_scope('mmbackbone'):\n"
        "    model = ROOT.build(dict(type='ImageClassifier', backbone=dict(\n"
        "        type='ResNet', depth=18), neck=dict(type="
        "'GlobalAveragePooling'),\n"
        "        head=dict(type='LinearClsHead', num_classes=3, "
        "in_channels=512)))\n"
        'from mmbackbone.models import ImageClassifier\n'
        'import mmbackbone.models as models\n'
        'print(json.dumps([before, after, type(pre).__name__,\n'
        '    type(model).__name__, type(model.data_preprocessor).__name__,\n'
        '    type(model) is ImageClassifier,\n'
        '    models.ClsDataPreprocessor is type(pre),\n'
        "    'ImageClassifier' in dir(models)]))")
    assert found == [[], ['ClsDataPreprocessor', 'ImageClassifier'],
                     'ClsDataPreprocessor', 'ImageClassifier',
                     'ClsDataPreprocessor', True, True, True]


def test_lazy_model_modules_are_registry_locations():
    from mmbackbone.registry import MODELS
    for name, module in LAZY_MODEL_MODULES.items():
        assert module in MODELS._locations
        assert name in mmbackbone.models.__all__
        assert getattr(mmbackbone.models, name).__module__.startswith(module)
        assert MODELS.get(name) is getattr(mmbackbone.models, name)
    with pytest.raises(AttributeError, match='has no attribute'):
        mmbackbone.models.NoSuchModel  # noqa: B018


BUILD_AND_LIST_LOADED = f'''
import json, sys, mmbackbone
mmbackbone.build_backbone(dict(type='ResNet', depth=50))
after_resnet50 = [m for m in {MMENGINE_MODEL + LOCATIONS!r} if m in sys.modules]
mmbackbone.build_backbone(dict(type='mmbackbone.ResNet', depth=18,
                               norm_cfg=dict(type='BN', requires_grad=True),
                               conv_cfg=dict(type='Conv2d')))
mmbackbone.list_backbones()
after_layer_types = [m for m in {LOCATIONS!r} if m in sys.modules]
print(json.dumps([after_resnet50, after_layer_types]))
'''


def test_layer_types_in_a_config_import_no_registry_location():
    """Checking ``norm_cfg=dict(type='BN')`` for an import path finds no
    module named BN and stops there: the engine, datasets and classifier
    modules (seconds of imports) stay unloaded."""
    assert run_python(BUILD_AND_LIST_LOADED)[1] == []


BACKBONE_ON_MMENGINE_MODEL = any(
    cls.__module__.startswith('mmengine.model')
    for cls in BaseBackbone.__mro__)


@pytest.mark.xfail(BACKBONE_ON_MMENGINE_MODEL, strict=True,
                   reason='BaseBackbone derives from mmengine.model\'s '
                          'BaseModule instead of mmbackbone.utils.BaseModule')
def test_import_and_resnet50_build_load_no_mmengine_model():
    """The start-up figure: ``mmengine.model`` (optimizers, FSDP, sympy)
    is loaded by neither ``import mmbackbone`` nor building a ResNet-50."""
    assert run_python(BUILD_AND_LIST_LOADED)[0] == []


def test_optimize_for_inference_is_public():
    assert 'optimize_for_inference' in mmbackbone.__all__
    from mmbackbone.deploy import optimize_for_inference
    assert mmbackbone.optimize_for_inference is optimize_for_inference


INIT_FUNCTIONS = ('uniform_', 'normal_', 'trunc_normal_', 'constant_',
                  'ones_', 'zeros_', 'kaiming_uniform_', 'kaiming_normal_',
                  'xavier_uniform_', 'xavier_normal_', 'orthogonal_')


@pytest.fixture
def init_writes(monkeypatch):
    """Count, per tensor, the calls of torch.nn.init functions.

    Every tensor seen is kept alive, so that a freed probe tensor (config
    checks build throw-away layers on the meta device) cannot hand its
    ``id`` to a parameter created later.
    """
    writes = collections.Counter()
    seen = []
    for name in INIT_FUNCTIONS:
        original = getattr(init, name)

        def counted(tensor, *args, _original=original, **kwargs):
            seen.append(tensor)
            writes[id(tensor)] += 1
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(init, name, counted)
    return writes


def test_build_resnet50_initialises_each_weight_once(init_writes):
    model = build_backbone(dict(type='ResNet', depth=50))
    params = list(model.parameters())
    assert params
    counts = collections.Counter(init_writes[id(p)] for p in params)
    assert counts == {1: len(params)}, counts


def test_optimize_for_inference_is_in_apis():
    """DESIGN.md places it in mmbackbone.apis with the other entry points."""
    from mmbackbone import apis
    assert apis.optimize_for_inference is mmbackbone.optimize_for_inference
    assert set(apis.__all__) >= {'build_backbone', 'list_backbones',
                                 'optimize_for_inference'}


def test_import_and_default_resnet_build_do_not_import_mmcv():
    """mmcv (PIL, OpenCV: about 0.25 s) loads on the first layer that needs
    it, not for ``import mmbackbone`` or a default ResNet."""
    loaded = run_python(
        'import json, sys, mmbackbone\n'
        "mmbackbone.build_backbone(dict(type='ResNet', depth=50))\n"
        "before = 'mmcv' in sys.modules\n"
        "mmbackbone.build_backbone(dict(type='ResNetV1c', depth=18))\n"
        "print(json.dumps([before, 'mmcv.cnn' in sys.modules]))")
    assert loaded == [False, True]  # the deep stem is mmcv's ConvModule


LAYER_CASES = [
    ('norm', dict(type='BN'), 8, 1),
    ('norm', dict(type='BN2d', eps=1e-3, momentum=0.03), 8, 2),
    ('norm', dict(type='BN', requires_grad=False), 8, ''),
    ('norm', dict(type='BN', affine=False, track_running_stats=False), 4, 3),
    ('conv', None, 3, 8),
    ('conv', dict(type='Conv2d'), 3, 8),
    ('act', dict(type='ReLU'), None, None),
    ('act', dict(type='ReLU', inplace=True), None, None),
    # mmcv's 'Conv' is its own Conv2d subclass: this one loads mmcv
    ('conv', dict(type='Conv', dilation=2), 3, 8),
]

DESCRIBE_LAYERS = f'''
import json, sys, torch
from mmbackbone.models.layers import act_layer, conv_layer, norm_layer


def describe(kind, cfg, a, b):
    torch.manual_seed(0)
    if kind == 'norm':
        name, layer = norm_layer(cfg, a, postfix=b)
    elif kind == 'conv':
        name, layer = '', conv_layer(cfg, a, b, 3, padding=1, bias=False)
    else:
        name, layer = '', act_layer(cfg)
    state = {{k: v.flatten()[:5].tolist() for k, v in
             layer.state_dict().items()}}
    grads = [p.requires_grad for p in layer.parameters()]
    return [name, type(layer).__module__ + '.' + type(layer).__name__,
            repr(layer), state, grads]


out, loaded = [], []
for case in {LAYER_CASES!r}:
    out.append(describe(*case))
    loaded.append('mmcv.cnn' in sys.modules)
print(json.dumps([out, loaded]))
'''


def test_layers_built_without_mmcv_equal_mmcv_builds():
    """The torch layers built before mmcv is imported are exactly what
    mmcv's builders give: class, name, options, weights, requires_grad."""
    without, loaded = run_python(DESCRIBE_LAYERS)
    assert loaded == [False] * (len(LAYER_CASES) - 1) + [True]
    with_mmcv, loaded = run_python('import mmcv.cnn\n' + DESCRIBE_LAYERS)
    assert all(loaded)
    assert without == with_mmcv
    assert without[-1][1] == 'mmcv.cnn.bricks.wrappers.Conv2d'


SNAPSHOT_OUTSIDE = '''
import json, sys
import torch  # noqa: F401  (what torch itself installs is not ours)
from mmengine import registry as root


def snapshot():
    regs = {}
    for name in sorted(dir(root)):
        reg = getattr(root, name)
        if isinstance(reg, root.Registry):
            regs[name] = dict(
                types={k: v.__module__ for k, v in reg.module_dict.items()},
                children=sorted(reg.children))
    return dict(meta_path=[type(f).__module__ + '.' + type(f).__qualname__
                           for f in sys.meta_path],
                path_hooks=[repr(h) for h in sys.path_hooks],
                registries=regs)


before = snapshot()
import mmbackbone  # noqa: E402,F401
after = snapshot()
after['parrots_alias'] = 'mmcv.utils.parrots_wrapper' in sys.modules
print(json.dumps(dict(before=before, after=after)))
'''


def test_import_installs_no_hook_and_changes_nothing_outside():
    """``import mmbackbone`` adds no import hook (the mmcv 1.x alias is
    opt-in: :func:`mmbackbone.compat.alias_mmcv_parrots_wrapper`) and, in
    other scopes' registries, only its own child scope; types that appear
    there are registered by the mmengine modules it imports."""
    found = run_python(SNAPSHOT_OUTSIDE)
    before, after = found['before'], found['after']
    assert after['meta_path'] == before['meta_path']
    assert after['path_hooks'] == before['path_hooks']
    assert after['parrots_alias'] is False
    for name, reg in after['registries'].items():
        old = before['registries'][name]
        assert set(reg['children']) - set(old['children']) <= {'mmbackbone'}
        for key, value in old['types'].items():
            assert reg['types'][key] == value, (name, key)
        ours = {k: m for k, m in reg['types'].items()
                if k not in old['types'] and m.startswith('mmbackbone')}
        assert not ours, (name, ours)


def test_parrots_wrapper_alias_is_opt_in():
    found = run_python(
        'import json, sys, mmbackbone\n'
        'from mmbackbone.compat import alias_mmcv_parrots_wrapper\n'
        'n = len(sys.meta_path)\n'
        'alias_mmcv_parrots_wrapper(); alias_mmcv_parrots_wrapper()\n'
        'from mmcv.utils.parrots_wrapper import _BatchNorm\n'
        'import torch\n'
        'print(json.dumps([len(sys.meta_path) - n,\n'
        '                  _BatchNorm is torch.nn.modules.batchnorm._BatchNorm'
        ']))')
    assert found == [1, True]


ENGINE_IMPORT_WARNINGS = '''
import json, warnings
import mmengine
{patch}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    import mmbackbone.engine, mmbackbone.engine.runner
print(json.dumps(sorted(str(w.message).split()[0] for w in caught
                        if type(w.message).__name__ ==
                        'MmengineVersionWarning')))
'''


@pytest.mark.parametrize('installed,warned', [
    (None, []),
    ('0.11.0', ['mmbackbone.engine.config',
                'mmbackbone.engine.hooks.atomic_checkpoint_hook',
                'mmbackbone.engine.runner']),
])
def test_copies_of_mmengine_private_code_check_its_version(installed, warned):
    """Modules that override mmengine's private methods name the version
    they follow and warn, once, at import on another one."""
    patch = f'mmengine.__version__ = {installed!r}' if installed else ''
    assert run_python(ENGINE_IMPORT_WARNINGS.format(patch=patch)) == warned


def small_net(parent_base: type, child_base: type, init_cfg=None,
              child_init_cfg=None) -> nn.Module:
    """A parent (conv child, linear) on ``parent_base``, its child on
    ``child_base``: either mmbackbone's BaseModule or mmengine's."""

    class Child(child_base):
        def __init__(self):
            super().__init__(child_init_cfg)
            self.conv = nn.Conv2d(3, 4, 3)

    class Net(parent_base):
        def __init__(self):
            super().__init__(init_cfg)
            self.child = Child()
            self.fc = nn.Linear(4, 2)

    return Net()


INIT_CASES = {
    'per layer type': dict(init_cfg=[
        dict(type='Kaiming', layer='Conv2d'),
        dict(type='Normal', layer='Linear', std=0.01)]),
    'override by name': dict(init_cfg=dict(
        type='Constant', val=0.5, layer='Linear',
        override=dict(type='Xavier', name='fc'))),
    'child after parent': dict(
        init_cfg=dict(type='Constant', val=1, layer='Conv2d'),
        child_init_cfg=dict(type='Constant', val=2, layer='Conv2d')),
    'pretrained last': dict(init_cfg=[
        dict(type='Constant', val=3, layer=['Conv2d', 'Linear']),
        dict(type='Pretrained', checkpoint='{checkpoint}')]),
}


@pytest.mark.parametrize('case', sorted(INIT_CASES))
@pytest.mark.parametrize('mixed', ['ours', 'ours in mmengine',
                                   'mmengine in ours'])
def test_base_module_initialises_as_mmengine_does(case, mixed, tmp_path):
    """mmbackbone's BaseModule (which spares ``import mmbackbone`` the
    load of mmengine.model) gives the weights, ``is_init``, ``repr`` and
    clean-up of mmengine's BaseModule, alone and nested in either
    direction (a backbone in an mmengine model, an mmengine layer in a
    backbone)."""
    torch.manual_seed(1)
    checkpoint = tmp_path / 'net.pth'
    torch.save(small_net(BaseModule, BaseModule).state_dict(), checkpoint)
    cfgs = json.loads(json.dumps(INIT_CASES[case]).replace(
        '{checkpoint}', str(checkpoint)))
    bases = {'ours': (BaseModule, BaseModule),
             'ours in mmengine': (MMEngineBaseModule, BaseModule),
             'mmengine in ours': (BaseModule, MMEngineBaseModule)}[mixed]
    built = {}
    for name, (parent, child) in [('mmengine', (MMEngineBaseModule,) * 2),
                                  ('mixed', bases)]:
        torch.manual_seed(0)
        net = small_net(parent, child, **cfgs)
        assert not net.is_init and not net.child.is_init
        net.init_weights()
        built[name] = net
    reference, net = built['mmengine'], built['mixed']
    assert net.is_init and net.child.is_init
    assert not any(hasattr(m, '_params_init_info') for m in net.modules())
    assert repr(net) == repr(reference)
    state, expected = net.state_dict(), reference.state_dict()
    assert list(state) == list(expected)
    for key in expected:
        assert torch.equal(state[key], expected[key]), key
    if case == 'pretrained last':
        assert torch.equal(state['fc.weight'],
                           torch.load(checkpoint)['fc.weight'])
