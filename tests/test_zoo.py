"""One parametrized walk over every registered backbone type and arch.

Small archs run forward and backward on CPU; big ones are built on the
meta device and checked by shape only, so the walk stays fast.
"""
import functools
import math

import pytest
import torch

from mmbackbone import build_backbone, list_backbones
from mmbackbone.models.backbones.base_backbone import NORM_TYPES, BaseBackbone
from mmbackbone.registry import MODELS
from mmbackbone.zoo import default_weights, list_weights

#: Parameter count above which an arch is only checked on the meta device.
SMALL_PARAMS = 15_000_000


def zoo_cases():
    """(type, arch) pairs of every registered backbone, with their size."""
    cases = []
    for type_name in list_backbones():
        cls = MODELS.get(type_name)
        if getattr(cls, 'zoo_needs_files', False):
            continue
        configs = getattr(cls, 'zoo_configs', {})
        if not configs:
            cases.append(pytest.param(type_name, None, id=f'{type_name}-none'))
        for arch in configs:
            cases.append(pytest.param(type_name, arch, id=f'{type_name}-{arch}'))
    return cases


def structure(param):
    """(type, tensor shapes, output metadata) built on the meta device, or
    None for an arch too big to run for real. Alias names share it."""
    type_name, arch = param.values
    if arch is None:
        return (type_name, )
    meta = meta_model(type_name, arch)
    if param_count(meta) > SMALL_PARAMS:
        return None
    shapes = tuple((k, tuple(v.shape)) for k, v in meta.state_dict().items())
    return (type_name, shapes, meta.stage_channels, meta.stage_strides,
            type(meta).__name__)


def unique_small(cases):
    """Small archs, one per distinct structure: aliases (``'b'`` and
    ``'base'``, ``regnetx_040`` and ``regnetx_4.0gf``) run once; every name
    is still built and shape-checked by test_metadata_and_shapes."""
    seen, kept = set(), []
    for case in cases:
        key = structure(case)
        if key is not None and key not in seen:
            seen.add(key)
            kept.append(case)
    return kept




def config(type_name, arch, **overrides):
    cls = MODELS.get(type_name)
    assert arch is not None, f'{type_name} declares no zoo_configs'
    return dict(type=type_name, **cls.zoo_configs[arch], **overrides)


def input_size(cfg, model):
    size = cfg.get('img_size', 32)
    if isinstance(size, (tuple, list)):
        size = size[0]
    patch = getattr(model, 'patch_size', None)
    if isinstance(patch, int) and size % patch:
        size = patch * 4
    return size


@functools.lru_cache(maxsize=None)
def meta_model(type_name, arch):
    """The arch built once on the meta device (no memory, no compute)."""
    with torch.device('meta'):
        return build_backbone(config(type_name, arch))


def all_stages(type_name, arch):
    meta = meta_model(type_name, arch)
    return meta, tuple(range(meta.num_stages))


def param_count(model):
    return sum(p.numel() for p in model.parameters())


def check_shapes(model, outs, size):
    assert isinstance(outs, tuple)
    assert len(outs) == len(model.out_indices) == len(model.out_channels)
    assert len(model.out_strides) == len(outs)
    assert model.out_features == model.out_channels[-1]
    for out, channels, stride in zip(outs, model.out_channels,
                                     model.out_strides):
        assert out.shape[0] == 2
        assert out.shape[1] == channels
        if stride is None:
            assert out.dim() == 2
        else:
            assert out.dim() == 4
            assert out.shape[-1] in (size // stride, math.ceil(size / stride))


CASES = zoo_cases()
#: Archs small enough to run forward and backward for real, aliases once.
SMALL_CASES = unique_small(CASES)


@pytest.mark.parametrize('type_name,arch', CASES)
def test_metadata_and_shapes(type_name, arch):
    meta, _ = all_stages(type_name, arch)
    cfg = config(type_name, arch)
    size = input_size(cfg, meta)
    if param_count(meta) > SMALL_PARAMS:
        with torch.device('meta'):
            outs = meta.eval()(torch.empty(2, 3, size, size))
        check_shapes(meta, outs, size)
        return
    model = build_backbone(cfg)
    assert model.eval() is model
    assert model.train() is model
    with torch.no_grad():
        outs = model.eval()(torch.rand(2, 3, size, size))
    check_shapes(model, outs, size)


def small_model(type_name, arch, **overrides):
    meta, stages = all_stages(type_name, arch)
    cfg = config(type_name, arch, out_indices=stages, **overrides)
    return build_backbone(cfg), input_size(cfg, meta)


def backward(model, size):
    outs = model(torch.rand(2, 3, size, size))
    sum(out.float().mean() for out in outs).backward()


@pytest.mark.parametrize('type_name,arch', SMALL_CASES)
def test_backward_reaches_every_trainable_param(type_name, arch):
    model, size = small_model(type_name, arch)
    backward(model.train(), size)
    missing = [name for name, p in model.named_parameters()
               if p.requires_grad and p.grad is None]
    assert not missing


def frozen_params(model, k):
    if k == 'all':
        return set(model.parameters())
    frozen = set()
    for part in [p for stage in model.stage_parts()[:k + 1] for p in stage]:
        if isinstance(part, torch.nn.Parameter):
            frozen.add(part)
        else:
            frozen.update(part.parameters())
    return frozen


@pytest.mark.parametrize('type_name,arch', SMALL_CASES)
def test_frozen_stages(type_name, arch):
    meta, _ = all_stages(type_name, arch)
    for k in sorted({0, meta.num_stages // 2, 'all'}, key=str):
        model, size = small_model(type_name, arch, frozen_stages=k)
        assert model.train() is model
        frozen = frozen_params(model, k)
        assert frozen, f'frozen_stages={k} froze nothing'
        for part in [p for stage in model.stage_parts()[:(
                model.num_stages if k == 'all' else k) + 1] for p in stage]:
            if isinstance(part, torch.nn.Module):
                assert all(not m.training for m in part.modules())
        if k == 'all':
            assert all(not m.training for m in model.modules())
            assert all(not p.requires_grad for p in model.parameters())
            continue
        backward(model, size)
        for name, param in model.named_parameters():
            if param in frozen:
                assert not param.requires_grad and param.grad is None, name
        trainable = [p for p in model.parameters() if p not in frozen]
        assert trainable and all(p.grad is not None for p in trainable)


@pytest.mark.parametrize('type_name,arch', SMALL_CASES)
def test_norm_eval(type_name, arch):
    model, _ = small_model(type_name, arch, norm_eval=True)
    model.train()
    norms = [m for m in model.modules() if isinstance(m, NORM_TYPES)]
    assert all(not m.training for m in norms)
    others = [m for m in model.modules() if not isinstance(m, NORM_TYPES)]
    assert any(m.training for m in others)


@pytest.mark.parametrize('type_name,arch', SMALL_CASES)
def test_flat_params_round_trip(type_name, arch):
    model, size = small_model(type_name, arch)
    flat = model.get_params()
    assert flat.numel() == param_count(model)
    model.set_params(torch.zeros_like(flat))
    assert all((p == 0).all() for p in model.parameters())
    model.set_params(flat)
    torch.testing.assert_close(model.get_params(), flat)
    backward(model.train(), size)
    grads = model.get_grads()
    model.set_grads(grads * 2)
    torch.testing.assert_close(model.get_grads(), grads * 2)
    with pytest.raises(ValueError, match='flat tensor of'):
        model.set_params(flat[:-1])


def test_zoo_covers_every_type():
    uncovered = [p.values[0] for p in CASES if p.values[1] is None]
    assert not uncovered, f'types without zoo_configs: {uncovered}'


# ------------------------------------------------------------ arch aliases
def alias_cases():
    """(type, alias, canonical name) of every family's ``arch_aliases``."""
    return [pytest.param(type_name, alias, canonical,
                         id=f'{type_name}-{alias}')
            for type_name in list_backbones()
            for alias, canonical in getattr(MODELS.get(type_name),
                                            'arch_aliases', {}).items()]


@pytest.mark.parametrize('type_name,alias,canonical', alias_cases())
def test_alias_resolves_to_its_canonical_weights(type_name, alias, canonical,
                                                 monkeypatch):
    """pretrained=True on an alias asks for the canonical arch's default
    entry (the load itself is intercepted: no download)."""
    cls = MODELS.get(type_name)
    assert alias in cls.zoo_configs and canonical in cls.zoo_configs
    assert canonical not in cls.arch_aliases  # one step to the name
    if not any(e.type == type_name and e.arch == canonical
               for e in list_weights()):
        with pytest.raises(KeyError, match=repr(canonical)):
            default_weights(type_name, alias)
        return
    want = default_weights(type_name, canonical)
    assert want.arch == canonical
    assert default_weights(type_name, alias) == want
    asked = []
    monkeypatch.setattr(BaseBackbone, 'init_weights',
                        lambda self: asked.append(self.init_cfg))
    with torch.device('meta'):
        build_backbone(config(type_name, alias, pretrained=True))
    assert asked == [dict(type='Pretrained',
                          checkpoint=f'mmbackbone://{want.name}',
                          prefix=want.prefix)]


def test_weights_index_names_canonical_archs():
    for entry in list_weights():
        aliases = getattr(MODELS.get(entry.type), 'arch_aliases', {})
        assert entry.arch not in aliases, (entry.name, entry.arch)
