"""ImageClassifier and ClsDataPreprocessor; peer: mmpretrain's classifier."""
import pytest
import torch
from mmengine.optim import OptimWrapper
from torch import nn

import mmpretrain.models  # noqa: F401
from mmpretrain.registry import MODELS as PRETRAIN_MODELS
from mmpretrain.structures import DataSample

from mmbackbone import build_backbone
from mmbackbone.models import (ClsDataPreprocessor, CosineSimilarityHead,
                               ImageClassifier, LinearClsHead, MLPNeck)
from mmbackbone.registry import MODELS
from mmbackbone.structures import ClsDataSample
from helpers import one_thread  # noqa: F401  (fixture)

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


pytestmark = pytest.mark.usefixtures('one_thread')


def r18_classifier(**kwargs):
    cfg = dict(backbone=dict(type='ResNet', depth=18),
               neck=dict(type='GlobalAveragePooling'),
               head=dict(type='LinearClsHead', num_classes=10))
    cfg.update(kwargs)
    return ImageClassifier(**cfg)


def uint8_images(n, size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, size, size), dtype=torch.uint8,
                          generator=gen) for _ in range(n)]


def test_matches_mmpretrain_classifier():
    """Same keys, preprocessing, logits, loss and scores as mmpretrain."""
    torch.manual_seed(0)
    peer = PRETRAIN_MODELS.build(dict(
        type='ImageClassifier', backbone=dict(type='ResNet', depth=18),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=512),
        data_preprocessor=dict(type='ClsDataPreprocessor', mean=MEAN,
                               std=STD, to_rgb=True))).eval()
    ours = r18_classifier(data_preprocessor=dict(mean=MEAN, std=STD,
                                                 to_rgb=True)).eval()
    ours.load_state_dict(peer.state_dict(), strict=True)
    images, labels = uint8_images(3, 32), [1, 4, 9]
    peer_batch = peer.data_preprocessor(dict(
        inputs=images, data_samples=[DataSample().set_gt_label(lb)
                                     for lb in labels]))
    our_batch = ours.data_preprocessor(dict(
        inputs=images, data_samples=[ClsDataSample(gt_label=lb)
                                     for lb in labels]))
    torch.testing.assert_close(our_batch['inputs'], peer_batch['inputs'],
                               atol=0, rtol=0)
    with torch.no_grad():
        logits = ours(our_batch['inputs'])
        diff = (logits - peer(peer_batch['inputs'])).abs().max().item()
        assert diff <= 1e-5, diff
        torch.testing.assert_close(ours(**our_batch, mode='loss')['loss'],
                                   peer(**peer_batch, mode='loss')['loss'])
        for a, b in zip(ours(**our_batch, mode='predict'),
                        peer(**peer_batch, mode='predict')):
            torch.testing.assert_close(a.pred_score, b.pred_score)
            assert torch.equal(a.pred_label, b.pred_label)
            assert torch.equal(a.gt_label, b.gt_label)
        # mmpretrain's extract_feat stages agree too
        for stage in ('backbone', 'neck', 'pre_logits'):
            a = ours.extract_feat(our_batch['inputs'], stage=stage)
            b = peer.extract_feat(peer_batch['inputs'], stage=stage)
            a = a if isinstance(a, tuple) else (a, )
            b = b if isinstance(b, tuple) else (b, )
            for x, y in zip(a, b):
                torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


def test_loads_mmpretrain_checkpoint_through_init_cfg(tmp_path):
    peer = PRETRAIN_MODELS.build(dict(
        type='ImageClassifier', backbone=dict(type='ResNet', depth=18),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=512)))
    path = tmp_path / 'cls.pth'
    torch.save({'state_dict': peer.state_dict()}, path)
    ours = r18_classifier(backbone=dict(
        type='ResNet', depth=18,
        init_cfg=dict(type='Pretrained', checkpoint=str(path),
                      prefix='backbone')))
    ours.init_weights()
    for key, value in peer.backbone.state_dict().items():
        assert torch.equal(ours.backbone.state_dict()[key], value), key


def test_init_cfg_on_the_classifier_loads_through_load_pretrained(tmp_path):
    """An mmpretrain classifier checkpoint named on the classifier itself
    (as mmpretrain configs do, here scoped): every tensor loaded, after the
    parts' own init; a backbone-only file is an error, not a warning."""
    peer = PRETRAIN_MODELS.build(dict(
        type='ImageClassifier', backbone=dict(type='ResNet', depth=18),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=512)))
    path = tmp_path / 'cls.pth'
    torch.save({'state_dict': peer.state_dict(), 'meta': {'epoch': 1}}, path)
    ours = r18_classifier(init_cfg=dict(type='mmengine.Pretrained',
                                        checkpoint=str(path)))
    ours.init_weights()
    for key, value in peer.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    backbone_only = tmp_path / 'r18.pth'
    torch.save(peer.backbone.state_dict(), backbone_only)
    bad = r18_classifier(init_cfg=dict(type='Pretrained',
                                       checkpoint=str(backbone_only)))
    with pytest.raises(ValueError, match='none of its .* keys match '
                       'ImageClassifier'):
        bad.init_weights()
    # the same file into the backbone, through override
    fine = r18_classifier(init_cfg=dict(
        type='Normal', layer='Linear', std=0.01, override=dict(
            type='Pretrained', name='backbone',
            checkpoint=str(backbone_only))))
    fine.init_weights()
    for key, value in peer.backbone.state_dict().items():
        assert torch.equal(fine.backbone.state_dict()[key], value), key


def test_head_width_inferred_from_backbone_and_necks():
    model = r18_classifier(backbone=dict(type='ResNet', depth=18,
                                         out_indices=(0, 1, 2, 3)))
    assert model.head.in_channels == 512 == model.backbone.out_features
    model = ImageClassifier(
        backbone=dict(type='ResNet', depth=18),
        neck=[dict(type='GlobalAveragePooling'),
              dict(type='MLPNeck', depth=2, hidden_channels=64)],
        head=dict(type='CosineSimilarityHead', out_features=5))
    assert isinstance(model.neck, nn.Sequential)
    assert model.neck[1].in_features == 512
    assert model.head.in_features == 64
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    # an explicit width wins
    model = r18_classifier(head=LinearClsHead(num_classes=3, in_channels=512))
    assert model.head.out_features == 3


def test_returnt_modes():
    torch.manual_seed(0)
    model = r18_classifier(backbone=dict(type='ResNet', depth=18,
                                         out_indices=(1, 3))).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        features = model(x, returnt='features')
        both = model(x, returnt='both')
        full = model(x, returnt='full')
        outs = model.backbone(x)
    assert logits.shape == (2, 10) and features.shape == (2, 512)
    torch.testing.assert_close(features, outs[-1].mean(dim=(2, 3)))
    torch.testing.assert_close(model.head.fc(features), logits)
    assert isinstance(both, tuple) and len(both) == 2
    torch.testing.assert_close(both[0], logits)
    torch.testing.assert_close(both[1], features)
    assert isinstance(full, list) and len(full) == 3
    for a, b in zip(full[:-1], outs):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(full[-1], logits)
    torch.testing.assert_close(model.extract_feat(x, 'pre_logits'), features)


def test_classifier_without_neck_or_head():
    model = ImageClassifier(backbone=dict(type='ResNet', depth=18)).eval()
    x = torch.rand(1, 3, 32, 32)
    out = model(x)
    assert isinstance(out, tuple) and out[0].shape == (1, 512, 1, 1)
    with pytest.raises(ValueError, match="returnt='features' needs a head"):
        model(x, returnt='features')
    with pytest.raises(ValueError, match="mode='predict' needs a head"):
        model(x, mode='predict')
    with pytest.raises(ValueError, match="stage='pre_logits' needs a head"):
        model.extract_feat(x, stage='pre_logits')


def test_forward_errors():
    model = r18_classifier()
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="mode='train'; choose from"):
        model(x, mode='train')
    with pytest.raises(ValueError, match="returnt='logits'; choose from"):
        model(x, returnt='logits')
    with pytest.raises(ValueError, match="returnt='both' applies to "
                       "mode='tensor' only"):
        model(x, mode='loss', returnt='both')
    with pytest.raises(ValueError, match="mode='loss' needs data_samples"):
        model(x, mode='loss')
    with pytest.raises(ValueError, match="stage='head'; choose from"):
        model.extract_feat(x, stage='head')


def test_constructor_errors():
    with pytest.raises(TypeError, match='backbone must be a config dict or '
                       'an nn.Module; got str'):
        ImageClassifier(backbone='ResNet')
    with pytest.raises(KeyError, match="'ResNt' is not registered"):
        ImageClassifier(backbone=dict(type='ResNt'))
    with pytest.raises(TypeError, match='head must be a config dict'):
        r18_classifier(head=42)
    with pytest.raises(TypeError, match="LinearClsHead got an unknown "
                       "argument 'num_class'"):
        r18_classifier(head=dict(type='LinearClsHead', num_class=10))
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten())
    with pytest.raises(ValueError, match="leaves out 'in_channels' and the "
                       "part before it exposes no out_features"):
        ImageClassifier(backbone=plain,
                        head=dict(type='LinearClsHead', num_classes=2))
    with pytest.raises(ValueError, match=r"mean=\(1.0, 2.0, 3.0\) and "
                       r"std=None: give both"):
        r18_classifier(data_preprocessor=dict(mean=[1, 2, 3]))


def test_plain_backbone_and_plain_head():
    """A module returning one (N, C) tensor and a head with forward only."""

    class Features(nn.Module):
        out_features = 8

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            return self.conv(x).mean(dim=(2, 3))

    class Head(nn.Module):  # the SESEMI head API: in/out_features, forward
        def __init__(self, in_features, out_features):
            super().__init__()
            self.in_features, self.out_features = in_features, out_features
            self.fc = nn.Linear(in_features, out_features)

        def forward(self, x):
            return self.fc(x)

    model = ImageClassifier(backbone=Features(), head=Head(8, 3))
    x = torch.rand(4, 3, 16, 16)
    batch = [ClsDataSample(gt_label=i % 3) for i in range(4)]
    logits, feats = model(x, returnt='both')
    assert logits.shape == (4, 3) and feats.shape == (4, 8)
    loss = model(x, batch, mode='loss')['loss']
    torch.testing.assert_close(loss, nn.functional.cross_entropy(
        logits, torch.tensor([0, 1, 2, 0])))
    preds = model(x, batch, mode='predict')
    torch.testing.assert_close(preds[0].pred_score, logits[0].softmax(0))
    assert torch.equal(preds[1].gt_label, torch.tensor([1]))


def test_train_step_and_val_step_with_pseudo_collate():
    from mmengine.dataset import pseudo_collate
    torch.manual_seed(0)
    model = ImageClassifier(
        backbone=dict(type='ResNet', depth=18, frozen_stages=1),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=3),
        data_preprocessor=dict(mean=MEAN, std=STD, to_rgb=True,
                               num_classes=3))
    items = [dict(inputs=img, data_samples=ClsDataSample(gt_label=i % 3))
             for i, img in enumerate(uint8_images(4))]
    batch = pseudo_collate(items)
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    before = model.head.fc.weight.detach().clone()
    frozen = model.backbone.conv1.weight.detach().clone()
    log_vars = model.train_step(batch, wrapper)
    assert set(log_vars) == {'loss'} and log_vars['loss'] > 0
    assert not torch.equal(model.head.fc.weight, before)
    assert torch.equal(model.backbone.conv1.weight, frozen)
    assert not model.backbone.bn1.training  # frozen stem stays in eval
    preds = model.val_step(batch)
    assert len(preds) == 4 and preds[2].pred_score.shape == (3, )
    assert torch.equal(preds[2].gt_label, torch.tensor([2]))
    bad = pseudo_collate([dict(inputs=uint8_images(1)[0],
                               data_samples=ClsDataSample(gt_label=5))])
    with pytest.raises(ValueError, match='gt_label=5 is out of range for '
                       'num_classes=3'):
        model.train_step(bad, wrapper)


def test_data_preprocessor():
    images = uint8_images(2, 8) + [torch.zeros(3, 6, 8, dtype=torch.uint8)]
    pre = ClsDataPreprocessor(mean=MEAN, std=STD, to_rgb=True)
    out = pre(dict(inputs=images))['inputs']
    assert out.shape == (3, 3, 8, 8) and out.dtype == torch.float32
    expected = (images[0].flip(0).float() - torch.tensor(MEAN).view(3, 1, 1)
                ) / torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(out[0], expected)
    raw = ClsDataPreprocessor()(dict(inputs=torch.stack(images[:2])))
    torch.testing.assert_close(raw['inputs'], torch.stack(images[:2]).float())
    assert raw['data_samples'] is None
    gray = ClsDataPreprocessor(mean=[0.5], std=[2.0])(
        dict(inputs=[torch.ones(1, 4, 4)]))['inputs']
    torch.testing.assert_close(gray, torch.full((1, 1, 4, 4), 0.25))


def test_data_preprocessor_errors():
    with pytest.raises(ValueError, match=r'mean=\(1, 2\) must hold 1 value'):
        ClsDataPreprocessor(mean=(1, 2), std=(1, 2))
    with pytest.raises(ValueError, match='must not contain 0'):
        ClsDataPreprocessor(mean=[0.0], std=[0])
    with pytest.raises(TypeError, match="to_rgb='yes' must be True or False"):
        ClsDataPreprocessor(to_rgb='yes')
    with pytest.raises(TypeError, match="mean='abc' must be a sequence"):
        ClsDataPreprocessor(mean='abc', std=[1.0])
    with pytest.raises(ValueError, match='num_classes=0 must be None or'):
        ClsDataPreprocessor(num_classes=0)
    pre = ClsDataPreprocessor(mean=MEAN, std=STD, to_rgb=True)
    with pytest.raises(ValueError, match=r'inputs\[0\] has 1 channels; '
                       r'to_rgb and 3-value mean/std need 3'):
        pre(dict(inputs=[torch.zeros(1, 4, 4)]))
    with pytest.raises(ValueError, match=r'inputs\[1\] must be a CHW tensor; '
                       r'got shape \(4, 4\)'):
        pre(dict(inputs=[torch.zeros(3, 4, 4), torch.zeros(4, 4)]))
    with pytest.raises(TypeError, match='takes dict.inputs=...'):
        pre([torch.zeros(3, 4, 4)])


def test_classifier_is_traceable_and_exportable():
    model = ImageClassifier(
        backbone=dict(type='ResNet', depth=18, base_channels=8,
                      stem_channels=8),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='CosineSimilarityHead', out_features=4,
                  scale=10.0)).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        traced = torch.jit.trace(model, (x, ))
        torch.testing.assert_close(traced(x), expected)
        exported = torch.export.export(model, (x, ))
        torch.testing.assert_close(exported.module()(x), expected)


def test_registry_build_and_backbone_module():
    model = MODELS.build(dict(
        type='ImageClassifier',
        backbone=build_backbone(dict(type='ResNet', depth=18)),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=2)))
    assert isinstance(model, ImageClassifier)
    assert isinstance(model.data_preprocessor, ClsDataPreprocessor)
    assert model.with_neck and model.with_head
    # the MLP between backbone and head
    model = ImageClassifier(
        backbone=dict(type='ResNet', depth=18),
        neck=[dict(type='GlobalAveragePooling'), MLPNeck(512, depth=1)],
        head=dict(type='CosineSimilarityHead', out_features=2))
    assert isinstance(model.head, CosineSimilarityHead)
    assert model.head.in_features == 512
