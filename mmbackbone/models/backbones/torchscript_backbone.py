"""TorchScriptBackbone: a ``torch.jit.save`` file as a backbone.

A TorchScript file carries its own code and weights, so a model from any
library (or a custom one) runs without its source. Write one with
``tools/build_torchscript_backbone.py``, which also prints the feature
count to put in the config.

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
from torch import Tensor

from mmbackbone.registry import MODELS
from .base_backbone import BaseBackbone, FreezablePart

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

    The input is resized to ``input_size`` (bilinear) when given; the
    module's output becomes a one-tuple. A module returning a tuple or
    list gives its last element. A 2-D output ``(N, C)`` (a pooled
    vector) is kept as is and its stride is ``None``.

    ``nr_features`` is the channel count of that output. When it is not
    given, it is inferred once at construction with a dry run (eval mode,
    no grad) on a zero image of ``input_size`` or, without one, of 64x64
    and then 224x224 if the module rejects 64x64; for a map output that
    dry run also gives ``out_strides`` when no ``input_size`` is set.
    Otherwise the stride is ``None`` (the file carries no such metadata).

    Loading a TorchScript file runs the TorchScript program it contains:
    load files you trust.

    Args:
        path (str): the TorchScript file.
        nr_features (int, optional): output channels (inferred if None).
        input_size (int | tuple[int, int], optional): resize inputs to
            ``(H, W)`` first.
        frozen (bool): no grad and eval mode after every ``train()``
            (``frozen_stages='all'``). Default: False.
        init_cfg (dict | list, optional): mmengine init config; a
            ``Pretrained`` file of ``model.*`` keys overwrites the weights.
        in_channels (int): channels of the dry-run input. Default: 3.
        out_channels (int, optional): alias of ``nr_features``.

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
                 out_channels: Optional[int] = None):
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
        self.path = str(path)
        self.input_size = _size_pair(input_size, 'input_size')
        self.in_channels = in_channels
        self.frozen = frozen
        channels = _feature_count(nr_features, out_channels)
        self.model = load_torchscript(path)
        stride = None
        if channels is None:
            channels, stride = self._dry_run()
        self.nr_features = channels
        self._setup_outputs([channels], [stride], (0, ),
                            'all' if frozen else -1, False)
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
                        out = self.forward(x)[0]
                except Exception as err:  # the module rejects this size
                    lines = str(err).strip().splitlines() or ['']
                    errors.append(f'{size[0]}x{size[1]}: '
                                  f'{type(err).__name__}: {lines[-1][:200]}')
                    continue
                if not isinstance(out, Tensor) or out.dim() < 2:
                    raise TypeError(
                        f'TorchScript file {self.path} returns '
                        f'{type(out).__name__} '
                        f'{tuple(getattr(out, "shape", ()))}; a backbone must '
                        f'return an (N, C) or (N, C, H, W) tensor (or a '
                        f'tuple/list ending with one)')
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

    def stage_parts(self) -> List[List[FreezablePart]]:
        """One stage: the whole scripted module."""
        return [[self.model]]

    def forward(self, x: Tensor) -> Tuple[Tensor]:
        if self.input_size is not None and \
                tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode='bilinear',
                              align_corners=False)
        out = self.model(x)
        if isinstance(out, (tuple, list)):
            out = out[-1]
        return (out, )
