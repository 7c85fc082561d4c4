"""``python -m l2kd.train``: entry point of :mod:`l2kd.cli.train`."""
import sys

from l2kd.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
