"""tools/analysis/zoo_table.py writes the model-zoo table."""
import sys
from pathlib import Path

import torchvision

sys.path.insert(0, str(Path(__file__).parents[1] / 'tools' / 'analysis'))
import zoo_table  # noqa: E402


def test_table_rows_match_the_models(tmp_path):
    out = tmp_path / 'backbones.md'
    assert zoo_table.main(['--out', str(out), '--types', 'ResNet', 'ResNetV1d',
                           '--archs', 'resnet18', 'resnet50']) == 0
    text = out.read_text()
    assert text.startswith('# Backbones')
    rows = {line.split(' | ')[1]: line for line in text.splitlines()
            if line.startswith('| ResNet |')}
    assert set(rows) == {'resnet18', 'resnet50'}
    assert '| ResNetV1d | resnet50 |' in text
    r18 = rows['resnet18'].strip('| ').split(' | ')
    tv = torchvision.models.resnet18()
    trunk = sum(p.numel() for n, p in tv.named_parameters()
                if not n.startswith('fc.'))
    assert r18[2] == f'{trunk / 1e6:.2f}'
    assert abs(float(r18[3]) - 1.82) < 0.02   # ResNet-18 trunk: 1.82 GMACs
    assert r18[4] == '(64, 128, 256, 512)' and r18[5] == '(4, 8, 16, 32)'
