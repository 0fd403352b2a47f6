"""tools/benchmark.py: same weights in every implementation, interleaved
timing rows, ratios computed from the medians, peak-memory children, peers
that cannot be imported reported (not a crash), progress on a terminal;
the optimised rows per dtype with their error, and the compute ceiling
(FLOPs against a hand count, the peak from a fake /proc/cpuinfo)."""
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
                         ('infer', 'ours-opt-bf16'),
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
    for impl, dtype in (('ours-opt', 'fp32'), ('ours-opt-bf16', 'bf16')):
        opt = rows['infer', impl]
        assert opt['dtype'] == dtype and opt['ratio_of'] == f'{impl}/timm'
        for peer in ('timm', 'torchvision'):
            assert opt['ratios'][f'{impl}/{peer}'] == pytest.approx(
                paired_ratio(opt, rows['infer', peer]), abs=2e-3)
        assert opt['ratio'] == opt['ratios'][f'{impl}/timm']
    # the error column: float32 rounding, then bfloat16's 8 bits
    assert rows['infer', 'ours-opt']['max_err'] < 1e-5
    assert 1e-4 < rows['infer', 'ours-opt-bf16']['max_err'] < 2e-2
    assert rows['infer', 'timm']['max_err'] is None
    # GFLOP/s: ResNet-18's forward FLOPs over each median time, and the
    # fraction of the peak of the row's dtype
    peak = results['peak']['gflops']
    flops = 2 * 2 * 1.82e9 * (64 / 224) ** 2  # batch 2, 1.82 GMACs at 224
    for (mode, impl), row in rows.items():
        if mode == 'train':
            assert row['gflops'] is None and row['flops'] is None
            continue
        assert row['flops'] == pytest.approx(flops, rel=0.02)
        assert row['gflops'] == pytest.approx(
            row['flops'] / row['median_ms'] / 1e6, rel=1e-3)
        assert row['peak_fraction'] == pytest.approx(
            row['gflops'] / peak[row['dtype']], rel=1e-2)


def test_dtypes_flag_picks_the_optimised_rows(benchmark):
    results = benchmark.main([
        '--config', "dict(type='ResNet', depth=18)", '--batch', '1',
        '--size', '32', '--threads', '1', '--repeats', '1', '--warmup', '0',
        '--modes', 'infer', '--no-memory', '--no-progress', '--dtypes',
        'bf16'])
    rows = {r['impl']: r for r in results['rows']}
    assert sorted(rows) == ['ours', 'ours-opt-bf16']
    assert rows['ours-opt-bf16']['ratio'] is None  # no peer asked for
    assert rows['ours-opt-bf16']['max_err'] < 2e-2


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
    (['--dtypes', 'int8'], "argument --dtypes: invalid choice: 'int8'"),
    (['--device', 'tpu'], "--device 'tpu' must be 'cpu', 'cuda' or"),
    (['--fma-units', '0'], '--fma-units must be >= 1'),
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


# ------------------------------------------------------ compute ceiling
def test_flops_of_a_tiny_conv_net_match_a_hand_count():
    import torch
    from torch import nn
    from mmbackbone.utils.compute_ceiling import count_forward_flops
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 4, 1, stride=2), nn.Flatten(),
                        nn.Linear(4 * 5 * 5, 10))
    x = torch.rand(2, 3, 10, 10)
    macs = 2 * (8 * 10 * 10 * 3 * 3 * 3  # batch 2 x (3x3 conv to 8x10x10
                + 4 * 5 * 5 * 8           # + 1x1 conv, stride 2, to 4x5x5
                + 100 * 10)               # + linear 100 -> 10)
    assert count_forward_flops(net, x) == 2 * macs  # 2 FLOPs per MAC


ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
cpu MHz\t\t: 2596.140
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512_bf16 avx512_vnni

processor\t: 1
vendor_id\t: SomethingElse
"""

SAPPHIRE_RAPIDS = """vendor_id : GenuineIntel
cpu family : 6
model name : Intel(R) Xeon(R) Platinum 8480+
cpu MHz : 1900.000
flags : sse2 avx fma avx2 avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile
"""


def test_cpu_peak_from_a_fake_cpuinfo(tmp_path):
    from mmbackbone.utils.compute_ceiling import cpu_peak, read_cpu_info
    info = read_cpu_info(ZEN4, cpufreq_dir=str(tmp_path / 'none'))
    assert (info.vendor, info.family, info.mhz) == ('AuthenticAMD', 25,
                                                   2596.14)
    assert info.mhz_source == '/proc/cpuinfo cpu MHz'
    peak = cpu_peak(info, threads=2)
    # 2 threads x 2 FMA units x 8 lanes (256-bit datapath) x 2 x 2.596 GHz
    assert peak.gflops['fp32'] == pytest.approx(2 * 2 * 8 * 2 * 2.59614,
                                                abs=0.05)
    assert peak.gflops['bf16'] == pytest.approx(2 * peak.gflops['fp32'],
                                                abs=0.1)  # vdpbf16ps
    assert peak.gflops['fp16'] == peak.gflops['fp32']  # no AVX512-FP16
    assert any('assumed' in a for a in peak.assumed)
    assert cpu_peak(info, threads=2, fma_units=1).gflops['fp32'] == \
        pytest.approx(peak.gflops['fp32'] / 2, abs=0.1)
    # the cpufreq maximum wins over the current clock when present
    (tmp_path / 'cpufreq').mkdir()
    (tmp_path / 'cpufreq' / 'cpuinfo_max_freq').write_text('3700000\n')
    info = read_cpu_info(SAPPHIRE_RAPIDS, str(tmp_path / 'cpufreq'))
    assert info.mhz == 3700.0 and info.mhz_source.endswith('max_freq')
    peak = cpu_peak(info, threads=1)
    assert peak.gflops['fp32'] == pytest.approx(2 * 16 * 2 * 3.7, abs=0.05)
    assert peak.gflops['bf16'] == pytest.approx(1024 * 3.7, abs=0.05)  # AMX
    assert peak.gflops['fp16'] == pytest.approx(2 * peak.gflops['fp32'],
                                                abs=0.1)
    avx2 = read_cpu_info('cpu MHz : 3000\nflags : avx fma avx2\n', '/x')
    assert cpu_peak(avx2, threads=4).gflops == dict(
        fp32=4 * 2 * 8 * 2 * 3.0, bf16=4 * 2 * 8 * 2 * 3.0,
        fp16=4 * 2 * 8 * 2 * 3.0)
    no_clock = cpu_peak(read_cpu_info('flags : avx2 fma\n', '/x'), 1)
    assert no_clock.gflops['fp32'] is None
    with pytest.raises(ValueError, match='threads=0'):
        cpu_peak(info, threads=0)


@pytest.mark.parametrize('name,key', [
    ('NVIDIA H100 PCIe', 'H100 PCIe'), ('NVIDIA H100 80GB HBM3', 'H100'),
    ('NVIDIA A100-SXM4-80GB', 'A100'), ('NVIDIA A10', 'A10'),
    ('NVIDIA L40S', 'L40S'), ('NVIDIA L4', 'L4'), ('Tesla T4', 'T4'),
    ('NVIDIA H200', 'H200'), ('NVIDIA GeForce GTX 1080', None)])
def test_gpu_peak_is_a_table_lookup(name, key):
    from mmbackbone.utils.compute_ceiling import GPU_PEAK_TFLOPS, gpu_peak
    peak = gpu_peak(name)
    if key is None:
        assert peak.gflops == dict(fp32=None, bf16=None, fp16=None)
        assert peak.formula.startswith('unknown')
    else:
        assert peak.gflops['fp32'] == GPU_PEAK_TFLOPS[key]['fp32'] * 1000
        assert repr(key) in peak.formula


def test_error_column_is_the_relative_error_per_output():
    import torch
    from mmbackbone.deploy_precision import feature_error
    want = (torch.tensor([[1., -4.]]), torch.tensor([2., 0.]))
    got = (torch.tensor([[1.02, -4.]]), torch.tensor([2., 0.1]))
    assert feature_error(got, want) == pytest.approx([0.005, 0.05])
    with pytest.raises(ValueError, match=r'output shape \(2,\) differs'):
        feature_error(torch.ones(2), torch.ones(3))
    with pytest.raises(ValueError, match='1 outputs to compare with 2'):
        feature_error(torch.ones(2), want)
