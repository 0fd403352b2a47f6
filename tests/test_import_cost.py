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
