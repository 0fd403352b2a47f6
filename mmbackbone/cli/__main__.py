"""``python -m mmbackbone.cli``: the same command line as ``mmbackbone``."""
import sys

from mmbackbone.cli import main

if __name__ == '__main__':
    sys.exit(main())
