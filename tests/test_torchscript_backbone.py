"""TorchScriptBackbone and tools/build_torchscript_backbone.py."""
import importlib.util
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from mmbackbone import build_backbone
from mmbackbone.models import TIMMBackbone, TorchScriptBackbone
from mmbackbone.models.backbones.torchscript_backbone import (
    quiet_jit_deprecation)
from helpers import randomize_norm_stats

TOOL = Path(__file__).resolve().parents[1] / 'tools' / \
    'build_torchscript_backbone.py'


def load_tool():
    spec = importlib.util.spec_from_file_location('build_torchscript', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_script(module, path):
    with quiet_jit_deprecation():
        torch.jit.save(torch.jit.script(module), str(path))
    return str(path)


@pytest.fixture(scope='module')
def resnet18_jit(tmp_path_factory):
    """ResNet-18 (ours) -> checkpoint -> config -> tool -> .pt file."""
    root = tmp_path_factory.mktemp('jit')
    torch.manual_seed(0)
    source = build_backbone(dict(type='ResNet', depth=18))
    source.init_weights()
    randomize_norm_stats(source)
    ckpt = root / 'r18.pth'
    torch.save({'state_dict': {'backbone.' + k: v for k, v in
                               source.state_dict().items()}}, ckpt)
    cfg = root / 'r18_cls.py'
    cfg.write_text("model = dict(type='ImageClassifier', backbone=dict("
                   "type='ResNet', depth=18, out_indices=(3, )))\n")
    out = root / 'r18.pt'
    return cfg, ckpt, out, source.eval()


@pytest.fixture(scope='module')
def timm_jit(tmp_path_factory):
    """timm resnet18 (pooled features) through the tool."""
    root = tmp_path_factory.mktemp('jit_timm')
    torch.manual_seed(0)
    raw = randomize_norm_stats(timm.create_model('resnet18'))
    ckpt = root / 'timm_r18.pth'
    torch.save(raw.state_dict(), ckpt)
    out = root / 'timm_r18.pt'
    code = load_tool().main(['resnet18', str(out), '--checkpoint', str(ckpt),
                             '--input-size', '64', '64'])
    assert code == 0
    return out, ckpt


def test_tool_resnet18_config_round_trip(resnet18_jit, capsys):
    cfg, ckpt, out, source = resnet18_jit
    tool = load_tool()
    assert tool.main([str(cfg), str(out), '--input-size', '64', '64',
                      '--checkpoint', str(ckpt), '--prefix', 'backbone']) == 0
    printed = capsys.readouterr().out
    assert 'nr_features: 512' in printed
    model = TorchScriptBackbone(str(out)).eval()
    assert model.out_channels == (512, )
    assert model.out_strides == (32, )  # read from the dry run
    for shape in [(2, 3, 64, 64), (3, 3, 96, 96)]:
        x = torch.rand(*shape)
        with torch.no_grad():
            (got, ), (want, ) = model(x), source(x)
        assert_close(got, want, atol=1e-5, rtol=0)


def test_tool_timm_model_round_trip(timm_jit):
    out, ckpt = timm_jit
    peer = TIMMBackbone('resnet18', features_only=False, pooled=True,
                        checkpoint_path=str(ckpt)).eval()
    model = TorchScriptBackbone(str(out)).eval()
    assert model.out_channels == (512, ) and model.out_strides == (None, )
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        (got, ), (want, ) = model(x), peer(x)
    assert got.shape == (2, 512)
    assert_close(got, want, atol=1e-5, rtol=0)


def test_input_size_resizes_bilinear(timm_jit):
    out, ckpt = timm_jit
    peer = TIMMBackbone('resnet18', features_only=False, pooled=True,
                        checkpoint_path=str(ckpt)).eval()
    model = TorchScriptBackbone(str(out), input_size=(64, 64)).eval()
    x = torch.rand(2, 3, 96, 80)
    with torch.no_grad():
        (got, ) = model(x)
        (want, ) = peer(F.interpolate(x, size=(64, 64), mode='bilinear',
                                      align_corners=False))
    assert_close(got, want, atol=1e-5, rtol=0)
    # an input already at input_size is passed through untouched
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert_close(model(x)[0], peer(x)[0], atol=1e-5, rtol=0)


def test_tool_registered_type_with_embedded_resize(tmp_path):
    out = tmp_path / 'embedded.pt'
    info = load_tool().build_torchscript('ResNet:resnet18', str(out),
                                         input_size=(64, 64),
                                         embed_resize=True)
    assert info['nr_features'] == 512 and info['max_abs_diff'] <= 1e-5
    model = TorchScriptBackbone(str(out)).eval()
    assert model(torch.rand(1, 3, 128, 96))[0].shape == (1, 512, 2, 2)


def test_tool_errors(tmp_path):
    tool = load_tool()
    with pytest.raises(KeyError, match="Did you mean.*'resnet18'"):
        tool.main(['resnet81', str(tmp_path / 'x.pt')])
    with pytest.raises(KeyError, match="no zoo arch 'resnet19'"):
        tool.main(['ResNet:resnet19', str(tmp_path / 'x.pt')])
    cfg = tmp_path / 'no_backbone.py'
    cfg.write_text('optimizer = dict(type="SGD")\n')
    with pytest.raises(KeyError, match='has no backbone'):
        tool.main([str(cfg), str(tmp_path / 'x.pt')])


def test_yaml_style_config_mapping(timm_jit):
    """architecture: jit / path / nr_features / backbone_trainable: False /
    input_size  ->  the constructor arguments."""
    out, _ = timm_jit
    model = build_backbone(dict(type='TorchScriptBackbone', path=str(out),
                                nr_features=512, frozen=True,
                                input_size=[128, 128]))
    assert model.frozen_stages == 'all'
    assert model.out_channels == (512, ) and model.out_features == 512
    assert model.train() is model
    assert all(not p.requires_grad for p in model.parameters())
    assert all(not m.training for m in model.modules())
    assert model(torch.rand(1, 3, 64, 64))[0].shape == (1, 512)


class TinyNet(nn.Module):

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(6)

    def features(self, x):
        return torch.relu(self.bn(self.conv(x)))

    def forward(self, x):
        return self.features(x)


class TupleNet(TinyNet):

    def forward(self, x):
        y = self.features(x)
        return y, y.mean(dim=(2, 3))


class DictNet(TinyNet):

    def forward(self, x):
        return {'out': self.features(x)}


class FixedSizeNet(TinyNet):

    def forward(self, x):
        if x.shape[-1] != 48:
            raise ValueError('needs 48x48 inputs')
        return self.features(x)


def test_frozen_keeps_scripted_norms_in_eval(tmp_path):
    torch.manual_seed(0)
    net = randomize_norm_stats(TinyNet())
    path = save_script(net, tmp_path / 'tiny.pt')
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        reference = net.eval()(x)
    frozen = TorchScriptBackbone(path, frozen=True).train()
    assert not frozen.model.training and not frozen.model.bn.training
    assert all(not p.requires_grad for p in frozen.parameters())
    with torch.no_grad():
        assert_close(frozen(x)[0], reference)  # running stats, not batch
    trainable = TorchScriptBackbone(path).train()
    assert trainable.model.bn.training
    out = trainable(x)[0]
    assert not torch.allclose(out, reference)
    out.mean().backward()
    assert all(p.grad is not None for p in trainable.parameters())


def test_outputs_channels_and_strides(tmp_path):
    torch.manual_seed(0)
    maps = TorchScriptBackbone(save_script(TinyNet(), tmp_path / 'maps.pt'))
    assert maps.out_channels == (6, ) and maps.out_strides == (2, )
    pair = TorchScriptBackbone(save_script(TupleNet(), tmp_path / 'pair.pt'))
    assert pair.out_channels == (6, ) and pair.out_strides == (None, )
    assert pair(torch.rand(2, 3, 16, 16))[0].shape == (2, 6)  # last element
    given = TorchScriptBackbone(str(tmp_path / 'maps.pt'), out_channels=6)
    assert given.out_channels == (6, ) and given.out_strides == (None, )
    resized = TorchScriptBackbone(str(tmp_path / 'maps.pt'), input_size=24)
    assert resized.input_size == (24, 24)
    assert resized(torch.rand(1, 3, 50, 40))[0].shape == (1, 6, 12, 12)


def test_dry_run_failures_ask_for_nr_features(tmp_path):
    path = save_script(FixedSizeNet(), tmp_path / 'fixed.pt')
    with pytest.raises(ValueError, match=r'fixed\.pt.*needs 48x48 inputs'
                       r'.*give nr_features'):
        TorchScriptBackbone(path)
    model = TorchScriptBackbone(path, nr_features=6, input_size=(48, 48))
    assert model(torch.rand(1, 3, 64, 64))[0].shape == (1, 6, 24, 24)
    assert TorchScriptBackbone(path, input_size=48).out_channels == (6, )
    with pytest.raises(TypeError, match=r'dict\.pt returns dict'):
        TorchScriptBackbone(save_script(DictNet(), tmp_path / 'dict.pt'))


def test_argument_errors(tmp_path):
    path = save_script(TinyNet(), tmp_path / 'tiny.pt')
    with pytest.raises(ValueError, match='nr_features=6 and out_channels=8'):
        TorchScriptBackbone(path, nr_features=6, out_channels=8)
    with pytest.raises(ValueError, match='nr_features=0'):
        TorchScriptBackbone(path, nr_features=0)
    with pytest.raises(ValueError, match=r'input_size=\(0, 4\)'):
        TorchScriptBackbone(path, input_size=(0, 4))
    with pytest.raises(TypeError, match="frozen='yes'"):
        TorchScriptBackbone(path, frozen='yes')


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'missing\.pt does not'):
        TorchScriptBackbone(str(tmp_path / 'missing.pt'))
    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'\x00not torchscript\xff' * 10)
    with pytest.raises(ValueError, match=r'garbage\.pt is not a TorchScript'):
        TorchScriptBackbone(str(garbage))
    state = tmp_path / 'state_dict.pth'
    torch.save(TinyNet().state_dict(), state)
    with pytest.raises(ValueError, match=r'state_dict\.pth is not a '
                       r'TorchScript'):
        build_backbone(dict(type='TorchScriptBackbone', path=str(state)))


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
@pytest.mark.filterwarnings('ignore::FutureWarning')
def test_trace_and_onnx_export(tmp_path):
    """A TorchScript file wrapped by TorchScriptBackbone still deploys:
    torch.jit.trace gives its features, and the traced module exports to
    ONNX (run by onnxruntime). The legacy ONNX exporter cannot take the
    eager wrapper itself: it traces with a module map that a loaded
    ScriptModule child is not part of.

    The file is written by another process, as users get them: a module
    scripted in this process would share its TorchScript class with the
    loaded one, which confuses the tracer.
    """
    import io
    import subprocess
    import sys

    import onnxruntime as ort
    path = tmp_path / 'r18.pt'
    subprocess.run([sys.executable, str(TOOL), 'ResNet:resnet18', str(path),
                    '--input-size', '64', '64'], check=True,
                   capture_output=True)
    model = TorchScriptBackbone(str(path)).eval()
    x, other = torch.rand(1, 3, 64, 64), torch.rand(2, 3, 96, 64)
    with torch.no_grad():
        want = model(other)[0]
        traced = torch.jit.trace(model, (x, ), strict=False)
        assert_close(traced(other)[0], want, atol=1e-4, rtol=0)
    buffer = io.BytesIO()
    torch.onnx.export(traced, (x, ), buffer, dynamo=False, opset_version=17,
                      input_names=['x'],
                      dynamic_axes={'x': {0: 'n', 2: 'h', 3: 'w'}})
    session = ort.InferenceSession(buffer.getvalue(),
                                   providers=['CPUExecutionProvider'])
    (got, ) = session.run(None, {'x': other.numpy()})
    assert_close(torch.from_numpy(got), want, atol=1e-4, rtol=0)


class MarkerNet(TinyNet):
    """A program whose forward writes a file: what a hostile one can do."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def forward(self, x):
        torch.save(x, self.marker)
        return self.features(x)


def test_given_nr_features_does_not_run_the_program_at_build(tmp_path):
    marker = tmp_path / 'written_by_forward.pt'
    path = save_script(MarkerNet(str(marker)), tmp_path / 'marker.pt')
    model = TorchScriptBackbone(path, nr_features=6, out_stride=2)
    assert not marker.exists()  # built without running the forward
    assert model.out_channels == (6, ) and model.out_strides == (2, )
    assert model.out_features == 6
    model(torch.rand(1, 3, 8, 8))
    assert marker.exists()  # the program does write when it runs
    marker.unlink()
    built = build_backbone(dict(type='TorchScriptBackbone', path=path,
                                out_channels=6))
    assert not marker.exists() and built.out_strides == (None, )
    TorchScriptBackbone(path)  # no nr_features: the dry run runs it
    assert marker.exists()


def test_given_nr_features_is_checked_on_first_forward(tmp_path):
    path = save_script(TinyNet(), tmp_path / 'tiny.pt')
    model = TorchScriptBackbone(path, nr_features=7)
    with pytest.raises(ValueError, match=r'tiny\.pt returns 6 channels.*'
                       r'nr_features=7; set nr_features=6'):
        model(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match='out_stride=4 but the dry run'):
        TorchScriptBackbone(path, out_stride=4)
    assert TorchScriptBackbone(path, out_stride=2).out_strides == (2, )
    with pytest.raises(ValueError, match='out_stride=0'):
        TorchScriptBackbone(path, nr_features=6, out_stride=0)


def test_frozen_stages_all_or_nothing(tmp_path):
    path = save_script(TinyNet(), tmp_path / 'tiny.pt')
    frozen = TorchScriptBackbone(path, nr_features=6, frozen_stages='all')
    assert frozen.frozen_stages == 'all' and frozen.frozen
    frozen.train()
    assert not frozen.model.training and not frozen.model.conv.training
    assert all(not p.requires_grad for p in frozen.parameters())
    alias = TorchScriptBackbone(path, nr_features=6, frozen=True)
    assert alias.frozen_stages == 'all'
    trainable = TorchScriptBackbone(path, nr_features=6, frozen_stages=-1)
    assert all(p.requires_grad for p in trainable.train().parameters())
    for stages in (0, 1, 3):
        with pytest.raises(ValueError, match=rf"frozen_stages={stages}: .*"
                           r"valid values are -1 .* and 'all'"):
            TorchScriptBackbone(path, nr_features=6, frozen_stages=stages)
    for stages in (1.0, True, 'some'):
        with pytest.raises(TypeError, match=rf'frozen_stages={stages!r}'):
            TorchScriptBackbone(path, nr_features=6, frozen_stages=stages)
    with pytest.raises(ValueError, match=r'frozen=True and frozen_stages=2 '
                       r'disagree'):
        TorchScriptBackbone(path, nr_features=6, frozen=True, frozen_stages=2)


def test_norm_eval_reaches_scripted_norms(tmp_path):
    torch.manual_seed(0)
    net = randomize_norm_stats(TinyNet())
    path = save_script(net, tmp_path / 'tiny.pt')
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        reference = net.eval()(x)
    model = TorchScriptBackbone(path, nr_features=6, norm_eval=True).train()
    assert model.model.training and model.model.conv.training
    assert not model.model.bn.training
    out = model(x)[0]
    assert_close(out.detach(), reference)  # running stats, not the batch's
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())  # trains
    assert TorchScriptBackbone(path, nr_features=6).train().model.bn.training
    plain = save_script(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()),
                        tmp_path / 'plain.pt')
    with pytest.raises(ValueError, match=r'norm_eval=True: TorchScript file '
                       r'.*plain\.pt has no norm layer'):
        TorchScriptBackbone(plain, nr_features=4, norm_eval=True)
    with pytest.raises(TypeError, match="norm_eval='yes'"):
        TorchScriptBackbone(path, nr_features=6, norm_eval='yes')


def test_out_indices_pick_the_one_output(tmp_path):
    path = save_script(TinyNet(), tmp_path / 'tiny.pt')
    for indices in (0, -1, (0, ), [-1]):
        model = TorchScriptBackbone(path, nr_features=6,
                                    out_indices=indices)
        assert model.out_indices == (0, )
        assert len(model(torch.rand(1, 3, 8, 8))) == 1
    with pytest.raises(ValueError, match='out_indices'):
        TorchScriptBackbone(path, nr_features=6, out_indices=(1, ))
