"""The ``mmbackbone`` command: list, info, convert (peers: torchvision, timm,
mmpretrain checkpoints and models)."""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mmbackbone.cli
from mmbackbone import build_backbone
from mmbackbone.cli import (SUBCOMMANDS, count_flops, main, parse_value,
                            progress, register_subcommand)
from mmbackbone.registry import MODELS
from helpers import one_thread  # noqa: F401  (fixture)

ROOT = Path(__file__).parents[1]


pytestmark = pytest.mark.usefixtures('one_thread')


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def field(out, name):
    """The value printed after ``name:``."""
    for line in out.splitlines():
        if line.strip().startswith(f'{name}:'):
            return line.split(':', 1)[1].strip()
    raise AssertionError(f'{name} not printed in:\n{out}')


# ------------------------------------------------------------------ info
def test_info_resnet101_matches_torchvision(capsys):
    import torchvision
    code, out, err = run(capsys, 'info', 'ResNet', '--depth', '101')
    assert code == 0, err
    assert out.splitlines()[0] == 'ResNet(depth=101)'
    assert field(out, 'out_channels') == '(2048,)'
    assert field(out, 'out_strides') == '(32,)'
    peer = torchvision.models.resnet101()
    peer_params = sum(p.numel() for name, p in peer.named_parameters()
                      if not name.startswith('fc.'))
    assert f'({peer_params:,};' in field(out, 'params')
    # FLOPs: torchvision's ResNet-101 up to the pooled features, counted by
    # the same analyzer
    peer.fc = torch.nn.Identity()
    peer_gflops = count_flops(peer.eval(), (1, 3, 224, 224)) / 1e9
    ours = float(field(out, 'GFLOPs').split()[0])
    assert abs(ours - peer_gflops) < 0.02, (ours, peer_gflops)


def child_env(**extra):
    """The environment of a child process: one thread, no PYTHONPATH (so
    the child finds modules the way a user's shell does)."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    return dict(env, OMP_NUM_THREADS='1', **extra)


def test_info_through_python_m():
    proc = subprocess.run(
        [sys.executable, '-m', 'mmbackbone', 'info', 'ResNet', '--depth',
         '101'], capture_output=True, text=True, cwd=ROOT, timeout=300,
        env=child_env())
    assert proc.returncode == 0, proc.stderr
    assert field(proc.stdout, 'out_channels') == '(2048,)'
    assert field(proc.stdout, 'params').startswith('42.50 M (42,500,160;')
    assert 'GFLOPs' in proc.stdout
    # the module itself runs too, and passes on the exit status
    proc = subprocess.run(
        [sys.executable, '-m', 'mmbackbone.cli', 'list', 'nothing*here'],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env=child_env())
    assert proc.returncode == 1
    assert 'no backbone type or arch matches' in proc.stderr


def test_python_m_mmbackbone_passes_on_the_exit_status():
    proc = subprocess.run(
        [sys.executable, '-m', 'mmbackbone', 'list', 'nothing*here'],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env=child_env())
    assert 'no backbone type or arch matches' in proc.stderr
    assert proc.returncode == 1


def test_info_literal_arguments_and_arch_names(capsys):
    code, out, err = run(capsys, 'info', '--no-flops', 'ResNet', '--depth',
                         '18', '--out_indices', '(0, -1)', '--norm-eval',
                         'true', '--frozen_stages', '1')
    assert code == 0, err
    assert out.splitlines()[0] == ('ResNet(depth=18, out_indices=(0, -1), '
                                   'norm_eval=True, frozen_stages=1)')
    assert field(out, 'out_channels') == '(64, 512)'
    assert field(out, 'out_strides') == '(4, 32)'
    reference = build_backbone(dict(type='ResNet', depth=18,
                                    frozen_stages=1))
    trainable = sum(p.numel() for p in reference.parameters()
                    if p.requires_grad)
    assert f'{trainable:,} trainable' in field(out, 'params')
    assert 'GFLOPs' not in out
    # a zoo arch name gives the type and its config
    code, out, _ = run(capsys, 'info', '--flops-at', '64', 'resnet18',
                       '--out_indices', '(3,)')
    assert code == 0
    assert out.splitlines()[0] == 'ResNet(depth=18, out_indices=(3,))'
    assert 'at 1x3x64x64' in field(out, 'GFLOPs')
    # **kwargs subclasses get the base class's options
    code, out, _ = run(capsys, 'info', '--no-flops', 'ResNetV1d', '--depth',
                       '50')
    assert code == 0 and field(out, 'out_channels') == '(2048,)'


def test_info_help_lists_constructor_options(capsys):
    code, out, _ = run(capsys, 'info', 'ResNet', '--help')
    assert code == 0
    assert 'usage: mmbackbone info ResNet' in out
    for option in ('--depth', '--out_indices', '--frozen_stages',
                   '--norm-eval', '--with_cp'):
        assert option in out
    assert '(default: 3)' in out  # in_channels
    code, out, _ = run(capsys, 'info', '--help')
    assert code == 0 and '--flops-at' in out and 'TYPE' in out


@pytest.mark.parametrize('type_name', ['CSPDarkNet', 'CSPResNet',
                                       'CSPResNeXt'])
@pytest.mark.parametrize('argument', ['frozen_stages', 'drop_path_rate'])
def test_info_help_describes_arguments_documented_by_a_base(
        capsys, type_name, argument):
    """The CSP variants document only what they change; --help takes the
    other descriptions from CSPNet's docstring."""
    from mmbackbone.models.backbones.cspnet import CSPNet
    match = re.search(rf'^\s+{argument} \([^)]*\): (.*)$', CSPNet.__doc__,
                      re.MULTILINE)
    assert match, f'CSPNet does not document {argument}'
    description = ' '.join(match.group(1).split())
    code, out, _ = run(capsys, 'info', type_name, '--help')
    assert code == 0
    option = argument.replace('_', '-')
    assert f'--{option} VALUE {description}' in ' '.join(out.split()), out


def test_info_errors(capsys):
    code, _, err = run(capsys, 'info', 'ResNet', '--depth', '19')
    assert code == 1 and 'depth' in err and '101' in err
    code, _, err = run(capsys, 'info', 'Resnet')
    assert code == 1 and "Did you mean" in err and 'ResNet' in err
    code, _, err = run(capsys, 'info', 'ResNet', '--bogus', '1')
    assert code == 2 and 'unrecognized arguments: --bogus 1' in err
    code, _, err = run(capsys, 'info', '--flops-at', 'big', 'ResNet')
    assert code == 1 and "--flops-at='big' must be N or HxW" in err
    code, _, err = run(capsys, 'info', 'ResNet', '--norm_eval', 'maybe')
    assert code == 1 and "--norm_eval='maybe' must be true or false" in err
    code, out, _ = run(capsys, 'info')
    assert code == 2 and 'usage:' in out


def test_parse_value_is_literal_only():
    import inspect

    def f(name: str = 'a', flag=False, depth=None):
        pass

    params = inspect.signature(f).parameters
    assert parse_value('(0, 3)') == (0, 3)
    assert parse_value("{'type': 'BN'}") == {'type': 'BN'}
    assert parse_value('None') is None
    assert parse_value('pytorch') == 'pytorch'
    assert parse_value("__import__('os').getcwd()") == \
        "__import__('os').getcwd()"  # text, never evaluated
    assert parse_value('18', params['name']) == '18'
    assert parse_value('yes', params['flag']) is True
    assert parse_value('101', params['depth']) == 101


# ------------------------------------------------------------------ list
def test_list(capsys):
    code, out, _ = run(capsys, 'list')
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert 'resnet50' in rows['ResNet']
    from mmbackbone import list_backbones
    assert sorted(rows) == list_backbones()
    code, out, _ = run(capsys, 'list', 'resnetv1*')
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ['ResNetV1c',
                                                              'ResNetV1d']
    code, out, _ = run(capsys, 'list', 'resnet10?')
    assert code == 0
    assert 'ResNet ' in out and 'resnet101' in out and 'resnet50' not in out
    code, _, err = run(capsys, 'list', 'nothing*here')
    assert code == 1 and 'no backbone type or arch matches' in err


def test_main_usage(capsys):
    code, out, _ = run(capsys)
    assert code == 2 and 'COMMAND' in out
    code, out, _ = run(capsys, '--version')
    assert code == 0 and out.startswith('mmbackbone ')
    code, _, err = run(capsys, 'list', 'a', 'b')
    assert code == 2 and 'unrecognized arguments: b' in err


def test_help_lists_every_subcommand_on_one_line(capsys, monkeypatch):
    monkeypatch.setenv('COLUMNS', '80')
    code, out, _ = run(capsys, '--help')
    assert code == 0
    assert set(SUBCOMMANDS) == {'list', 'info', 'convert', 'weights'}
    lines = [' '.join(line.split()) for line in out.splitlines()]
    for name, command in SUBCOMMANDS.items():
        assert f'{name} {command.help}' in lines, (name, out)


def test_register_subcommand(capsys, monkeypatch):
    monkeypatch.setitem(SUBCOMMANDS, 'demo-weights', None)

    def setup(parser):
        parser.add_argument('name')

    def run_weights(args):
        print(f'weights for {args.name}')
        return 0

    register_subcommand('demo-weights', setup, run_weights, 'list weights')
    code, out, _ = run(capsys, 'demo-weights', 'resnet50')
    assert code == 0 and out == 'weights for resnet50\n'
    assert 'weights' in SUBCOMMANDS  # the built-in one is untouched


def test_import_option_registers_custom_backbone(capsys, tmp_path,
                                                 monkeypatch):
    (tmp_path / 'cli_custom_net.py').write_text(textwrap.dedent('''
        from torch import nn
        from mmbackbone.registry import MODELS

        @MODELS.register_module()
        class CliCustomNet(nn.Module):
            is_backbone = True

            def __init__(self, width: int = 4):
                super().__init__()
                self.conv = nn.Conv2d(3, width, 3)
                self.out_features = width

            def forward(self, x):
                return (self.conv(x), )
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        code, out, err = run(capsys, '--import', 'cli_custom_net', 'info',
                             '--flops-at', '10', 'CliCustomNet', '--width',
                             '6')
        assert code == 0, err
        assert field(out, 'out_features') == '6'
        assert field(out, 'params').endswith('(168; 168 trainable)')
        assert float(field(out, 'GFLOPs').split()[0]) == 0.0  # 6*27*64 MACs
        code, out, _ = run(capsys, 'list', 'CliCustom*')
        assert out.split() == ['CliCustomNet', '-']
    finally:
        MODELS.module_dict.pop('CliCustomNet', None)
        sys.modules.pop('cli_custom_net', None)
    code, _, err = run(capsys, '--import', 'no_such_module_xyz', 'list')
    assert code == 1 and 'no_such_module_xyz' in err


LENET = textwrap.dedent('''
    from torch import nn
    from mmbackbone.registry import MODELS

    @MODELS.register_module()
    class {name}(nn.Module):
        is_backbone = True

        def __init__(self, width: int = 4):
            super().__init__()
            self.conv = nn.Conv2d(3, width, 5)
            self.out_features = width

        def forward(self, x):
            return (self.conv(x), )
''')


def make_project(root, package, name):
    """``root/package/{__init__,lenet}.py``, ``lenet`` registering ``name``."""
    (root / package).mkdir()
    (root / package / '__init__.py').write_text('')
    (root / package / 'lenet.py').write_text(LENET.format(name=name))


def test_import_finds_a_package_in_the_current_directory(tmp_path):
    """As a user runs it: the console script, from the folder that holds
    the package, no PYTHONPATH."""
    make_project(tmp_path, 'my_project', 'LeNet5')
    script = Path(sys.executable).with_name('mmbackbone')
    command = ([str(script)] if script.exists()
               else [sys.executable, '-m', 'mmbackbone'])
    proc = subprocess.run(
        command + ['--import', 'my_project.lenet', 'info', '--flops-at', '32',
                   'LeNet5'], capture_output=True, text=True, cwd=tmp_path,
        timeout=300, env=child_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == 'LeNet5()'
    assert field(proc.stdout, 'params').endswith('(304; 304 trainable)')


def test_import_from_cwd_leaves_sys_path_as_it_was(capsys, tmp_path,
                                                   monkeypatch):
    make_project(tmp_path, 'cwd_project', 'CwdNet')
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    try:
        code, out, err = run(capsys, '--import', 'cwd_project.lenet', 'info',
                             '--no-flops', 'CwdNet', '--width', '2')
        assert code == 0, err
        assert field(out, 'out_features') == '2'
        assert sys.path == before
    finally:
        MODELS.module_dict.pop('CwdNet', None)
        for module in ('cwd_project', 'cwd_project.lenet'):
            sys.modules.pop(module, None)
    # elsewhere the module is not found, and the message says where to run
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = run(capsys, '--import', 'cwd_project.lenet', 'list')
    assert code == 1 and "no module named 'cwd_project'" in err
    assert str(elsewhere) in err and 'PYTHONPATH' in err
    assert sys.path == before
    # an import error inside the module is its own, not "not found"
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'broken_project.py').write_text('import no_such_dep_xyz\n')
    code, _, err = run(capsys, '--import', 'broken_project', 'list')
    assert code == 1 and "No module named 'no_such_dep_xyz'" in err
    assert sys.path == before
    sys.modules.pop('broken_project', None)


# ---------------------------------------------------- configs (info, convert)
@pytest.fixture
def configs(tmp_path):
    """A YAML config with a .py base, and a plain YAML one."""
    (tmp_path / 'base.py').write_text(
        "model = dict(backbone=dict(type='ResNet', depth=18))\n")
    (tmp_path / 'child.yaml').write_text('_base_: base.py\n')
    (tmp_path / 'plain.yaml').write_text(
        'model:\n  backbone: {type: ResNet, depth: 18, out_indices: [0, 3]}\n')
    return tmp_path


def test_info_reads_a_config(capsys, configs):
    code, out, err = run(capsys, 'info', '--no-flops', '--config',
                         str(configs / 'plain.yaml'))
    assert code == 0, err
    assert out.splitlines()[0] == 'ResNet(depth=18, out_indices=[0, 3])'
    assert field(out, 'out_channels') == '(64, 512)'
    # a .py base of a data config runs only with --allow-python-bases
    child = str(configs / 'child.yaml')
    code, _, err = run(capsys, 'info', '--no-flops', '--config', child)
    assert code == 1 and '--allow-python-bases' in err and 'base.py' in err
    code, out, err = run(capsys, 'info', '--no-flops', '--config', child,
                         '--allow-python-bases')
    assert code == 0, err
    assert out.splitlines()[0] == 'ResNet(depth=18)'


@pytest.mark.parametrize('command', ['info', 'convert'])
def test_config_options_are_never_ignored(capsys, configs, command):
    head = (['info', '--no-flops'] if command == 'info' else
            ['convert', 'in.pth', str(configs / 'out.safetensors')])
    type_option = ['ResNet'] if command == 'info' else ['--type', 'ResNet']
    plain = str(configs / 'plain.yaml')
    code, _, err = run(capsys, *head, '--allow-python-bases', *type_option,
                       '--depth', '18')
    assert code == 1
    assert '--allow-python-bases applies to --config files only' in err
    code, _, err = run(capsys, *head, '--config', plain, '--depth', '50')
    assert code == 1
    assert "--ARG options ['--depth'" in err and 'apply to a TYPE only' in err
    assert 'set them in the config' in err and 'plain.yaml' in err
    code, _, err = run(capsys, *head, '--config', plain, *type_option)
    if command == 'info':
        assert code == 1 and "give TYPE ('ResNet') or --config" in err
    else:  # argparse's mutually exclusive group
        assert code == 2 and 'not allowed with argument --config' in err


# --------------------------------------------------------------- progress
def test_progress_off_unless_stderr_is_a_terminal(capsys, monkeypatch):
    items = [1, 2, 3]
    assert progress(items, 'counting') is items  # captured: not a terminal
    assert capsys.readouterr().err == ''
    monkeypatch.setattr(mmbackbone.cli, 'stderr_is_terminal', lambda: True)
    assert list(progress(items, 'counting')) == items
    assert 'counting' in capsys.readouterr().err
    assert progress(items, 'counting', enabled=False) is items
    monkeypatch.setitem(sys.modules, 'tqdm', None)  # not installed
    assert progress(items, 'counting', enabled=True) is items
    assert capsys.readouterr().err == ''


def test_convert_progress(capsys, tmp_path, monkeypatch):
    src = tmp_path / 'ours.pth'
    torch.save(build_backbone(dict(type='ResNet', depth=18)).state_dict(),
               src)
    argv = ['convert', str(src), str(tmp_path / 'r18.safetensors'), '--type',
            'resnet18']
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert 'converting' not in err  # stderr is not a terminal: silent
    monkeypatch.setattr(mmbackbone.cli, 'stderr_is_terminal', lambda: True)
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert 'converting' in err and 'tensor' in err
    assert 'converting' not in out
    code, _, err = run(capsys, *argv, '--no-progress')
    assert code == 0 and 'converting' not in err


# --------------------------------------------------------------- convert
def _features_equal(path, peer_forward, depth=18):
    ours = build_backbone(dict(type='ResNet', depth=depth)).eval()
    state = load_file(str(path))
    ours.load_state_dict(state, strict=True)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        diff = (ours(x)[0] - peer_forward(x)).abs().max().item()
    assert diff < 1e-5, diff
    return diff


def _randomize_bn(model):
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
    return model.eval()


def test_convert_torchvision_checkpoint(capsys, tmp_path):
    import torchvision
    peer = _randomize_bn(torchvision.models.resnet18())
    src, dst = tmp_path / 'tv.pth', tmp_path / 'out' / 'r18.safetensors'
    torch.save(peer.state_dict(), src)
    code, out, err = run(capsys, 'convert', str(src), str(dst), '--type',
                         'ResNet', '--depth', '18', '--no-progress')
    assert code == 0, err
    assert '(torchvision/timm keys)' in out
    assert 'dropped 2 keys the model does not have: fc.bias, fc.weight' in out
    trunk = torch.nn.Sequential(*list(peer.children())[:-2])
    _features_equal(dst, trunk)


def test_convert_timm_checkpoint_with_dtype(capsys, tmp_path):
    import timm
    peer = _randomize_bn(timm.create_model('resnet18', pretrained=False))
    src, dst = tmp_path / 'timm.pth', tmp_path / 'r18.safetensors'
    torch.save({'state_dict': peer.state_dict()}, src)
    code, out, err = run(capsys, 'convert', str(src), str(dst), '--type',
                         'resnet18')
    assert code == 0, err
    assert 'tensors written to' in out
    _features_equal(dst, peer.forward_features)
    half = tmp_path / 'r18_fp16.safetensors'
    assert main(['convert', str(src), str(half), '--type', 'resnet18',
                 '--dtype', 'float16', '--no-progress']) == 0
    state = load_file(str(half))
    assert state['conv1.weight'].dtype == torch.float16
    assert state['bn1.num_batches_tracked'].dtype == torch.int64


def test_convert_mmpretrain_classifier_and_config(capsys, tmp_path):
    import mmpretrain.models  # noqa: F401
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS
    peer = PRETRAIN_MODELS.build(dict(
        type='ImageClassifier', backbone=dict(type='ResNet', depth=18),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=512)))
    _randomize_bn(peer)
    src = tmp_path / 'mmpretrain.pth'
    torch.save({'meta': {'epoch': 3}, 'state_dict': peer.state_dict()}, src)
    config = tmp_path / 'cfg.py'
    config.write_text("model = dict(type='ImageClassifier', "
                      "backbone=dict(type='ResNet', depth=18, init_cfg=dict("
                      "type='Pretrained', checkpoint='missing.pth')))\n")
    dst = tmp_path / 'r18.safetensors'
    code, out, err = run(capsys, 'convert', str(src), str(dst), '--config',
                         str(config), '--no-progress')
    assert code == 0, err
    assert "prefix 'backbone.' stripped" in out
    assert 'dropped 2 keys the model does not have: head.fc.bias' in out
    _features_equal(dst, lambda x: peer.backbone(x)[0])
    from safetensors import safe_open
    with safe_open(str(dst), framework='pt') as f:
        metadata = f.metadata()
    assert metadata['type'] == 'ResNet' and metadata['source']


def test_convert_errors(capsys, tmp_path):
    src = tmp_path / 'ours.pth'
    state = build_backbone(dict(type='ResNet', depth=18)).state_dict()
    torch.save(state, src)
    code, _, err = run(capsys, 'convert', str(src), str(tmp_path / 'x.pth'),
                       '--type', 'ResNet', '--depth', '18')
    assert code == 1 and "DST=" in err and 'must end with .safetensors' in err
    dst = str(tmp_path / 'x.safetensors')
    code, _, err = run(capsys, 'convert', str(src), dst, '--type', 'ResNet',
                       '--depth', '34')
    assert code == 1 and 'missing from the file' in err
    code, _, err = run(capsys, 'convert', str(src), dst, '--type', 'ResNet',
                       '--depth', '50')
    assert code == 1 and 'has shape' in err and 'in the file but' in err
    code, _, err = run(capsys, 'convert', str(tmp_path / 'nope.pth'), dst,
                       '--type', 'ResNet', '--depth', '18')
    assert code == 1 and 'nope.pth does not exist' in err
    code, _, err = run(capsys, 'convert', str(src), dst)
    assert code == 2 and 'one of the arguments --type --config' in err
    partial = {k: v for k, v in state.items() if not k.startswith('layer4')}
    torch.save(partial, src)
    code, _, err = run(capsys, 'convert', str(src), dst, '--type',
                       'resnet18', '--no-progress')
    assert code == 1 and 'pass --allow-missing' in err
    code, out, err = run(capsys, 'convert', str(src), dst, '--type',
                         'resnet18', '--allow-missing', '--no-progress')
    assert code == 0, err
    assert 'missing' in out and 'layer4.0.conv1.weight' in out
    assert not Path(dst + '.tmp').exists()
    assert len(load_file(dst)) == len(partial)
