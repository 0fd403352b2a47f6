"""Export a backbone to a ``torch.export`` program (.pt2) and/or ONNX.

SOURCE is a config file (its ``model.backbone``, ``backbone`` or
``model`` entry; ``.yaml``/``.json`` are data, ``.py`` is code), a
registered type (``ResNet``) or a zoo arch name (``resnet50``); ``--type``
names the type instead, ``--arch`` picks one of its zoo configs and
``--out-indices`` the outputs. The backbone is exported in eval mode with
a dynamic batch and dynamic height and width, each a multiple of what the
backbone needs (its largest stage stride, a ViT's patch size; 32 when
unknown).

- ``.pt2``: ``torch.export.save``; the metadata (out_channels,
  out_strides, nr_features, input constraints, the parameter names of the
  stem and of each stage) is stored inside, as ``extra/mmbackbone.json``.
  Load it with ``ExportedBackbone(path=...)``.
- ``.onnx``: opset 17, the TorchScript-based exporter (what the export
  tests check with onnxruntime), dynamic axes named ``batch``, ``height``
  and ``width``; the metadata goes to ``<file>.onnx.json`` next to it.

Each written program is loaded back and checked against the eager model
on an input of another size than the example it was traced with.

Example::

    python tools/export.py ResNet --arch resnet18 --out-indices 0 1 2 3 \\
        --format both --out work_dirs/r18 --input-size 224 224
    # config: dict(type='ExportedBackbone', path='work_dirs/r18.pt2')
"""
import argparse
import json
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from mmbackbone.utils.cli_options import add_allow_python_bases

#: The key of the metadata inside a .pt2 archive (``extra/<key>``).
METADATA_NAME = 'mmbackbone.json'
#: The metadata format; readers refuse newer versions.
METADATA_VERSION = 1
FORMATS = ('pt2', 'onnx', 'both')
ONNX_OPSET = 17
#: Largest batch and spatial size the exported programs accept.
MAX_BATCH = 1024
MAX_SIDE = 8192
#: Output agreement asked of the written programs (max abs, relative to
#: the largest eager value when above 1).
CHECK_TOL = 1e-4


@contextmanager
def quiet_export_warnings():
    """Silence the legacy ONNX exporter's retirement notices (it is still
    what deployment stacks consume) and its tracer warnings (a size that
    becomes a constant is caught by the probe of another size)."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        warnings.filterwarnings('ignore', category=DeprecationWarning,
                                message='.*(legacy TorchScript|The feature '
                                'will be removed).*')
        warnings.filterwarnings('ignore', category=FutureWarning,
                                message=r'.*torch\.jit.*')
        yield


# ------------------------------------------------------------- building
def build_for_export(source: Optional[str] = None,
                     type_name: Optional[str] = None,
                     arch: Optional[str] = None,
                     out_indices: Optional[Sequence[int]] = None,
                     checkpoint: Optional[str] = None,
                     prefix: Optional[str] = None,
                     allow_python_bases: bool = False) -> nn.Module:
    """Build the backbone a command line names, in eval mode.

    Args:
        source: a config file, a registered type or a zoo arch name.
        type_name: a registered type (instead of ``source``).
        arch: one of the type's ``zoo_configs``.
        out_indices: the outputs (default: the type's or config's own).
        checkpoint: weights loaded through ``init_cfg`` ``Pretrained``.
        prefix: keep and strip this checkpoint key prefix.
        allow_python_bases: let a YAML/JSON config inherit ``.py`` files.

    Returns:
        nn.Module: the backbone, weights loaded, in eval mode.

    Example:
        >>> build_for_export('ResNet', arch='resnet18',
        ...                  out_indices=(0, 3)).out_channels
        (64, 512)
    """
    from mmbackbone.apis import build_backbone
    from mmbackbone.cli.backbone import (backbone_from_config,
                                         resolve_backbone, zoo_configs)
    from mmbackbone.utils import closest
    if (source is None) == (type_name is None):
        raise ValueError(f'give a SOURCE (config file, type or arch name) or '
                         f'--type, not both or neither (SOURCE={source!r}, '
                         f'--type={type_name!r})')
    name = source if source is not None else type_name
    if source is not None and Path(source).is_file():
        if arch is not None:
            raise ValueError(f'--arch={arch!r} applies to a type; set the '
                             f'arch in the config {source}')
        obj, resolved, kwargs = backbone_from_config(source,
                                                     allow_python_bases)
    else:
        obj, resolved, kwargs = resolve_backbone(name)
    if arch is not None:
        zoo = zoo_configs(obj)
        if arch not in zoo:
            raise KeyError(f'--arch={arch!r}: {resolved} has no zoo arch of '
                           f'that name.{closest(arch, zoo)} Choose from '
                           f'{sorted(zoo)}')
        kwargs = {**kwargs, **zoo[arch]}
    if out_indices is not None:
        kwargs['out_indices'] = tuple(out_indices)
    if checkpoint:
        kwargs['init_cfg'] = dict(type='Pretrained', checkpoint=checkpoint,
                                  **({'prefix': prefix} if prefix else {}))
    model = build_backbone(dict(type=resolved, **kwargs))
    model.init_weights()
    return model.eval()


# ------------------------------------------------------------- metadata
def spatial_multiple(model: nn.Module) -> int:
    """What height and width must be a multiple of: the largest stage
    stride, else a ViT's patch size, else 32.

    Example:
        >>> from mmbackbone import build_backbone
        >>> spatial_multiple(build_backbone(dict(type='ResNet', depth=18)))
        32
    """
    strides = [s for s in getattr(model, 'stage_strides', ()) or ()
               if isinstance(s, int)]
    if strides:
        return max(strides)
    patch = getattr(model, 'patch_size', None)
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    if isinstance(patch, int) and patch > 0:
        return patch
    return 32


def default_input_size(model: nn.Module) -> Tuple[int, int]:
    """The example size: the model's ``img_size`` when it has one, else
    224x224 (rounded up to the spatial multiple)."""
    size = getattr(model, 'img_size', None)
    if isinstance(size, int):
        size = (size, size)
    if not (isinstance(size, (tuple, list)) and len(size) == 2):
        size = (224, 224)
    step = spatial_multiple(model)
    return tuple(-(-int(s) // step) * step for s in size)


def _stage_names(model: nn.Module) -> List[List[str]]:
    """Names of the parameters of the stem and of each stage, so that the
    exported backbone can freeze stages; empty when unknown."""
    if not hasattr(model, 'stage_parts'):
        return []
    try:
        groups = model.stage_parts()
    except (NotImplementedError, AttributeError):
        return []
    names = {id(p): n for n, p in model.named_parameters()}
    result = []
    for group in groups:
        params = []
        for part in group:
            params.extend([part] if isinstance(part, nn.Parameter)
                          else part.parameters())
        result.append(sorted({names[id(p)] for p in params
                              if id(p) in names}))
    return result


def _input_constraints(program, multiple: int) -> Dict[str, dict]:
    """min / max / multiple of batch, height and width, as the exported
    program's range constraints state them."""
    placeholder = [n for n in program.graph.nodes if n.op == 'placeholder'
                   and n.name in program.graph_signature.user_inputs][0]
    shape = placeholder.meta['val'].shape
    found = {}
    for dim, key in ((0, 'batch'), (2, 'height'), (3, 'width')):
        size = shape[dim]
        if isinstance(size, int):
            found[key] = dict(min=size, max=size, multiple=1)
            continue
        expr = size.node.expr
        (symbol, ) = expr.free_symbols
        step = int(expr / symbol)
        bounds = program.range_constraints[symbol]
        upper = bounds.upper
        found[key] = dict(min=int(bounds.lower) * step,
                          max=int(upper) * step if upper.is_finite else None,
                          multiple=step)
    return found


def backbone_metadata(model: nn.Module, program=None,
                      multiple: Optional[int] = None) -> dict:
    """The metadata written with an exported backbone.

    Example:
        >>> from mmbackbone import build_backbone
        >>> meta = backbone_metadata(build_backbone(dict(
        ...     type='ResNet', depth=18, out_indices=(2, 3))))
        >>> meta['out_channels'], meta['out_strides'], meta['nr_features']
        ([256, 512], [16, 32], 512)
    """
    multiple = multiple or spatial_multiple(model)
    strides = [s if isinstance(s, int) else None
               for s in getattr(model, 'out_strides', ())]
    channels = [int(c) for c in getattr(model, 'out_channels', ())]
    meta = dict(version=METADATA_VERSION, type=type(model).__name__,
                out_indices=list(getattr(model, 'out_indices', ())),
                out_channels=channels, out_strides=strides,
                nr_features=channels[-1] if channels else None,
                in_channels=int(getattr(model, 'in_channels', 3)),
                stage_params=_stage_names(model),
                torch_version=torch.__version__)
    if program is not None:
        meta['input'] = _input_constraints(program, multiple)
    else:
        meta['input'] = dict(batch=dict(min=1, max=MAX_BATCH, multiple=1),
                             height=dict(min=multiple, max=MAX_SIDE,
                                         multiple=multiple),
                             width=dict(min=multiple, max=MAX_SIDE,
                                        multiple=multiple))
    return meta


# ------------------------------------------------------------- exporting
def _check_size(size: Sequence[int], multiple: int) -> Tuple[int, int]:
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                   for s in size)):
        raise ValueError(f'input_size={size!r} must be (H, W), two '
                         f'positive ints')
    if any(s % multiple for s in size):
        fit = tuple(-(-s // multiple) * multiple for s in size)
        raise ValueError(f'input_size={tuple(size)}: height and width must '
                         f'be multiples of {multiple} for this backbone '
                         f'(its largest stride or patch size); e.g. {fit}')
    return int(size[0]), int(size[1])


def export_program(model: nn.Module, example: Tensor, multiple: int,
                   dynamic_spatial: bool = True):
    """``torch.export.export`` with a dynamic batch and, unless
    ``dynamic_spatial`` is False, dynamic height and width (multiples of
    ``multiple``)."""
    from torch.export import Dim
    dims = {0: Dim('batch', min=1, max=MAX_BATCH)}
    if dynamic_spatial:
        dims[2] = multiple * Dim('h', min=1, max=MAX_SIDE // multiple)
        dims[3] = multiple * Dim('w', min=1, max=MAX_SIDE // multiple)
    with torch.no_grad():
        return torch.export.export(model, (example, ), dynamic_shapes=(dims, ))


def export_onnx(model: nn.Module, example: Tensor, out: Path,
                output_dims: Sequence[int],
                dynamic_spatial: bool = True) -> List[str]:
    """ONNX, opset 17, a dynamic batch and (unless ``dynamic_spatial`` is
    False) dynamic height / width; returns the output names."""
    names = [f'out{i}' for i in range(len(output_dims))]
    spatial = {2: 'height', 3: 'width'} if dynamic_spatial else {}
    axes = {'input': {0: 'batch', **spatial}}
    for name, ndim in zip(names, output_dims):
        axes[name] = {0: 'batch'}
        if dynamic_spatial and ndim == 4:
            axes[name].update({2: f'{name}_height', 3: f'{name}_width'})
    with torch.no_grad(), quiet_export_warnings():
        torch.onnx.export(model, (example, ), str(out),
                          opset_version=ONNX_OPSET, dynamo=False,
                          input_names=['input'], output_names=names,
                          dynamic_axes=axes)
    return names


def _max_diff(got: Sequence[Tensor], want: Sequence[Tensor],
              where: str) -> float:
    got = [torch.as_tensor(g) for g in got]
    if len(got) != len(want) or any(tuple(g.shape) != tuple(w.shape)
                                    for g, w in zip(got, want)):
        raise RuntimeError(f'{where}: outputs {[tuple(g.shape) for g in got]}'
                           f' but the eager model gives '
                           f'{[tuple(w.shape) for w in want]}')
    worst = 0.0
    for g, w in zip(got, want):
        diff = (g.float() - w.float()).abs().max().item()
        scale = max(1.0, w.abs().max().item())
        if not diff <= CHECK_TOL * scale:
            raise RuntimeError(f'{where} differs from the eager model by '
                               f'{diff:.3g} (max abs; tolerance '
                               f'{CHECK_TOL * scale:.3g})')
        worst = max(worst, diff)
    return worst


def _agrees(run, probe: Tensor, want: Sequence[Tensor]) -> bool:
    """Whether ``run(probe)`` gives ``want`` (False on any error)."""
    try:
        with torch.no_grad():
            _max_diff(run(probe), want, 'probe')
    except Exception:  # a guard, a shape error or a mismatch alike
        return False
    return True


def _onnx_runner(path: Path, names: List[str]):
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path),
                                   providers=['CPUExecutionProvider'])
    return lambda x: session.run(names, {'input': x.numpy()})


def _static_limits(size: Tuple[int, int]) -> dict:
    return dict(batch=dict(min=1, max=MAX_BATCH, multiple=1),
                height=dict(min=size[0], max=size[0], multiple=1),
                width=dict(min=size[1], max=size[1], multiple=1))


def _out_paths(out, fmt: str) -> Dict[str, Path]:
    if fmt not in FORMATS:
        raise ValueError(f'format={fmt!r}; valid formats are {FORMATS}')
    out = Path(out).expanduser()
    if out.suffix in ('.pt2', '.onnx'):
        out = out.with_suffix('')
    kinds = ('pt2', 'onnx') if fmt == 'both' else (fmt, )
    return {kind: out.parent / f'{out.name}.{kind}' for kind in kinds}


_STATIC_NOTE = ('{kind}: the traced program does not follow a change of '
                'input size (the model turns a size into a Python number, '
                'e.g. to resize a position embedding), so height and width '
                'are fixed at {h}x{w}; the batch stays dynamic')


def _write_pt2(model, path: Path, example, probe, want, multiple) -> dict:
    program = export_program(model, example, multiple)
    notes = []
    # our own program, just traced: running its guards here is safe
    if not _agrees(program.module(), probe, want):
        program = export_program(model, example, multiple, False)
        notes.append(_STATIC_NOTE.format(kind='pt2', h=example.shape[2],
                                         w=example.shape[3]))
    meta = backbone_metadata(model, program, multiple)
    torch.export.save(program, str(path),
                      extra_files={METADATA_NAME: json.dumps(meta)})
    return dict(metadata=meta, notes=notes)


def _write_onnx(model, path: Path, example, probe, want, multiple) -> dict:
    dims = [w.dim() for w in want]
    names = export_onnx(model, example, path, dims)
    meta = backbone_metadata(model, None, multiple)
    notes = []
    runner = _onnx_runner(path, names)
    if runner is None:
        notes.append('onnx: onnxruntime is not installed; the dynamic '
                     'height and width were not verified')
    elif not _agrees(runner, probe, want):
        names = export_onnx(model, example, path, dims, False)
        meta['input'] = _static_limits(tuple(example.shape[2:]))
        notes.append(_STATIC_NOTE.format(kind='onnx', h=example.shape[2],
                                         w=example.shape[3]))
    sidecar = path.with_name(path.name + '.json')
    sidecar.write_text(json.dumps(dict(meta, outputs=names), indent=1))
    return dict(metadata=meta, notes=notes, names=names)


def _check_written(kind: str, path: Path, written: dict, model: nn.Module,
                   example: Tensor, probe: Tensor,
                   want: Sequence[Tensor]) -> Optional[float]:
    """Load a written file and compare it with the eager model: on the
    probe, or on a new batch of the example size when the size is fixed."""
    if written['metadata']['input']['height']['multiple'] == 1:
        probe = torch.rand(1, *example.shape[1:],
                           generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            want = tuple(model(probe))
    if kind == 'pt2':
        from mmbackbone.models.backbones.exported_backbone import \
            ExportedBackbone
        run = ExportedBackbone(path=str(path))
    else:
        run = _onnx_runner(path, written['names'])
        if run is None:
            return None
    with torch.no_grad():
        return _max_diff(run(probe), want, str(path))


def export_backbone(model: nn.Module, out, fmt: str = 'pt2',
                    input_size: Optional[Sequence[int]] = None,
                    check: bool = True) -> dict:
    """Export ``model`` (eval mode) to ``out`` as .pt2 and/or ONNX.

    Height and width are dynamic when the traced program follows a change
    of size (checked on a probe of another size); otherwise they are fixed
    at ``input_size`` and a note says so. The batch is always dynamic.

    Args:
        model: the backbone; it is put in eval mode.
        out: the file to write; its suffix is replaced by ``.pt2`` /
            ``.onnx`` (both are written with ``fmt='both'``).
        fmt: ``'pt2'``, ``'onnx'`` or ``'both'``.
        input_size: ``(H, W)`` of the example input, multiples of
            :func:`spatial_multiple` (default: :func:`default_input_size`).
        check: load each file back (``ExportedBackbone``, onnxruntime) and
            compare with the eager model on another input.

    Returns:
        dict: ``paths`` (format to file), ``metadata`` (format to the
        metadata written), ``max_abs_diff`` (format to the checked
        difference), ``input_size`` and ``notes``.

    Example:
        >>> import os, tempfile
        >>> from mmbackbone import build_backbone
        >>> model = build_backbone(dict(type='ResNet', depth=18))
        >>> info = export_backbone(model, os.path.join(tempfile.mkdtemp(),
        ...                        'r18'), input_size=(64, 64))
        >>> meta = info['metadata']['pt2']
        >>> info['paths']['pt2'].name, meta['input']['height']
        ('r18.pt2', {'min': 64, 'max': 8192, 'multiple': 32})
    """
    paths = _out_paths(out, fmt)
    model = model.eval()
    multiple = spatial_multiple(model)
    size = _check_size(tuple(input_size) if input_size is not None
                       else default_input_size(model), multiple)
    in_channels = int(getattr(model, 'in_channels', 3))
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(2, in_channels, *size, generator=generator)
    # another batch and height: what a traced constant would get wrong
    probe = torch.rand(1, in_channels, size[0] + multiple, size[1],
                       generator=generator)
    with torch.no_grad():
        want = tuple(model(probe))
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    writers = dict(pt2=_write_pt2, onnx=_write_onnx)
    metas, diffs, notes = {}, {}, []
    for kind, path in paths.items():
        written = writers[kind](model, path, example, probe, want, multiple)
        metas[kind] = written['metadata']
        notes.extend(written['notes'])
        if check:
            diffs[kind] = _check_written(kind, path, written, model,
                                         example, probe, want)
    return dict(paths=paths, metadata=metas, max_abs_diff=diffs,
                input_size=size, notes=notes)


# ------------------------------------------------------------- command line
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Export a backbone to a torch.export program (.pt2, '
        'for ExportedBackbone) and/or ONNX, with dynamic batch and spatial '
        'size.')
    parser.add_argument('source', nargs='?', metavar='CONFIG_OR_TYPE',
                        help='config file, registered type (ResNet) or zoo '
                        'arch name (resnet50)')
    parser.add_argument('--type', dest='type_name', metavar='TYPE',
                        help='a registered type, instead of SOURCE')
    parser.add_argument('--arch', help="one of the type's zoo archs")
    parser.add_argument('--out-indices', nargs='+', type=int, metavar='I',
                        help='the outputs (default: the backbone\'s own)')
    parser.add_argument('--format', dest='fmt', choices=FORMATS,
                        default='pt2', help='default: pt2')
    parser.add_argument('--out', required=True, metavar='PATH',
                        help='file to write; the suffix becomes .pt2 / '
                        '.onnx')
    parser.add_argument('--checkpoint', help='weights to load first (safe '
                        'loading, as init_cfg Pretrained)')
    parser.add_argument('--prefix', help="checkpoint key prefix to keep and "
                        "strip, e.g. 'backbone'")
    parser.add_argument('--input-size', nargs=2, type=int, metavar=('H', 'W'),
                        help='example input size (default: the model\'s '
                        'img_size, else 224 224)')
    parser.add_argument('--no-check', action='store_true',
                        help='do not load the files back to compare')
    add_allow_python_bases(parser)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    model = build_for_export(args.source, args.type_name, args.arch,
                             args.out_indices, args.checkpoint, args.prefix,
                             args.allow_python_bases)
    info = export_backbone(model, args.out, args.fmt, args.input_size,
                           check=not args.no_check)
    for note in info['notes']:
        print(f'note: {note}')
    for kind, path in info['paths'].items():
        meta = info['metadata'][kind]
        diff = info['max_abs_diff'].get(kind)
        checked = ('' if diff is None else
                   f', max abs diff vs eager {diff:.2e}')
        limits = ', '.join(f'{k} {v["min"]}..{v["max"]} step '
                           f'{v["multiple"]}' for k, v in
                           meta['input'].items())
        print(f'wrote {path} ({kind}{checked}); input: {limits}')
    meta = next(iter(info['metadata'].values()))
    print(f'out_channels: {tuple(meta["out_channels"])}, out_strides: '
          f'{tuple(meta["out_strides"])}')
    if 'pt2' in info['paths']:
        print(f"config: dict(type='ExportedBackbone', "
              f"path={str(info['paths']['pt2'])!r})")
    return 0


if __name__ == '__main__':
    sys.exit(main())
