"""Layer depths of a timm model's parameters, from its ``group_matcher``.

timm numbers a model's parameter groups with ``group_matcher()`` (the
stem, then each block, then what no pattern matches, such as the head);
its own layer-wise lr decay uses those numbers. :func:`timm_layer_depths`
reads them from the whole model and carries them over to the names of a
features-mode model (``stages.0`` -> ``stages_0``, ``model.`` wrappers).
"""
from typing import Dict, Iterable, Tuple

from torch import nn

from .timm_weights import timm_key_candidates


def timm_layer_depths(full_model: nn.Module, own_names: Iterable[str]
                      ) -> Tuple[Dict[str, int], int]:
    """Depth of each of ``own_names`` and the number of depths.

    Args:
        full_model: the whole timm model, classifier included (a copy on
            the meta device is enough: only names are read).
        own_names: parameter names of the model the depths are for (the
            same model, or its ``features_only`` version).

    Returns:
        tuple: ``({name: depth}, num_layers)``. The stem group is 0, each
        block group its index, the classifier and unmatched parameters
        ``num_layers - 1``; a name of ``own_names`` with no counterpart in
        ``full_model`` is left out (it takes the last depth).

    Raises:
        NotImplementedError: the timm model has no ``group_matcher``.

    Example:
        >>> import timm, torch
        >>> with torch.device('meta'):
        ...     full = timm.create_model('resnet18')
        >>> depths, num_layers = timm_layer_depths(
        ...     full, ['conv1.weight', 'layer1.0.conv1.weight',
        ...            'layer4.1.bn2.bias'])
        >>> depths, num_layers
        ({'conv1.weight': 0, 'layer1.0.conv1.weight': 1, \
'layer4.1.bn2.bias': 8}, 10)
    """
    from timm.models._manipulate import group_parameters
    if not callable(getattr(full_model, 'group_matcher', None)):
        raise NotImplementedError(
            f'timm model {type(full_model).__name__} has no group_matcher(), '
            f'so its parameters have no layer depths for layer-wise lr decay')
    groups = group_parameters(full_model,
                              full_model.group_matcher(coarse=False),
                              reverse=True)
    num_layers = max(groups.values()) + 1
    own = set(own_names)
    depths = {}
    for name, depth in groups.items():
        found = next((c for c in timm_key_candidates(name) if c in own), None)
        if found is not None:
            depths[found] = depth
    return depths, num_layers
