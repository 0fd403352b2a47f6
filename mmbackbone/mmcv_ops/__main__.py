"""Run a script with the ops installed first:
``python -m mmbackbone.mmcv_ops SCRIPT [ARGS...]``.

A config's ``custom_imports`` run when the config is read; mmdet's
``tools/test.py`` imports ``mmdet.evaluation`` (and so ``mmcv.ops``) before
that, and fails on mmcv-lite. Launched through this module, the script
runs as ``python SCRIPT ARGS`` would run it (``__main__``, its folder first
on ``sys.path``, ``sys.argv[0]`` the script), after :func:`install`::

    python -m mmbackbone.mmcv_ops $MMDET/.mim/tools/test.py CONFIG CHECKPOINT
"""
import os
import runpy
import sys

from . import install


def main(argv=None) -> None:
    """Install the ops, then run ``argv[0]`` as ``__main__``.

    Raises:
        SystemExit: with a usage message when no script is given or it is
            not a file.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or not os.path.isfile(argv[0]):
        given = repr(argv[0]) if argv else 'nothing'
        raise SystemExit(
            f'usage: python -m mmbackbone.mmcv_ops SCRIPT [ARGS...] '
            f'(SCRIPT must be a Python file; got {given})')
    install()
    script = os.path.abspath(argv[0])
    sys.argv = argv
    sys.path.insert(0, os.path.dirname(script))
    runpy.run_path(script, run_name='__main__')


if __name__ == '__main__':
    main()
