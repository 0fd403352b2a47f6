"""Whole-graph capture: every native backbone type is one graph for
``torch.compile(..., fullgraph=True)``.

``torch._dynamo.explain`` traces each type's smallest zoo arch (the cases
of test_export, less ``TIMMBackbone``, whose modules are timm's) in eval
mode, and in train mode with the training knobs on (drop path, gradient
checkpointing, frozen stages, ``norm_eval``); it must find one graph and
no graph break. Real compiles use the ``eager`` / ``aot_eager`` backends
(capture without code generation, so they stay fast) and must give the
eager features: a CNN and a ViT pyramid in eval mode, a ViT's forward and
backward in train mode, and a ViT compiled with dynamic sizes, which must
not recompile for a new input size. ``TorchScriptBackbone`` runs a
TorchScript module, which torch.compile cannot trace: it is checked to
fail with ``fullgraph=True`` and to run without it.
"""
import copy

import pytest
import torch
import torch._dynamo

from helpers import one_thread, randomize_norm_stats  # noqa: F401
from mmbackbone import build_backbone
from mmbackbone.registry import MODELS
from test_export import CASES as EXPORT_CASES

pytestmark = pytest.mark.usefixtures('one_thread')

#: Registered types whose forward is not ours to make traceable.
FOREIGN = ('TIMMBackbone', )
CASES = [case for case in EXPORT_CASES if case.values[0] not in FOREIGN]
#: A 2-layer ViT: real compiles of a transformer stay cheap.
TINY_VIT = dict(type='VisionTransformer', img_size=32, out_type='featmap',
                arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                          feedforward_channels=64))


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each case compiles from scratch (no cache hits, no recompile
    limits reached by earlier cases)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def zoo_config(type_name, arch):
    return dict(type=type_name, **MODELS.get(type_name).zoo_configs[arch])


def with_training_knobs(cfg):
    """Drop path and gradient checkpointing (on the wrapped backbone of a
    pyramid), the stem and first stage frozen, norms in eval mode."""
    cfg = dict(cfg, frozen_stages=1, norm_eval=True)
    knobs = dict(drop_path_rate=0.1, with_cp=True)
    if cfg['type'] == 'PyramidBackbone':
        cfg['backbone'] = dict(cfg['backbone'], **knobs)
    else:
        cfg.update(knobs)
    return cfg


def assert_one_graph(model, x):
    explained = torch._dynamo.explain(model)(x)
    reasons = [str(b.reason).splitlines()[0] for b in
               explained.break_reasons]
    assert explained.graph_break_count == 0, reasons
    assert explained.graph_count == 1
    return explained.graphs[0]


@pytest.mark.parametrize('type_name,arch', CASES)
def test_eval_forward_is_one_graph(type_name, arch):
    torch.manual_seed(0)
    model = build_backbone(zoo_config(type_name, arch)).eval()
    # not the ViTs' img_size: the position embedding is resized in-graph
    assert_one_graph(model, torch.rand(2, 3, 64, 96))


@pytest.mark.parametrize('type_name,arch', CASES)
def test_train_forward_is_one_graph(type_name, arch):
    torch.manual_seed(0)
    model = build_backbone(with_training_knobs(zoo_config(type_name, arch)))
    model.train()
    graph = assert_one_graph(model, torch.rand(2, 3, 64, 96))
    # the knobs took effect: checkpointed blocks, frozen parameters
    assert any('checkpoint' in str(node.target) for node in graph.graph.nodes)
    assert not all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize('cfg', [
    dict(type='ResNet', depth=18, out_indices=(0, 1, 2, 3)),
    dict(type='PyramidBackbone', backbone=TINY_VIT, out_channels=16),
], ids=['ResNet', 'PyramidBackbone-ViT'])
def test_fullgraph_compile_gives_eager_features(cfg):
    torch.manual_seed(0)
    model = randomize_norm_stats(build_backbone(cfg)).eval()
    compiled = torch.compile(model, fullgraph=True, backend='eager')
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        got, want = compiled(x), model(x)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_train_step_compiles_with_checkpointing_and_frozen_stages():
    """Forward and backward through aot_eager (the autograd graph is
    captured too) give eager's features and gradients."""
    torch.manual_seed(0)
    model = build_backbone(dict(TINY_VIT, with_cp=True, frozen_stages=1,
                                layer_cfgs=dict(attn_drop_rate=0.))).train()
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, fullgraph=True, backend='aot_eager')
    x = torch.rand(2, 3, 48, 64)
    grads = []
    for run, net in ((model, model), (compiled, twin)):
        out = run(x)[0]
        out.square().mean().backward()
        grads.append((out.detach(), {n: p.grad for n, p in
                                     net.named_parameters()}))
    (out_a, grads_a), (out_b, grads_b) = grads
    torch.testing.assert_close(out_b, out_a)
    assert grads_a['patch_embed.projection.weight'] is None  # frozen
    assert grads_b['patch_embed.projection.weight'] is None
    assert grads_a['layers.1.attn.qkv.weight'].abs().sum() > 0
    for name, grad in grads_a.items():
        if grad is not None:
            torch.testing.assert_close(grads_b[name], grad, msg=name)


def test_vit_compiles_once_for_every_input_size():
    """dynamic=True: one graph serves new batches, heights and widths,
    the position embedding's own grid (2x2) included."""
    torch.manual_seed(0)
    model = build_backbone(TINY_VIT).eval()
    with torch.no_grad():
        model.pos_embed.normal_()
    compiled = torch.compile(model, fullgraph=True, dynamic=True,
                             backend='eager')
    inputs = [torch.rand(size) for size in
              ((2, 3, 64, 96), (3, 3, 96, 48), (4, 3, 32, 32))]
    with torch.no_grad():
        outs = [compiled(inputs[0])]
        torch.compiler.set_stance('fail_on_recompile')
        try:
            outs += [compiled(x) for x in inputs[1:]]
        finally:
            torch.compiler.set_stance('default')
        for x, got in zip(inputs, outs):
            assert torch.equal(got[0], model(x)[0]), tuple(x.shape)
    assert [tuple(out[0].shape[2:]) for out in outs] == [(4, 6), (6, 3),
                                                        (2, 2)]


@pytest.mark.filterwarnings('ignore:`torch.jit.(script|save)` is '
                            'deprecated:FutureWarning')
def test_torchscript_backbone_compiles_only_without_fullgraph(tmp_path):
    path = tmp_path / 'conv.pt'
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 8, 3, 2, 1)),
                   str(path))
    model = build_backbone(dict(type='TorchScriptBackbone', path=str(path),
                                nr_features=8))
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(torch._dynamo.exc.Unsupported,
                       match='jit.script'):
        torch.compile(model, fullgraph=True, backend='eager')(x)
    torch._dynamo.reset()
    with torch.no_grad():
        got = torch.compile(model, backend='eager')(x)
        want = model(x)
    assert torch.equal(got[0], want[0])
