"""What a timm model will give before it is built for real: its feature
levels and outputs, read from a copy built on the meta device (no memory,
no weights) and checked by a free meta forward where timm's
``feature_info`` can be wrong. Also the two pieces of the whole-model
forward that the probes share with :class:`.TIMMBackbone`: removing the
classifier and collecting the outputs as NCHW.
"""
import warnings
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn


def remove_head(model: nn.Module, pooled: bool) -> None:
    """The classifier (and, unless ``pooled``, the global pooling)
    replaced by ``nn.Identity`` through timm's ``reset_classifier``."""
    if pooled and getattr(model, 'num_classes', 0):
        model.reset_classifier(0)
    elif not pooled and hasattr(model, 'reset_classifier'):
        model.reset_classifier(0, '')


def whole_model_outputs(model: nn.Module, x: Tensor, nhwc: bool,
                        pooled: bool) -> Tuple[Tensor, ...]:
    """The outputs of a whole (head-less) timm model, maps as NCHW; the
    pre-logits vector when ``pooled``."""
    if pooled:
        return (model.forward_head(model.forward_features(x),
                                   pre_logits=True), )
    out = model(x)
    outs = tuple(out) if isinstance(out, (list, tuple)) else (out, )
    if nhwc:
        outs = tuple(o.permute(0, 3, 1, 2) if o.ndim == 4 else o
                     for o in outs)
    return outs


def build_probe(timm, model_name: str, kwargs: dict, what: str,
                read: Callable[[nn.Module], tuple]) -> tuple:
    """``read`` a copy of the timm model built on the meta device, or on
    the CPU where meta cannot build it; errors name the model and
    ``what`` was being built."""
    errors = []
    for device in ('meta', 'cpu'):
        try:
            with warnings.catch_warnings(), torch.device(device), \
                    torch.no_grad():
                warnings.simplefilter('ignore')
                return read(timm.create_model(
                    model_name, pretrained=False, **kwargs))
        except TypeError as err:
            if 'unexpected keyword argument' not in str(err):
                errors.append(f'{type(err).__name__}: {err}')
                continue
            if 'dynamic_img_size' in str(err):
                raise no_dynamic_img_size(model_name) from err
            raise TypeError(f'timm model {model_name!r} rejected '
                            f'the arguments {sorted(kwargs)}: {err}'
                            ) from err
        except Exception as err:  # timm raises asserts, RuntimeErrors
            errors.append(f'{type(err).__name__}: {err}')
    raise ValueError(f'timm model {model_name!r} cannot build '
                     f'{what} ({errors[-1]})')


def probe_levels(timm, model_name: str, kwargs: dict, in_channels: int
                 ) -> Tuple[List[dict], Tuple[int, ...]]:
    """Every feature level timm offers and timm's default out_indices,
    so the real model can be built once, with just the levels needed.
    """
    kwargs = dict(kwargs, features_only=True)

    def read(probe):
        info = probe.feature_info
        levels = [dict(f) for f in info.info]
        default = tuple(int(i) % len(levels) for i in info.out_indices)
        if not is_meta(probe):
            return levels, default  # no free forward: trust timm
        every = tuple(range(len(levels)))
        if tuple(sorted(set(default))) != every:
            probe = timm.create_model(model_name, pretrained=False,
                                      **dict(kwargs, out_indices=every))
        try:
            size = probe_input_size(probe)
            shapes = measure_levels(probe.eval(), in_channels, size,
                                    is_nhwc(probe))
        except Exception:  # the meta forward failed: trust timm
            return levels, default
        if len(shapes[0]) != len(levels):
            return levels, default
        return checked_levels(levels, shapes, size[0]), default

    return build_probe(timm, model_name, kwargs,
                       'with features_only=True; use features_only='
                       'False for its last output', read)


def probe_output(timm, model_name: str, kwargs: dict, in_channels: int,
                 pooled: bool
                 ) -> Tuple[List[int], List[Optional[int]], bool]:
    """Channels and stride of each output of the whole model (stride
    None for vectors and tokens), and whether its maps are NHWC."""
    def read(probe):
        remove_head(probe, pooled)
        nhwc = is_nhwc(probe)
        size = probe_input_size(probe)
        outs = whole_model_outputs(
            probe.eval(), torch.zeros(1, in_channels, *size), nhwc, pooled)
        channels = [int(out.shape[-1 if out.ndim == 3 else 1])
                    for out in outs]  # tokens (B, L, C): C
        strides = [round(size[0] / out.shape[2]) if out.ndim == 4
                   else None for out in outs]
        return channels, strides, nhwc

    return build_probe(timm, model_name, dict(kwargs), 'its whole model',
                       read)


def is_nhwc(model: nn.Module) -> bool:
    """Whether the timm model's maps are NHWC (``output_fmt``)."""
    fmt = getattr(model, 'output_fmt', 'NCHW')
    return str(getattr(fmt, 'value', fmt)) == 'NHWC'


def no_dynamic_img_size(model_name: str) -> ValueError:
    return ValueError(
        f'dynamic_img_size=True: timm model {model_name!r} does not take '
        f'dynamic_img_size (timm offers it for ViT, DeiT, EVA and Swin '
        f'models); leave it out')


def is_meta(model: nn.Module) -> bool:
    param = next(model.parameters(), None)
    return param is not None and param.is_meta


def measure_levels(model: nn.Module, in_channels: int,
                    size: Tuple[int, int], nhwc: bool
                    ) -> List[List[Tuple[int, int]]]:
    """``(channels, height)`` of each feature level for an input of
    ``size`` and, where the model takes it, of twice that size (run on the
    meta device, so both are free)."""
    shapes = []
    for scale in (1, 2):
        try:
            feats = model(torch.zeros(1, in_channels, size[0] * scale,
                                      size[1] * scale))
        except Exception:
            if scale == 1:
                raise
            break  # a fixed input size
        if isinstance(feats, dict):
            feats = list(feats.values())
        shapes.append([(int(f.shape[-1 if nhwc else 1]),
                        int(f.shape[1 if nhwc else 2])) for f in feats])
    return shapes


def checked_levels(levels: List[dict], shapes: List[List[Tuple[int, int]]],
                    size: int) -> List[dict]:
    """timm's levels with the measured channels, and the measured stride
    where timm's reduction does not fit the maps.

    With two input sizes ``S`` and ``2S`` a stride ``r`` grows the map by
    ``S / r`` (give or take one for padding), whatever the padding; with
    one size the map is ``S / r`` give or take one.
    """
    checked = []
    for i, level in enumerate(levels):
        level = dict(level)
        channels, height = shapes[0][i]
        level['num_chs'] = channels
        growth = shapes[1][i][1] - height if len(shapes) > 1 else 0
        seen = growth if growth > 0 else height
        reduction = level.get('reduction')
        if seen > 0 and (not reduction or abs(seen - size / reduction) > 1):
            level['reduction'] = max(1, round(size / seen))
        checked.append(level)
    return checked


def probe_input_size(model: nn.Module) -> Tuple[int, int]:
    """An input size the model takes: its patch embedding's fixed size,
    else its pretrained config's, else 224."""
    embed = getattr(model, 'patch_embed', None)
    if embed is None:  # inside timm's FeatureGetterNet
        embed = getattr(getattr(model, 'model', None), 'patch_embed', None)
    size = getattr(embed, 'img_size', None)
    if size is None:
        cfg = getattr(model, 'pretrained_cfg', None) or {}
        size = tuple(cfg.get('input_size', (3, 224, 224)))[-2:]
    if isinstance(size, int):
        size = (size, size)
    return int(size[0]), int(size[1])
