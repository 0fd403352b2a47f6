"""Building blocks shared by the families, one small module per concern.

* :mod:`.factory`: conv / norm / activation layers from configs.
* :mod:`.drop`: drop path and its per-block rates.
* :mod:`.checks`: argument checks with errors that name the value.
* :mod:`.checkpointing`: gradient checkpointing of a block.
* :mod:`.squeeze_excite`: the squeeze-excite channel gate.
* :mod:`.bottleneck`: the residual block the conv families share, and a
  stage of them.
* :mod:`.csp_layer`: the cross-stage-partial stage and its blocks.
* :mod:`.transformer`: transformer encoder blocks and the patch embedding.
* :mod:`.pos_embed`: position-embedding resizing.
"""
from .bottleneck import (LAYOUT_EXPANSION, LAYOUTS, ResidualBlock,
                         ResLayer, get_expansion, zero_init_last_blocks)
from .checkpointing import run_checkpointed
from .checks import (STYLES, check_layer_cfgs, check_per_stage,
                     check_positive_ints, check_rate, check_style, is_int,
                     is_number, to_pair)
from .csp_layer import CSPStage
from .drop import (drop_path_module, drop_path_or_identity, drop_path_rates,
                   linear_rates)
from .factory import (act_layer, check_norm_cfg, conv_layer, conv_module,
                      norm_layer)
from .pos_embed import fit_pos_embed, resize_pos_embed
from .squeeze_excite import SqueezeExcite
from .transformer import (FFN, MultiheadAttention, PatchEmbed, SwiGLUFFN,
                          TransformerEncoderLayer)

__all__ = [
    'LAYOUT_EXPANSION', 'LAYOUTS', 'ResidualBlock', 'ResLayer',
    'get_expansion', 'zero_init_last_blocks',
    'run_checkpointed', 'STYLES', 'check_layer_cfgs', 'check_per_stage',
    'check_positive_ints', 'check_rate', 'check_style', 'is_int',
    'is_number', 'to_pair', 'CSPStage', 'drop_path_module',
    'drop_path_or_identity', 'drop_path_rates', 'linear_rates', 'act_layer',
    'check_norm_cfg', 'conv_layer', 'conv_module', 'norm_layer',
    'fit_pos_embed', 'resize_pos_embed', 'SqueezeExcite', 'FFN',
    'MultiheadAttention', 'PatchEmbed', 'SwiGLUFFN', 'TransformerEncoderLayer'
]
