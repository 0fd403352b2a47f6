"""tools/benchmark.py: same weights in every implementation, interleaved
timing rows, ratios computed from the medians, peak-memory children, peers
that cannot be imported reported (not a crash), progress on a terminal."""
import importlib.util
import json
import os
import statistics
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def benchmark():
    spec = importlib.util.spec_from_file_location(
        'mmbackbone_benchmark', os.path.join(ROOT, 'tools', 'benchmark.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resnet18_against_timm_and_torchvision(benchmark, tmp_path):
    out = tmp_path / 'bench.json'
    results = benchmark.main([
        '--config', "dict(type='ResNet', depth=18)", '--timm', 'resnet18',
        '--torchvision', 'resnet18', '--batch', '2', '--size', '64',
        '--threads', '1', '--repeats', '3', '--warmup', '0', '--no-memory',
        '--json', str(out)])
    assert json.loads(out.read_text())['rows'] == json.loads(
        json.dumps(results['rows']))
    rows = {(r['mode'], r['impl']): r for r in results['rows']}
    assert set(rows) == {('infer', 'ours'), ('infer', 'ours-opt'),
                         ('infer', 'timm'), ('infer', 'torchvision'),
                         ('train', 'ours'), ('train', 'timm'),
                         ('train', 'torchvision')}
    # timm's random weights went through our key conversion into ours
    assert rows['infer', 'ours']['weights'] == 'peer (timm)'
    for peer in ('timm', 'torchvision'):
        assert rows['infer', peer]['max_diff'] < 1e-5
    for (mode, impl), row in rows.items():
        assert len(row['times_ms']) == 3 and row['median_ms'] > 0
        if impl in ('timm', 'torchvision'):
            assert row['ratio'] == pytest.approx(
                paired_ratio(rows[mode, 'ours'], row), abs=2e-3)
            assert row['ratio_of'] == f'ours/{impl}'
    opt = rows['infer', 'ours-opt']
    assert opt['ratio'] == pytest.approx(
        paired_ratio(opt, rows['infer', 'timm']), abs=2e-3)


def paired_ratio(row, peer):
    """Median of the per-repetition ratios of two rows."""
    return statistics.median(a / b for a, b in zip(row['times_ms'],
                                                   peer['times_ms']))


def test_memory_child_reports_training_above_inference(benchmark):
    spec = dict(ours=dict(type='ResNet', depth=18), timm='resnet18',
                torchvision=None, timm_kwargs={}, batch=4, size=96,
                threads=1)
    infer = benchmark.memory_child(dict(spec, impl='ours', mode='infer'))
    train = benchmark.memory_child(dict(spec, impl='ours', mode='train'))
    assert infer is not None and train is not None
    assert train > infer > 0


@pytest.mark.parametrize('argv, message', [
    (['--batch', '0'], '--batch must be >= 1'),
    (['--timm', 'resnet18'], '--timm/--torchvision compare a --config'),
    (['--preset', 'resnet51'], "invalid choice: 'resnet51'"),
])
def test_bad_arguments_are_named(benchmark, capsys, argv, message):
    with pytest.raises(SystemExit) as err:
        benchmark.parse_args(argv)
    assert err.value.code == 2
    assert message in capsys.readouterr().err


def test_config_literal_and_file(benchmark, tmp_path):
    assert benchmark.parse_config("dict(type='ResNet', depth=18)") == dict(
        type='ResNet', depth=18)
    path = tmp_path / 'cfg.py'
    path.write_text("model = dict(type='ImageClassifier', "
                    "backbone=dict(type='RegNet', arch='regnetx_400mf'))\n")
    assert benchmark.parse_config(str(path)) == dict(type='RegNet',
                                                     arch='regnetx_400mf')


# ------------------------------------------------------ optional peers
def make_unimportable(root, package, error):
    """A ``package`` on PYTHONPATH whose import raises ``error``."""
    (root / package).mkdir()
    (root / package / '__init__.py').write_text(f'raise {error}\n')


def test_startup_reports_peers_that_cannot_be_imported(benchmark, tmp_path,
                                                       monkeypatch, capsys):
    shim = tmp_path / 'shim'
    shim.mkdir()
    make_unimportable(shim, 'mmpretrain', "ImportError('mmcv is too new')")
    make_unimportable(shim, 'timm', "ModuleNotFoundError(\"No module named "
                      "'timm'\", name='timm')")
    monkeypatch.setenv('PYTHONPATH', str(shim))  # the children see it
    # the peers' real commands; cheap stand-ins for the measured ones
    monkeypatch.setattr(benchmark, 'STARTUP_COMMANDS', dict(
        benchmark.STARTUP_COMMANDS, mmbackbone='import json',
        **{'torch (floor)': 'pass'}))
    out = tmp_path / 'startup.json'
    results = benchmark.main(['--startup', '--startup-runs', '1',
                              '--threads', '1', '--json', str(out)])
    startup = json.loads(out.read_text())['startup']
    assert startup == json.loads(json.dumps(results['startup']))
    assert startup['skipped'] == {
        'mmpretrain': 'mmpretrain not installed (pip install mmpretrain): '
                      'ImportError: mmcv is too new',
        'timm': "timm not installed (pip install timm): ModuleNotFoundError: "
                "No module named 'timm'"}
    assert sorted(startup['median_s']) == ['mmbackbone', 'torch (floor)']
    assert all(len(runs) == 1 for runs in startup['runs_s'].values())
    assert startup['ratio_vs_mmpretrain'] is None
    assert startup['ratio_vs_timm'] is None
    printed = capsys.readouterr().out
    assert 'mmpretrain not installed (pip install mmpretrain)' in printed
    assert 'timm not installed (pip install timm)' in printed


def test_startup_failures_are_named(benchmark):
    args = benchmark.parse_args(['--startup', '--startup-runs', '1',
                                 '--no-progress'])
    result = benchmark.benchmark_startup(args, dict(
        mmbackbone='pass', torchvision="raise RuntimeError('boom')"))
    assert result['skipped'] == {
        'torchvision': 'torchvision failed: RuntimeError: boom'}
    assert list(result['median_s']) == ['mmbackbone']
    with pytest.raises(RuntimeError, match='start-up command mmbackbone'):
        benchmark.benchmark_startup(args, dict(mmbackbone='import sys; '
                                               'sys.exit(3)'))


def test_case_without_timm_and_progress(benchmark, monkeypatch, capsys):
    from mmbackbone import cli
    monkeypatch.setitem(sys.modules, 'timm', None)  # as if not installed
    monkeypatch.setattr(cli, 'stderr_is_terminal', lambda: True)
    argv = ['--config', "dict(type='ResNet', depth=18)", '--timm',
            'resnet18', '--torchvision', 'resnet18', '--batch', '1',
            '--size', '32', '--threads', '1', '--repeats', '2', '--warmup',
            '0', '--modes', 'infer', '--no-memory', '--no-optimized']
    results = benchmark.main(argv)
    rows = {r['impl']: r for r in results['rows']}
    assert sorted(rows) == ['ours', 'timm', 'torchvision']
    assert rows['timm']['note'].startswith(
        'timm not installed (pip install timm): ModuleNotFoundError')
    assert rows['timm']['median_ms'] is None
    # torchvision's weights went into ours instead
    assert rows['ours']['weights'] == 'peer (torchvision)'
    assert rows['torchvision']['max_diff'] < 1e-5
    assert len(rows['torchvision']['times_ms']) == 2
    assert results['env']['timm'].startswith('timm not installed')
    out, err = capsys.readouterr()
    assert 'ResNet infer' in err and 'rep' in err  # the progress bar
    assert 'timm not installed (pip install timm)' in out
    # off with --no-progress, and when stderr is not a terminal
    benchmark.main(argv + ['--no-progress'])
    assert 'ResNet infer' not in capsys.readouterr().err
    monkeypatch.setattr(cli, 'stderr_is_terminal', lambda: False)
    benchmark.main(argv)
    assert 'ResNet infer' not in capsys.readouterr().err
