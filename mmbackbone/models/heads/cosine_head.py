"""Cosine-similarity classification head (as in SESEMI's tutorial head)."""
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmbackbone.registry import MODELS
from .cls_head import ClsHead, _check_int


@MODELS.register_module()
class CosineSimilarityHead(ClsHead):
    """Logits are cosine similarities between features and class weights.

    ``logits[n, k] = cos(features[n], weight[k])``, in ``[-1, 1]``: both the
    features and each class's weight row are L2-normalised before the
    product, so only directions matter. With ``scale=None`` (the default)
    the cosines are the logits unchanged, as SESEMI's
    ``CosineSimilarityHead`` does; a number multiplies them (a temperature,
    e.g. 16 as in normalised-softmax training, so that cross-entropy can
    approach zero); ``learn_scale=True`` makes that factor a learnable
    parameter (stored as its logarithm in ``log_scale``) starting at
    ``scale`` (1 when ``scale`` is None).

    Args:
        in_features (int): features of the input; an
            :class:`ImageClassifier` fills it from the backbone's (or
            neck's) ``out_features`` when the config leaves it out.
        out_features (int): number of classes.
        scale (float, optional): fixed (or initial) logit scale, > 0.
        learn_scale (bool): learn the scale. Defaults to False.
        loss, topk, cal_acc, init_cfg: see :class:`ClsHead`.

    The class weights ``weight`` (``out_features x in_features``) start
    from Kaiming-normal values.

    Example:
        >>> import torch
        >>> head = CosineSimilarityHead(in_features=84, out_features=10)
        >>> logits = head(torch.rand(2, 84))
        >>> tuple(logits.shape), bool(logits.abs().max() <= 1)
        ((2, 10), True)
    """

    def __init__(self, in_features: int, out_features: int,
                 scale: Optional[float] = None, learn_scale: bool = False,
                 loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
                 topk: Union[int, Tuple[int, ...]] = (1, ),
                 cal_acc: bool = False, init_cfg: Optional[dict] = None):
        super().__init__(loss=loss, topk=topk, cal_acc=cal_acc,
                         init_cfg=init_cfg)
        self.in_features = _check_int(in_features, 'in_features')
        self.out_features = _check_int(out_features, 'out_features')
        if scale is not None and (isinstance(scale, bool) or not isinstance(
                scale, (int, float)) or not scale > 0):
            raise ValueError(f'scale={scale!r} must be None or a number > 0')
        if not isinstance(learn_scale, bool):
            raise TypeError(f'learn_scale={learn_scale!r} must be True or '
                            f'False')
        self.scale = None if scale is None else float(scale)
        self.learn_scale = learn_scale
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self._init_after_random()
        if learn_scale:
            start = 1.0 if scale is None else float(scale)
            self.log_scale = nn.Parameter(torch.tensor(math.log(start)))
        else:
            self.register_parameter('log_scale', None)

    def _init_after_random(self) -> None:
        """Kaiming-normal class weights (again at ``init_weights()``, so a
        Runner's seed decides them)."""
        nn.init.kaiming_normal_(self.weight)

    def classify(self, pre_logits: Tensor) -> Tensor:
        cosine = F.linear(F.normalize(pre_logits, dim=1),
                          F.normalize(self.weight, dim=1))
        if self.log_scale is not None:
            return cosine * self.log_scale.exp()
        if self.scale is not None:
            return cosine * self.scale
        return cosine

    def extra_repr(self) -> str:
        return (f'in_features={self.in_features}, '
                f'out_features={self.out_features}, scale={self.scale}, '
                f'learn_scale={self.learn_scale}')
