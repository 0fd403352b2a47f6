"""Config fuzzing: a backbone config builds a working model or names its
bad key.

Hypothesis draws a registered backbone type (``list_backbones()``), one of
its ``zoo_configs`` as a seed (TorchScriptBackbone: a small scripted model
made here, and a missing file), and mutates it: an argument set to garbage
(None, bools, ints small, negative and huge, floats incl. NaN/inf,
strings, lists, tuples, dicts with or without a ``type``), an argument
removed (required ones included), an unknown argument added, or a key
inside a dict argument (``norm_cfg``, ``act_cfg``, ``conv_cfg``,
``init_cfg``, ``arch`` rows of the family's table, ``patch_cfg``,
``layer_cfgs``) set, removed or added. Plausible values (other archs'
numbers, valid names) are mixed in so that many mutants still build.

``build_backbone`` must then either

* build a working model: ``out_channels`` is a tuple of positive ints, one
  per ``out_indices``, and a forward pass gives one map per output with
  those channels (on the meta device, below); or
* raise ``KeyError`` / ``ValueError`` / ``TypeError`` /
  ``FileNotFoundError`` whose message names a mutated key (the argument or
  nested key) or shows a mutated value -- and is not
  :func:`mmbackbone.apis.build_from_config`'s generic wrap of an
  unexpected exception (``AssertionError``, ``RuntimeError``,
  ``IndexError``, ...).

Anything else fails the test: it is a bug to fix in the family (validate
the argument) or in ``build_from_config``.

Cost control (decided here, documented in docs/reliability.md):

* every build runs under ``torch.device('meta')``: widths cost nothing, so
  unbounded widths cannot exhaust memory; the forward check also runs on
  meta tensors (shapes only). Models under ``REAL_FORWARD_PARAMS``
  parameters are built again on the CPU and run on a real 1x3xHxW input.
* integers of 2**31 and beyond are refused by ``build_from_config`` (no
  backbone argument is that large), so a huge depth cannot hang a build.
  Layer counts are otherwise drawn from plausible values.
* a watchdog (``faulthandler``) ends the run with a traceback if one
  example takes more than ``HANG_SECONDS``: a hang fails, it never
  stalls CI.

``MAX_EXAMPLES`` (500) examples, ``derandomize=True``: the same configs on
every run.
"""
import copy
import dataclasses
import faulthandler
import inspect
import json
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmbackbone
from mmbackbone import build_backbone, list_backbones
from mmbackbone.apis import CONFIG_ERRORS
from mmbackbone.registry import MODELS

MAX_EXAMPLES = int(os.environ.get('FUZZ_CONFIG_EXAMPLES', 500))
HANG_SECONDS = 60
REAL_FORWARD_PARAMS = 300_000
STATS = Counter()
TIMINGS = []

TMP = Path(tempfile.mkdtemp(prefix='fuzz_cfg_'))


def _scripted_model() -> str:
    """A tiny TorchScript backbone file (stride-2 conv, 8 channels)."""
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1),
                                 torch.nn.ReLU())
    path = TMP / 'tiny_backbone.pt'
    torch.jit.save(torch.jit.trace(module, torch.rand(1, 3, 32, 32)),
                   str(path))
    return str(path)


SCRIPTED = _scripted_model()


def _exported_program() -> str:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1),
                              torch.nn.ReLU()).eval()
    path = TMP / 'net.pt2'
    torch.export.save(torch.export.export(net, (torch.randn(1, 3, 32, 32), )),
                      str(path))
    return str(path)


EXPORTED = _exported_program()
TYPES = list_backbones()


def _seeds() -> dict:
    seeds = {}
    for name in TYPES:
        cls = MODELS.get(name)
        seeds[name] = [dict(kw) for kw in cls.zoo_configs.values()]
    seeds['TorchScriptBackbone'] = [
        dict(path=SCRIPTED), dict(path=SCRIPTED, nr_features=8),
        dict(path=SCRIPTED, input_size=32, frozen=True),
        dict(path=str(TMP / 'missing.pt'))]
    seeds['ExportedBackbone'] = [dict(path=EXPORTED),
                                 dict(path=EXPORTED, frozen_stages=-1),
                                 dict(path=str(TMP / 'missing.pt2'))]
    # keep TIMM seeds to the quick ones (building is what is fuzzed)
    seeds['TIMMBackbone'] = [s for s in seeds['TIMMBackbone']
                             if 'mobilenetv3' in s['model_name']
                             or s['model_name'] == 'resnet18']
    return seeds


SEEDS = _seeds()


def _arch_rows() -> dict:
    """type name -> rows of its arch table as dicts (to mutate)."""
    import mmbackbone.models.backbones as pkg
    rows = {}
    for name in TYPES:
        module = sys.modules[MODELS.get(name).__module__]
        tables = [v for k, v in vars(module).items() if k.endswith('ARCHS')
                  and isinstance(v, dict)]
        found = []
        for table in tables:
            for row in list(table.values())[:8]:
                if dataclasses.is_dataclass(row):
                    found.append(dataclasses.asdict(row))
        rows[name] = found
    del pkg
    return rows


ARCH_ROWS = _arch_rows()


def _parameters(name: str) -> dict:
    """Constructor parameters (ResNetV1c/V1d take ResNet's **kwargs)."""
    cls = MODELS.get(name)
    for klass in cls.__mro__:
        params = {k: p for k, p in inspect.signature(klass.__init__)
                  .parameters.items() if k != 'self'
                  and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if params:
            return params
    return {}


PARAMS = {name: _parameters(name) for name in TYPES}


def _plausible_pool() -> dict:
    """key -> values seen in seeds, defaults and arch rows."""
    pool = {}
    for name in TYPES:
        for key, param in PARAMS[name].items():
            if param.default is not inspect.Parameter.empty:
                pool.setdefault(key, []).append(param.default)
        for seed in SEEDS[name]:
            for key, value in seed.items():
                pool.setdefault(key, []).append(value)
        for row in ARCH_ROWS[name]:
            for key, value in row.items():
                pool.setdefault(key, []).append(value)
    extra = dict(
        out_indices=[0, -1, (0, 1), (0, 1, 2, 3), [3, 0], (9, ), (-9, )],
        frozen_stages=[-1, 0, 1, 'all', 4, 99],
        norm_cfg=[dict(type='BN'), dict(type='GN', num_groups=4),
                  dict(type='LN'), dict(type='SyncBN'), dict(type='IN')],
        act_cfg=[dict(type='ReLU'), dict(type='GELU'), dict(type='SiLU'),
                 None],
        init_cfg=[None, dict(type='Kaiming', layer='Conv2d'),
                  dict(type='Pretrained', checkpoint=str(TMP / 'no.pth')),
                  [dict(type='Constant', val=1, layer='BatchNorm2d')]],
        arch=['resnet18', 'tiny', 'dla34', 'regnetx_400mf', 'b'],
        depth=[18, 34, 50, 53, 101],
        img_size=[32, 64, 224], patch_size=[4, 8, 16],
        in_channels=[1, 3, 4], model_name=['resnet18',
                                           'mobilenetv3_small_050'],
    )
    for key, values in extra.items():
        pool.setdefault(key, []).extend(values)
    unique = {}
    for key, values in pool.items():
        seen = []
        for value in values:
            if not any(value == s and type(value) is type(s) for s in seen):
                seen.append(value)
        unique[key] = seen
    return unique


POOL = _plausible_pool()
HUGE = [2**31, 2**63, 10**12, -2**31, 2**64, -2**40]
#: Large but in range: as a layer count they cost seconds, not hours.
MID = [33, 64, 255, 1000, -64, -1000]
NAMES = ['BN', 'LN', 'GN', 'ReLU', 'GELU', 'Kaiming', 'Pretrained',
         'Nope', 'os.system', 'mmengine.dump', 'Conv2d', '']


def garbage():
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-3, 10),
        st.sampled_from(HUGE), st.sampled_from(MID),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0.0, -0.5, 1.5, 0.1]),
        st.text(max_size=8), st.sampled_from(NAMES))
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.lists(inner, max_size=4).map(tuple),
            st.dictionaries(st.sampled_from(['type', 'eps', 'layer', 'val',
                                             'num_groups', 'depth', 'x']),
                            inner, max_size=3),
            st.builds(lambda t, rest: dict(rest, type=t),
                      st.sampled_from(NAMES),
                      st.dictionaries(st.sampled_from(['eps', 'inplace',
                                                       'num_groups', 'x']),
                                      inner, max_size=2))),
        max_leaves=6)


def value_for(key: str):
    plausible = POOL.get(key)
    if plausible:
        return st.one_of(st.sampled_from(plausible), garbage())
    return garbage()


DICT_ARGS = ('norm_cfg', 'act_cfg', 'conv_cfg', 'init_cfg', 'arch',
             'patch_cfg', 'layer_cfgs')


@st.composite
def fuzzed_configs(draw):
    name = draw(st.sampled_from(TYPES))
    cfg = copy.deepcopy(draw(st.sampled_from(SEEDS[name])))
    params = sorted(PARAMS[name])
    mutations = []  # (kind, key path, value)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(['set', 'set', 'delete', 'unknown',
                                     'nested', 'nested']))
        if kind == 'set':
            key = draw(st.sampled_from(params))
            cfg[key] = draw(value_for(key))
            mutations.append((kind, [key], cfg[key]))
        elif kind == 'delete':
            key = draw(st.sampled_from(sorted(cfg) or params))
            cfg.pop(key, None)
            mutations.append((kind, [key], None))
        elif kind == 'unknown':
            key = draw(st.sampled_from(['dept', 'out_indice', 'widht',
                                        'pretrain', 'norm', 'x', '_scope_',
                                        'type_', 'stem_width']))
            cfg[key] = draw(garbage())
            mutations.append((kind, [key], cfg[key]))
        else:
            key = draw(st.sampled_from([k for k in DICT_ARGS
                                        if k in PARAMS[name]] or params))
            base = cfg.get(key, PARAMS[name][key].default
                           if key in PARAMS[name] else None)
            if key == 'arch' and ARCH_ROWS[name] and (
                    not isinstance(base, dict) or draw(st.booleans())):
                base = draw(st.sampled_from(ARCH_ROWS[name]))
            if isinstance(base, list) and base and isinstance(base[0], dict):
                base = base[0]
            base = copy.deepcopy(base) if isinstance(base, dict) else {}
            inner_keys = sorted(base) + ['type', 'x']
            inner = draw(st.sampled_from(inner_keys))
            if draw(st.integers(0, 3)) == 0:
                base.pop(inner, None)
                value = None
            else:
                value = draw(value_for(inner))
                base[inner] = value
            cfg[key] = base
            mutations.append((kind, [key, inner], value))
    return name, cfg, mutations


#: Arguments validated against the number of stages: an error naming
#: them is the right error when the mutation changed the stage count.
STAGE_BOUND = ('out_indices=', 'frozen_stages=', 'strides=', 'dilations=')
STAGE_COUNT_KEYS = ('arch', 'depth', 'num_stages')


def _mentions(text: str, mutations) -> bool:
    if any(path[0] in STAGE_COUNT_KEYS for _, path, _ in mutations) and any(
            name in text for name in STAGE_BOUND):
        return True
    for _, path, value in mutations:
        if any(str(key) in text for key in path):
            return True
        if value is not None and not isinstance(value, bool):
            shown = repr(value)
            if len(shown) >= 2 and (shown in text or str(value) in text):
                return True
    return False


def _channels_of(out: torch.Tensor) -> int:
    if out.dim() == 4:
        return out.shape[1]
    return out.shape[-1]


def _input_size(model) -> int:
    size = getattr(model, 'img_size', None) or getattr(model,
                                                       'input_size', None)
    if isinstance(size, (tuple, list)):
        size = size[0]
    return int(size) if size else 64


def _check_model(model, cfg) -> None:
    out_channels = model.out_channels
    if isinstance(out_channels, int):
        out_channels = (out_channels, )
    assert isinstance(out_channels, tuple) and out_channels, out_channels
    assert all(isinstance(c, int) and c > 0 for c in out_channels), \
        out_channels
    assert len(out_channels) == len(model.out_indices)
    in_channels = cfg.get('in_channels', 3)
    size = _input_size(model)
    with torch.no_grad():
        outs = model.eval()(torch.empty(1, in_channels, size, size,
                                        device='meta'))
    assert isinstance(outs, tuple) and len(outs) == len(out_channels)
    for out, channels in zip(outs, out_channels):
        assert _channels_of(out) == channels, (out.shape, channels)
    params = sum(p.numel() for p in model.parameters())
    if params < REAL_FORWARD_PARAMS and size <= 64:
        real = build_backbone(cfg).eval()
        with torch.no_grad():
            outs = real(torch.rand(1, in_channels, size, size))
        for out, channels in zip(outs, out_channels):
            assert _channels_of(out) == channels
            assert torch.isfinite(out).all() or cfg.get('init_cfg')
        STATS['real_forward'] += 1


def check_config(name, cfg, mutations) -> str:
    """Build one fuzzed config; returns the outcome's name."""
    full = dict(type=name, **cfg)
    start = time.perf_counter()
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    try:
        with warnings.catch_warnings(), torch.device('meta'):
            warnings.simplefilter('ignore')
            try:
                model = build_backbone(copy.deepcopy(full))
            except CONFIG_ERRORS as err:
                outcome = err
            else:
                outcome = None
        if outcome is None:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                _check_model(model, full)
            result = 'built'
        else:
            text = str(outcome)
            if isinstance(outcome, KeyError) and len(outcome.args) == 1 \
                    and isinstance(outcome.args[0], str):
                text = outcome.args[0]  # str(KeyError) is a repr
            cause = outcome.__cause__
            assert not (isinstance(outcome, ValueError) and cause is not None
                        and not isinstance(cause, CONFIG_ERRORS)
                        and 'failed:' in text), (
                f'{name}: an unexpected {type(cause).__name__} escaped the '
                f'constructor (generic wrap): {text}\nconfig: {full!r}')
            assert _mentions(text, mutations) or _mentions(
                text, [('seed', [k], v) for k, v in cfg.items()]), (
                f'{name}: the error does not name the bad key: '
                f'{type(outcome).__name__}: {text}\nmutations: '
                f'{mutations!r}')
            result = type(outcome).__name__
    finally:
        faulthandler.cancel_dump_traceback_later()
    TIMINGS.append(time.perf_counter() - start)
    STATS['total'] += 1
    STATS[result] += 1
    STATS[f'type:{name}'] += 1
    return result


@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None,
          database=None, suppress_health_check=list(HealthCheck),
          print_blob=True)
@given(case=fuzzed_configs())
def fuzz_configs(case):
    check_config(*case)


def test_fuzzed_configs_build_or_name_the_bad_key():
    STATS.clear()
    TIMINGS.clear()
    # each type's seeds once, unchanged: every type is covered whatever
    # the random draws below pick
    for name in TYPES:
        for seed in SEEDS[name][:2]:
            check_config(name, copy.deepcopy(seed), [])
    fuzz_configs()
    # every example ran (none was skipped) and every type was drawn
    assert STATS['total'] >= MAX_EXAMPLES, STATS
    for name in TYPES:
        assert STATS[f'type:{name}'] > 0, (name, STATS)
    assert STATS['built'] > 0 and STATS['real_forward'] > 0, STATS
    summary = dict(sorted(STATS.items()))
    summary['slowest_s'] = round(max(TIMINGS), 2)
    summary['mean_s'] = round(sum(TIMINGS) / len(TIMINGS), 3)
    print('config fuzz:', json.dumps(summary), file=sys.stderr)


@pytest.mark.parametrize('cfg,error,match', [
    (dict(type='ResNet', depth=2**63), ValueError,
     r'depth=9223372036854775808 is out of range'),
    (dict(type='VisionTransformer', arch=dict(embed_dims=8, num_layers=2**40,
                                              num_heads=2,
                                              feedforward_channels=8)),
     ValueError, r'num_layers'),
    (dict(type='TorchScriptBackbone', path=42), TypeError, r'path=42'),
    (dict(type='TorchScriptBackbone'), TypeError, r"'path'"),
    (dict(type='TIMMBackbone'), TypeError, r"'model_name'"),
])
def test_directed_cases(cfg, error, match):
    with torch.device('meta'), pytest.raises(error, match=match):
        build_backbone(cfg)



# ------------------------------------------------ _base_ chains, all readers
# Random chains of 1-4 config files (yaml/yml/json/py) with hostile
# payloads go through load_config and through every tool that reads a
# config file. A payload that ran would write a marker file: data files
# write DATA_MARKER (python tags, custom_imports of a module that writes
# it on import) -- never allowed; a .py file i writes code_<i> -- allowed
# only for .py files a loader may run (reached from a .py top through .py
# files, or through a data file with allow_python_bases=True). Every
# outcome is a load or one of our named errors naming the example's files.
# MAX_VALUES is lowered while fuzzing so alias bombs cost milliseconds.

CHAIN_EXAMPLES = int(os.environ.get('FUZZ_CHAIN_EXAMPLES', 600))
CHAIN_TMP = TMP / 'chains'
CHAIN_STATS = Counter()
DATA_MARKER = CHAIN_TMP / 'DATA_MARKER'
MARKER_MODULE = 'fuzz_cfg_data_marker'
DATA_PAYLOADS = ['clean', 'clean', 'clean', 'model', 'model', 'tag',
                 'custom_imports', 'deep', 'aliases', 'cycle', 'not_mapping',
                 'invalid', 'reserved', 'dotted_type', 'bad_base', 'scope',
                 'bigint']
PY_PAYLOADS = ['clean', 'model', 'writes', 'writes', 'dotted_type']
LINKS = ['next', 'next', 'next', 'two', 'missing', 'loop', 'pkg', 'txt']


def _chain_readers():
    import importlib.util

    from mmbackbone.cli import _backbone_from_config
    from mmbackbone.engine import load_config

    def tool(name):
        spec = importlib.util.spec_from_file_location(
            f'fuzz_{name}', Path(__file__).resolve().parents[1] / 'tools'
            / f'{name}.py')
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return {
        'load_config': lambda p, allow: load_config(
            p, allow_python_bases=allow),
        'cli_convert': _backbone_from_config,
        'benchmark': tool('benchmark').parse_config,
        'torchscript': tool('build_torchscript_backbone')
        ._backbone_cfg_from_file,
    }


@st.composite
def config_chains(draw):
    n = draw(st.integers(1, 4))
    files = []
    for i in range(n):
        suffix = draw(st.sampled_from(['.yaml', '.yml', '.json', '.py']))
        payload = draw(st.sampled_from(
            PY_PAYLOADS if suffix == '.py' else DATA_PAYLOADS))
        link = draw(st.sampled_from(LINKS)) if i == n - 1 else 'next'
        if link == 'pkg' and suffix == '.py':
            link = 'missing'  # mmengine resolves packages for .py configs
        if link == 'loop':
            target = draw(st.integers(0, i))
        else:
            target = None
        files.append(dict(suffix=suffix, payload=payload, link=link,
                          target=target,
                          depth=draw(st.sampled_from([101, 300, 5000]))))
    if draw(st.booleans()) and files[-1]['link'] in ('missing', 'txt',
                                                     'pkg', 'loop'):
        files[-1]['link'] = 'none'
    return files, draw(st.sampled_from([False, False, True]))


def _name(i, spec):
    return f'f{i}{spec["suffix"]}'


def _bases(i, spec, files):
    link = spec['link']
    if i < len(files) - 1 or link == 'next':
        if i + 1 < len(files):
            return [_name(i + 1, files[i + 1])]
        return []
    if link == 'loop':
        return [_name(spec['target'], files[spec['target']])]
    return {'none': [], 'two': ['extra.yaml', 'extra.json'],
            'missing': ['missing.yaml'], 'pkg': ['mmdet::retinanet.py'],
            'txt': ['notes.txt']}[link]


def _data_text(i, spec, bases, suffix):
    payload = spec['payload']
    body = {f'k{i}': {'a': i, 'b': [1, 2.5, 'x', None]}}
    if payload == 'model':
        body['model'] = {'type': 'ImageClassifier',
                         'backbone': {'type': 'ResNet', 'depth': 18}}
    elif payload == 'dotted_type':
        body['model'] = {'type': 'ResNet', 'depth': 18,
                         'norm_cfg': {'type': 'os.system'}}
    elif payload == 'custom_imports':
        body['custom_imports'] = {'imports': [MARKER_MODULE]}
    elif payload == 'reserved':
        body['filename'] = 'x'
    elif payload == 'scope':
        body['backbone'] = {'type': 'ResNet', '_scope_': 'os'}
    elif payload == 'bad_base':
        bases = 5
    if bases:
        body['_base_'] = bases
    if suffix == '.json':
        text = json.dumps(body)
    else:
        import yaml
        text = yaml.safe_dump(body)
    depth = spec['depth']
    marker = str(DATA_MARKER)
    if payload == 'tag':
        if suffix == '.json':
            text = text[:-1] + f', "t": "!!python/object/apply:os.system"}}'
        else:
            text += (f'tag: !!python/object/apply:builtins.open '
                     f'["{marker}", "w"]\n'
                     f'mod: !!python/module:{MARKER_MODULE}\n')
    elif payload == 'deep':
        nested = '[' * depth + ']' * depth
        text = (text[:-1] + f', "deep": {nested}}}' if suffix == '.json'
                else text + f'deep: {nested}\n')
    elif payload == 'aliases' and suffix != '.json':
        text += 'a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n' + ''.join(
            f'a{j}: &a{j} [' + ', '.join([f'*a{j - 1}'] * 10) + ']\n'
            for j in range(1, 7))
    elif payload == 'cycle' and suffix != '.json':
        text += 'cyc: &c [1, *c]\n'
    elif payload == 'not_mapping':
        text = '[1, 2, 3]\n'
    elif payload == 'invalid':
        text = text[:len(text) // 2] + ('{[' if suffix == '.json'
                                         else '\n  - : [\n')
    elif payload == 'bigint':
        text = (text[:-1] + ', "n": ' + '9' * 5000 + '}' if suffix == '.json'
                else text + 'n: ' + '9' * 5000 + '\n')
    return text


def _py_text(i, spec, bases, case):
    lines = [f'_base_ = {bases!r}'] if bases else []
    lines.append(f'k{i} = dict(a={i}, b=(1, 2.5))')
    if spec['payload'] == 'model':
        lines.append("model = dict(type='ImageClassifier', "
                     "backbone=dict(type='ResNet', depth=18))")
    elif spec['payload'] == 'dotted_type':
        lines.append("backbone = dict(type='mmengine.runner.runner.os."
                     "system')")
    elif spec['payload'] == 'writes':
        lines.append(f"open({str(case / f'code_{i}')!r}, 'w').close()")
    return '\n'.join(lines) + '\n'


def _runnable_py(files, allow):
    """Indices of .py files a loader may run for this chain."""
    allowed = set()
    if files[0]['suffix'] != '.py' and not allow:
        return allowed
    for i, spec in enumerate(files):
        if spec['suffix'] == '.py':
            allowed.add(i)
        elif not allow:
            break
    return allowed


def _write_chain(files, case):
    case.mkdir()
    for i, spec in enumerate(files):
        bases = _bases(i, spec, files)
        path = case / _name(i, spec)
        if spec['suffix'] == '.py':
            path.write_text(_py_text(i, spec, bases, case))
        else:
            path.write_text(_data_text(i, spec, bases, spec['suffix']))
    (case / 'extra.yaml').write_text('extra_a: 1\nk0: {z: 1}\n')
    (case / 'extra.json').write_text('{"extra_b": 2}')
    (case / 'notes.txt').write_text('a: 1\n')
    return case / _name(0, files[0])


def check_chain(files, allow, readers) -> None:
    from mmbackbone.engine import config as config_module
    CHAIN_STATS['written'] += 1
    case = CHAIN_TMP / f'case{CHAIN_STATS["written"]}'
    top = _write_chain(files, case)
    for name, reader in readers.items():
        for marker in case.glob('code_*'):
            marker.unlink()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                reader(str(top), allow)
            outcome = 'loaded'
        except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
            text = err.args[0] if isinstance(err, KeyError) and \
                len(err.args) == 1 else str(err)
            assert case.name in str(text), (
                f'{name}: {type(err).__name__} does not name the config: '
                f'{text}\nchain: {files} allow={allow}')
            outcome = type(err).__name__
        assert not DATA_MARKER.exists(), (
            f'{name}: a data file ran code\nchain: {files} allow={allow}')
        ran = {int(p.name.split('_')[1]) for p in case.glob('code_*')}
        assert ran <= _runnable_py(files, allow), (
            f'{name}: ran .py files {ran} that no opt-in allowed\n'
            f'chain: {files} allow={allow}')
        assert config_module._ACTIVE == []
        CHAIN_STATS[f'{name}:{outcome}'] += 1
        CHAIN_STATS['reads'] += 1
    CHAIN_STATS['total'] += 1


def test_fuzzed_config_chains_never_run_data_and_name_the_file(
        monkeypatch):
    from mmbackbone.engine import config as config_module
    CHAIN_STATS.clear()
    CHAIN_TMP.mkdir(parents=True, exist_ok=True)
    (CHAIN_TMP / f'{MARKER_MODULE}.py').write_text(
        f'open({str(DATA_MARKER)!r}, "w").close()\n')
    monkeypatch.syspath_prepend(str(CHAIN_TMP))
    monkeypatch.setattr(config_module, 'MAX_VALUES', 5_000)
    readers = _chain_readers()

    @settings(max_examples=CHAIN_EXAMPLES, derandomize=True, deadline=None,
              database=None, suppress_health_check=list(HealthCheck),
              print_blob=True)
    @given(case=config_chains())
    def fuzz(case):
        check_chain(*case, readers)

    start = time.perf_counter()
    try:
        fuzz()
    finally:
        sys.modules.pop(MARKER_MODULE, None)
    assert CHAIN_STATS['total'] >= CHAIN_EXAMPLES, CHAIN_STATS
    assert CHAIN_STATS['reads'] == CHAIN_STATS['total'] * len(readers)
    for name in readers:  # every reader both loaded and refused something
        assert CHAIN_STATS[f'{name}:loaded'] > 0, (name, CHAIN_STATS)
        assert CHAIN_STATS[f'{name}:UnsafeConfigError'] > 0, (name,
                                                              CHAIN_STATS)
    # with the 500 backbone configs above: >= 1,000 config cases in all
    assert CHAIN_EXAMPLES + MAX_EXAMPLES >= 1000 or \
        'FUZZ_CHAIN_EXAMPLES' in os.environ
    summary = dict(sorted(CHAIN_STATS.items()))
    summary['seconds'] = round(time.perf_counter() - start, 1)
    print('config chain fuzz:', json.dumps(summary), file=sys.stderr)
