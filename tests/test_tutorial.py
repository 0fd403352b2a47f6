"""The snippets of mmcls's backbone tutorial, with mmbackbone for mmcls."""
import subprocess
import sys

import pytest

SNIPPETS = {
    'resnet50': ("""
import torch
from mmbackbone.models import build_backbone
x = torch.randn( (1, 3, 224, 224) )
backbone_cfg = dict(type='ResNet', depth=50)
model = build_backbone(backbone_cfg)
model.init_weights()
outs = model(x)
for out in outs:
    print(out.size())
""", ['torch.Size([1, 2048, 7, 7])']),
    'vit': ("""
import torch
from mmbackbone.models import build_backbone
x = torch.randn( (1, 3, 224, 224) )
backbone_cfg = dict(
    type='VisionTransformer',
    arch='base',
    output_cls_token=False,
    final_norm=False)
model = build_backbone(backbone_cfg)
model.init_weights()
outs = model(x)
for out in outs:
    print(out.size())
""", ['torch.Size([1, 768, 14, 14])']),
    'multi': ("""
import torch
from mmbackbone.models import build_backbone
x = torch.randn( (1, 3, 224, 224) )
backbone_cfg = dict(type='ResNet', depth=50, out_indices=(0, 1, 2, 3))
model = build_backbone(backbone_cfg)
model.init_weights()
outs = model(x)
for out in outs:
    print(out.size())
""", ['torch.Size([1, 256, 56, 56])', 'torch.Size([1, 512, 28, 28])',
      'torch.Size([1, 1024, 14, 14])', 'torch.Size([1, 2048, 7, 7])']),
    'frozen': ("""
import torch
from mmbackbone.models import build_backbone
x = torch.randn( (1, 3, 224, 224) )
from mmbackbone.compat import alias_mmcv_parrots_wrapper
alias_mmcv_parrots_wrapper()  # mmcv 2 moved the module mmcls 0.x imports
from mmcv.utils.parrots_wrapper import _BatchNorm
frozen_stages = 2
backbone_cfg = dict(
    type='ResNet',
    depth=50,
    out_indices=(0, 1, 2, 3),
    frozen_stages=frozen_stages)
model = build_backbone(backbone_cfg)
model.init_weights()
for i in range(1, frozen_stages + 1):
    layer = getattr(model, f'layer{i}')
    for mod in layer.modules():
        if isinstance(mod, _BatchNorm):
            assert mod.training is False
    for param in layer.parameters():
        assert param.requires_grad is False
print('frozen ok')
""", ['frozen ok']),
    'timm': ("""
import torch
from mmbackbone.models import build_backbone
x = torch.randn( (1, 3, 224, 224) )
backbone_cfg=dict(
    type="TIMMBackbone",
    pretrained=False,
    model_name="tf_efficientnetv2_s_in21k",
    features_only=True,
    out_indices=(2, 3, 4))
model = build_backbone(backbone_cfg)
model.init_weights()
outs = model(x)
for out in outs:
    print(out.size())
""", ['torch.Size([1, 64, 28, 28])', 'torch.Size([1, 160, 14, 14])',
      'torch.Size([1, 256, 7, 7])']),
}


@pytest.mark.parametrize('name', sorted(SNIPPETS))
def test_tutorial_snippet(name):
    code, expected = SNIPPETS[name]
    result = subprocess.run([sys.executable, '-c', code], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split('\n')[-len(expected) - 1:-1] == expected


def test_downstream_fragments_build_in_root_registry():
    """The mmdet / mmseg fragments: scoped types through mmengine's root."""
    from mmengine.registry import MODELS
    from mmengine.utils import import_modules_from_strings
    import_modules_from_strings(['mmbackbone.models'])
    csp = MODELS.build(dict(type='mmbackbone.CSPResNeXt', arch=50,
                            out_indices=(1, 2, 3)))
    assert csp.out_channels == (512, 1024, 2048)
    regnet = MODELS.build(dict(type='mmbackbone.RegNet', arch='regnetx_4.0gf',
                               out_indices=(0, 1, 2, 3)))
    assert regnet.out_channels == (80, 240, 560, 1360)
