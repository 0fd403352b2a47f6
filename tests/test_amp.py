"""Mixed precision: mmbackbone's AmpOptimWrapper (bf16 on the CPU) and
tools/train.py --amp."""
import copy
import json
import re
import subprocess
import sys

import pytest
import torch
from mmengine.optim import AmpOptimWrapper as MMEngineAmpOptimWrapper
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope
from torch import nn

from helpers_train import DIGITS_PY, ROOT, load_tool, tiny_options
from mmbackbone.engine import load_config, read_training_checkpoint
from mmbackbone.engine.optim import AmpOptimWrapper
from mmbackbone.engine.runtime import _accelerator_available

train_tool = load_tool('tools/train.py')
cpu_only = pytest.mark.skipif(_accelerator_available(),
                              reason='checks the CPU behaviour')
#: a GradScaler's state as a CUDA fp16 run saves it
GPU_LOSS_SCALER = {'scale': 32768.0, 'growth_factor': 2.0,
                   'backoff_factor': 0.5, 'growth_interval': 2000,
                   '_growth_tracker': 17}


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))


def tiny_batch():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(16, 3, 8, 8, generator=generator)
    labels = torch.arange(16) % 4
    images += labels.view(-1, 1, 1, 1).float()  # learnable: class = level
    return images, labels


def build_wrapper(model: nn.Module, **kwargs) -> AmpOptimWrapper:
    """Through the registry, as a config in our scope builds it."""
    cfg = dict(type='AmpOptimWrapper',
               optimizer=dict(type='SGD', lr=0.05, momentum=0.9), **kwargs)
    with DefaultScope.overwrite_default_scope('mmbackbone'):
        return build_optim_wrapper(model, cfg)


def train_steps(model, wrapper, steps: int):
    images, labels = tiny_batch()
    losses = []
    for _ in range(steps):
        with wrapper.optim_context(model):
            loss = nn.functional.cross_entropy(model(images), labels)
        wrapper.update_params(loss)
        losses.append(loss.item())
    return losses


@cpu_only
def test_cpu_wrapper_autocasts_to_bf16_and_keeps_fp32_state():
    model = tiny_net()
    wrapper = build_wrapper(model)
    assert type(wrapper) is AmpOptimWrapper
    assert wrapper.device_type == 'cpu'
    assert wrapper.cast_dtype == torch.bfloat16
    assert not wrapper.scales_loss
    seen = {}
    for name in ('0', '4'):  # the conv and the linear layer
        model.get_submodule(name).register_forward_hook(
            lambda m, i, out, name=name: seen.__setitem__(name, out.dtype))
    images, labels = tiny_batch()
    with wrapper.optim_context(model):
        loss = nn.functional.cross_entropy(model(images), labels)
    assert seen == {'0': torch.bfloat16, '4': torch.bfloat16}
    wrapper.backward(loss)
    assert {p.grad.dtype for p in model.parameters()} == {torch.float32}
    wrapper.step()
    wrapper.zero_grad()
    with torch.no_grad():  # outside the context: float32 again
        model(images)
    assert seen == {'0': torch.float32, '4': torch.float32}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    momenta = [s['momentum_buffer'] for s in
               wrapper.optimizer.state_dict()['state'].values()]
    assert len(momenta) == 4 and {m.dtype for m in momenta} == {
        torch.float32}


@cpu_only
def test_cpu_bf16_training_lowers_the_loss():
    model = tiny_net()
    losses = train_steps(model, build_wrapper(model), 30)
    assert losses[-1] < 0.5 * losses[0], losses
    # and it follows a float32 run of the same steps closely
    reference = tiny_net()
    with DefaultScope.overwrite_default_scope('mmbackbone'):
        fp32 = build_optim_wrapper(reference, dict(
            type='OptimWrapper',
            optimizer=dict(type='SGD', lr=0.05, momentum=0.9)))
    fp32_losses = train_steps(reference, fp32, 30)
    assert losses[-1] == pytest.approx(fp32_losses[-1], rel=0.2, abs=0.02)


@cpu_only
def test_gradient_clipping_and_accumulation_work_on_cpu():
    model = tiny_net()
    wrapper = build_wrapper(model, clip_grad=dict(max_norm=0.01),
                            accumulative_counts=2)
    before = [p.detach().clone() for p in model.parameters()]
    train_steps(model, wrapper, 1)  # first of two accumulated steps
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    train_steps(model, wrapper, 1)
    step = torch.cat([(p.detach() - a).flatten()
                      for a, p in zip(before, model.parameters())])
    # SGD's first step is lr * clipped gradient: norm <= lr * max_norm
    assert 0 < step.norm() <= 0.05 * 0.01 * 1.01


@cpu_only
def test_state_dict_round_trip_and_the_gpu_format():
    model = tiny_net()
    wrapper = build_wrapper(model)
    train_steps(model, wrapper, 3)
    state = wrapper.state_dict()
    assert 'loss_scaler' not in state  # no scaler on the CPU
    assert set(state) == {'state', 'param_groups'}

    def resumed(saved):
        net = tiny_net()
        net.load_state_dict(model.state_dict())
        fresh = build_wrapper(net)
        fresh.load_state_dict(copy.deepcopy(saved))  # as if from a file
        return net, fresh

    net, fresh = resumed(state)
    gpu_net, gpu_fresh = resumed({**state, 'loss_scaler': GPU_LOSS_SCALER})
    train_steps(model, wrapper, 2)
    for other, opt in ((net, fresh), (gpu_net, gpu_fresh)):
        train_steps(other, opt, 2)
        for a, b in zip(model.parameters(), other.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a CPU state loads into mmengine's wrapper (as on a GPU): its
    # load_state_dict, run here without its GPU-only __init__
    target = tiny_net()
    theirs = MMEngineAmpOptimWrapper.__new__(MMEngineAmpOptimWrapper)
    theirs.optimizer = torch.optim.SGD(target.parameters(), lr=0.05,
                                       momentum=0.9)
    MMEngineAmpOptimWrapper.load_state_dict(theirs, wrapper.state_dict())
    torch.testing.assert_close(
        theirs.optimizer.state_dict()['state'][0]['momentum_buffer'],
        wrapper.optimizer.state_dict()['state'][0]['momentum_buffer'])


@cpu_only
@pytest.mark.parametrize('dtype', ['float16', torch.float16, 'float32',
                                   'fp16'])
def test_other_dtypes_on_cpu_are_refused_naming_bf16(dtype):
    with pytest.raises(ValueError, match=re.escape(
            f"AmpOptimWrapper(dtype={dtype!r}) on the CPU: mixed precision "
            f"on the CPU is bfloat16 (dtype='bfloat16' or None)")):
        build_wrapper(tiny_net(), dtype=dtype)


@cpu_only
def test_cpu_only_options():
    with pytest.raises(ValueError, match='use_fsdp=True.*needs a GPU'):
        build_wrapper(tiny_net(), use_fsdp=True)
    # a loss scale has no use in bf16: ignored, the wrapper still builds
    wrapper = build_wrapper(tiny_net(), loss_scale=512.0, dtype='bfloat16')
    assert wrapper.loss_scaler.get_scale() == 1.0 and not wrapper.scales_loss


def run_python(code: str) -> dict:
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=300, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_registry_lookups_from_our_scope_and_from_mmdet():
    with DefaultScope.overwrite_default_scope('mmbackbone'):
        from mmbackbone.registry import OPTIM_WRAPPERS
        assert OPTIM_WRAPPERS.get('AmpOptimWrapper') is AmpOptimWrapper
        assert OPTIM_WRAPPERS.get('mmbackbone.AmpOptimWrapper') is \
            AmpOptimWrapper
        assert OPTIM_WRAPPERS.get('mmengine.AmpOptimWrapper') is \
            MMEngineAmpOptimWrapper


def test_mmdet_config_finds_ours_after_custom_imports():
    """What an mmdet config does: custom_imports=['mmbackbone'] only, then
    ``type='mmbackbone.AmpOptimWrapper'`` in mmdet's scope."""
    pytest.importorskip('mmdet')
    found = run_python(
        'import json\n'
        'from mmengine.utils import import_modules_from_strings\n'
        "import_modules_from_strings(['mmbackbone', 'mmbackbone.mmcv_ops'])\n"
        'from mmengine.registry import DefaultScope\n'
        'from mmdet.registry import OPTIM_WRAPPERS\n'
        "with DefaultScope.overwrite_default_scope('mmdet'):\n"
        "    cls = OPTIM_WRAPPERS.get('mmbackbone.AmpOptimWrapper')\n"
        'print(json.dumps(cls.__module__))')
    assert found == 'mmbackbone.engine.optim.amp'


def amp_config(*flags, options=()):
    args = train_tool.parse_args([str(DIGITS_PY), *flags, *options])
    return train_tool.build_config(args).optim_wrapper


@cpu_only
@pytest.mark.parametrize('flags', [['--amp'], ['--amp', 'bf16'],
                                   ['--amp', 'auto']])
def test_train_amp_flag_on_cpu_selects_bf16(flags):
    wrapper_cfg = amp_config(*flags)
    assert wrapper_cfg.type == 'AmpOptimWrapper'
    assert wrapper_cfg.dtype == 'bfloat16'
    from mmbackbone.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmbackbone'):
        model = MODELS.build(load_config(DIGITS_PY).model)
        built = build_optim_wrapper(model, wrapper_cfg)
    assert type(built) is AmpOptimWrapper and built.cast_dtype == \
        torch.bfloat16
    assert type(built.optimizer).__name__ == 'SGD'


def test_train_amp_flag_value_is_checked():
    with pytest.raises(SystemExit):
        train_tool.parse_args([str(DIGITS_PY), '--amp', 'float8'])
    assert train_tool.parse_args([str(DIGITS_PY)]).amp is None


@cpu_only
def test_train_refuses_what_the_cpu_cannot_train_before_running(tmp_path):
    work_dir = tmp_path / 'work'
    with pytest.raises(SystemExit, match='--amp fp16 needs a GPU.*--amp '
                       'bf16'):
        amp_config('--amp', 'fp16')
    with pytest.raises(SystemExit, match="'mmengine.AmpOptimWrapper' needs "
                       "a GPU.*type='AmpOptimWrapper'"):
        train_tool.main([str(DIGITS_PY), '--work-dir', str(work_dir),
                         '--cfg-options',
                         'optim_wrapper.type=mmengine.AmpOptimWrapper'])
    with pytest.raises(SystemExit, match=r"dtype='float16'\) on the CPU"):
        amp_config(options=['--cfg-options',
                            'optim_wrapper.type=AmpOptimWrapper',
                            'optim_wrapper.dtype=float16'])
    with pytest.raises(SystemExit, match="this config has "
                       "'OptimWrapperDict'"):
        amp_config('--amp', options=['--cfg-options',
                                     'optim_wrapper.type=OptimWrapperDict'])
    assert not work_dir.exists()
    # the config's own mmengine.AmpOptimWrapper is replaced by --amp
    assert amp_config('--amp', options=[
        '--cfg-options', 'optim_wrapper.type=mmengine.AmpOptimWrapper'
    ]).type == 'AmpOptimWrapper'


@cpu_only
def test_bf16_run_resumes_to_the_same_end(tmp_path, capsys):
    """A 2-epoch bf16 run, and the same run resumed from its first epoch,
    once as saved on the CPU and once with a GPU run's loss scaler."""
    options = [*tiny_options(epochs=2, train=64, val=32, batch=32,
                             augment=False)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float sums in every run
    try:
        straight = train_tool.main([str(DIGITS_PY), '--amp', 'bf16',
                                    '--work-dir', str(tmp_path / 'straight'),
                                    *options])
        first = tmp_path / 'straight' / 'epoch_1.pth'
        saved = read_training_checkpoint(str(first))
        assert 'loss_scaler' not in saved['optimizer']
        gpu_made = tmp_path / 'gpu_epoch_1.pth'
        saved['optimizer']['loss_scaler'] = dict(GPU_LOSS_SCALER)
        torch.save(saved, gpu_made)
        resumed = [
            train_tool.main([str(DIGITS_PY), '--amp', 'bf16', '--work-dir',
                             str(tmp_path / name), '--resume', str(ckpt),
                             *options])
            for name, ckpt in (('resumed', first), ('from_gpu', gpu_made))]
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert out.count('Precision: mixed precision: bfloat16 autocast on '
                     'cpu, no loss scaling') == 3
    loss = straight.message_hub.get_scalar('train/loss').current()
    for runner in resumed:
        assert runner.epoch == 2 and type(runner.optim_wrapper) is \
            AmpOptimWrapper
        assert runner.message_hub.get_scalar('train/loss').current() == \
            pytest.approx(loss, rel=1e-4)
        for a, b in zip(straight.model.parameters(),
                        runner.model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
