"""Every registered backbone exports: torch.export, ONNX (opset 17, run by
onnxruntime) and torch.jit.trace, with the eager features within 1e-4.

One case per type: its smallest zoo arch, 64x64 inputs (or the smallest
size its patch grid allows). The exported programs are run on another
input than the one they were traced with, so a value baked into the
graph shows up as a mismatch.
"""
import io

import numpy as np
import onnxruntime as ort
import pytest
import torch

from helpers import randomize_norm_stats
from mmbackbone import build_backbone, list_backbones
from mmbackbone.registry import MODELS

TOL = 1e-4

#: The legacy ONNX exporter and torch.jit.trace announce their retirement;
#: both are still what deployment stacks consume.
pytestmark = [
    pytest.mark.filterwarnings('ignore:You are using the legacy TorchScript'
                               ':DeprecationWarning'),
    pytest.mark.filterwarnings('ignore:The feature will be removed'
                               ':DeprecationWarning'),
    pytest.mark.filterwarnings('ignore:`torch.jit.trace:FutureWarning'),
]


def smallest_arch(type_name):
    cls = MODELS.get(type_name)
    best = None
    for arch, cfg in cls.zoo_configs.items():
        with torch.device('meta'):
            model = build_backbone(dict(type=type_name, **cfg))
        count = sum(p.numel() for p in model.parameters())
        if best is None or count < best[0]:
            best = (count, arch)
    return best[1] if best else None


def export_cases():
    cases = []
    for type_name in list_backbones():
        cls = MODELS.get(type_name)
        if getattr(cls, 'zoo_needs_files', False):
            continue
        arch = smallest_arch(type_name)
        cases.append(pytest.param(type_name, arch, id=f'{type_name}-{arch}'))
    return cases


CASES = export_cases()
_BUILT = {}


def model_and_inputs(type_name, arch):
    """The eval-mode model (random BN stats) and two inputs, cached."""
    if (type_name, arch) not in _BUILT:
        assert arch is not None, f'{type_name} declares no zoo_configs'
        cfg = MODELS.get(type_name).zoo_configs[arch]
        torch.manual_seed(0)
        model = randomize_norm_stats(
            build_backbone(dict(type=type_name, **cfg))).eval()
        size = cfg.get('img_size', 64)
        size = size[0] if isinstance(size, (tuple, list)) else size
        patch = getattr(model, 'patch_size', None)
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        if isinstance(patch, int) and size % patch:
            size = patch * 4
        x = torch.rand(1, 3, size, size)
        other = torch.rand(1, 3, size, size)
        with torch.no_grad():
            want = tuple(model(other))
        _BUILT[(type_name, arch)] = (model, x, other, want)
    return _BUILT[(type_name, arch)]


def assert_close(got, want):
    got = [torch.as_tensor(g) for g in got]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert tuple(g.shape) == tuple(w.shape)
        scale = max(1.0, w.abs().max().item())
        diff = (g.float() - w.float()).abs().max().item()
        assert diff <= TOL * scale, f'max abs diff {diff} (scale {scale})'


@pytest.mark.parametrize('type_name,arch', CASES)
def test_torch_export(type_name, arch):
    model, x, other, want = model_and_inputs(type_name, arch)
    program = torch.export.export(model, (x, ))
    with torch.no_grad():
        got = program.module()(other)
    assert_close(got, want)


@pytest.mark.parametrize('type_name,arch', CASES)
def test_onnx_matches_onnxruntime(type_name, arch):
    model, x, other, want = model_and_inputs(type_name, arch)
    buffer = io.BytesIO()
    names = [f'out{i}' for i in range(len(want))]
    with torch.no_grad():
        torch.onnx.export(model, (x, ), buffer, opset_version=17,
                          dynamo=False, input_names=['input'],
                          output_names=names)
    session = ort.InferenceSession(buffer.getvalue(),
                                   providers=['CPUExecutionProvider'])
    got = session.run(names, {'input': other.numpy()})
    assert all(isinstance(g, np.ndarray) for g in got)
    assert_close(got, want)


@pytest.mark.parametrize('type_name,arch', CASES)
def test_jit_trace(type_name, arch):
    model, x, other, want = model_and_inputs(type_name, arch)
    with torch.no_grad():
        traced = torch.jit.trace(model, (x, ), check_trace=False)
        got = traced(other)
    assert_close(got, want)
