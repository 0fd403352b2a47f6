"""Build information that mmcv's environment report asks the extension for.

mmcv's ``collect_env`` (run when a Runner starts) calls these; there is no
compiled code to describe, so they say so.
"""
NOT_COMPILED = 'not compiled (mmbackbone.mmcv_ops: PyTorch/torchvision ops)'


def get_compiler_version() -> str:
    """The compiler the extension was built with: none.

    Example:
        >>> get_compiler_version()
        'not compiled (mmbackbone.mmcv_ops: PyTorch/torchvision ops)'
    """
    return NOT_COMPILED


def get_compiling_cuda_version() -> str:
    """The CUDA version the extension was built with: none.

    Example:
        >>> get_compiling_cuda_version() == get_compiler_version()
        True
    """
    return NOT_COMPILED
