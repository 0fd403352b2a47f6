"""``BaseModule``: mmengine's ``init_cfg`` protocol without importing
``mmengine.model`` at start-up.

Any import from ``mmengine.model`` runs that package's ``__init__``, which
loads mmengine's optimizers and distributed wrappers and, through them,
``torch.distributed.fsdp`` and sympy: about 1 s of a cold start, more than
the rest of mmbackbone on top of torch. Building a backbone needs none of
it. This base class has what mmengine's ``BaseModule`` gives a module
(``init_cfg``, ``is_init``, ``init_weights``, the ``init_cfg`` line of
``repr``); ``init_weights`` imports ``mmengine.model`` when it runs and
hands the work to mmengine's own ``BaseModule.init_weights``: the same
initializers, in the same order, with the same log.

One difference: ``isinstance(module, mmengine.model.BaseModule)`` is
False. mmengine, mmdet and mmseg never test it; a parent's
``init_weights`` initialises every child that has an ``init_weights`` and
no true ``is_init``.
"""
import copy
from typing import List, Union

from torch import nn

InitCfg = Union[dict, List[dict], None]


def mmengine_base_module() -> type:
    """mmengine's ``BaseModule`` (imports ``mmengine.model``).

    Example:
        >>> mmengine_base_module().__module__
        'mmengine.model.base_module'
    """
    from mmengine.model import BaseModule as MMEngineBaseModule
    return MMEngineBaseModule


class BaseModule(nn.Module):
    """An ``nn.Module`` initialised from ``init_cfg`` as mmengine does it.

    Args:
        init_cfg (dict | list[dict], optional): mmengine's weight
            initializer configs (``dict(type='Kaiming', layer='Conv2d')``),
            applied by :meth:`init_weights`. Kept as a deep copy.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Head(BaseModule):
        ...     def __init__(self, init_cfg=None):
        ...         super().__init__(init_cfg)
        ...         self.fc = nn.Linear(4, 2)
        >>> head = Head(dict(type='Constant', layer='Linear', val=1, bias=0))
        >>> head.is_init
        False
        >>> from mmengine.logging import MMLogger  # the init log is INFO:
        >>> _ = MMLogger.get_instance('example', log_level='WARNING')  # quiet
        >>> head.init_weights()
        >>> head.is_init, head.fc.weight.sum().item(), head.fc.bias.tolist()
        (True, 8.0, [0.0, 0.0])
        >>> print(repr(head).splitlines()[-1])
        init_cfg={'type': 'Constant', 'layer': 'Linear', 'val': 1, 'bias': 0}
    """

    def __init__(self, init_cfg: InitCfg = None):
        super().__init__()
        self._is_init = False
        self.init_cfg = copy.deepcopy(init_cfg)

    @property
    def is_init(self) -> bool:
        """Whether :meth:`init_weights` has run (or weights were loaded)."""
        return self._is_init

    @is_init.setter
    def is_init(self, value: bool) -> None:
        self._is_init = value

    def init_weights(self) -> None:
        """Apply ``init_cfg``, then the children's ``init_weights``, then
        the ``Pretrained`` entries: mmengine's ``BaseModule.init_weights``
        run on this module (it uses only attributes this class has)."""
        mmengine_base_module().init_weights(self)

    def _dump_init_info(self) -> None:
        """Log each parameter's initialisation; mmengine's
        ``init_weights`` calls it on the top-level module."""
        mmengine_base_module()._dump_init_info(self)

    def __repr__(self) -> str:
        text = super().__repr__()
        return f'{text}\ninit_cfg={self.init_cfg}' if self.init_cfg else text
