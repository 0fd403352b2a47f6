"""Did-you-mean suggestions for error messages."""
import difflib
from typing import Iterable


def closest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return a ``"did you mean ...?"`` phrase, or ``""`` when none is close.

    Example:
        >>> closest('ResNett', ['ResNet', 'RegNet', 'DLA'])
        " Did you mean 'ResNet', 'RegNet'?"
    """
    choices = [str(c) for c in choices]
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(str(name).lower(), list(lowered), n=n,
                                     cutoff=0.6)
    if not hits:
        return ''
    return ' Did you mean ' + ', '.join(repr(lowered[h]) for h in hits) + '?'
