"""ImageClassifier: backbone -> neck(s) -> head, an mmengine BaseModel."""
import inspect
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from torch import Tensor, nn

from mmbackbone.registry import MODELS
from ..backbones.base_backbone import BaseBackbone
from ..heads.cls_head import make_predictions, stack_targets, to_plain
from ..init_cfg import PretrainedRoutingMixin

MODES = ('tensor', 'loss', 'predict')
RETURNTS = ('out', 'features', 'both', 'full')
STAGES = ('backbone', 'neck', 'pre_logits')
#: Constructor arguments filled from the upstream ``out_features``.
WIDTH_ARGS = ('in_channels', 'in_features')


def _build(cfg: Any, what: str, width: Optional[int] = None,
           default_type: Optional[str] = None) -> nn.Module:
    """A module from a module or a config dict, filling its input width.

    When ``cfg`` names a type whose constructor takes ``in_channels`` or
    ``in_features`` and leaves it out, ``width`` (the ``out_features`` of
    the part before) is filled in.
    """
    from mmbackbone.apis import build_from_config, resolve_type
    cfg = to_plain(cfg)
    if isinstance(cfg, nn.Module):
        return cfg
    if not isinstance(cfg, Mapping):
        raise TypeError(f'{what} must be a config dict (with "type") or an '
                        f'nn.Module; got {type(cfg).__name__}: {cfg!r:.100}')
    cfg = dict(cfg)
    if default_type is not None:
        cfg.setdefault('type', default_type)
    if 'type' in cfg:
        try:
            params = inspect.signature(resolve_type(cfg['type'], MODELS,
                                                    f'{what}.type')).parameters
        except (TypeError, ValueError, KeyError):
            params = {}  # build_from_config below reports the problem
        for arg in WIDTH_ARGS:
            if arg in params and arg not in cfg:
                if width is not None:
                    cfg[arg] = width
                elif params[arg].default is inspect.Parameter.empty:
                    raise ValueError(
                        f'{what} config {cfg!r} leaves out {arg!r} and the '
                        f'part before it exposes no out_features to infer '
                        f'it from; give {arg} explicitly')
    return build_from_config(cfg, MODELS, what)


def _last(feats: Union[Tensor, Sequence[Tensor]]) -> Tensor:
    return feats[-1] if isinstance(feats, (tuple, list)) else feats


def _reset_plain(module: nn.Module) -> None:
    """``reset_parameters()`` through a plain module tree; a submodule
    with ``init_weights()`` is initialised by it instead."""
    for child in module.children():
        if hasattr(child, 'init_weights'):
            if not getattr(child, '_is_init', False):
                child.init_weights()
        else:
            _reset_plain(child)
    if hasattr(module, 'reset_parameters'):
        module.reset_parameters()


@MODELS.register_module()
class ImageClassifier(PretrainedRoutingMixin, BaseModel):
    """A backbone, optional neck(s) and a classification head.

    Args:
        backbone (dict | nn.Module): a backbone config
            (``dict(type='ResNet', depth=18)``, built with
            :func:`mmbackbone.build_backbone`) or module. A backbone that
            returns a single tensor (e.g. a custom ``N x C`` feature
            extractor) is treated as a 1-tuple.
        neck (dict | nn.Module | list, optional): a neck, or a list of necks
            applied in order (``[dict(type='GlobalAveragePooling'),
            dict(type='MLPNeck', depth=2)]``; held in an ``nn.Sequential``).
        head (dict | nn.Module, optional): the classification head.
        data_preprocessor (dict | nn.Module, optional): defaults to
            :class:`ClsDataPreprocessor` (a dict without ``type`` configures
            that one, e.g. ``dict(mean=[...], std=[...], to_rgb=True)``).
        init_cfg (dict | list, optional): mmengine init config. A
            ``dict(type='Pretrained', checkpoint=..., prefix=...)`` entry
            (any spelling, also inside ``override=dict(name='backbone',
            ...)``) loads through :func:`mmbackbone.checkpoint.
            load_pretrained` after every other entry and every part's own
            ``init_cfg``: a file none of whose keys fit is an error, and
            missing keys are reported.

    Input widths are inferred: a neck or head config that leaves out
    ``in_channels`` / ``in_features`` gets the ``out_features`` of the
    part before it (the backbone's ``BaseBackbone.out_features``, the
    channels of its last output, or an ``MLPNeck``'s width). Modules passed
    ready-made (e.g. Hydra ``_target_`` children) must be built with their
    widths given.

    The parts' keys (``backbone.*``, ``neck.*``, ``head.fc.*``) equal those
    of mmpretrain's ``ImageClassifier``, so its classifier checkpoints load.

    ``forward(inputs, data_samples=None, mode='tensor', returnt='out')``:

    * ``mode='tensor'`` with ``returnt``: ``'out'`` the logits (the neck
      output if there is no head); ``'features'`` the pre-logit features
      (what the head's last layer takes, ``N x C``); ``'both'`` the tuple
      ``(logits, features)``; ``'full'`` a list of every backbone output
      followed by the logits.
    * ``mode='loss'``: ``dict(loss=cross-entropy)`` from ``gt_label``.
    * ``mode='predict'``: the data samples (created if not given) with
      ``pred_score`` (softmax) and ``pred_label`` set, ``gt_label`` kept.

    Example:
        >>> import torch
        >>> model = ImageClassifier(
        ...     backbone=dict(type='ResNet', depth=18),
        ...     neck=dict(type='GlobalAveragePooling'),
        ...     head=dict(type='LinearClsHead', num_classes=10)).eval()
        >>> model.head.in_channels  # inferred from the backbone
        512
        >>> x = torch.rand(2, 3, 64, 64)
        >>> tuple(model(x).shape), tuple(model(x, returnt='features').shape)
        ((2, 10), (2, 512))
        >>> [tuple(t.shape) for t in model(x, returnt='full')]
        [(2, 512, 2, 2), (2, 10)]
        >>> model(x, mode='predict')[0].pred_label.shape
        torch.Size([1])
        >>> flat = model.get_params()  # Mammoth's flat helpers, all parts
        >>> flat.numel() == sum(p.numel() for p in model.parameters())
        True
        >>> model.set_params(torch.zeros_like(flat))
        >>> float(model.head.fc.weight.detach().abs().sum())
        0.0
    """

    def _init_after_random(self) -> None:
        """Initialise the parts mmengine leaves alone: plain ``nn.Module``
        parts (a custom backbone, or one built by Hydra before the Runner
        seeded the RNG) are reset with each layer's ``reset_parameters()``,
        so the Runner's seed decides every weight. A part (or a layer in
        it) with its own ``init_weights()`` is initialised by that."""
        for part in self.children():
            if not hasattr(part, 'init_weights'):
                _reset_plain(part)

    def __init__(self, backbone, neck=None, head=None,
                 data_preprocessor=None, init_cfg: Optional[dict] = None):
        data_preprocessor = to_plain(data_preprocessor)
        if data_preprocessor is None:
            data_preprocessor = {}
        data_preprocessor = _build(data_preprocessor, 'data_preprocessor',
                                   default_type='ClsDataPreprocessor')
        super().__init__(data_preprocessor=data_preprocessor,
                         init_cfg=to_plain(init_cfg))
        from mmbackbone.apis import build_backbone
        backbone = to_plain(backbone)
        if isinstance(backbone, Mapping):
            backbone = build_backbone(backbone)
        elif not isinstance(backbone, nn.Module):
            raise TypeError(f'backbone must be a config dict or an '
                            f'nn.Module; got {type(backbone).__name__}')
        self.backbone = backbone
        width = getattr(backbone, 'out_features', None)

        neck = to_plain(neck)
        if isinstance(neck, (list, tuple)):
            necks = []
            for i, cfg in enumerate(neck):
                necks.append(_build(cfg, f'neck[{i}]', width))
                width = getattr(necks[-1], 'out_features', width)
            self.neck = nn.Sequential(*necks) if necks else None
        elif neck is not None:
            self.neck = _build(neck, 'neck', width)
            width = getattr(self.neck, 'out_features', width)
        else:
            self.neck = None
        self.head = None if head is None else _build(head, 'head', width)

    # Mammoth's flat parameter / gradient helpers, over every parameter of
    # the classifier (backbone, necks, head): the backbone contract's
    # functions, shared rather than copied.
    get_params = BaseBackbone.get_params
    set_params = BaseBackbone.set_params
    get_grads = BaseBackbone.get_grads
    set_grads = BaseBackbone.set_grads
    _scatter = BaseBackbone._scatter

    def _dump_init_info(self) -> None:
        """Skip mmengine's per-parameter init log (one line per tensor);
        pretrained loading logs one summary line instead."""

    @property
    def with_neck(self) -> bool:
        return self.neck is not None

    @property
    def with_head(self) -> bool:
        return self.head is not None

    # ------------------------------------------------------------ features
    def _backbone_outputs(self, inputs: Tensor) -> Tuple[Tensor, ...]:
        outs = self.backbone(inputs)
        if isinstance(outs, Tensor):
            return (outs, )
        return tuple(outs)

    def _pre_logits(self, feats) -> Tensor:
        if hasattr(self.head, 'pre_logits'):
            return self.head.pre_logits(feats)
        return _last(feats)

    def _classify(self, pre_logits: Tensor) -> Tensor:
        if hasattr(self.head, 'classify'):
            return self.head.classify(pre_logits)
        return self.head(pre_logits)

    def extract_feat(self, inputs: Tensor, stage: str = 'neck'):
        """Features at a stage.

        Args:
            inputs (Tensor): ``(N, C, H, W)`` images (preprocessed).
            stage (str): ``'backbone'`` (the backbone's tuple), ``'neck'``
                (the neck output; the backbone's without a neck) or
                ``'pre_logits'`` (what the head's last layer takes).

        Example:
            >>> import torch
            >>> model = ImageClassifier(dict(type='ResNet', depth=18),
            ...                         dict(type='GlobalAveragePooling'))
            >>> x = torch.rand(1, 3, 64, 64)
            >>> [tuple(t.shape) for t in model.extract_feat(x, 'backbone')]
            [(1, 512, 2, 2)]
            >>> [tuple(t.shape) for t in model.extract_feat(x)]
            [(1, 512)]
        """
        if stage not in STAGES:
            raise ValueError(f'stage={stage!r}; choose from {STAGES}')
        outs = self._backbone_outputs(inputs)
        if stage == 'backbone':
            return outs
        feats = self.neck(outs) if self.with_neck else outs
        if stage == 'neck':
            return feats
        if not self.with_head:
            raise ValueError("stage='pre_logits' needs a head; this "
                             "ImageClassifier has none")
        return self._pre_logits(feats)

    # ------------------------------------------------------------- forward
    def forward(self, inputs: Tensor, data_samples: Optional[list] = None,
                mode: str = 'tensor', returnt: str = 'out'):
        """Run the model; see the class docstring for ``mode``/``returnt``."""
        if mode not in MODES:
            raise ValueError(f'mode={mode!r}; choose from {MODES}')
        if returnt not in RETURNTS:
            raise ValueError(f'returnt={returnt!r}; choose from {RETURNTS}')
        if mode != 'tensor' and returnt != 'out':
            raise ValueError(f"returnt={returnt!r} applies to mode='tensor' "
                             f'only (got mode={mode!r})')
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        return self._tensor(inputs, returnt)

    def _tensor(self, inputs: Tensor, returnt: str):
        outs = self._backbone_outputs(inputs)
        feats = self.neck(outs) if self.with_neck else outs
        if not self.with_head:
            if returnt != 'out':
                raise ValueError(f'returnt={returnt!r} needs a head; this '
                                 f'ImageClassifier has none')
            return feats
        pre_logits = self._pre_logits(feats)
        logits = self._classify(pre_logits)
        if returnt == 'out':
            return logits
        if returnt == 'features':
            return pre_logits
        if returnt == 'both':
            return logits, pre_logits
        return [*outs, logits]

    def _require_head(self, mode: str) -> None:
        if not self.with_head:
            raise ValueError(f"mode={mode!r} needs a head; this "
                             f"ImageClassifier has none")

    def loss(self, inputs: Tensor, data_samples: Optional[list]) -> dict:
        """``dict(loss=...)`` (and the head's extra entries)."""
        self._require_head('loss')
        if not data_samples:
            raise ValueError("mode='loss' needs data_samples with gt_label")
        feats = self.extract_feat(inputs)
        if hasattr(self.head, 'loss'):
            return self.head.loss(feats, data_samples)
        logits = self._classify(self._pre_logits(feats))
        target = stack_targets(data_samples, logits.shape[1])
        return {'loss': F.cross_entropy(logits, target.to(logits.device))}

    def predict(self, inputs: Tensor,
                data_samples: Optional[list] = None) -> List:
        """Data samples with ``pred_score`` and ``pred_label`` set."""
        self._require_head('predict')
        feats = self.extract_feat(inputs)
        if hasattr(self.head, 'predict'):
            return self.head.predict(feats, data_samples)
        with torch.no_grad():
            logits = self._classify(self._pre_logits(feats))
        return make_predictions(logits, data_samples)
