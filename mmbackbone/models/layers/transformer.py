"""Transformer encoder blocks (ViT, DeiT, DINOv2 layouts).

Module names and keys follow mmpretrain 1.2 (``ln1``, ``attn.qkv``,
``attn.proj``, ``ln2``, ``ffn.layers.0.0``, ``ffn.layers.1``, layer scales
``gamma1`` / ``gamma2``), so its checkpoints load with ``strict=True``.

Example:
    >>> import torch
    >>> layer = TransformerEncoderLayer(32, 2, 64)
    >>> tuple(layer(torch.rand(2, 5, 32)).shape)
    (2, 5, 32)
    >>> tokens, grid = PatchEmbed(3, 32, 8, 8)(torch.rand(1, 3, 16, 24))
    >>> tuple(tokens.shape), grid
    ((1, 6, 32), (2, 3))
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import to_pair
from .drop import drop_path_module
from .factory import act_layer, conv_layer, norm_layer

IntPair = Union[int, Tuple[int, int]]

#: Feed-forward layouts: mmpretrain's ``FFN`` and DINOv2's fused SwiGLU.
FFN_TYPES = ('origin', 'swiglu_fused')
#: Keys a ``layer_cfgs`` entry may set (:class:`TransformerEncoderLayer`).
ENCODER_LAYER_KEYS = ('embed_dims', 'num_heads', 'feedforward_channels',
                      'layer_scale_init_value', 'drop_rate', 'attn_drop_rate',
                      'drop_path_rate', 'num_fcs', 'qkv_bias', 'ffn_type',
                      'act_cfg', 'norm_cfg')
#: Keys of mmpretrain's ``patch_cfg`` (:func:`patch_embed_kwargs`).
PATCH_CFG_KEYS = ('kernel_size', 'stride', 'padding', 'dilation', 'bias',
                  'norm_cfg', 'conv_type', 'conv_cfg', 'input_size',
                  'in_channels', 'embed_dims')


#: ``padding`` modes of :class:`PatchEmbed` that pad adaptively (mmcv's
#: ``AdaptivePadding``): zeros at the bottom/right, or split around.
ADAPTIVE_PADDINGS = ('corner', 'same')


class PatchEmbed(nn.Module):
    """Image to patch tokens: optional adaptive padding, a strided conv
    (``projection``), then an optional norm.

    ``padding='corner'`` (the default, as mmcv's ``PatchEmbed`` that
    mmpretrain uses) pads the bottom and right of an input whose sides are
    not multiples of the stride up to the next multiple, so no pixel is
    dropped; ``'same'`` splits that padding around the input. An int
    padding is the conv's own; then inputs that would leave pixels unused
    are refused.

    Example:
        >>> import torch
        >>> embed = PatchEmbed(3, 8, kernel_size=16, stride=16)
        >>> tokens, grid = embed(torch.rand(1, 3, 256, 309))
        >>> tuple(tokens.shape), grid
        ((1, 320, 8), (16, 20))
    """

    def __init__(self, in_channels: int, embed_dims: int,
                 kernel_size: IntPair, stride: IntPair,
                 padding: Union[IntPair, str] = 'corner',
                 dilation: IntPair = 1, bias: bool = True,
                 norm_cfg: Optional[dict] = None,
                 conv_cfg: Optional[dict] = None):
        super().__init__()
        self.kernel_size = to_pair(kernel_size, 'patch_cfg.kernel_size')
        self.stride = to_pair(stride, 'patch_cfg.stride')
        self.dilation = to_pair(dilation, 'patch_cfg.dilation')
        if isinstance(padding, str):
            if padding not in ADAPTIVE_PADDINGS:
                raise ValueError(f'patch_cfg.padding={padding!r}; choose '
                                 f'from {list(ADAPTIVE_PADDINGS)} or give '
                                 f'an int or a pair of ints')
            self.adaptive_padding: Optional[str] = padding
            padding = 0
        else:
            self.adaptive_padding = None
        self.padding = ((padding, padding) if isinstance(padding, int)
                        else tuple(padding))
        self.projection = conv_layer(conv_cfg, in_channels, embed_dims,
                                     self.kernel_size, stride=self.stride,
                                     padding=self.padding,
                                     dilation=self.dilation, bias=bias)
        self.norm = (norm_layer(norm_cfg, embed_dims,
                                arg='patch_cfg.norm_cfg')[1]
                     if norm_cfg is not None else None)

    def pad_size(self, size: Sequence[int]) -> Tuple[int, int]:
        """Rows and columns the adaptive padding adds to an ``(H, W)``
        image (mmcv's ``AdaptivePadding.get_pad_shape``); ``(0, 0)``
        without adaptive padding."""
        if self.adaptive_padding is None:
            return 0, 0
        pads = []
        for side, k, s, d in zip(size, self.kernel_size, self.stride,
                                 self.dilation):
            # ceil(side / s) in integers: exact, and symbolic sizes
            # (torch.export) stay expressions instead of floats
            patches = -(-side // s)
            pads.append(max((patches - 1) * s + (k - 1) * d + 1 - side, 0))
        return pads[0], pads[1]

    def out_size(self, size: Sequence[int], name: str = 'input'
                 ) -> Tuple[int, int]:
        """Token grid of an ``(H, W)`` image; ValueError, with an int
        padding, if it leaves pixels over."""
        grid = []
        for side, pad, k, s, p, d in zip(size, self.pad_size(size),
                                         self.kernel_size, self.stride,
                                         self.padding, self.dilation):
            span = side + pad + 2 * p - d * (k - 1) - 1
            if span < 0 or span % s:
                raise ValueError(
                    f'{name} size {tuple(int(v) for v in size)} does not '
                    f'tile into patches: each side must be a multiple of '
                    f'the patch size {s} (patch kernel {k}, stride {s}, '
                    f"padding {p}); resize or pad the image, or use "
                    f"patch_cfg=dict(padding='corner') to pad it")
            grid.append(span // s + 1)
        return grid[0], grid[1]

    def forward(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        if self.adaptive_padding is None:
            self.out_size(x.shape[-2:])
        else:
            pad_h, pad_w = self.pad_size(x.shape[-2:])
            if pad_h or pad_w:
                x = F.pad(x, [0, pad_w, 0, pad_h]
                          if self.adaptive_padding == 'corner' else
                          [pad_w // 2, pad_w - pad_w // 2, pad_h // 2,
                           pad_h - pad_h // 2])
        x = self.projection(x)
        hw = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        if self.norm is not None:
            x = self.norm(x)
        return x, hw


class LayerScale(nn.Module):
    """Learned per-channel scale (``weight``) of a residual branch."""

    def __init__(self, dims: int, init_value: float):
        super().__init__()
        self.weight = nn.Parameter(torch.full((dims, ), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight


def layer_scale(dims: int, init_value: float) -> nn.Module:
    """A :class:`LayerScale` for ``init_value > 0``, else ``nn.Identity()``.

    Example:
        >>> [type(layer_scale(8, v)).__name__ for v in (0., 1e-5)]
        ['Identity', 'LayerScale']
    """
    return LayerScale(dims, init_value) if init_value > 0 else nn.Identity()


class MultiheadAttention(nn.Module):
    """Self-attention with a fused ``qkv`` projection; the output passes
    ``proj``, dropout, the optional layer scale ``gamma1`` and drop path
    (``out_drop``: mmcv's ``DropPath``, with ``drop_prob``, at every rate
    as in mmpretrain)."""

    def __init__(self, embed_dims: int, num_heads: int,
                 attn_drop: float = 0., proj_drop: float = 0.,
                 drop_path_rate: float = 0., qkv_bias: bool = True,
                 layer_scale_init_value: float = 0.):
        super().__init__()
        self.embed_dims, self.num_heads = embed_dims, num_heads
        self.head_dims = embed_dims // num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)
        self.gamma1 = layer_scale(embed_dims, layer_scale_init_value)
        self.out_drop = drop_path_module(drop_path_rate)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads,
                                  self.head_dims).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(
            qkv[0], qkv[1], qkv[2],
            dropout_p=self.attn_drop if self.training else 0.)
        x = self.proj(x.transpose(1, 2).reshape(batch, length,
                                                self.embed_dims))
        return self.out_drop(self.gamma1(self.proj_drop(x)))


class FFN(nn.Module):
    """``num_fcs`` linear layers with an activation; keys ``layers.0.0``
    (first linear), ``layers.1`` (last linear), ``gamma2`` (layer scale);
    drop path ``dropout_layer`` (``drop_prob``), attributes
    ``embed_dims``, ``feedforward_channels``, ``num_fcs`` as mmcv's."""

    def __init__(self, embed_dims: int, feedforward_channels: int,
                 num_fcs: int = 2, act_cfg: dict = dict(type='GELU'),
                 ffn_drop: float = 0., drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 0.):
        super().__init__()
        if isinstance(num_fcs, bool) or not isinstance(num_fcs, int) \
                or num_fcs < 2:
            raise ValueError(f'num_fcs={num_fcs!r} must be an int >= 2')
        self.embed_dims = embed_dims
        self.feedforward_channels = feedforward_channels
        self.num_fcs = num_fcs
        layers: List[nn.Module] = []
        channels = embed_dims
        for _ in range(num_fcs - 1):
            layers.append(nn.Sequential(
                nn.Linear(channels, feedforward_channels),
                act_layer(act_cfg, arg='layer_cfgs.act_cfg'),
                nn.Dropout(ffn_drop)))
            channels = feedforward_channels
        layers += [nn.Linear(channels, embed_dims), nn.Dropout(ffn_drop)]
        self.layers = nn.Sequential(*layers)
        self.gamma2 = layer_scale(embed_dims, layer_scale_init_value)
        self.dropout_layer = drop_path_module(drop_path_rate)

    def forward(self, x: Tensor, identity: Tensor) -> Tensor:
        return identity + self.dropout_layer(self.gamma2(self.layers(x)))


class SwiGLUFFN(nn.Module):
    """SwiGLU feed-forward of DINOv2-giant: ``w12`` (both halves fused),
    ``silu(x1) * x2``, ``w3``, layer scale ``gamma2``.

    The hidden width is ``feedforward_channels * 2 / 3`` rounded up to a
    multiple of 8 (6144 -> 4096 for ``dinov2-g``).
    """

    def __init__(self, embed_dims: int, feedforward_channels: int,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 0.):
        super().__init__()
        self.embed_dims = embed_dims
        self.feedforward_channels = feedforward_channels
        hidden = (int(feedforward_channels * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(embed_dims, 2 * hidden)
        self.w3 = nn.Linear(hidden, embed_dims)
        self.gamma2 = layer_scale(embed_dims, layer_scale_init_value)
        self.dropout_layer = drop_path_module(drop_path_rate)

    def forward(self, x: Tensor, identity: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        out = self.gamma2(self.w3(F.silu(x1) * x2))
        return identity + self.dropout_layer(out)


class TransformerEncoderLayer(nn.Module):
    """Pre-norm encoder block: ``x + attn(ln1(x))``, then
    ``x + ffn(ln2(x))``.

    Args:
        embed_dims (int): token channels.
        num_heads (int): attention heads.
        feedforward_channels (int): hidden width of the FFN.
        layer_scale_init_value (float): init of the layer scales
            ``gamma1`` / ``gamma2``; 0 for none. Default: 0.
        drop_rate (float): dropout after the attention projection and in
            the FFN. Default: 0.
        attn_drop_rate (float): dropout of the attention weights.
        drop_path_rate (float): stochastic depth of both branches.
        num_fcs (int): linear layers of the ``'origin'`` FFN. Default: 2.
        qkv_bias (bool): bias of the qkv projection. Default: True.
        ffn_type (str): ``'origin'`` or ``'swiglu_fused'``.
        act_cfg (dict): activation of the ``'origin'`` FFN.
        norm_cfg (dict): config of ``ln1`` / ``ln2``.

    Example:
        >>> import torch
        >>> layer = TransformerEncoderLayer(16, 2, 32, ffn_type='swiglu_fused')
        >>> tuple(layer(torch.rand(1, 4, 16)).shape)
        (1, 4, 16)
    """

    def __init__(self, embed_dims: int, num_heads: int,
                 feedforward_channels: int,
                 layer_scale_init_value: float = 0., drop_rate: float = 0.,
                 attn_drop_rate: float = 0., drop_path_rate: float = 0.,
                 num_fcs: int = 2, qkv_bias: bool = True,
                 ffn_type: str = 'origin',
                 act_cfg: dict = dict(type='GELU'),
                 norm_cfg: dict = dict(type='LN')):
        super().__init__()
        if ffn_type not in FFN_TYPES:
            raise ValueError(f'ffn_type={ffn_type!r}; choose from '
                             f'{list(FFN_TYPES)}')
        self.embed_dims = embed_dims
        self.ln1 = norm_layer(norm_cfg, embed_dims)[1]
        self.attn = MultiheadAttention(
            embed_dims, num_heads, attn_drop=attn_drop_rate,
            proj_drop=drop_rate, drop_path_rate=drop_path_rate,
            qkv_bias=qkv_bias, layer_scale_init_value=layer_scale_init_value)
        self.ln2 = norm_layer(norm_cfg, embed_dims)[1]
        if ffn_type == 'origin':
            self.ffn = FFN(embed_dims, feedforward_channels, num_fcs,
                           act_cfg, ffn_drop=drop_rate,
                           drop_path_rate=drop_path_rate,
                           layer_scale_init_value=layer_scale_init_value)
        else:
            self.ffn = SwiGLUFFN(embed_dims, feedforward_channels,
                                 drop_path_rate=drop_path_rate,
                                 layer_scale_init_value=(
                                     layer_scale_init_value))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return self.ffn(self.ln2(x), identity=x)


def encoder_layer_cfgs(layer_cfgs: Union[dict, Sequence[dict], None],
                       num_layers: int) -> List[dict]:
    """mmpretrain's ``layer_cfgs`` (one dict for every layer, or one per
    layer) as one validated dict per layer.

    Example:
        >>> encoder_layer_cfgs(dict(ffn_type='swiglu_fused'), 2)
        [{'ffn_type': 'swiglu_fused'}, {'ffn_type': 'swiglu_fused'}]
    """
    if layer_cfgs is None:
        layer_cfgs = {}
    if isinstance(layer_cfgs, dict):
        layer_cfgs = [layer_cfgs] * num_layers
    if not isinstance(layer_cfgs, Sequence) or \
            len(layer_cfgs) != num_layers or \
            not all(isinstance(c, dict) for c in layer_cfgs):
        raise TypeError(f'layer_cfgs={layer_cfgs!r} must be a dict or '
                        f'{num_layers} dicts (one per layer)')
    for cfg in layer_cfgs:
        unknown = [k for k in cfg if k not in ENCODER_LAYER_KEYS]
        if unknown:
            raise KeyError(f'layer_cfgs: unknown keys {unknown}; valid '
                           f'keys are {list(ENCODER_LAYER_KEYS)}')
    return list(layer_cfgs)


def patch_embed_kwargs(patch_cfg: Optional[dict], patch_size: IntPair,
                       in_channels: int, embed_dims: int,
                       bias: bool = True) -> dict:
    """:class:`PatchEmbed` arguments from mmpretrain's ``patch_cfg``
    overrides (mmcv's ``conv_type``, ``padding`` ``'corner'`` (the
    default) / ``'same'`` / an int, the redundant
    ``in_channels`` / ``embed_dims`` / ``input_size``).

    Example:
        >>> patch_embed_kwargs(dict(padding=0), 16, 3, 192)
        {'kernel_size': 16, 'stride': 16, 'bias': True, 'conv_cfg': None, \
'padding': 0}
    """
    patch_cfg = dict(patch_cfg or {})
    unknown = [k for k in patch_cfg if k not in PATCH_CFG_KEYS]
    if unknown:
        raise KeyError(f'patch_cfg: unknown keys {unknown}; valid keys '
                       f'are {list(PATCH_CFG_KEYS)}')
    for key, want in (('in_channels', in_channels),
                      ('embed_dims', embed_dims)):
        if key in patch_cfg and patch_cfg[key] != want:
            raise ValueError(f'patch_cfg[{key!r}]={patch_cfg[key]!r} '
                             f'disagrees with the model ({want})')
    patch_cfg.pop('in_channels', None)
    patch_cfg.pop('embed_dims', None)
    patch_cfg.pop('input_size', None)
    conv_type = patch_cfg.pop('conv_type', 'Conv2d')
    conv_cfg = patch_cfg.pop('conv_cfg', None)
    if conv_cfg is None and conv_type != 'Conv2d':
        conv_cfg = dict(type=conv_type)
    kwargs = dict(kernel_size=patch_size, stride=patch_size, bias=bias,
                  conv_cfg=conv_cfg)
    kwargs.update(patch_cfg)
    padding = kwargs.get('padding', 'corner')
    if padding not in ADAPTIVE_PADDINGS and \
            not isinstance(padding, (int, tuple, list)):
        raise ValueError(f"patch_cfg['padding']={padding!r}; choose from "
                         f'{list(ADAPTIVE_PADDINGS)} or give an int or a '
                         f'pair of ints')
    return kwargs
