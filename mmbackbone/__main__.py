"""``python -m mmbackbone``: the same command line as ``mmbackbone``."""
from mmbackbone.cli import main

if __name__ == '__main__':
    main()
