"""ExportedBackbone: a ``torch.export`` program (``.pt2``) as a backbone.

The successor of TorchScript files: ``tools/export.py`` writes any
registered backbone as a ``torch.export.save`` archive (dynamic batch,
height and width; its ``out_indices``; metadata inside), and
``ExportedBackbone(path=...)`` runs it behind the backbone contract.

What loading a ``.pt2`` file can execute (torch 2.14)
-----------------------------------------------------
``torch.export.load`` is documented as unsafe for untrusted files, and
reading its code bears that out. Left alone it would:

- unpickle with full ``pickle`` (``weights_only=False``) every weight or
  constant stored as a pickle (``use_pickle`` entries: tensor subclasses),
  the archive's opaque objects (``pickle.loads``), and a legacy archive's
  state dict, constants and example inputs;
- load the example inputs with ``weights_only=True`` but retry with
  ``weights_only=False`` when that fails, so any archive can carry a full
  pickle there;
- build TorchBind custom objects (``custom_obj_*``) by class name;
- ``dlopen`` AOTInductor shared libraries (``data/aotinductor/``);
- ``sympy.sympify`` every symbolic-shape expression of the graph, which
  ``eval``s the string: ``__import__('os').system(...)`` runs;
- resolve each node's target by walking attributes from ``torch``,
  ``operator`` or ``math``, so ``torch.os.system`` or
  ``torch.ops.load_library`` become callable graph nodes;
- ``exec`` the program's guard strings (``guards_code``) when
  ``ExportedProgram.module()`` builds its input checks.

:func:`load_exported_program` therefore checks the archive before torch
reads it, from one in-memory copy of the file: the zip structure with the
checkpoint limits (stored entries only, no overlaps, CRCs); only the
members ``torch.export.save`` writes for one program (refusing
AOTInductor, custom and opaque objects, legacy and pickled tensors); the
example inputs load with ``weights_only=True`` (so torch's fallback never
runs); every operator is a ``torch.ops.aten`` / ``torch.ops.prims``
overload (less the few that touch files or global state) or one of
torch's symbolic-size operators (``operator.add``, ``torch.sym_max``...),
so no higher-order or custom operator is accepted; every shape
expression is a call tree of known sympy class names over literals; no
string holds a carriage return. The module is then built with
``module(check_guards=False)``: the guard strings are never executed, the
input is checked against the metadata's constraints instead (or the
program's range constraints). Metadata names (``torch_fn``,
``nn_module_stack``) are looked up by attribute but never called.

What remains: a checked program runs aten operators on your tensors and
can only compute; a hostile file can still make loading slow or large
(many nodes, big sympy literals), within the file size.

Training
--------
``ExportedProgram.module()`` returns an ``fx.GraphModule`` whose
parameters require grad and whose aten operators have autograd formulas,
so gradients reach every parameter: fine-tuning and ``frozen_stages``
work. What was fixed at export stays fixed: the program was traced in
eval mode, so BatchNorm always uses (and never updates) its running
statistics and dropout / drop-path are off, whatever ``train()`` says
(``norm_eval`` is always in effect). ``train()``/``eval()`` only set the
flags: the GraphModule refuses them.
"""
import io
import json
import re
import zipfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from mmbackbone.registry import MODELS
from .base_backbone import BaseBackbone, FreezablePart

#: The metadata ``tools/export.py`` writes (``extra/<name>`` in the .pt2).
METADATA_NAME = 'mmbackbone.json'
#: The newest metadata format this reader understands.
METADATA_VERSION = 1
#: Operator namespaces a program may call.
OP_NAMESPACES = ('aten', 'prims')
#: aten operators that read or write files or change process state.
REFUSED_OPS = frozenset({'from_file', 'save', '_print', 'warn', 'seed',
                         'manual_seed', '_cufft_set_plan_cache_max_size'})
#: Names a shape expression may use: sympy classes, torch's sympy
#: functions, assumption keywords and literals.
SYMPY_NAMES = frozenset(
    'Symbol Integer Float Rational Add Mul Pow Max Min Mod Abs Eq Ne Lt '
    'Le Gt Ge StrictLessThan LessThan StrictGreaterThan GreaterThan '
    'Equality Unequality And Or Not true false Infinity NegativeInfinity '
    'oo zoo nan Half One Zero NegativeOne IntInfinity NegativeIntInfinity '
    'FloorDiv ModularIndexing Where PythonMod CleanDiv CeilToInt '
    'FloorToInt CeilDiv LShift RShift PowByNatural FloatPow FloatTrueDiv '
    'IntTrueDiv IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt '
    'RoundToInt RoundDecimal ToFloat Identity positive negative integer '
    'real nonnegative nonpositive finite infinite zero nonzero even odd '
    'rational commutative precision True False None'.split())
_EXPR_TOKEN = re.compile(r"\s+|[A-Za-z_]\w*|\d+(?:\.\d+)?(?:e[-+]?\d+)?|"
                         r"'[A-Za-z_0-9.\-+e]*'|[(),=\-]")
_MEMBER = re.compile(
    r'(archive_format|archive_version|byteorder|\.data/version|'
    r'\.data/serialization_id|models/model\.json|'
    r'data/sample_inputs/model\.pt|data/weights/model_weights_config\.json|'
    r'data/weights/weight_\d+|data/constants/model_constants_config\.json|'
    r'data/constants/tensor_\d+|extra/[\w.\-]+)')
_WHY_NOT = (('data/aotinductor/', 'AOTInductor native code (a shared '
             'library loaded into the process)'),
            ('custom_obj_', 'a TorchBind custom object built by class name'),
            ('opaque_obj_', 'an opaque object read with pickle.loads'),
            ('data/weights/model.pt', 'legacy weights read with full pickle'),
            ('serialized_', 'a legacy archive read with full pickle'))


class UnsafeProgramError(ValueError):
    """A .pt2 archive holds something that loading or running would
    execute beyond aten operators on tensors."""


def _refuse(path, what: str) -> UnsafeProgramError:
    return UnsafeProgramError(
        f'{path}: refused to load this .pt2 archive: {what}. ExportedBackbone '
        f'loads programs that tools/export.py (torch.export.save of an '
        f'aten-only program) writes; re-export the backbone from its source')


# ----------------------------------------------------------- the archive
def _check_members(path, archive: zipfile.ZipFile) -> str:
    """Only what torch.export.save writes for one program; the root."""
    names = archive.namelist()
    roots = {name.split('/', 1)[0] for name in names}
    if len(roots) != 1 or any('/' not in name for name in names):
        raise _refuse(path, f'its members are not under one folder '
                      f'(found {sorted(roots)[:5]})')
    root = roots.pop()
    for name in names:
        rel = name[len(root) + 1:]
        if not _MEMBER.fullmatch(rel):
            why = next((w for key, w in _WHY_NOT if key in rel),
                       'not a member torch.export.save writes')
            raise _refuse(path, f'member {name!r} is {why}')
    for needed in ('models/model.json', 'data/sample_inputs/model.pt',
                   'data/weights/model_weights_config.json',
                   'data/constants/model_constants_config.json',
                   'archive_format'):
        if f'{root}/{needed}' not in names:
            raise _refuse(path, f'it has no {needed!r}; it is not a '
                          f'torch.export.save archive of one program')
    return root


def _check_payloads(path, archive: zipfile.ZipFile, root: str) -> None:
    """Weights and constants are raw tensors, never pickles."""
    for kind, prefix in (('weights', 'weight_'), ('constants', 'tensor_')):
        config = _read_json(path, archive,
                            f'{root}/data/{kind}/model_{kind}_config.json')
        entries = config.get('config') if isinstance(config, dict) else None
        if not isinstance(entries, dict):
            raise _refuse(path, f'its {kind} config is not a mapping')
        for fqn, entry in entries.items():
            if not isinstance(entry, dict) or entry.get('use_pickle'):
                raise _refuse(path, f'{kind[:-1]} {fqn!r} is stored as a '
                              f'pickle (read with weights_only=False)')
            name = entry.get('path_name')
            if not (isinstance(name, str) and re.fullmatch(
                    prefix + r'\d+', name)):
                raise _refuse(path, f'{kind[:-1]} {fqn!r} is stored as '
                              f'{name!r}, not a raw tensor ({prefix}N)')
            if f'{root}/data/{kind}/{name}' not in archive.namelist():
                raise _refuse(path, f'{kind[:-1]} {fqn!r}: member {name!r} '
                              f'is missing')


def _check_sample_inputs(path, data: bytes) -> None:
    """torch loads the example inputs with weights_only=True and retries
    with full pickle on failure: refuse what the safe load refuses."""
    from mmbackbone.checkpoint.limits import check_zip
    try:
        check_zip(Path(path), io.BytesIO(data), len(data))
        torch.load(io.BytesIO(data), weights_only=True, map_location='cpu')
    except Exception as err:  # CheckpointError, UnpicklingError, ...
        raise _refuse(path, f'its example inputs do not load with '
                      f'weights_only=True ({type(err).__name__}: '
                      f'{str(err).strip()[:200]}), so torch would unpickle '
                      f'them with full pickle') from err


def _read_json(path, archive: zipfile.ZipFile, name: str):
    try:
        return json.loads(archive.read(name))
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError too
        raise _refuse(path, f'{name!r} is not valid JSON '
                      f'({type(err).__name__})') from err


# ----------------------------------------------------------- the program
def _allowed_targets() -> frozenset:
    from torch._export.serde.serialize import _SYM_OPS
    return frozenset(f'{op.__module__}.{op.__name__}' for op in _SYM_OPS)


def check_operator_name(name: str, sym_ops=None) -> bool:
    """Whether a serialized node target may be resolved and called.

    Example:
        >>> check_operator_name('torch.ops.aten.conv2d.default')
        True
        >>> check_operator_name('torch.os.system')
        False
        >>> check_operator_name('torch.ops.aten.from_file.default')
        False
    """
    match = re.fullmatch(r'torch\.ops\.(\w+)\.(\w+)\.(\w+)', name)
    if match:
        return (match.group(1) in OP_NAMESPACES
                and match.group(2) not in REFUSED_OPS)
    return name in (sym_ops if sym_ops is not None else _allowed_targets())


def check_shape_expression(expr: str) -> bool:
    """Whether a serialized shape expression is a call tree of known sympy
    names over literals (``sympy.sympify`` evals it).

    Example:
        >>> check_shape_expression(
        ...     "Mul(Integer(32), Symbol('s1', positive=True, integer=True))")
        True
        >>> check_shape_expression("__import__('os').getpid()")
        False
    """
    pos = 0
    while pos < len(expr):
        match = _EXPR_TOKEN.match(expr, pos)
        if match is None:
            return False
        token = match.group()
        if (token[0].isalpha() or token[0] == '_') and \
                token not in SYMPY_NAMES:
            return False
        pos = match.end()
    return True


def _check_graph_json(path, program: dict) -> None:
    """Walk the serialized program: operators, shape expressions and
    custom objects."""
    sym_ops = _allowed_targets()
    todo = [program]
    while todo:
        node = todo.pop()
        if isinstance(node, list):
            todo.extend(node)
            continue
        if isinstance(node, str):
            if '\r' in node or '\x00' in node:
                raise _refuse(path, 'a string holds a carriage return or NUL '
                              '(a line break in generated Python code)')
            continue
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            if key in ('target', 'as_operator') and isinstance(value, str) \
                    and not check_operator_name(value, sym_ops):
                raise _refuse(path, f'it calls {value!r}; only '
                              f'torch.ops.{{{",".join(OP_NAMESPACES)}}} '
                              f'operators and symbolic-size arithmetic are '
                              f'accepted')
            if key == 'expr_str' and not (isinstance(value, str) and
                                          check_shape_expression(value)):
                raise _refuse(path, f'shape expression {str(value)[:80]!r} '
                              f'is not a plain sympy expression (torch '
                              f'evaluates it with sympy.sympify, an eval)')
            if key == 'as_custom_obj':
                raise _refuse(path, 'it uses a TorchBind custom object')
            if key != 'guards_code':  # never executed: check_guards=False
                todo.append(value)


def _check_loaded(path, module: nn.Module) -> None:
    """The built graph calls only accepted operators (a second check, on
    the objects torch resolved)."""
    from torch._export.serde.serialize import _SYM_OPS
    for gm in module.modules():
        graph = getattr(gm, 'graph', None)
        if not isinstance(graph, torch.fx.Graph):
            continue
        for node in graph.nodes:
            if node.op in ('call_module', 'call_method'):
                raise _refuse(path, f'node {node.name} is a {node.op}')
            if node.op != 'call_function' or node.target in _SYM_OPS:
                continue
            target = node.target
            if not (isinstance(target, torch._ops.OpOverload)
                    and target.namespace in OP_NAMESPACES
                    and target._opname not in REFUSED_OPS):
                raise _refuse(path, f'node {node.name} calls {target!r}')


def load_exported_program(path: Union[str, Path]
                          ) -> Tuple[nn.Module, Optional[dict]]:
    """Check a ``.pt2`` archive, load it and return ``(module, metadata)``.

    ``module`` is ``ExportedProgram.module(check_guards=False)`` (guard
    strings are never executed); ``metadata`` is what ``tools/export.py``
    stored, or None for other archives. See the module docstring for
    what is checked.

    Raises:
        FileNotFoundError: no such file.
        UnsafeProgramError: (a ``ValueError``) the archive holds pickles,
            native code, custom objects, non-aten operators or code in
            shape expressions.
        ValueError: not a .pt2 archive, or one torch cannot read.

    Example:
        >>> import os, tempfile, torch
        >>> net = torch.nn.Conv2d(3, 4, 3)
        >>> program = torch.export.export(net, (torch.rand(1, 3, 8, 8), ))
        >>> path = os.path.join(tempfile.mkdtemp(), 'conv.pt2')
        >>> torch.export.save(program, path)
        >>> module, meta = load_exported_program(path)
        >>> tuple(module(torch.rand(1, 3, 8, 8)).shape), meta
        ((1, 4, 6, 6), None)
    """
    from mmbackbone.checkpoint.io import CheckpointError
    from mmbackbone.checkpoint.limits import check_zip
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f'.pt2 file {path} does not exist')
    data = path.read_bytes()  # one copy: checked and loaded alike
    try:
        check_zip(path, io.BytesIO(data), len(data))
    except CheckpointError as err:
        raise ValueError(f'{path} is not a readable .pt2 archive: {err}'
                         ) from err
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        root = _check_members(path, archive)
        _check_payloads(path, archive, root)
        _check_sample_inputs(path, archive.read(
            f'{root}/data/sample_inputs/model.pt'))
        _check_graph_json(path, _read_json(path, archive,
                                           f'{root}/models/model.json'))
    extra = {METADATA_NAME: ''}
    try:
        program = torch.export.load(io.BytesIO(data), extra_files=extra)
    except Exception as err:  # version skew, schema errors
        raise ValueError(f'{path}: torch {torch.__version__} cannot load '
                         f'this .pt2 archive ({type(err).__name__}: '
                         f'{str(err).strip()[:300]}); re-export it with '
                         f'this torch version') from err
    program._guards_code = []  # never executed; see check_guards=False
    module = program.module(check_guards=False)
    _check_loaded(path, module)
    meta = None
    if extra[METADATA_NAME]:
        try:
            meta = json.loads(extra[METADATA_NAME])
        except ValueError as err:
            raise ValueError(f'{path}: its {METADATA_NAME} is not valid '
                             f'JSON') from err
        version = meta.get('version') if isinstance(meta, dict) else None
        if not isinstance(version, int) or version > METADATA_VERSION:
            raise ValueError(f'{path}: {METADATA_NAME} version {version!r} '
                             f'is not one this mmbackbone reads (1..'
                             f'{METADATA_VERSION}); upgrade mmbackbone')
    return module, meta


# ----------------------------------------------------------- the backbone
def _graph_outputs(module: nn.Module) -> List[Tuple[Optional[int], int]]:
    """``(channels, ndim)`` of each output, from the graph's shapes."""
    outputs = [n for n in module.graph.nodes if n.op == 'output'][0].args[0]
    found = []
    for node in outputs:
        val = getattr(node, 'meta', {}).get('val')
        shape = getattr(val, 'shape', None)
        if shape is None or len(shape) < 2:
            found.append((None, len(shape) if shape is not None else 0))
            continue
        channels = shape[1]
        found.append((channels if isinstance(channels, int) else None,
                      len(shape)))
    return found


def _output_info(path, module: nn.Module, meta: Optional[dict]
                 ) -> Tuple[List[int], List[Optional[int]]]:
    graph = _graph_outputs(module)
    if any(channels is None for channels, _ in graph):
        raise ValueError(f'{path}: the program outputs '
                         f'{len(graph)} values, not all (N, C, ...) tensors '
                         f'with a fixed channel count; a backbone returns '
                         f'feature maps or vectors')
    channels = [c for c, _ in graph]
    strides: List[Optional[int]] = [None] * len(channels)
    if meta is not None:
        if list(meta.get('out_channels', [])) != channels:
            raise ValueError(f'{path}: its metadata says out_channels '
                             f'{meta.get("out_channels")} but the program '
                             f'returns {channels} channels')
        strides = [s if isinstance(s, int) else None
                   for s in meta.get('out_strides', strides)]
    return channels, strides


@MODELS.register_module()
class ExportedBackbone(BaseBackbone):
    """A ``torch.export`` program (``.pt2``) as a backbone.

    Write one with ``tools/export.py`` (any registered backbone, with its
    ``out_indices``, dynamic batch and spatial size). The file is checked
    before torch reads it (see the module docstring: no pickle, no native
    code, aten operators only); a refused file raises
    :class:`UnsafeProgramError` naming what it holds.

    ``out_channels`` / ``out_strides`` come from the metadata
    ``tools/export.py`` stores in the file; for another ``.pt2`` the
    channels come from the program's output shapes and the strides are
    None. ``out_indices`` picks among the program's outputs (all by
    default). ``frozen_stages`` is ``-1``, ``'all'`` or, for files from
    ``tools/export.py``, a stage count as for the source backbone (the
    metadata lists each stage's parameters). Inputs are checked against
    the batch / height / width range and multiple the program accepts.

    The program was traced in eval mode: its norm layers always use their
    running statistics (``norm_eval`` must be True, the default) and
    dropout is off; gradients flow, so the unfrozen parameters train.

    Args:
        path (str): the ``.pt2`` file.
        out_indices (int | Sequence[int], optional): which of the
            program's outputs to return; None: all, in order.
        frozen_stages (int | str): -1 (nothing), 0 (the stem), k (the stem
            and stages 1..k; files from ``tools/export.py``) or ``'all'``.
            Default: -1.
        norm_eval (bool): must be True: the program's norm layers are in
            eval mode for good. Default: True.
        init_cfg (dict | list, optional): mmengine init config; a
            ``Pretrained`` file of ``program.*`` keys overwrites weights.

    Example:
        >>> import os, sys, tempfile, torch
        >>> from pathlib import Path
        >>> import mmbackbone
        >>> from mmbackbone import build_backbone
        >>> sys.path.insert(0, str(Path(mmbackbone.__file__).parents[1] /
        ...                        'tools'))  # tools/export.py
        >>> from export import export_backbone
        >>> resnet = build_backbone(dict(type='ResNet', depth=18,
        ...                              out_indices=(2, 3)))
        >>> path = os.path.join(tempfile.mkdtemp(), 'r18.pt2')
        >>> _ = export_backbone(resnet, path, input_size=(64, 64))
        >>> model = ExportedBackbone(path=path, frozen_stages=1)
        >>> model.out_channels, model.out_strides, model.nr_features
        ((256, 512), (16, 32), 512)
        >>> [tuple(o.shape) for o in model(torch.rand(2, 3, 96, 128))]
        [(2, 256, 6, 8), (2, 512, 3, 4)]
    """

    #: The zoo walk skips this type: it needs a file (see its own tests).
    zoo_needs_files = True

    def __init__(self,
                 path: str,
                 out_indices: Union[int, Sequence[int], None] = None,
                 frozen_stages: Union[int, str] = -1,
                 norm_eval: bool = True,
                 init_cfg: Union[dict, List[dict], None] = None):
        super().__init__(init_cfg)
        if not isinstance(path, (str, Path)) or not str(path):
            raise TypeError(f'path={path!r} must be the path of a .pt2 file')
        if norm_eval is not True:
            raise ValueError(
                f'norm_eval={norm_eval!r}: an exported program was traced '
                f'in eval mode, so its norm layers always use their running '
                f'statistics; use norm_eval=True (the default)')
        self.path = str(path)
        self.program, self.metadata = load_exported_program(path)
        channels, strides = _output_info(self.path, self.program,
                                         self.metadata)
        if out_indices is None:
            out_indices = tuple(range(len(channels)))
        self._stage_names = self._read_stage_names()
        limit = len(self._stage_names) - 1 if self._stage_names else None
        self._setup_outputs(channels, strides, out_indices, -1, False)
        self.frozen_stages = self._check_frozen_stages(frozen_stages, limit)
        self.norm_eval = True
        self.nr_features = self.out_features
        self._freeze_stages()

    def _read_stage_names(self) -> List[List[str]]:
        groups = (self.metadata or {}).get('stage_params') or []
        params = dict(self.program.named_parameters())
        for group in groups:
            missing = [name for name in group if name not in params]
            if missing:
                raise ValueError(f'{self.path}: its metadata names stage '
                                 f'parameters {missing[:3]} that the program '
                                 f'does not have')
        return [list(group) for group in groups]

    def _check_frozen_stages(self, frozen_stages, limit: Optional[int]):
        if frozen_stages in (-1, 'all'):
            return frozen_stages
        valid = ("-1 (nothing) or 'all'" if limit is None else
                 f"-1 (nothing), 0 (the stem), 1..{limit} (the stem and "
                 f"that many stages) or 'all'")
        if isinstance(frozen_stages, bool) or \
                not isinstance(frozen_stages, int):
            raise TypeError(f'frozen_stages={frozen_stages!r}; valid values '
                            f'are {valid}')
        if limit is None or not 0 <= frozen_stages <= limit:
            why = ('its metadata does not list the stages (not written by '
                   'tools/export.py)' if limit is None else
                   f'it has a stem and {limit} stages')
            raise ValueError(f'frozen_stages={frozen_stages} for '
                             f'{self.path}: {why}; valid values are {valid}')
        return frozen_stages

    def stage_parts(self) -> List[List[FreezablePart]]:
        """The stem's and each stage's parameters (from the metadata), or
        the whole program as one part."""
        if not self._stage_names:
            return [[self.program]]
        params = dict(self.program.named_parameters())
        return [[params[name] for name in group]
                for group in self._stage_names]

    def get_layer_depth(self, param_name: str, prefix: str = ''
                        ) -> Tuple[int, int]:
        """Depth for layer-wise lr decay: the stem 0, stage ``i`` ``i``,
        the rest last; ``(0, 1)`` when the stages are not known.

        Example:
            >>> import os, tempfile, torch
            >>> path = os.path.join(tempfile.mkdtemp(), 'conv.pt2')
            >>> net, x = torch.nn.Conv2d(3, 8, 3), torch.rand(1, 3, 8, 8)
            >>> torch.export.save(torch.export.export(net, (x, )), path)
            >>> model = ExportedBackbone(path)
            >>> model.get_layer_depth('backbone.program.weight', 'backbone.')
            (0, 1)
        """
        if not self._stage_names:
            return 0, 1
        total = len(self._stage_names) + 1
        name = param_name[len(prefix):] if param_name.startswith(prefix) \
            else None
        if name is not None and name.startswith('program.'):
            name = name[len('program.'):]
            for depth, group in enumerate(self._stage_names):
                if name in group:
                    return depth, total
        return total - 1, total

    def train(self, mode: bool = True) -> 'ExportedBackbone':
        """Set the training flags and re-apply freezing.

        torch 2.14's exported GraphModule raises NotImplementedError from
        ``train()`` / ``eval()`` (its behaviour was fixed at export), so
        the flags are set directly rather than through ``nn.Module.train``.

        Returns:
            ExportedBackbone: ``self``.
        """
        if not isinstance(mode, bool):
            raise ValueError(f'training mode is expected to be boolean, got '
                             f'{mode!r}')
        for module in self.modules():
            module.training = mode
        self._freeze_stages()
        return self

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f'{self.path}: the input must be an (N, C, H, W) '
                             f'tensor, got {getattr(x, "shape", type(x))}')
        limits = (self.metadata or {}).get('input') or {}
        channels = (self.metadata or {}).get('in_channels')
        if channels is not None and x.shape[1] != channels:
            raise ValueError(f'{self.path}: the input has {x.shape[1]} '
                             f'channels, the program takes {channels}')
        for dim, key in ((0, 'batch'), (2, 'height'), (3, 'width')):
            rule = limits.get(key)
            if not rule:
                continue
            size = x.shape[dim]
            upper = rule.get('max')
            if size < rule['min'] or (upper is not None and size > upper) \
                    or size % rule['multiple']:
                span = (f'{rule["min"]}' if upper == rule['min'] else
                        f'{rule["min"]}..{upper if upper else "any"}, a '
                        f'multiple of {rule["multiple"]}')
                raise ValueError(f'{self.path}: input {key} {size} is not '
                                 f'one the program accepts ({span}); input '
                                 f'shape {tuple(x.shape)}')

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        self._check_input(x)
        outs = self.program(x)
        if isinstance(outs, Tensor):
            outs = (outs, )
        return self._select_outputs(list(outs))
