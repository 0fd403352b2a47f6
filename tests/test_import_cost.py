"""Start-up hygiene: ``import mmbackbone`` stays light, registers every
type, and building a backbone initialises each weight once."""
import collections
import json
import subprocess
import sys

import pytest
from torch.nn import init

import mmbackbone
from mmbackbone import build_backbone

HEAVY = ('timm', 'torchvision', 'onnx', 'onnxruntime', 'mmpretrain',
         'mmdet', 'mmseg')


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
                ('BaseBackbone', 'build_backbone')]
    missing = [n for n in exported if n not in found['registered']]
    assert not missing, f'exported but not registered on import: {missing}'
    assert set(mmbackbone.list_backbones()) <= set(found['registered'])


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
