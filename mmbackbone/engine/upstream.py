"""The mmengine version that code following mmengine's private API was
written against, and the check each such module runs at import.

:class:`~mmbackbone.engine.hooks.AtomicCheckpointHook` and
:class:`~mmbackbone.engine.runner.SafeLoadRunner` override private methods
of mmengine's ``CheckpointHook`` and ``Runner`` with adapted copies of
mmengine 0.10.7's code. Another mmengine may call them differently or
expect other side effects, so those modules call
:func:`check_mmengine_version` when imported: outside the range they were
written for, it warns (:class:`MmengineVersionWarning`) naming the
installed version, the one followed and the module to review. A warning,
not an error: the copies may well still fit, and training should not stop
on a version number alone.

Example:
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter('always')
    ...     fits = check_mmengine_version('my_hook', installed='0.11.0')
    >>> fits, caught[0].category.__name__
    (False, 'MmengineVersionWarning')
    >>> print(caught[0].message)  # doctest: +ELLIPSIS
    my_hook follows mmengine 0.10.7's private API (written for >=0.10.7, ...
    >>> check_mmengine_version('my_hook', installed='0.10.7')
    True
"""
import warnings
from typing import Optional

import mmengine
from mmengine.utils import digit_version

#: The mmengine release whose private code the copies follow.
FOLLOWS_MMENGINE = '0.10.7'
#: The versions the copies are known to fit: ``[FOLLOWS, BELOW)``.
BELOW_MMENGINE = '0.11.0'


class MmengineVersionWarning(UserWarning):
    """Code copied from mmengine's private API runs on another mmengine."""


def check_mmengine_version(module: str, installed: Optional[str] = None
                           ) -> bool:
    """Warn when mmengine is outside ``[FOLLOWS_MMENGINE, BELOW_MMENGINE)``.

    Args:
        module (str): the module holding the copied code (named in the
            warning, so a reader knows what to review).
        installed (str, optional): the version to check; defaults to
            ``mmengine.__version__``.

    Returns:
        bool: True when the version is in the range (no warning).
    """
    installed = installed or mmengine.__version__
    low, high = digit_version(FOLLOWS_MMENGINE), digit_version(BELOW_MMENGINE)
    if low <= digit_version(installed) < high:
        return True
    warnings.warn(
        f"{module} follows mmengine {FOLLOWS_MMENGINE}'s private API "
        f'(written for >={FOLLOWS_MMENGINE}, <{BELOW_MMENGINE}); mmengine '
        f'{installed} is installed. Check that the methods it overrides '
        f'still have the same signatures and duties, or install '
        f'mmengine=={FOLLOWS_MMENGINE}', MmengineVersionWarning,
        stacklevel=2)
    return False
