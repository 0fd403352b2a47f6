"""Classification heads: the shared base and the linear head.

A head takes the neck output (``(N, C)`` features, or a tuple of them of
which it uses the last) and returns logits ``(N, num_classes)``. Like
mmpretrain's heads it also has ``loss(feats, data_samples)`` (a dict with
the cross-entropy under ``'loss'``) and ``predict(feats, data_samples)``
(data samples with softmax ``pred_score`` and ``pred_label``).
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmbackbone.registry import MODELS
from mmbackbone.structures import ClsDataSample
from mmbackbone.utils import BaseModule

from ..init_cfg import PretrainedRoutingMixin

Features = Union[Tensor, Sequence[Tensor]]


def _check_int(value, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f'{name}={value!r} must be an integer >= {low}')
    return value


def to_plain(cfg):
    """OmegaConf containers (Hydra passes nested configs as ``DictConfig``
    / ``ListConfig``) to plain dicts and lists; anything else unchanged."""
    if type(cfg).__module__.startswith('omegaconf'):
        from omegaconf import OmegaConf
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def build_loss(loss) -> nn.Module:
    """A loss module from a config dict (registered types) or a module."""
    loss = to_plain(loss)
    if isinstance(loss, nn.Module):
        return loss
    if not isinstance(loss, dict):
        raise TypeError(f"loss={loss!r} must be a config dict such as "
                        f"dict(type='CrossEntropyLoss') or an nn.Module")
    from mmbackbone.apis import build_from_config
    return build_from_config(loss, MODELS, 'loss')


def stack_targets(data_samples: Sequence, num_classes: int) -> Tensor:
    """Targets of a batch: soft ``gt_score`` rows if every sample has one,
    else the ``gt_label`` indices.

    Raises:
        ValueError: no samples, a sample without a label, or a label
            outside ``[0, num_classes)``.
    """
    if not data_samples:
        raise ValueError('loss needs data_samples with gt_label; got none')
    if all('gt_score' in s for s in data_samples):
        target = torch.stack([s.gt_score for s in data_samples])
        if target.shape[1] != num_classes:
            raise ValueError(f'gt_score has {target.shape[1]} classes but '
                             f'the head predicts {num_classes}')
        return target
    missing = [i for i, s in enumerate(data_samples)
               if getattr(s, 'gt_label', None) is None]
    if missing:
        raise ValueError(f'data_samples{missing[:5]} have no gt_label; '
                         f'set it with sample.set_gt_label(label)')
    target = torch.cat([s.gt_label.reshape(-1)[:1] for s in data_samples])
    bad = (target < 0) | (target >= num_classes)
    if bool(bad.any()):
        raise ValueError(f'gt_label={int(target[bad][0])} is out of range '
                         f'for num_classes={num_classes} (valid: 0..'
                         f'{num_classes - 1})')
    return target


def topk_accuracy(cls_score: Tensor, target: Tensor,
                  topk: Sequence[int]) -> Dict[str, Tensor]:
    """Top-k accuracy in percent, ``{'accuracy/top1': ...}``."""
    if target.ndim == 2:  # soft targets: compare with their arg-max
        target = target.argmax(dim=1)
    maxk = min(max(topk), cls_score.shape[1])
    pred = cls_score.topk(maxk, dim=1).indices
    hits = pred == target[:, None]
    return {f'accuracy/top{k}': hits[:, :k].any(dim=1).float().mean() * 100
            for k in topk}


def make_predictions(cls_score: Tensor,
                     data_samples: Optional[Sequence] = None
                     ) -> List[ClsDataSample]:
    """Softmax scores and arg-max labels written into data samples.

    Samples given are updated (their ``gt_label`` kept); missing ones are
    created.
    """
    scores = F.softmax(cls_score.detach(), dim=1)
    labels = scores.argmax(dim=1, keepdim=True)
    if data_samples is None:
        data_samples = [None] * scores.shape[0]
    if len(data_samples) != scores.shape[0]:
        raise ValueError(f'{len(data_samples)} data_samples for a batch of '
                         f'{scores.shape[0]} images')
    out = []
    for sample, score, label in zip(data_samples, scores, labels):
        sample = ClsDataSample() if sample is None else sample
        sample.set_pred_score(score)
        sample.set_pred_label(label)
        out.append(sample)
    return out


class ClsHead(PretrainedRoutingMixin, BaseModule):
    """Base of the classification heads.

    Subclasses set ``in_features``/``out_features`` and implement
    :meth:`classify` (pre-logit features to logits); :meth:`pre_logits`
    picks the last feature tensor and checks its shape.

    Args:
        loss (dict | nn.Module): the loss, default cross-entropy.
        topk (int | tuple[int]): the k of the training accuracy.
        cal_acc (bool): add ``accuracy/topK`` (percent) to the loss dict.
        init_cfg (dict, optional): mmengine init config; a ``Pretrained``
            entry (any spelling) loads through
            :func:`mmbackbone.checkpoint.load_pretrained`.
    """

    in_features: int
    out_features: int

    def __init__(self, loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
                 topk: Union[int, Tuple[int, ...]] = (1, ),
                 cal_acc: bool = False, init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=to_plain(init_cfg))
        topk = to_plain(topk)
        if isinstance(topk, int) and not isinstance(topk, bool):
            topk = (topk, )
        if not isinstance(topk, (tuple, list)) or not topk or any(
                isinstance(k, bool) or not isinstance(k, int) or k < 1
                for k in topk):
            raise ValueError(f'topk={topk!r} must be a positive int or a '
                             f'tuple of them, e.g. (1, 5)')
        if not isinstance(cal_acc, bool):
            raise TypeError(f'cal_acc={cal_acc!r} must be True or False')
        self.topk = tuple(topk)
        self.cal_acc = cal_acc
        self.loss_module = build_loss(loss)

    @property
    def num_classes(self) -> int:
        return self.out_features

    def pre_logits(self, feats: Features) -> Tensor:
        """The features the final layer takes: the last of ``feats``."""
        x = feats[-1] if isinstance(feats, (tuple, list)) else feats
        if not isinstance(x, Tensor):
            raise TypeError(f'{type(self).__name__} takes a Tensor or a '
                            f'tuple of Tensors; got {type(x).__name__}')
        if not torch.jit.is_tracing() and (
                x.ndim != 2 or x.shape[1] != self.in_features):
            hint = (" (a map: add neck=dict(type='GlobalAveragePooling'))"
                    if x.ndim == 4 else '')
            raise ValueError(f'{type(self).__name__} takes (N, '
                             f'{self.in_features}) features; got shape '
                             f'{tuple(x.shape)}{hint}')
        return x

    def classify(self, pre_logits: Tensor) -> Tensor:
        """Logits from pre-logit features."""
        raise NotImplementedError

    def forward(self, feats: Features) -> Tensor:
        return self.classify(self.pre_logits(feats))

    def loss(self, feats: Features, data_samples: Sequence,
             **kwargs) -> Dict[str, Tensor]:
        """``{'loss': cross-entropy}`` (plus accuracies with ``cal_acc``)."""
        return self.loss_from_logits(self(feats), data_samples, **kwargs)

    def loss_from_logits(self, cls_score: Tensor, data_samples: Sequence,
                         **kwargs) -> Dict[str, Tensor]:
        target = stack_targets(data_samples, self.out_features)
        losses = {'loss': self.loss_module(cls_score, target.to(
            cls_score.device), **kwargs)}
        if self.cal_acc:
            losses.update(topk_accuracy(cls_score.detach(), target,
                                        self.topk))
        return losses

    def predict(self, feats: Features,
                data_samples: Optional[Sequence] = None
                ) -> List[ClsDataSample]:
        """Data samples with ``pred_score`` (softmax) and ``pred_label``."""
        return make_predictions(self(feats), data_samples)


@MODELS.register_module()
class LinearClsHead(ClsHead):
    """One fully connected layer: ``(N, in_channels) -> (N, num_classes)``.

    Keys (``fc.weight``, ``fc.bias``) and initialisation (normal, std 0.01)
    follow mmpretrain's ``LinearClsHead``, so an mmpretrain classifier's
    ``head.*`` tensors load unchanged.

    Args:
        num_classes (int): number of classes.
        in_channels (int): input features; an :class:`ImageClassifier`
            fills it from the backbone's (or neck's) ``out_features`` when
            the config leaves it out.
        loss, topk, cal_acc, init_cfg: see :class:`ClsHead`.

    Example:
        >>> import torch
        >>> from mmbackbone.structures import ClsDataSample
        >>> head = LinearClsHead(num_classes=10, in_channels=32)
        >>> tuple(head(torch.rand(2, 32)).shape)
        (2, 10)
        >>> samples = [ClsDataSample(gt_label=1), ClsDataSample(gt_label=7)]
        >>> sorted(head.loss((torch.rand(2, 32), ), samples))
        ['loss']
        >>> head.predict(torch.rand(2, 32))[0].pred_score.shape
        torch.Size([10])
    """

    def __init__(self, num_classes: int, in_channels: int,
                 loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
                 topk: Union[int, Tuple[int, ...]] = (1, ),
                 cal_acc: bool = False,
                 init_cfg: Optional[dict] = dict(type='Normal',
                                                 layer='Linear', std=0.01)):
        super().__init__(loss=loss, topk=topk, cal_acc=cal_acc,
                         init_cfg=init_cfg)
        self.in_features = _check_int(in_channels, 'in_channels')
        self.out_features = _check_int(num_classes, 'num_classes')
        self.fc = nn.Linear(in_channels, num_classes)

    @property
    def in_channels(self) -> int:
        return self.in_features

    def classify(self, pre_logits: Tensor) -> Tensor:
        return self.fc(pre_logits)
