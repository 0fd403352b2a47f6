"""TorchScriptBackbone: a ``torch.jit.save`` file as a backbone.

A TorchScript file carries its own code and weights, so a model from any
library (or a custom one) runs without its source. Write one with
``tools/build_torchscript_backbone.py``, which also prints the feature
count to put in the config.

A TorchScript file is a program, not data: loading it runs code stored in
the file (a scripted ``__setstate__``), and so does every forward. Such
code can read and write files. Load only files you trust, as you would a
Python config; the safe-loading guarantees of weights files do not apply.

Mapping of the older YAML model config (``architecture: "jit"``)::

    architecture: "jit"          ->  type='TorchScriptBackbone'
    path: "backbone.pt"          ->  path='backbone.pt'
    nr_features: 512             ->  nr_features=512 (or out_channels=512)
    backbone_trainable: False    ->  frozen=True (frozen_stages='all')
    backbone_trainable: True     ->  frozen=False (the default)
    input_size: [128, 128]       ->  input_size=(128, 128)
"""
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmbackbone.registry import MODELS
from mmbackbone.utils import normalize_out_indices
from .base_backbone import NORM_TYPES, BaseBackbone, FreezablePart

#: Input sizes tried, in order, to infer ``nr_features`` (no input_size).
DRY_RUN_SIZES = ((64, 64), (224, 224))


@contextmanager
def quiet_jit_deprecation():
    """Silence PyTorch's FutureWarning that ``torch.jit`` is deprecated:
    a TorchScript file is what the user asked for."""
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=r'`torch\.jit\.\w+` is '
                                r'deprecated', category=FutureWarning)
        yield


def load_torchscript(path: Union[str, Path]) -> torch.jit.ScriptModule:
    """``torch.jit.load(path, map_location='cpu')`` with clear errors.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a TorchScript archive (e.g. a
            ``torch.save`` state dict or a truncated file).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f'TorchScript file {path} does not exist')
    try:
        with quiet_jit_deprecation():
            return torch.jit.load(str(path), map_location='cpu')
    except Exception as err:  # torch raises RuntimeError or ValueError
        first = str(err).strip().splitlines()[0] if str(err).strip() else ''
        raise ValueError(
            f'{path} is not a TorchScript file ({type(err).__name__}: '
            f'{first}); write one with torch.jit.save(torch.jit.script(m)) '
            f'or tools/build_torchscript_backbone.py') from err


def _size_pair(value, name: str) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    pair = (value, value) if isinstance(value, int) else value
    if (not isinstance(pair, Sequence) or isinstance(pair, str)
            or len(pair) != 2 or any(isinstance(v, bool)
                                     or not isinstance(v, int) or v < 1
                                     for v in pair)):
        raise ValueError(f'{name}={value!r} must be a positive int or an '
                         f'(H, W) pair of positive ints')
    return int(pair[0]), int(pair[1])


def _norm_class_names() -> set:
    """Class names of every norm layer type ``norm_eval`` acts on.

    A loaded TorchScript module is a ``RecursiveScriptModule`` whatever it
    was; its ``original_name`` is the class name it was scripted from.
    """
    names, todo = set(), list(NORM_TYPES)
    while todo:
        cls = todo.pop()
        if cls.__name__ not in names:
            names.add(cls.__name__)
            todo.extend(cls.__subclasses__())
    return names


def script_norm_layers(module: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(path, module)`` of the norm layers inside a TorchScript module,
    recognised by the class name they were scripted from."""
    names = _norm_class_names()
    return [(path, sub) for path, sub in module.named_modules()
            if getattr(sub, 'original_name', type(sub).__name__) in names]


def _check_frozen_stages(frozen_stages, frozen: bool):
    """``frozen_stages`` of a TorchScript program: -1 or ``'all'``."""
    valid = ("valid values are -1 (train the whole program) and 'all' "
             "(freeze it; the same as frozen=True)")
    if frozen_stages != 'all' and (isinstance(frozen_stages, bool)
                                   or not isinstance(frozen_stages, int)):
        raise TypeError(f'frozen_stages={frozen_stages!r} must be -1 or '
                        f"'all'; {valid}")
    if frozen_stages not in (-1, 'all'):
        raise ValueError(
            f'frozen_stages={frozen_stages!r}: the stem and stages of a '
            f'TorchScript program cannot be told apart in the file, so '
            f'TorchScriptBackbone cannot freeze some of them; {valid}')
    if frozen and frozen_stages == -1:
        return 'all'
    return frozen_stages


def _feature_count(nr_features, out_channels) -> Optional[int]:
    if isinstance(out_channels, Sequence) and len(out_channels) == 1:
        out_channels = out_channels[0]
    for name, value in (('nr_features', nr_features),
                        ('out_channels', out_channels)):
        if value is not None and (isinstance(value, bool)
                                  or not isinstance(value, int) or value < 1):
            raise ValueError(f'{name}={value!r} must be a positive int')
    if None not in (nr_features, out_channels) and \
            nr_features != out_channels:
        raise ValueError(f'nr_features={nr_features} and out_channels='
                         f'{out_channels} disagree; give one of them')
    return nr_features if nr_features is not None else out_channels


@MODELS.register_module()
class TorchScriptBackbone(BaseBackbone):
    """A TorchScript file (``torch.jit.save``) as a one-output backbone.

    .. warning::
        TorchScript files are programs; load only files you trust.
        Loading one runs code stored in the file (a scripted
        ``__setstate__``), and so does its forward; that code can read and
        write files. Give ``nr_features`` so that building the backbone
        does not also run the forward (see below).

    The input is resized to ``input_size`` (bilinear) when given; the
    module's output becomes a one-tuple. A module returning a tuple or
    list gives its last element. A 2-D output ``(N, C)`` (a pooled
    vector) is kept as is and its stride is ``None``.

    ``out_channels`` is known before any forward, in one of two ways:

    - ``nr_features`` (or ``out_channels``) given: the file is loaded but
      its forward is not run at build time. ``out_strides`` is
      ``(out_stride, )``, ``None`` unless given. The first forward checks
      that the output has ``nr_features`` channels (a ``ValueError``
      naming the file otherwise).
    - not given: construction runs the forward once (a dry run: eval
      mode, no grad) on a zero image of ``input_size`` or, without one, of
      64x64 and then 224x224 if the module rejects 64x64, and reads the
      channels from its output; for a map output without ``input_size``
      it also gives the stride.

    The contract's knobs, as far as a program allows: ``out_indices`` can
    only pick the one output (``0`` or ``-1``); ``frozen_stages`` is
    ``-1`` or ``'all'`` (a program's stem and stages cannot be told apart,
    so a stage count is an error naming the valid values); ``norm_eval``
    keeps the program's norm layers (scripted from ``BatchNorm*``,
    ``GroupNorm``, ``LayerNorm``, ``InstanceNorm*`` or their subclasses) in
    eval mode, and is an error for a program without such layers.

    Args:
        path (str): the TorchScript file. TorchScript files are programs:
            load only files you trust.
        nr_features (int, optional): output channels. Given, the forward
            is not run at build time; None: inferred by a dry run.
        input_size (int | tuple[int, int], optional): resize inputs to
            ``(H, W)`` first.
        frozen (bool): no grad and eval mode after every ``train()``
            (``frozen_stages='all'``). Default: False.
        init_cfg (dict | list, optional): mmengine init config; a
            ``Pretrained`` file of ``model.*`` keys overwrites the weights.
        in_channels (int): channels of the dry-run input. Default: 3.
        out_channels (int, optional): alias of ``nr_features``.
        out_stride (int, optional): stride of the output map, when known
            (otherwise read by the dry run, or None). Default: None.
        out_indices (int | Sequence[int]): ``0`` / ``-1`` (the one
            output). Default: ``(0, )``.
        frozen_stages (int | str): ``-1`` (nothing) or ``'all'`` (the
            whole program). Default: -1.
        norm_eval (bool): keep the program's norm layers in eval mode
            during training. Default: False.

    Example:
        >>> import os, tempfile, torch
        >>> from mmbackbone.models import TorchScriptBackbone
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1),
        ...                           torch.nn.AdaptiveAvgPool2d(1),
        ...                           torch.nn.Flatten())
        >>> path = os.path.join(tempfile.mkdtemp(), 'net.pt')
        >>> torch.jit.save(torch.jit.script(net), path)
        >>> model = TorchScriptBackbone(path, input_size=(32, 32))
        >>> model.out_channels, model.out_strides
        ((8,), (None,))
        >>> print(tuple(model(torch.rand(2, 3, 64, 48))[0].shape))
        (2, 8)
        >>> TorchScriptBackbone(path, nr_features=8).out_channels  # no run
        (8,)
    """

    #: The zoo walk skips this type: it needs a file (see its own tests).
    zoo_needs_files = True

    def __init__(self,
                 path: str,
                 nr_features: Optional[int] = None,
                 input_size: Union[int, Sequence[int], None] = None,
                 frozen: bool = False,
                 init_cfg: Union[dict, List[dict], None] = None,
                 in_channels: int = 3,
                 out_channels: Optional[int] = None,
                 out_stride: Optional[int] = None,
                 out_indices: Union[int, Sequence[int]] = (0, ),
                 frozen_stages: Union[int, str] = -1,
                 norm_eval: bool = False):
        super().__init__(init_cfg)
        if not isinstance(path, (str, Path)) or not str(path):
            raise TypeError(f'path={path!r} must be the path of a '
                            f'TorchScript file')
        if not isinstance(frozen, bool):
            raise TypeError(f'frozen={frozen!r} must be True or False')
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) \
                or in_channels < 1:
            raise ValueError(f'in_channels={in_channels!r} must be a '
                             f'positive int')
        if out_stride is not None and (isinstance(out_stride, bool)
                                       or not isinstance(out_stride, int)
                                       or out_stride < 1):
            raise ValueError(f'out_stride={out_stride!r} must be a positive '
                             f'int or None (unknown, or not a map)')
        if frozen and frozen_stages not in (-1, 'all'):
            raise ValueError(f'frozen=True and frozen_stages='
                             f'{frozen_stages!r} disagree; give one of them')
        frozen_stages = _check_frozen_stages(frozen_stages, frozen)
        if not isinstance(norm_eval, bool):
            raise TypeError(f'norm_eval={norm_eval!r} must be True or False')
        normalize_out_indices(out_indices, 1)  # fail before loading
        self.path = str(path)
        self.input_size = _size_pair(input_size, 'input_size')
        self.in_channels = in_channels
        self.frozen = frozen_stages == 'all'
        channels = _feature_count(nr_features, out_channels)
        self.model = load_torchscript(path)
        if norm_eval and not script_norm_layers(self.model):
            raise ValueError(
                f'norm_eval=True: TorchScript file {self.path} has no norm '
                f'layer modules (scripted from BatchNorm*, GroupNorm, '
                f'LayerNorm, InstanceNorm* or a subclass) to keep in eval '
                f'mode; use norm_eval=False')
        self.nr_features = channels
        # Given channels are checked on the first forward; the dry run
        # (the only forward run at build time) checks its own output.
        self._output_checked = channels is None
        stride = out_stride
        if channels is None:
            channels, found = self._dry_run()
            self.nr_features = channels
            if stride is not None and found is not None and found != stride:
                raise ValueError(f'out_stride={stride} but the dry run of '
                                 f'{self.path} gives stride {found}')
            stride = found if stride is None else stride
        self._setup_outputs([channels], [stride], out_indices,
                            frozen_stages, norm_eval)
        self._freeze_stages()

    def _dry_run(self) -> Tuple[int, Optional[int]]:
        """Run once to read the output channels (and a map's stride)."""
        sizes = [self.input_size] if self.input_size else DRY_RUN_SIZES
        was_training = self.model.training
        self.model.eval()
        errors = []
        try:
            for size in sizes:
                x = torch.zeros(1, self.in_channels, *size)
                try:
                    with torch.no_grad():
                        out = self._run(x)
                except Exception as err:  # the module rejects this size
                    lines = str(err).strip().splitlines() or ['']
                    errors.append(f'{size[0]}x{size[1]}: '
                                  f'{type(err).__name__}: {lines[-1][:200]}')
                    continue
                self._check_output(out)
                stride = None
                if out.dim() == 4 and self.input_size is None and \
                        size[0] % out.shape[-2] == 0:
                    stride = size[0] // out.shape[-2]
                return int(out.shape[1]), stride
        finally:
            self.model.train(was_training)
        raise ValueError(f'TorchScript file {self.path}: the dry run that '
                         f'infers nr_features failed ({"; ".join(errors)}); '
                         f'give nr_features (and input_size) in the config')

    def _check_output(self, out) -> None:
        """Raise if the program's output is not what a backbone returns or
        has other channels than ``nr_features``."""
        if not isinstance(out, Tensor) or out.dim() < 2:
            raise TypeError(
                f'TorchScript file {self.path} returns '
                f'{type(out).__name__} '
                f'{tuple(getattr(out, "shape", ()))}; a backbone must '
                f'return an (N, C) or (N, C, H, W) tensor (or a '
                f'tuple/list ending with one)')
        if self.nr_features is not None and \
                out.shape[1] != self.nr_features:
            raise ValueError(
                f'TorchScript file {self.path} returns {out.shape[1]} '
                f'channels (output shape {tuple(out.shape)}) but '
                f'nr_features={self.nr_features}; set nr_features='
                f'{out.shape[1]}')

    def stage_parts(self) -> List[List[FreezablePart]]:
        """One stage: the whole scripted module."""
        return [[self.model]]

    def get_layer_depth(self, param_name: str, prefix: str = ''
                        ) -> Tuple[int, int]:
        """Every parameter at one depth: ``(0, 1)``.

        A program's stem and stages cannot be told apart, so layer-wise lr
        decay leaves it at the base learning rate (the factor is
        ``rate ** 0``), like the layers after it.

        Example:
            >>> import os, tempfile, torch
            >>> path = os.path.join(tempfile.mkdtemp(), 'net.pt')
            >>> torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 8, 3)),
            ...                path)
            >>> model = TorchScriptBackbone(path, nr_features=8)
            >>> model.get_layer_depth('backbone.model.weight', 'backbone.')
            (0, 1)
        """
        return 0, 1

    def train(self, mode: bool = True) -> 'TorchScriptBackbone':
        """Set the training mode; ``norm_eval`` reaches the program's norm
        layers (the base class only sees ``nn`` norm classes).

        Returns:
            TorchScriptBackbone: ``self``.
        """
        super().train(mode)
        if mode and self.norm_eval:
            for _, module in script_norm_layers(self.model):
                module.train(False)
        return self

    def _run(self, x: Tensor) -> Tensor:
        if self.input_size is not None and \
                tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode='bilinear',
                              align_corners=False)
        out = self.model(x)
        if isinstance(out, (tuple, list)):
            out = out[-1]
        return out

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        out = self._run(x)
        if not self._output_checked:
            self._check_output(out)
            self._output_checked = True
        return self._select_outputs([out])
