"""Config security: a data config (YAML/JSON) never runs code, whatever
its ``_base_`` chain holds, through ``load_config`` and through every tool
that reads configs. Each payload would write a marker file if it ran; the
tests assert the marker is never written (and, where the user opts in,
that it is, so the payload is live)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml
from mmengine.config import Config
from mmengine.fileio.handlers.yaml_handler import YamlHandler

from mmbackbone.engine import UnsafeConfigError, load_config
from mmbackbone.engine import config as config_module

ROOT = Path(__file__).resolve().parents[1]


def _tool(name):
    spec = importlib.util.spec_from_file_location(
        f'security_{name}', ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def readers():
    """Every entry that reads a config file: name -> function(path,
    allow_python_bases)."""
    from mmbackbone.cli import _backbone_from_config
    benchmark = _tool('benchmark')
    torchscript = _tool('build_torchscript_backbone')
    return {
        'load_config': lambda p, allow=False: load_config(
            p, allow_python_bases=allow),
        'mmbackbone convert': _backbone_from_config,
        'tools/benchmark.py': benchmark.parse_config,
        'tools/build_torchscript_backbone.py':
            torchscript._backbone_cfg_from_file,
    }


def _tag(marker):
    return (f'model: !!python/object/apply:builtins.open '
            f'["{marker}", "w"]\n')


def _write(path, text):
    path.write_text(text)
    return path


def _assert_refused(reader, path, marker, error=UnsafeConfigError,
                    match=None):
    with pytest.raises(error) as info:
        reader(path)
    text = str(info.value)
    assert str(path.parent) in text or path.name in text, text
    if match:
        assert match in text, text
    assert not marker.exists(), f'{marker} was written'
    return text


def test_security_json_base_with_yaml_tag_never_runs(tmp_path, readers):
    marker = tmp_path / 'ran'
    _write(tmp_path / 'evil.yaml', _tag(marker))
    top = _write(tmp_path / 'top.json',
                 json.dumps({'_base_': 'evil.yaml', 'x': 1}))
    for reader in readers.values():
        text = _assert_refused(reader, top, marker,
                               match='python/object/apply:builtins.open')
        assert 'evil.yaml' in text and 'top.json' in text  # chain named


def test_security_yaml_python_base_needs_the_opt_in(tmp_path, readers):
    marker = tmp_path / 'ran'
    _write(tmp_path / 'code.py', f"open({str(marker)!r}, 'w').close()\n"
           "model = dict(type='ResNet', depth=18)\n")
    for suffix in ('.yaml', '.json'):
        top = tmp_path / f'top{suffix}'
        top.write_text(json.dumps({'_base_': ['code.py'], 'y': 2}))
        for name, reader in readers.items():
            text = _assert_refused(reader, top, marker, match="'code.py'")
            assert 'allow_python_bases=True' in text and \
                '--allow-python-bases' in text, (name, text)
    # opting in runs the trusted file and merges it
    cfg = load_config(tmp_path / 'top.yaml', allow_python_bases=True)
    assert marker.exists() and cfg.model.depth == 18 and cfg.y == 2
    marker.unlink()
    for name, reader in readers.items():
        if name != 'load_config':
            assert reader(str(tmp_path / 'top.json'), True)
            assert marker.exists(), name
            marker.unlink()


def test_security_python_config_reads_its_data_bases_safely(tmp_path,
                                                           readers):
    marker = tmp_path / 'ran'
    _write(tmp_path / 'evil.yaml', _tag(marker))
    _write(tmp_path / 'mid.json', json.dumps({'_base_': 'evil.yaml'}))
    for base in ('evil.yaml', 'mid.json'):
        top = _write(tmp_path / 'top.py', f"_base_ = [{base!r}]\n"
                     "model = dict(type='ResNet', depth=18)\n")
        for reader in readers.values():
            _assert_refused(reader, top, marker,
                            match='python/object/apply:builtins.open')
    # a data base of a Python config follows the data rules: no .py base
    _write(tmp_path / 'code.py', f"open({str(marker)!r}, 'w').close()\n")
    _write(tmp_path / 'data.yaml', '_base_: code.py\n')
    top = _write(tmp_path / 'top.py', "_base_ = ['data.yaml']\n")
    _assert_refused(readers['load_config'], top, marker,
                    match='allow_python_bases')
    # mmengine's own reader is left as it was
    assert Config.__dict__['_file2dict'].__func__.__module__ == \
        'mmengine.config.config'
    assert YamlHandler.load_from_fileobj.__module__ == \
        'mmengine.fileio.handlers.yaml_handler'


def test_security_python_config_with_data_bases_still_loads(tmp_path):
    _write(tmp_path / 'a.yaml', 'model: {type: ResNet, depth: 18}\n')
    _write(tmp_path / 'b.json', json.dumps({'_base_': 'a.yaml',
                                            'train': {'epochs': 2}}))
    top = _write(tmp_path / 'top.py', "_base_ = ['b.json']\n"
                 "model = dict(depth=34)\nlr = 0.1\n")
    cfg = load_config(top, {'train.epochs': 3})
    assert cfg.model == dict(type='ResNet', depth=34)
    assert cfg.train.epochs == 3 and cfg.lr == 0.1


@pytest.fixture
def marker_module(tmp_path, monkeypatch):
    """A module that writes a marker file when imported."""
    marker = tmp_path / 'imported'
    name = f'cfg_security_marker_{abs(hash(str(tmp_path)))}'
    (tmp_path / f'{name}.py').write_text(
        f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, marker
    sys.modules.pop(name, None)


def test_security_custom_imports_refused_in_every_data_file(
        tmp_path, readers, marker_module):
    name, marker = marker_module
    imports = {'custom_imports': {'imports': [name]}}
    _write(tmp_path / 'ci.json', json.dumps(imports))
    _write(tmp_path / 'ci.yaml', yaml.safe_dump(imports))
    _write(tmp_path / 'child.yaml', '_base_: ci.json\n')
    _write(tmp_path / 'child.json', json.dumps({'_base_': 'ci.yaml'}))
    _write(tmp_path / 'top.py', "_base_ = ['ci.json']\n")
    for top in ('ci.json', 'ci.yaml', 'child.yaml', 'child.json', 'top.py'):
        for reader in readers.values():
            _assert_refused(reader, tmp_path / top, marker,
                            match='custom_imports is not supported')


def test_security_cfg_options_are_data(tmp_path, marker_module):
    name, marker = marker_module
    cfg = _write(tmp_path / 'c.yaml', 'a: 1\n')
    for key in ('custom_imports', 'custom_imports.imports', '_base_'):
        with pytest.raises(UnsafeConfigError, match=f"'{key}'.*c.yaml|"
                           f"c.yaml.*'{key}'"):
            load_config(cfg, {key: [name]})
    with pytest.raises(TypeError, match=r"cfg_options 'a'.*object"):
        load_config(cfg, {'a': object()})
    with pytest.raises(UnsafeConfigError, match='nested more than'):
        deep = []
        for _ in range(200):
            deep = [deep]
        load_config(cfg, {'a': deep})
    assert load_config(cfg, {'a': (1, 2)}).a == [1, 2]
    assert not marker.exists()


@pytest.mark.parametrize('suffix', ['.json', '.yaml'])
def test_security_deep_nesting_is_a_named_error(tmp_path, suffix):
    for depth in (150, 50_000):
        path = _write(tmp_path / f'deep{suffix}',
                      '{"a": ' + '[' * depth + ']' * depth + '}')
        with pytest.raises(UnsafeConfigError, match=f'deep{suffix}.*nested'):
            load_config(path)
    _write(tmp_path / 'top.py', f"_base_ = ['deep{suffix}']\n")
    with pytest.raises(UnsafeConfigError, match='nested'):
        load_config(tmp_path / 'top.py')


def test_security_yaml_aliases_cannot_multiply(tmp_path):
    lines = ['a0: &a0 [x, x, x, x, x, x, x, x, x, x]']
    for i in range(1, 8):  # 10**8 values when expanded
        lines.append(f'a{i}: &a{i} [' + ', '.join([f'*a{i - 1}'] * 10) + ']')
    path = _write(tmp_path / 'laughs.yaml', '\n'.join(lines) + '\n')
    with pytest.raises(UnsafeConfigError, match='laughs.yaml.*more than '
                       '1,000,000 values'):
        load_config(path)
    _write(tmp_path / 'cycle.yaml', 'a: &a [*a]\n')
    with pytest.raises(UnsafeConfigError, match='cycle.yaml.*nested'):
        load_config(tmp_path / 'cycle.yaml')


def test_security_base_chain_errors(tmp_path):
    _write(tmp_path / 'pkg.yaml', '_base_: mmdet::retinanet.py\n')
    with pytest.raises(ValueError, match=r"pkg.yaml.*'mmdet::retinanet.py'.*"
                       'Python config'):
        load_config(tmp_path / 'pkg.yaml', allow_python_bases=True)
    _write(tmp_path / 'x.txt', 'a: 1\n')
    _write(tmp_path / 'txt.json', '{"_base_": "x.txt"}')
    with pytest.raises(ValueError, match="txt.json.*'x.txt' is not a "
                       'config file'):
        load_config(tmp_path / 'txt.json')
    _write(tmp_path / 'txt.py', "_base_ = 'x.txt'\n")
    with pytest.raises(ValueError, match='txt.py.*x.txt is not a config'):
        load_config(tmp_path / 'txt.py')
    _write(tmp_path / 'a.py', "_base_ = ['b.json']\n")
    _write(tmp_path / 'b.json', '{"_base_": "c.py"}')
    _write(tmp_path / 'c.py', "_base_ = ['a.py']\n")
    with pytest.raises(ValueError, match='inheritance loops through .*a.py'
                       ' -> .*b.json -> .*c.py -> .*a.py'):
        load_config(tmp_path / 'a.py', allow_python_bases=True)
    _write(tmp_path / 'self.py', "_base_ = 'self.py'\n")
    with pytest.raises(ValueError, match='loops through'):
        load_config(tmp_path / 'self.py')
    _write(tmp_path / 'reserved.json', '{"filename": 1}')
    with pytest.raises(KeyError, match='reserved.json.*filename'):
        load_config(tmp_path / 'reserved.json')
    _write(tmp_path / 'intkey.yaml', '1: a\n')
    with pytest.raises(ValueError, match='intkey.yaml.*top-level key 1'):
        load_config(tmp_path / 'intkey.yaml')
    _write(tmp_path / 'notutf8.json', b'\xff\xfe{'.decode('latin-1'))
    with pytest.raises(ValueError, match='notutf8.json'):
        load_config(tmp_path / 'notutf8.json')
    _write(tmp_path / 'cfg.toml', 'a = 1\n')
    with pytest.raises(ValueError, match='cfg.toml.*unsupported file type'):
        load_config(tmp_path / 'cfg.toml')
    _write(tmp_path / 'd1.yaml', 'a: 1\n')
    _write(tmp_path / 'd2.json', '{"a": 2}')
    _write(tmp_path / 'dup.py', "_base_ = ['d1.yaml', 'd2.json']\n")
    with pytest.raises(KeyError, match='dup.py.*Duplicate key'):
        load_config(tmp_path / 'dup.py')


def test_security_tools_refuse_dotted_types(tmp_path, readers):
    path = _write(tmp_path / 'dotted.yaml',
                  'model: {type: ImageClassifier, backbone: {type: ResNet, '
                  'depth: 18, norm_cfg: {type: os.system}}}\n')
    for name, reader in readers.items():
        if name == 'load_config':
            continue  # loading is fine; building checks types
        with pytest.raises(ValueError, match=r"dotted.yaml.*norm_cfg.type="
                           r"'os.system' is a dotted path"):
            reader(str(path))


def test_security_cli_convert_flag(tmp_path, capsys):
    from mmbackbone.cli import main
    marker = tmp_path / 'ran'
    _write(tmp_path / 'code.py', f"open({str(marker)!r}, 'w').close()\n")
    cfg = _write(tmp_path / 'c.yaml', '_base_: code.py\n'
                 'model: {type: ResNet, depth: 18}\n')
    code = main(['convert', str(tmp_path / 'missing.pth'),
                 str(tmp_path / 'out.safetensors'), '--config', str(cfg)])
    err = capsys.readouterr().err
    assert code == 1 and '--allow-python-bases' in err and 'c.yaml' in err
    assert not marker.exists()
    code = main(['convert', str(tmp_path / 'missing.pth'),
                 str(tmp_path / 'out.safetensors'), '--config', str(cfg),
                 '--allow-python-bases'])
    assert code == 1 and marker.exists()  # ran; then the checkpoint is absent
    assert 'missing.pth' in capsys.readouterr().err


def test_security_loader_is_thread_contained():
    """The hook is installed only while a Python config is read."""
    assert config_module._ACTIVE == []
