"""Necks, heads, the loss and ClsDataSample; peers: mmpretrain's modules."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mmpretrain.models  # noqa: F401  (registers mmpretrain's modules)
from mmpretrain.registry import MODELS as PRETRAIN_MODELS
from mmpretrain.structures import DataSample

from mmbackbone.models import (CosineSimilarityHead, CrossEntropyLoss,
                               GlobalAveragePooling, LinearClsHead, MLPNeck)
from mmbackbone.registry import MODELS
from mmbackbone.structures import ClsDataSample
from helpers import one_thread  # noqa: F401  (fixture)


pytestmark = pytest.mark.usefixtures('one_thread')


def samples(labels):
    return [ClsDataSample(gt_label=int(label)) for label in labels]


# ------------------------------------------------------------------ GAP
def test_gap_matches_mmpretrain_and_mean():
    torch.manual_seed(0)
    feats = (torch.rand(2, 8, 5, 7), torch.rand(2, 16, 3, 3))
    ours = GlobalAveragePooling()(feats)
    peer = PRETRAIN_MODELS.build(dict(type='GlobalAveragePooling'))(feats)
    assert isinstance(ours, tuple) and len(ours) == 2
    for a, b, x in zip(ours, peer, feats):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
        torch.testing.assert_close(a, x.mean(dim=(2, 3)))


def test_gap_passes_vectors_and_keeps_last():
    vec = torch.rand(3, 12)
    maps = torch.rand(3, 4, 2, 2)
    out = GlobalAveragePooling()((maps, vec))
    assert out[1] is vec and out[0].shape == (3, 4)
    last = GlobalAveragePooling(last_only=True)((maps, vec))
    assert len(last) == 1 and last[0] is vec
    single = GlobalAveragePooling()(maps)
    assert isinstance(single, torch.Tensor) and single.shape == (3, 4)
    assert len(list(GlobalAveragePooling().parameters())) == 0


def test_gap_errors():
    with pytest.raises(ValueError, match=r'inputs\[1\] has shape \(2, 3, 4\)'):
        GlobalAveragePooling()((torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4)))
    with pytest.raises(TypeError, match='last_only=1 must be True or False'):
        GlobalAveragePooling(last_only=1)
    with pytest.raises(TypeError, match='non-empty tuple'):
        GlobalAveragePooling()(())
    with pytest.raises(TypeError, match='must be a Tensor'):
        GlobalAveragePooling()((torch.rand(2, 3), 'x'))


# -------------------------------------------------------------- MLPNeck
def test_mlp_neck_depth_zero_is_identity():
    neck = MLPNeck(in_channels=16, depth=0)
    x = torch.rand(4, 16)
    assert torch.equal(neck(x), x)
    assert (neck.in_features, neck.out_features) == (16, 16)
    assert len(list(neck.parameters())) == 0


@pytest.mark.parametrize('depth', [1, 3])
def test_mlp_neck_constant_width(depth):
    neck = MLPNeck(in_channels=16, depth=depth)
    linears = [m for m in neck.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == depth
    assert all((m.in_features, m.out_features) == (16, 16) for m in linears)
    assert sum(isinstance(m, nn.ReLU) for m in neck.modules()) == depth
    out = neck(torch.rand(4, 16))
    assert out.shape == (4, 16) and bool((out >= 0).all())
    # by hand: Linear -> ReLU per layer
    x = torch.rand(2, 16)
    expected = x
    for linear in linears:
        expected = F.relu(linear(expected))
    torch.testing.assert_close(neck(x), expected)


def test_mlp_neck_hidden_norm_act_and_tuple_input():
    neck = MLPNeck(16, depth=2, hidden_channels=8, norm_cfg=dict(type='BN'),
                   act_cfg=dict(type='GELU'))
    assert neck.out_features == 8 and neck.in_channels == 16
    assert sum(isinstance(m, nn.BatchNorm1d) for m in neck.modules()) == 2
    assert sum(isinstance(m, nn.GELU) for m in neck.modules()) == 2
    out = neck((torch.rand(4, 3, 2, 2), torch.rand(4, 16)))
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == (4, 8)
    plain = MLPNeck(16, depth=1, act_cfg=None, norm_cfg=dict(type='LN'))
    assert [type(m) for m in plain.layers[0]] == [nn.Linear, nn.LayerNorm,
                                                  nn.Identity]


def test_mlp_neck_errors():
    with pytest.raises(ValueError, match='depth=-1 must be an integer >= 0'):
        MLPNeck(16, depth=-1)
    with pytest.raises(ValueError, match='in_channels=0 must be an integer'):
        MLPNeck(0, depth=1)
    with pytest.raises(ValueError, match='hidden_channels=2.5'):
        MLPNeck(16, depth=1, hidden_channels=2.5)
    with pytest.raises(KeyError, match="unknown type 'BatchNrm'"):
        MLPNeck(16, depth=1, norm_cfg=dict(type='BatchNrm'))
    neck = MLPNeck(16, depth=1)
    with pytest.raises(ValueError, match='put GlobalAveragePooling before'):
        neck(torch.rand(2, 16, 3, 3))
    with pytest.raises(ValueError, match=r'got shape \(2, 8\)'):
        neck(torch.rand(2, 8))


# --------------------------------------------------------- LinearClsHead
def test_linear_head_matches_mmpretrain():
    torch.manual_seed(0)
    peer = PRETRAIN_MODELS.build(dict(type='LinearClsHead', num_classes=7,
                                      in_channels=32, cal_acc=True,
                                      topk=(1, 5)))
    peer.init_weights()
    ours = LinearClsHead(num_classes=7, in_channels=32, cal_acc=True,
                         topk=(1, 5))
    ours.init_weights()
    # same keys, same init distribution (normal std 0.01, zero bias)
    assert list(ours.state_dict()) == list(peer.state_dict())
    assert ours.fc.weight.std() < 0.02 and not ours.fc.bias.any()
    ours.load_state_dict(peer.state_dict(), strict=True)
    feats = (torch.rand(6, 32), )
    labels = [0, 3, 6, 2, 2, 1]
    torch.testing.assert_close(ours(feats), peer(feats))
    ours_loss = ours.loss(feats, samples(labels))
    peer_loss = peer.loss(feats, [DataSample().set_gt_label(lb)
                                  for lb in labels])
    torch.testing.assert_close(ours_loss['loss'], peer_loss['loss'])
    # (mmpretrain's training accuracy also thresholds the raw logits at 0,
    # so its numbers are not a peer here: count the hits directly)
    ranked = ours(feats).argsort(dim=1, descending=True)
    for k in (1, 5):
        hits = [label in ranked[i, :k].tolist()
                for i, label in enumerate(labels)]
        torch.testing.assert_close(ours_loss[f'accuracy/top{k}'],
                                   torch.tensor(100.0 * sum(hits) / 6))
    ours_pred = ours.predict(feats)
    peer_pred = peer.predict(feats)
    for a, b in zip(ours_pred, peer_pred):
        torch.testing.assert_close(a.pred_score, b.pred_score)
        assert torch.equal(a.pred_label, b.pred_label)
    assert (ours.in_features, ours.out_features, ours.num_classes) == (32, 7,
                                                                       7)


def test_linear_head_predict_keeps_gt_and_soft_targets():
    head = LinearClsHead(num_classes=4, in_channels=8)
    given = samples([1, 2])
    out = head.predict(torch.rand(2, 8), given)
    assert out[0] is given[0] and torch.equal(out[1].gt_label,
                                              torch.tensor([2]))
    assert out[0].pred_score.shape == (4, )
    torch.testing.assert_close(out[0].pred_score.sum(), torch.tensor(1.0))
    # soft targets (mixup): gt_score on every sample
    feats = torch.rand(2, 8)
    soft = torch.tensor([[0.5, 0.5, 0, 0], [0, 0, 0.2, 0.8]])
    batch = [ClsDataSample().set_gt_score(row) for row in soft]
    logits = head(feats)
    expected = -(soft * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(head.loss(feats, batch)['loss'], expected)


def test_linear_head_errors():
    with pytest.raises(ValueError, match='num_classes=0 must be an integer'):
        LinearClsHead(num_classes=0, in_channels=8)
    with pytest.raises(ValueError, match="in_channels='8' must be an integer"):
        LinearClsHead(num_classes=2, in_channels='8')
    with pytest.raises(ValueError, match=r'topk=\(0,\) must be a positive'):
        LinearClsHead(2, 8, topk=(0, ))
    with pytest.raises(TypeError, match="loss='ce' must be a config dict"):
        LinearClsHead(2, 8, loss='ce')
    with pytest.raises(KeyError, match="'CrossEntropyLos' is not registered"):
        LinearClsHead(2, 8, loss=dict(type='CrossEntropyLos'))
    head = LinearClsHead(num_classes=3, in_channels=8)
    with pytest.raises(ValueError, match="add neck=dict.type='GlobalAverage"):
        head(torch.rand(2, 8, 4, 4))
    with pytest.raises(ValueError, match=r'gt_label=3 is out of range for '
                       r'num_classes=3 \(valid: 0..2\)'):
        head.loss(torch.rand(2, 8), samples([0, 3]))
    with pytest.raises(ValueError,
                       match=r'data_samples\[1\] have no gt_label'):
        head.loss(torch.rand(2, 8), [ClsDataSample(gt_label=0),
                                     ClsDataSample()])
    with pytest.raises(ValueError, match='3 data_samples for a batch of 2'):
        head.predict(torch.rand(2, 8), samples([0, 1, 2]))


def test_head_loss_from_config_module_and_other_scope():
    feats, labels = torch.rand(4, 8), [0, 1, 2, 1]
    expected = F.cross_entropy(
        LinearClsHead(3, 8).fc(feats) * 0, torch.tensor(labels))
    for loss in (nn.CrossEntropyLoss(),
                 dict(type='CrossEntropyLoss', loss_weight=2.0),
                 dict(type='mmpretrain.CrossEntropyLoss')):
        head = LinearClsHead(3, 8, loss=loss)
        nn.init.zeros_(head.fc.weight)
        nn.init.zeros_(head.fc.bias)
        value = head.loss(feats, samples(labels))['loss']
        factor = 2.0 if isinstance(loss, dict) and loss.get(
            'loss_weight') else 1.0
        torch.testing.assert_close(value, expected * factor)


# --------------------------------------------------- CosineSimilarityHead
def test_cosine_head_matches_sesemi_formula():
    torch.manual_seed(0)
    head = CosineSimilarityHead(in_features=84, out_features=10)
    feats = torch.randn(5, 84)
    # SESEMI's head: cosine_similarity(weight[None], features[:, None], -1)
    expected = torch.cosine_similarity(head.weight[None], feats[:, None],
                                       dim=-1)
    logits = head(feats)
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=0)
    assert bool(logits.abs().max() <= 1 + 1e-6)
    assert list(head.state_dict()) == ['weight']
    assert (head.in_features, head.out_features) == (84, 10)
    scaled = CosineSimilarityHead(84, 10, scale=16)
    scaled.load_state_dict(head.state_dict())
    torch.testing.assert_close(scaled(feats), 16 * expected, atol=2e-5,
                               rtol=0)
    # invariant to the feature norm
    torch.testing.assert_close(head(feats * 7.5), logits, atol=1e-6, rtol=0)


def test_cosine_head_learnable_scale_trains():
    head = CosineSimilarityHead(8, 3, scale=4.0, learn_scale=True)
    assert set(head.state_dict()) == {'weight', 'log_scale'}
    torch.testing.assert_close(head.log_scale.exp(), torch.tensor(4.0))
    loss = head.loss(torch.rand(4, 8), samples([0, 1, 2, 0]))['loss']
    loss.backward()
    assert head.log_scale.grad is not None and head.weight.grad is not None
    probs = head.predict(torch.rand(2, 8))
    assert probs[1].pred_score.shape == (3, )


def test_cosine_head_errors():
    with pytest.raises(ValueError, match='scale=0 must be None or a number'):
        CosineSimilarityHead(8, 3, scale=0)
    with pytest.raises(ValueError, match='in_features=-8 must be an integer'):
        CosineSimilarityHead(-8, 3)
    with pytest.raises(TypeError, match="learn_scale='yes'"):
        CosineSimilarityHead(8, 3, learn_scale='yes')
    with pytest.raises(ValueError, match=r'takes \(N, 8\) features; got shape'
                       r' \(2, 9\)'):
        CosineSimilarityHead(8, 3)(torch.rand(2, 9))


def test_heads_and_necks_are_registered():
    for name in ('GlobalAveragePooling', 'MLPNeck', 'LinearClsHead',
                 'CosineSimilarityHead', 'CrossEntropyLoss',
                 'ImageClassifier', 'ClsDataPreprocessor'):
        assert name in MODELS.module_dict
    head = MODELS.build(dict(type='CosineSimilarityHead', in_features=4,
                             out_features=2))
    assert isinstance(head, CosineSimilarityHead)


# ----------------------------------------------------- CrossEntropyLoss
def test_cross_entropy_loss_options_match_torch():
    torch.manual_seed(0)
    logits, target = torch.randn(5, 4), torch.tensor([0, 1, 3, 2, 1])
    weight = [1.0, 2.0, 0.5, 1.0]
    loss = CrossEntropyLoss(loss_weight=0.5, label_smoothing=0.1,
                            class_weight=weight)
    expected = 0.5 * F.cross_entropy(logits, target,
                                     weight=torch.tensor(weight),
                                     label_smoothing=0.1)
    torch.testing.assert_close(loss(logits, target), expected)
    assert CrossEntropyLoss(reduction='none')(logits, target).shape == (5, )
    peer = PRETRAIN_MODELS.build(dict(type='CrossEntropyLoss'))
    torch.testing.assert_close(CrossEntropyLoss()(logits, target),
                               peer(logits, target))
    assert list(loss.state_dict()) == []  # class_weight is no checkpoint key


def test_cross_entropy_loss_errors():
    with pytest.raises(ValueError, match=r'label_smoothing=1.0 must be a '
                       r'number in \[0, 1\)'):
        CrossEntropyLoss(label_smoothing=1.0)
    with pytest.raises(ValueError, match="reduction='avg'"):
        CrossEntropyLoss(reduction='avg')
    with pytest.raises(TypeError, match="loss_weight='1'"):
        CrossEntropyLoss(loss_weight='1')
    with pytest.raises(ValueError, match='class_weight must be a flat'):
        CrossEntropyLoss(class_weight=[[1.0, 2.0]])


# -------------------------------------------------------- ClsDataSample
def test_data_sample_formats_fields():
    for value in (3, np.int64(3), torch.tensor(3), torch.tensor([3]),
                  np.array([3]), [3]):
        sample = ClsDataSample(gt_label=value)
        assert torch.equal(sample.gt_label, torch.tensor([3]))
        assert sample.gt_label.dtype == torch.long
    sample = ClsDataSample().set_gt_label(1).set_pred_score(
        np.array([0.1, 0.2, 0.7], dtype=np.float32))
    assert torch.equal(sample.pred_label, torch.tensor([2]))
    assert sample.pred_score.dtype == torch.float32
    sample.set_pred_label(0)
    assert torch.equal(sample.pred_label, torch.tensor([0]))
    moved = sample.to('cpu')
    assert torch.equal(moved.gt_label, torch.tensor([1]))
    assert 'gt_label' in sample and 'gt_score' not in sample


def test_data_sample_errors():
    with pytest.raises(TypeError, match='gt_label must hold an integer'):
        ClsDataSample(gt_label=torch.tensor(1.0))
    with pytest.raises(ValueError, match=r'single class index; got 2 values '
                       r'\[1, 2\]'):
        ClsDataSample().set_gt_label([1, 2])
    with pytest.raises(ValueError, match='gt_label=-1 must be a non-negative'):
        ClsDataSample(gt_label=-1)
    with pytest.raises(TypeError, match="gt_label='cat' must be an int"):
        ClsDataSample(gt_label='cat')
    with pytest.raises(TypeError, match='not a bool'):
        ClsDataSample(gt_label=True)
    with pytest.raises(ValueError, match=r'pred_score must be 1-D .* shape '
                       r'\(1, 3\)'):
        ClsDataSample().set_pred_score(torch.rand(1, 3))
    with pytest.raises(TypeError, match='pred_score must be a 1-D tensor'):
        ClsDataSample().set_pred_score(0.5)
