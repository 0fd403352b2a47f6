"""tools/export.py and ExportedBackbone: every registered backbone exports
to .pt2 and ONNX and matches eager at two new input sizes; hostile
archives are refused before anything in them runs.

Each type (its smallest zoo arch) is exported once, lazily, at 64x64 (or
its patch grid's multiple); both checks run on other sizes and batches.
Every native type, ViTs included, exports with a dynamic height and width;
the fixed-size fallback is checked on a model that turns its input size
into Python numbers.
"""
import importlib.util
import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import randomize_norm_stats
from mmbackbone import build_backbone
from mmbackbone.models import ExportedBackbone
from mmbackbone.models.backbones.base_backbone import BaseBackbone, StageInfo
from mmbackbone.models.backbones.exported_backbone import (
    UnsafeProgramError, check_operator_name, check_shape_expression)
from mmbackbone.registry import MODELS
from test_export import export_cases

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / 'tools' / 'export.py'
TOL = 1e-5
CASES = export_cases()
#: Types whose modules are not ours: they may need the fixed-size fallback.
FOREIGN = ('TIMMBackbone', )


def load_tool():
    spec = importlib.util.spec_from_file_location('export_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = load_tool()


@pytest.fixture(scope='module')
def exports(tmp_path_factory):
    """Export each type once (both formats), on first use."""
    root = tmp_path_factory.mktemp('exported')
    built = {}

    def get(type_name, arch):
        if type_name not in built:
            torch.manual_seed(0)
            cfg = MODELS.get(type_name).zoo_configs[arch]
            model = randomize_norm_stats(
                build_backbone(dict(type=type_name, **cfg))).eval()
            step = tool.spatial_multiple(model)
            size = (-(-64 // step) * step, ) * 2
            info = tool.export_backbone(model, root / type_name, 'both',
                                        size, check=False)
            inputs = [torch.rand(*shape, generator=torch.Generator()
                                 .manual_seed(index))
                      for index, shape in enumerate(new_sizes(info, step))]
            built[type_name] = (model, info, [(x, eager(model, x))
                                              for x in inputs])
        return built[type_name]
    return get


def new_sizes(info, step):
    """Two input shapes unlike the 2x3xHxW example: new batches, heights
    and widths (new batches only for a program of a fixed size)."""
    h, w = info['input_size']
    if info['metadata']['pt2']['input']['height']['multiple'] == 1:
        return [(1, 3, h, w), (3, 3, h, w)]
    return [(1, 3, h + step, w), (3, 3, h, w + step)]


def assert_close(got, want):
    got = [torch.as_tensor(g) for g in got]
    assert [tuple(g.shape) for g in got] == [tuple(w.shape) for w in want]
    for g, w in zip(got, want):
        scale = max(1.0, w.abs().max().item())
        diff = (g.float() - w.float()).abs().max().item()
        assert diff <= TOL * scale, f'max abs diff {diff} (scale {scale})'


def eager(model, x):
    with torch.no_grad():
        return tuple(model(x))


@pytest.mark.parametrize('type_name,arch', CASES)
def test_pt2_matches_eager(exports, type_name, arch):
    model, info, cases = exports(type_name, arch)
    loaded = ExportedBackbone(path=str(info['paths']['pt2']))
    assert loaded.out_channels == model.out_channels
    assert loaded.out_strides == tuple(
        s if isinstance(s, int) else None for s in model.out_strides)
    assert loaded.nr_features == model.out_channels[-1]
    for x, want in cases:
        with torch.no_grad():
            assert_close(loaded(x), want)
    if type_name not in FOREIGN:  # no fixed-size fallback
        step = tool.spatial_multiple(model)
        assert info['notes'] == []
        for kind in ('pt2', 'onnx'):
            limits = info['metadata'][kind]['input']
            assert limits['height']['multiple'] == step, kind
            assert limits['width']['multiple'] == step, kind


@pytest.mark.parametrize('type_name,arch', CASES)
def test_onnx_matches_eager(exports, type_name, arch):
    model, info, cases = exports(type_name, arch)
    sidecar = json.loads(Path(str(info['paths']['onnx']) + '.json')
                         .read_text())
    assert sidecar['out_channels'] == list(model.out_channels)
    session = ort.InferenceSession(str(info['paths']['onnx']),
                                   providers=['CPUExecutionProvider'])
    for x, want in cases:
        got = session.run(sidecar['outputs'], {'input': x.numpy()})
        assert_close(got, want)


class SizedNet(BaseBackbone):
    """Patches plus a position term resized with Python ints, skipped at
    its own grid: a trace keeps the example's size."""

    def __init__(self):
        super().__init__()
        self._setup_stages([StageInfo(8, 8, ('patches', ))], stem=())
        self.patches = nn.Conv2d(3, 8, 8, 8)
        self.position = nn.Parameter(torch.randn(1, 8, 4, 4))
        self._finish_init()

    def forward(self, x):
        x = self.patches(x)
        grid = int(x.shape[2]), int(x.shape[3])
        position = (self.position if grid == (4, 4) else
                    F.interpolate(self.position, size=grid, mode='bilinear'))
        return (x + position, )


def test_fixed_size_fallback(tmp_path):
    """A program that cannot follow a change of size is exported at the
    example's height and width (batch still dynamic), with a note; the
    loaded program refuses other sizes."""
    torch.manual_seed(0)
    model = SizedNet().eval()
    info = tool.export_backbone(model, tmp_path / 'sized', 'both', (32, 32))
    assert len(info['notes']) == 2
    assert all('fixed at 32x32' in note for note in info['notes'])
    for kind in ('pt2', 'onnx'):
        limits = info['metadata'][kind]['input']
        assert limits['height'] == dict(min=32, max=32, multiple=1), kind
        assert limits['batch']['max'] == tool.MAX_BATCH
        assert info['max_abs_diff'][kind] <= TOL
    loaded = ExportedBackbone(path=str(info['paths']['pt2']))
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert_close(loaded(x), eager(model, x))
    with pytest.raises(ValueError, match='input height 40 is not one the '
                       'program accepts'):
        loaded(torch.rand(1, 3, 40, 32))
    session = ort.InferenceSession(str(info['paths']['onnx']),
                                   providers=['CPUExecutionProvider'])
    assert session.get_inputs()[0].shape == ['batch', 3, 32, 32]


# ------------------------------------------------------------- training
@pytest.fixture(scope='module')
def resnet_pt2(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_norm_stats(build_backbone(
        dict(type='ResNet', depth=18, out_indices=(1, 3)))).eval()
    path = tmp_path_factory.mktemp('r18') / 'r18.pt2'
    tool.export_backbone(model, path, 'pt2', (64, 64), check=False)
    return model, path


def test_frozen_stages_and_fine_tuning(resnet_pt2):
    model, path = resnet_pt2
    loaded = ExportedBackbone(path=str(path), frozen_stages=1)
    frozen = {name for name, p in loaded.named_parameters()
              if not p.requires_grad}
    assert 'program.conv1.weight' in frozen
    assert 'program.layer1.0.conv1.weight' in frozen
    assert 'program.layer2.0.conv1.weight' not in frozen
    loaded.train()
    assert loaded.training
    outs = loaded(torch.rand(2, 3, 64, 64))
    sum(o.square().mean() for o in outs).backward()
    grads = {name: p.grad for name, p in loaded.named_parameters()}
    assert grads['program.conv1.weight'] is None
    assert grads['program.layer4.1.conv2.weight'].abs().sum() > 0
    # traced in eval mode: train() leaves BN on its running statistics
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert_close(loaded(x), eager(model, x))
    assert loaded.get_layer_depth('backbone.program.layer2.0.conv1.weight',
                                  'backbone.') == (2, 6)


def test_compiles_as_one_graph(resnet_pt2):
    """torch.compile(fullgraph=True) traces a loaded program whole."""
    import torch._dynamo
    model, path = resnet_pt2
    loaded = ExportedBackbone(path=str(path))
    x = torch.rand(2, 3, 64, 96)
    torch._dynamo.reset()
    try:
        explained = torch._dynamo.explain(loaded)(x)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0)
        with torch.no_grad():
            got = torch.compile(loaded, fullgraph=True, backend='eager')(x)
    finally:
        torch._dynamo.reset()
    assert_close(got, eager(model, x))


def test_contract_errors(resnet_pt2):
    _, path = resnet_pt2
    with pytest.raises(ValueError, match='norm_eval=False'):
        ExportedBackbone(path=str(path), norm_eval=False)
    with pytest.raises(ValueError, match=r'frozen_stages=9 .* 1\.\.4'):
        ExportedBackbone(path=str(path), frozen_stages=9)
    with pytest.raises(ValueError, match='out_indices'):
        ExportedBackbone(path=str(path), out_indices=(2, ))
    loaded = ExportedBackbone(path=str(path), out_indices=-1)
    assert loaded.out_channels == (512, )
    with pytest.raises(ValueError, match=r'input height 80 .* multiple of '
                       r'32'):
        loaded(torch.rand(1, 3, 80, 64))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        ExportedBackbone(path=str(path) + '.missing')
    with pytest.raises(ValueError, match='multiples of 32'):
        tool.export_backbone(build_backbone(dict(type='ResNet', depth=18)),
                             path.parent / 'bad', 'pt2', (50, 64))
    with pytest.raises(ValueError, match="valid formats are"):
        tool.export_backbone(build_backbone(dict(type='ResNet', depth=18)),
                             path.parent / 'bad', 'tflite', (64, 64))


# ------------------------------------------------------------- hostile files
def repack(src: Path, dst: Path, edit=None, add=(), compress=False) -> Path:
    """Copy a .pt2 archive member by member; ``edit(relative name, bytes)``
    returns new bytes (None drops the member); ``add`` appends members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w') as zout:
        root = zin.namelist()[0].split('/')[0]
        method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        for name in zin.namelist():
            data = zin.read(name)
            if edit is not None:
                data = edit(name[len(root) + 1:], data)
            if data is not None:
                zout.writestr(name, data, compress_type=method)
        for rel, data in add:
            zout.writestr(f'{root}/{rel}', data)
    return dst


def edit_json(target: str, change):
    def edit(rel, data):
        if rel != target:
            return data
        obj = json.loads(data)
        change(obj)
        return json.dumps(obj).encode()
    return edit


def first_node(program):
    return program['graph_module']['graph']['nodes'][0]


class Marker:
    """A pickled object whose unpickling would create a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path(self.path).touch, ())


def test_repacked_copy_loads(resnet_pt2, tmp_path):
    """The tampering harness keeps an untouched archive loadable."""
    _, path = resnet_pt2
    copy = repack(path, tmp_path / 'copy.pt2')
    assert ExportedBackbone(path=str(copy)).out_channels == (128, 512)


def inject_sympy_payload(marker, count=0):
    """Replace a symbol of the shape expressions by code that creates
    ``marker`` when evaluated."""
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"

    def change(program):
        text = re.sub(r"Symbol\('s\d+', positive=True, integer=True\)",
                      lambda _: payload, json.dumps(program),
                      count=count)
        program.clear()
        program.update(json.loads(text))
    return change


@pytest.mark.parametrize('case', [
    'pickled_weight', 'shape_expression_code', 'os_system_target',
    'load_library_target', 'from_file_op', 'aoti_member', 'custom_object',
    'full_pickle_sample_inputs', 'compressed_member', 'carriage_return',
])
def test_hostile_archive_is_refused(resnet_pt2, tmp_path, case):
    _, path = resnet_pt2
    marker = tmp_path / 'executed'
    bad = tmp_path / 'bad.pt2'
    model_json = 'models/model.json'
    weights = 'data/weights/model_weights_config.json'
    if case == 'pickled_weight':
        def change(cfg):
            cfg['config']['conv1.weight']['use_pickle'] = True
        repack(path, bad, edit_json(weights, change))
        why = 'stored as a pickle'
    elif case == 'shape_expression_code':
        repack(path, bad, edit_json(model_json,
                                    inject_sympy_payload(marker)))
        why = 'not a plain sympy expression'
    elif case in ('os_system_target', 'load_library_target',
                  'from_file_op'):
        target = {'os_system_target': 'torch.os.system',
                  'load_library_target': 'torch.ops.load_library',
                  'from_file_op': 'torch.ops.aten.from_file.default'}[case]

        def change(program):
            first_node(program)['target'] = target
        repack(path, bad, edit_json(model_json, change))
        why = f'calls {target!r}'
    elif case == 'aoti_member':
        repack(path, bad, add=[('data/aotinductor/model/x.so', b'\0')])
        why = 'AOTInductor native code'
    elif case == 'custom_object':
        repack(path, bad, add=[('data/constants/custom_obj_0', b'\0')])
        why = 'TorchBind custom object'
    elif case == 'full_pickle_sample_inputs':
        buffer = io.BytesIO()
        torch.save(((Marker(marker), ), {}), buffer)

        def edit(rel, data):
            return buffer.getvalue() if rel.startswith(
                'data/sample_inputs/') else data
        repack(path, bad, edit)
        why = 'weights_only=True'
    elif case == 'compressed_member':
        repack(path, bad, compress=True)
        why = 'compressed'
    elif case == 'carriage_return':
        def change(program):
            first_node(program)['metadata']['stack_trace'] = (
                'File "a.py", line 1, in f\n    x = 1\rimport os\n')
        repack(path, bad, edit_json(model_json, change))
        why = 'carriage return'
    with pytest.raises(ValueError, match=why) as err:
        ExportedBackbone(path=str(bad))
    assert str(bad) in str(err.value)
    assert not marker.exists(), 'the hostile payload ran'
    if case != 'compressed_member':
        assert isinstance(err.value, UnsafeProgramError)


def test_unchecked_torch_load_would_run_the_payload(resnet_pt2, tmp_path):
    """Why the checks exist: torch.export.load evaluates shape
    expressions with sympy (an eval)."""
    _, path = resnet_pt2
    marker = tmp_path / 'executed'
    bad = repack(path, tmp_path / 'bad.pt2', edit_json(
        'models/model.json', inject_sympy_payload(marker, count=1)))
    try:
        torch.export.load(str(bad))
    except Exception:  # the graph is broken after the payload ran
        pass
    assert marker.exists()


def test_foreign_and_broken_files(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1),
                              torch.nn.ReLU())
    program = torch.export.export(net, (torch.rand(1, 3, 16, 16), ))
    path = tmp_path / 'plain.pt2'
    torch.export.save(program, str(path))
    loaded = ExportedBackbone(path=str(path))
    assert (loaded.out_channels, loaded.out_strides) == ((8, ), (None, ))
    assert loaded.stage_parts() == [[loaded.program]]
    with pytest.raises(ValueError, match=r"metadata does not list the "
                       r"stages.*-1 \(nothing\) or 'all'"):
        ExportedBackbone(path=str(path), frozen_stages=1)
    frozen = ExportedBackbone(path=str(path), frozen_stages='all')
    assert not any(p.requires_grad for p in frozen.parameters())
    truncated = tmp_path / 'truncated.pt2'
    truncated.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match='not a readable .pt2 archive'):
        ExportedBackbone(path=str(truncated))
    state = tmp_path / 'weights.pt2'
    torch.save(net.state_dict(), str(state))
    with pytest.raises(UnsafeProgramError, match='not a member '
                       'torch.export.save writes'):
        ExportedBackbone(path=str(state))


def test_checkers():
    assert check_operator_name('torch.ops.prims.convert_element_type.default')
    assert check_operator_name('_operator.floordiv')
    assert not check_operator_name('torch.ops.higher_order.cond')
    assert not check_operator_name('torch.ops.mylib.op.default')
    assert check_shape_expression('FloorDiv(Symbol(\'s0\', integer=True), '
                                  'Integer(-2))')
    assert not check_shape_expression("Symbol('s0').__class__")
    assert not check_shape_expression('eval(x)')


# ------------------------------------------------------------- command line
def test_cli_writes_a_checked_pt2(tmp_path):
    out = tmp_path / 'cli' / 'r18'
    proc = subprocess.run(
        [sys.executable, str(TOOL), '--type', 'ResNet', '--arch', 'resnet18',
         '--out-indices', '2', '3', '--out', str(out), '--input-size', '64',
         '64'],
        capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"config: dict(type='ExportedBackbone', path='{out}.pt2')" in \
        proc.stdout
    assert 'out_channels: (256, 512), out_strides: (16, 32)' in proc.stdout
    assert 'max abs diff vs eager 0.00e+00' in proc.stdout
    loaded = ExportedBackbone(path=f'{out}.pt2')
    assert loaded.out_channels == (256, 512)


def test_build_for_export_errors():
    with pytest.raises(ValueError, match='not both or neither'):
        tool.build_for_export()
    with pytest.raises(KeyError, match="no zoo arch of that name"):
        tool.build_for_export('ResNet', arch='resnet7')
