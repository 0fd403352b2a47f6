"""Light image transforms for classification datasets.

Each transform takes and returns a results dict whose ``'img'`` is a
``uint8`` tensor of shape ``(C, H, W)``. They are registered in
``mmbackbone.registry.TRANSFORMS`` and named in a dataset's ``pipeline``.
Randomness comes from torch's global generator, which mmengine seeds
(``randomness=dict(seed=...)``) and which DataLoader workers re-seed.

Example:
    >>> import torch
    >>> from mmbackbone.datasets.transforms import RandomCrop, Resize
    >>> results = dict(img=torch.zeros(3, 8, 8, dtype=torch.uint8))
    >>> results = Resize(size=32)(results)
    >>> tuple(RandomCrop(size=32, padding=4)(results)['img'].shape)
    (3, 32, 32)
"""
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from mmbackbone.apis import build_from_config, check_config_types
from mmbackbone.registry import TRANSFORMS

Size = Union[int, Sequence[int]]


def to_hw(size: Size, arg: str = 'size') -> Tuple[int, int]:
    """``32`` or ``(32, 48)`` -> ``(h, w)``, validated."""
    if isinstance(size, bool):
        raise TypeError(f'{arg}={size!r} must be an int or (height, width)')
    pair = (size, size) if isinstance(size, int) else size
    if (not isinstance(pair, Sequence) or len(pair) != 2 or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0
            for s in pair)):
        raise ValueError(f'{arg}={size!r} must be a positive int or a pair '
                         f'of positive ints (height, width)')
    return int(pair[0]), int(pair[1])


def _check_img(results: Dict) -> torch.Tensor:
    img = results.get('img')
    if not isinstance(img, torch.Tensor) or img.dim() != 3:
        shape = tuple(img.shape) if isinstance(img, torch.Tensor) else ''
        raise TypeError(f"results['img'] must be a (C, H, W) tensor; got "
                        f'{type(img).__name__}{shape}')
    return img


@TRANSFORMS.register_module()
class Resize:
    """Resize the image to ``size`` (bilinear, antialiased when shrinking).

    Args:
        size (int | tuple[int, int]): output size, ``(height, width)``.
    """

    def __init__(self, size: Size):
        self.size = to_hw(size)

    def __call__(self, results: Dict) -> Dict:
        img = _check_img(results)
        if tuple(img.shape[-2:]) != self.size:
            results['img'] = resize_uint8(img, self.size)
        results['img_shape'] = self.size
        return results

    def __repr__(self) -> str:
        return f'Resize(size={self.size})'


def resize_uint8(img: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a ``(C, H, W)`` uint8 tensor, kept uint8."""
    out = F.interpolate(img[None].float(), size=size, mode='bilinear',
                        align_corners=False, antialias=True)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8)


@TRANSFORMS.register_module()
class RandomCrop:
    """Pad each side by ``padding`` pixels, then crop ``size`` at random.

    Args:
        size (int | tuple[int, int]): crop size, ``(height, width)``.
        padding (int): pixels added on every side first. Default: 0.
        pad_val (int): value of the padded pixels. Default: 0.
    """

    def __init__(self, size: Size, padding: int = 0, pad_val: int = 0):
        self.size = to_hw(size)
        if isinstance(padding, bool) or not isinstance(padding, int) \
                or padding < 0:
            raise ValueError(f'padding={padding!r} must be an int >= 0')
        if isinstance(pad_val, bool) or not isinstance(pad_val, int) \
                or not 0 <= pad_val <= 255:
            raise ValueError(f'pad_val={pad_val!r} must be an int in [0, 255]')
        self.padding, self.pad_val = padding, pad_val

    def __call__(self, results: Dict) -> Dict:
        img = _check_img(results)
        if self.padding:
            img = F.pad(img, [self.padding] * 4, value=self.pad_val)
        height, width = img.shape[-2:]
        crop_h, crop_w = self.size
        if crop_h > height or crop_w > width:
            raise ValueError(f'RandomCrop size={self.size} is larger than the '
                             f'padded image {(height, width)}')
        top = int(torch.randint(0, height - crop_h + 1, ()))
        left = int(torch.randint(0, width - crop_w + 1, ()))
        results['img'] = img[:, top:top + crop_h, left:left + crop_w]
        results['img_shape'] = self.size
        return results

    def __repr__(self) -> str:
        return (f'RandomCrop(size={self.size}, padding={self.padding}, '
                f'pad_val={self.pad_val})')


@TRANSFORMS.register_module()
class RandomFlip:
    """Flip the image with probability ``prob``.

    Args:
        prob (float): probability of a flip. Default: 0.5.
        direction (str): ``'horizontal'`` or ``'vertical'``.
    """

    def __init__(self, prob: float = 0.5, direction: str = 'horizontal'):
        if isinstance(prob, bool) or not isinstance(prob, (int, float)) \
                or not 0 <= prob <= 1:
            raise ValueError(f'prob={prob!r} must be in [0, 1]')
        if direction not in ('horizontal', 'vertical'):
            raise ValueError(f"direction={direction!r}; choose 'horizontal' "
                             f"or 'vertical'")
        self.prob, self.direction = float(prob), direction

    def __call__(self, results: Dict) -> Dict:
        img = _check_img(results)
        if float(torch.rand(())) < self.prob:
            dim = -1 if self.direction == 'horizontal' else -2
            results['img'] = img.flip(dim)
        return results

    def __repr__(self) -> str:
        return f'RandomFlip(prob={self.prob}, direction={self.direction!r})'


def build_pipeline(pipeline: Optional[Sequence]) -> List:
    """Build a list of transforms from configs (registered types only).

    Args:
        pipeline (list[dict | callable], optional): transform configs such
            as ``dict(type='RandomCrop', size=32, padding=2)`` or callables.

    Raises:
        TypeError: ``pipeline`` is not a list, or an entry is neither a
            config dict nor callable.
        KeyError: an unknown transform type (close names suggested).
    """
    if pipeline is None:
        return []
    if isinstance(pipeline, (str, bytes, Mapping)) or \
            not isinstance(pipeline, Sequence):
        raise TypeError(f'pipeline={pipeline!r} must be a list of transform '
                        f'configs, e.g. [dict(type="RandomCrop", size=32, '
                        f'padding=2)]')
    transforms = []
    for i, cfg in enumerate(pipeline):
        if isinstance(cfg, Mapping):
            check_config_types(cfg, f'pipeline[{i}]')
            cfg = dict(cfg)
            type_ = cfg.get('type')
            if isinstance(type_, str) and '.' in type_:
                scope, name = type_.split('.', 1)
                if scope != TRANSFORMS.scope:
                    raise ValueError(
                        f'pipeline[{i}].type={type_!r}: dataset transforms '
                        f'come from mmbackbone (they work on CHW tensors); '
                        f'registered: {sorted(TRANSFORMS.module_dict)}')
                cfg['type'] = name
            transforms.append(build_from_config(cfg, TRANSFORMS,
                                                f'pipeline[{i}]'))
        elif callable(cfg):
            transforms.append(cfg)
        else:
            raise TypeError(f'pipeline[{i}]={cfg!r} must be a transform '
                            f'config dict or a callable')
    return transforms
