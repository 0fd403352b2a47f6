"""tools/benchmark.py: same weights in every implementation, interleaved
timing rows, ratios computed from the medians, peak-memory children."""
import importlib.util
import json
import os
import statistics

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
