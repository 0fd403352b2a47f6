"""--cfg-options values are read as data: literals and dict(...) calls."""
import argparse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmbackbone.engine.options import (ConfigOptionsAction, OptionValueError,
                                       parse_option_value, parse_options)


def _parser():
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+',
                        action=ConfigOptionsAction)
    return parser


def test_the_documented_pretrained_override():
    args = _parser().parse_args([
        '--cfg-options', "model.backbone.init_cfg=dict(type='Pretrained', "
        "checkpoint='r18.pth', prefix='backbone')", 'train_cfg.max_epochs=2'])
    assert args.cfg_options == {
        'model.backbone.init_cfg': dict(type='Pretrained',
                                        checkpoint='r18.pth',
                                        prefix='backbone'),
        'train_cfg.max_epochs': 2}


@pytest.mark.parametrize('text, value', [
    ('1', 1), ('-0.5', -0.5), ('x', 'x'), ('w/r18', 'w/r18'),
    ('1,2,3', [1, 2, 3]), ('(0, 3)', (0, 3)), ('[1, 2]', [1, 2]),
    ('true', True), ('False', False), ('None', None),
    ("{'type': 'BN'}", {'type': 'BN'}),
    ("dict(type='BN', requires_grad=True)",
     {'type': 'BN', 'requires_grad': True}),
    ("[dict(type='A'), dict(type='B', k=[1, (2, 3)])]",
     [{'type': 'A'}, {'type': 'B', 'k': [1, (2, 3)]}]),
])
def test_values(text, value):
    assert parse_option_value(text) == value
    assert type(parse_option_value(text)) is type(value)


@pytest.mark.parametrize('text', [
    "__import__('os').system('touch x')", "os.system('x')",
    'dict(**kwargs)', "dict({'a': 1})", "[open('f')]", "{'a': eval('1')}",
    'dict(a=' * 40 + '1' + ')' * 40,
])
def test_code_is_refused_by_name(text):
    with pytest.raises(OptionValueError, match='not a literal|deeper'):
        parse_option_value(text)


def test_bad_entries_are_argparse_errors(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(['--cfg-options', 'no_equals_sign'])
    assert 'must be KEY=VALUE' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parser().parse_args(['--cfg-options', "a=os.system('x')"])
    assert '--cfg-options a:' in capsys.readouterr().err


literals = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.from_regex(r'[a-z_][a-z0-9_]{0,6}', fullmatch=True),
                      inner, max_size=3),
    max_leaves=10)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(literals)
def test_fuzz_repr_round_trips(value):
    assert parse_options([f'k={value!r}']) == {'k': value}


@pytest.mark.parametrize('tool', ['tools/train.py', 'tools/test.py'])
def test_tools_read_dict_options_into_the_config(tool):
    from helpers_train import DIGITS_PY, load_tool
    module = load_tool(tool)
    extra = ['ckpt.pth'] if tool.endswith('test.py') else []
    args = module.parse_args([str(DIGITS_PY), *extra, '--cfg-options',
                              "model.backbone.init_cfg=dict(type='Pretrained',"
                              " checkpoint='r18.pth', prefix='backbone')"])
    assert args.allow_python_bases is False
    from mmbackbone.engine import load_config
    cfg = load_config(args.config, args.cfg_options)
    assert cfg.model.backbone.init_cfg == dict(
        type='Pretrained', checkpoint='r18.pth', prefix='backbone')
