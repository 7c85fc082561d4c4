"""``python -m l2kd.pretrain``: entry point of :mod:`l2kd.cli.pretrain`."""
import sys

from l2kd.cli.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
