"""Vision Transformer (Dosovitskiy et al., 2021), DeiT and DINOv2 layouts.

Constructor arguments and state-dict keys follow mmpretrain 1.2, so its
checkpoints (and mmcls 0.x ones) load with ``strict=True``; timm ``vit_*``,
``deit_*``, ``deit3_*`` and ``*_dinov2`` checkpoints are converted on load.
The absolute position embedding is resized to the input grid at forward
time and to the model's grid when a checkpoint of another size is loaded.
"""
from dataclasses import asdict, dataclass, fields
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import print_log
from torch import Tensor, nn

from mmbackbone.checkpoint.convert import register_converter
from mmbackbone.registry import MODELS
from ..layers.checkpointing import run_checkpointed
from ..layers.checks import check_positive_ints, to_pair
from ..layers.drop import linear_rates
from ..layers.factory import check_norm_cfg, norm_layer
from ..layers.pos_embed import fit_pos_embed, is_square, resize_pos_embed
from ..layers.transformer import (FFN_TYPES, IntPair, PatchEmbed, SwiGLUFFN,
                                  TransformerEncoderLayer, encoder_layer_cfgs,
                                  patch_embed_kwargs)
from .base_backbone import BaseBackbone, StageInfo

OUT_TYPES = ('raw', 'cls_token', 'featmap', 'avg_featmap')
INTERPOLATE_MODES = ('bicubic', 'bilinear', 'nearest', 'nearest-exact',
                     'area')


@dataclass(frozen=True)
class ViTArch:
    """One row of the ViT arch table.

    ``ffn_type`` and ``layer_scale_init_value`` are the defaults the arch
    was trained with (DINOv2 uses layer scale 1e-5, and SwiGLU in giant).
    """
    embed_dims: int
    num_layers: int
    num_heads: int
    feedforward_channels: int
    ffn_type: str = 'origin'
    layer_scale_init_value: float = 0.


#: The arch table, by mmpretrain's name for each row.
VIT_ROWS: Dict[str, ViTArch] = {
    'small': ViTArch(768, 8, 8, 768 * 3),
    'base': ViTArch(768, 12, 12, 3072),
    'large': ViTArch(1024, 24, 16, 4096),
    'huge': ViTArch(1280, 32, 16, 5120),
    'eva-giant': ViTArch(1408, 40, 16, 6144),
    'deit-tiny': ViTArch(192, 12, 3, 192 * 4),
    'deit-small': ViTArch(384, 12, 6, 384 * 4),
    'deit-base': ViTArch(768, 12, 12, 768 * 4),
    'dinov2-small': ViTArch(384, 12, 6, 384 * 4,
                            layer_scale_init_value=1e-5),
    'dinov2-giant': ViTArch(1536, 40, 24, 6144, ffn_type='swiglu_fused',
                            layer_scale_init_value=1e-5),
}
#: Short names: ``{alias: name in VIT_ROWS}``. ``'deit-b'`` is DeiT-B
#: (its weights), though its row equals ``'base'``.
VIT_ALIASES: Dict[str, str] = {
    's': 'small', 'b': 'base', 'l': 'large', 'h': 'huge',
    'eva-g': 'eva-giant', 'deit-t': 'deit-tiny', 'tiny': 'deit-tiny',
    'deit-s': 'deit-small', 'deit-b': 'deit-base',
    'dinov2-s': 'dinov2-small', 'dinov2-g': 'dinov2-giant',
}
#: Every accepted name (rows and aliases) to its row.
VIT_ARCHS: Dict[str, ViTArch] = {
    **VIT_ROWS,
    **{alias: VIT_ROWS[name] for alias, name in VIT_ALIASES.items()},
}
_REQUIRED = ('embed_dims', 'num_layers', 'num_heads', 'feedforward_channels')


def parse_arch(arch) -> ViTArch:
    """An arch name (case-insensitive) or a dict -> a validated row."""
    if isinstance(arch, str):
        if arch.lower() not in VIT_ARCHS:
            raise KeyError(f'arch={arch!r} not in default archs; choose '
                           f'from {sorted(VIT_ARCHS)} or give a dict with '
                           f'keys {list(_REQUIRED)}')
        return VIT_ARCHS[arch.lower()]
    if not isinstance(arch, dict):
        raise TypeError(f'arch={arch!r} must be an arch name or a dict with '
                        f'keys {list(_REQUIRED)}')
    valid = [f.name for f in fields(ViTArch)]
    missing = [k for k in _REQUIRED if k not in arch]
    unknown = [k for k in arch if k not in valid]
    if missing or unknown:
        raise KeyError(f'Custom arch needs a dict with keys '
                       f'{list(_REQUIRED)} (and may set ffn_type, '
                       f'layer_scale_init_value); arch={arch!r}: missing '
                       f'keys {missing}, unknown keys {unknown}')
    for key in _REQUIRED:
        value = arch[key]
        if isinstance(value, bool) or not isinstance(value, int) \
                or value < 1:
            raise ValueError(f'arch[{key!r}]={value!r} must be a positive '
                             f'int')
    if arch['embed_dims'] % arch['num_heads']:
        raise ValueError(f"arch: embed_dims={arch['embed_dims']} is not "
                         f"divisible by num_heads={arch['num_heads']}")
    if arch.get('ffn_type', 'origin') not in FFN_TYPES:
        raise ValueError(f"arch['ffn_type']={arch['ffn_type']!r}; choose "
                         f'from {list(FFN_TYPES)}')
    return ViTArch(**arch)


def _check_rate(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0 <= value < 1:
        raise ValueError(f'{name}={value!r} must be a float in [0, 1)')


@MODELS.register_module()
class VisionTransformer(BaseBackbone):
    """Vision Transformer backbone (mmpretrain-compatible arguments/keys).

    Each encoder layer is a stage (stride = patch size); ``frozen_stages``
    index 0 is the patch embedding, position embedding and class token.

    Args:
        arch (str | dict): ``'s'/'small'``, ``'b'/'base'``, ``'l'/'large'``,
            ``'h'/'huge'``, ``'eva-g'``, ``'deit-t'/'deit-tiny'/'tiny'``,
            ``'deit-s'``, ``'deit-b'``, ``'dinov2-s'``, ``'dinov2-g'``, or a
            dict with ``embed_dims``, ``num_layers``, ``num_heads``,
            ``feedforward_channels`` (optionally ``ffn_type``,
            ``layer_scale_init_value``). Short names are aliases
            (:data:`VIT_ALIASES`): ``'deit-b'`` is ``'deit-base'`` and
            loads DeiT-B weights. The DINOv2 rows default to layer
            scale 1e-5 and ``dinov2-g`` to the SwiGLU FFN, the layout of
            the published weights (mmpretrain's configs set them by hand;
            pass ``layer_scale_init_value=0`` / ``layer_cfgs`` to undo).
            DINOv2 weights use ``patch_size=14`` and ``img_size=518``.
            Default: ``'base'``.
        img_size (int | tuple): the size the position embedding is made
            for; other input sizes work (the embedding is resized), and
            sides that are not multiples of the patch size are padded at
            the bottom/right (mmcv's ``padding='corner'``, as mmpretrain;
            ``patch_cfg=dict(padding=0)`` refuses them instead).
            Default: 224.
        patch_size (int | tuple): patch size. Default: 16.
        in_channels (int): input channels. Default: 3.
        out_indices (int | Sequence[int]): layers to output; negative
            indices count from the last. Default: -1.
        drop_rate (float): dropout after the position embedding, in the
            attention projection and the FFN. Default: 0.
        drop_path_rate (float): stochastic depth, linear over layers.
        qkv_bias (bool): bias in the qkv projection. Default: True.
        norm_cfg (dict): norm config. Default: LN with eps 1e-6.
        final_norm (bool): norm (``ln1``) after the last layer.
        out_type (str): ``'cls_token'`` (B, C), ``'featmap'`` (B, C, H, W),
            ``'avg_featmap'`` (mean of patch tokens then ``ln2``, (B, C)),
            ``'raw'`` (B, L, C). Default: ``'cls_token'``.
        with_cls_token (bool): prepend a class token. Default: True.
        frozen_stages (int | str): -1 nothing, 0 the embeddings, k also
            layers 1..k (k = num_layers also freezes the final norms).
        interpolate_mode (str): how ``pos_embed`` is resized. Default:
            ``'bicubic'``.
        layer_scale_init_value (float, optional): layer scale init; None
            takes the arch's (0, i.e. none, except DINOv2).
        patch_cfg (dict): overrides of the patch embedding (kernel_size,
            stride, padding (``'corner'``, ``'same'`` or an int), dilation,
            bias, norm_cfg).
        layer_cfgs (dict | Sequence[dict]): overrides of every (or each)
            encoder layer, e.g. ``dict(ffn_type='swiglu_fused')``.
        pre_norm (bool): norm the tokens before the layers (CLIP); also
            drops the patch-embedding bias. Default: False.
        output_cls_token (bool, optional): mmcls 0.x flag. False: output
            feature maps (``out_type='featmap'``); True: each output is
            ``[featmap, cls_token]``. None: use ``out_type``.
        norm_eval (bool): keep norm layers in eval mode. Default: False.
        with_cp (bool): gradient checkpointing per layer. Default: False.
        init_cfg (dict | list, optional): mmengine init config.
        pretrained (bool | str): ``True`` loads the weights index's default
            for this arch, a name that entry (``mmbackbone weights vit*``).

    Example:
        >>> import torch
        >>> from mmbackbone.models import VisionTransformer
        >>> model = VisionTransformer(arch='deit-tiny', img_size=64,
        ...                           out_type='featmap',
        ...                           out_indices=(5, -1)).eval()
        >>> for out in model(torch.rand(1, 3, 64, 100)):
        ...     print(tuple(out.shape))
        (1, 192, 4, 7)
        (1, 192, 4, 7)
        >>> model.out_channels, model.out_strides
        ((192, 192), (16, 16))
    """

    arch_zoo = {name: asdict(row) for name, row in VIT_ARCHS.items()}
    arch_aliases = VIT_ALIASES
    OUT_TYPES = set(OUT_TYPES)
    zoo_configs = {
        name: (dict(arch=name, patch_size=14) if name.startswith('dinov2')
               else dict(arch=name))
        for name in VIT_ARCHS
    }

    def __init__(self,
                 arch: Union[str, dict] = 'base',
                 img_size: IntPair = 224,
                 patch_size: IntPair = 16,
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = -1,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 qkv_bias: bool = True,
                 norm_cfg: dict = dict(type='LN', eps=1e-6),
                 final_norm: bool = True,
                 out_type: str = 'cls_token',
                 with_cls_token: bool = True,
                 frozen_stages: Union[int, str] = -1,
                 interpolate_mode: str = 'bicubic',
                 layer_scale_init_value: Optional[float] = None,
                 patch_cfg: Optional[dict] = None,
                 layer_cfgs: Union[dict, Sequence[dict], None] = None,
                 pre_norm: bool = False,
                 output_cls_token: Optional[bool] = None,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 init_cfg: Union[dict, List[dict], None] = None,
                 pretrained: Union[bool, str] = False):
        super().__init__(init_cfg)
        spec = parse_arch(arch)
        check_norm_cfg(norm_cfg, data='tokens')  # e.g. BN cannot take tokens
        self.arch_settings = asdict(spec)
        self.embed_dims, self.num_layers = spec.embed_dims, spec.num_layers
        self.img_size = to_pair(img_size, 'img_size')
        self.patch_size = patch_size
        to_pair(patch_size, 'patch_size')
        check_positive_ints(in_channels=in_channels)
        _check_rate('drop_rate', drop_rate)
        _check_rate('drop_path_rate', drop_path_rate)
        if interpolate_mode not in INTERPOLATE_MODES:
            raise ValueError(f'interpolate_mode={interpolate_mode!r}; choose '
                             f'from {list(INTERPOLATE_MODES)}')
        self.interpolate_mode = interpolate_mode
        out_type = self._resolve_out_type(out_type, output_cls_token)
        if not with_cls_token and (out_type == 'cls_token'
                                   or output_cls_token):
            raise ValueError(
                f'with_cls_token must be True to output the class token: '
                f'with_cls_token=False leaves no class token to output; use '
                f"out_type='featmap', 'avg_featmap' or 'raw' (got "
                f'out_type={out_type!r}, output_cls_token='
                f'{output_cls_token!r})')
        self.out_type = out_type
        self.output_cls_token = bool(output_cls_token)
        self.with_cls_token = with_cls_token
        self.num_extra_tokens = 1 if with_cls_token else 0
        self.final_norm, self.with_cp = final_norm, with_cp
        if layer_scale_init_value is None:
            layer_scale_init_value = spec.layer_scale_init_value
        if isinstance(layer_scale_init_value, bool) or not isinstance(
                layer_scale_init_value, (int, float)) or \
                layer_scale_init_value < 0:
            raise ValueError(f'layer_scale_init_value='
                             f'{layer_scale_init_value!r} must be a float '
                             f'>= 0 (0 disables layer scale) or None (the '
                             f"arch's default)")
        layer_cfgs = encoder_layer_cfgs(layer_cfgs, self.num_layers)

        self.patch_embed = PatchEmbed(
            in_channels, self.embed_dims,
            **patch_embed_kwargs(patch_cfg, patch_size, in_channels,
                                 self.embed_dims, bias=not pre_norm))
        stride = self.patch_embed.stride
        map_stride = stride[0] if stride[0] == stride[1] else stride
        is_map = out_type in ('featmap', ) or self.output_cls_token
        # The final norms freeze with the last layer.
        final_norms = (('ln1', ) if final_norm else ()) + (
            ('ln2', ) if out_type == 'avg_featmap' else ())
        stem = ('patch_embed', 'pos_embed', 'drop_after_pos', 'pre_norm')
        self._setup_stages(
            [StageInfo(self.embed_dims, map_stride if is_map else None,
                       (f'layers.{i}', ) + (final_norms if i ==
                                            self.num_layers - 1 else ()))
             for i in range(self.num_layers)],
            stem=stem + (('cls_token', ) if with_cls_token else ()),
            out_indices=out_indices, frozen_stages=frozen_stages,
            norm_eval=norm_eval)
        self.patch_resolution = self.patch_embed.out_size(self.img_size,
                                                          'img_size')
        num_patches = self.patch_resolution[0] * self.patch_resolution[1]
        self.cls_token = (nn.Parameter(torch.zeros(1, 1, self.embed_dims))
                          if with_cls_token else None)
        self.pos_embed = nn.Parameter(torch.zeros(
            1, num_patches + self.num_extra_tokens, self.embed_dims))
        self._register_load_state_dict_pre_hook(self._pos_embed_hook)
        self.drop_after_pos = nn.Dropout(p=drop_rate)

        rates = linear_rates(drop_path_rate, self.num_layers)
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            kwargs = dict(
                embed_dims=self.embed_dims, num_heads=spec.num_heads,
                feedforward_channels=spec.feedforward_channels,
                layer_scale_init_value=layer_scale_init_value,
                drop_rate=drop_rate, drop_path_rate=rates[i],
                qkv_bias=qkv_bias, ffn_type=spec.ffn_type,
                norm_cfg=norm_cfg)
            kwargs.update(layer_cfgs[i])
            self.layers.append(TransformerEncoderLayer(**kwargs))
        self.pre_norm = (norm_layer(norm_cfg, self.embed_dims)[1]
                         if pre_norm else nn.Identity())
        if final_norm:
            self.ln1 = norm_layer(norm_cfg, self.embed_dims)[1]
        if out_type == 'avg_featmap':
            self.ln2 = norm_layer(norm_cfg, self.embed_dims)[1]
        self._finish_init(pretrained,
                          arch.lower() if isinstance(arch, str) else None)

    # ---------------------------------------------------------- arguments
    @staticmethod
    def _resolve_out_type(out_type, output_cls_token) -> str:
        if out_type not in OUT_TYPES:
            raise ValueError(f'out_type={out_type!r}; choose from '
                             f'{list(OUT_TYPES)}')
        if output_cls_token is None:
            return out_type
        if not isinstance(output_cls_token, bool):
            raise TypeError(f'output_cls_token={output_cls_token!r} must be '
                            f'True, False or None')
        if out_type not in ('cls_token', 'featmap'):
            raise ValueError(
                f'output_cls_token={output_cls_token} (mmcls 0.x) selects '
                f'feature-map outputs and conflicts with out_type='
                f'{out_type!r}; give only one of them')
        return 'featmap'

    @property
    def norm1(self) -> nn.Module:
        return self.ln1

    @property
    def norm2(self) -> nn.Module:
        return self.ln2

    # ---------------------------------------------------------- weights
    def _init_after_random(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for layer in self.layers:
            for module in layer.ffn.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.normal_(module.bias, std=1e-6)

    def _fit_pos_embed(self, pos_embed: Tensor
                       ) -> Tuple[Tensor, Optional[str]]:
        """A checkpoint's pos_embed fitted to this model's tokens."""
        return fit_pos_embed(pos_embed, self.pos_embed.shape,
                             self.patch_resolution, self.num_extra_tokens,
                             self.interpolate_mode)

    def adapt_state_dict(self, state_dict):
        """Resize ``pos_embed`` to the model's grid, then the base
        adaptation (first-conv input channels)."""
        state_dict, adapted = super().adapt_state_dict(state_dict)
        if 'pos_embed' in state_dict:
            fitted, note = self._fit_pos_embed(state_dict['pos_embed'])
            if note:
                state_dict = dict(state_dict)
                state_dict['pos_embed'] = fitted
                adapted = adapted + [note]
        return state_dict, adapted

    def _pos_embed_hook(self, state_dict, prefix, *args, **kwargs) -> None:
        """``load_state_dict`` of another grid resizes pos_embed too."""
        key = prefix + 'pos_embed'
        if key in state_dict:
            state_dict[key], note = self._fit_pos_embed(state_dict[key])
            if note:
                print_log(f'{type(self).__name__}: resized {note}',
                          logger='current')

    @staticmethod
    def resize_pos_embed(*args, **kwargs) -> Tensor:
        """Alias of :func:`resize_pos_embed` (mmpretrain's interface)."""
        return resize_pos_embed(*args, **kwargs)

    def get_layer_depth(self, param_name: str, prefix: str = ''
                        ) -> Tuple[int, int]:
        """Depth of a parameter for layer-wise lr decay, per block as in
        mmpretrain 1.2's ViT (see :meth:`BaseBackbone.get_layer_depth`).

        0 for the patch embedding, ``pos_embed`` and ``cls_token``,
        ``i + 1`` for block ``i``, and the last depth, ``num_layers + 1``,
        for the rest: the norms (``pre_norm`` too, as in mmpretrain) and
        names not under ``prefix``.

        Example:
            >>> from mmbackbone.models import VisionTransformer
            >>> model = VisionTransformer('deit-tiny', img_size=32)
            >>> model.get_layer_depth('backbone.pos_embed', 'backbone.')
            (0, 14)
            >>> model.get_layer_depth('layers.3.attn.qkv.weight')
            (4, 14)
            >>> model.get_layer_depth('ln1.weight')
            (13, 14)
        """
        total = self.num_layers + 2
        if not param_name.startswith(prefix):
            return total - 1, total
        name = param_name[len(prefix):]
        if name in ('cls_token', 'pos_embed') or \
                name.startswith('patch_embed'):
            return 0, total
        if name.startswith('layers.'):
            return int(name.split('.')[1]) + 1, total
        return total - 1, total

    # ------------------------------------------------------------ forward
    def _run_layer(self, layer: nn.Module, x: Tensor) -> Tensor:
        return run_checkpointed(layer, x, with_cp=self.with_cp)

    def _format_output(self, x: Tensor, hw: Tuple[int, int]):
        if self.out_type == 'raw':
            return x
        if self.out_type == 'cls_token':
            return x[:, 0]
        tokens = x[:, self.num_extra_tokens:]
        if self.out_type == 'avg_featmap':
            return self.ln2(tokens.mean(dim=1))
        featmap = tokens.reshape(x.shape[0], hw[0], hw[1],
                                 -1).permute(0, 3, 1, 2)
        if self.output_cls_token:
            return [featmap, x[:, 0]]
        return featmap

    def forward(self, x: Tensor) -> tuple:
        batch = x.shape[0]
        x, hw = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(batch, -1, -1), x), dim=1)
        x = x + resize_pos_embed(self.pos_embed, self.patch_resolution, hw,
                                 self.interpolate_mode,
                                 self.num_extra_tokens)
        x = self.pre_norm(self.drop_after_pos(x))
        outs = []
        for i in range(self.last_needed_stage + 1):
            x = self._run_layer(self.layers[i], x)
            if i == self.num_layers - 1 and self.final_norm:
                x = self.ln1(x)
            outs.append(self._format_output(x, hw)
                        if i in self.out_indices else None)
        return self._select_outputs(outs)


# ------------------------------------------------------------ conversion
_TIMM_BLOCK = {
    'norm1': 'ln1', 'attn.qkv': 'attn.qkv', 'attn.proj': 'attn.proj',
    'norm2': 'ln2', 'mlp.w12': 'ffn.w12', 'mlp.w3': 'ffn.w3',
}


@register_converter('timm', 'VisionTransformer')
def vit_from_timm(state_dict, model):
    """timm ``vit_*`` / ``deit_*`` / ``deit3_*`` / ``*_dinov2`` keys to
    ours. ``norm`` becomes ``ln1``, ``fc_norm`` (average-pool models)
    ``ln2``, ``norm_pre`` ``pre_norm``; the head is dropped; a position
    embedding without a class entry (DeiT-3) gets a zero one, which is the
    same model."""
    if 'patch_embed.proj.weight' not in state_dict:
        raise KeyError('not a timm VisionTransformer state dict')
    if 'dist_token' in state_dict or 'reg_token' in state_dict:
        raise KeyError('distillation / register tokens are not supported')
    swiglu = any(isinstance(layer.ffn, SwiGLUFFN) for layer in model.layers)
    converted = {}
    for key, value in state_dict.items():
        if key.startswith(('head.', 'head_dist.')):
            continue
        new = None
        if key.startswith('patch_embed.proj.'):
            new = 'patch_embed.projection.' + key.split('.')[-1]
        elif key in ('cls_token', 'pos_embed'):
            new = key
        elif key.startswith('norm_pre.'):
            new = 'pre_norm.' + key.split('.')[-1]
        elif key.startswith('norm.'):
            new = 'ln1.' + key.split('.')[-1]
        elif key.startswith('fc_norm.'):
            new = 'ln2.' + key.split('.')[-1]
        elif key.startswith('blocks.'):
            _, index, rest = key.split('.', 2)
            module, _, leaf = rest.rpartition('.')
            if module == 'ls1':
                new = f'layers.{index}.attn.gamma1.weight'
            elif module == 'ls2':
                new = f'layers.{index}.ffn.gamma2.weight'
            elif module in ('mlp.fc1', 'mlp.fc2'):
                target = (('ffn.w12', 'ffn.w3') if swiglu else
                          ('ffn.layers.0.0', 'ffn.layers.1'))
                new = (f'layers.{index}.'
                       f'{target[module == "mlp.fc2"]}.{leaf}')
            elif module in _TIMM_BLOCK:
                new = f'layers.{index}.{_TIMM_BLOCK[module]}.{leaf}'
        converted[new or key] = value
    pos = converted.get('pos_embed')
    if (pos is not None and 'cls_token' in converted and pos.ndim == 3
            and is_square(pos.shape[1])):
        converted['pos_embed'] = torch.cat(
            (pos.new_zeros(1, 1, pos.shape[2]), pos), dim=1)
    return converted
