"""``--allow-python-bases``: the one command-line opt-in that lets a data
(YAML/JSON) config run code. Every tool that reads a config file takes it
from here, so the flag reads the same everywhere. argparse only: the
command line stays fast to start."""
import argparse


def add_allow_python_bases(parser: argparse.ArgumentParser,
                           what: str = 'config') -> None:
    """Add ``--allow-python-bases`` (off by default) to ``parser``;
    ``what`` names the config option in the help text.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_allow_python_bases(parser)
        >>> parser.parse_args(['--allow-python-bases']).allow_python_bases
        True
    """
    parser.add_argument('--allow-python-bases', action='store_true',
                        help=f'let a YAML/JSON {what} inherit from .py '
                        'configs (they run as Python: trusted files only); '
                        'off by default')
