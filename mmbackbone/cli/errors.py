"""The errors ``mmbackbone`` reports as ``mmbackbone CMD: error: ...``.

Example:
    >>> error_message(KeyError("'resnet5' is not a zoo arch name"))
    "'resnet5' is not a zoo arch name"
"""

#: Errors reported as ``mmbackbone CMD: error: ...`` with exit code 1.
USER_ERRORS = (KeyError, ValueError, TypeError, FileNotFoundError)


def error_message(err: BaseException) -> str:
    """The text of ``err``; a ``KeyError``'s without the quotes ``str``
    puts around it."""
    if isinstance(err, KeyError) and len(err.args) == 1:
        return str(err.args[0])
    return str(err)
