"""Write a backbone as a TorchScript file for ``TorchScriptBackbone``.

SOURCE is one of:

- a config file read with ``mmbackbone.engine.load_config`` (``.py`` is
  code and runs; ``.yaml``/``.yml``/``.json`` are data and never run code,
  their ``.py`` bases only with ``--allow-python-bases``) with
  a ``backbone`` dict, a ``model`` dict that is a backbone, or a ``model``
  dict holding a ``backbone`` (a classifier / detector config);
- a registered backbone type: ``ResNet:resnet18`` picks one of the
  type's ``zoo_configs``; a bare type name uses the constructor's
  defaults;
- a timm model name (``resnet50``, ``vit_base_patch16_224.augreg_in21k``),
  wrapped in ``TIMMBackbone``: the pooled pre-logits vector by default,
  the last feature map with ``--feature-maps``.

The saved module returns one tensor, the backbone's last output. It is
scripted with ``torch.jit.script`` when the model allows it and traced
otherwise (a traced graph keeps eval-mode behaviour: BatchNorm uses its
running statistics, dropout is off, which is what a frozen backbone
wants). The file is loaded back and checked against the eager model, and
the feature count to put in the config as ``nr_features`` is printed.

Example::

    python tools/build_torchscript_backbone.py resnet50 r50.pt \\
        --checkpoint resnet50_timm.pth --input-size 224 224
    # config: dict(type='TorchScriptBackbone', path='r50.pt',
    #               nr_features=2048, input_size=(224, 224))
"""
import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from mmbackbone.models.backbones.torchscript_backbone import (
    load_torchscript, quiet_jit_deprecation)
from mmbackbone.utils.cli_options import add_allow_python_bases

DEFAULT_INPUT_SIZE = (224, 224)


class LastOutput(nn.Module):
    """Wrap a backbone so ``forward`` returns its last output tensor,
    optionally resizing the input first (bilinear) inside the graph."""

    def __init__(self, backbone: nn.Module,
                 resize_to: Optional[Tuple[int, int]] = None):
        super().__init__()
        self.backbone = backbone
        self.resize = resize_to is not None
        self.size: List[int] = list(resize_to or (0, 0))

    def forward(self, x: Tensor) -> Tensor:
        if self.resize:
            x = nn.functional.interpolate(x, size=self.size, mode='bilinear',
                                          align_corners=False)
        return self.backbone(x)[-1]


def _backbone_cfg_from_file(path: str,
                            allow_python_bases: bool = False) -> dict:
    """The backbone dict of a config file, its ``type`` names checked."""
    from mmbackbone.apis import check_config_types, resolve_type
    from mmbackbone.engine import load_config
    from mmbackbone.models.backbones.base_backbone import BaseBackbone
    cfg = load_config(path, allow_python_bases=allow_python_bases).to_dict()
    found = None
    if isinstance(cfg.get('backbone'), dict):
        found, where = cfg['backbone'], 'backbone'
    model = cfg.get('model')
    if found is None and isinstance(model, dict):
        if isinstance(model.get('backbone'), dict):
            found, where = model['backbone'], 'model.backbone'
        elif 'type' in model:
            check_config_types(model, f'config {path}: model')
            try:
                cls = resolve_type(model['type'])
            except (KeyError, ValueError, TypeError):
                cls = None
            if isinstance(cls, type) and issubclass(cls, BaseBackbone):
                found, where = model, 'model'
    if found is not None:
        check_config_types(found, f'config {path}: {where}')
        return found
    raise KeyError(f'config {path} has no backbone: give a top-level '
                   f"'backbone' dict, a 'model' dict that is a backbone, or "
                   f"a 'model' dict with a 'backbone' entry (top-level keys: "
                   f'{sorted(cfg)})')


def build_source(source: str, checkpoint: Optional[str] = None,
                 prefix: Optional[str] = None,
                 feature_maps: bool = False,
                 allow_python_bases: bool = False) -> Tuple[nn.Module, str]:
    """Build the backbone SOURCE names; return it and a description."""
    from mmbackbone import build_backbone, list_backbones
    from mmbackbone.registry import MODELS
    from mmbackbone.utils import closest
    pretrained = (dict(type='Pretrained', checkpoint=checkpoint,
                       **({'prefix': prefix} if prefix else {}))
                  if checkpoint else None)
    if os.path.isfile(source):
        cfg = dict(_backbone_cfg_from_file(source, allow_python_bases))
        if pretrained:
            cfg['init_cfg'] = pretrained
        what = f'config {source} ({cfg.get("type")})'
    elif source.split(':', 1)[0] in list_backbones():
        type_name, _, arch = source.partition(':')
        cfg = dict(type=type_name)
        if arch:
            zoo = getattr(MODELS.get(type_name), 'zoo_configs', {})
            if arch not in zoo:
                raise KeyError(f'{source!r}: {type_name} has no zoo arch '
                               f'{arch!r}.{closest(arch, zoo)} Choose from '
                               f'{sorted(zoo)}')
            cfg.update(zoo[arch])
        if pretrained:
            cfg['init_cfg'] = pretrained
        what = f'registered type {source}'
    else:
        from mmbackbone.models.backbones.timm_backbone import import_timm
        timm = import_timm()
        if not timm.is_model(source):
            names = list_backbones()
            raise KeyError(
                f'{source!r} is neither a config file, a registered backbone '
                f'type ({", ".join(names)}) nor a timm model name.'
                f'{closest(source, names + timm.list_models())}')
        cfg = dict(type='TIMMBackbone', model_name=source,
                   features_only=feature_maps, pooled=not feature_maps,
                   checkpoint_path=checkpoint or '')
        what = f'timm model {source}'
    model = build_backbone(cfg)
    model.init_weights()
    return model.eval(), what


def _default_input_size(model: nn.Module) -> Tuple[int, int]:
    timm_model = getattr(model, 'timm_model', None)
    cfg = getattr(timm_model, 'pretrained_cfg', None) or {}
    size = cfg.get('input_size')
    patch_embed = getattr(timm_model, 'patch_embed', None) or getattr(
        getattr(timm_model, 'model', None), 'patch_embed', None)
    img_size = getattr(patch_embed, 'img_size', None)
    if img_size is not None:
        return tuple(int(s) for s in img_size)
    if size is not None and len(size) == 3:
        return int(size[1]), int(size[2])
    img_size = getattr(model, 'img_size', None)
    if isinstance(img_size, int):
        return img_size, img_size
    if isinstance(img_size, Sequence) and len(img_size) == 2:
        return int(img_size[0]), int(img_size[1])
    return DEFAULT_INPUT_SIZE


def to_torchscript(module: nn.Module, example: Tensor,
                   method: str = 'auto') -> Tuple[torch.jit.ScriptModule,
                                                  str, List[str]]:
    """Script ``module`` (or trace it where scripting fails)."""
    with quiet_jit_deprecation():
        return _to_torchscript(module, example, method)


def _to_torchscript(module: nn.Module, example: Tensor,
                    method: str) -> Tuple[torch.jit.ScriptModule, str,
                                          List[str]]:
    notes: List[str] = []
    if method in ('auto', 'script'):
        try:
            return torch.jit.script(module), 'script', notes
        except Exception as err:  # scripting rejects much Python
            if method == 'script':
                raise
            first = str(err).strip().splitlines()[0] if str(err) else ''
            notes.append(f'torch.jit.script failed ({type(err).__name__}: '
                         f'{first[:200]}); traced instead')
    with torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
    notes.append('traced graphs keep eval-mode behaviour (BatchNorm running '
                 'statistics, no dropout)')
    return traced, 'trace', notes


def build_torchscript(source: str, out: str,
                      input_size: Optional[Sequence[int]] = None,
                      checkpoint: Optional[str] = None,
                      prefix: Optional[str] = None,
                      feature_maps: bool = False,
                      embed_resize: bool = False,
                      method: str = 'auto',
                      allow_python_bases: bool = False) -> dict:
    """Build SOURCE, save it as TorchScript at ``out``, verify, report.

    Returns:
        dict: ``nr_features``, ``output_shape``, ``method``,
        ``max_abs_diff`` (saved vs eager), ``input_size``, ``notes``.
    """
    model, what = build_source(source, checkpoint, prefix, feature_maps,
                               allow_python_bases)
    size = tuple(input_size) if input_size else _default_input_size(model)
    module = LastOutput(model, size if embed_resize else None).eval()
    example = torch.rand(2, getattr(model, 'in_channels', 3), *size)
    scripted, used, notes = to_torchscript(module, example, method)
    Path(out).expanduser().parent.mkdir(parents=True, exist_ok=True)
    with quiet_jit_deprecation():
        torch.jit.save(scripted, str(out))
    loaded = load_torchscript(out).eval()
    with torch.no_grad():
        want = module(example)
        got = loaded(example)
    diff = (want - got).abs().max().item()
    if not torch.allclose(want, got, atol=1e-5, rtol=1e-4):
        raise RuntimeError(f'{out}: the saved {used}d module differs from '
                           f'the eager model by {diff:.3g} (max abs); the '
                           f'model has input-dependent control flow that '
                           f'{used} cannot capture')
    return dict(source=what, nr_features=int(want.shape[1]),
                output_shape=tuple(want.shape), method=used,
                max_abs_diff=diff, input_size=size, notes=notes)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Save a backbone (config, registered type or timm '
        'model) as a TorchScript file for TorchScriptBackbone.')
    parser.add_argument('source', metavar='CONFIG_OR_TIMM_NAME',
                        help='config file, registered type (ResNet:resnet18) '
                        'or timm model name')
    parser.add_argument('out', metavar='OUT.pt', help='file to write')
    parser.add_argument('--input-size', nargs=2, type=int, metavar=('H', 'W'),
                        help='example input size for tracing and checking '
                        '(default: the model\'s own, else 224 224)')
    parser.add_argument('--checkpoint', help='weights to load first (timm '
                        'names: checkpoint_path; others: init_cfg Pretrained)')
    parser.add_argument('--prefix', help="checkpoint key prefix to keep and "
                        "strip, e.g. 'backbone'")
    parser.add_argument('--feature-maps', action='store_true',
                        help='timm names: the last feature map instead of '
                        'the pooled vector')
    parser.add_argument('--embed-resize', action='store_true',
                        help='resize inputs to --input-size inside the saved '
                        'module (bilinear)')
    parser.add_argument('--method', choices=('auto', 'script', 'trace'),
                        default='auto', help='default: script, else trace')
    add_allow_python_bases(parser)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    info = build_torchscript(args.source, args.out, args.input_size,
                             args.checkpoint, args.prefix, args.feature_maps,
                             args.embed_resize, args.method,
                             args.allow_python_bases)
    for note in info['notes']:
        print(f'note: {note}')
    height, width = info['input_size']
    print(f'wrote {args.out} ({info["method"]}) from {info["source"]}: '
          f'output {info["output_shape"]} for a {height}x{width} input, max '
          f'abs diff vs eager {info["max_abs_diff"]:.2e}')
    print(f'nr_features: {info["nr_features"]}')
    print(f"config: dict(type='TorchScriptBackbone', path={args.out!r}, "
          f'nr_features={info["nr_features"]}, input_size=({height}, '
          f'{width}))')
    return 0


if __name__ == '__main__':
    sys.exit(main())
