"""The layer factory: torch and timm spellings of layer types get the
registered name suggested."""
import pytest

from mmbackbone import build_backbone


@pytest.mark.parametrize('arg, given, meant', [
    ('norm_cfg', 'BatchNorm', 'BN'),
    ('norm_cfg', 'BatchNorm2d', 'BN2d'),
    ('norm_cfg', 'batch_norm', 'BN'),
    ('norm_cfg', 'SyncBatchNorm', 'SyncBN'),
    ('norm_cfg', 'GroupNorm', 'GN'),
    ('norm_cfg', 'LayerNorm', 'LN'),
    ('act_cfg', 'Hardswish', 'HSwish'),
    ('act_cfg', 'relu', 'ReLU'),
])
def test_other_libraries_spellings_suggest_the_registered_name(
        arg, given, meant):
    with pytest.raises(KeyError) as info:
        build_backbone(dict(type='CSPDarkNet', depth=53,
                            **{arg: dict(type=given)}))
    message = str(info.value)
    assert f"unknown type {given!r}. Did you mean {meant!r}?" in message
    assert f'{arg}=' in message


def test_a_name_close_to_nothing_gets_no_suggestion():
    with pytest.raises(KeyError) as info:
        build_backbone(dict(type='ResNet', depth=18,
                            norm_cfg=dict(type='Quux')))
    assert 'Did you mean' not in str(info.value)
    assert 'Known types: BN' in str(info.value)
